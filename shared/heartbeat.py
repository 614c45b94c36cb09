"""A daemon's sign of life in the node's store: ``/healthz`` reads how old syncd's is.

``sync_link`` rows (shared/syncstatus.py) are touched only for the links a node has; a
county without a parent or upstream still runs syncd for its scheduled jobs, so syncd
writes its own row here on every heartbeat (:data:`shared.syncstatus.HEARTBEAT`).
"""

TABLE = """CREATE TABLE IF NOT EXISTS daemon_heartbeat (
    name TEXT PRIMARY KEY, at REAL NOT NULL)"""


def ensure(db):
    """Create the table (the opening of a store; not on every beat: no schema change)."""
    db.execute_sql(TABLE)


def beat(db, name, at):
    """Record that daemon ``name`` is alive at ``at`` (unix seconds, the node clock)."""
    with db.atomic():
        db.execute_sql("INSERT INTO daemon_heartbeat (name, at) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET at = excluded.at", (name, at))


def last(db, name):
    """When daemon ``name`` last beat (unix seconds), or None: never, or no table yet."""
    try:
        row = db.execute_sql("SELECT at FROM daemon_heartbeat WHERE name = ?",
                             (name,)).fetchone()
    except Exception as exc:  # noqa: BLE001 - peewee wraps sqlite3.OperationalError
        if "no such table" in str(exc):
            return None
        raise
    return row[0] if row else None
