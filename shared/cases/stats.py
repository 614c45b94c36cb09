"""Supervision figures (督查统计): the dashboard, repeated submissions, proactive service.

The dashboard answers over a million cases in well under a second because it never reads
``case_state`` row by row. :func:`apply_delta` keeps aggregate tables exact: ``CaseIndex``
calls it inside the write transaction that stores a case's new row, with the row it
replaces, and it subtracts the old row's contribution and adds the new one. A case counts
once it is accepted, in the bucket of its **acceptance day** and its **origin** (the
accepting station): completions, cards, ratings and complaints of a case accepted in March
are March's, whenever they happen.

Tables (all rebuilt from ``case_state`` by :func:`rebuild`):

- ``stats_node (bucket, node)`` and ``stats_item (bucket, area, item_id, department)``:
  the counters of :data:`COUNTERS`. Each case is added to three buckets: its day
  (``2026-03-14``), month (``2026-03``) and year (``2026``). Any day range is then the
  sum of a few dozen buckets at most (:func:`buckets`): whole years, whole months, and the
  odd days at either end, so figures for any period are exact and cheap. ``area`` is the
  township part of the origin (its first 9 digits; the county's own code for the county).
- ``stats_week (week, area)``: the same counters by week of acceptance (Monday) for trends.
- ``stats_requests``: cases whose materials were requested more than once (one-time notices
  plus supplement requests ≥ 2).
- ``stats_repeat``: each accepted case linked to the applicant's previous accepted case of
  the same item (and the days between), so repeated applications within any period are a
  range read; :func:`apply_delta` relinks the neighbours when a case is accepted.
- ``person_facts (applicant_key, birth_date, sex, station, …)``: birth date and sex from the
  accepted event's ``applicant_facts`` and the station that last accepted a case of the
  person, for proactive service. Nothing is ever decrypted for it.

Overdue depends on today, so it is counted at query time from an index on ``case_state``
that covers it (cases in ``handling`` with ``due`` before today: supplementing cases have
no due date while their clock is stopped).

After ``CaseIndex.reset`` (a reindex) the first new case meets an empty ``case_state``
while these tables still hold figures: :func:`apply_delta` notices and starts them afresh,
so a rebuild never counts a case twice.
"""

import datetime
import functools
import json
import logging

from shared import clock
from shared import config as cfg
from shared.cases import fold as F
from shared.hlc import parse_hlc
from shared.workdays import WorkCalendar, as_date, calendar_from_db

logger = logging.getLogger(__name__)

#: Bumped when a table changes: the tables are then made again from ``case_state``.
VERSION = 3

#: What every aggregate row counts (sums over the cases accepted in its bucket).
COUNTERS = ("accepted", "online", "in_progress", "completed", "withdrawn", "decide_workdays",
            "delivered", "visits_le1", "visits_0", "yellow", "red", "red_followed", "rated",
            "rating_sum", "complaints", "complaints_replied", "complaint_minutes")
#: The aggregate tables and their keys.
DIMENSIONS = {
    "stats_node": ("bucket", "node"),
    "stats_item": ("bucket", "area", "item_id", "department"),
    "stats_week": ("week", "area"),
}
#: The plan's indicators and their targets (shares).
TARGETS = {"online_items": 0.5, "online_rate": 0.4, "visits_le1": 0.7, "visits_0": 0.2}
INDICATOR_LABELS = {
    "online_items": "可网上办理事项占比",
    "online_rate": "网上申请率",
    "visits_le1": "最多跑一次办结率",
    "visits_0": "零跑动办结率",
}
#: Weeks a trend shows at most.
MAX_TREND_WEEKS = 104
#: Rows a list (repeats, requests, proactive) returns at most.
LIST_LIMIT = 500

_COUNTER_COLUMNS = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTERS)


def _dimension_table(name):
    keys = DIMENSIONS[name]
    columns = ", ".join(f"{k} TEXT NOT NULL" for k in keys)
    return (f"CREATE TABLE IF NOT EXISTS {name} ({columns}, {_COUNTER_COLUMNS}, "
            f"PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID")


TABLES = (
    _dimension_table("stats_node"),
    _dimension_table("stats_item"),
    _dimension_table("stats_week"),
    "CREATE TABLE IF NOT EXISTS stats_item_name (item_id TEXT PRIMARY KEY, name TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS stats_requests (
        number TEXT PRIMARY KEY, day TEXT NOT NULL, origin TEXT NOT NULL, item_id TEXT NOT NULL,
        item_name TEXT NOT NULL, applicant_key TEXT NOT NULL, status TEXT NOT NULL,
        notices INTEGER NOT NULL, supplement_requests INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS stats_requests_day ON stats_requests (day)",
    """CREATE TABLE IF NOT EXISTS person_facts (
        applicant_key TEXT PRIMARY KEY, birth_date TEXT NOT NULL, sex TEXT NOT NULL,
        station TEXT NOT NULL, served TEXT NOT NULL, served_case TEXT NOT NULL)""",
    # Covers the age rules (applied-for checks then only seek stats_case_repeat).
    "CREATE INDEX IF NOT EXISTS person_facts_birth ON person_facts "
    "(birth_date, station, sex, applicant_key)",
    # Each accepted case with the applicant's previous accepted case of the same item.
    """CREATE TABLE IF NOT EXISTS stats_repeat (
        number TEXT PRIMARY KEY, day TEXT NOT NULL, origin TEXT NOT NULL,
        previous TEXT NOT NULL, previous_day TEXT NOT NULL, gap INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS stats_repeat_day ON stats_repeat (day, number, gap, origin)",
    # Indexes on case_state for the queries here (CaseIndex owns the table, not them):
    # an applicant's cases of an item in order; cases in handling by due day.
    "CREATE INDEX IF NOT EXISTS stats_case_repeat ON case_state "
    "(applicant_key, item_id, accepted_day, number)",
    "CREATE INDEX IF NOT EXISTS stats_case_overdue ON case_state "
    "(status, due, origin, item_id, department, accepted_day)",
    """CREATE TABLE IF NOT EXISTS stats_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)""",
)
_DATA_TABLES = (*DIMENSIONS, "stats_item_name", "stats_requests", "person_facts",
                "stats_repeat")

_CALENDAR = WorkCalendar()


def china_today():
    """Today's date in Beijing time (the node's clock)."""
    return clock.today()


def area_of(node):
    """The township part of a node code (a county's own code stays as it is)."""
    return (node or "")[:9]


def week_of(day):
    """The Monday (ISO date) of the week of ``day``."""
    day = as_date(day)
    return (day - datetime.timedelta(days=day.weekday())).isoformat()


# -- tables ---------------------------------------------------------------------------------

def ensure_tables(db):
    """Create the tables (and fill them from ``case_state``) when this store lacks them."""
    if getattr(db, "_tongban_stats", None) == VERSION:
        return
    with db.atomic():
        found = None
        if db.execute_sql("SELECT 1 FROM sqlite_master WHERE name = 'stats_meta'").fetchone():
            row = db.execute_sql("SELECT version FROM stats_meta WHERE id = 1").fetchone()
            found = row[0] if row else None
        if found != VERSION:
            for table in _DATA_TABLES:
                db.execute_sql(f"DROP TABLE IF EXISTS {table}")
            for statement in TABLES:
                db.execute_sql(statement)
            count = rebuild(db)
            db.execute_sql("INSERT OR REPLACE INTO stats_meta (id, version) VALUES (1, ?)",
                           (VERSION,))
            logger.info("supervision tables (version %s) built from %d cases", VERSION, count)
    db._tongban_stats = VERSION


def clear(db):
    """Empty the aggregate tables."""
    for table in _DATA_TABLES:
        db.execute_sql(f"DELETE FROM {table}")


def _case_columns():
    from shared.cases.index import COLUMNS  # index.py imports this module

    return COLUMNS


def rebuild(db, chunk=5000):
    """Make every aggregate again from ``case_state``; returns the number of cases read."""
    columns = _case_columns()
    clear(db)
    calendar = _calendar_of(db)
    total, last = 0, ""
    while True:
        rows = db.execute_sql(
            f"SELECT {','.join(columns)} FROM case_state WHERE number > ? "
            "ORDER BY number LIMIT ?", (last, chunk)).fetchall()
        if not rows:
            break
        sums = Accumulator(calendar)
        for values in rows:
            sums.add(dict(zip(columns, values)))
        sums.flush(db)
        total += len(rows)
        last = rows[-1][0]
    rebuild_repeats(db)
    return total


def rebuild_repeats(db):
    """Link every accepted case to the applicant's previous case of the same item."""
    db.execute_sql("DELETE FROM stats_repeat")
    db.execute_sql(
        "INSERT INTO stats_repeat (number, day, origin, previous, previous_day, gap) "
        "SELECT number, accepted_day, COALESCE(origin, ''), previous, previous_day, "
        "CAST(julianday(accepted_day) - julianday(previous_day) AS INTEGER) FROM ("
        "SELECT number, accepted_day, origin, LAG(number) OVER w AS previous, "
        "LAG(accepted_day) OVER w AS previous_day FROM case_state "
        "WHERE accepted_day IS NOT NULL AND applicant_key IS NOT NULL AND applicant_key != '' "
        "WINDOW w AS (PARTITION BY applicant_key, COALESCE(item_id, '') "
        "ORDER BY accepted_day, number)) WHERE previous IS NOT NULL")


def held_row(db, number):
    """The ``case_state`` row of ``number`` as stored now (a dict), or None."""
    columns = _case_columns()
    values = db.execute_sql(f"SELECT {','.join(columns)} FROM case_state "
                            "WHERE number = ?", (number,)).fetchone()
    return dict(zip(columns, values)) if values else None


# -- what one case contributes ------------------------------------------------------------

def _state(row):
    state = row.get("state")
    if isinstance(state, str):
        try:
            state = json.loads(state)
        except ValueError:
            state = None
    return state if isinstance(state, dict) else {}


def _calendar_of(db):
    """The calendar in force in ``db`` (the package alone in a store without a catalog)."""
    if db.execute_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                      "name = 'catalog_calendar'").fetchone():
        return calendar_from_db(db)
    return _CALENDAR


#: ``{id(rules): (rules, token)}``: a hashable token per calendar rules object (the rules
#: are kept so an id is never reused while its token is cached).
_TOKENS = {}


def _token(calendar):
    rules = calendar.rules()
    held = _TOKENS.get(id(rules))
    if held is None or held[0] is not rules:
        if len(_TOKENS) > 16:
            _TOKENS.clear()
        held = _TOKENS[id(rules)] = (rules, (frozenset(rules[0].items()), rules[1]))
    return held[1]


def decide_workdays(accepted_day, decided_day, calendar=None):
    """Working days from acceptance to decision under ``calendar`` (the node's calendar in
    force: the package and the county's overrides; the package alone when None)."""
    calendar = calendar or _CALENDAR
    return _decide_workdays(accepted_day, decided_day, _token(calendar), calendar)


@functools.lru_cache(maxsize=1 << 16)
def _decide_workdays(accepted_day, decided_day, token, calendar):
    # Kept per pair and calendar: a 1,000,000-case rebuild asks for few distinct pairs.
    return calendar.workdays_between(accepted_day, decided_day)


def _minutes_between(start, end):
    try:
        return max(0, (parse_hlc(end).ms - parse_hlc(start).ms) // 60000)
    except (TypeError, ValueError):
        return 0


def _complaint_counts(state):
    count = replied = minutes = 0
    for complaint in state.get("complaints") or ():
        if not isinstance(complaint, dict):
            continue
        count += 1
        if complaint.get("stage") == "replied":
            replied += 1
            reply = next((s for s in complaint.get("steps") or ()
                          if isinstance(s, dict) and s.get("stage") == "replied"), None)
            if reply is not None:
                minutes += _minutes_between(complaint.get("hlc"), reply.get("hlc"))
    return count, replied, minutes


def _card_counts(state):
    cards = [c for c in state.get("cards") or () if isinstance(c, dict)]
    yellow = sum(1 for c in cards if c.get("color") == "yellow")
    red = [c for c in cards if c.get("color") == "red"]
    return yellow, len(red), sum(1 for c in red if c.get("followed_up"))


def _valid_day(text):
    try:
        return isinstance(text, str) and bool(datetime.date.fromisoformat(text))
    except ValueError:
        return False


def counters(row, state=None, calendar=None):
    """The counters (aligned with :data:`COUNTERS`) one accepted case adds; None when the
    case is not accepted (pre-applications and one-time notices are not counted)."""
    day = row.get("accepted_day")
    if not _valid_day(day):
        return None
    state = _state(row) if state is None else state
    status = row.get("status")
    decided = row.get("decided_day") if status in (F.READY, F.DONE) else None
    decided = decided if _valid_day(decided) else None
    visits = row.get("visits") if isinstance(row.get("visits"), int) else 0
    delivered = status == F.DONE
    rating = row.get("rating")
    rated = isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5
    yellow, red, red_followed = _card_counts(state)
    complaints, replied, minutes = _complaint_counts(state)
    return (1, int(row.get("channel") == "online"),
            int(status in (F.HANDLING, F.SUPPLEMENTING)), int(decided is not None),
            int(status == F.WITHDRAWN),
            decide_workdays(day, decided, calendar) if decided else 0,
            int(delivered), int(delivered and visits <= 1), int(delivered and visits == 0),
            yellow, red, red_followed, int(rated), rating if rated else 0,
            complaints, replied, minutes)


def _keys(row):
    """``[(table, key)]`` a case is counted under."""
    day, node = row["accepted_day"], row.get("origin") or ""
    area = area_of(node)
    item, department = row.get("item_id") or "", row.get("department") or ""
    keys = []
    for bucket in (day, day[:7], day[:4]):
        keys.append(("stats_node", (bucket, node)))
        keys.append(("stats_item", (bucket, area, item, department)))
    keys.append(("stats_week", (week_of(day), area)))
    return keys


def _requests(row, state):
    """The ``stats_requests`` row of a case asked for materials more than once, else None."""
    kinds = [e.get("kind") for e in state.get("timeline") or () if isinstance(e, dict)]
    notices, supplements = kinds.count("notice"), kinds.count("supplement_requested")
    if notices + supplements < 2:
        return None
    day = row.get("accepted_day")
    if not _valid_day(day):
        first = next((e.get("hlc") for e in state["timeline"] if isinstance(e, dict)), None)
        try:
            day = F.hlc_day(first).isoformat()
        except (TypeError, ValueError):
            return None
    return (row["number"], day, row.get("origin") or "", row.get("item_id") or "",
            row.get("item_name") or "", row.get("applicant_key") or "",
            row.get("status") or "", notices, supplements)


def _facts(row, state):
    """The ``person_facts`` row a case gives (accepted, with ``applicant_facts``), else None."""
    facts = state.get("applicant_facts")
    if not isinstance(facts, dict) or not _valid_day(row.get("accepted_day")):
        return None
    birth, sex = facts.get("birth"), facts.get("sex")
    if not _valid_day(birth) or sex not in ("男", "女") or not row.get("applicant_key"):
        return None
    return (row["applicant_key"], birth, sex, row.get("origin") or "", row["accepted_day"],
            row["number"])


class Accumulator:
    """Contributions of many cases summed in memory, written with :meth:`flush`.

    The bulk path (:func:`rebuild`, the benchmark) and :func:`apply_delta` both use it,
    so they give the same aggregates.
    """

    def __init__(self, calendar=None):
        self.calendar = calendar  # working days to decide are counted in it
        self.sums = {}
        self.names = {}
        self.requests = {}
        self.facts = {}

    def add(self, row, state=None, sign=1):
        """Add (or with ``sign=-1`` subtract) the contribution of one ``case_state`` row."""
        state = _state(row) if state is None else state
        counts = counters(row, state, self.calendar)
        if counts is not None:
            for key in _keys(row):
                held = self.sums.get(key)
                if held is None:
                    self.sums[key] = [sign * c for c in counts]
                else:
                    for i, c in enumerate(counts):
                        held[i] += sign * c
            if sign > 0 and row.get("item_id"):
                self.names.setdefault(row["item_id"], row.get("item_name") or row["item_id"])
        if sign > 0:
            flagged = _requests(row, state)
            if flagged is not None:
                self.requests[flagged[0]] = flagged
            facts = _facts(row, state)
            if facts is not None:
                held = self.facts.get(facts[0])
                if held is None or (facts[4], facts[5]) >= (held[4], held[5]):
                    self.facts[facts[0]] = facts

    def flush(self, db, prune=False):
        """Add the sums to the tables (``prune``: drop rows no case counts in any more)."""
        for table, keys in DIMENSIONS.items():
            entries = [(key, sums) for (name, key), sums in self.sums.items()
                       if name == table and any(sums)]
            if not entries:
                continue
            columns = (*keys, *COUNTERS)
            updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTERS)
            db.connection().executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}",
                [(*key, *sums) for key, sums in entries])
            if prune:
                where = " AND ".join(f"{k} = ?" for k in keys)
                for key, sums in entries:
                    if sums[0] < 0:
                        db.execute_sql(f"DELETE FROM {table} WHERE {where} AND accepted <= 0",
                                       key)
        if self.names:
            db.connection().executemany(
                "INSERT OR IGNORE INTO stats_item_name (item_id, name) VALUES (?, ?)",
                list(self.names.items()))
        if self.requests:
            db.connection().executemany(
                "INSERT OR REPLACE INTO stats_requests (number, day, origin, item_id, item_name, "
                "applicant_key, status, notices, supplement_requests) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", list(self.requests.values()))
        if self.facts:
            # The station that accepted the person's latest case (number breaks a tie).
            db.connection().executemany(
                "INSERT INTO person_facts (applicant_key, birth_date, sex, station, served, "
                "served_case) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (applicant_key) DO UPDATE "
                "SET birth_date = excluded.birth_date, sex = excluded.sex, "
                "station = excluded.station, served = excluded.served, "
                "served_case = excluded.served_case "
                "WHERE (excluded.served, excluded.served_case) >= "
                "(person_facts.served, person_facts.served_case)",
                list(self.facts.values()))


def apply_delta(db, old_row, new_row, calendar=None):
    """Replace ``old_row``'s contribution (None for a new case) with ``new_row``'s.

    Both are ``case_state`` rows as dicts (``state`` as JSON text or a dict). Call it inside
    the write transaction that stores ``new_row``, before storing it. ``calendar``: the
    working-day calendar in force (the node's, by default).
    """
    calendar = calendar or _calendar_of(db)
    ensure_tables(db)
    if old_row is not None and all(old_row.get(c) == new_row.get(c)
                                   for c in _case_columns()):
        return
    with db.atomic():
        if old_row is None and not db.execute_sql("SELECT 1 FROM case_state LIMIT 1").fetchone():
            # case_state was emptied for a rebuild: start the figures afresh too.
            clear(db)
        old_state = _state(old_row) if old_row is not None else {}
        new_state = _state(new_row)
        delta = Accumulator(calendar)
        if old_row is not None:
            delta.add(old_row, old_state, sign=-1)
        delta.add(new_row, new_state)
        old_flag = _requests(old_row, old_state) if old_row is not None else None
        if old_flag is not None and new_row["number"] not in delta.requests:
            db.execute_sql("DELETE FROM stats_requests WHERE number = ?", (old_flag[0],))
        delta.flush(db, prune=True)
        _relink(db, _identity(old_row), _identity(new_row), new_row["number"])


def recount_workdays(db, first, last, before, after):
    """The working days to decide of the decided cases a calendar change reaches (accepted
    before ``last``, decided on or after ``first``), counted again: ``before``'s
    contribution out, ``after``'s in. Called in the transaction that installs the change."""
    if not db.execute_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'stats_meta'").fetchone():
        return 0
    columns = _case_columns()
    rows = db.execute_sql(
        f"SELECT {','.join(columns)} FROM case_state WHERE decided_day IS NOT NULL AND "
        "accepted_day IS NOT NULL AND accepted_day < ? AND decided_day >= ?",
        (last, first)).fetchall()
    old, new = Accumulator(before), Accumulator(after)
    for values in rows:
        row = dict(zip(columns, values))
        state = _state(row)
        old.add(row, state, sign=-1)
        new.add(row, state, sign=-1)  # the requests/facts side is unchanged: sums only
    for key, sums in new.sums.items():
        held = old.sums.setdefault(key, [0] * len(sums))
        for i, c in enumerate(sums):
            held[i] -= c
    old.flush(db)
    return len(rows)


# -- repeated applications, kept linked -------------------------------------------------------

def _identity(row):
    """``(applicant_key, item_id, accepted_day, number, origin)`` of an accepted case."""
    if row is None or not _valid_day(row.get("accepted_day")) or not row.get("applicant_key"):
        return None
    return (row["applicant_key"], row.get("item_id") or "", row["accepted_day"], row["number"],
            row.get("origin") or "")


def _neighbour(db, identity, exclude, before):
    """The applicant's accepted case of the same item just before (or after) ``identity``
    in ``case_state``, leaving out case ``exclude``: ``(day, number, origin)`` or None."""
    key, item, day, number, _ = identity
    if before:
        order, compare = "DESC", "(accepted_day < ? OR (accepted_day = ? AND number < ?))"
    else:
        order, compare = "ASC", "(accepted_day > ? OR (accepted_day = ? AND number > ?))"
    row = db.execute_sql(
        "SELECT accepted_day, number, origin FROM case_state INDEXED BY stats_case_repeat "
        "WHERE applicant_key = ? AND COALESCE(item_id, '') = ? AND number != ? "
        f"AND {compare} ORDER BY accepted_day {order}, number {order} LIMIT 1",
        (key, item, exclude, day, day, number)).fetchone()
    return (row[0], row[1], row[2] or "") if row else None


def _link(db, day, number, origin, previous):
    """Record ``previous`` (``(day, number, …)`` or None) as the case before ``number``."""
    if previous is None:
        db.execute_sql("DELETE FROM stats_repeat WHERE number = ?", (number,))
        return
    db.execute_sql(
        "INSERT OR REPLACE INTO stats_repeat (number, day, origin, previous, previous_day, gap) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (number, day, origin, previous[1], previous[0],
         (as_date(day) - as_date(previous[0])).days))


def _relink(db, old, new, number):
    """Keep ``stats_repeat`` right when case ``number`` moves from ``old`` to ``new``
    (identities from :func:`_identity`; its row in case_state is still the old one)."""
    if old == new:
        return
    if old is not None:
        db.execute_sql("DELETE FROM stats_repeat WHERE number = ?", (number,))
        following = _neighbour(db, old, number, before=False)
        if following is not None:
            at = (*old[:2], *following[:2], following[2])
            _link(db, *following, _neighbour(db, at, number, before=True))
    if new is not None:
        _link(db, new[2], number, new[4], _neighbour(db, new, number, before=True))
        following = _neighbour(db, new, number, before=False)
        if following is not None:
            at = (*new[:2], *following[:2], following[2])
            previous = _neighbour(db, at, number, before=True)
            if previous is None or (previous[0], previous[1]) < (new[2], new[3]):
                previous = (new[2], new[3], new[4])
            _link(db, *following, previous)


# -- periods -----------------------------------------------------------------------------------

def _month_end(day):
    following = (day.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
    return following - datetime.timedelta(days=1)


def buckets(since, until):
    """The fewest day / month / year buckets covering ``since``..``until`` (inclusive)."""
    since, until = as_date(since), as_date(until)
    found = []
    day = since
    while day <= until:
        if day.month == 1 and day.day == 1 and datetime.date(day.year, 12, 31) <= until:
            found.append(f"{day.year:04d}")
            day = datetime.date(day.year + 1, 1, 1)
        elif day.day == 1 and _month_end(day) <= until:
            found.append(day.strftime("%Y-%m"))
            day = _month_end(day) + datetime.timedelta(days=1)
        else:
            found.append(day.isoformat())
            day += datetime.timedelta(days=1)
    return found


def _period(db, since, until):
    """``(since, until)`` as dates clipped to the years that hold figures; None when none do."""
    low, high = db.execute_sql("SELECT MIN(bucket), MAX(bucket) FROM stats_node").fetchone()
    if low is None:
        return None
    first, last = datetime.date(int(low[:4]), 1, 1), datetime.date(int(high[:4]), 12, 31)
    since = max(as_date(since), first) if since else first
    until = min(as_date(until), last) if until else last
    return (since, until) if since <= until else None


def _prefix_range(column, code):
    """SQL and parameters selecting the codes that start with ``code``."""
    return f"{column} >= ? AND {column} < ?", [code, code + ":"]


def check_area(area):
    """``area`` as a township or county code (None: everything); ValueError otherwise."""
    if area in (None, ""):
        return None
    if not isinstance(area, str) or not area.isdigit() or len(area) not in (6, 9):
        raise ValueError(f"area must be a county or township code, not {area!r}")
    return area


# -- the dashboard -----------------------------------------------------------------------------

def _sum_rows(db, table, group, period, area):
    names = ", ".join(f"SUM({c})" for c in COUNTERS)
    marks = ",".join("?" * len(period))
    where, params = [f"bucket IN ({marks})"], list(period)
    if area:
        column = "node" if table == "stats_node" else "area"
        if column == "area" and cfg.tier_of(area) == "township":
            where.append("area = ?")
            params.append(area)
        else:
            sql, extra = _prefix_range(column, area)
            where.append(sql)
            params += extra
    rows = db.execute_sql(
        f"SELECT {', '.join(group)}, {names} FROM {table} WHERE {' AND '.join(where)} "
        f"GROUP BY {', '.join(group)}", params).fetchall()
    return [(row[:len(group)], dict(zip(COUNTERS, row[len(group):]))) for row in rows]


def _overdue(db, area, since, until, today):
    """``{(origin, item_id, department): cases in handling past their due day}``."""
    where, params = ["status = ?", "due < ?"], [F.HANDLING, today.isoformat()]
    if since:
        where.append("accepted_day >= ?")
        params.append(since.isoformat())
    if until:
        where.append("accepted_day <= ?")
        params.append(until.isoformat())
    if area:
        sql, extra = _prefix_range("origin", area)
        where.append(sql)
        params += extra
    rows = db.execute_sql(
        "SELECT origin, item_id, department, COUNT(*) FROM case_state "
        f"INDEXED BY stats_case_overdue WHERE {' AND '.join(where)} "
        "GROUP BY origin, item_id, department", params).fetchall()
    return {(o or "", i or "", d or ""): n for o, i, d, n in rows}


def _add(into, counts):
    for name in COUNTERS:
        into[name] = into.get(name, 0) + counts.get(name, 0)
    return into


def _share(part, whole):
    return part / whole if whole else None


def metrics(counts, overdue=0):
    """Counters plus what the pages show: overdue, averages and shares."""
    found = {name: counts.get(name) or 0 for name in COUNTERS}
    found["overdue"] = overdue
    found["avg_decide_days"] = _share(found["decide_workdays"], found["completed"])
    found["avg_rating"] = _share(found["rating_sum"], found["rated"])
    found["avg_complaint_hours"] = (found["complaint_minutes"] / 60 / found["complaints_replied"]
                                    if found["complaints_replied"] else None)
    found["online_rate"] = _share(found["online"], found["accepted"])
    found["visits_le1_share"] = _share(found["visits_le1"], found["delivered"])
    found["visits_0_share"] = _share(found["visits_0"], found["delivered"])
    return found


def online_items(db):
    """``(items in force that can be applied for online, items in force)``."""
    from shared.catalog import active

    ids = [item["item_id"] for item in active.active_items(db)]
    bodies = active.active_item_map(db, ids)
    return sum(1 for item in bodies.values() if item.get("online_application")), len(ids)


def indicators(db, total):
    """The plan's four indicators with their targets (value None when nothing to count)."""
    online, items = online_items(db)
    values = {
        "online_items": (online, items),
        "online_rate": (total["online"], total["accepted"]),
        "visits_le1": (total["visits_le1"], total["delivered"]),
        "visits_0": (total["visits_0"], total["delivered"]),
    }
    found = []
    for key, (part, whole) in values.items():
        value = _share(part, whole)
        found.append({"key": key, "label": INDICATOR_LABELS[key], "value": value,
                      "part": part, "whole": whole, "target": TARGETS[key],
                      "met": None if value is None else value >= TARGETS[key]})
    return found


def _node_names(db):
    from shared import registry

    try:
        return {e.code: e.name or e.code for e in registry.all_entries(db)}
    except Exception:  # a bare store without the registry table: codes stand for names
        logger.debug("no registry to name nodes", exc_info=True)
        return {}


def item_names(db):
    """``{item_id: name}``: the catalog in force, else the name cases were accepted under."""
    from shared.catalog import active

    names = dict(db.execute_sql("SELECT item_id, name FROM stats_item_name").fetchall())
    try:
        names.update({i["item_id"]: i["name"] for i in active.active_items(db)})
    except Exception:  # no catalog tables in a bare store
        logger.debug("no catalog to name items", exc_info=True)
    return names


def trend(db, area, since, until, today, weeks=26):
    """Weekly figures (by week of acceptance) from ``since`` (default ``weeks`` weeks back)
    to ``until`` (default today), at most :data:`MAX_TREND_WEEKS` weeks."""
    end = as_date(week_of(until or today))
    start = as_date(week_of(since)) if since else end - datetime.timedelta(weeks=weeks - 1)
    start = max(start, end - datetime.timedelta(weeks=MAX_TREND_WEEKS - 1))
    names = ", ".join(f"SUM({c})" for c in COUNTERS)
    where, params = ["week >= ? AND week <= ?"], [start.isoformat(), end.isoformat()]
    if area:
        if cfg.tier_of(area) == "township":
            where.append("area = ?")
            params.append(area)
        else:
            sql, extra = _prefix_range("area", area)
            where.append(sql)
            params += extra
    rows = {row[0]: dict(zip(COUNTERS, row[1:])) for row in db.execute_sql(
        f"SELECT week, {names} FROM stats_week WHERE {' AND '.join(where)} GROUP BY week",
        params).fetchall()}
    found, week = [], start
    while week <= end:
        key = week.isoformat()
        found.append(dict(metrics(rows.get(key, {})), week=key))
        week += datetime.timedelta(weeks=1)
    return found


def dashboard(db, area=None, since=None, until=None, today=None, trend_weeks=26):
    """The supervision figures of the cases accepted from ``since`` to ``until``.

    :param area: a township code (its stations only) or None (every case held here).
    :param today: the day overdue is judged on (China time today by default).
    :returns: ``{"total", "nodes", "areas", "items", "departments", "indicators",
        "trend", ...}``; every figure row carries :func:`metrics`.
    """
    ensure_tables(db)
    area = check_area(area)
    since = as_date(since) if since else None
    until = as_date(until) if until else None
    today = as_date(today) if today else china_today()
    period = _period(db, since, until)
    period_buckets = buckets(*period) if period else []
    overdue = _overdue(db, area, since, until, today) if period else {}
    node_rows = _sum_rows(db, "stats_node", ("node",), period_buckets, area) if period else []
    item_rows = (_sum_rows(db, "stats_item", ("item_id", "department"), period_buckets, area)
                 if period else [])
    node_names, names_of_items = _node_names(db), item_names(db)

    late = {"node": {}, "area": {}, "item": {}, "department": {}}
    for (origin, item, department), count in overdue.items():
        for kind, key in (("node", origin), ("area", area_of(origin)),
                          ("item", (item, department)), ("department", department)):
            late[kind][key] = late[kind].get(key, 0) + count

    total, areas, departments, nodes, items = {}, {}, {}, [], []
    for (node,), counts in node_rows:
        _add(total, counts)
        _add(areas.setdefault(area_of(node), {}), counts)
        nodes.append(dict(metrics(counts, late["node"].get(node, 0)), code=node,
                          name=node_names.get(node, node)))
    for (item, department), counts in item_rows:
        _add(departments.setdefault(department, {}), counts)
        items.append(dict(metrics(counts, late["item"].get((item, department), 0)),
                          item_id=item, department=department, name=names_of_items.get(item, item)))
    total = metrics(total, sum(overdue.values()))
    return {
        "area": area, "area_name": node_names.get(area, area) if area else None,
        "since": since, "until": until, "today": today,
        "period": period,
        "total": total,
        "nodes": sorted(nodes, key=lambda r: r["code"]),
        "areas": [dict(metrics(counts, late["area"].get(code, 0)), code=code,
                       name=node_names.get(code, code)) for code, counts in sorted(areas.items())],
        "items": sorted(items, key=lambda r: (r["item_id"], r["department"])),
        "departments": [dict(metrics(counts, late["department"].get(name, 0)), name=name)
                        for name, counts in sorted(departments.items())],
        "indicators": indicators(db, total),
        "trend": trend(db, area, since, until, today, trend_weeks),
    }


# -- repeated submissions (item 5) -------------------------------------------------------------

def repeats(db, area=None, days=30, since=None, until=None, today=None, limit=LIST_LIMIT):
    """Applications by an applicant who applied for the same item within ``days`` days before.

    Lists each later case accepted from ``since`` (default 90 days before ``until``) to
    ``until`` (default today) with the latest earlier case it repeats, newest first.
    :returns: ``(rows, more)``; ``more`` is True when rows were left off at ``limit``.
    """
    ensure_tables(db)
    area = check_area(area)
    if not isinstance(days, int) or not 1 <= days <= 366:
        raise ValueError("days must be between 1 and 366")
    today = as_date(today) if today else china_today()
    until = as_date(until) if until else today
    since = as_date(since) if since else until - datetime.timedelta(days=90)
    where = ["r.day >= ? AND r.day <= ? AND r.gap <= ?"]
    params = [since.isoformat(), until.isoformat(), days]
    if area:
        sql, extra = _prefix_range("r.origin", area)
        where.append(sql)
        params += extra
    rows = db.execute_sql(
        "SELECT r.number, b.item_id, b.item_name, r.origin, r.day, b.status, b.applicant_key, "
        "r.previous, a.origin, r.previous_day, a.status, r.gap "
        "FROM stats_repeat r JOIN case_state b ON b.number = r.number "
        "JOIN case_state a ON a.number = r.previous "
        f"WHERE {' AND '.join(where)} ORDER BY r.day DESC, r.number DESC LIMIT ?",
        [*params, limit + 1]).fetchall()
    keys = ("number", "item_id", "item_name", "origin", "accepted_day", "status",
            "applicant_key", "earlier", "earlier_origin", "earlier_day", "earlier_status",
            "days_apart")
    return [dict(zip(keys, values)) for values in rows[:limit]], len(rows) > limit


def requested_twice(db, area=None, since=None, until=None, limit=LIST_LIMIT):
    """Cases whose materials were asked for more than once (one-time notices and supplement
    requests together), newest first. :returns: ``(rows, more)``."""
    ensure_tables(db)
    area = check_area(area)
    where, params = ["1 = 1"], []
    if since:
        where.append("day >= ?")
        params.append(as_date(since).isoformat())
    if until:
        where.append("day <= ?")
        params.append(as_date(until).isoformat())
    if area:
        sql, extra = _prefix_range("origin", area)
        where.append(sql)
        params += extra
    keys = ("number", "day", "origin", "item_id", "item_name", "applicant_key", "status",
            "notices", "supplement_requests")
    rows = db.execute_sql(
        f"SELECT {', '.join(keys)} FROM stats_requests WHERE {' AND '.join(where)} "
        "ORDER BY day DESC, number DESC LIMIT ?", [*params, limit + 1]).fetchall()
    return [dict(zip(keys, r)) for r in rows[:limit]], len(rows) > limit


def masked_key(applicant_key):
    """A pseudonym for lists: the same person reads the same, nobody is named."""
    key = applicant_key or ""
    return f"{key[:4]}…{key[-4:]}".upper() if len(key) >= 8 else "—"


# -- proactive service (item 6) ----------------------------------------------------------------

def rules(db):
    """``{code: rule}``: the proactive-service rules of the catalog in force.

    Each item may carry a ``proactive`` record (shared/catalog/schema.py); items with the
    same code share one rule, whose conditions are its first item's. A rule is ``{"label",
    "kind", "items", "basis", "age", "back_days", "ahead_days", "licence"}``.
    """
    from shared.catalog import active, schema

    found = {}
    for item in active.items_with(db, "proactive"):
        record = item["proactive"]
        rule = found.get(record["code"])
        if rule is None:
            rule = found[record["code"]] = {
                "label": record["label"], "kind": record["kind"], "items": [],
                "age": record.get("age"), "back_days": record.get("back_days"),
                "ahead_days": record.get("ahead_days") or 0,
                "licence": record.get("licence"), "basis": record.get("basis")}
        rule["items"].append(item["id"])
    for rule in found.values():
        rule["items"] = tuple(rule["items"])
        if not rule["basis"]:
            rule["basis"] = _default_basis(rule, schema)
    return found


def _default_basis(rule, schema):
    if rule["kind"] == schema.PROACTIVE_LICENCE:
        return f"持有本地签发且在有效期内的{rule['licence']}电子证照，尚无所列事项的办件。"
    since = f"过去 {rule['back_days']} 天内已满" if rule["back_days"] else "已满"
    ahead = f"或 {rule['ahead_days']} 天内将满" if rule["ahead_days"] else ""
    return f"{since} {rule['age']} 周岁{ahead}，尚无所列事项的办件。"


def _years_before(day, years):
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def _without_item(alias, items):
    marks = ",".join("?" * len(items))
    return (f"NOT EXISTS (SELECT 1 FROM case_state c INDEXED BY stats_case_repeat "
            f"WHERE c.applicant_key = {alias}.applicant_key AND c.item_id IN ({marks}))",
            list(items))


def _rule_queries(today, found):
    """``{code: (SQL giving applicant_key, birth_date, sex, station; parameters)}``."""
    from shared.catalog import schema

    day = datetime.timedelta(days=1)
    person = "SELECT p.applicant_key, p.birth_date, p.sex, p.station FROM person_facts p "
    queries = {}
    for code, rule in found.items():
        if rule["kind"] == schema.PROACTIVE_LICENCE:
            missing, params = _without_item("l", rule["items"])
            # Without known facts the station is the one that accepted the licence's
            # case: the node code a case number starts with (<origin>-<day>-<seq>).
            queries[code] = (
                "SELECT l.applicant_key, p.birth_date, p.sex, COALESCE(p.station, "
                "substr(MAX(l.\"case\"), 1, instr(MAX(l.\"case\"), '-') - 1), '') AS station "
                "FROM case_licence l "
                "LEFT JOIN person_facts p ON p.applicant_key = l.applicant_key "
                "WHERE l.name LIKE ? AND (l.valid_until IS NULL OR l.valid_until >= ?) "
                f"AND {missing} GROUP BY l.applicant_key",
                [f"%{rule['licence']}%", today.isoformat(), *params])
            continue
        missing, params = _without_item("p", rule["items"])
        # Born on or before this day: of age within ahead_days (or already).
        latest_birth = _years_before(today + rule["ahead_days"] * day, rule["age"])
        where, bounds = ["p.birth_date <= ?"], [latest_birth.isoformat()]
        if rule["back_days"]:  # and of age for no longer than back_days
            earliest = _years_before(today - rule["back_days"] * day, rule["age"])
            where.insert(0, "p.birth_date >= ?")
            bounds.insert(0, earliest.isoformat())
        queries[code] = (f"{person} WHERE {' AND '.join(where)} AND {missing}",
                         [*bounds, *params])
    return queries


def _station_filter(area, station):
    if station:
        return "station = ?", [station]
    if area:
        return _prefix_range("station", area)
    return "1 = 1", []


def proactive(db, area=None, station=None, today=None):
    """People likely eligible for an item they have not applied for (see :func:`rules`).

    :param area: a township code (its stations only) or None.
    :param station: only the people this station last served.
    :returns: rows ``{"rule", "applicant_key", "birth_date", "sex", "station", "age"}``.
    """
    ensure_tables(db)
    area = check_area(area)
    today = as_date(today) if today else china_today()
    where, extra = _station_filter(area, station)
    found = []
    for rule, (sql, params) in _rule_queries(today, rules(db)).items():
        for key, birth, sex, where_served in db.execute_sql(
                f"SELECT * FROM ({sql}) WHERE {where}", [*params, *extra]).fetchall():
            found.append({"rule": rule, "applicant_key": key, "birth_date": birth, "sex": sex,
                          "station": where_served, "age": _age(birth, today)})
    return sorted(found, key=lambda r: (r["station"], r["rule"], r["birth_date"] or "",
                                        r["applicant_key"]))


def _age(birth, today):
    if not birth:
        return None
    born = as_date(birth)
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def proactive_summary(db, area=None, today=None):
    """``[{"station", "counts": {rule: n}, "total"}]``: :func:`proactive` counted by station."""
    ensure_tables(db)
    area = check_area(area)
    today = as_date(today) if today else china_today()
    where, extra = _station_filter(area, None)
    by_station = {}
    in_force = rules(db)
    for rule, (sql, params) in _rule_queries(today, in_force).items():
        for code, count in db.execute_sql(
                f"SELECT station, COUNT(*) FROM ({sql}) WHERE {where} GROUP BY station",
                [*params, *extra]).fetchall():
            by_station.setdefault(code, dict.fromkeys(in_force, 0))[rule] = count
    return [{"station": code, "counts": counts, "total": sum(counts.values())}
            for code, counts in sorted(by_station.items())]


def latest_cases(db, applicant_keys):
    """``{applicant_key: number of the person's latest accepted case}`` (to contact them)."""
    found = {}
    for key in applicant_keys:
        row = db.execute_sql(
            "SELECT number FROM case_state WHERE applicant_key = ? AND accepted_day IS NOT NULL "
            "ORDER BY accepted_day DESC, number DESC LIMIT 1", (key,)).fetchone()
        if row:
            found[key] = row[0]
    return found
