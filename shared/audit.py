"""The audit log of staff views of personal data: hash-chained, keyed, local to one node.

Every time staff see a person's data, one entry is appended to ``audit_log``. Each entry
carries an HMAC over the previous entry's MAC and its own fields, so an edited, removed,
inserted or reordered entry breaks the chain at that entry. The HMAC key is derived from a
secret in the node's ``secrets.json``, outside the database: whoever can edit only the
SQLite file cannot write a chain that verifies.

Removing the newest entries leaves a chain that is still intact, so the head (last seq and
MAC) is kept twice, each with its own HMAC: in the ``audit_head`` row and in the file
``audit-head.json`` next to the store. Restoring an old head row does not help an
attacker: the file still names the newer head. The log is never replicated.
"""

import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import clock, errors, identity

logger = logging.getLogger(__name__)

HEAD_FILE = "audit-head.json"
SECRET_NAME = "audit_key"
KEY_INFO = b"tongban-audit-v1"
#: What the first entry chains to.
GENESIS = "0" * 64
#: Problems listed by ``verify`` before it only counts the rest (a wrong key breaks all).
MAX_PROBLEMS = 100
#: Seconds after which a lock on secrets.json is taken to be left by a crashed process.
STALE_LOCK_SECONDS = 30.0

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        staff TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev TEXT NOT NULL,
        mac TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_log_subject ON audit_log (subject, seq)",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        mac TEXT NOT NULL,
        tag TEXT NOT NULL
    )""",
]


class AuditReport(NamedTuple):
    """What ``verify`` found: ``problems`` name the entries (English, for the CLI)."""

    ok: bool
    entries: int
    problems: list


def create_tables(db):
    """Create the audit tables in ``db`` (a peewee SqliteDatabase) when they are absent."""
    with db.atomic():
        for statement in SCHEMA:
            db.execute_sql(statement)


# -- the key ---------------------------------------------------------------------------

def derive_key(secret):
    """The HMAC key of the log, derived from the node's audit secret (bytes or base64)."""
    if isinstance(secret, str):
        secret = identity.unb64(secret)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(secret)


def audit_key_of(node_dir, create=True):
    """The node's audit HMAC key; its secret is made (and saved) on first use.

    :param create: when False, return None instead of making a secret the node lacks.
    :raises ConfigurationError: ``secrets.json`` is unreadable or its audit secret malformed.
    """
    secret = identity.load_secrets(node_dir).get(SECRET_NAME)
    if not secret and create:
        with _secrets_lock(node_dir):
            # Read again under the lock: another process may have made it meanwhile.
            secrets = identity.load_secrets(node_dir)
            secret = secrets.get(SECRET_NAME)
            if not secret:
                secret = identity.b64(os.urandom(32))
                identity.save_secrets(node_dir, {**secrets, SECRET_NAME: secret})
                logger.info("made the audit key of %s", node_dir)
    if not secret:
        return None
    try:
        return derive_key(secret)
    except ValueError as exc:
        raise errors.ConfigurationError(
            f"the {SECRET_NAME} in {Path(node_dir) / identity.SECRETS_FILE} is malformed: "
            f"{exc}") from exc


@contextlib.contextmanager
def _secrets_lock(node_dir, timeout=10.0):
    """Hold ``secrets.json.lock`` so that two processes never make two different keys."""
    path = Path(node_dir) / (identity.SECRETS_FILE + ".lock")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            if _stale(path) or time.monotonic() > deadline:
                logger.warning("removing the lock %s (left by a crashed process?)", path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                time.sleep(0.05)
    try:
        yield
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _stale(path):
    try:
        return time.time() - path.stat().st_mtime > STALE_LOCK_SECONDS  # real time: an mtime
    except FileNotFoundError:
        return False


class _BesideDb:
    """The default head file: whatever lies beside the database file."""

    def __repr__(self):
        return "BESIDE_DB"


#: ``head_file`` default: ``audit-head.json`` next to the database file (the node dir).
BESIDE_DB = _BesideDb()


def head_file_of(db):
    """Where the second copy of the head of ``db``'s log is kept: ``audit-head.json``
    next to the SQLite file, i.e. in the node directory; None for an in-memory database."""
    name = getattr(db, "database", None)
    if not name or name == ":memory:" or str(name).startswith("file::memory:"):
        return None
    return Path(name).parent / HEAD_FILE


def _head_path(db, head_file):
    return head_file_of(db) if head_file is BESIDE_DB else head_file


# -- MACs ------------------------------------------------------------------------------

def _entry_mac(key, prev, seq, at, staff, action, subject, detail):
    message = str(prev).encode("utf-8") + b"\n" + identity.canonical_json(
        [seq, at, staff, action, subject, detail])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _head_tag(key, seq, mac):
    return hmac.new(key, f"audit-head\n{seq}\n{mac}".encode("utf-8"),
                    hashlib.sha256).hexdigest()


def _same(a, b):
    return hmac.compare_digest(str(a).encode("utf-8"), str(b).encode("utf-8"))


# -- writing ---------------------------------------------------------------------------

def _format_at(at):
    if at is None:
        at = clock.utcnow()
    if isinstance(at, str):
        return at
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.timezone.utc)  # naive times are taken as UTC
    return at.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds")


def record(db, key, staff, action, subject, detail=None, at=None, head_file=BESIDE_DB):
    """Append one entry (staff ``staff`` did ``action`` on ``subject``); returns its seq.

    The entry, the head row and the head file are written under the database's write
    lock, so concurrent writers (threads of serve, the CLI) chain one after the other. A
    head file that cannot be written fails the whole append: a view that cannot be
    audited must not happen.

    :param detail: a JSON-able dict (what was shown, the case …).
    :param at: a ``datetime`` or ISO text; now (UTC) by default.
    :param head_file: the head file's path; by default ``audit-head.json`` next to the
        database file; None writes only the head row.
    """
    for name, value in (("staff", staff), ("action", action), ("subject", subject)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"an audit entry needs a non-empty {name}")
    at_text = _format_at(at)
    head_file = _head_path(db, head_file)
    detail_text = identity.canonical_json({} if detail is None else detail).decode("utf-8")
    with db.atomic():
        create_tables(db)
        last = db.execute_sql(
            "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        mac = _entry_mac(key, prev, seq, at_text, staff, action, subject, detail_text)
        db.execute_sql(
            "INSERT INTO audit_log (seq, at, staff, action, subject, detail, prev, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at_text, staff, action, subject, detail_text, prev, mac))
        tag = _head_tag(key, seq, mac)
        db.execute_sql("INSERT OR REPLACE INTO audit_head (id, seq, mac, tag) "
                       "VALUES (1, ?, ?, ?)", (seq, mac, tag))
        if head_file is not None:
            _write_head_file(head_file, {"seq": seq, "mac": mac, "tag": tag, "at": at_text})
    return seq


def _write_head_file(path, head):
    """Replace the head file in one step, readable by its owner only."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(head, handle)
        handle.flush()
        # On disk before the rename: a power cut must not leave an empty head file, which
        # verify would report as tampering.
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# -- reading ---------------------------------------------------------------------------

def _has_log(db):
    row = db.execute_sql("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                         "name IN ('audit_log', 'audit_head')").fetchone()
    return row[0] == 2


def entries(db, subject=None, limit=100):
    """The newest entries first, of one ``subject`` or all: dicts with ``detail`` parsed."""
    if not _has_log(db):
        return []
    sql = "SELECT seq, at, staff, action, subject, detail FROM audit_log"
    params = []
    if subject is not None:
        sql += " WHERE subject = ?"
        params.append(subject)
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(int(limit))
    found = []
    for seq, at, staff, action, subject_, detail in db.execute_sql(sql, params):
        try:
            detail = json.loads(detail)
        except (TypeError, ValueError):
            pass  # shown as stored; verify reports the entry
        found.append({"seq": seq, "at": at, "staff": staff, "action": action,
                      "subject": subject_, "detail": detail})
    return found


class _Problems:
    """The problems found, the first ``MAX_PROBLEMS`` in words, the rest counted."""

    def __init__(self):
        self.listed = []
        self.more = 0

    def add(self, message):
        if len(self.listed) < MAX_PROBLEMS:
            self.listed.append(message)
        else:
            self.more += 1

    def __bool__(self):
        return bool(self.listed)

    def as_list(self):
        if self.more:
            return [*self.listed, f"... and {self.more} more problems"]
        return list(self.listed)


def _span(first, last):
    return f"entry {first}" if first == last else f"entries {first}-{last}"


def verify(db, key, head_file=BESIDE_DB):
    """Check the whole chain, the head row and the head file (None: not the file).

    Runs under the database's write lock, so no entry is appended between reading the
    log and reading the head file.

    :param key: the node's audit key (``audit_key_of``); None when the node has none.
    :returns: ``AuditReport(ok, entries, problems)``.
    """
    problems = _Problems()
    head_file = _head_path(db, head_file)
    with db.atomic():
        if _has_log(db):
            count, last = _check_chain(db, key, problems)
            head_row = db.execute_sql("SELECT seq, mac, tag FROM audit_head "
                                      "WHERE id = 1").fetchone()
        else:
            count, last, head_row = 0, (0, GENESIS), None
        if key is None:
            if count or head_row or (head_file is not None and Path(head_file).exists()):
                problems.add(f"no {SECRET_NAME} in {identity.SECRETS_FILE}: the log "
                             f"cannot be checked")
        else:
            _check_head("audit head row", head_row, key, last, count, problems)
            if head_file is not None:
                _check_head(f"head file {Path(head_file).name}", _read_head_file(
                    head_file, problems), key, last, count, problems)
    report = AuditReport(not problems, count, problems.as_list())
    if not report.ok:
        logger.warning("audit log: %d problem(s), first: %s", len(report.problems),
                       report.problems[0])
    return report


def _check_chain(db, key, problems):
    """Walk the entries in seq order; returns ``(count, (last seq, last MAC))``."""
    count, expected, prev_mac = 0, 1, GENESIS
    cursor = db.execute_sql("SELECT seq, at, staff, action, subject, detail, prev, mac "
                            "FROM audit_log ORDER BY seq")
    for seq, at, staff, action, subject, detail, prev, mac in cursor:
        count += 1
        if seq != expected:
            if seq < expected:
                problems.add(f"entry {seq}: seq out of range (a log starts at 1)")
            elif expected == 1:
                problems.add(f"{_span(1, seq - 1)} missing (the log starts at {seq})")
            else:
                problems.add(f"{_span(expected, seq - 1)} missing (seq gap after "
                             f"{expected - 1}: next is {seq})")
        elif not _same(prev, prev_mac):
            # After a gap the MAC it should follow is gone; the gap is the message then.
            problems.add(f"entry {seq}: does not follow entry {seq - 1} (reordered, "
                         f"inserted or its prev edited)")
        if key is not None:
            try:
                good = _same(mac, _entry_mac(key, prev, seq, at, staff, action, subject,
                                             detail))
            except (TypeError, ValueError):
                good = False
            if not good:
                problems.add(f"entry {seq}: MAC does not match (edited)")
        expected, prev_mac = seq + 1, mac
    return count, (expected - 1, prev_mac)


def _read_head_file(path, problems):
    """``(seq, mac, tag)`` of the head file; None when absent, False when unreadable."""
    path = Path(path)
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        return int(head["seq"]), str(head["mac"]), str(head["tag"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        problems.add(f"head file {path.name}: unreadable ({type(exc).__name__}: {exc})")
        return False


def _check_head(label, head, key, last, count, problems):
    """Compare one copy of the head with the last entry of the chain."""
    if head is False:
        return  # unreadable, already reported
    last_seq, last_mac = last
    if head is None:
        if count:
            problems.add(f"{label} is missing (the log has {count} entries)")
        return
    seq, mac, tag = head
    try:
        tagged = _same(tag, _head_tag(key, seq, mac))
    except (TypeError, ValueError):
        tagged = False
    if not tagged:
        problems.add(f"{label}: MAC does not match (edited)")
    elif seq > last_seq:
        problems.add(f"{_span(last_seq + 1, seq)} missing ({label} says {seq})")
    elif seq < last_seq:
        problems.add(f"{label} says {seq} but the log goes to {last_seq} (an old head "
                     f"put back, or entries added after it)")
    elif not _same(mac, last_mac):
        problems.add(f"entry {seq}: not the entry the {label} records (replaced)")


# -- one node --------------------------------------------------------------------------

def verify_node(node_dir, db):
    """Verify the log of the node at ``node_dir`` whose store database is ``db``.

    Makes no key: a node that has none and no log is intact with 0 entries.
    """
    return verify(db, audit_key_of(node_dir, create=False))


class NodeAudit:
    """The audit log of one node: its database, its key and its head file together.

    :param node_dir: the node directory (``app.config["NODE_DIR"]``).
    :param db: the store's peewee database (``store.db``).
    """

    def __init__(self, node_dir, db):
        self.node_dir = Path(node_dir)
        self.db = db
        self.key = audit_key_of(node_dir)
        self.head_file = head_file_of(db)

    def record(self, staff, action, subject, detail=None, at=None):
        """Append one entry; returns its seq (see ``record``)."""
        return record(self.db, self.key, staff, action, subject, detail, at,
                      head_file=self.head_file)

    def verify(self):
        """``verify`` with this node's key and head file."""
        return verify(self.db, self.key, self.head_file)

    def entries(self, subject=None, limit=100):
        """The newest entries first (see ``entries``)."""
        return entries(self.db, subject, limit)
