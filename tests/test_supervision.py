"""Working-day time limits and yellow/red cards with a frozen clock across real holidays.

Every node's clock reads one frozen time (the ``frozen`` fixture) that the tests move on, so cases are accepted,
stopped and carded on the real dates of Spring Festival 2026 (holidays 15–23 February,
adjusted working Saturdays 14 and 28 February) and National Day 2026 (holidays 1–7
October, adjusted working Saturday 10 October).
"""

import datetime

import pytest

from shared.cases import fold as F
from shared.cases import supervision
from shared.cases.desk import CaseError
from shared.workdays import WorkCalendar
from tests.casekit import (
    COUNTY,
    TOWNSHIP,
    VILLAGE_A,
    Kit,
    applicant,
    approver,
    clerk,
    full_materials,
)

D = datetime.date
#: 就业困难人员认定: promised 5 working days, decided by the county after township review.
ITEM = "GD-LS-17"
HRSS = "人力资源社会保障"





@pytest.fixture
def kit(tmp_path, frozen):
    kit = Kit(tmp_path, wall_clock=frozen)
    yield kit
    kit.close()


def accept(kit, frozen, day):
    frozen.at(day)
    desk = kit.desk(VILLAGE_A)
    number = desk.receive(ITEM, applicant(), full_materials(desk, ITEM), "accept", clerk())
    kit.sync()
    return number


def due(kit, number, code=TOWNSHIP):
    return F.due_date(kit.desk(code).state(number), kit.calendar)


def sweep(kit, frozen, day, code=TOWNSHIP):
    frozen.at(day)
    issued = supervision.sweep(kit.desk(code), day)
    kit.sync()
    return issued


def test_spring_festival_due_date_counts_the_adjusted_saturday(kit, frozen):
    number = accept(kit, frozen, D(2026, 2, 13))  # Friday before the holiday
    state = kit.desk(TOWNSHIP).state(number)
    assert state["accepted_day"] == "2026-02-13"
    # 14 Feb (adjusted Saturday) is day 1; the holiday counts nothing; 24–27 Feb are 2–5.
    assert due(kit, number) == D(2026, 2, 27)
    row = kit.store(TOWNSHIP).db.execute_sql(
        "SELECT due FROM case_state WHERE number = ?", (number,)).fetchone()
    assert row[0] == "2026-02-27"


def test_cards_yellow_two_working_days_before_and_red_on_the_adjusted_saturday(kit, frozen):
    number = accept(kit, frozen, D(2026, 2, 13))
    # Through the holiday: nothing, however many calendar days pass.
    for day in (D(2026, 2, 16), D(2026, 2, 20), D(2026, 2, 24)):
        assert sweep(kit, frozen, day) == []
    assert sweep(kit, frozen, D(2026, 2, 25)) == [(number, "yellow")]  # 26, 27 left
    assert sweep(kit, frozen, D(2026, 2, 26)) == []  # once per due day
    assert sweep(kit, frozen, D(2026, 2, 28)) == [(number, "red")]  # a working Saturday
    cards = kit.desk(VILLAGE_A).state(number)["cards"]  # replicated to the station
    assert [(c["color"], c["due"], c["node"]) for c in cards] == [
        ("yellow", "2026-02-27", TOWNSHIP), ("red", "2026-02-27", TOWNSHIP)]
    # A red card waits for the supervisor's follow-up note.
    assert [n for n, _ in supervision.red_cards_waiting(kit.store(COUNTY).db)] == [number]
    supervisor = approver(name="supervisor-c")
    with pytest.raises(CaseError, match="跟进情况"):
        kit.desk(COUNTY).follow_up(number, supervisor, cards[1]["id"], " ")
    kit.desk(COUNTY).follow_up(number, supervisor, cards[1]["id"], "已电话督促镇审核人员今日办结")
    assert supervision.red_cards_waiting(kit.store(COUNTY).db) == []
    kit.sync()
    followed = kit.desk(TOWNSHIP).state(number)["cards"][1]["followed_up"]
    assert followed["note"] == "已电话督促镇审核人员今日办结"


def test_the_county_backstops_a_silent_station_one_working_day_later(kit, frozen):
    number = accept(kit, frozen, D(2026, 2, 13))
    # The township never sweeps (offline); the county catches the case a day later.
    assert sweep(kit, frozen, D(2026, 2, 25), COUNTY) == []
    assert sweep(kit, frozen, D(2026, 2, 26), COUNTY) == [(number, "yellow")]
    assert sweep(kit, frozen, D(2026, 2, 28), COUNTY) == []
    assert sweep(kit, frozen, D(2026, 3, 2), COUNTY) == [(number, "red")]
    # Both sweeping before they synced: the case still shows each card once.
    frozen.at(D(2026, 3, 2))
    kit.desk(TOWNSHIP).issue_card(number, "red", "2026-02-27", -2)
    kit.sync()
    assert [c["color"] for c in kit.desk(VILLAGE_A).state(number)["cards"]] == [
        "yellow", "red"]


def test_national_day_supplement_stop_and_extension_move_the_due_day(kit, frozen):
    number = accept(kit, frozen, D(2026, 9, 28))  # Monday before National Day
    assert due(kit, number) == D(2026, 10, 10)  # 29, 30 Sep; 8, 9, 10 Oct (a Saturday)
    frozen.at(D(2026, 9, 30))
    kit.desk(TOWNSHIP).request_supplement(number, approver(HRSS), "请补充劳动合同解除证明", [0])
    assert due(kit, number) is None  # the clock is stopped
    assert sweep(kit, frozen, D(2026, 10, 8)) == []  # stopped: no card (it would be due)
    kit.sync()
    frozen.at(D(2026, 10, 9))
    kit.desk(VILLAGE_A).supplement(number, {0: []}, clerk())
    kit.sync()
    # The stop (30 Sep, 9 Oct] takes 8 and 9 Oct out: 29, 30 Sep; 10, 12, 13 Oct.
    assert due(kit, number) == D(2026, 10, 13)
    frozen.at(D(2026, 10, 12))
    kit.desk(TOWNSHIP).extend(number, approver(HRSS), 3, "需实地核查就业困难情况")
    assert due(kit, number) == D(2026, 10, 16)
    state = kit.desk(TOWNSHIP).state(number)
    assert state["extensions"][0]["by"]["name"] == "李审批"
    with pytest.raises(CaseError, match="理由"):
        kit.desk(TOWNSHIP).extend(number, approver(HRSS), 2, "")
    with pytest.raises(CaseError, match="1 到 365"):
        kit.desk(TOWNSHIP).extend(number, approver(HRSS), 0, "x")
    assert sweep(kit, frozen, D(2026, 10, 14)) == [(number, "yellow")]  # 15, 16 left


def test_a_hearing_stops_the_clock_until_it_resumes(kit, frozen):
    number = accept(kit, frozen, D(2026, 9, 28))
    frozen.at(D(2026, 9, 29))
    township = kit.desk(TOWNSHIP)
    with pytest.raises(CaseError, match="写明环节"):
        township.stop_clock(number, approver(HRSS), "")
    township.stop_clock(number, approver(HRSS), "专家评审")
    assert township.state(number)["paused"]["reason"] == "专家评审"
    assert due(kit, number) is None
    with pytest.raises(CaseError, match="计时暂停期间"):
        township.request_supplement(number, approver(HRSS), "x", [0])
    frozen.at(D(2026, 10, 12))
    township.resume_clock(number, approver(HRSS))
    # Stopped (29 Sep, 12 Oct]: 29 Sep counts; then 13, 14, 15, 16 Oct.
    assert due(kit, number) == D(2026, 10, 16)


def test_an_item_with_calendar_days_counts_every_day():
    state = {"accepted_day": "2026-09-30", "limit": {"days": 7, "unit": "自然日"},
             "stops": [], "extensions": []}
    assert F.due_date(state, WorkCalendar()) == D(2026, 10, 7)


def test_a_day_nothing_covers_counts_as_an_ordinary_week_marked_provisional():
    state = {"accepted_day": "2040-03-01", "limit": {"days": 5, "unit": "工作日"},
             "stops": [], "extensions": []}
    due = F.due_info(state, WorkCalendar())  # 1 March 2040 is a Thursday
    assert due.day == D(2040, 3, 8) and due.provisional
    # With the county's overrides for those days, it counts.
    overrides = {D(2040, 3, 1) + datetime.timedelta(days=n): n % 7 not in (2, 3)
                 for n in range(1, 15)}
    assert F.due_info(state, WorkCalendar(overrides)) == (D(2040, 3, 8), None)  # final


def test_the_sweep_is_scheduled_at_every_tier():
    from syncd.scheduler import tier_jobs

    for tier in ("county", "township", "village"):
        assert [f.__name__ for f, _ in tier_jobs(tier)][:2] == ["sweep_job", "backup_job"]
