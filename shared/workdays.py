"""The working-day calendar that time limits (办理时限) are counted in.

Chinese statutory holidays and the adjusted working weekends (调休上班) come from the
``chinesecalendar`` package; the county's override table wins over it (local days off,
corrections, and the years the package does not cover yet). A date that neither covers is
a :class:`CalendarGap`, never a guess: for a year the package does not cover, every day
that a count walks through must be in the overrides.

Conventions (the same half-open interval everywhere, so counts add up):

- the acceptance day itself is not counted; a limit of *n* working days is due on the
  *n*-th working day after acceptance, and a limit of 0 (即办) is due on the day itself;
- ``workdays_between(a, b)`` counts the working days in ``(a, b]``;
- a clock stop ``(stop, resume)`` removes the days in ``(stop, resume]``: the stop day has
  been worked on and counts, the resume day is like a new acceptance day and does not.

Days may be given as :class:`datetime.date`, :class:`datetime.datetime` (its date is used)
or ISO ``YYYY-MM-DD`` strings; results are always :class:`datetime.date`.
"""

import datetime
import logging

import chinese_calendar

logger = logging.getLogger(__name__)

ONE_DAY = datetime.timedelta(days=1)


class CalendarGap(ValueError):
    """A date neither the holiday data nor the county's overrides cover."""

    def __init__(self, day):
        self.day = day
        self.message = (f"{day.isoformat()} 不在工作日历范围内（节假日安排未发布，也没有县级调整）。"
                        "请县级管理员在工作日历中补充该日期。")
        super().__init__(self.message)


def as_date(day):
    """``day`` as a :class:`datetime.date` (accepts a date, a datetime or an ISO string)."""
    if isinstance(day, datetime.datetime):
        return day.date()
    if isinstance(day, datetime.date):
        return day
    if isinstance(day, str):
        return datetime.date.fromisoformat(day.strip())
    raise TypeError(f"not a date: {day!r}")


class WorkCalendar:
    """Working days: the county's ``overrides`` first, then the statutory calendar.

    :param overrides: ``{date: True (working day) | False (day off)}``.
    """

    def __init__(self, overrides=None):
        self.overrides = {as_date(day): bool(work) for day, work in (overrides or {}).items()}

    def is_workday(self, day):
        """Whether ``day`` is a working day; :class:`CalendarGap` when nothing covers it."""
        day = as_date(day)
        if day in self.overrides:
            return self.overrides[day]
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError:
            raise CalendarGap(day) from None

    def next_workday(self, day):
        """The first working day strictly after ``day``."""
        day = as_date(day) + ONE_DAY
        while not self.is_workday(day):
            day += ONE_DAY
        return day

    def add_workdays(self, start, n):
        """Due date of a limit of ``n`` working days accepted on ``start``.

        The acceptance day is not counted: the due date is the ``n``-th working day after
        ``start``; ``n == 0`` (即办) is due on ``start`` itself.
        """
        return self.due_with_stops(start, n, ())

    def workdays_between(self, start, end):
        """Number of working days in ``(start, end]``; 0 when ``end <= start``."""
        day, end = as_date(start), as_date(end)
        count = 0
        while day < end:
            day += ONE_DAY
            count += self.is_workday(day)
        return count

    def workdays_until(self, today, due):
        """Signed working days left until ``due`` as seen on ``today``.

        0 when due today, ``k > 0`` when ``k`` working days remain after today. Once the
        due day has passed the result is negative: minus the working days elapsed since
        it, and at least -1 (a weekend right after the due day is already overdue).
        """
        today, due = as_date(today), as_date(due)
        if today <= due:
            return self.workdays_between(today, due)
        return -max(1, self.workdays_between(due, today))

    def due_with_stops(self, start, n, stops):
        """Due date of ``n`` working days from ``start`` when the clock stopped meanwhile.

        ``stops`` is a list of ``(stop_date, resume_date)``; the working days in
        ``(stop_date, resume_date]`` do not count (e.g. while the applicant supplements
        materials). Returns None while a stop has no resume date yet: the clock is
        stopped and there is no due date.
        """
        if n < 0:
            raise ValueError(f"a time limit cannot be negative: {n}")
        paused = []
        for stop, resume in stops:
            if resume is None:
                return None
            stop, resume = as_date(stop), as_date(resume)
            if resume < stop:
                raise ValueError(f"clock resumed ({resume}) before it stopped ({stop})")
            paused.append((stop, resume))
        day = as_date(start)
        counted = 0
        while counted < n:
            day += ONE_DAY
            # a paused day is skipped before the calendar is asked, so a stop may run
            # through days the calendar does not cover yet
            if any(stop < day <= resume for stop, resume in paused):
                continue
            counted += self.is_workday(day)
        return day
