"""Query tables kept as projections of the documents.

Each projection is written in the same transaction as the documents it reflects and
can be rebuilt from them (``tongban reindex``). Later issues register more (items,
cases by status and due date, persons by blind index).
"""


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
