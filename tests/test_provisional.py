"""Time never runs out: due dates counted through days no published arrangement covers.

The chinesecalendar package knows days up to 2026-12-31. A case accepted on 21 December
2026 with a 20-working-day limit walks into 2027: it still gets a due date (counted as
ordinary weeks), marked 暂定 with its reason on the staff page, the receipt and the
citizen's progress page, it still gets its cards, and it is re-dated — and the mark goes —
once the county publishes 2027 in a signed release.
"""

import datetime
import re

import pytest

from shared.cases import fold as F
from shared.cases import index, stats, supervision
from shared.catalog import publish
from shared.views import progress
from shared.workdays import WorkCalendar, coverage_warning, package_years
from tests import casekit as K
from tests.test_case_pages import login, serve, text
from tests.test_progress_pages import prove

D = datetime.date
YEAR_2027, DISABILITY_CARD = K.YEAR_2027, K.DISABILITY_CARD
PROVISIONAL = 'class="provisional"'
NOTE = "2027 年节假日安排尚未发布"


pytestmark = pytest.mark.skipif(package_years()[1] != 2026,
                                reason="written for the package ending with 2026")


@pytest.fixture
def kit(tmp_path, frozen):
    kit = serve(K.Kit(tmp_path, wall_clock=frozen))
    for code, app in kit.apps.items():
        if "progress" not in app.blueprints:
            progress.init_app(app)
    yield kit
    kit.close()


def accept_on(kit, frozen, day, item=DISABILITY_CARD, decision="accept", materials=None):
    frozen.at(day)
    desk = kit.desk(K.VILLAGE_A)
    number = desk.receive(item, K.applicant(), materials or K.full_materials(desk, item),
                          decision, K.clerk())
    kit.sync()
    return number


def publish_2027(kit):
    county = kit.apps[K.COUNTY]
    items, agencies = publish.working_copy(kit.store(K.COUNTY).db)
    with county.app_context():
        publish.publish(kit.store(K.COUNTY), items, agencies, proposer="editor",
                        approver="boss", private_key=county.key, calendar=YEAR_2027)
    kit.sync()


def due_column(kit, code, number):
    return kit.store(code).db.execute_sql(
        "SELECT due FROM case_state WHERE number = ?", (number,)).fetchone()[0]


def test_the_calendar_counts_an_unpublished_year_as_ordinary_weeks_and_says_so():
    calendar = WorkCalendar()
    due = calendar.due_info(D(2026, 12, 21), 20, ())
    # 8 working days left in December, then Monday to Friday: 1 January is a Friday.
    assert due.day == D(2027, 1, 18) and due.provisional
    assert due.uncovered == D(2027, 1, 1) and NOTE in due.note
    assert calendar.is_workday(D(2027, 1, 1)) and not calendar.is_workday(D(2027, 1, 2))
    assert calendar.workdays_until(D(2027, 1, 14), due) == 2
    # Within covered days nothing is provisional.
    assert not calendar.due_info(D(2026, 12, 1), 5, ()).provisional
    published = WorkCalendar({D(2027, 1, 1): False}, years=[2027])
    assert published.due_info(D(2026, 12, 21), 20, ()) == (D(2027, 1, 19), None)
    # A stop over the uncovered days does not count them at all.
    stopped = calendar.due_info(D(2026, 12, 21), 9, [(D(2026, 12, 31), D(2027, 1, 8))])
    assert stopped == (D(2027, 1, 11), D(2027, 1, 9))  # the first day assumed, a Saturday


def test_coverage_is_found_year_by_year():
    calendar = WorkCalendar({D(2028, 1, 1): False}, years=[2027])
    assert calendar.covered_until(D(2026, 6, 1)) == D(2028, 1, 1)
    assert calendar.uncovered_in(D(2026, 6, 1), D(2028, 1, 1)) is None
    assert calendar.uncovered_in(D(2026, 6, 1), D(2028, 1, 5)) == D(2028, 1, 2)
    assert coverage_warning(calendar, D(2027, 12, 1))["year"] == 2028
    assert coverage_warning(calendar, D(2027, 9, 1)) is None
    late = coverage_warning(WorkCalendar(), D(2027, 3, 1))
    assert late["days_left"] == -60 and "已过 60 天" in late["message"]


def test_a_case_into_an_unpublished_year_is_provisional_everywhere_until_the_county_publishes(
        kit, frozen):
    number = accept_on(kit, frozen, D(2026, 12, 21))
    for code in (K.VILLAGE_A, K.TOWNSHIP, K.COUNTY):
        assert due_column(kit, code, number) == "2027-01-18", code  # never lost

    clerk = login(kit, K.VILLAGE_A, "clerk-a")
    page = text(clerk.get(f"/cases/{number}"))
    assert re.search(r'id="due-date">2027-01-18</span><span class="provisional"', page)
    assert NOTE in page
    receipt = text(clerk.get(f"/cases/{number}/receipt"))
    assert '2027-01-18</strong><span class="provisional"' in receipt and NOTE in receipt
    work = text(login(kit, K.TOWNSHIP, "approver-t").get("/cases/"))
    assert number in work and PROVISIONAL in work

    citizen = kit.apps[K.VILLAGE_A].test_client()
    response = prove(citizen, number, "陈阿婆")
    assert response.status_code in (200, 302)
    shown = citizen.get(f"/progress/{number}")
    assert shown.status_code == 200  # a 500 here left citizens without progress or rating
    assert "2027-01-18" in text(shown) and PROVISIONAL in text(shown) and NOTE in text(shown)

    # Cards keep coming across the year boundary.
    desk = kit.desk(K.TOWNSHIP)
    frozen.at(D(2027, 1, 14))
    assert supervision.sweep(desk, D(2027, 1, 14)) == [(number, "yellow")]
    frozen.at(D(2027, 1, 19))
    assert supervision.sweep(desk, D(2027, 1, 19)) == [(number, "red")]
    kit.sync()
    count, numbers = index.provisional_cases(kit.store(K.COUNTY).db, kit.desk(K.COUNTY).calendar)
    assert (count, numbers) == (1, [number])

    # The county publishes 2027: every node re-dates the case, and the mark goes.
    publish_2027(kit)
    for code in (K.VILLAGE_A, K.TOWNSHIP, K.COUNTY):
        assert due_column(kit, code, number) == "2027-01-19", code
    clerk = login(kit, K.VILLAGE_A, "clerk-a")  # a month later: signed in again
    page = text(clerk.get(f"/cases/{number}"))
    assert 'id="due-date">2027-01-19</span>' in page and NOTE not in page
    assert PROVISIONAL not in text(clerk.get(f"/cases/{number}/receipt"))
    assert PROVISIONAL not in text(citizen.get(f"/progress/{number}"))
    assert index.provisional_cases(kit.store(K.COUNTY).db, kit.desk(K.COUNTY).calendar)[0] == 0


def test_commitment_and_deficiency_deadlines_cross_the_year_and_follow_the_release(kit, frozen):
    # GD-LS-17 allows 告知承诺: a 20-working-day post-check from 21 December.
    committed = accept_on(kit, frozen, D(2026, 12, 21), item="GD-LS-17", decision="commitment",
                          materials={0: {"status": F.COMMITTED}})
    state = kit.desk(K.VILLAGE_A).state(committed)
    assert state["postcheck"]["due"] == "2027-01-18"
    clerk = login(kit, K.VILLAGE_A, "clerk-a")
    receipt = text(clerk.get(f"/cases/{committed}/receipt"))
    assert 'id="postcheck-due">2027-01-18</strong><span class="provisional"' in receipt

    desk = kit.desk(K.VILLAGE_A)
    materials = K.full_materials(desk, "GD-LS-02", leave_out=(3,))
    materials[3] = {"status": F.MISSING}
    frozen.at(D(2026, 12, 28))
    deficient = desk.receive("GD-LS-02", K.applicant(), materials, "deficiency", K.clerk())
    kit.sync()
    clerk = login(kit, K.VILLAGE_A, "clerk-a")  # a week later
    notice = text(clerk.get(f"/cases/{deficient}/notice"))
    # 5 working days from Monday 28 December: 29, 30, 31 December, then 1 and 4 January.
    assert 'id="deficiency-due">2027-01-04</strong><span class="provisional"' in notice
    assert NOTE in notice

    publish_2027(kit)
    receipt = text(clerk.get(f"/cases/{committed}/receipt"))
    assert 'id="postcheck-due">2027-01-19</strong>' in receipt and PROVISIONAL not in receipt
    notice = text(clerk.get(f"/cases/{deficient}/notice"))
    assert 'id="deficiency-due">2027-01-05</strong>' in notice and PROVISIONAL not in notice


def test_the_dashboards_working_days_follow_the_countys_calendar(kit, frozen):
    number = accept_on(kit, frozen, D(2026, 12, 30), item="GD-LS-17")
    frozen.at(D(2027, 1, 5))
    kit.desk(K.TOWNSHIP).forward(number, K.approver())
    kit.sync()
    kit.desk(K.COUNTY).approve(number, K.approver(), "认定为就业困难人员")
    kit.sync()
    db = kit.store(K.COUNTY).db

    def decide_days():
        return stats.dashboard(db, today=D(2027, 1, 5))["total"]["decide_workdays"]

    # 31 December, then 1, 4 and 5 January as ordinary days.
    assert decide_days() == 4
    publish_2027(kit)
    assert decide_days() == 3  # 1 January is off in the published year
    stats.rebuild(db)
    assert decide_days() == 3  # a rebuild counts the same as the recount did
