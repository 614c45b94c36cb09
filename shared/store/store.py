"""The document store: JSON documents with CouchDB semantics on SQLite.

One ``Store`` is one node's database. Every write runs in one IMMEDIATE transaction
that updates the document row, its revision bodies, the sequence and every
registered projection, so a reader never sees a document without its query rows.
"""

import json
import logging
import os
import threading
import time
import uuid

from shared import clock, errors
from shared.db import open_database
from shared.store import failures, schema
from shared.store import revs as R

logger = logging.getLogger(__name__)

DEFAULT_REVS_LIMIT = 1000
DEFAULT_MAX_DOCUMENT_SIZE = 8 * 1024 * 1024
#: The largest ``revs_limit`` a store accepts (CouchDB has none; a bound keeps stemming on).
MAX_REVS_LIMIT = 1_000_000
#: The owner of the node's own ``_local`` documents (syncd's side of its checkpoints, the
#: CLI) and of every one an older store held before documents had owners.
LOCAL_OPERATOR = ""
#: The largest ``N`` of a ``_local`` rev ``0-N`` (SQLite's INTEGER is 64-bit).
MAX_LOCAL_REV = 2 ** 63 - 2

# Members CouchDB accepts on input; the last four are output-only and silently dropped.
SPECIAL_MEMBERS = {"_id", "_rev", "_revisions", "_deleted", "_attachments"}
IGNORED_MEMBERS = {"_conflicts", "_deleted_conflicts", "_local_seq", "_revs_info"}

# Each caller's _local documents are its own: ``owner`` names who wrote them
# (``LOCAL_OPERATOR`` for the node itself; see ``Store.get_local``).
LOCAL_DOC_TABLE = """CREATE TABLE IF NOT EXISTS local_doc (
        owner TEXT NOT NULL DEFAULT '',
        id TEXT NOT NULL,
        rev INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (owner, id)
    ) WITHOUT ROWID"""

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS document (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        rev TEXT NOT NULL,
        deleted INTEGER NOT NULL,
        leaves TEXT NOT NULL,
        tree TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS revision (
        doc_id TEXT NOT NULL,
        rev TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (doc_id, rev)
    ) WITHOUT ROWID""",
    LOCAL_DOC_TABLE,
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def validate_doc_id(doc_id):
    """Raise InvalidDocId unless ``doc_id`` may name a replicated document."""
    if not isinstance(doc_id, str):
        raise errors.InvalidDocId("Document id must be a string")
    if doc_id == "":
        raise errors.InvalidDocId("Document id must not be empty")
    if doc_id.startswith("_") and not doc_id.startswith("_design/"):
        raise errors.InvalidDocId("Only reserved document ids may start with underscore.")


#: Members ``split_doc`` drops from a body (the rest of ``_`` members are refused).
_DROPPED_MEMBERS = (*sorted(IGNORED_MEMBERS), "_id", "_rev", "_revisions", "_deleted")


def split_doc(doc):
    """Separate a document's content from its special members, validating them.

    :returns: ``(body, deleted)`` where body keeps ``_attachments`` but no other ``_`` member.
    :raises DocValidation: on an unknown ``_`` member.
    """
    if not isinstance(doc, dict):
        raise errors.BadRequest("Document must be a JSON object")
    # Copy, then drop: one pass in C instead of a Python test per member (hot path).
    body = dict(doc)
    for key in _DROPPED_MEMBERS:
        if key in body:
            del body[key]
    for key in body:
        if key[:1] == "_" and key not in SPECIAL_MEMBERS:
            raise errors.DocValidation(f"Bad special document member: {key}")
    deleted = doc.get("_deleted") is True
    return body, deleted


class _DocState:
    """A document row loaded for update inside a transaction."""

    __slots__ = ("doc_id", "tree", "exists", "old_rev", "old_deleted")

    def __init__(self, doc_id, tree=None, old_rev=None, old_deleted=False):
        self.doc_id = doc_id
        self.tree = tree if tree is not None else {}
        self.exists = tree is not None
        self.old_rev = old_rev
        self.old_deleted = old_deleted


#: Seconds between two looks at the update sequence while a changes feed waits.
WRITE_POLL_INTERVAL = 0.25


def _owner_only(path):
    """Make the store's files readable by the node's user alone (0600): they hold sealed
    personal data and the audit chain. A path SQLite treats specially is left alone."""
    if not path or str(path).startswith(":") or str(path).startswith("file:"):
        return
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(f"{path}{suffix}", 0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. a filesystem without modes: say so, carry on
            logger.warning("cannot make %s%s private: %s", path, suffix, exc)


class Store:
    """A node's CouchDB-compatible document database in one SQLite file.

    :param path: the SQLite file (created when absent).
    :param revs_limit: how many revisions of each branch to keep (CouchDB's ``revs_limit``).
    :param max_document_size: bytes of JSON above which a write is refused.
    :param name: the database name reported by ``info()``.
    """

    def __init__(self, path, *, revs_limit=DEFAULT_REVS_LIMIT,
                 max_document_size=DEFAULT_MAX_DOCUMENT_SIZE, name="db"):
        self.path = path
        self.name = name
        self.max_document_size = max_document_size
        self.db = open_database(path)
        self.projections = []
        self._revs_limit = None
        self._changed = threading.Condition()
        self._waiting = 0  # changes-feed waiters (longpolls) on this store
        self._poller = None
        with self.db.atomic():
            new = self.db.execute_sql(
                "SELECT 1 FROM sqlite_master WHERE name = 'document'").fetchone() is None
            for statement in SCHEMA:
                self.db.execute_sql(statement)
            if new and not self.db.execute_sql("PRAGMA user_version").fetchone()[0]:
                # Made by this code: at the current schema version (shared/store/schema.py).
                self.db.execute_sql(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
            self._meta_default("revs_limit", str(revs_limit))
            self._meta_default("update_seq", "0")
            self._meta_default("uuid", uuid.uuid4().hex)
            self._meta_default("instance_start_time", str(int(clock.time() * 1000000)))
            self._migrate_local_docs()
        _owner_only(path)

    # -- plumbing -----------------------------------------------------------------------

    def _migrate_local_docs(self):
        """Give an older store's ``local_doc`` table its ``owner`` column (in the opening
        transaction, so serve and syncd starting together migrate once).

        Who wrote an older document is not known, so every one becomes the operator's:
        the node's own syncd keeps its checkpoints, other nodes and accounts no longer
        see them (their replications start over once; ``_revs_diff`` keeps that cheap).
        """
        columns = [row[1] for row in self.db.execute_sql("PRAGMA table_info(local_doc)")]
        if "owner" in columns:
            return
        statements = [
            "ALTER TABLE local_doc RENAME TO local_doc_unowned",
            LOCAL_DOC_TABLE,
            "INSERT INTO local_doc (owner, id, rev, body) "
            "SELECT ?, id, rev, body FROM local_doc_unowned",
            "DROP TABLE local_doc_unowned",
        ]
        for statement in statements:
            self.db.execute_sql(statement, (LOCAL_OPERATOR,) if "?" in statement else ())
        logger.info("local documents of %s migrated: they now belong to the node itself",
                    self.path)

    def _meta_default(self, key, value):
        self.db.execute_sql("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key, default=None):
        """Read a value of the store's meta table."""
        row = self.db.execute_sql("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key, value):
        """Write a value of the store's meta table."""
        self.db.execute_sql(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    @property
    def revs_limit(self):
        """How many revisions of each branch the store keeps (read once, then cached)."""
        if self._revs_limit is None:
            self._revs_limit = int(self.meta("revs_limit"))
        return self._revs_limit

    @property
    def uuid(self):
        """A stable identifier of this database, used in replication ids."""
        return self.meta("uuid")

    def close(self):
        """Close this thread's connection."""
        self.db.close()

    def add_projection(self, projection):
        """Register a projection: an object with ``tables`` (SQL), ``apply(db, docs)``, ``reset(db)``.

        ``apply`` receives ``[(doc_id, doc_or_None), ...]`` (None when the winner is
        deleted) inside the write transaction.

        ``apply`` may return an iterable of document ids to *re-announce*: each one that
        exists and was not written by this transaction gets a new sequence in the same
        transaction, so it appears again in the changes feed after every checkpoint
        (a node that just became allowed to read it then receives it). Re-announced
        documents take their sequences in the order given, before the documents the
        transaction wrote, which move after them (a case header then still precedes
        the event that made it visible). ``reindex`` ignores the returned ids.
        """
        with self.db.atomic():
            for statement in projection.tables:
                self.db.execute_sql(statement)
        self.projections.append(projection)

    def update_seq(self):
        """The sequence number of the latest change."""
        return int(self.meta("update_seq"))

    def info(self):
        """Database information as CouchDB's ``GET /db`` gives it."""
        count, deleted = self.db.execute_sql(
            "SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted), 0) FROM document"
        ).fetchone()
        return {
            "db_name": self.name,
            "doc_count": count,
            "doc_del_count": deleted,
            "update_seq": self.update_seq(),
            "purge_seq": 0,
            "compact_running": False,
            "disk_format_version": 8,
            "instance_start_time": self.meta("instance_start_time"),
            "revs_limit": self.revs_limit,
            "sizes": {"file": self._file_size(), "active": 0, "external": 0},
        }

    def _file_size(self):
        page_count = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        page_size = self.db.execute_sql("PRAGMA page_size").fetchone()[0]
        return page_count * page_size

    def set_revs_limit(self, limit):
        """Change how many revisions the store keeps per branch (applies to later writes)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise errors.BadRequest("revs_limit must be a positive integer")
        if limit > MAX_REVS_LIMIT:
            raise errors.BadRequest(f"revs_limit must be at most {MAX_REVS_LIMIT}")
        with failures.guarded("a revs_limit change"), self.db.atomic():
            self.set_meta("revs_limit", limit)
        self._revs_limit = limit

    # -- reading ------------------------------------------------------------------------

    def _load(self, doc_id):
        row = self.db.execute_sql(
            "SELECT tree, rev, deleted FROM document WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            return None
        return R.tree_from_json(json.loads(row[0])), row[1], bool(row[2])

    def _bodies(self, doc_id, revs):
        if not revs:
            return {}
        marks = ",".join("?" * len(revs))
        cursor = self.db.execute_sql(
            f"SELECT rev, body FROM revision WHERE doc_id = ? AND rev IN ({marks})",
            (doc_id, *revs))
        return {rev: body for rev, body in cursor}

    def _render(self, doc_id, rev, tree, body_json, *, revs=False):
        doc = {"_id": doc_id, "_rev": rev}
        doc.update(json.loads(body_json))
        if tree[rev].deleted:
            doc["_deleted"] = True
        if revs:
            # A stemmed tree may still hold a longer path (kept for another leaf);
            # CouchDB never reports more than revs_limit of it.
            doc["_revisions"] = R.revisions_of(tree, rev, self.revs_limit)
        return doc

    def get(self, doc_id, rev=None, *, revs=False, conflicts=False, deleted_conflicts=False,
            revs_info=False, latest=False):
        """Read one revision of a document (the winner unless ``rev`` is given).

        :returns: the document with ``_id``, ``_rev`` and the asked-for meta members.
        :raises NotFound: no such document, the winner is deleted and no rev was asked,
            or the rev is unknown or its body is not held.
        :raises BadRequest: ``rev`` is malformed.
        """
        if rev is not None:
            R.parse_rev(rev)
        loaded = self._load(doc_id)
        if loaded is None:
            raise errors.NotFound("missing")
        tree, winner_rev, winner_deleted = loaded
        if rev is None:
            if winner_deleted:
                raise errors.NotFound("deleted")
            rev = winner_rev
        elif latest and rev in tree:
            rev = self._latest(tree, rev)[0]
        if rev not in tree or not tree[rev].available:
            raise errors.NotFound("missing")
        body = self._bodies(doc_id, [rev]).get(rev)
        if body is None:
            raise errors.NotFound("missing")
        doc = self._render(doc_id, rev, tree, body, revs=revs)
        if conflicts or deleted_conflicts:
            others = [r for r in R.sorted_leaves(tree) if r != rev]
            live = [r for r in others if not tree[r].deleted]
            dead = [r for r in others if tree[r].deleted]
            if conflicts and live:
                doc["_conflicts"] = live
            if deleted_conflicts and dead:
                doc["_deleted_conflicts"] = dead
        if revs_info:
            doc["_revs_info"] = [
                {"rev": r, "status": "deleted" if tree[r].deleted and tree[r].available
                 else "available" if tree[r].available else "missing"}
                for r in R.path_to_root(tree, rev)
            ]
        return doc

    @staticmethod
    def _latest(tree, rev):
        """Leaves descending from ``rev`` (itself when it is a leaf), winner order."""
        result = []
        for leaf in R.sorted_leaves(tree):
            if rev in R.path_to_root(tree, leaf):
                result.append(leaf)
        return result or [rev]

    def open_revs(self, doc_id, wanted="all", *, revs=False, latest=False):
        """Read several revisions at once, as ``GET /db/{id}?open_revs=...`` does.

        :param wanted: ``"all"`` for every leaf, or a list of rev strings.
        :returns: a list of ``{"ok": doc}`` and ``{"missing": rev}`` entries.
        :raises NotFound: ``wanted`` is ``"all"`` and the document does not exist.
        :raises BadRequest: a rev is malformed.
        """
        if wanted != "all":
            for rev in wanted:
                R.parse_rev(rev)
        loaded = self._load(doc_id)
        if loaded is None:
            if wanted == "all":
                raise errors.NotFound("missing")
            return [{"missing": rev} for rev in wanted]
        tree = loaded[0]
        if wanted == "all":
            targets = sorted(R.leaves(tree))
        else:
            targets = []
            for rev in wanted:
                for target in (self._latest(tree, rev) if latest and rev in tree else [rev]):
                    if target not in targets:
                        targets.append(target)
        bodies = self._bodies(doc_id, [r for r in targets if r in tree])
        result = []
        for rev in targets:
            if rev in bodies:
                result.append({"ok": self._render(doc_id, rev, tree, bodies[rev], revs=revs)})
            else:
                result.append({"missing": rev})
        return result

    def open_revs_json(self, requests, *, revs=False, latest=False):
        """``open_revs(doc_id, [rev])`` for many documents at once, rendered as JSON text.

        The hot path of ``_bulk_get``: one read of the trees and one of the bodies for
        the whole batch, and each stored body spliced into its ``_id``, ``_rev``,
        ``_deleted`` and ``_revisions`` members. The text is exactly what encoding the
        document ``open_revs`` returns would give (bodies are stored in that encoding),
        without decoding and re-encoding every body.

        :param requests: ``[(doc_id, rev), ...]`` with well-formed revs.
        :returns: per request, a list of ``("ok", doc_json)`` and ``("missing", rev)``.
        """
        trees = self._load_many(list(dict.fromkeys(doc_id for doc_id, _ in requests)))
        plans = []
        pairs = {}
        for doc_id, rev in requests:
            loaded = trees.get(doc_id)
            if loaded is None:
                plans.append((doc_id, None, [rev]))
                continue
            tree = loaded[0]
            targets = self._latest(tree, rev) if latest and rev in tree else [rev]
            plans.append((doc_id, tree, targets))
            pairs.update(((doc_id, target), None) for target in targets if target in tree)
        bodies = self._bodies_many(list(pairs))
        result = []
        for doc_id, tree, targets in plans:
            entries = []
            for rev in targets:
                body = bodies.get((doc_id, rev))
                if body is None:
                    entries.append(("missing", rev))
                else:
                    entries.append(("ok", self._render_json(doc_id, rev, tree, body, revs)))
            result.append(entries)
        return result

    def winners(self, doc_ids):
        """``{doc_id: content}`` of the live winning revisions of ``doc_ids`` (missing and
        deleted documents are left out), read in a few queries instead of one ``get`` each.

        The content is the stored body decoded: no ``_id``, ``_rev`` or other meta members.
        """
        return {doc_id: json.loads(text) for doc_id, text in self.winner_texts(doc_ids).items()}

    def winner_texts(self, doc_ids):
        """``{doc_id: stored JSON text}`` of the live winning revisions of ``doc_ids``."""
        doc_ids = list(doc_ids)
        heads = []
        for start in range(0, len(doc_ids), 500):
            chunk = doc_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            heads.extend(self.db.execute_sql(
                f"SELECT id, rev FROM document WHERE deleted = 0 AND id IN ({marks})",
                chunk).fetchall())
        bodies = self._bodies_many([list(head) for head in heads])
        return {doc_id: bodies[(doc_id, rev)] for doc_id, rev in heads
                if (doc_id, rev) in bodies}

    def _bodies_many(self, pairs):
        """``{(doc_id, rev): body_json}`` of the given revisions that have a body."""
        found = {}
        for start in range(0, len(pairs), 500):
            cursor = self.db.execute_sql(
                "SELECT r.doc_id, r.rev, r.body FROM json_each(?) AS j JOIN revision AS r "
                "ON r.doc_id = json_extract(j.value, '$[0]') "
                "AND r.rev = json_extract(j.value, '$[1]')",
                (_dumps(pairs[start:start + 500]),))
            found.update(((doc_id, rev), body) for doc_id, rev, body in cursor)
        return found

    def _render_json(self, doc_id, rev, tree, body_json, revs):
        """``_dumps(self._render(...))`` without decoding the body: same members, same order."""
        parts = ['{"_id":', _dumps(doc_id), ',"_rev":', _dumps(rev)]
        if len(body_json) > 2:
            parts += [",", body_json[1:-1]]
        if tree[rev].deleted:
            parts.append(',"_deleted":true')
        if revs:
            parts += [',"_revisions":', _dumps(R.revisions_of(tree, rev, self.revs_limit))]
        parts.append("}")
        return "".join(parts)

    def all_docs(self, *, keys=None, startkey=None, endkey=None, inclusive_end=True,
                 descending=False, limit=None, skip=0, include_docs=False, conflicts=False):
        """Rows of ``_all_docs``: live documents in id order, or the rows for ``keys``.

        :returns: ``(total_rows, rows)``.
        """
        total = self.db.execute_sql("SELECT COUNT(*) FROM document WHERE deleted = 0").fetchone()[0]
        rows = []
        if keys is not None:
            for key in keys[skip:] if skip else keys:
                row = self._all_docs_key_row(key, include_docs, conflicts)
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
            return total, rows
        clauses, params = ["deleted = 0"], []
        low, high = (endkey, startkey) if descending else (startkey, endkey)
        if low is not None:
            clauses.append("id >= ?" if not descending or inclusive_end else "id > ?")
            params.append(low)
        if high is not None:
            clauses.append("id <= ?" if descending or inclusive_end else "id < ?")
            params.append(high)
        order = "DESC" if descending else "ASC"
        sql = (f"SELECT id, rev FROM document WHERE {' AND '.join(clauses)} "
               f"ORDER BY id {order} LIMIT ? OFFSET ?")
        params += [-1 if limit is None else limit, skip]
        for doc_id, rev in self.db.execute_sql(sql, params).fetchall():
            row = {"id": doc_id, "key": doc_id, "value": {"rev": rev}}
            if include_docs:
                row["doc"] = self.get(doc_id, conflicts=conflicts)
            rows.append(row)
        return total, rows

    def _all_docs_key_row(self, key, include_docs, conflicts):
        if not isinstance(key, str):
            return {"key": key, "error": "not_found"}
        row = self.db.execute_sql(
            "SELECT rev, deleted FROM document WHERE id = ?", (key,)).fetchone()
        if row is None:
            return {"key": key, "error": "not_found"}
        rev, deleted = row
        result = {"id": key, "key": key, "value": {"rev": rev}}
        if deleted:
            result["value"]["deleted"] = True
            if include_docs:
                result["doc"] = None
        elif include_docs:
            result["doc"] = self.get(key, conflicts=conflicts)
        return result

    def changes(self, since=0, *, limit=None, descending=False, style="main_only",
                include_docs=False, doc_ids=None, conflicts=False, row_filter=None):
        """The changes feed: each document once, at the sequence of its latest change.

        :param since: exclusive lower bound (ignored when ``descending``).
        :param doc_ids: only these documents (the ``_doc_ids`` filter).
        :param row_filter: optional callable ``(doc_id) -> bool`` applied before ``limit``
            (the hook scopes use).
        :returns: ``(rows, last_seq)``.
        """
        params = []
        sql = "SELECT id, seq, rev, deleted, leaves FROM document"
        clauses = []
        if not descending and since:
            clauses.append("seq > ?")
            params.append(since)
        if doc_ids is not None:
            ids = list(dict.fromkeys(doc_ids))
            clauses.append("id IN (SELECT value FROM json_each(?))")
            params.append(_dumps(ids))
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq " + ("DESC" if descending else "ASC")
        if limit is not None and row_filter is None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = []
        # last_seq is the last row scanned, filtered out or not, so that a filtered
        # feed still moves a checkpoint forward; one SELECT reads one snapshot.
        last_seq = 0 if descending else (since or 0)
        cursor = self.db.execute_sql(sql, params)
        for doc_id, seq, rev, deleted, leaf_revs in cursor:
            if not descending:
                last_seq = seq
            if row_filter is not None and not row_filter(doc_id):
                continue
            if style == "all_docs" and leaf_revs:
                # CouchDB 3.5 lists every leaf, winner included, sorted as strings.
                changes = [{"rev": r} for r in json.loads(leaf_revs)]
            else:
                changes = [{"rev": rev}]
            row = {"seq": seq, "id": doc_id, "changes": changes}
            if deleted:
                row["deleted"] = True
            if include_docs:
                row["doc"] = self._winner_doc(doc_id, rev, conflicts)
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
        cursor.close()
        if descending and rows:
            last_seq = rows[-1]["seq"]
        return rows, last_seq

    def pending(self, since, doc_ids=None, *, row_filter=None, scan_limit=10000):
        """How many documents changed after ``since`` (optionally among ``doc_ids``).

        :param row_filter: count only ids it accepts (``changes``' hook); then at most
            ``scan_limit`` changes are looked at, so the answer is a lower bound that
            costs no more than one bounded scan.
        """
        sql = "SELECT COUNT(*) FROM document WHERE seq > ?"
        params = [since]
        if doc_ids is not None:
            sql += " AND id IN (SELECT value FROM json_each(?))"
            params.append(_dumps(list(doc_ids)))
        if row_filter is None:
            return self.db.execute_sql(sql, params).fetchone()[0]
        sql = sql.replace("COUNT(*)", "id") + " ORDER BY seq LIMIT ?"
        cursor = self.db.execute_sql(sql, params + [scan_limit])
        count = sum(1 for (doc_id,) in cursor if row_filter(doc_id))
        cursor.close()
        return count

    def _winner_doc(self, doc_id, rev, conflicts):
        loaded = self._load(doc_id)
        if loaded is None:
            return None
        tree = loaded[0]
        body = self._bodies(doc_id, [rev]).get(rev, "{}")
        doc = self._render(doc_id, rev, tree, body)
        if conflicts:
            live = [r for r in R.sorted_leaves(tree) if r != rev and not tree[r].deleted]
            if live:
                doc["_conflicts"] = live
        return doc

    def wait_for_change(self, since, timeout):
        """Block until ``update_seq`` passes ``since`` or ``timeout`` seconds elapse.

        Writes by this process wake waiters at once; writes by another process on the
        same file (syncd beside serve) are noticed by one poller thread per store, every
        ``WRITE_POLL_INTERVAL`` seconds while anyone waits: a township holding twenty
        villages' longpolls reads its sequence four times a second, not eighty.
        :returns: True when there is a change after ``since``.
        """
        deadline = time.monotonic() + timeout
        if self.update_seq() > since:
            return True
        with self._changed:
            self._waiting += 1
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll_writes, daemon=True,
                                                name=f"write-poll-{self.name}")
                self._poller.start()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self.update_seq() > since
                with self._changed:
                    self._changed.wait(remaining)
                if self.update_seq() > since:
                    return True
        finally:
            with self._changed:
                self._waiting -= 1

    def _poll_writes(self):
        """Wake the waiters when another process writes; ends when nobody waits."""
        try:
            last = self.update_seq()
            while True:
                with self._changed:
                    if self._waiting == 0:
                        self._poller = None
                        return
                time.sleep(WRITE_POLL_INTERVAL)
                seq = self.update_seq()
                if seq != last:
                    last = seq
                    with self._changed:
                        self._changed.notify_all()
        except Exception:  # the file went away (closed store): let waiters time out
            logger.exception("store %s: write poller stopped", self.name)
            with self._changed:
                self._poller = None
        finally:
            self.db.close()  # this thread's connection

    def revs_diff(self, wanted):
        """Which of the given revisions this store lacks (``POST /db/_revs_diff``).

        :param wanted: ``{doc_id: [rev, ...]}``.
        :returns: ``{doc_id: {"missing": [...], "possible_ancestors": [...]}}`` for the
            documents with something missing.
        :raises BadRequest: a rev is malformed.
        """
        for revs in wanted.values():
            if not isinstance(revs, list):
                raise errors.BadRequest("Invalid rev format")
            for rev in revs:
                R.parse_rev(rev)
        trees = self._load_many(list(wanted))
        result = {}
        for doc_id, revs in wanted.items():
            state = trees.get(doc_id)
            tree = state[0] if state else {}
            missing = R.find_missing(tree, revs)
            if missing:
                entry = {"missing": missing}
                ancestors = R.possible_ancestors(tree, missing)
                if ancestors:
                    entry["possible_ancestors"] = ancestors
                result[doc_id] = entry
        return result

    def _load_many(self, doc_ids):
        found = {}
        for start in range(0, len(doc_ids), 500):
            chunk = doc_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            cursor = self.db.execute_sql(
                f"SELECT id, tree, rev, deleted FROM document WHERE id IN ({marks})", chunk)
            for doc_id, tree, rev, deleted in cursor:
                found[doc_id] = (R.tree_from_json(json.loads(tree)), rev, bool(deleted))
        return found

    # -- writing ------------------------------------------------------------------------

    def put(self, doc, *, new_edits=True):
        """Write one document; returns its new rev.

        :raises Conflict, BadRequest, InvalidDocId, DocValidation, DocumentTooLarge:
        """
        result = self.bulk_docs([doc], new_edits=new_edits)
        if new_edits:
            entry = result[0]
            if "error" in entry:
                raise _ERROR_CLASSES[entry["error"]](entry["reason"])
            return entry["rev"]
        if result:
            raise _ERROR_CLASSES[result[0]["error"]](result[0]["reason"])
        return doc.get("_rev") or R.path_from_revisions(None, doc.get("_revisions"))[0]

    def _prepare(self, doc, new_edits):
        """Validate one incoming document: ``(doc_id, path, body_json, deleted)``."""
        if not isinstance(doc, dict):
            raise errors.BadRequest("Document must be a JSON object")
        doc_id = doc.get("_id")
        if doc_id is None and new_edits:
            doc_id = uuid.uuid4().hex
        validate_doc_id(doc_id)
        body, deleted = split_doc(doc)
        body_json = _dumps(body)
        if len(body_json.encode("utf-8")) > self.max_document_size:
            raise errors.DocumentTooLarge("")
        if new_edits:
            rev = doc.get("_rev")
            if rev is not None:
                R.parse_rev(rev)
            path = [rev] if rev else []
        else:
            if "_rev" not in doc and "_revisions" not in doc:
                raise errors.BadRequest(
                    "When `new_edits: false`, the document needs `_rev` or `_revisions` specified")
            path = R.path_from_revisions(doc.get("_rev"), doc.get("_revisions"))
        return doc_id, path, body, body_json, deleted

    def bulk_docs(self, docs, *, new_edits=True, check=None):
        """Write many documents in one transaction (``POST /db/_bulk_docs``).

        :param new_edits: ``True`` for ordinary edits (conflict-checked, new revs made);
            ``False`` for replicated revisions, merged into the tree as given.
        :param check: optional callable ``(doc_id, doc, existing_winner_doc_or_None)``
            that raises Forbidden to refuse one document (the scope hook).
        :returns: CouchDB's result list: ``{"ok", "id", "rev"}`` or ``{"id", "error",
            "reason"}`` per document with ``new_edits``; only the failures without.
        :raises BadRequest: a replicated document without ``_rev``/``_revisions``
            (the whole request is refused, as in CouchDB).
        """
        prepared = []
        for doc in docs:
            try:
                prepared.append((doc, self._prepare(doc, new_edits)))
            except R.InvalidRev as exc:
                if not new_edits:
                    raise errors.BadRequest("Invalid rev format") from exc
                prepared.append((doc, errors.BadRequest("Invalid rev format")))
            except (errors.InvalidDocId, errors.DocValidation, errors.DocumentTooLarge) as exc:
                prepared.append((doc, exc))
            except errors.BadRequest as exc:
                # A replicated batch with a malformed member is refused whole, as CouchDB does.
                if not new_edits:
                    raise
                prepared.append((doc, exc))
        results = [None] * len(prepared)
        with failures.guarded("a document write"), self.db.atomic():
            seq = self.update_seq()
            # Read inside the write lock: another process may have changed it.
            limit = self._revs_limit = int(self.meta("revs_limit"))
            ids = list({p[0] for _, p in prepared if not isinstance(p, Exception)})
            states = {doc_id: _DocState(doc_id, *loaded)
                      for doc_id, loaded in self._load_many(ids).items()}
            touched = {}
            new_bodies = []
            for index, (doc, item) in enumerate(prepared):
                if isinstance(item, Exception):
                    doc_id = doc.get("_id") if isinstance(doc, dict) else None
                    results[index] = _error_entry(doc_id, item)
                    continue
                doc_id, path, body, body_json, deleted = item
                state = states.get(doc_id) or _DocState(doc_id)
                try:
                    if check is not None:
                        check(doc_id, doc, state)
                    if new_edits:
                        rev = self._apply_edit(state, path, body, deleted)
                    else:
                        rev = path[0]
                        if not R.merge_path(state.tree, path, deleted):
                            results[index] = {"ok": True, "id": doc_id, "rev": rev}
                            continue
                except errors.TongbanError as exc:
                    results[index] = _error_entry(doc_id, exc)
                    continue
                states[doc_id] = state
                touched[doc_id] = state
                new_bodies.append((doc_id, rev, body_json, body))
                results[index] = {"ok": True, "id": doc_id, "rev": rev}
            if touched:
                seq = self._write_states(touched, new_bodies, limit, seq)
        if touched:
            with self._changed:
                self._changed.notify_all()
        if new_edits:
            return results
        return [r for r in results if r is not None and "error" in r]

    def _apply_edit(self, state, path, body, deleted):
        """Apply an ordinary edit to ``state.tree``; returns the new rev or raises Conflict."""
        tree = state.tree
        if path:
            parent = path[0]
            if parent not in tree or parent not in R.leaves(tree):
                raise errors.Conflict()
        elif tree:
            current = R.winner(tree)
            if not tree[current].deleted:
                raise errors.Conflict()
            parent = current
        else:
            parent = None
        rev = R.make_rev(parent, body, deleted)
        if rev in tree:
            raise errors.Conflict()
        tree[rev] = R.RevNode(parent, deleted, True)
        return rev

    def _write_states(self, touched, new_bodies, limit, seq):
        """Persist changed trees, bodies, sequence and projections (inside the transaction)."""
        conn = self.db.connection()
        rows = []
        dropped_bodies = []
        projected = []
        for doc_id, state in touched.items():
            # A tree no larger than the limit has nothing to stem (no rev is that far
            # from a leaf); most writes are of such trees.
            if len(state.tree) > limit:
                for rev in R.stem(state.tree, limit):
                    dropped_bodies.append((doc_id, rev))
            leaf_revs = R.sorted_leaves(state.tree)
            winner_rev = leaf_revs[0]
            deleted = state.tree[winner_rev].deleted
            seq += 1
            rows.append((doc_id, seq, winner_rev, int(deleted),
                         _dumps(sorted(leaf_revs)) if len(leaf_revs) > 1 else "",
                         _dumps(R.tree_to_json(state.tree))))
            projected.append((doc_id, winner_rev, deleted))
        # A body is kept only while its rev is in the tree; stemmed revs lose theirs.
        kept = [(d, r, b) for d, r, b, _ in new_bodies if r in touched[d].tree]
        conn.execute("DELETE FROM document WHERE id IN (SELECT value FROM json_each(?))",
                     (_dumps(list(touched)),))
        conn.executemany(
            "INSERT INTO document (id, seq, rev, deleted, leaves, tree) VALUES (?,?,?,?,?,?)",
            rows)
        conn.executemany(
            "INSERT OR REPLACE INTO revision (doc_id, rev, body) VALUES (?,?,?)", kept)
        if dropped_bodies:
            conn.executemany("DELETE FROM revision WHERE doc_id = ? AND rev = ?", dropped_bodies)
        if self.projections:
            docs = self._projection_docs(
                projected, {(d, r): body for d, r, _, body in new_bodies if r in touched[d].tree})
            announce = []
            for projection in self.projections:
                announce.extend(projection.apply(self.db, docs) or ())
            if announce:
                seq = self._reannounce(conn, announce, touched, seq)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'update_seq'", (str(seq),))
        return seq

    @staticmethod
    def _reannounce(conn, doc_ids, touched, seq):
        """Give ``doc_ids`` (not in ``touched``) new sequences, then move ``touched`` after."""
        moved = False
        for doc_id in dict.fromkeys(doc_ids):
            if doc_id in touched:
                continue
            cursor = conn.execute("UPDATE document SET seq = ? WHERE id = ?", (seq + 1, doc_id))
            if cursor.rowcount:
                seq += 1
                moved = True
        if moved:
            for doc_id in touched:
                seq += 1
                conn.execute("UPDATE document SET seq = ? WHERE id = ?", (seq, doc_id))
        return seq

    def _projection_docs(self, projected, fresh_bodies):
        """``[(doc_id, winner_doc_or_None)]`` for the projections.

        :param fresh_bodies: ``{(doc_id, rev): body}`` of the bodies this write holds
            decoded already: a winner among them is a shallow copy of it (the
            projections only read), any other winner is read from the store.
        """
        docs = []
        for doc_id, rev, deleted in projected:
            if deleted:
                docs.append((doc_id, None))
                continue
            body = fresh_bodies.get((doc_id, rev))
            if body is not None:
                doc = dict(body)
            else:
                doc = json.loads(self._bodies(doc_id, [rev]).get(rev, "{}"))
            doc["_id"], doc["_rev"] = doc_id, rev
            docs.append((doc_id, doc))
        return docs

    def reindex(self, batch_size=1000, progress=None):
        """Rebuild every projection from the documents; returns the number of documents read."""
        done = 0
        with self.db.atomic():
            for projection in self.projections:
                projection.reset(self.db)
            last_id = ""
            while True:
                chunk = self.db.execute_sql(
                    "SELECT id, rev, deleted FROM document WHERE id > ? ORDER BY id LIMIT ?",
                    (last_id, batch_size)).fetchall()
                if not chunk:
                    break
                docs = self._projection_docs([(d, r, bool(x)) for d, r, x in chunk], {})
                for projection in self.projections:
                    # A rebuild re-announces nothing: no reader's scope changed.
                    projection.apply(self.db, docs)
                done += len(chunk)
                last_id = chunk[-1][0]
                if progress:
                    progress(done)
        return done

    # -- _local documents ----------------------------------------------------------------

    def get_local(self, local_id, *, owner=LOCAL_OPERATOR):
        """Read ``_local/{local_id}`` of ``owner``; raises NotFound.

        Every caller of ``/db`` has its own ``_local`` documents (``owner`` names it, see
        ``couch.local_owner``): one node's checkpoint is never another's to read or move.
        The node itself (syncd's side of its checkpoints) is ``LOCAL_OPERATOR``.
        """
        row = self.db.execute_sql(
            "SELECT rev, body FROM local_doc WHERE owner = ? AND id = ?",
            (owner, local_id)).fetchone()
        if row is None:
            raise errors.NotFound("missing")
        doc = {"_id": f"_local/{local_id}", "_rev": f"0-{row[0]}"}
        doc.update(json.loads(row[1]))
        return doc

    def put_local(self, local_id, doc, *, owner=LOCAL_OPERATOR):
        """Write ``_local/{local_id}`` of ``owner``; never replicated, never in the changes feed.

        As in CouchDB 3 the new rev is the given one plus one, without conflict check.
        :returns: the new rev ``0-N``.
        """
        if not isinstance(doc, dict):
            raise errors.BadRequest("Document must be a JSON object")
        given = doc.get("_rev")
        previous = 0
        if given is not None:
            pos, _, number = str(given).partition("-")
            if not number.isascii() or not number.isdigit() or len(number) > 19 or \
                    int(number) > MAX_LOCAL_REV:
                raise errors.BadRequest("Invalid rev format")
            previous = int(number)
        body = {k: v for k, v in doc.items() if k not in ("_id", "_rev")}
        try:
            body_json = _dumps(body)
            size = len(body_json.encode("utf-8"))
        except (UnicodeEncodeError, RecursionError):
            # A lone surrogate (or a body nested too deep) cannot be stored as UTF-8 JSON.
            raise errors.BadRequest("invalid UTF-8 JSON") from None
        if size > self.max_document_size:
            raise errors.DocumentTooLarge("")
        if doc.get("_deleted") is True:
            self.delete_local(local_id, owner=owner)
            return "0-0"
        rev = previous + 1
        with failures.guarded("a _local document write"), self.db.atomic():
            self.db.execute_sql(
                "INSERT OR REPLACE INTO local_doc (owner, id, rev, body) VALUES (?, ?, ?, ?)",
                (owner, local_id, rev, body_json))
        return f"0-{rev}"

    def delete_local(self, local_id, *, owner=LOCAL_OPERATOR):
        """Remove ``_local/{local_id}`` of ``owner``; raises NotFound when absent."""
        with failures.guarded("a _local document removal"), self.db.atomic():
            cursor = self.db.execute_sql(
                "DELETE FROM local_doc WHERE owner = ? AND id = ?", (owner, local_id))
            if cursor.rowcount == 0:
                raise errors.NotFound("missing")

    # -- statistics -----------------------------------------------------------------------

    def doc_count(self):
        """Number of live documents."""
        return self.db.execute_sql("SELECT COUNT(*) FROM document WHERE deleted = 0").fetchone()[0]

    # -- purge (retention; added by the recovery work) ------------------------------------

    def purge(self, doc_ids, *, also=None):
        """Remove ``doc_ids`` and every revision of theirs from this store only.

        As CouchDB's ``_purge``: no tombstone is written and the sequence does not move, so
        nothing of it replicates; peers keep their copies, and this store receives a purged
        document again only when a new revision of it appears on a peer's feed after the
        checkpoint. In one transaction with it, every projection is told each purged
        document is gone (``apply`` with None) and ``also(db, purged_ids)`` runs (for the
        query tables that do not drop a row on a missing document). ``purge_seq`` in the
        meta table counts the documents purged.

        :returns: the ids among ``doc_ids`` that were held (and are purged now).
        """
        wanted = _dumps(list(dict.fromkeys(doc_ids)))
        with failures.guarded("a purge"), self.db.atomic():
            conn = self.db.connection()
            held = [row[0] for row in conn.execute(
                "SELECT id FROM document WHERE id IN (SELECT value FROM json_each(?))",
                (wanted,)).fetchall()]
            if not held:
                return []
            listed = _dumps(held)
            conn.execute("DELETE FROM revision WHERE doc_id IN "
                         "(SELECT value FROM json_each(?))", (listed,))
            conn.execute("DELETE FROM document WHERE id IN (SELECT value FROM json_each(?))",
                         (listed,))
            gone = [(doc_id, None) for doc_id in held]
            for projection in self.projections:
                projection.apply(self.db, gone)
            if also is not None:
                also(self.db, held)
            self._meta_default("purge_seq", "0")
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? "
                         "WHERE key = 'purge_seq'", (len(held),))
        logger.info("purged %d documents from %s", len(held), self.path)
        return held


_ERROR_CLASSES = {cls.error: cls for cls in (
    errors.BadRequest, errors.InvalidDocId, errors.DocValidation, errors.Conflict,
    errors.Forbidden, errors.NotFound, errors.DocumentTooLarge, errors.Unauthorized)}


def _error_entry(doc_id, exc):
    if isinstance(exc, R.InvalidRev):
        exc = errors.BadRequest("Invalid rev format")
    return {"id": doc_id, "error": exc.error, "reason": exc.reason}
