"""The working-day calendar that time limits (办理时限) are counted in.

Chinese statutory holidays and the adjusted working weekends (调休上班) come from the
``chinesecalendar`` package; the county's override table wins over it (local days off,
corrections, and the years the package does not cover yet). A date that neither covers
counts as an ordinary week and makes the count provisional (below).

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
ordinary week (Monday to Friday working).

Time never runs out: a day nothing covers (a year the package does not know yet, before
the county publishes it) also counts as an ordinary week, and every result that walked
through such a day is *provisional* (:class:`Due`, :meth:`WorkCalendar.uncovered_in`):
pages, receipts and notices show it as 暂定 with :func:`provisional_note`, and once the
county publishes the year the same count gives the final date.

:func:`calendar_from_db` is the calendar in force at a node: the overrides of the signed
catalog release active there (``catalog_calendar``), followed from one activation to the
next without a restart.
"""

import datetime
import functools
import logging
from typing import NamedTuple

import chinese_calendar

logger = logging.getLogger(__name__)

ONE_DAY = datetime.timedelta(days=1)


class Due(NamedTuple):
    """A date counted in working days, and the first day the count walked through that no
    source covers (None: the date is final)."""

    day: datetime.date
    uncovered: datetime.date | None = None

    @property
    def provisional(self):
        """True when the date is 暂定 (it counted a day no published arrangement covers)."""
        return self.uncovered is not None

    @property
    def note(self):
        """The one-line reason shown beside a provisional date ('' when final)."""
        return provisional_note(self.uncovered) if self.uncovered else ""

    def isoformat(self):
        """The date as ``YYYY-MM-DD`` (so a Due prints like the date it carries)."""
        return self.day.isoformat()


PROVISIONAL_MARK = "暂定"


def provisional_note(day):
    """Why a date counted through ``day`` is provisional, in one line."""
    return (f"{day.year} 年节假日安排尚未发布，暂按正常工作周（周一至周五）计算；"
            "县里发布后自动更新。")


def as_date(day):
    """``day`` as a :class:`datetime.date` (accepts a date, a datetime or an ISO string)."""
    if isinstance(day, Due):
        return day.day
    if isinstance(day, datetime.datetime):
        return day.date()
    if isinstance(day, datetime.date):
        return day
    if isinstance(day, str):
        return datetime.date.fromisoformat(day.strip())
    raise TypeError(f"not a date: {day!r}")


@functools.lru_cache(maxsize=1)
def package_years():
    """``(first, last)``: the years the ``chinesecalendar`` package holds arrangements for."""
    days = chinese_calendar.constants.holidays
    return min(days).year, max(days).year


def _covered(day, overrides, years):
    """Whether a published source says what ``day`` is (the package, an override, or a year
    the county declared complete)."""
    first, last = package_years()
    return first <= day.year <= last or day in overrides or day.year in years


def _workday(day, overrides, years):
    """Whether ``day`` (a date) is a working day under ``overrides`` and complete ``years``;
    a day nothing covers follows the ordinary week."""
    if day in overrides:
        return overrides[day]
    first, last = package_years()
    if first <= day.year <= last:
        return chinese_calendar.is_workday(day)
    return day.weekday() < 5


def _year_covered(year, years):
    first, last = package_years()
    return first <= year <= last or year in years


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
        """Whether ``day`` is a working day (a day nothing covers: Monday to Friday)."""
        return _workday(as_date(day), *self.rules())

    def covers(self, day):
        """Whether a published arrangement says what ``day`` is (else it is provisional)."""
        return _covered(as_date(day), *self.rules())

    def uncovered_in(self, start, end):
        """The first day in ``(start, end]`` no published arrangement covers, or None."""
        overrides, years = self.rules()
        day, end = as_date(start) + ONE_DAY, as_date(end)
        while day <= end:
            if _year_covered(day.year, years):
                day = datetime.date(day.year + 1, 1, 1)  # a whole year at a time
                continue
            if day not in overrides:
                return day
            day += ONE_DAY
        return None

    def covered_until(self, day):
        """The last day of the run of covered days that starts at ``day`` (the day before
        ``day`` when ``day`` itself is not covered)."""
        overrides, years = self.rules()
        day = as_date(day)
        while True:
            if _year_covered(day.year, years):
                day = datetime.date(day.year + 1, 1, 1)
            elif day in overrides:
                day += ONE_DAY
            else:
                return day - ONE_DAY

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

    def add_workdays_info(self, start, n):
        """:meth:`add_workdays` as a :class:`Due` (the date and whether it is provisional)."""
        return self.due_info(start, n, ())

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
        found = self.due_info(start, n, stops)
        return found.day if found else None

    def due_info(self, start, n, stops):
        """:meth:`due_with_stops` as a :class:`Due` (None while the clock is stopped)."""
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
        uncovered = None
        while counted < n:
            day += ONE_DAY
            # a paused day is skipped before the calendar is asked: it counts for nothing,
            # so a day nobody has published yet does not make the date provisional there
            if any(stop < day <= resume for stop, resume in paused):
                continue
            if uncovered is None and not _covered(day, *rules):
                uncovered = day
            counted += _workday(day, *rules)
        return Due(day, uncovered)


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


#: Days before the last covered day from which every tier warns that next year's working
#: days are not published yet.
WARN_DAYS = 60


def coverage_warning(calendar, today):
    """What to tell staff when the published arrangements end within :data:`WARN_DAYS` of
    ``today`` (None while they reach further).

    :returns: ``{"last_covered": date, "days_left": int, "year": int, "message": str}``;
        ``days_left`` is negative once ``today`` is past the last covered day.
    """
    today = as_date(today)
    last = calendar.covered_until(today)
    while not calendar.covers(last) and last.year > package_years()[0]:
        last -= ONE_DAY  # past the end already: the last day anything covered
    days_left = (last - today).days
    if days_left > WARN_DAYS:
        return None
    year = (last + ONE_DAY).year  # the year of the first day nothing covers
    if days_left >= 0:
        head = (f"{year} 年的节假日安排尚未发布：工作日历只覆盖到 {last.isoformat()}"
                f"（还有 {days_left} 天）。")
    else:
        head = (f"{year} 年的节假日安排尚未发布：工作日历只覆盖到 {last.isoformat()}，"
                f"已过 {-days_left} 天。")
    message = (head + "之后的办理时限暂按正常工作周（周一至周五）计算，标为“暂定”。"
               f"请县级管理员在“工作日历”中录入国务院办公厅公布的 {year} 年节假日和调休安排，"
               f"加上一行“{year} 全年 依据文件”，随目录发布。")
    return {"last_covered": last, "days_left": days_left, "year": year, "message": message}
