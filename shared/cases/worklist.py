"""The staff work lists: which cases wait where, read from the case index (``case_state``).

Each function returns plain rows (the index's columns, without the folded state, plus the
``card`` a row carries now and why its clock is ``paused``); the pages add labels and
working days left. A list holds one row more than its limit, so a page can say it was cut.
"""

from shared.cases import fold as F
from shared.cases import supervision
from shared.cases.index import COLUMNS

#: Rows a section shows at most.
LIST_LIMIT = 200

_ROW_COLUMNS = COLUMNS[:-1]
#: The card a row carries now, in SQL: red or yellow issued for the row's current due
#: day, else NULL. Read from ``case_state`` on every load, so a card a sweep (or
#: replication) just wrote shows at once.
CARD_SQL = ("(SELECT CASE WHEN SUM(json_extract(c.value, '$.color') = 'red') THEN 'red' "
            "WHEN SUM(json_extract(c.value, '$.color') = 'yellow') THEN 'yellow' END "
            "FROM json_each(case_state.state, '$.cards') AS c "
            "WHERE json_extract(c.value, '$.due') = case_state.due)")
#: The approver's queue: red cards first, then yellow, then the earliest due.
CARD_FIRST = ("CASE card WHEN 'red' THEN 0 WHEN 'yellow' THEN 1 ELSE 2 END, "
              "due IS NULL, due, accepted_day, number")
EARLIEST_DUE = "due IS NULL, due, accepted_day, number"


def select(db, where, params, order="number DESC", extra=(), limit=LIST_LIMIT):
    """Rows of ``case_state`` matching ``where``, with ``card`` and ``paused``."""
    extra = (("card", CARD_SQL), ("paused", "json_extract(state, '$.paused.reason')"), *extra)
    columns = [*_ROW_COLUMNS, *(f"{sql} AS {name}" for name, sql in extra)]
    cursor = db.execute_sql(
        f"SELECT {','.join(columns)} FROM case_state WHERE {where} ORDER BY {order} LIMIT ?",
        [*params, limit + 1])
    names = [*_ROW_COLUMNS, *(name for name, _ in extra)]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def queue(db, node, statuses=(F.HANDLING,), department=None, order=EARLIEST_DUE):
    """The cases waiting at ``node`` in ``statuses``; with ``department``, its own
    department's cases and the parallel cases it leads or still owes an opinion on."""
    marks = ",".join("?" * len(statuses))
    where, params = f"stage = ? AND status IN ({marks})", [node, *statuses]
    if department:
        where += (" AND (department = ? OR json_extract(state, '$.lead_department') = ? "
                  "OR json_type(state, '$.parallel.\"' || ? || '\"') = 'null')")
        params += [department, department, department]
    return select(db, where, params, order)


def with_ignored(db, numbers):
    """The case numbers among ``numbers`` (a shown section) whose state holds events that
    did not take effect."""
    numbers = list(numbers)
    if not numbers:
        return set()
    cursor = db.execute_sql(
        f"SELECT number FROM case_state WHERE number IN ({','.join('?' * len(numbers))}) "
        "AND json_array_length(state, '$.ignored') > 0", numbers)
    return {row[0] for row in cursor.fetchall()}


def clerk_sections(db, node):
    """``[(key, title, rows)]``: what waits for a clerk at ``node``."""
    accepted_here = "json_extract(state, '$.accepted_at') = ?"
    return [
        ("preapplied", "网上预申请，待到站核验", queue(db, node, (F.PREAPPLIED,))),
        ("awaiting", "已一次性告知，待补齐材料", queue(db, node, (F.AWAITING,))),
        ("ready", "已办结，待在本站领取",
         select(db, "status = ? AND delivery_station = ?", [F.READY, node],
                "decided_day, number")),
        ("supplementing", "本站受理、待申请人补正",
         select(db, f"status = ? AND {accepted_here}", [F.SUPPLEMENTING, node])),
        ("deficiency", "本站容缺受理、待补齐材料",
         select(db, f"status = ? AND mode = ? AND outstanding > 0 AND {accepted_here}",
                [F.HANDLING, F.DEFICIENCY, node])),
    ]


def accepted_here(db, node):
    """Every open case ``node`` accepted, wherever it is now (本站受理的在办件)."""
    statuses = (F.HANDLING, F.SUPPLEMENTING, F.READY)
    marks = ",".join("?" * len(statuses))
    return select(db, f"status IN ({marks}) AND json_extract(state, '$.accepted_at') = ?",
                  [*statuses, node], "due IS NULL, due, number")


def approver_queue(db, node, department=None):
    """The approver's queue at ``node``: red cards first, then the earliest due."""
    return queue(db, node, (F.HANDLING,), department=department, order=CARD_FIRST)


def supervisor_sections(db, node):
    """``[(key, title, rows)]``: what a supervisor at ``node`` watches."""
    marks = ",".join("?" * len(F.OPEN_STATUSES))
    postcheck_due = "json_extract(state, '$.postcheck.due')"
    return [
        ("here", "在本站办理的全部办件",
         select(db, f"stage = ? AND status IN ({marks})", [node, *F.OPEN_STATUSES],
                "due IS NULL, due, number")),
        ("complaints", "未办结的投诉", select(db, "open_complaints > 0", [])),
        ("postchecks", "告知承诺待核查",
         select(db, "mode = ? AND json_extract(state, '$.postcheck.result') IS NULL "
                "AND status != ?", [F.COMMITMENT, F.WITHDRAWN],
                f"{postcheck_due} IS NULL, {postcheck_due}, number",
                extra=(("postcheck_due", postcheck_due),))),
    ]


def red_cards(db, node, county=False):
    """``(rows, truncated)``: red cards waiting for a supervisor's follow-up, all of them
    at the county, else those of the cases ``node`` handles, accepted or holds."""
    found = supervision.red_cards_waiting(db, node=None if county else node)
    shown = found[:LIST_LIMIT]
    numbers = sorted({number for number, _ in shown})
    cases = {}
    if numbers:
        cursor = db.execute_sql(
            "SELECT number, item_name, status, stage FROM case_state "
            f"WHERE number IN ({','.join('?' * len(numbers))})", numbers)
        cases = {row[0]: row[1:] for row in cursor.fetchall()}
    rows = []
    for number, card in shown:
        item_name, status, stage = cases.get(number, ("", "", None))
        rows.append({"number": number, "item_name": item_name, "stage": stage,
                     "status": status, "card": card})
    return rows, len(found) > LIST_LIMIT
