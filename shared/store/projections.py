"""Query tables kept as projections of the documents.

Each projection is written in the same transaction as the documents it reflects and
can be rebuilt from them (``tongban reindex``). Later issues register more (items,
cases by status and due date, persons by blind index).

A projection that must never block replication (a malformed received document, a release
that fails to install) runs its work through :func:`contained`: a failure rolls back
exactly what that work wrote, and the documents are stored all the same.
"""

import logging

logger = logging.getLogger(__name__)


def contained(db, what, work, *args):
    """Run ``work(*args)`` inside a savepoint of the store's write transaction.

    On an exception, everything ``work`` wrote is rolled back (never a half-written
    projection, such as a release reported in force with some of its items deleted), the
    exception is logged, and the write goes on.

    :returns: ``(True, result)``, or ``(False, None)`` when ``work`` failed.
    """
    try:
        with db.atomic():  # nested in the store's transaction: a savepoint
            return True, work(*args)
    except Exception:  # the caller's documents are stored whatever a projection does
        logger.exception("%s failed; what it wrote is rolled back", what)
        return False, None


class TypeIndex:
    """``doc_type``: each live document's ``type`` member, for counts by type."""

    tables = [
        """CREATE TABLE IF NOT EXISTS doc_type (
            doc_id TEXT PRIMARY KEY,
            type TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS doc_type_type ON doc_type (type)",
    ]

    def apply(self, db, docs):
        """Update the rows of ``docs`` (``[(doc_id, doc_or_None)]``) inside the write."""
        conn = db.connection()
        conn.executemany("DELETE FROM doc_type WHERE doc_id = ?", [(d,) for d, _ in docs])
        conn.executemany(
            "INSERT INTO doc_type (doc_id, type) VALUES (?, ?)",
            [(d, doc["type"]) for d, doc in docs
             if doc is not None and isinstance(doc.get("type"), str)])

    def reset(self, db):
        """Empty the table before a rebuild."""
        db.execute_sql("DELETE FROM doc_type")

    @staticmethod
    def counts(db):
        """``{type: count}`` of live documents."""
        cursor = db.execute_sql("SELECT type, COUNT(*) FROM doc_type GROUP BY type ORDER BY type")
        return dict(cursor.fetchall())


def default_projections():
    """The projections every node keeps."""
    return [TypeIndex()]
