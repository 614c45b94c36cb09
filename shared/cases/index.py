"""``case_state``: every case this node holds, folded, for queues, look-ups and progress pages.

A store projection: whenever a ``case:`` or ``event:`` document is written (here or by
replication) the case is folded again from all its documents inside the same transaction,
so a queue never shows a state its events do not give. Scans (``scan:`` documents) are
not read: the ``attached`` events name them.
"""

import json

from shared import clock
from shared.cases import fold as F
from shared.cases import stats
from shared.scopes import case_number
from shared.store import reads
from shared.store.projections import contained

#: The columns queues and pages filter on; the whole fold is in ``state``.
COLUMNS = ("number", "item_id", "item_name", "status", "stage", "handler", "origin",
           "delivery_station", "applicant_key", "department", "accepted_day", "due",
           "decided_day", "updated", "outstanding", "rating", "open_complaints", "mode",
           "channel", "visits", "state")


def item_id_of(doc_id):
    """``GD-LS-01`` of ``item:GD-LS-01@3``."""
    if not isinstance(doc_id, str):
        return ""
    return doc_id[len("item:"):].split("@", 1)[0] if doc_id.startswith("item:") else doc_id


def read_case(db, number):
    """``(header, events)`` of case ``number`` as held in ``db`` (live winners only)."""
    rows = reads.live_winners(db, "case:" + number, f"event:{number}:")
    header, events = None, []
    for doc_id, text in rows:
        doc = json.loads(text)
        doc["_id"] = doc_id
        if doc_id.startswith("case:"):
            header = doc
        else:
            events.append(doc)
    return header, events


class CaseIndex:
    """The projection behind ``case_state``.

    :param calendar: a ``workdays.WorkCalendar`` for due dates (None: no due dates).
    """

    tables = [
        """CREATE TABLE IF NOT EXISTS case_state (
            number TEXT PRIMARY KEY, item_id TEXT, item_name TEXT, status TEXT, stage TEXT,
            handler TEXT, origin TEXT, delivery_station TEXT, applicant_key TEXT,
            department TEXT, accepted_day TEXT, due TEXT, decided_day TEXT, updated TEXT,
            outstanding INTEGER, rating INTEGER, open_complaints INTEGER, mode TEXT,
            channel TEXT, visits INTEGER, state TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS case_state_stage ON case_state (stage, status)",
        "CREATE INDEX IF NOT EXISTS case_state_applicant ON case_state (applicant_key)",
        "CREATE INDEX IF NOT EXISTS case_state_status ON case_state (status, due)",
        # This node's case numbers per day (desk.next_number); not a projection of documents.
        "CREATE TABLE IF NOT EXISTS case_seq (day TEXT PRIMARY KEY, last INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS case_licence (
            applicant_key TEXT NOT NULL, name TEXT NOT NULL, number TEXT, valid_until TEXT,
            "case" TEXT NOT NULL, issued TEXT, PRIMARY KEY (applicant_key, name, "case")
        )""",
    ]

    def __init__(self, calendar=None):
        self.calendar = calendar

    def apply(self, db, docs):
        """Fold again every case ``docs`` touch."""
        numbers = dict.fromkeys(n for n in (case_number(doc_id) for doc_id, _ in docs
                                             if not doc_id.startswith("scan:")) if n)
        for number in numbers:
            # A malformed received document must not block replication; what its fold
            # wrote (the supervision figures before the row) is rolled back with it.
            contained(db, f"folding case {number}", self.refresh, db, number)
        return ()

    def refresh(self, db, number):
        """Fold case ``number`` and store its row (and e-licence records)."""
        header, events = read_case(db, number)
        if header is None:
            return
        state = F.fold(header, events)
        row = self.row(state, events)
        # The supervision figures follow the row in the same transaction (stats.py).
        stats.apply_delta(db, stats.held_row(db, number), row, self.calendar)
        marks = ",".join("?" * len(COLUMNS))
        db.execute_sql(f"INSERT OR REPLACE INTO case_state ({','.join(COLUMNS)}) "
                       f"VALUES ({marks})", [row[c] for c in COLUMNS])
        db.execute_sql('DELETE FROM case_licence WHERE "case" = ?', (number,))
        for licence in state["licences"]:
            db.execute_sql(
                'INSERT OR REPLACE INTO case_licence (applicant_key, name, number, valid_until, '
                '"case", issued) VALUES (?, ?, ?, ?, ?, ?)',
                (state["applicant_key"], licence.get("name", ""), licence.get("number"),
                 licence.get("valid_until"), number, state.get("decided_day")))

    def row(self, state, events):
        """The ``case_state`` row of a folded case."""
        due = None
        if self.calendar is not None:
            found = F.due_date(state, self.calendar)
            due = found.isoformat() if found else None
        updated = max((e.get("hlc", "") for e in events), default="")
        open_complaints = sum(1 for c in state["complaints"] if c["stage"] != "replied")
        return {
            "number": state["number"], "item_id": item_id_of(state["item"]),
            "item_name": state["item_name"], "status": state["status"], "stage": state["stage"],
            "handler": state["handler"], "origin": state["origin"],
            "delivery_station": state["delivery_station"],
            "applicant_key": state["applicant_key"], "department": state["department"],
            "accepted_day": state["accepted_day"], "due": due,
            "decided_day": state.get("decided_day"), "updated": updated,
            "outstanding": len(state["outstanding"]),
            "rating": (state["rating"] or {}).get("score"), "open_complaints": open_complaints,
            "mode": state["mode"], "channel": state["channel"], "visits": state["visits"],
            "state": json.dumps(state, ensure_ascii=False),
        }

    def reset(self, db):
        """Empty the tables before a rebuild."""
        db.execute_sql("DELETE FROM case_state")
        db.execute_sql("DELETE FROM case_licence")


def state_of(db, number):
    """The folded state of case ``number`` as indexed here, or None."""
    row = db.execute_sql("SELECT state FROM case_state WHERE number = ?", (number,)).fetchone()
    return json.loads(row[0]) if row else None


def cases_of_applicant(db, applicant_key):
    """Rows of every case of ``applicant_key`` held here, newest first."""
    cursor = db.execute_sql(
        f"SELECT {','.join(COLUMNS[:-1])} FROM case_state WHERE applicant_key = ? "
        "ORDER BY number DESC", (applicant_key,))
    return [dict(zip(COLUMNS[:-1], row)) for row in cursor.fetchall()]


def licences_of(db, applicant_key, on=None):
    """``{licence name: record}`` of the e-licences issued to ``applicant_key`` still valid."""
    on = (on or clock.today()).isoformat()
    cursor = db.execute_sql(
        'SELECT name, number, valid_until, "case", issued FROM case_licence '
        "WHERE applicant_key = ? AND (valid_until IS NULL OR valid_until >= ?) "
        "ORDER BY issued", (applicant_key, on))
    return {name: {"name": name, "number": num, "valid_until": until, "case": case,
                   "issued": issued} for name, num, until, case, issued in cursor.fetchall()}


def provisional_cases(db, calendar, limit=20):
    """The cases in handling whose due date is provisional (counted through days no
    published arrangement covers): ``(count, [numbers, at most limit])``. An alarm at the
    county until the county publishes the year."""
    if not db.execute_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'case_state'").fetchone():
        return 0, []
    statuses = (F.HANDLING, F.SUPPLEMENTING)
    marks = ",".join("?" * len(statuses))
    first = db.execute_sql(f"SELECT MIN(accepted_day) FROM case_state WHERE status IN ({marks}) "
                           "AND due IS NOT NULL", statuses).fetchone()[0]
    if not first:
        return 0, []
    cut = calendar.covered_until(first).isoformat()
    found = [number for number, accepted, due in db.execute_sql(
        f"SELECT number, accepted_day, due FROM case_state WHERE status IN ({marks}) "
        "AND due > ? ORDER BY due, number", (*statuses, cut)).fetchall()
        if accepted and calendar.uncovered_in(accepted, due) is not None]
    return len(found), found[:limit]
