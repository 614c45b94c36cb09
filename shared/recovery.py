"""A lost station PC comes back from its parent: ``tongban init … --enrol CODE --recover``.

The county issues a code with ``tongban enrol --replace`` (the old key is revoked); the
replacement PC enrols with it and then pulls, from its township, everything in its scope:
the registry, the catalog and its releases, and every case it takes part in (the cases it
accepted and pushed up earlier are among them: a station is a participant of the cases it
originated, ``shared.scopes``), with their events and scans. It is the station's ordinary
first pull (the sync daemon's, with its checkpoint), so ``tongban syncd`` afterwards
carries on from where recovery stopped, and a recovery cut short is finished by syncd.

Afterwards:

* the day counters of case numbers start after the highest number recovered for each day,
  so no number is given twice (``case_seq``, ``shared.cases.desk``);
* closed cases beyond ``RETENTION_DAYS`` that came down are purged again at once, as the
  daily retention job would (``shared.retention``): the township holds them, the new PC
  keeps only what an old one would have kept.
"""

import logging
import time

from shared import casedocs, errors
from shared.cases import fold as F
from shared.store import reads

logger = logging.getLogger(__name__)


def seed_case_numbers(db, node_code):
    """Make each day's ``case_seq`` start after the highest case number of ``node_code``
    held for that day; returns ``{day: highest}`` of the days seen."""
    prefix = f"case:{node_code}-"
    highest = {}
    # '.' is the character after '-': this range is exactly the node's own case headers.
    for doc_id in reads.ids_with_prefix(db, prefix):
        try:
            origin, day, seq = casedocs.parse_case_number(doc_id[len("case:"):])
        except errors.TongbanError:
            continue
        if origin == node_code:
            day = day.isoformat()
            highest[day] = max(highest.get(day, 0), seq)
    db.execute_sql("CREATE TABLE IF NOT EXISTS case_seq "
                   "(day TEXT PRIMARY KEY, last INTEGER NOT NULL)")
    with db.atomic():
        for day, last in highest.items():
            db.execute_sql(
                "INSERT INTO case_seq (day, last) VALUES (?, ?) ON CONFLICT (day) "
                "DO UPDATE SET last = MAX(last, excluded.last)", (day, last))
    return highest


def summary(db, node_code):
    """What the store holds after a recovery: case counts, scans, the catalog release."""
    from shared.catalog.active import catalog_status

    statuses = dict(db.execute_sql(
        "SELECT status, COUNT(*) FROM case_state GROUP BY status").fetchall())
    open_cases = sum(count for status, count in statuses.items()
                     if status in F.OPEN_STATUSES)
    scans = reads.count_with_prefix(db, "scan:")
    nodes = db.execute_sql("SELECT COUNT(*) FROM node_registry").fetchone()[0]
    active = (catalog_status(db) or {}).get("active") or {}
    return {"cases": sum(statuses.values()), "open": open_cases,
            "closed": sum(statuses.values()) - open_cases, "scans": scans,
            "registry": nodes, "release": active.get("number"),
            "items": active.get("item_count")}


def recover(app, echo=logger.info):
    """Pull the station's scope from its parent and make it ready to serve.

    :param app: the node's Flask app (enrolled: it signs its requests to ``PARENT_URL``).
    :param echo: where progress lines go (the CLI's ``click.echo``).
    :returns: :func:`summary` plus ``ok`` (False: the pull did not finish; syncd will).
    """
    from shared import retention
    from syncd.daemon import SyncDaemon  # shared imports syncd only here, lazily

    # The daemon's initial-sync lines ("%d of ~%d documents") are the progress shown.
    logging.getLogger("syncd.daemon").setLevel(logging.INFO)
    store = app.extensions["store"]
    config = app.config
    started = time.monotonic()
    echo(f"recovering {config['TIER']} {config['NODE_CODE']} from {config['PARENT_URL']}")
    daemon = SyncDaemon(config, store, app=app)
    try:
        results = daemon.run_once()
        for link in daemon.links:
            echo(daemon.summary(link))
    finally:
        daemon.close()
    ok = bool(results) and all(results.values())
    highest = seed_case_numbers(store.db, config["NODE_CODE"])
    purged = []
    if ok:
        # Copies of what the parent holds: nothing to confirm before purging.
        purged = retention.purge_expired(app, confirm=False)
    found = summary(store.db, config["NODE_CODE"])
    found.update(ok=ok, purged=len(purged), days=len(highest),
                 seconds=round(time.monotonic() - started, 1))
    echo(f"recovered {found['cases']} cases ({found['open']} open, {found['closed']} "
         f"closed), {found['scans']} scans, {found['registry']} registry entries, catalog "
         f"release {found['release'] or '-'} ({found['items'] or 0} items); "
         f"{len(purged)} closed cases beyond retention left at the parent")
    if highest:
        last_day = max(highest)
        echo(f"case numbers continue after {config['NODE_CODE']}-{last_day.replace('-', '')}"
             f"-{highest[last_day]:04d}")
    return found
