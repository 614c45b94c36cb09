"""The citizen's pages (progress with proof, rating, complaint, online pre-application,
appointments) and the station's appointment page, on a small in-process region."""

import datetime
import html
import re
from io import BytesIO

import pytest

from shared import audit, clock, identity, registry
from shared.cases import appointments as ap
from shared.cases import fold as F
from shared.cases import idnumbers
from shared.cases.blobs import MAX_BLOB_BYTES
from shared.cases.desk import ApplicantInput
from shared.views import appointments as appointment_pages
from shared.views import progress
from tests import casekit as K
from tests.conftest import add_account

NAMES = {K.TOWNSHIP: ("township", "海城镇便民服务中心"), K.VILLAGE_A: ("village", "东村服务站"),
         K.VILLAGE_B: ("village", "西村服务站")}
TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "window-pass-42"


@pytest.fixture
def kit(tmp_path):
    """The region with named stations and the public pages on every node."""
    kit = K.Kit(tmp_path)
    county = kit.apps[K.COUNTY]
    for code, (tier, name) in NAMES.items():
        key = identity.b64(identity.public_key_bytes(identity.new_private_key()))
        registry.publish_entry(kit.store(K.COUNTY), county.key, code=code, tier=tier,
                               name=name, public_key=key)
    kit.sync()
    for code, app in kit.apps.items():
        app.extensions["case_desk"] = kit.desk(code)
        if "progress" not in app.blueprints:
            progress.init_app(app)
        if "appointments" not in app.blueprints:
            appointment_pages.init_app(app)
    yield kit
    kit.close()


@pytest.fixture
def client(kit):
    """A citizen's browser at village A."""
    return kit.apps[K.VILLAGE_A].test_client()


# -- helpers --------------------------------------------------------------------------------

def text(response):
    return response.get_data(as_text=True)


def element(page, element_id):
    """The text inside the element with ``element_id`` (tags removed), or None."""
    found = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(2))).strip() if found else None


def token(client, path="/progress"):
    found = TOKEN.search(text(client.get(path)))
    return found.group(1)


def prove(client, number, proof):
    return client.post("/progress", data={"number": number, "proof": proof,
                                          "form_token": token(client)})


def accepted_case(kit):
    """A low-income (低保) case accepted at village A; the township decides it."""
    desk = kit.desk(K.VILLAGE_A)
    return desk.receive("GD-LS-04", K.applicant(), K.full_materials(desk, "GD-LS-04"),
                        "accept", K.clerk())


def decided_case(kit):
    number = accepted_case(kit)
    kit.sync()
    kit.desk(K.TOWNSHIP).approve(number, K.approver(), "准予纳入最低生活保障")
    kit.sync()
    return number


def state(kit, number, code=K.VILLAGE_A):
    return kit.desk(code).load(number)[2]


def case_count(kit, code=K.VILLAGE_A):
    return kit.store(code).db.execute_sql("SELECT count(*) FROM case_state").fetchone()[0]


def tomorrow():
    return clock.today() + datetime.timedelta(days=1)


def browser(kit, address="127.0.0.1", code=K.VILLAGE_A):
    """A citizen's browser at ``code`` connecting from ``address``."""
    found = kit.apps[code].test_client()
    found.environ_base["REMOTE_ADDR"] = address
    return found


def blob_count(kit, code=K.VILLAGE_A):
    root = kit.desk(code).blobs.root
    return sum(1 for path in root.rglob("*") if path.is_file()) if root.exists() else 0


THROTTLE_WAIT = re.compile(r"请 \d+ 分钟后再试")


# -- progress -------------------------------------------------------------------------------

def test_progress_with_name_shows_every_step(kit, client):
    number = decided_case(kit)
    response = prove(client, number, " 陈阿婆 ")
    assert response.status_code == 302
    page = text(client.get(response.location))
    assert element(page, "case-number") == number
    assert element(page, "status") == "已办结，待领取"
    assert element(page, "applicant") == "陈**"
    assert "陈阿婆" not in page and "13800138000" not in page
    steps = element(page, "timeline")
    for shown in ("受理", "东村服务站", "王小明", "0660-3300001",
                  "审批通过", "海城镇便民服务中心", "李审批", "0660-3300002",
                  "准予纳入最低生活保障"):
        assert shown in steps
    # Decided: the page says when, not a deadline that no longer matters.
    decided = state(kit, number)["decided_day"]
    assert decided and element(page, "due-date") == f"已于 {decided} 办结"
    assert element(page, "delivery-station") == "东村服务站"
    assert "审批通过" in element(page, "decision")


def test_progress_with_phone_last4(kit, client):
    number = accepted_case(kit)
    response = prove(client, number, "８０００")  # typed with a full-width keyboard
    assert response.status_code == 302
    page = text(client.get(f"/progress/{number}"))
    assert element(page, "status") == "办理中"
    assert element(page, "stage") == "海城镇便民服务中心"


def test_wrong_proof_and_unknown_number_get_one_answer(kit, client):
    number = accepted_case(kit)
    unknown = f"{K.VILLAGE_A}-20240105-0042"
    answers = [prove(client, number, "陈阿公"), prove(client, number, "1234"),
               prove(client, unknown, "陈阿婆")]
    for response in answers:
        assert response.status_code == 404
        page = text(response)
        assert element(page, "message") == progress.MISMATCH
        assert "东村服务站" in element(page, "not-held")
        assert "最低生活保障" not in page
    assert len({element(text(r), "not-held") for r in answers}) == 1
    # nothing was proven: the case page still asks for the proof
    assert 'id="status"' not in text(client.get(f"/progress/{number}"))


def test_malformed_number_says_how_it_is_written(client):
    response = prove(client, "12345", "陈阿婆")
    assert response.status_code == 400
    assert "格式不正确" in element(text(response), "message")


def test_sixth_proof_of_one_number_is_refused_even_when_right(kit, client):
    number, other = accepted_case(kit), accepted_case(kit)
    for guess in ("1111", "2222", "3333", "4444", "陈阿公"):
        assert prove(client, number, guess).status_code == 404
    right = prove(client, number, "陈阿婆")
    assert right.status_code == 429
    message = element(text(right), "message")
    assert message.startswith("查询失败次数过多") and THROTTLE_WAIT.search(message)
    assert int(right.headers["Retry-After"]) > 0
    assert 'id="status"' not in text(client.get(f"/progress/{number}"))
    # the lock is on the number, whichever browser or address asks
    assert prove(browser(kit, "10.0.0.7"), number, "陈阿婆").status_code == 429
    # another number still opens
    assert prove(client, other, "陈阿婆").status_code == 302
    assert element(text(client.get(f"/progress/{other}")), "status") == "办理中"


def test_right_proof_clears_the_numbers_failures(kit, client):
    number = accepted_case(kit)
    for _ in range(2):
        for guess in ("1111", "2222", "3333", "4444"):
            assert prove(client, number, guess).status_code == 404
        assert prove(client, number, "8000").status_code == 302


def test_failed_proofs_are_throttled_per_address(kit):
    number = accepted_case(kit)
    guesser = browser(kit, "10.0.0.5")
    for seq in range(1, progress.PROOF_PER_ADDRESS.count + 1):
        unknown = f"{K.VILLAGE_A}-20240105-{seq:04d}"
        assert prove(guesser, unknown, "陈阿婆").status_code == 404
    refused = prove(guesser, number, "陈阿婆")
    assert refused.status_code == 429
    assert element(text(refused), "message").startswith("查询失败次数过多")
    # a forwarded-for header is the client's own word: it changes nothing
    forwarded = guesser.post("/progress", headers={"X-Forwarded-For": "10.9.9.9"}, data={
        "number": number, "proof": "陈阿婆", "form_token": token(guesser)})
    assert forwarded.status_code == 429
    # another address is not affected
    assert prove(browser(kit, "10.0.0.6"), number, "陈阿婆").status_code == 302


def test_throttle_windows_end_and_old_rows_are_purged(kit):
    db = kit.store(K.VILLAGE_A).db
    limit = progress.PROOF_PER_NUMBER
    checks = [(limit, "441521101001-20240105-0001")]
    for _ in range(limit.count):
        progress.throttle_note(db, checks, at=1000.0)
    assert progress.throttle_wait(db, checks, at=1001.0) == limit.seconds - 1
    assert progress.throttle_wait(db, checks, at=1000.0 + limit.seconds) is None
    # the next failure after the window starts a new count
    progress.throttle_note(db, checks, at=1000.0 + limit.seconds)
    assert progress.throttle_wait(db, checks, at=1001.0 + limit.seconds) is None
    progress.throttle_note(db, [(progress.BOOK_PER_ADDRESS, "10.0.0.1")],
                           at=1000.0 + limit.seconds + progress.LONGEST_WINDOW)
    keys = [row[0] for row in db.execute_sql("SELECT key FROM public_throttle")]
    assert keys == ["10.0.0.1"]


def test_licence_number_is_masked_and_the_handler_shown(kit, client):
    number = accepted_case(kit)
    kit.sync()
    kit.desk(K.TOWNSHIP).approve(number, K.approver(), "准予纳入最低生活保障", licence={
        "name": "最低生活保障证", "number": "DB44152120240001", "valid_until": "2025-12-31"})
    kit.sync()
    prove(client, number, "陈阿婆")
    page = text(client.get(f"/progress/{number}"))
    assert "DB44152120240001" not in page
    licence = element(page, "licence")
    assert "最低生活保障证" in licence and "DB44**********01" in licence
    assert "2025-12-31" in licence
    steps = element(page, "timeline")
    assert "李审批" in steps and "0660-3300002" in steps


def test_licence_masks():
    assert progress.mask_licence("DB44152120240001") == "DB44**********01"
    assert progress.mask_licence("12345678") == "1234**78"
    assert progress.mask_licence("ABC1234") == "A*****4"
    assert progress.mask_licence("") == ""


def test_exit_forgets_the_proof_in_this_browser(kit, client):
    number = decided_case(kit)
    prove(client, number, "陈阿婆")
    page = text(client.get(f"/progress/{number}"))
    assert 'id="status"' in page and 'id="exit-form"' in page
    left = client.post("/progress/exit", data={"form_token": token(client)})
    assert left.status_code == 302
    assert element(text(client.get(left.location)), "notice").startswith("已退出查询")
    after = text(client.get(f"/progress/{number}"))
    assert 'id="status"' not in after and f'value="{number}"' in after
    kit.desk(K.VILLAGE_A).deliver(number, K.clerk())
    rated = client.post(f"/progress/{number}/rate", data={"score": "5",
                                                          "form_token": token(client)})
    assert rated.status_code == 403 and state(kit, number)["rating"] is None


def test_exit_needs_the_form_token(kit, client):
    number = accepted_case(kit)
    prove(client, number, "陈阿婆")
    assert client.post("/progress/exit").status_code == 400
    assert 'id="status"' in text(client.get(f"/progress/{number}"))


def test_proof_is_checked_against_the_corrected_profile(kit, client):
    response = apply(client, "GD-LS-04")
    number = response.location.rsplit("/", 1)[1]
    desk = kit.desk(K.VILLAGE_A)
    # at the window the clerk corrects the name and phone the citizen typed online
    desk.receive(None, ApplicantInput(number=K.CITIZEN, name="陈美玲", phone="13900001111"),
                 K.full_materials(desk, "GD-LS-04"), "accept", K.clerk(), number=number)
    other = browser(kit, "10.0.0.8")
    for stale in ("陈阿婆", "8000"):
        assert prove(other, number, stale).status_code == 404
    for current in ("陈美玲", "1111"):
        assert prove(browser(kit, "10.0.0.9"), number, current).status_code == 302


def test_qr_link_opens_the_form_with_the_number(kit, client):
    number = accepted_case(kit)
    page = text(client.get(f"/progress/{number}"))
    assert f'id="number" name="number" value="{number}"' in page
    assert 'id="status"' not in page


def test_station_without_the_case_points_to_the_accepting_station(kit):
    number = accepted_case(kit)  # not synced: village B does not hold it
    response = prove(kit.apps[K.VILLAGE_B].test_client(), number, "陈阿婆")
    assert response.status_code == 404
    hint = element(text(response), "not-held")
    assert "东村服务站" in hint and "县级" in hint


def test_outstanding_materials_are_listed(kit, client):
    desk = kit.desk(K.VILLAGE_A)
    number = desk.receive("GD-LS-04", K.applicant(), {0: {"scans": [K.upload(desk)]}},
                          "notice", K.clerk())
    prove(client, number, "陈阿婆")
    page = text(client.get(f"/progress/{number}"))
    assert element(page, "status") == "已一次性告知，待补齐材料"
    missing = element(page, "outstanding")
    assert "家庭经济状况核对授权书" in missing and "最低生活保障申请书" not in missing
    assert element(page, "due-date") == "受理后开始计算"


def test_rejection_shows_its_reason(kit, client):
    number = accepted_case(kit)
    kit.sync()
    kit.desk(K.TOWNSHIP).reject(number, K.approver(), "家庭人均收入高于当地低保标准")
    kit.sync()
    prove(client, number, "陈阿婆")
    shown = element(text(client.get(f"/progress/{number}")), "decision")
    assert "不予批准" in shown and "家庭人均收入高于当地低保标准" in shown


def test_rating_only_after_delivery_and_only_once(kit, client):
    number = decided_case(kit)
    prove(client, number, "陈阿婆")
    assert 'id="rate-form"' not in text(client.get(f"/progress/{number}"))
    early = client.post(f"/progress/{number}/rate",
                        data={"score": "5", "form_token": token(client)})
    assert early.status_code == 409
    assert element(text(early), "error") == "结果送达后才能评价"

    kit.desk(K.VILLAGE_A).deliver(number, K.clerk())
    page = text(client.get(f"/progress/{number}"))
    assert element(page, "status") == "已送达" and 'id="rate-form"' in page
    bad = client.post(f"/progress/{number}/rate", data={"score": "9", "form_token": token(client)})
    assert bad.status_code == 400 and element(text(bad), "error") == "请选择评价等级。"
    assert state(kit, number)["rating"] is None

    rated = client.post(f"/progress/{number}/rate",
                        data={"score": "4", "text": "办事很快", "form_token": token(client)})
    assert rated.status_code == 302
    page = text(client.get(rated.location))
    assert element(page, "rating-level") == "满意" and "办事很快" in page
    assert 'id="rate-form"' not in page
    again = client.post(f"/progress/{number}/rate",
                        data={"score": "1", "form_token": token(client)})
    assert again.status_code == 409
    assert element(text(again), "error") == "该案件已评价，不能重复评价"
    assert state(kit, number)["rating"]["score"] == 4


def test_complaint_is_shown_with_its_stage_and_reply(kit, client):
    number = accepted_case(kit)
    prove(client, number, "陈阿婆")
    empty = client.post(f"/progress/{number}/complain",
                        data={"text": "  ", "form_token": token(client)})
    assert empty.status_code == 400 and element(text(empty), "error") == "请填写投诉内容。"
    sent = client.post(f"/progress/{number}/complain",
                       data={"text": "等了很久没有人联系我", "form_token": token(client)})
    assert sent.status_code == 302
    page = text(client.get(sent.location))
    assert "等了很久没有人联系我" in element(page, "complaint-1")
    assert "已提交，待受理" in element(page, "complaint-1")

    complaint = state(kit, number)["complaints"][0]["id"]
    desk = kit.desk(K.VILLAGE_A)
    desk.handle_complaint(number, K.clerk(), complaint, "accepted", "已转办理人员核实")
    desk.handle_complaint(number, K.clerk(), complaint, "replied", "已核实，办理人员已电话联系您")
    shown = element(text(client.get(f"/progress/{number}")), "complaint-1")
    assert "已答复" in shown and "已核实，办理人员已电话联系您" in shown and "王小明" in shown


def test_actions_need_the_proof_in_this_browser(kit, client):
    number = decided_case(kit)
    kit.desk(K.VILLAGE_A).deliver(number, K.clerk())
    for path, data in ((f"/progress/{number}/rate", {"score": "1"}),
                       (f"/progress/{number}/complain", {"text": "投诉"})):
        response = client.post(path, data=dict(data, form_token=token(client)))
        assert response.status_code == 403
        assert element(text(response), "message") == progress.PROOF_NEEDED
    assert state(kit, number)["rating"] is None and state(kit, number)["complaints"] == []


def test_public_posts_without_the_form_token_are_refused(kit, client):
    number = accepted_case(kit)
    prove(client, number, "陈阿婆")
    stranger = kit.apps[K.VILLAGE_A].test_client()
    for sent in ({}, {"form_token": token(stranger)}):  # none, or another browser's
        response = client.post(f"/progress/{number}/complain", data=dict(sent, text="投诉"))
        assert response.status_code == 400
        assert element(text(response), "message") == progress.FORM_REJECTED
    assert state(kit, number)["complaints"] == []
    before = case_count(kit)
    response = client.post("/apply/GD-LS-13", data={
        "id_number": K.CITIZEN, "name": "陈阿婆", "phone": "13800138000",
        "station": K.VILLAGE_A})
    assert response.status_code == 400 and case_count(kit) == before
    slot = ap.publish_slots(kit.store(K.VILLAGE_A).db, tomorrow(), "09:00", "09:30", 30, 1,
                            by="clerk-a")[0]
    response = client.post("/appointments", data={
        "slot": slot["id"], "id_number": K.CITIZEN, "name": "陈阿婆", "phone": "13800138000"})
    assert response.status_code == 400
    assert ap.get_slot(kit.store(K.VILLAGE_A).db, slot["id"])["booked"] == 0


# -- online pre-application -------------------------------------------------------------------

def apply(client, item_id, **fields):
    data = {"id_number": K.CITIZEN, "name": "陈阿婆", "phone": "13800138000",
            "address": "海丰县海城镇某村 12 号", "station": K.VILLAGE_A,
            "form_token": token(client, f"/apply/{item_id}")}
    data.update(fields)
    return client.post(f"/apply/{item_id}", data=data, content_type="multipart/form-data")


def form_page(client, item_id, number=K.CITIZEN):
    """The pre-application form, reached through its first step (the ID number)."""
    return client.post(f"/apply/{item_id}", data={
        "step": "id", "id_number": number, "form_token": token(client, f"/apply/{item_id}")})


def test_preapplication_waits_at_the_chosen_station(kit, client):
    listing = text(client.get("/apply"))
    assert 'id="apply-GD-LS-04"' in listing and 'id="apply-GD-LS-14"' not in listing
    form = text(form_page(client, "GD-LS-04"))
    assert "西村服务站" in form and "海城镇便民服务中心" in form
    assert 'name="material-0"' in form and 'name="material-2"' not in form  # shared: not asked

    from io import BytesIO
    response = apply(client, "GD-LS-04", station=K.VILLAGE_B,
                     **{"material-0": (BytesIO(K.PDF), "申请书.pdf")})
    assert response.status_code == 302
    number = response.location.rsplit("/", 1)[1]
    done = text(client.get(response.location))
    assert element(done, "case-number") == number
    assert element(done, "station") == "西村服务站"
    bring = element(done, "bring")
    assert "最低生活保障申请书" in bring and "家庭经济状况核对授权书（原件，尚未上传）" in bring
    assert f'href="/progress/{number}"' in done

    folded = state(kit, number)
    assert (folded["status"], folded["stage"]) == (F.PREAPPLIED, K.VILLAGE_B)
    assert folded["materials"]["0"]["status"] == F.PROVIDED
    assert folded["materials"]["1"]["status"] == F.MISSING
    page = text(client.get(f"/progress/{number}"))
    assert element(page, "status") == "网上预申请，待到站核验"


def test_preapplication_of_an_item_needing_no_visit(client):
    response = apply(client, "GD-LS-13")
    assert response.status_code == 302
    done = text(client.get(response.location))
    assert element(done, "no-visit") is not None and element(done, "bring") is None


def test_preapplication_refused_for_an_item_without_online_application(kit, client):
    before = case_count(kit)
    page = client.get("/apply/GD-LS-14")
    assert page.status_code == 409 and "暂不支持网上申请" in element(text(page), "message")
    response = client.post("/apply/GD-LS-14", data={
        "id_number": K.CITIZEN, "name": "陈阿婆", "phone": "13800138000",
        "station": K.VILLAGE_A, "form_token": token(client)})
    assert response.status_code == 409 and "暂不支持网上申请" in element(text(response), "message")
    assert case_count(kit) == before


@pytest.mark.parametrize("fields, message", [
    ({"id_number": "441521195003011230"}, "校验"),
    ({"phone": "12345"}, "手机号码应为11位"),
    ({"name": " "}, "请填写申请人姓名。"),
    ({"station": "441521102001"}, "请选择办理站点。"),
])
def test_bad_preapplication_changes_nothing(kit, client, fields, message):
    before = case_count(kit)
    response = apply(client, "GD-LS-13", **fields)
    assert response.status_code == 400
    assert message in element(text(response), "error")
    assert case_count(kit) == before


def test_preapplication_lists_only_active_stations(kit, client):
    registry.revoke(kit.store(K.COUNTY), kit.apps[K.COUNTY].key, K.VILLAGE_B)
    kit.sync()
    form = text(form_page(client, "GD-LS-04"))
    assert f'value="{K.VILLAGE_A}"' in form and f'value="{K.TOWNSHIP}"' in form
    assert f'value="{K.VILLAGE_B}"' not in form and "西村服务站" not in form
    before = case_count(kit)
    response = apply(client, "GD-LS-04", station=K.VILLAGE_B)
    assert response.status_code == 400 and element(text(response), "error") == "请选择办理站点。"
    assert case_count(kit) == before


def test_preapplication_takes_at_most_three_files_per_material(kit, client):
    before, blobs = case_count(kit), blob_count(kit)
    def pages(count):
        return [(BytesIO(K.PDF + b"%" + str(n).encode()), f"第{n}页.pdf") for n in range(count)]

    response = apply(client, "GD-LS-04", **{"material-0": pages(4)})
    assert response.status_code == 400
    assert "最多上传 3 个文件" in element(text(response), "error")
    assert (case_count(kit), blob_count(kit)) == (before, blobs)
    three = apply(client, "GD-LS-04", **{"material-0": pages(3)})
    assert three.status_code == 302
    number = three.location.rsplit("/", 1)[1]
    assert len(state(kit, number)["materials"]["0"]["scans"]) == 3


def test_preapplication_refuses_a_file_over_4_mb(kit, client):
    before, blobs = case_count(kit), blob_count(kit)
    big = K.PDF + b"0" * (MAX_BLOB_BYTES + 1 - len(K.PDF))
    response = apply(client, "GD-LS-04", **{"material-0": (BytesIO(big), "大.pdf")})
    assert response.status_code == 400
    assert "单个文件不能超过 4 MB" in element(text(response), "error")
    assert (case_count(kit), blob_count(kit)) == (before, blobs)


def test_preapplication_over_20_mb_is_refused_unread(kit, client):
    before, blobs = case_count(kit), blob_count(kit)
    part = K.PDF + b"0" * (MAX_BLOB_BYTES - 1024)
    files = {f"material-{i}": [(BytesIO(part + bytes([n])), f"{i}-{n}.pdf") for n in range(3)]
             for i in (0, 1)}  # 6 files of just under 4 MB each: 24 MB in all
    response = apply(client, "GD-LS-04", **files)
    assert response.status_code == 413
    message = element(text(response), "message")
    assert "提交的内容过大" in message and "20 MB" in message and "未保存任何内容" in message
    assert (case_count(kit), blob_count(kit)) == (before, blobs)


def test_preapplications_are_throttled_per_address(kit):
    limit = progress.APPLY_PER_ADDRESS.count
    kiosk = browser(kit, "10.0.1.1")
    for _ in range(limit):
        assert apply(kiosk, "GD-LS-13").status_code == 302
    before = case_count(kit)
    refused = apply(kiosk, "GD-LS-13")
    assert refused.status_code == 429
    message = element(text(refused), "error")
    assert "网上预申请过多" in message and THROTTLE_WAIT.search(message)
    assert int(refused.headers["Retry-After"]) > 0
    assert case_count(kit) == before
    assert apply(browser(kit, "10.0.1.2"), "GD-LS-13").status_code == 302


def test_preapplication_refuses_a_file_that_is_no_scan(kit, client):
    from io import BytesIO
    before = case_count(kit)
    response = apply(client, "GD-LS-04", **{"material-0": (BytesIO(b"hello"), "a.txt")})
    assert response.status_code == 400
    assert "只接受 JPG、PNG 或 PDF" in element(text(response), "error")
    assert case_count(kit) == before


def born_years_ago(years, days_short=0):
    """A resident ID number of someone ``years`` old today (``days_short`` days before the
    birthday that makes them so)."""
    today = clock.today()
    birthday = datetime.date(today.year - years, today.month, min(today.day, 28))
    return idnumbers.make_resident_id("441521", birthday + datetime.timedelta(days_short), 7)


def test_age_condition_refuses_before_any_upload(kit, client):
    before, blobs = case_count(kit), blob_count(kit)
    start = client.get("/apply/GD-LS-11")
    assert start.status_code == 200
    page = text(start)
    assert 'id="apply-id-form"' in page and 'type="file"' not in page  # the ID number first
    refused = form_page(client, "GD-LS-11", born_years_ago(36))
    assert refused.status_code == 403
    page = text(refused)
    assert element(page, "ineligible") == (
        "根据您的身份证号码，您目前 36 周岁，本事项须年满 80 周岁，暂不能申请。"
        "如有疑问请咨询 0660-6612349。")
    assert 'type="file"' not in page and 'name="material-' not in page
    # the whole form sent at once (skipping the first step) is refused the same way
    response = apply(client, "GD-LS-11", id_number=born_years_ago(36),
                     **{"material-0": (BytesIO(K.PDF), "申请表.pdf")})
    assert response.status_code == 403 and "须年满 80 周岁" in element(text(response),
                                                                     "ineligible")
    assert (case_count(kit), blob_count(kit)) == (before, blobs)


def test_age_condition_counts_whole_years(kit, client):
    almost = text(form_page(client, "GD-LS-11", born_years_ago(80, days_short=1)))
    assert "您目前 79 周岁" in element(almost, "ineligible")
    page = text(form_page(client, "GD-LS-11", born_years_ago(80)))
    assert element(page, "ineligible") is None and 'name="material-0"' in page
    assert f'value="{born_years_ago(80)}"' in page  # carried into the form
    response = apply(client, "GD-LS-11", id_number=born_years_ago(85))
    assert response.status_code == 302


def test_first_step_reports_a_wrong_id_number(kit, client):
    response = form_page(client, "GD-LS-11", "441521195003011230")
    assert response.status_code == 400 and "校验" in element(text(response), "error")
    assert 'type="file"' not in text(response)
    # an item without an age condition goes straight on to the form
    assert 'name="material-0"' in text(form_page(client, "GD-LS-04", born_years_ago(36)))


def test_eligibility_refusal_rules():
    item = {"eligibility": {"min_age": 60, "max_age": 70}, "consult_phone": "0660-6612333"}
    assert progress.eligibility_refusal(item, born_years_ago(65)) is None
    assert "本事项限 70 周岁及以下" in progress.eligibility_refusal(item, born_years_ago(71))
    assert progress.eligibility_refusal({}, born_years_ago(5)) is None
    credit = idnumbers.make_credit_code("91441521MA4W00000")  # an organisation: not checked
    assert progress.eligibility_refusal(item, credit) is None


# -- appointments -----------------------------------------------------------------------------

def book(client, slot, number=K.CITIZEN, phone="13800138000"):
    return client.post("/appointments", data={
        "slot": slot, "id_number": number, "name": "陈阿婆", "phone": phone,
        "form_token": token(client, "/appointments")})


def test_booking_full_slot_and_cancel(kit, client):
    db = kit.store(K.VILLAGE_A).db
    slot = ap.publish_slots(db, tomorrow(), "09:00", "09:30", 30, 1, by="clerk-a")[0]
    assert f'id="slot-{slot["id"]}"' in text(client.get("/appointments"))
    booked = book(client, slot["id"])
    assert booked.status_code == 302
    code = element(text(client.get(booked.location)), "booking-code")
    assert ap.find_booking(db, code)["slot"] == slot["id"]

    other = kit.apps[K.VILLAGE_A].test_client()
    assert "已约满" in element(text(other.get("/appointments")), "slots")
    full = book(other, slot["id"], K.AGENT, "13900139000")
    assert full.status_code == 409
    assert element(text(full), "error") == "该时段已约满，请选择其他时段。"

    cancel_token = token(other, "/appointments/cancel")
    for sent in ({"code": code, "last4": "9000"}, {"code": "AAAAAA", "last4": "8000"}):
        refused = other.post("/appointments/cancel", data=dict(sent, form_token=cancel_token))
        assert refused.status_code == 404
        assert element(text(refused), "message") == appointment_pages.CANCEL_MISMATCH
    assert ap.get_slot(db, slot["id"])["remaining"] == 0
    done = other.post("/appointments/cancel",
                      data={"code": code.lower(), "last4": "8000", "form_token": cancel_token})
    assert done.status_code == 200 and "已取消" in element(text(done), "message")
    assert ap.get_slot(db, slot["id"])["remaining"] == 1
    assert book(other, slot["id"], K.AGENT, "13900139000").status_code == 302


def test_booking_with_a_wrong_id_number_is_refused(kit, client):
    db = kit.store(K.VILLAGE_A).db
    slot = ap.publish_slots(db, tomorrow(), "09:00", "09:30", 30, 1, by="clerk-a")[0]
    response = book(client, slot["id"], number="441521195003011230")
    assert response.status_code == 400 and element(text(response), "error")
    assert ap.get_slot(db, slot["id"])["booked"] == 0


def staff_login(client, username):
    page = text(client.get("/login"))
    return client.post("/login", data={"username": username, "password": PASSWORD,
                                       "csrf_token": CSRF.search(page).group(1)})


def test_station_publishes_slots_books_for_a_citizen_and_sees_masked_names(kit):
    app = kit.apps[K.VILLAGE_A]
    add_account(app, "clerk1", PASSWORD, roles=("clerk",), full_name="王小明")
    add_account(app, "approver1", PASSWORD, roles=("approver",))
    window = app.test_client()
    assert staff_login(window, "clerk1").status_code == 302
    day = tomorrow().isoformat()
    csrf = CSRF.search(text(window.get("/appointments/admin"))).group(1)
    bad = window.post("/appointments/admin/publish", data={
        "day": day, "start": "09:00", "end": "09:45", "minutes": "30", "capacity": "2",
        "csrf_token": csrf})
    assert bad.status_code == 400 and "不能按每段 30 分钟整分" in element(text(bad), "error")
    published = window.post("/appointments/admin/publish", data={
        "day": day, "start": "09:00", "end": "10:00", "minutes": "30", "capacity": "2",
        "csrf_token": csrf})
    assert published.status_code == 302
    slots = ap.open_slots(app.extensions["store"].db, day)
    assert [(s["start"], s["end"]) for s in slots] == [("09:00", "09:30"), ("09:30", "10:00")]

    booked = window.post("/appointments/admin/book", data={
        "slot": slots[0]["id"], "id_number": K.CITIZEN, "name": "陈阿婆",
        "phone": "13800138000", "day": day, "csrf_token": csrf})
    assert booked.status_code == 302
    page = text(window.get(booked.location))
    row = element(page, "bookings")
    assert "陈**" in row and "138****8000" in row and "陈阿婆" not in page
    entries = audit.entries(app.extensions["store"].db, subject=f"appointments:{day}")
    assert entries and entries[0]["staff"] == "clerk1"

    code = ap.bookings(app.extensions["store"].db, day)[0]["code"]
    cancelled = window.post("/appointments/admin/cancel",
                            data={"code": code, "day": day, "csrf_token": csrf})
    assert cancelled.status_code == 302
    assert ap.find_booking(app.extensions["store"].db, code)["cancelled"]

    approver = app.test_client()
    staff_login(approver, "approver1")
    assert approver.get("/appointments/admin").status_code == 403


def test_bookings_are_throttled_per_address(kit):
    db = kit.store(K.VILLAGE_A).db
    slot = ap.publish_slots(db, tomorrow(), "09:00", "09:30", 30, 20, by="clerk-a")[0]
    people = [idnumbers.make_resident_id("441521", datetime.date(1960, 1, 1), n)
              for n in range(1, progress.BOOK_PER_ADDRESS.count + 2)]
    kiosk = browser(kit, "10.0.2.1")
    for person in people[:-1]:
        assert book(kiosk, slot["id"], person).status_code == 302
    refused = book(kiosk, slot["id"], people[-1])
    assert refused.status_code == 429
    message = element(text(refused), "error")
    assert "预约过多" in message and THROTTLE_WAIT.search(message)
    assert ap.get_slot(db, slot["id"])["booked"] == progress.BOOK_PER_ADDRESS.count
    assert book(browser(kit, "10.0.2.2"), slot["id"], people[-1]).status_code == 302


def test_oversized_booking_request_is_refused(kit, client):
    db = kit.store(K.VILLAGE_A).db
    slot = ap.publish_slots(db, tomorrow(), "09:00", "09:30", 30, 1, by="clerk-a")[0]
    response = client.post("/appointments", data={
        "slot": slot["id"], "id_number": K.CITIZEN, "name": "陈阿婆", "phone": "13800138000",
        "padding": "x" * (appointment_pages.MAX_BOOKING_REQUEST + 1),
        "form_token": token(client, "/appointments")})
    assert response.status_code == 413
    assert "提交的内容过大" in element(text(response), "message")
    assert ap.get_slot(db, slot["id"])["booked"] == 0


def test_every_file_field_says_its_limit_and_loads_the_upload_check(kit, client):
    page = text(form_page(client, "GD-LS-04"))
    fields = re.findall(r'<input type="file"[^>]*>', page)
    assert fields
    for field in fields:
        assert f'data-max-bytes="{MAX_BLOB_BYTES}"' in field
        described = re.search(r'aria-describedby="([^"]+)"', field).group(1)
        assert element(page, described) == \
            f"最多 3 个文件，每个不超过 {MAX_BLOB_BYTES // (1024 * 1024)} MB"
    # Loaded from this site (the CSP allows no inline script), after the page is parsed.
    assert '<script src="/static/upload-check.js" defer></script>' in page
    script = client.get("/static/upload-check.js")
    assert script.status_code == 200 and "已压缩为" in script.get_data(as_text=True)


def test_a_long_complaint_is_shown_once_and_the_timeline_points_to_it(kit, client):
    number = accepted_case(kit)
    prove(client, number, "陈阿婆")
    long_text = "等了很久没有人联系我，" * 60
    sent = client.post(f"/progress/{number}/complain",
                       data={"text": long_text, "form_token": token(client)})
    assert sent.status_code == 302
    page = text(client.get(sent.location))
    assert page.count(html.escape(long_text)) == 1
    assert long_text in element(page, "complaint-1")
    assert "见下方“投诉”" in element(page, "timeline")
