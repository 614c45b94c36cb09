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

The county may also declare a year *complete* (``years``): it has published that year's
whole arrangement in its overrides, so a day of that year it does not list follows the
ordinary week (Monday to Friday working). Without that declaration a year the package does
not cover has no ordinary days: each day must be listed.

:func:`calendar_from_db` is the calendar in force at a node: the overrides of the signed
catalog release active there (``catalog_calendar``), followed from one activation to the
next without a restart.
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


def package_years():
    """``(first, last)``: the years the ``chinesecalendar`` package holds arrangements for."""
    days = chinese_calendar.constants.holidays
    return min(days).year, max(days).year


def _workday(day, overrides, years):
    """Whether ``day`` (a date) is a working day under ``overrides`` and complete ``years``."""
    if day in overrides:
        return overrides[day]
    try:
        return chinese_calendar.is_workday(day)
    except NotImplementedError:
        if day.year in years:
            return day.weekday() < 5
        raise CalendarGap(day) from None


class WorkCalendar:
    """Working days: the county's ``overrides`` first, then the statutory calendar, then the
    ordinary week in the years the county declared complete.

    :param overrides: ``{date: True (working day) | False (day off)}``.
    :param years: years whose whole arrangement the overrides hold (see the module docstring).
    """

    def __init__(self, overrides=None, years=()):
        self._rules = ({as_date(day): bool(work) for day, work in (overrides or {}).items()},
                       frozenset(int(year) for year in years))

    def rules(self):
        """``(overrides, complete years)`` this calendar answers with now."""
        return self._rules

    @property
    def overrides(self):
        """``{date: bool}``: the county's overrides."""
        return self.rules()[0]

    @property
    def years(self):
        """The years the county declared complete."""
        return self.rules()[1]

    def is_workday(self, day):
        """Whether ``day`` is a working day; :class:`CalendarGap` when nothing covers it."""
        return _workday(as_date(day), *self.rules())

    def next_workday(self, day):
        """The first working day strictly after ``day``."""
        rules = self.rules()
        day = as_date(day) + ONE_DAY
        while not _workday(day, *rules):
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
        rules = self.rules()
        day, end = as_date(start), as_date(end)
        count = 0
        while day < end:
            day += ONE_DAY
            count += _workday(day, *rules)
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
        rules = self.rules()
        day = as_date(start)
        counted = 0
        while counted < n:
            day += ONE_DAY
            # a paused day is skipped before the calendar is asked, so a stop may run
            # through days the calendar does not cover yet
            if any(stop < day <= resume for stop, resume in paused):
                continue
            counted += _workday(day, *rules)
        return day


class NodeCalendar(WorkCalendar):
    """The calendar in force at a node (see :func:`calendar_from_db`)."""

    def __init__(self, db):
        super().__init__()
        self.db = db

    def rules(self):
        """The overrides of the release active now (one small query; cached per release)."""
        from shared.catalog.active import calendar_rules

        return calendar_rules(self.db)


def calendar_from_db(db):
    """The working-day calendar in force at this node.

    Its overrides are those of the signed catalog release active in ``db``
    (``catalog_calendar``; none while no release carries a calendar). Each count reads the
    release active at that moment, so a newly activated calendar applies at once, in the
    very transaction that activated it.
    """
    return NodeCalendar(db)
