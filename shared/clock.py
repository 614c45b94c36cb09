"""The node's one clock: "now" and "today", in Beijing time.

Every notion of now in a node reads this module: pages, jobs and the card sweep, due
dates, case numbers, the hybrid logical clock, signed requests, registry entries, staff
sessions and the audit log. ``TONGBAN_CLOCK_SKEW_SECONDS`` shifts all of them together, so
a station whose PC clock is off, or a whole region run in another year (``tongban demo
--clock 2027-03-02``, the CI runs in other years), behaves like one consistent node.

Only durations use :func:`time.monotonic` directly; nothing compares this clock with file
modification times, which the skew does not shift.

People read times in Beijing time (China Standard Time, UTC+8, no daylight saving), and
every time shown to a person says so: :func:`format_time`.
"""

import datetime
import os
import time as _time

from shared import errors

#: Seconds added to this process's wall clock (a node whose clock is off, or a run in
#: another year). Child processes inherit it through the environment.
SKEW_ENV = "TONGBAN_CLOCK_SKEW_SECONDS"
#: Beijing time: every date a person reads and every case number's date.
BEIJING = datetime.timezone(datetime.timedelta(hours=8), "CST")
#: How a time shown to a person is labelled.
LABEL = "北京时间"

_parsed = ("", 0.0)


def skew():
    """Seconds this process's clock is shifted by (``TONGBAN_CLOCK_SKEW_SECONDS``; 0 unset).

    :raises ConfigurationError: the variable is not a finite number.
    """
    global _parsed
    raw = os.environ.get(SKEW_ENV, "").strip()
    if raw == _parsed[0]:
        return _parsed[1]
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise errors.ConfigurationError(f"{SKEW_ENV} must be a number of seconds, not {raw!r}")
    _parsed = (raw, value)
    return value


def time():
    """Unix seconds now, on the node's clock."""
    return _time.time() + skew()


def utcnow():
    """Now as an aware UTC datetime."""
    return datetime.datetime.fromtimestamp(time(), datetime.timezone.utc)


def now():
    """Now as an aware datetime in Beijing time."""
    return datetime.datetime.fromtimestamp(time(), BEIJING)


def today():
    """Today's date in Beijing time: the day every page, count and case number speaks of."""
    return now().date()


def beijing(moment):
    """``moment`` (unix seconds, an aware datetime, or a naive datetime taken as UTC) as an
    aware datetime in Beijing time."""
    if isinstance(moment, (int, float)):
        return datetime.datetime.fromtimestamp(moment, BEIJING)
    if isinstance(moment, datetime.datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return moment.astimezone(BEIJING)
    if isinstance(moment, str):
        return beijing(datetime.datetime.fromisoformat(moment.strip().replace("Z", "+00:00")))
    raise TypeError(f"not a moment: {moment!r}")


def format_time(moment, *, seconds=False, label=True):
    """``moment`` as a person reads it: ``2026-12-04 17:50（北京时间）``.

    Empty for None or an unreadable value (a page never fails on a bad stored time).
    """
    if moment is None or moment == "":
        return ""
    try:
        shown = beijing(moment).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
    return f"{shown}（{LABEL}）" if label else shown


def skew_for(moment):
    """The ``TONGBAN_CLOCK_SKEW_SECONDS`` value that puts the real clock at ``moment`` now
    (an ISO date or datetime; a date means 09:00 Beijing time, a working morning)."""
    if isinstance(moment, str):
        text = moment.strip()
        moment = (datetime.datetime.fromisoformat(text + "T09:00:00+08:00") if len(text) == 10
                  else datetime.datetime.fromisoformat(text.replace("Z", "+00:00")))
    if isinstance(moment, datetime.date) and not isinstance(moment, datetime.datetime):
        moment = datetime.datetime.combine(moment, datetime.time(9), BEIJING)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=BEIJING)
    return moment.timestamp() - _time.time()
