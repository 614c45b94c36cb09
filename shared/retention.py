"""Retention at a village: closed cases leave the PC after ``RETENTION_DAYS``.

DESIGN.md, "Scopes": a village keeps closed cases only for a configurable time; they stay
at the township and county, and removing them is a local purge, never a replicated
deletion. So the daily job (``village/jobs.py``):

* picks the cases held here that are closed (delivered or withdrawn, no open complaint)
  and whose last event is more than ``RETENTION_DAYS`` days old (Beijing days);
* asks the parent (``_revs_diff``, signed) whether it holds every revision of every
  document of them, and keeps any case it does not confirm (never purge the only copy;
  an unreachable parent means nothing is purged today);
* removes their header, events and scans with ``Store.purge`` (no tombstone, no new
  sequence: nothing replicates) and drops their rows from the case tables and the
  supervision figures in the same transaction; ``purged_case`` remembers them.

They do not come back by themselves: the village's pull checkpoint is past them. A new
event on a purged case (a late complaint) arrives alone and is purged with the next run
(the case is not shown here without its header). A recovered PC (``--recover``) pulls its
scope from sequence 0, which includes old closed cases; recovery purges them again at once,
so the new PC holds what the old one held.
"""

import datetime
import json
import logging

from flask import current_app

from shared import clock, errors
from shared import config as cfg
from shared.cases import fold as F
from shared.scopes import case_documents
from shared.store import failures, reads

logger = logging.getLogger(__name__)

CLOSED_STATUSES = (F.DONE, F.WITHDRAWN)
#: Documents asked about in one ``_revs_diff`` request.
CONFIRM_BATCH = 500
#: Cases purged in one transaction (a purge holds the store's write lock).
PURGE_BATCH = 200

PURGED_TABLE = """CREATE TABLE IF NOT EXISTS purged_case (
    number TEXT PRIMARY KEY,
    last_day TEXT,
    purged_at TEXT NOT NULL
)"""
#: The daily run (village/jobs.py): at 02:30, when no clerk is at the counter.
RETENTION_TRIGGER = {"trigger": "cron", "hour": 2, "minute": 30}


def retention_days(config):
    """``RETENTION_DAYS`` of ``config`` as a positive int (ConfigurationError otherwise)."""
    value = config.get("RETENTION_DAYS", cfg.DEFAULTS["RETENTION_DAYS"])
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ConfigurationError(
            f"RETENTION_DAYS must be a whole number of days (at least 1), not {value!r}")
    return value


def _last_day(updated, accepted_day, decided_day):
    """The Beijing day of a case's last event (its ``updated`` HLC), else its latest day."""
    try:
        return F.hlc_day(updated)
    except (TypeError, ValueError, AttributeError):
        days = [d for d in (decided_day, accepted_day) if d]
        return datetime.date.fromisoformat(max(days)) if days else None


def expired_cases(db, today, days):
    """``{number: last day}`` of the closed cases whose last event is older than ``days``."""
    cutoff = today - datetime.timedelta(days=days)
    marks = ",".join("?" * len(CLOSED_STATUSES))
    rows = db.execute_sql(
        f"SELECT number, updated, accepted_day, decided_day FROM case_state "
        f"WHERE status IN ({marks}) AND COALESCE(open_complaints, 0) = 0",
        CLOSED_STATUSES).fetchall()
    found = {}
    for number, updated, accepted_day, decided_day in rows:
        last = _last_day(updated, accepted_day, decided_day)
        if last is not None and last < cutoff:
            found[number] = last
    return found


def returned_orphans(db):
    """Numbers of purged cases some document of which came back (a late event)."""
    db.execute_sql(PURGED_TABLE)
    return [number for (number,) in db.execute_sql(
        "SELECT number FROM purged_case p WHERE NOT EXISTS (SELECT 1 FROM case_state s "
        "WHERE s.number = p.number)").fetchall() if case_documents(db, number)]


def confirmed_by_parent(app, docs_by_case):
    """The cases of ``docs_by_case`` (``{number: [doc ids]}``) whose every revision the
    parent holds; raises ``PeerError`` when the parent cannot be asked."""
    from shared import nodeapi

    db = app.extensions["store"].db
    wanted = reads.leaf_revs(db, [d for ids in docs_by_case.values() for d in ids])
    missing = set()
    client = nodeapi.parent_client(app, timeout=60.0)
    try:
        ids = list(wanted)
        for start in range(0, len(ids), CONFIRM_BATCH):
            chunk = {d: wanted[d] for d in ids[start:start + CONFIRM_BATCH]}
            answer = client.post("/db/_revs_diff", chunk)
            missing.update(doc_id for doc_id, entry in (answer or {}).items()
                           if (entry or {}).get("missing"))
    finally:
        client.close()
    return [number for number, ids in docs_by_case.items() if not missing & set(ids)]


def _forget(numbers, last_days, at):
    """The ``also`` of ``Store.purge``: drop the cases' query rows in its transaction."""
    def forget(db, _purged):
        from shared.cases import stats

        listed = json.dumps(numbers)
        for table, column in (("case_state", "number"), ("case_licence", '"case"'),
                              ("case_party", '"case"'), ("case_applicant", '"case"')):
            if db.execute_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                              "name = ?", (table,)).fetchone():
                db.execute_sql(f"DELETE FROM {table} WHERE {column} IN "
                               "(SELECT value FROM json_each(?))", (listed,))
        # The figures are sums over case_state: made again from what stays (a village
        # holds a few thousand cases, so this is quick, and exact by construction).
        stats.ensure_tables(db)
        stats.rebuild(db)
        db.execute_sql(PURGED_TABLE)
        db.connection().executemany(
            "INSERT OR REPLACE INTO purged_case (number, last_day, purged_at) VALUES (?, ?, ?)",
            [(n, last_days.get(n), at) for n in numbers])
    return forget


def _unchanged(db, numbers, expected):
    """The cases among ``numbers`` still as they were when they were picked: closed (a
    case held here), and with exactly the documents and leaf revisions of ``expected``
    (``{doc_id: [revs]}`` the parent confirmed; None: no revision check)."""
    marks = ",".join("?" * len(numbers))
    held = dict(db.execute_sql(
        f"SELECT number, status IN ({','.join('?' * len(CLOSED_STATUSES))}) "
        f"AND COALESCE(open_complaints, 0) = 0 FROM case_state WHERE number IN ({marks})",
        [*CLOSED_STATUSES, *numbers]).fetchall())
    kept = []
    for number in numbers:
        if number in held and not held[number]:
            continue  # reopened by a complaint or an event that arrived meanwhile
        if expected is not None:
            docs = case_documents(db, number)
            current = reads.leaf_revs(db, docs)
            if any(sorted(current.get(d, ())) != sorted(expected.get(d, ())) for d in docs):
                continue  # a revision the parent has not confirmed: never the only copy
        kept.append(number)
    return kept


def purge_cases(store, numbers, last_days=None, expected=None):
    """Purge every document of cases ``numbers`` from ``store`` (see the module), each
    only if it is still closed and, with ``expected``, holds no revision beyond it;
    returns ``(numbers purged, documents removed)``."""
    removed, purged = 0, []
    numbers = list(numbers)
    at = clock.utcnow().isoformat()
    for start in range(0, len(numbers), PURGE_BATCH):
        # The check and the purge in one write transaction: nothing lands in between.
        with failures.guarded("a purge"), store.db.atomic():
            chunk = _unchanged(store.db, numbers[start:start + PURGE_BATCH], expected)
            if not chunk:
                continue
            ids = [d for number in chunk for d in case_documents(store.db, number)]
            removed += len(store.purge(ids, also=_forget(chunk, last_days or {}, at)))
            purged += chunk
    return purged, removed


def purge_expired(app=None, today=None, *, confirm=True):
    """Purge the closed cases beyond retention at a village (nothing at other tiers).

    :param confirm: ask the parent first that it holds them (False right after a
        recovery, whose documents all came from the parent).
    :returns: the case numbers purged.
    """
    app = app or current_app
    if app.config.get("TIER") != "village":
        return []
    store = app.extensions["store"]
    days = retention_days(app.config)
    today = today or clock.today()
    expired = expired_cases(store.db, today, days)
    orphans = returned_orphans(store.db)
    docs_by_case = {n: case_documents(store.db, n) for n in [*expired, *orphans]}
    # What the parent is asked about: only these revisions may leave this PC.
    expected = reads.leaf_revs(store.db, [d for ids in docs_by_case.values() for d in ids])
    if not docs_by_case:
        logger.info("retention: no closed case older than %d days", days)
        return []
    if confirm:
        try:
            allowed = set(confirmed_by_parent(app, docs_by_case))
        except (errors.PeerError, errors.ConfigurationError) as exc:
            logger.warning("retention: the parent cannot confirm it holds %d expired cases "
                           "(%s); nothing purged today", len(docs_by_case), exc)
            return []
        kept = [n for n in docs_by_case if n not in allowed]
        if kept:
            logger.warning("retention: %d expired cases are kept: the parent does not hold "
                           "all their documents yet (%s…)", len(kept), kept[0])
    else:
        allowed = set(docs_by_case)
    numbers, removed = purge_cases(store, [n for n in docs_by_case if n in allowed],
                                   {n: d.isoformat() for n, d in expired.items()},
                                   expected if confirm else None)
    logger.info("retention: purged %d closed cases older than %d days (%d documents); "
                "they stay at the township and county", len(numbers), days, removed)
    return numbers


def retention_job(now=None):
    """The APScheduler job (in the node's app context, see syncd/scheduler.py)."""
    return purge_expired(current_app, clock.beijing(now).date() if now is not None else None)
