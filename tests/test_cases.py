"""Cases end to end in one process: acceptance, routing, deciding, delivery, the fold."""

import datetime
import re
import threading

import pytest

from shared import clock
from shared.cases import fold as F
from shared.cases.desk import CaseError
from shared.cases.index import licences_of
from shared.cases.worklist import queue
from tests.casekit import (
    AGENT,
    CITIZEN,
    COUNTY,
    OTHER_TOWNSHIP,
    PDF,
    TOWNSHIP,
    VILLAGE_A,
    VILLAGE_B,
    Kit,
    applicant,
    approver,
    clerk,
    full_materials,
    upload,
)


@pytest.fixture
def kit(tmp_path):
    kit = Kit(tmp_path)
    yield kit
    kit.close()


def accept_pension_claim(kit, decision="accept", at=VILLAGE_A, missing=False):
    """GD-LS-02 (decided by the county after township review): the applicant brings the
    form, and the bank account document unless ``missing``."""
    desk = kit.desk(at)
    materials = {3: {"scans": [upload(desk)]}}
    if not missing:
        materials[2] = {"scans": [upload(desk, PDF + b"%bank")]}
    return desk.receive("GD-LS-02", applicant(), materials, decision, clerk())


def test_a_case_number_names_the_station_and_the_day_and_counts_up(kit):
    first = accept_pension_claim(kit)
    second = accept_pension_claim(kit)
    assert re.fullmatch(rf"{VILLAGE_A}-\d{{8}}-0001", first)
    assert second.endswith("-0002") and second[:-5] == first[:-5]


def test_numbers_stay_unique_when_clerks_accept_at_once(kit):
    desk = kit.desk(VILLAGE_A)
    scan = upload(desk)
    numbers, failures = [], []

    def accept():
        try:
            for _ in range(4):
                numbers.append(desk.receive("GD-LS-01", applicant(), {2: {"scans": [scan]}},
                                            "accept", clerk()))
        except Exception as exc:  # collected: the assertion below shows it
            failures.append(exc)
    threads = [threading.Thread(target=accept) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(numbers) == 24 and len(set(numbers)) == 24


def test_the_case_pins_the_item_version_and_routes_to_the_decider(kit):
    number = accept_pension_claim(kit)
    header, _, state = kit.desk(VILLAGE_A).load(number)
    item = kit.desk(VILLAGE_A).item("GD-LS-02")
    assert header["item"] == item["doc_id"] and header["item_version"] == item["version"]
    assert header["item_hash"] == item["hash"]
    # A county item reviewed by the township first; a township item stays there.
    assert state["route"] == [TOWNSHIP, COUNTY] and state["stage"] == TOWNSHIP
    assert state["status"] == F.HANDLING and state["limit"]["days"] == 1
    township_case = kit.desk(VILLAGE_A).receive(
        "GD-LS-15", applicant(), full_materials(kit.desk(VILLAGE_A), "GD-LS-15"), "accept",
        clerk())
    assert kit.desk(VILLAGE_A).state(township_case)["route"] == [TOWNSHIP]


def test_shared_materials_are_never_asked_for(kit):
    desk = kit.desk(VILLAGE_A)
    rows = desk.checklist(desk.item("GD-LS-02"), desk.applicant_key(CITIZEN))
    auto = {row["name"]: row["auto"] for row in rows}
    assert auto["居民身份证"] == F.SHARED and auto["居民户口簿"] == F.SHARED
    number = accept_pension_claim(kit)
    materials = desk.state(number)["materials"]
    assert materials["0"]["status"] == F.SHARED and materials["0"]["scans"] == []
    assert materials["2"]["status"] == F.PROVIDED and len(materials["2"]["scans"]) == 1


def test_a_missing_material_blocks_plain_acceptance_and_the_notice_lists_it(kit):
    with pytest.raises(CaseError, match="社会保障卡或本人银行账户信息"):
        accept_pension_claim(kit, missing=True)
    assert kit.store(VILLAGE_A).db.execute_sql("SELECT COUNT(*) FROM case_state").fetchone()[0] == 0
    number = accept_pension_claim(kit, "notice", missing=True)
    state = kit.desk(VILLAGE_A).state(number)
    assert state["status"] == F.AWAITING and state["accepted"] is None
    missing = state["materials"]["2"]
    assert missing["status"] == F.MISSING and "社会保障卡" in missing["needed"]
    assert state["outstanding"] == ["2"]


def test_deficiency_only_where_the_item_allows_it(kit):
    desk = kit.desk(VILLAGE_A)
    # GD-LS-01 does not allow accepting with a deficiency.
    with pytest.raises(CaseError, match="不允许容缺受理"):
        desk.receive("GD-LS-01", applicant(), {}, "deficiency", clerk())
    number = accept_pension_claim(kit, "deficiency", missing=True)
    state = desk.state(number)
    assert state["mode"] == F.DEFICIENCY and state["outstanding"] == ["2"]
    assert datetime.date.fromisoformat(state["deficiency_due"]) > \
        datetime.date.fromisoformat(state["accepted_day"])


def test_written_commitment_replaces_a_material_and_leaves_a_post_check(kit):
    desk = kit.desk(VILLAGE_A)
    scan = upload(desk)
    # GD-LS-17 allows 告知承诺; its material 0 is the form the applicant fills in.
    with pytest.raises(CaseError, match="不适用告知承诺"):
        desk.receive("GD-LS-02", applicant(), {2: {"status": F.COMMITTED}, 3: {"scans": [scan]}},
                     "commitment", clerk())
    number = desk.receive("GD-LS-17", applicant(), {0: {"status": F.COMMITTED}},
                          "commitment", clerk())
    state = desk.state(number)
    assert state["mode"] == F.COMMITMENT and state["materials"]["0"]["status"] == F.COMMITTED
    assert state["postcheck"]["due"] and state["postcheck"]["result"] is None
    kit.desk(VILLAGE_A).check_commitment(number, approver(), truthful=True)
    assert kit.desk(VILLAGE_A).state(number)["postcheck"]["result"] == "truthful"


def test_wrong_numbers_get_a_clear_message_and_create_nothing(kit):
    desk = kit.desk(VILLAGE_A)
    wrong = CITIZEN[:-1] + ("0" if CITIZEN[-1] != "0" else "1")
    person = applicant(wrong)
    with pytest.raises(CaseError, match="校验"):
        desk.receive("GD-LS-02", person, {}, "notice", clerk())
    with pytest.raises(CaseError, match="只受理法人|只受理自然人"):
        desk.receive("GD-LS-02", applicant("91350100M000100Y43"), {}, "notice", clerk())
    assert kit.store(VILLAGE_A).db.execute_sql("SELECT COUNT(*) FROM case_state").fetchone()[0] == 0


def test_the_whole_road_supplement_elsewhere_review_decide_deliver_elsewhere_rate(kit):
    number = accept_pension_claim(kit, "deficiency", missing=True)
    kit.sync()
    # The citizen brings the missing document to village B, which finds the case first.
    village_b = kit.desk(VILLAGE_B)
    with pytest.raises(CaseError, match="未参与该办件"):
        village_b.supplement(number, {2: [upload(village_b, PDF + b"%late")]}, clerk("clerk-b"))
    kit.join(VILLAGE_B, number)
    village_b.supplement(number, {2: [upload(village_b, PDF + b"%late")]}, clerk("clerk-b"))
    kit.sync()
    township = kit.desk(TOWNSHIP)
    assert [row["number"] for row in queue(kit.store(TOWNSHIP).db, TOWNSHIP)] == [number]
    with pytest.raises(CaseError, match="决定须由上级"):
        township.approve(number, approver())
    township.forward(number, approver())
    kit.sync()
    assert queue(kit.store(TOWNSHIP).db, TOWNSHIP) == []
    kit.desk(COUNTY).approve(number, approver(name="county-a"), "核定待遇")
    kit.sync()
    # The result waits at village A; the citizen collects it at village B instead.
    assert kit.desk(VILLAGE_B).state(number)["stage"] == VILLAGE_A
    kit.desk(VILLAGE_B).deliver(number, clerk("clerk-b"))
    kit.sync()
    kit.desk(VILLAGE_A).rate(number, 5, "一次办好")
    kit.sync()
    states = [kit.desk(code).state(number) for code in kit.apps]
    assert all(s == states[0] for s in states)
    final = states[0]
    assert final["status"] == F.DONE and final["delivered"]["node"] == VILLAGE_B
    assert final["rating"]["score"] == 5 and final["ignored"] == []
    # Accepted, supplemented and collected on one day: one trip for the citizen.
    assert final["visits"] == 1 and len(final["visit_days"]) == 1
    assert [step["kind"] for step in final["timeline"]] == [
        "accepted", "joined", "supplemented", "forwarded", "approved", "delivery_changed", "delivered",
        "rated"]
    assert final["timeline"][4]["by"]["name"] == "李审批"
    assert final["timeline"][4]["by"]["phone"] == "0660-3300002"


def test_approval_waits_for_deficient_materials_and_parallel_opinions(kit):
    desk = kit.desk(VILLAGE_A)
    scans = full_materials(desk, "GD-TEST-PAR")
    missing = max(scans)
    del scans[missing]
    number = desk.receive("GD-TEST-PAR", applicant(), scans, "deficiency", clerk())
    kit.sync()
    township = kit.desk(TOWNSHIP)
    lead = approver("农业农村", "lead")
    with pytest.raises(CaseError, match="容缺材料未补齐"):
        township.approve(number, lead)
    kit.desk(VILLAGE_A).supplement(number, {missing: [upload(desk, PDF + b"%m")]}, clerk())
    kit.sync()
    with pytest.raises(CaseError, match="并联部门意见未齐：农业农村、自然资源"):
        township.approve(number, lead)
    township.opinion(number, approver("自然资源", "land"), True, "符合规划")
    with pytest.raises(CaseError, match="已提出意见"):
        township.opinion(number, approver("自然资源", "land2"), False)
    township.opinion(number, lead, True)
    township.approve(number, lead, "准予使用宅基地")
    assert township.state(number)["status"] == F.READY


def test_a_supplement_request_stops_the_clock_until_the_material_comes(kit):
    number = accept_pension_claim(kit)
    kit.sync()
    township = kit.desk(TOWNSHIP)
    township.request_supplement(number, approver(), "银行账户信息模糊，请重新提供", [2])
    stopped = township.state(number)
    assert stopped["status"] == F.SUPPLEMENTING and stopped["stage"] is None
    assert F.due_date(stopped, kit.calendar) is None
    with pytest.raises(CaseError, match="不能报送"):
        township.forward(number, approver())
    kit.sync()
    kit.desk(VILLAGE_A).supplement(number, {2: [upload(kit.desk(VILLAGE_A), PDF + b"%2")]},
                                   clerk())
    kit.sync()
    resumed = township.state(number)
    assert resumed["status"] == F.HANDLING and resumed["stage"] == TOWNSHIP
    assert resumed["stops"][0][1] is not None and F.due_date(resumed, kit.calendar) is not None


def test_an_issued_certificate_is_used_instead_of_a_copy_later(kit):
    desk = kit.desk(VILLAGE_A)
    # 残疾人证新办 (GD-LS-09), decided at the county: the certificate becomes an e-licence.
    scans = full_materials(desk, "GD-LS-09")
    number = desk.receive("GD-LS-09", applicant(), scans, "accept", clerk())
    kit.sync()
    kit.desk(TOWNSHIP).forward(number, approver())
    kit.sync()
    valid = (clock.today() + datetime.timedelta(days=3650)).isoformat()
    kit.desk(COUNTY).approve(number, approver(), "核发残疾人证", licence={
        "name": "残疾人证", "number": "44152119500301123X11", "valid_until": valid})
    kit.sync()
    key = desk.applicant_key(CITIZEN)
    assert licences_of(kit.store(VILLAGE_B).db, key)["残疾人证"]["case"] == number
    # 困难残疾人生活补贴 asks for the certificate: found as an e-licence, not asked for.
    rows = kit.desk(VILLAGE_B).checklist(kit.desk(VILLAGE_B).item("GD-LS-07"), key)
    licence_rows = [row for row in rows if row["auto"] == F.ELICENCE]
    assert [row["name"] for row in licence_rows] == ["中华人民共和国残疾人证（第二代）"]
    assert licence_rows[0]["licence"]["number"] == "44152119500301123X11"


def test_applying_again_offers_the_earlier_scans_and_details(kit):
    number = accept_pension_claim(kit)
    desk = kit.desk(VILLAGE_A)
    key = desk.applicant_key(CITIZEN)
    reuse = desk.reusable_scans(key)
    scans = desk.state(number)["materials"]["2"]["scans"]
    assert [offer["sha"] for offer in reuse["社会保障卡或本人银行账户信息"]] == scans
    assert reuse["社会保障卡或本人银行账户信息"][0]["case"] == number
    assert desk.history_profile(key)["name"] == "陈阿婆"
    # Reusing a scan needs no new upload: the content comes from the earlier case.
    desk.blobs.path(scans[0]).unlink()
    again = desk.receive("GD-LS-02", applicant(), {2: {"scans": scans},
                                                  3: {"scans": [upload(desk, PDF + b"%f")]}},
                         "accept", clerk())
    assert desk.scan(again, scans[0])[0] == PDF + b"%bank"


def test_proxy_needs_the_item_to_allow_it_and_an_authorisation(kit):
    desk = kit.desk(VILLAGE_A)
    scan = upload(desk)
    materials = {2: {"scans": [upload(desk, PDF + b"%b")]}, 3: {"scans": [scan]}}
    with pytest.raises(CaseError, match="授权委托书"):
        desk.receive("GD-LS-02", applicant(), materials, "accept", clerk(),
                     proxy={"number": AGENT, "name": "陈小明"})
    number = desk.receive("GD-LS-02", applicant(), materials, "accept", clerk(),
                          proxy={"number": AGENT, "name": "陈小明", "phone": "13900139000",
                                 "authorisation": upload(desk, PDF + b"%auth")})
    header, _, _ = desk.load(number)
    assert header["proxy"]["agent_key"] == desk.applicant_key(AGENT)
    assert "陈小明" not in str(header)


def test_personal_data_is_never_stored_in_the_clear(kit):
    number = accept_pension_claim(kit)
    kit.sync()
    header, _, _ = kit.desk(COUNTY).load(number)
    assert kit.desk(COUNTY).open_profile(header)["name"] == "陈阿婆"
    for code in kit.apps:
        store = kit.store(code)
        store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = open(store.db.database, "rb").read()
        for secret in (CITIZEN, "陈阿婆", "13800138000", "海城镇某村"):
            assert secret.encode("utf-8") not in raw, (code, secret)


def test_rating_only_after_delivery_and_only_once_complaints_are_tracked(kit):
    number = accept_pension_claim(kit)
    desk = kit.desk(VILLAGE_A)
    with pytest.raises(CaseError, match="送达后才能评价"):
        desk.rate(number, 4)
    desk.complain(number, "等了很久没有消息")
    complaint = desk.state(number)["complaints"][0]
    assert complaint["stage"] == "submitted"
    desk.handle_complaint(number, approver(), complaint["id"], "accepted", "已转办理人员")
    with pytest.raises(CaseError, match="已处于这一阶段"):
        desk.handle_complaint(number, approver(), complaint["id"], "accepted", "")
    desk.handle_complaint(number, approver(), complaint["id"], "replied", "已加快办理")
    assert desk.state(number)["complaints"][0]["stage"] == "replied"
    kit.sync()
    kit.desk(TOWNSHIP).forward(number, approver())
    kit.sync()
    kit.desk(COUNTY).approve(number, approver())
    kit.sync()
    desk.deliver(number, clerk())
    desk.rate(number, 2, "太慢")
    with pytest.raises(CaseError, match="不能重复评价"):
        desk.rate(number, 5)
    with pytest.raises(CaseError, match="1 到 5"):
        kit.desk(VILLAGE_B).rate(number, 6)


def test_two_stations_cut_off_deliver_the_same_result_without_a_conflict(kit):
    number = accept_pension_claim(kit)
    kit.sync()
    kit.desk(TOWNSHIP).forward(number, approver())
    kit.sync()
    kit.desk(COUNTY).approve(number, approver())
    kit.join(VILLAGE_B, number)
    # Cut off from each other, both villages hand the result over.
    kit.desk(VILLAGE_A).deliver(number, clerk())
    kit.desk(VILLAGE_B).deliver(number, clerk("clerk-b"))
    kit.sync()
    states = [kit.desk(code).state(number) for code in kit.apps]
    assert all(s == states[0] for s in states)
    assert states[0]["status"] == F.DONE
    assert len(states[0]["ignored"]) >= 1  # the later delivery, kept and explained
    for code in kit.apps:
        for row in kit.store(code).all_docs()[1]:
            assert not kit.store(code).get(row["id"], conflicts=True).get("_conflicts")


# -- convergence: stations acting while cut off (property-based) -------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STATIONS = (VILLAGE_A, VILLAGE_B, TOWNSHIP, COUNTY)
ACTIONS = ("supplement", "forward", "approve", "reject", "request", "deliver", "rate",
           "complain", "reply", "move_delivery", "join", "accept", "transfer")


def _act(kit, code, action, number):
    desk = kit.desk(code)
    staff = approver() if len(code) < 12 else clerk(f"clerk-{code[-1]}")
    if action == "supplement":
        desk.supplement(number, {2: [upload(desk, PDF + code.encode())]}, staff)
    elif action == "forward":
        desk.forward(number, staff)
    elif action == "approve":
        desk.approve(number, staff)
    elif action == "reject":
        desk.reject(number, staff, "不符合条件")
    elif action == "request":
        desk.request_supplement(number, staff, "请补充材料", [2])
    elif action == "deliver":
        desk.deliver(number, staff)
    elif action == "rate":
        desk.rate(number, 4)
    elif action == "complain":
        desk.complain(number, f"投诉 {code}")
    elif action == "reply":
        complaints = desk.state(number)["complaints"]
        if complaints:
            desk.handle_complaint(number, staff, complaints[0]["id"], "replied", "已答复")
    elif action == "move_delivery":
        desk.change_delivery(number, staff, code)
    elif action == "join":
        kit.join(code, number)
    elif action == "accept":  # continue a case given a notice (two stations may race)
        desk.receive("GD-LS-02", applicant(), full_materials(desk, "GD-LS-02"), "accept",
                     staff, number=number)
    elif action == "transfer":
        desk.transfer(number, staff, desk.transfer_targets()[0][0], "管辖调整")


@pytest.fixture(scope="module")
def shared_kit(tmp_path_factory):
    kit = Kit(tmp_path_factory.mktemp("converge"))
    yield kit
    kit.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.sampled_from(("deficiency", "notice")),
       steps=st.lists(st.tuples(st.sampled_from(STATIONS), st.sampled_from(ACTIONS),
                                st.lists(st.sampled_from(STATIONS), max_size=2)),
                      min_size=1, max_size=16))
def test_stations_acting_while_cut_off_converge_without_conflicts(shared_kit, start, steps):
    kit = shared_kit
    number = accept_pension_claim(kit, start, missing=True)
    kit.sync()
    for code, action, link in steps:
        try:
            _act(kit, code, action, number)
        except CaseError:
            pass  # refused where it was tried: nothing written
        if len(link) == 2 and link[0] != link[1]:
            kit.sync(*link)  # only these two stations talk
    kit.sync()
    states = {code: kit.desk(code).state(number) for code in STATIONS}
    first = states[VILLAGE_A]
    assert all(state == first for state in states.values())
    assert first["status"] in F.STATUS_LABELS
    for code in STATIONS:
        store = kit.store(code)
        for doc_id in [f"case:{number}"] + [e["_id"] for e in kit.desk(code).load(number)[1]]:
            assert not store.get(doc_id, conflicts=True).get("_conflicts"), doc_id


# -- the review's cases --------------------------------------------------------------------

def test_a_disagreeing_department_stops_approval_and_only_the_lead_decides(kit):
    desk = kit.desk(VILLAGE_A)
    number = desk.receive("GD-TEST-PAR", applicant(), full_materials(desk, "GD-TEST-PAR"),
                          "accept", clerk())
    kit.sync()
    township = kit.desk(TOWNSHIP)
    lead, land = approver("农业农村", "lead"), approver("自然资源", "land")
    with pytest.raises(CaseError, match="未设置所属部门"):
        township.opinion(number, approver("", "nobody"), True)
    township.opinion(number, land, False, "占用基本农田")
    township.opinion(number, lead, True)
    with pytest.raises(CaseError, match="牵头部门"):
        township.reject(number, land, "不同意")
    assert township.may_decide(township.state(number), land)
    assert township.may_decide(township.state(number), lead) is None
    with pytest.raises(CaseError, match="并联部门不同意：自然资源"):
        township.approve(number, lead)
    township.reject(number, lead, "自然资源部门不同意：占用基本农田")
    assert township.state(number)["decision"]["kind"] == "rejected"


def test_an_approver_of_another_department_cannot_decide(kit):
    number = accept_pension_claim(kit)  # 人力资源社会保障
    kit.sync()
    with pytest.raises(CaseError, match="不由民政办理"):
        kit.desk(TOWNSHIP).forward(number, approver("民政"))  # forwarding is a review step
    with pytest.raises(CaseError, match="不由民政办理"):
        kit.desk(TOWNSHIP).request_supplement(number, approver("民政"), "请补正", [2])
    kit.desk(TOWNSHIP).request_supplement(number, approver("人力资源社会保障"), "请补正", [2])


def test_a_transfer_goes_to_a_registered_node_and_keeps_the_county_after_review(kit):
    number = accept_pension_claim(kit)
    kit.sync()
    township = kit.desk(TOWNSHIP)
    assert [code for code, _ in township.transfer_targets()] == [COUNTY, OTHER_TOWNSHIP]
    with pytest.raises(CaseError, match="已登记"):
        township.transfer(number, approver(), "441521999", "管辖调整")
    township.transfer(number, approver(), OTHER_TOWNSHIP, "申请人户籍在梅陇镇")
    state = township.state(number)
    assert state["route"] == [OTHER_TOWNSHIP, COUNTY] and state["stage"] == OTHER_TOWNSHIP
    assert state["handler"] == COUNTY


def test_an_immediate_item_is_due_the_day_it_is_accepted_where_it_is_decided(kit):
    # GD-LS-13 (即办) is decided by the township: accepted there, due the same day.
    desk = kit.desk(TOWNSHIP)
    here = desk.receive("GD-LS-13", applicant(), full_materials(desk, "GD-LS-13"), "accept",
                        clerk())
    state = desk.state(here)
    assert state["limit"] == {"days": 0, "unit": "工作日", "kind": "promised"}
    assert F.due_date(state, kit.calendar).isoformat() == state["accepted_day"]
    # Accepted at a village, it is decided on arrival: due the next working day, so the
    # township's queue never shows it 当日到期 and then overdue while it travels.
    village = kit.desk(VILLAGE_A)
    passed_up = village.state(village.receive("GD-LS-13", applicant(),
                                              full_materials(village, "GD-LS-13"), "accept",
                                              clerk()))
    assert F.forwarded_immediate(passed_up)
    assert F.due_date(passed_up, kit.calendar) == \
        kit.calendar.next_workday(passed_up["accepted_day"])


def test_a_pre_application_is_routed_from_the_station_and_never_feeds_history(kit):
    county = kit.desk(COUNTY)
    intruder = applicant()
    intruder.phone, intruder.address = "13911112222", "别处"
    number = county.preapply("GD-LS-04", intruder, VILLAGE_A,
                             {0: {"scans": [upload(county, PDF + b"%fake")]}})
    kit.sync()
    village = kit.desk(VILLAGE_A)
    key = village.applicant_key(CITIZEN)
    # Anyone may pre-apply in someone's name: nothing of it is offered as their history.
    assert village.reusable_scans(key) == {} and village.history_profile(key) == {}
    village.receive("GD-LS-04", applicant(), full_materials(village, "GD-LS-04"), "accept",
                    clerk(), number=number)
    state = village.state(number)
    assert state["route"] == [TOWNSHIP] and state["stage"] == TOWNSHIP
    # The profile the clerk checked replaces the pre-application's.
    assert village.open_profile(state)["phone"] == "13800138000"


def test_deficiency_only_for_materials_the_guide_lets_come_later(kit):
    desk = kit.desk(VILLAGE_A)
    everything = full_materials(desk, "GD-TEST-PAR")
    without_form = {k: v for k, v in everything.items() if k != 0}
    with pytest.raises(CaseError, match="不能容缺受理：农村宅基地和建房"):
        desk.receive("GD-TEST-PAR", applicant(), without_form, "deficiency", clerk())
    without_drawing = {k: v for k, v in everything.items() if k != 4}
    number = desk.receive("GD-TEST-PAR", applicant(), without_drawing, "deficiency", clerk())
    assert desk.state(number)["outstanding"] == ["4"]


def test_a_malformed_event_is_ignored_the_same_way_everywhere(kit):
    from shared import casedocs
    from shared.hlc import NodeClock

    number = accept_pension_claim(kit)
    store = kit.store(VILLAGE_A)
    odd = casedocs.case_event(number, "opinion", VILLAGE_A, NodeClock(store).now(),
                              department=["a"], by={"department": ["a"]})
    store.bulk_docs([odd])
    kit.sync()
    for code in kit.apps:
        state = kit.desk(code).state(number)
        assert state["status"] == F.HANDLING
        assert [i["event"] for i in state["ignored"]] == [odd["_id"]]


def test_two_clerks_delivering_at_once_only_one_succeeds(kit):
    number = accept_pension_claim(kit)
    kit.sync()
    kit.desk(TOWNSHIP).forward(number, approver())
    kit.sync()
    kit.desk(COUNTY).approve(number, approver())
    kit.sync()
    desk = kit.desk(VILLAGE_A)
    results = []

    def deliver(name):
        try:
            desk.deliver(number, clerk(name))
            results.append("ok")
        except CaseError as exc:
            results.append(exc.message)
    threads = [threading.Thread(target=deliver, args=(f"c{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("ok") == 1
    assert desk.state(number)["ignored"] == []


def test_scans_travel_sealed_in_their_own_documents(kit):
    number = accept_pension_claim(kit)
    kit.sync()
    county = kit.desk(COUNTY)
    header, events, state = county.load(number)
    sha = state["materials"]["2"]["scans"][0]
    assert county.scan(number, sha) == (PDF + b"%bank", "application/pdf")
    assert all("data" not in e for e in events)  # events stay small
    raw = kit.store(COUNTY).get(f"scan:{number}:{sha}")
    assert b"%bank" not in raw["data"].encode() and raw["size"] == len(PDF + b"%bank")
    store = kit.store(COUNTY)
    store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert PDF + b"%bank" not in open(store.db.database, "rb").read()
    # The station's own upload store keeps it sealed too.
    stored = kit.desk(VILLAGE_A).blobs.path(sha).read_bytes()
    assert b"%bank" not in stored


def test_replication_takes_at_most_two_scans_per_batch():
    from syncd.replicator import limit_heavy

    rows = [{"id": i, "seq": n} for n, i in enumerate(
        ["event:a", "scan:x:1", "event:b", "scan:x:2", "scan:x:3", "event:c"], start=1)]
    kept, last_seq, cut = limit_heavy(rows, 6)
    assert [r["id"] for r in kept] == ["event:a", "scan:x:1", "event:b", "scan:x:2"]
    assert last_seq == 4 and cut is True
    assert limit_heavy(rows[:3], 3) == (rows[:3], 3, False)


def test_public_url_must_be_a_web_address():
    from shared import config as cfg
    from shared.errors import ConfigurationError

    settings = dict(cfg.DEFAULTS, TIER="county", NODE_CODE="441521", DB_PATH="x",
                    SECRET_KEY="y")
    cfg.validate(dict(settings, PUBLIC_URL="https://tongban.haifeng.gov.cn"))
    with pytest.raises(ConfigurationError, match="PUBLIC_URL"):
        cfg.validate(dict(settings, PUBLIC_URL="javascript:alert(1)"))


def test_an_event_refused_halfway_leaves_no_trace(kit):
    from shared import casedocs
    from shared.hlc import NodeClock

    number = accept_pension_claim(kit, "notice", missing=True)
    store = kit.store(VILLAGE_A)
    before = kit.desk(VILLAGE_A).state(number)
    # _accepted sets the mode, the route and the clock before it reads the materials.
    bad = casedocs.case_event(number, "accepted", VILLAGE_A, NodeClock(store).now(),
                              mode="normal", route=[TOWNSHIP], materials=[{"index": "x"}])
    store.bulk_docs([bad])
    after = kit.desk(VILLAGE_A).state(number)
    assert after["status"] == F.AWAITING and after["accepted"] is None
    assert after["route"] == before["route"] and after["mode"] is None
    assert [i["event"] for i in after["ignored"]] == [bad["_id"]]
