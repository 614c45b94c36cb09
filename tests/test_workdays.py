"""The working-day calendar on real holiday arrangements (chinesecalendar's 2026 data)."""

from datetime import date, datetime, timedelta

import chinese_calendar
import pytest

from shared.workdays import WorkCalendar

# Spring Festival 2026: Sat 14 Feb is worked (调休), 15–23 Feb off, Sat 28 Feb is worked.
# Mid-autumn 25–27 Sep and National Day 1–7 Oct 2026 off; Sun 20 Sep and Sat 10 Oct worked.


@pytest.fixture
def cal():
    return WorkCalendar()


def test_package_data_is_the_arrangement_these_tests_assume():
    assert chinese_calendar.get_holiday_detail(date(2026, 2, 16)) == (True, "Spring Festival")
    assert chinese_calendar.get_holiday_detail(date(2026, 2, 14)) == (False, "Spring Festival")
    assert chinese_calendar.get_holiday_detail(date(2026, 10, 10)) == (False, "National Day")


def test_adjusted_saturday_before_spring_festival_is_a_working_day(cal):
    assert cal.is_workday(date(2026, 2, 13))
    assert cal.is_workday(date(2026, 2, 14))  # Saturday, 调休上班
    assert not cal.is_workday(date(2026, 2, 16))  # Monday, 春节
    assert not cal.is_workday(date(2026, 2, 23))
    assert cal.is_workday(date(2026, 2, 28))  # Saturday, 调休上班
    assert not cal.is_workday(date(2026, 3, 1))  # ordinary Sunday


def test_case_accepted_before_spring_festival_is_due_after_it(cal):
    # accepted on the last working day before the holiday: the next working day is 24 Feb
    assert cal.add_workdays(date(2026, 2, 14), 1) == date(2026, 2, 24)
    assert cal.next_workday(date(2026, 2, 14)) == date(2026, 2, 24)
    # accepted on Friday 13: the adjusted Saturday counts as the first day
    assert cal.add_workdays(date(2026, 2, 13), 1) == date(2026, 2, 14)
    assert cal.add_workdays(date(2026, 2, 13), 5) == date(2026, 2, 27)
    assert cal.add_workdays(date(2026, 2, 13), 6) == date(2026, 2, 28)  # adjusted Saturday
    assert cal.add_workdays(date(2026, 2, 13), 7) == date(2026, 3, 2)


def test_case_accepted_on_a_holiday_counts_from_the_next_working_day(cal):
    assert cal.add_workdays(date(2026, 2, 18), 1) == date(2026, 2, 24)


def test_zero_days_is_due_on_the_day_of_acceptance(cal):
    assert cal.add_workdays(date(2026, 2, 13), 0) == date(2026, 2, 13)


def test_negative_limit_is_refused(cal):
    with pytest.raises(ValueError):
        cal.add_workdays(date(2026, 2, 13), -1)


def test_national_day_and_mid_autumn_2026(cal):
    assert cal.is_workday(date(2026, 9, 20))  # Sunday, 调休上班
    assert not cal.is_workday(date(2026, 9, 25))  # 中秋
    assert not cal.is_workday(date(2026, 10, 1))
    assert not cal.is_workday(date(2026, 10, 7))
    assert cal.is_workday(date(2026, 10, 10))  # Saturday, 调休上班
    # 30 Sep + 3 working days: 8, 9 and the adjusted Saturday 10 Oct
    assert cal.add_workdays(date(2026, 9, 30), 3) == date(2026, 10, 10)
    # 18 Sep (Fri) + 2: the adjusted Sunday 20 Sep, then Monday 21
    assert cal.add_workdays(date(2026, 9, 18), 2) == date(2026, 9, 21)
    # 24 Sep (Thu) + 4: 28, 29, 30 Sep, then 8 Oct after the holiday
    assert cal.add_workdays(date(2026, 9, 24), 4) == date(2026, 10, 8)


def test_workdays_between_counts_the_half_open_interval(cal):
    assert cal.workdays_between(date(2026, 9, 30), date(2026, 10, 8)) == 1
    assert cal.workdays_between(date(2026, 9, 30), date(2026, 10, 10)) == 3
    assert cal.workdays_between(date(2026, 2, 13), date(2026, 2, 24)) == 2
    assert cal.workdays_between(date(2026, 2, 24), date(2026, 2, 24)) == 0
    assert cal.workdays_between(date(2026, 2, 24), date(2026, 2, 13)) == 0


def test_due_date_and_count_agree(cal):
    start = date(2026, 9, 15)
    for n in range(0, 25):
        due = cal.add_workdays(start, n)
        assert cal.workdays_between(start, due) == n
        assert n == 0 or cal.is_workday(due)


def test_workdays_until_is_negative_once_overdue(cal):
    due = date(2026, 2, 24)
    assert cal.workdays_until(date(2026, 2, 13), due) == 2  # 14 Feb and 24 Feb remain
    assert cal.workdays_until(date(2026, 2, 20), due) == 1
    assert cal.workdays_until(due, due) == 0
    assert cal.workdays_until(date(2026, 2, 26), due) == -2
    # due on the adjusted Saturday; the holiday after it is already overdue
    assert cal.workdays_until(date(2026, 2, 16), date(2026, 2, 14)) == -1
    assert cal.workdays_until(date(2026, 2, 24), date(2026, 2, 14)) == -1


def test_override_makes_a_local_day_off(cal):
    local = WorkCalendar({date(2026, 3, 10): False})
    assert cal.add_workdays(date(2026, 3, 9), 1) == date(2026, 3, 10)
    assert not local.is_workday(date(2026, 3, 10))
    assert local.add_workdays(date(2026, 3, 9), 1) == date(2026, 3, 11)
    assert local.workdays_between(date(2026, 3, 9), date(2026, 3, 13)) == 3


def test_override_wins_over_the_statutory_calendar():
    local = WorkCalendar({"2026-02-23": True})  # ISO strings work as keys too
    assert local.is_workday(date(2026, 2, 23))
    assert local.add_workdays(date(2026, 2, 14), 1) == date(2026, 2, 23)


def test_a_date_nothing_covers_counts_as_an_ordinary_week_and_is_not_covered(cal):
    # 1 May 2031 is a Thursday; nobody has published 2031 yet.
    assert cal.is_workday(date(2031, 5, 1)) and not cal.is_workday(date(2031, 5, 3))
    assert not cal.covers(date(2031, 5, 1)) and cal.covers(date(2026, 5, 1))


def test_a_count_running_past_the_covered_years_is_provisional_from_the_first_gap(cal):
    due = cal.due_info(date(2031, 4, 28), 10, ())
    assert due.day == date(2031, 5, 12) and due.provisional
    assert due.uncovered == date(2031, 4, 29)
    assert "2031 年节假日安排尚未发布" in due.note
    assert cal.add_workdays(date(2031, 4, 28), 10) == due.day  # the date is never lost


def test_overrides_cover_a_year_the_package_does_not():
    # a county publishes 2031's May Day arrangement before the package has it
    days = {date(2031, 4, 28) + timedelta(days=i): True for i in range(20)}
    days.update({date(2031, 5, 1) + timedelta(days=i): False for i in range(5)})  # 1–5 May
    days.update({date(2031, 5, 10): False, date(2031, 5, 11): False})
    local = WorkCalendar(days)
    assert local.add_workdays(date(2031, 4, 30), 1) == date(2031, 5, 6)
    assert local.workdays_between(date(2031, 4, 28), date(2031, 5, 9)) == 6
    assert not local.due_info(date(2031, 4, 30), 1, ()).provisional
    assert local.due_info(date(2031, 5, 14), 5, ()).uncovered == date(2031, 5, 18)


def test_datetimes_and_strings_are_days(cal):
    assert cal.add_workdays(datetime(2026, 2, 14, 16, 30), 1) == date(2026, 2, 24)
    assert cal.add_workdays("2026-02-14", 1) == date(2026, 2, 24)


def test_stop_removes_the_days_until_resumption(cal):
    start = date(2026, 3, 2)  # Monday
    assert cal.add_workdays(start, 5) == date(2026, 3, 9)
    # stopped Tue 3 Mar (counts), resumed Thu 5 Mar (does not): 4 and 5 Mar are removed
    stops = [(date(2026, 3, 3), date(2026, 3, 5))]
    assert cal.due_with_stops(start, 5, stops) == date(2026, 3, 11)


def test_stop_and_resume_the_same_day_changes_nothing(cal):
    start = date(2026, 3, 2)
    stops = [(date(2026, 3, 4), date(2026, 3, 4))]
    assert cal.due_with_stops(start, 5, stops) == date(2026, 3, 9)


def test_several_stops_and_a_holiday(cal):
    start = date(2026, 2, 10)  # Tuesday
    assert cal.add_workdays(start, 6) == date(2026, 2, 25)
    stops = [(date(2026, 2, 11), date(2026, 2, 12)),  # removes 12 Feb
             (date(2026, 2, 24), date(2026, 2, 26))]  # removes 25, 26 Feb
    # counted: 11, 13, 14 Feb, 24, 27, 28 Feb
    assert cal.due_with_stops(start, 6, stops) == date(2026, 2, 28)


def test_clock_stopped_now_has_no_due_date(cal):
    stops = [(date(2026, 3, 3), date(2026, 3, 5)), (date(2026, 3, 9), None)]
    assert cal.due_with_stops(date(2026, 3, 2), 5, stops) is None


def test_stop_through_an_uncovered_period_needs_no_calendar(cal):
    # the removed days are never looked up, so a long stop does not hit the gap
    stops = [(date(2026, 12, 31), date(2031, 5, 1))]
    local = WorkCalendar({date(2031, 5, 2): True})
    assert local.due_with_stops(date(2026, 12, 30), 2, stops) == date(2031, 5, 2)


def test_resumption_before_the_stop_is_refused(cal):
    with pytest.raises(ValueError):
        cal.due_with_stops(date(2026, 3, 2), 5, [(date(2026, 3, 5), date(2026, 3, 3))])
