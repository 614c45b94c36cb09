"""Reads of the store's own tables for code that holds only its database: projections
(which get ``db`` inside the write), the case desk, the scopes, recovery and backup.

Every query on ``document`` and ``revision`` lives in ``shared/store/``; the rest of the
project asks these functions (tests/test_house.py checks it).
"""

import json
import sqlite3
from pathlib import Path


def prefix_end(prefix):
    """The first id after every id that starts with ``prefix`` (its last character + 1):
    ``id > prefix AND id < prefix_end(prefix)`` reads the range from the primary key."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def ids_with_prefix(db, prefix, *, live=False):
    """Ids of the documents whose id starts with ``prefix``, in id order; those whose
    winner is a deletion too, unless ``live``."""
    return [row[0] for row in db.execute_sql(
        "SELECT id FROM document WHERE id > ? AND id < ?"
        + (" AND deleted = 0" if live else "") + " ORDER BY id",
        (prefix, prefix_end(prefix))).fetchall()]


def count_with_prefix(db, prefix):
    """How many live documents have an id starting with ``prefix``."""
    return db.execute_sql(
        "SELECT COUNT(*) FROM document WHERE id > ? AND id < ? AND deleted = 0",
        (prefix, prefix_end(prefix))).fetchone()[0]


def exists(db, doc_id):
    """True when the store has ever held ``doc_id`` (a deleted one too)."""
    return db.execute_sql("SELECT 1 FROM document WHERE id = ?", (doc_id,)).fetchone() \
        is not None


def is_live(db, doc_id):
    """True when ``doc_id`` is held and its winner is not a deletion."""
    row = db.execute_sql("SELECT deleted FROM document WHERE id = ?", (doc_id,)).fetchone()
    return row is not None and not row[0]


def deleted_among(db, doc_ids):
    """The ids among ``doc_ids`` whose winning revision is a deletion."""
    if not doc_ids:
        return set()
    return {row[0] for row in db.execute_sql(
        "SELECT id FROM document WHERE deleted = 1 AND id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(doc_ids)),)).fetchall()}


def live_winners(db, doc_id, prefix):
    """``[(id, body text)]`` of the live winners of ``doc_id`` and of every document whose
    id starts with ``prefix`` (a case's header and its events, in one read)."""
    return db.execute_sql(
        "SELECT d.id, r.body FROM document d JOIN revision r ON r.doc_id = d.id AND r.rev = d.rev "
        "WHERE d.deleted = 0 AND (d.id = ? OR (d.id > ? AND d.id < ?))",
        (doc_id, prefix, prefix_end(prefix))).fetchall()


def leaf_revs(db, doc_ids):
    """``{doc_id: [leaf revs]}`` of the documents among ``doc_ids`` held here."""
    found = {}
    rows = db.execute_sql(
        "SELECT id, rev, leaves FROM document WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(doc_ids)),)).fetchall()
    for doc_id, rev, leaves in rows:
        found[doc_id] = json.loads(leaves) if leaves else [rev]
    return found


def file_counts(path):
    """``(doc_count, update_seq)`` of the store file at ``path``, read-only and without
    opening a :class:`Store` (which could upgrade it): what ``Store.doc_count`` and
    ``Store.update_seq`` answer."""
    connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        doc_count = connection.execute(
            "SELECT COUNT(*) FROM document WHERE deleted = 0").fetchone()[0]
        row = connection.execute("SELECT value FROM meta WHERE key = 'update_seq'").fetchone()
    finally:
        connection.close()
    return doc_count, int(row[0]) if row else 0
