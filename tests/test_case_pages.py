"""Staff case pages: the window, the case and its actions, printables, queues, look-up.

Every test drives the pages through the Flask test client of the nodes of an in-process
region (tests/casekit.py), logged in as real staff accounts, and checks what the staff
member would see and what the stores hold afterwards.
"""

import datetime
import hashlib
import io
import json
import re

import pytest

from shared import clock
from shared.cases import appointments, supervision
from shared.cases import fold as F
from shared.cases.index import state_of
from shared.catalog.qr import qr_svg
from shared.lookup import OFFLINE_MESSAGE
from shared.views import cases
from tests import casekit
from tests.casekit import (
    AGENT,
    CITIZEN,
    COUNTY,
    OTHER_TOWNSHIP,
    PDF,
    TOWNSHIP,
    VILLAGE_A,
    VILLAGE_B,
)
from tests.conftest import add_account, form_token, make_app, staff_login

PASSWORD = "pages-pw-123"
#: Township item decided at the township; materials 0 and 1 are brought, 2-5 are shared.
LOW_INCOME = "GD-LS-04"
#: County item without deficiency acceptance; material 0 shared, 1 and 2 brought.
SENIOR_CARD = "GD-LS-12"
#: County item via the township; materials 0 and 1 shared, 2 and 3 brought.
PENSION = "GD-LS-02"


@pytest.fixture
def kit(tmp_path):
    """The region, every node serving the case pages with the kit's desk, and staff."""
    kit = serve(casekit.Kit(tmp_path))
    yield kit
    kit.close()


def serve(kit):
    """Every node of ``kit`` serves the case pages with the kit's desk; staff accounts."""
    for code, app in kit.apps.items():
        app.extensions["case_desk"] = kit.desk(code)
        if "cases" not in app.blueprints:
            cases.init_app(app)
    add_account(kit.apps[VILLAGE_A], "clerk-a", PASSWORD, roles=("clerk",),
                full_name="王小明", office_phone="0660-3300001")
    add_account(kit.apps[VILLAGE_B], "clerk-b", PASSWORD, roles=("clerk",),
                full_name="林小红", office_phone="0660-3300003")
    add_account(kit.apps[TOWNSHIP], "approver-t", PASSWORD, roles=("approver",),
                full_name="李审批", office_phone="0660-3300002")
    add_account(kit.apps[TOWNSHIP], "super-t", PASSWORD, roles=("supervisor",),
                full_name="赵督查", office_phone="0660-3300009")
    return kit


def login(kit, code, username):
    """A browser logged in as ``username`` at node ``code``."""
    return staff_login(kit.apps[code], username, PASSWORD)


def csrf(client):
    """The session's CSRF token, as a page's forms carry it."""
    return form_token(client, "/cases/")


def text(response):
    return response.get_data(as_text=True)


def decide(client, item, decision, statuses, files=None, token=True, **extra):
    """Submit the window's checklist form (step b); ``token=False`` sends no CSRF token."""
    data = {"step": "decide", "item": item, "applicant": CITIZEN, "name": "陈阿婆",
            "phone": "13800138000", "address": "海丰县海城镇某村 12 号",
            "decision": decision}
    if token:
        data["csrf_token"] = csrf(client)
    for index, status in statuses.items():
        data[f"m{index}_status"] = status
    for index, (content, filename) in (files or {}).items():
        data[f"m{index}_files"] = (io.BytesIO(content), filename)
    data.update(extra)
    return client.post("/cases/window", data=data, content_type="multipart/form-data")


def number_from(response):
    match = re.fullmatch(r"/cases/([0-9]+-[0-9]{8}-[0-9]+)/(receipt|notice)", response.location)
    assert match, response.location
    return match.group(1)


def case_count(kit, code):
    return kit.store(code).db.execute_sql("SELECT count(*) FROM case_state").fetchone()[0]


def audit_rows(kit, code):
    """``(staff, action, subject)`` of the node's audit log, oldest first."""
    db = kit.store(code).db
    if not db.execute_sql("SELECT 1 FROM sqlite_master WHERE name = 'audit_log'").fetchone():
        return []
    return [tuple(row) for row in db.execute_sql(
        "SELECT staff, action, subject FROM audit_log ORDER BY seq").fetchall()]


def audit_details(kit, code, action):
    """``(subject, detail)`` of the node's audit entries for ``action``, oldest first."""
    db = kit.store(code).db
    return [(subject, json.loads(detail)) for subject, detail in db.execute_sql(
        "SELECT subject, detail FROM audit_log WHERE action = ? ORDER BY seq",
        (action,)).fetchall()]


def lookup(client, item=LOW_INCOME, applicant=CITIZEN):
    """The window's step (a): the applicant's number for ``item``; the checklist page."""
    return client.post("/cases/window", data={"step": "lookup", "item": item,
                                              "applicant": applicant,
                                              "csrf_token": csrf(client)})


def accept_low_income(kit, client, decision="accept", statuses=None, files=None):
    """Accept the township item at village A through the window; returns the number."""
    statuses = statuses or {0: "provided", 1: "provided"}
    files = files if files is not None else {0: (PDF, "申请书.pdf")}
    response = decide(client, LOW_INCOME, decision, statuses, files)
    assert response.status_code == 302, text(response)
    return number_from(response)


# -- login and roles ---------------------------------------------------------------------------

def test_pages_need_a_login_and_the_right_role(kit):
    anonymous = kit.apps[VILLAGE_A].test_client()
    response = anonymous.get("/cases/window")
    assert response.status_code == 302 and "/login" in response.location
    approver = login(kit, TOWNSHIP, "approver-t")
    refused = approver.get("/cases/window")
    assert refused.status_code == 403
    assert "没有权限" in text(refused)


def test_a_clerk_cannot_approve(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.sync()
    # Even at the deciding township, a clerk account gets 403 for a decision.
    add_account(kit.apps[TOWNSHIP], "clerk-t", PASSWORD, roles=("clerk",))
    township_clerk = login(kit, TOWNSHIP, "clerk-t")
    response = township_clerk.post(f"/cases/{number}/approve",
                                   data={"csrf_token": csrf(township_clerk)})
    assert response.status_code == 403
    assert state_of(kit.store(TOWNSHIP).db, number)["status"] == F.HANDLING
    assert 'id="action-approve"' not in text(township_clerk.get(f"/cases/{number}"))


# -- the window ---------------------------------------------------------------------------------

def test_window_search_lookup_and_checklist(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    found = text(clerk.get("/cases/window", query_string={"q": "低保"}))
    assert f"item={LOW_INCOME}" in found
    chosen = text(clerk.get("/cases/window", query_string={"item": LOW_INCOME}))
    assert 'id="applicant-form"' in chosen
    bad = clerk.post("/cases/window", data={"step": "lookup", "item": LOW_INCOME,
                                            "applicant": CITIZEN[:-1] + "0",
                                            "csrf_token": csrf(clerk)})
    assert bad.status_code == 400
    assert "校验" in text(bad)
    page = clerk.post("/cases/window", data={"step": "lookup", "item": LOW_INCOME,
                                             "applicant": CITIZEN, "csrf_token": csrf(clerk)})
    html = text(page)
    assert page.status_code == 200
    assert 'id="checklist-form"' in html
    # Shared materials are not asked for; brought ones get the status choices and uploads.
    assert html.count("免提交：已通过共享数据核验") == 4
    assert 'name="m0_status"' in html and 'name="m2_status"' not in html
    assert 'id="decide-deficiency"' in html and 'id="decide-commitment"' not in html


def test_accept_at_the_window_prints_a_receipt_with_number_and_qr(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    assert number.startswith(VILLAGE_A + "-")
    state = state_of(kit.store(VILLAGE_A).db, number)
    assert state["status"] == F.HANDLING and state["stage"] == TOWNSHIP
    assert len(state["materials"]["0"]["scans"]) == 1
    receipt = clerk.get(f"/cases/{number}/receipt")
    html = text(receipt)
    assert receipt.status_code == 200
    assert f'id="case-number">{number}<' in html
    url = f"http://localhost/progress/{number}"
    assert f'id="progress-url">{url}<' in html
    assert qr_svg(url, title="扫码查询办理进度") in html
    assert "陈阿婆" in html  # the applicant's own paper: the name in full
    assert "0660-6612349" in html and "12345" in html  # the item's consultation phone
    assert "@media print" in html


def test_notice_lists_every_missing_material_and_the_case_continues_elsewhere(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, PENSION, "notice", {2: "missing", 3: "defective"},
                      m3_problem="未签名")
    assert response.status_code == 302
    assert response.location.endswith("/notice")
    number = number_from(response)
    html = text(clerk.get(f"/cases/{number}/notice"))
    rows = re.findall(r'class="material-name">([^<]+)<', html)
    assert rows == ["社会保障卡或本人银行账户信息", "城乡居民基本养老保险待遇领取申请表（通知表）"]
    assert "未签名" in html and "一次性告知" in html and "0660-6612333" in html
    assert clerk.get(f"/cases/{number}/receipt").status_code == 409
    # The citizen brings everything to village B, which finds the case and continues it.
    kit.join(VILLAGE_B, number)
    other = login(kit, VILLAGE_B, "clerk-b")
    form = text(other.get("/cases/window", query_string={"number": number}))
    assert 'value="陈阿婆"' in form and f'name="number" value="{number}"' in form
    done = decide(other, PENSION, "accept", {2: "provided", 3: "provided"}, number=number)
    assert done.status_code == 302, text(done)
    assert number_from(done) == number
    assert state_of(kit.store(VILLAGE_B).db, number)["status"] == F.HANDLING


def test_deficiency_refused_for_an_item_that_does_not_allow_it(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, SENIOR_CARD, "deficiency", {1: "missing", 2: "provided"})
    assert response.status_code == 400
    assert "不允许容缺受理" in text(response)
    assert case_count(kit, VILLAGE_A) == 0


def test_text_upload_refused_with_the_message_and_nothing_kept(kit, tmp_path):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, LOW_INCOME, "accept", {0: "provided", 1: "provided"},
                      files={0: (PDF, "ok.pdf"), 1: (b"just some notes\n", "note.txt")})
    assert response.status_code == 400
    assert "只接受 JPG、PNG 或 PDF 格式的扫描件" in text(response)
    assert case_count(kit, VILLAGE_A) == 0
    # The good file in the same form is not stored either: nothing changes.
    stored = [p for p in (tmp_path / VILLAGE_A / "blobs").rglob("*") if p.is_file()]
    assert stored == []


def test_a_refused_decision_keeps_the_uploaded_scans_offered(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, LOW_INCOME, "accept", {0: "provided", 1: "missing"},
                      files={0: (PDF, "a.pdf")})
    assert response.status_code == 400
    html = text(response)
    assert "仍缺少或不符合要求的材料" in html
    digest = hashlib.sha256(PDF).hexdigest()
    assert f'name="m0_reuse" value="{digest}" checked' in html
    assert case_count(kit, VILLAGE_A) == 0


def test_missing_csrf_token_is_refused_and_changes_nothing(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, LOW_INCOME, "accept", {0: "provided", 1: "provided"},
                      token=False)
    assert response.status_code == 400
    assert case_count(kit, VILLAGE_A) == 0
    number = accept_low_income(kit, clerk)
    refused = clerk.post(f"/cases/{number}/change_delivery", data={"station": VILLAGE_A})
    assert refused.status_code == 400
    assert len(state_of(kit.store(VILLAGE_A).db, number)["timeline"]) == 1


# -- queues, decisions, delivery ----------------------------------------------------------------

def test_approver_queue_approve_and_deliver_through_the_pages(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    approver = login(kit, TOWNSHIP, "approver-t")
    assert number not in text(approver.get("/cases/"))
    kit.sync()
    queue = text(approver.get("/cases/"))
    assert 'id="count-queue">1<' in queue
    assert f'data-number="{number}"' in queue
    page = text(approver.get(f"/cases/{number}"))
    assert 'id="action-approve"' in page and 'id="action-forward"' not in page
    refused = approver.post(f"/cases/{number}/reject",
                            data={"reason": " ", "csrf_token": csrf(approver)})
    assert refused.status_code == 409
    assert "不予批准须写明理由" in text(refused)
    assert state_of(kit.store(TOWNSHIP).db, number)["status"] == F.HANDLING
    form = {"result": "准予纳入低保", "licence_name": "低保证", "licence_number": "DB-001",
            "licence_valid_until": "2030-12-31"}
    # An irreversible decision is confirmed first: the page says what will be done.
    asked = approver.post(f"/cases/{number}/approve", data={**form, "csrf_token": csrf(approver)})
    assert asked.status_code == 200 and "请确认：审批通过" in text(asked)
    assert "准予纳入低保" in text(asked) and "低保证 DB-001" in text(asked)
    assert state_of(kit.store(TOWNSHIP).db, number)["status"] == F.HANDLING  # not yet
    approved = approver.post(f"/cases/{number}/approve", data={
        **form, "confirm": "1", "csrf_token": csrf(approver)})
    assert approved.status_code == 302
    assert "已审批通过" in text(approver.get(approved.location))
    kit.sync()
    ready = text(clerk.get("/cases/"))
    assert 'id="count-ready">1<' in ready
    # Delivery checks who collects: another person's number is refused, nothing changes.
    wrong = clerk.post(f"/cases/{number}/deliver", data={
        "to": "applicant", "collector_id": AGENT, "confirm": "1", "csrf_token": csrf(clerk)})
    assert wrong.status_code == 409 and "领取人证件号码与申请人不符" in text(wrong)
    asked = clerk.post(f"/cases/{number}/deliver", data={
        "to": "applicant", "collector_id": CITIZEN, "csrf_token": csrf(clerk)})
    assert "请确认：确认送达" in text(asked) and "申请人本人" in text(asked)
    assert state_of(kit.store(VILLAGE_A).db, number)["status"] == F.READY
    delivered = clerk.post(f"/cases/{number}/deliver", data={
        "to": "applicant", "collector_id": CITIZEN, "confirm": "1", "csrf_token": csrf(clerk)})
    assert delivered.status_code == 302
    state = state_of(kit.store(VILLAGE_A).db, number)
    assert state["status"] == F.DONE and state["delivered"]["node"] == VILLAGE_A
    assert state["delivered"]["id_checked"] is True
    assert "申请人本人领取（已核验证件） · 经办人 王小明" in text(clerk.get(f"/cases/{number}"))
    html = text(clerk.get(f"/cases/{number}"))
    assert 'data-status="done"' in html
    assert "李审批" in html and "0660-3300002" in html  # the approver in the timeline
    assert 'id="no-actions"' in html


def test_deficiency_blocks_approval_until_the_clerk_supplements(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk, "deficiency", {0: "provided", 1: "missing"})
    receipt = text(clerk.get(f"/cases/{number}/receipt"))
    assert 'id="deficiency-due"' in receipt and "家庭经济状况核对授权书" in receipt
    kit.sync()
    approver = login(kit, TOWNSHIP, "approver-t")
    page = text(approver.get(f"/cases/{number}"))
    assert 'id="approve-blocked"' in page and 'id="action-approve"' not in page
    blocked = approver.post(f"/cases/{number}/approve", data={"csrf_token": csrf(approver)})
    assert blocked.status_code == 409 and "容缺材料未补齐" in text(blocked)
    supplied = clerk.post(f"/cases/{number}/supplement", data={
        "s1_files": (io.BytesIO(PDF), "授权书.pdf"), "csrf_token": csrf(clerk)},
        content_type="multipart/form-data")
    assert supplied.status_code == 302
    assert state_of(kit.store(VILLAGE_A).db, number)["outstanding"] == []
    kit.sync()
    assert 'id="action-approve"' in text(approver.get(f"/cases/{number}"))


def test_case_views_and_scans_are_audited(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    before = len(audit_rows(kit, VILLAGE_A))
    page = text(clerk.get(f"/cases/{number}"))
    assert "陈阿婆" in page and "13800138000" in page
    assert audit_rows(kit, VILLAGE_A)[before:] == [("clerk-a", "view_case", number)]
    sha = state_of(kit.store(VILLAGE_A).db, number)["materials"]["0"]["scans"][0]
    scan = clerk.get(f"/cases/{number}/scans/{sha}")
    assert scan.status_code == 200 and scan.mimetype == "application/pdf"
    assert scan.data == PDF
    assert audit_rows(kit, VILLAGE_A)[-1] == ("clerk-a", "view_scan", number)


def test_supervisor_sees_everything_here_and_handles_a_complaint(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.desk(VILLAGE_A).complain(number, "窗口人员态度不好")
    kit.sync()
    supervisor = login(kit, TOWNSHIP, "super-t")
    board = text(supervisor.get("/cases/"))
    assert 'id="count-here">1<' in board and 'id="count-complaints">1<' in board
    complaint = state_of(kit.store(TOWNSHIP).db, number)["complaints"][0]["id"]
    answered = supervisor.post(f"/cases/{number}/complaint", data={
        "complaint": complaint, "stage": "replied", "text": "已约谈，致歉",
        "csrf_token": csrf(supervisor)})
    assert answered.status_code == 302
    state = state_of(kit.store(TOWNSHIP).db, number)
    assert state["complaints"][0]["stage"] == "replied"
    assert "已约谈，致歉" in text(supervisor.get(f"/cases/{number}"))


# -- handle anywhere ----------------------------------------------------------------------------

def test_find_lists_the_cases_of_a_person_and_says_when_offline(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.sync()
    other = login(kit, VILLAGE_B, "clerk-b")
    bad = other.post("/cases/find", data={"applicant": "123", "csrf_token": csrf(other)})
    assert bad.status_code == 400
    found = other.post("/cases/find", data={"applicant": CITIZEN, "csrf_token": csrf(other)})
    html = text(found)
    assert f'href="/cases/{number}"' in html and 'id="find-message"' not in html
    assert audit_rows(kit, VILLAGE_B)[-1][:2] == ("clerk-b", "find_cases")
    kit.apps[VILLAGE_B].config["PARENT_URL"] = "http://127.0.0.1:9"
    offline = text(other.post("/cases/find", data={"applicant": CITIZEN,
                                                   "csrf_token": csrf(other)}))
    assert OFFLINE_MESSAGE in offline
    assert f'href="/cases/{number}"' in offline


def test_parallel_departments_give_opinions_and_the_lead_decides(kit):
    add_account(kit.apps[TOWNSHIP], "lead-t", PASSWORD, roles=("approver",),
                full_name="农业审批", department="农业农村")
    add_account(kit.apps[TOWNSHIP], "land-t", PASSWORD, roles=("approver",),
                full_name="资源审批", department="自然资源")
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, "GD-TEST-PAR", "accept", {0: "provided", 3: "provided",
                                                       4: "provided"})
    number = number_from(response)
    kit.sync()
    land, lead = login(kit, TOWNSHIP, "land-t"), login(kit, TOWNSHIP, "lead-t")
    assert f'data-number="{number}"' in text(land.get("/cases/"))
    page = text(land.get(f"/cases/{number}"))
    assert 'id="action-opinion"' in page and 'id="action-approve"' not in page
    assert "并联部门意见未齐" in page
    given = land.post(f"/cases/{number}/opinion", data={
        "opinion": "agree", "text": "符合规划", "csrf_token": csrf(land)})
    assert given.status_code == 302
    assert 'id="action-opinion"' not in text(land.get(f"/cases/{number}"))
    lead.post(f"/cases/{number}/opinion", data={"opinion": "agree",
                                                  "csrf_token": csrf(lead)})
    # All opinions are in: only the lead department decides.
    assert "由牵头部门（农业农村）作出决定" in text(land.get(f"/cases/{number}"))
    assert lead.post(f"/cases/{number}/approve",
                     data={"confirm": "1", "csrf_token": csrf(lead)}).status_code == 302
    assert state_of(kit.store(TOWNSHIP).db, number)["status"] == F.READY


def test_commitment_with_a_proxy_and_the_post_check(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, "GD-LS-13", "commitment", {2: "committed"},
                      proxy_number=casekit.AGENT, proxy_name="陈代办",
                      proxy_phone="13900139000", proxy_file=(io.BytesIO(PDF), "委托书.pdf"))
    number = number_from(response)
    receipt = text(clerk.get(f"/cases/{number}/receipt"))
    assert "告知承诺受理" in receipt and 'id="postcheck-due"' in receipt
    page = text(clerk.get(f"/cases/{number}"))
    assert "陈代办" in page and "授权委托书" in page
    kit.sync()
    supervisor = login(kit, TOWNSHIP, "super-t")
    assert f'data-number="{number}"' in text(supervisor.get("/cases/"))
    checked = supervisor.post(f"/cases/{number}/postcheck", data={
        "truthful": "yes", "text": "已核实", "csrf_token": csrf(supervisor)})
    assert checked.status_code == 302
    assert state_of(kit.store(TOWNSHIP).db, number)["postcheck"]["result"] == "truthful"
    # An item that does not allow a proxy shows no proxy section.
    form = text(clerk.post("/cases/window", data={"step": "lookup", "item": "GD-LS-18",
                                                  "applicant": CITIZEN,
                                                  "csrf_token": csrf(clerk)}))
    assert 'id="checklist-form"' in form and 'id="proxy"' not in form


def test_a_second_application_offers_earlier_scans_unticked_with_a_preview(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    first = accept_low_income(kit, clerk)
    html = text(lookup(clerk))
    assert f'href="/cases/{first}"' in html  # the earlier case in the history
    assert 'name="name" value="陈阿婆"' in html and 'name="phone" value="13800138000"' in html
    digest = hashlib.sha256(PDF).hexdigest()
    # Offered, never ticked: the clerk looks at it first through the preview link.
    offer = re.search(rf'<input type="checkbox" name="m0_reuse" value="{digest}"([^>]*)>', html)
    assert offer and "checked" not in offer.group(1)
    preview = f'/cases/{first}/scans/{digest}'
    assert f'href="{preview}"' in html and first in html
    assert clerk.get(preview).data == PDF
    assert 'name="m1_reuse"' not in html  # no earlier scan of that material
    assert 'name="m0_status" value="provided" required checked' not in html
    key = kit.desk(VILLAGE_A).applicant_key(CITIZEN)
    assert ("clerk-a", "window_applicant", key) in audit_rows(kit, VILLAGE_A)
    # Ticked reuse counts as provided: the second case carries the same scan.
    again = decide(clerk, LOW_INCOME, "accept", {0: "provided", 1: "provided"},
                   m0_reuse=digest)
    second = number_from(again)
    assert second != first
    assert state_of(kit.store(VILLAGE_A).db, second)["materials"]["0"]["scans"] == [digest]


def test_a_scan_that_is_not_the_applicants_cannot_be_slipped_in(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    forged = hashlib.sha256(b"someone else's passport").hexdigest()
    response = decide(clerk, LOW_INCOME, "accept", {0: "provided", 1: "provided"},
                      m0_reuse=forged)
    assert response.status_code == 400
    assert "不是本申请人的材料" in text(response)
    assert case_count(kit, VILLAGE_A) == 0


def test_another_station_offers_the_scans_of_a_case_it_has_joined(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    first = accept_low_income(kit, clerk)
    digest = hashlib.sha256(PDF).hexdigest()
    other = login(kit, VILLAGE_B, "clerk-b")
    assert f'value="{digest}"' not in text(lookup(other))  # not here yet
    kit.join(VILLAGE_B, first)
    html = text(lookup(other))
    assert f'href="/cases/{first}/scans/{digest}"' in html
    assert other.get(f"/cases/{first}/scans/{digest}").data == PDF
    again = decide(other, LOW_INCOME, "accept", {0: "provided", 1: "provided"},
                   m0_reuse=digest)
    assert again.status_code == 302, text(again)
    second = number_from(again)
    assert second.startswith(VILLAGE_B + "-")
    assert state_of(kit.store(VILLAGE_B).db, second)["materials"]["0"]["scans"] == [digest]


def test_window_lookup_goes_on_with_local_cases_when_the_region_is_offline(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    first = accept_low_income(kit, clerk)
    kit.apps[VILLAGE_A].config["PARENT_URL"] = "http://127.0.0.1:9"
    page = lookup(clerk)
    html = text(page)
    assert page.status_code == 200
    assert f'id="lookup-message">{OFFLINE_MESSAGE}<' in html
    assert 'id="checklist-form"' in html and f'href="/cases/{first}"' in html
    kit.apps[VILLAGE_A].config.pop("PARENT_URL")
    assert 'id="lookup-message"' not in text(lookup(clerk))


# -- decision rights, transfer ------------------------------------------------------------------

def test_an_approver_of_another_department_sees_why_and_cannot_decide(kit):
    add_account(kit.apps[TOWNSHIP], "land-t", PASSWORD, roles=("approver",),
                full_name="资源审批", department="自然资源")
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.sync()
    land = login(kit, TOWNSHIP, "land-t")
    page = text(land.get(f"/cases/{number}"))
    assert 'id="decide-blocked"' in page and "不由自然资源办理" in page
    for action in ("approve", "reject", "request_supplement", "transfer"):
        assert f'id="action-{action}"' not in page
    refused = land.post(f"/cases/{number}/approve", data={"csrf_token": csrf(land)})
    assert refused.status_code == 409 and "不由自然资源办理" in text(refused)
    state = state_of(kit.store(TOWNSHIP).db, number)
    assert state["status"] == F.HANDLING and state["decision"] is None


def test_transfer_offers_only_the_registered_townships_and_county(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.sync()
    approver = login(kit, TOWNSHIP, "approver-t")
    page = text(approver.get(f"/cases/{number}"))
    form = page[page.index('id="action-transfer"'):]
    form = form[:form.index("</form>")]
    codes = re.findall(r'<option value="([0-9]+)">', form)
    assert sorted(codes) == sorted([COUNTY, OTHER_TOWNSHIP])
    assert "梅陇镇" in form and 'name="to" id="transfer-to"' in form
    refused = approver.post(f"/cases/{number}/transfer", data={
        "to": VILLAGE_B, "reason": "属地", "csrf_token": csrf(approver)})
    assert refused.status_code == 409 and "请从列表中选择转办站点" in text(refused)
    assert state_of(kit.store(TOWNSHIP).db, number)["stage"] == TOWNSHIP
    moved = approver.post(f"/cases/{number}/transfer", data={
        "to": OTHER_TOWNSHIP, "reason": "申请人户籍在梅陇镇", "csrf_token": csrf(approver)})
    assert moved.status_code == 302
    assert state_of(kit.store(TOWNSHIP).db, number)["stage"] == OTHER_TOWNSHIP


# -- events that did not take effect ------------------------------------------------------------

def test_two_stations_accepting_offline_show_the_ignored_acceptance(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, LOW_INCOME, "notice", {0: "provided", 1: "missing"},
                      files={0: (PDF, "申请书.pdf")})
    number = number_from(response)
    kit.join(VILLAGE_B, number)
    other = login(kit, VILLAGE_B, "clerk-b")
    # Cut off from each other, both stations accept the same case.
    for client in (clerk, other):
        done = decide(client, LOW_INCOME, "accept", {0: "provided", 1: "provided"},
                      number=number)
        assert done.status_code == 302, text(done)
    kit.sync()
    state = state_of(kit.store(TOWNSHIP).db, number)
    assert [e["kind"] for e in state["ignored"]] == ["accepted"]
    approver = login(kit, TOWNSHIP, "approver-t")
    queue = text(approver.get("/cases/"))
    row = queue[queue.index(f'data-number="{number}"'):]
    assert "有未生效操作" in row[:row.index("</tr>")]
    page = text(approver.get(f"/cases/{number}"))
    block = page[page.index('id="ignored"'):page.index("</section>", page.index('id="ignored"'))]
    assert "未生效的操作" in block and "受理" in block and "该案件已经受理" in block
    assert "西门村" in block  # the later acceptance, at village B


def test_a_case_without_ignored_events_has_no_block_and_no_tag(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.sync()
    approver = login(kit, TOWNSHIP, "approver-t")
    assert "有未生效操作" not in text(approver.get("/cases/"))
    assert 'id="ignored"' not in text(approver.get(f"/cases/{number}"))


# -- printables, audit, scans -------------------------------------------------------------------

def test_receipt_qr_points_to_the_public_site_when_set(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.apps[VILLAGE_A].config["PUBLIC_URL"] = "https://tongban.haifeng.gov.cn/"
    html = text(clerk.get(f"/cases/{number}/receipt"))
    url = f"https://tongban.haifeng.gov.cn/progress/{number}"
    assert f'id="progress-url">{url}<' in html
    assert qr_svg(url, title="扫码查询办理进度") in html
    assert "localhost" not in html


def test_views_of_a_proxied_case_record_the_applicant_and_the_agent(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    response = decide(clerk, "GD-LS-13", "commitment", {2: "committed"},
                      proxy_number=AGENT, proxy_name="陈代办", proxy_phone="13900139000",
                      proxy_file=(io.BytesIO(PDF), "委托书.pdf"))
    number = number_from(response)
    desk = kit.desk(VILLAGE_A)
    expected = {"applicant_key": desk.applicant_key(CITIZEN),
                "agent_key": desk.applicant_key(AGENT)}
    page = text(clerk.get(f"/cases/{number}"))
    assert "陈代办" in page
    sha = re.search(rf'href="/cases/{number}/scans/([0-9a-f]{{64}})">授权委托书', page).group(1)
    assert clerk.get(f"/cases/{number}/scans/{sha}").status_code == 200
    clerk.get(f"/cases/{number}/receipt")
    for action in ("view_case", "view_scan", "print_receipt"):
        subject, detail = audit_details(kit, VILLAGE_A, action)[-1]
        assert subject == number
        assert {k: detail.get(k) for k in expected} == expected, action
    assert audit_details(kit, VILLAGE_A, "view_scan")[-1][1]["sha256"] == sha


def test_notice_and_window_continue_views_record_the_applicant(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = number_from(decide(clerk, PENSION, "notice", {2: "missing", 3: "provided"}))
    clerk.get(f"/cases/{number}/notice")
    clerk.get("/cases/window", query_string={"number": number})
    key = kit.desk(VILLAGE_A).applicant_key(CITIZEN)
    for action in ("print_notice", "window_continue"):
        subject, detail = audit_details(kit, VILLAGE_A, action)[-1]
        assert subject == number and detail == {"applicant_key": key}, action


def test_scans_are_served_sandboxed_and_never_sniffed(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    sha = state_of(kit.store(VILLAGE_A).db, number)["materials"]["0"]["scans"][0]
    scan = clerk.get(f"/cases/{number}/scans/{sha}")
    assert scan.status_code == 200
    assert scan.headers["Content-Security-Policy"] == "sandbox"
    assert scan.headers["X-Content-Type-Options"] == "nosniff"


# -- handle anywhere: not yet synced ------------------------------------------------------------

def test_find_offers_a_requery_for_cases_not_yet_here(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    other = login(kit, VILLAGE_B, "clerk-b")
    key = kit.desk(VILLAGE_B).applicant_key(CITIZEN)
    # What the region answered: the case is known, its documents are still on the way.
    kit.store(VILLAGE_B).db.execute_sql(
        'INSERT INTO case_applicant ("case", applicant_key, item, origin, handler, hlc) '
        "VALUES (?, ?, ?, ?, ?, ?)",
        (number, key, "item:" + LOW_INCOME + "@1", VILLAGE_A, TOWNSHIP, "0"))
    html = text(other.post("/cases/find", data={"applicant": CITIZEN,
                                                "csrf_token": csrf(other)}))
    assert "尚未同步到本站" in html and "请稍后刷新" not in html
    form = html[html.index('id="requery-form"'):]
    form = form[:form.index("</form>")]
    assert 'name="csrf_token"' in form and f'name="applicant" value="{CITIZEN}"' in form
    assert 'id="requery"' in form and "重新查询" in form
    kit.join(VILLAGE_B, number)
    again = text(other.post("/cases/find", data={"applicant": CITIZEN,
                                                 "csrf_token": csrf(other)}))
    assert f'href="/cases/{number}"' in again and 'id="requery-form"' not in again


# -- links, bookings, no-visit acceptance --------------------------------------------------------

def test_work_list_links_home_and_appointments_and_counts_todays_bookings(kit):
    app = kit.apps[VILLAGE_A]
    db = kit.store(VILLAGE_A).db
    today = clock.today()
    morning = datetime.datetime.combine(today, datetime.time(0, 1))
    slot = appointments.publish_slots(db, today, "23:00", "23:30", 30, 5, by="clerk-a",
                                      now=morning)[0]
    desk = kit.desk(VILLAGE_A)
    for person in (CITIZEN, AGENT):
        appointments.book(db, slot["id"], desk.applicant_key(person), {"sealed": "x"},
                          None, "clerk-a", now=morning)
    clerk = login(kit, VILLAGE_A, "clerk-a")
    html = text(clerk.get("/cases/"))
    assert 'id="bookings-count">2<' in html
    with app.test_request_context():
        from flask import url_for
        admin = url_for("appointments.admin", day=today.isoformat())
        home = url_for("home.index")
    assert f'href="{admin}" id="bookings-today"' in html
    assert f'href="{home}" id="link-home">首页<' in html and 'id="link-appointments"' in html
    approver = login(kit, TOWNSHIP, "approver-t")
    board = text(approver.get("/cases/"))
    assert 'id="bookings-count"' not in board and 'id="link-appointments"' not in board


def test_the_clerk_sees_her_stations_cases_in_progress_elsewhere(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    number = accept_low_income(kit, clerk)
    kit.sync()
    kit.apps[VILLAGE_A].config["PARENT_URL"] = "http://127.0.0.1:9"  # a village has a parent
    html = text(clerk.get("/cases/"))
    section = block(html, "section-accepted_here")
    assert "本站受理的在办件" in section and "不计入待办" in section
    row = section[section.index(f'data-number="{number}"'):]
    row = row[:row.index("</tr>")]
    # Where it is now, its deadline, and that it has not reached the township yet.
    assert "海城镇" in row and "尚未上传" in row
    assert re.search(r'class="due">20[0-9]{2}-[0-9]{2}-[0-9]{2}', row)
    assert 'id="count-total">0<' in html  # nothing to do here: the township decides it
    # Once syncd has pushed past it, the row says so.
    store = kit.store(VILLAGE_A)
    from shared.syncstatus import LinkStatusTable

    table = LinkStatusTable(store.db)
    table.ensure()
    table.save({"link": "parent", "peer": "t", "state": "up", "updated": clock.time(),
                "push_seq": store.info()["update_seq"]})
    row = block(text(clerk.get("/cases/")), "section-accepted_here")
    assert "已上传" in row and "尚未上传" not in row


def test_a_preapplied_case_needing_no_visit_is_accepted_without_the_applicant(kit):
    desk = kit.desk(VILLAGE_A)
    number = desk.preapply("GD-LS-13", casekit.applicant(), VILLAGE_A,
                           {2: {"scans": [casekit.upload(desk)]}})
    clerk = login(kit, VILLAGE_A, "clerk-a")
    form = text(clerk.get("/cases/window", query_string={"number": number}))
    assert 'id="no-visit"' in form and "申请人未到场（网上预申请，无需到场）" in form
    done = decide(clerk, "GD-LS-13", "accept", {2: "provided"}, number=number, no_visit="1")
    assert done.status_code == 302, text(done)
    state = state_of(kit.store(VILLAGE_A).db, number)
    assert state["status"] == F.HANDLING and state["visits"] == 0


def test_the_no_visit_option_is_refused_for_a_walk_in_application(kit):
    clerk = login(kit, VILLAGE_A, "clerk-a")
    assert 'id="no-visit"' not in text(lookup(clerk, "GD-LS-13"))
    response = decide(clerk, "GD-LS-13", "accept", {2: "provided"},
                      files={2: (PDF, "登记表.pdf")}, no_visit="1")
    assert response.status_code == 400 and "未到场" in text(response)
    assert case_count(kit, VILLAGE_A) == 0


# -- cards (督办), extensions and clock stops ----------------------------------------------------

D = datetime.date
#: 就业困难人员认定: promised 5 working days; reviewed at the township, decided by the county.
HARD_TO_EMPLOY = "GD-LS-17"





@pytest.fixture
def fkit(tmp_path, frozen):
    """The region with a frozen case clock (real holidays), serving the pages."""
    kit = serve(casekit.Kit(tmp_path, wall_clock=frozen))
    add_account(kit.apps[COUNTY], "super-c", PASSWORD, roles=("supervisor",),
                full_name="钱督查", office_phone="0660-3300010")
    yield kit
    kit.close()


def accept_at(kit, frozen, day, item=HARD_TO_EMPLOY):
    """Accept ``item`` at village A on ``day`` (the desk, as the window would); synced."""
    frozen.at(day)
    desk = kit.desk(VILLAGE_A)
    number = desk.receive(item, casekit.applicant(), casekit.full_materials(desk, item),
                          "accept", casekit.clerk())
    kit.sync()
    return number


def sweep_at(kit, frozen, day, code=TOWNSHIP):
    frozen.at(day)
    issued = supervision.sweep(kit.desk(code), day)
    kit.sync()
    return issued


def block(html, element_id):
    """The element with ``id`` up to its closing tag (a section, table, form or cell)."""
    start = html.index(f'id="{element_id}"')
    tag = html[html.rindex("<", 0, start) + 1:start].split()[0]
    return html[start:html.index(f"</{tag}>", start)]


def numbers_in(html, table_id):
    return re.findall(r'data-number="([^"]+)"', block(html, table_id))


def shown_due(client, number):
    """The due date the case page shows (None when it shows none)."""
    found = re.search(r'id="due-date">([0-9-]+)<', text(client.get(f"/cases/{number}")))
    return found.group(1) if found else None


def test_a_red_card_shows_on_the_case_and_in_the_supervisors_list(fkit, frozen):
    number = accept_at(fkit, frozen, D(2026, 2, 13))  # due 27 Feb (after Spring Festival)
    assert sweep_at(fkit, frozen, D(2026, 2, 25)) == [(number, "yellow")]
    supervisor = login(fkit, TOWNSHIP, "super-t")
    assert 'id="table-red_cards"' not in text(supervisor.get("/cases/"))  # yellow only
    assert sweep_at(fkit, frozen, D(2026, 2, 28)) == [(number, "red")]
    supervisor = login(fkit, TOWNSHIP, "super-t")  # days later: a new session
    page = text(supervisor.get(f"/cases/{number}"))
    cards = block(page, "cards")
    rows = re.findall(r'class="card-row" data-card="(\w+)"', cards)
    assert rows == ["yellow", "red"]
    assert cards.count("2026-02-27") == 2 and "海城镇" in cards
    assert "逾期 1 个工作日" in cards and "待督查人员跟进" in cards
    assert 'id="due-date">2026-02-27<' in page
    assert 'data-card="red"' in block(page, "current-card")
    assert 'id="action-follow_up-1"' in page
    # The supervisor's list, here and at the county; the approver's queue shows the badge.
    board = text(supervisor.get("/cases/"))
    assert numbers_in(board, "table-red_cards") == [number]
    assert f'href="/cases/{number}#supervision"' in board
    assert supervisor.get("/cases/").headers["Cache-Control"] == "no-store"
    county = login(fkit, COUNTY, "super-c")
    assert numbers_in(text(county.get("/cases/")), "table-red_cards") == [number]
    approver = login(fkit, TOWNSHIP, "approver-t")
    queue = text(approver.get("/cases/"))
    row = queue[queue.index(f'data-number="{number}"'):]
    assert 'class="card-red card-badge"' in row[:row.index("</tr>")]
    assert 'id="action-follow_up-1"' not in text(approver.get(f"/cases/{number}"))


def test_only_a_supervisor_follows_a_red_card_up_and_it_leaves_the_list(fkit, frozen):
    number = accept_at(fkit, frozen, D(2026, 2, 13))
    sweep_at(fkit, frozen, D(2026, 2, 28))
    red = next(c for c in state_of(fkit.store(TOWNSHIP).db, number)["cards"]
               if c["color"] == "red")
    clerk = login(fkit, VILLAGE_A, "clerk-a")
    refused = clerk.post(f"/cases/{number}/follow_up", data={
        "card": red["id"], "note": "已督促", "csrf_token": csrf(clerk)})
    assert refused.status_code == 403
    supervisor = login(fkit, TOWNSHIP, "super-t")
    empty = supervisor.post(f"/cases/{number}/follow_up", data={
        "card": red["id"], "note": "  ", "csrf_token": csrf(supervisor)})
    assert empty.status_code == 409 and "请填写跟进情况" in text(empty)
    assert [n for n, _ in supervision.red_cards_waiting(fkit.store(TOWNSHIP).db)] == [number]
    done = supervisor.post(f"/cases/{number}/follow_up", data={
        "card": red["id"], "note": "已电话督促审核人员今日办结", "csrf_token": csrf(supervisor)})
    assert done.status_code == 302
    assert "已登记督办跟进情况" in text(supervisor.get(done.location))
    board = text(supervisor.get("/cases/"))
    assert 'id="table-red_cards"' not in board and 'id="section-red_cards"' in board
    page = text(supervisor.get(f"/cases/{number}"))
    assert "已电话督促审核人员今日办结" in block(page, "cards") and "赵督查" in block(page, "cards")
    assert 'id="action-follow_up-1"' not in page
    again = supervisor.post(f"/cases/{number}/follow_up", data={
        "card": red["id"], "note": "再次督促", "csrf_token": csrf(supervisor)})
    assert again.status_code == 409
    fkit.sync()
    assert supervision.red_cards_waiting(fkit.store(COUNTY).db) == []


def test_the_approver_queue_puts_red_then_yellow_then_the_earliest_due(fkit, frozen):
    plain = accept_at(fkit, frozen, D(2026, 2, 13))     # due 27 Feb, no card
    yellow = accept_at(fkit, frozen, D(2026, 2, 13))    # due 27 Feb, yellow
    red = accept_at(fkit, frozen, D(2026, 2, 13))       # due 27 Feb, red
    late_red = accept_at(fkit, frozen, D(2026, 2, 24))  # due later, red
    township = fkit.desk(TOWNSHIP)
    for number, color in ((yellow, "yellow"), (late_red, "red"), (red, "red")):
        due = F.due_date(township.state(number), fkit.calendar).isoformat()
        township.issue_card(number, color, due, -1 if color == "red" else 1)
    approver = login(fkit, TOWNSHIP, "approver-t")
    queue = text(approver.get("/cases/"))
    assert numbers_in(queue, "table-queue") == [red, late_red, yellow, plain]
    badges = re.findall(r'data-number="([^"]+)".*?<td class="card">(.*?)</td>', queue, re.S)
    assert [("红牌" in b, "黄牌" in b) for _, b in badges] == [
        (True, False), (True, False), (False, True), (False, False)]


def test_an_extension_through_the_page_moves_the_due_date_and_drops_the_card(fkit, frozen):
    number = accept_at(fkit, frozen, D(2026, 9, 28))  # before National Day
    approver = login(fkit, TOWNSHIP, "approver-t")
    assert shown_due(approver, number) == "2026-10-10"  # 29, 30 Sep; 8, 9, 10 Oct
    frozen.at(D(2026, 10, 8))
    approver = login(fkit, TOWNSHIP, "approver-t")  # days later: a new session
    fkit.desk(TOWNSHIP).issue_card(number, "yellow", "2026-10-10", 2)
    row = text(approver.get("/cases/"))
    row = row[row.index(f'data-number="{number}"'):]
    assert "黄牌" in row[:row.index("</tr>")]
    for days, reason, message in (("0", "需实地核查", "1 到 365"), ("", "需实地核查", "1 到 365"),
                                  ("3", " ", "延长审批期限须写明理由")):
        refused = approver.post(f"/cases/{number}/extend", data={
            "days": days, "reason": reason, "csrf_token": csrf(approver)})
        assert refused.status_code == 409 and message in text(refused)
    assert state_of(fkit.store(TOWNSHIP).db, number)["extensions"] == []
    assert shown_due(approver, number) == "2026-10-10"
    done = approver.post(f"/cases/{number}/extend", data={
        "days": "3", "reason": "需实地核查就业困难情况", "csrf_token": csrf(approver)})
    assert done.status_code == 302
    page = text(approver.get(f"/cases/{number}"))
    assert 'id="due-date">2026-10-14<' in page  # 12, 13, 14 Oct
    extension = block(page, "extensions")
    assert "延长 3 个工作日" in extension and "需实地核查就业困难情况" in extension
    assert "李审批" in extension
    assert 'id="current-card"' not in page  # the yellow card was for 10 Oct
    assert 'data-card="yellow"' in block(page, "cards")
    row = text(approver.get("/cases/"))
    row = row[row.index(f'data-number="{number}"'):]
    assert "黄牌" not in row[:row.index("</tr>")]
    # A clerk sees the due date but cannot extend.
    clerk = login(fkit, VILLAGE_A, "clerk-a")
    fkit.sync()
    assert 'id="action-extend"' not in text(clerk.get(f"/cases/{number}"))
    assert clerk.post(f"/cases/{number}/extend", data={
        "days": "5", "reason": "x", "csrf_token": csrf(clerk)}).status_code == 403


def test_a_clock_stop_through_the_page_pauses_and_resumes_the_due_date(fkit, frozen):
    number = accept_at(fkit, frozen, D(2026, 9, 28), item=LOW_INCOME)  # decided here
    approver = login(fkit, TOWNSHIP, "approver-t")
    before = shown_due(approver, number)
    assert before == "2026-10-21"  # 13 working days across National Day
    form = block(text(approver.get(f"/cases/{number}")), "action-stop_clock")
    options = re.findall(r'<option value="([^"]*)">', form)
    assert options == ["", "受理前家庭经济状况信息核对（2个工作日）", "公示期7日", "其他"]
    frozen.at(D(2026, 9, 29))
    approver = login(fkit, TOWNSHIP, "approver-t")  # the next day: a new session
    for data, message in (({"reason": "其他", "other": " "}, "暂停计时须写明环节"),
                          ({"reason": ""}, "暂停计时须写明环节"),
                          ({"reason": "打麻将"}, "请从列表中选择暂停计时的环节")):
        refused = approver.post(f"/cases/{number}/stop_clock",
                                data={**data, "csrf_token": csrf(approver)})
        assert refused.status_code == 409 and message in text(refused)
    assert state_of(fkit.store(TOWNSHIP).db, number)["paused"] is None
    assert shown_due(approver, number) == before
    stopped = approver.post(f"/cases/{number}/stop_clock", data={
        "reason": "其他", "other": "专家评审", "csrf_token": csrf(approver)})
    assert stopped.status_code == 302
    page = text(approver.get(f"/cases/{number}"))
    assert 'id="paused">计时已暂停（专家评审，自 2026-09-29）<' in page
    assert 'id="due-date"' not in page
    assert 'id="action-resume_clock"' in page and 'id="action-stop_clock"' not in page
    assert 'id="action-request_supplement"' not in page  # resume first
    queue = text(approver.get("/cases/"))
    row = queue[queue.index(f'data-number="{number}"'):]
    assert "计时已暂停（专家评审）" in row[:row.index("</tr>")]
    frozen.at(D(2026, 10, 12))
    approver = login(fkit, TOWNSHIP, "approver-t")
    resumed = approver.post(f"/cases/{number}/resume_clock",
                            data={"csrf_token": csrf(approver)})
    assert resumed.status_code == 302
    # Stopped (29 Sep, 12 Oct]: 29 Sep counts, then 12 more from 13 Oct.
    assert shown_due(approver, number) == "2026-10-28"
    assert state_of(fkit.store(TOWNSHIP).db, number)["paused"] is None
    listed = approver.post(f"/cases/{number}/stop_clock", data={
        "reason": "公示期7日", "csrf_token": csrf(approver)})
    assert listed.status_code == 302
    assert "计时已暂停（公示期7日，自 2026-10-12）" in text(approver.get(f"/cases/{number}"))


def test_a_node_that_cannot_handle_cases_says_so_as_unavailable_not_as_a_refusal(tmp_path):
    # Not enrolled: no node directory with the region key. The window answers 503 (the
    # service is not there) with the reason, not 409 (as a refused action would).
    app = make_app(tmp_path, TIER="village", NODE_CODE="441521101001")
    add_account(app, "clerk-x", "pw-clerk-x1", roles=("clerk",))
    try:
        browser = staff_login(app, "clerk-x", "pw-clerk-x1")
        response = browser.get("/cases/441521101001-20260615-0001")
        assert response.status_code == 503
        assert "不能" in response.get_data(as_text=True)
    finally:
        app.extensions["store"].close()
