"""The hybrid logical clock (Kulkarni et al., 2014) that orders case events across nodes.

Village clocks drift, so no node's wall clock may order two nodes' events. A timestamp is
``(ms, counter)``: ``ms`` is the latest wall-clock time (milliseconds since the epoch) the
node has seen, on its own clock or in any document it received; ``counter`` orders events
within one ``ms``. An event stamped after its node received another event therefore sorts
after it, whatever either wall clock says, and while clocks are right ``ms`` stays close to
real time.

The string form ``<15-digit ms>-<5-digit counter>`` sorts as strings in time order; it is
what documents carry (``hlc`` members, ``event:`` ids).

A node's clock lives in its store's ``meta`` table (key ``hlc``) and is read, advanced and
written inside the store's IMMEDIATE write transaction, so ``serve`` and ``syncd`` on the
same file never issue the same timestamp and a restart never goes backwards.
:class:`ClockObserver` advances it from every ``case``/``event`` document written, received
ones included, in the same transaction as the write.

Drift policy: a received timestamp ahead of this node's wall clock is still observed, since
ordering correctness matters more than readable timestamps; more than ``max_drift`` ahead
(default one hour: catches a PC set a day or a time zone off) it is logged as a warning.
Only a timestamp beyond ``max_ahead`` (default ten years) is refused and logged as an error:
that is corrupt data, not a drifted clock, and observing it would drag every node's
persisted clock there for good.
"""

import logging
import re
from typing import NamedTuple

from shared import clock, errors

logger = logging.getLogger(__name__)

MS_DIGITS = 15
COUNTER_DIGITS = 5
MAX_MS = 10 ** MS_DIGITS - 1
MAX_COUNTER = 10 ** COUNTER_DIGITS - 1

#: The meta-table key holding the last timestamp this node issued or observed.
META_KEY = "hlc"
#: Seconds added to this process's wall clock (see :mod:`shared.clock`).
SKEW_ENV = clock.SKEW_ENV
#: Seconds a received timestamp may be ahead of the local clock before a warning.
DEFAULT_MAX_DRIFT = 3600.0
#: Seconds ahead beyond which a received timestamp is refused as corrupt.
DEFAULT_MAX_AHEAD = 10 * 366 * 86400.0
#: Document types whose ``hlc`` member the clock observes.
STAMPED_TYPES = ("case", "event")

_PATTERN = re.compile(rf"([0-9]{{{MS_DIGITS}}})-([0-9]{{{COUNTER_DIGITS}}})")


class Timestamp(NamedTuple):
    """One HLC timestamp; tuples compare in time order, ``str()`` gives the string form."""

    ms: int
    counter: int

    def __str__(self):
        return format_hlc(self)


ZERO = Timestamp(0, 0)


def format_hlc(ts):
    """The string form ``<15-digit ms>-<5-digit counter>`` of a timestamp.

    :raises ValueError: a part out of range (the form would no longer sort).
    """
    ms, counter = ts
    if not 0 <= ms <= MAX_MS or not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"HLC timestamp out of range: {ms!r}, {counter!r}")
    return f"{ms:0{MS_DIGITS}d}-{counter:0{COUNTER_DIGITS}d}"


def parse_hlc(text):
    """The :class:`Timestamp` of an HLC string.

    :raises DocValidation: ``text`` is not ``<15 digits>-<5 digits>``.
    """
    match = _PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise errors.DocValidation(
            f"invalid HLC timestamp {text!r}: expected <15-digit ms>-<5-digit counter>")
    return Timestamp(int(match.group(1)), int(match.group(2)))


def is_hlc(text):
    """True when ``text`` is a well-formed HLC string."""
    return isinstance(text, str) and _PATTERN.fullmatch(text) is not None


def _coerce(value):
    return parse_hlc(value) if isinstance(value, str) else Timestamp(*value)


def _tick(ms, counter):
    """``(ms, counter)``, carrying a full counter into the next millisecond.

    100,000 events in one millisecond of logical time only happen when the clock is
    being dragged by counters alone; moving ms on by one keeps the string form bounded
    and still sorts after everything before.
    """
    if counter > MAX_COUNTER:
        ms, counter = ms + 1, 0
    if ms > MAX_MS:
        raise OverflowError("HLC exhausted: logical time passed the 15-digit limit")
    return Timestamp(ms, counter)


def wall_clock_from_env():
    """The process's wall clock (unix seconds), shifted by ``TONGBAN_CLOCK_SKEW_SECONDS``.

    A test hook: a node process started with the variable set behaves like a station
    whose clock is off by that many seconds (negative: behind). Unset means no skew.
    :raises ConfigurationError: the variable is not a number.
    """
    skew = clock.skew()
    if skew and skew not in _SKEWS_TOLD:
        _SKEWS_TOLD.add(skew)  # once a process: every store and desk asks
        logger.warning("wall clock skewed by %+.0f s (%s)", skew, SKEW_ENV)
    return clock.time


_SKEWS_TOLD = set()


class HLC:
    """An in-memory hybrid logical clock.

    :param wall_clock: a callable returning unix seconds (float); default
        :func:`wall_clock_from_env`.
    :param last: the last timestamp issued or observed (a restart passes the persisted one).
    :param max_drift: seconds ahead of ``wall_clock`` above which an observed timestamp is
        logged as a warning (None: never).
    :param max_ahead: seconds ahead above which an observed timestamp is refused (None: never).
    """

    def __init__(self, wall_clock=None, last=None, *, max_drift=DEFAULT_MAX_DRIFT,
                 max_ahead=DEFAULT_MAX_AHEAD):
        self.wall_clock = wall_clock if wall_clock is not None else wall_clock_from_env()
        self.last = _coerce(last) if last is not None else ZERO
        self.max_drift = max_drift
        self.max_ahead = max_ahead

    def _physical(self):
        return min(max(int(self.wall_clock() * 1000), 0), MAX_MS)

    def now(self):
        """A timestamp for a local or send event, after every earlier one of this clock."""
        physical = self._physical()
        if physical > self.last.ms:
            self.last = Timestamp(physical, 0)
        else:
            self.last = _tick(self.last.ms, self.last.counter + 1)
        return self.last

    def observe(self, remote, source=None):
        """Merge a received timestamp (receive event).

        :param remote: a :class:`Timestamp`, ``(ms, counter)`` or HLC string.
        :param source: what carried it (a document id), for the log.
        :returns: the receive event's timestamp, after ``remote`` and every earlier one
            (after the earlier ones only, when ``remote`` is refused beyond ``max_ahead``).
        :raises DocValidation: ``remote`` is a malformed string.
        """
        remote = _coerce(remote)
        physical = self._physical()
        ahead = (remote.ms - physical) / 1000.0
        if self.max_ahead is not None and ahead > self.max_ahead:
            logger.error("HLC %s from %s is %.0f s ahead of this node's clock: refused as "
                         "corrupt, not observed", format_hlc(remote), source or "a peer", ahead)
            return self.now()
        if self.max_drift is not None and ahead > self.max_drift:
            # Observed anyway: ordering must hold even when some station's clock is wrong.
            logger.warning("HLC %s from %s is %.0f s ahead of this node's clock; a station's "
                           "clock is probably wrong", format_hlc(remote), source or "a peer",
                           ahead)
        last = self.last
        ms = max(last.ms, remote.ms, physical)
        if ms == last.ms == remote.ms:
            counter = max(last.counter, remote.counter) + 1
        elif ms == last.ms:
            counter = last.counter + 1
        elif ms == remote.ms:
            counter = remote.counter + 1
        else:
            counter = 0
        self.last = _tick(ms, counter)
        return self.last


# -- the node's persisted clock ---------------------------------------------------------


def load_last(db):
    """The persisted last timestamp of the store behind ``db`` (ZERO when none yet)."""
    row = db.execute_sql("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    if row is None:
        return ZERO
    try:
        return parse_hlc(row[0])
    except errors.DocValidation:
        # Only a hand-edited file gets here; refusing every write would be worse.
        logger.error("persisted HLC %r is malformed; starting again from the wall clock", row[0])
        return ZERO


def save_last(db, ts):
    """Persist ``ts`` as the store's last timestamp (inside the caller's transaction)."""
    db.execute_sql("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   (META_KEY, format_hlc(ts)))


class NodeClock:
    """A node's hybrid logical clock, persisted in its store and shared by its processes.

    Each call reads the persisted timestamp, advances it and writes it back in one
    IMMEDIATE transaction (a savepoint when the caller already holds one). To stamp an
    event with the clock as it stands when the event is written, call :meth:`now` and
    write the event inside one ``with store.db.atomic():``.

    :param store: the node's :class:`~shared.store.store.Store`.
    :param wall_clock: as for :class:`HLC`.
    """

    def __init__(self, store, wall_clock=None, *, max_drift=DEFAULT_MAX_DRIFT,
                 max_ahead=DEFAULT_MAX_AHEAD):
        self.store = store
        self.wall_clock = wall_clock if wall_clock is not None else wall_clock_from_env()
        self.max_drift = max_drift
        self.max_ahead = max_ahead

    def _clock(self, db):
        return HLC(self.wall_clock, load_last(db), max_drift=self.max_drift,
                   max_ahead=self.max_ahead)

    def now(self):
        """Issue a new timestamp; returns its string form."""
        db = self.store.db
        with db.atomic():
            ts = self._clock(db).now()
            save_last(db, ts)
        return format_hlc(ts)

    def observe(self, remote, source=None):
        """Merge a received timestamp (see :meth:`HLC.observe`); returns the new string."""
        db = self.store.db
        with db.atomic():
            ts = self._clock(db).observe(remote, source)
            save_last(db, ts)
        return format_hlc(ts)

    def last(self):
        """The last timestamp issued or observed, as a string (None before the first)."""
        ts = load_last(self.store.db)
        return None if ts == ZERO else format_hlc(ts)


class ClockObserver:
    """Projection that advances the node's clock past every ``case``/``event`` written.

    Runs inside the write transaction (``Store.add_projection``), for local and replicated
    writes alike, so an event this node writes after it received another node's event
    sorts after it. It never raises: a malformed ``hlc`` is logged and skipped, since
    refusing would refuse the whole replicated batch with it.
    """

    tables = []

    def __init__(self, wall_clock=None, *, max_drift=DEFAULT_MAX_DRIFT,
                 max_ahead=DEFAULT_MAX_AHEAD):
        self.wall_clock = wall_clock if wall_clock is not None else wall_clock_from_env()
        self.max_drift = max_drift
        self.max_ahead = max_ahead

    def apply(self, db, docs):
        """Observe the latest ``hlc`` among ``docs`` (``[(doc_id, doc_or_None)]``)."""
        latest, source = None, None
        for doc_id, doc in docs:
            if doc is None or doc.get("type") not in STAMPED_TYPES or "hlc" not in doc:
                continue
            if not is_hlc(doc["hlc"]):
                logger.warning("document %s has a malformed hlc %r; not observed",
                               doc_id, doc["hlc"])
                continue
            ts = parse_hlc(doc["hlc"])
            if latest is None or ts > latest:
                latest, source = ts, doc_id
        if latest is None:
            return
        last = load_last(db)
        if latest <= last:
            # Our own events and old news: the clock is already past them.
            return
        clock = HLC(self.wall_clock, last, max_drift=self.max_drift, max_ahead=self.max_ahead)
        save_last(db, clock.observe(latest, source))

    def reset(self, db):
        """Nothing to empty: a clock never goes back, and a rebuild re-observes everything."""
