"""The store's schema version, and upgrading a store made by an older release.

The version lives in SQLite's own header field ``PRAGMA user_version`` (not in a table):
it can be read before any table exists, it is part of the file a backup copies, and
setting it inside a transaction commits or rolls back with that transaction.

* ``SCHEMA_VERSION`` is the version this code creates and expects. Version 1 is the
  schema the releases before versioning created; they left ``user_version`` at 0, so an
  unversioned store that has the store's own tables is read as version 1 (an
  *unversioned* store: it gets the pre-upgrade copy and its version stamped).
* ``MIGRATIONS[n]`` turns version ``n`` into ``n + 1``: a function of the open
  ``sqlite3`` connection, run inside the upgrade's one ``BEGIN IMMEDIATE`` transaction
  (every step and the new version commit together, or nothing does). A step sees the
  old schema: it runs before the tables of the current code are created (``CREATE TABLE
  IF NOT EXISTS`` everywhere, which then finds them).
* Before any step, the store is copied with SQLite's online backup API into
  ``<node dir>/backups/pre-upgrade-v<old>-<UTC time>.sqlite`` (``v0``: unversioned).
* A store with a version above ``SCHEMA_VERSION`` is refused and left untouched.
* :func:`prepare` also runs ``PRAGMA quick_check``: a damaged file stops the node with
  how to restore it instead of failing later on some page.
"""

import logging
import os
import sqlite3
from pathlib import Path

from shared import clock
from shared.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The schema version this code creates and reads.
SCHEMA_VERSION = 1
#: The version an unversioned store (``user_version`` 0, made before versioning) is read as.
BASELINE_VERSION = 1
#: ``{n: step}``: the step that turns a version-``n`` store into version ``n + 1``.
MIGRATIONS = {}
#: Tables every store has had since the first release: an unversioned file with tables
#: but none of these is not a tongban store.
CORE_TABLES = ("document", "revision", "local_doc", "meta")
#: Where the pre-upgrade copies go, under the node directory (the store's directory).
BACKUP_DIR = "backups"
#: Seconds to wait for another process (serve beside syncd) holding the write lock.
LOCK_TIMEOUT = 30.0
#: What a damaged store's message tells the operator to do.
RESTORE_HINT = ("请停止本站，用最近的备份恢复：tongban restore BACKUP DIR（见 docs/operations.md）"
                " / stop the station and restore the latest backup: tongban restore BACKUP DIR")


class StoreUnusable(ConfigurationError):
    """The node cannot start on this store (damaged, too new, not a store, upgrade failed).

    A :class:`ConfigurationError`: the CLI reports it in one line and exits non-zero.
    """


class StoreDamaged(StoreUnusable):
    """``PRAGMA quick_check`` found the store's file damaged."""


class StoreTooNew(StoreUnusable):
    """The store was made by a release newer than this code."""


class UpgradeFailed(StoreUnusable):
    """A migration step failed: the store was left as it was."""


def _is_special(path):
    text = str(path)
    return not text or text.startswith((":", "file:"))


def _connect(path):
    conn = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT, isolation_level=None)
    return conn


def _tables(conn):
    return {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}


def _version(conn):
    return conn.execute("PRAGMA user_version").fetchone()[0]


def quick_check(conn, path):
    """Raise StoreDamaged unless ``PRAGMA quick_check`` finds the file sound."""
    try:
        rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        rows = [str(exc)]
    if rows != ["ok"]:
        logger.error("store %s is damaged (quick_check: %s); restore it from a backup",
                     path, "; ".join(rows))
        raise StoreDamaged(f"数据库文件已损坏 / the store is damaged: {path}"
                           f"（{rows[0].splitlines()[-1][:200]}）。{RESTORE_HINT}")


def prepare(path, *, check=True):
    """Make ``path`` ready for this code before the store opens it.

    A new (absent or empty) store is stamped ``SCHEMA_VERSION``. An existing one is
    checked (``quick_check`` unless ``check`` is false), then: its version is current
    → nothing; newer → :class:`StoreTooNew`, the file untouched; older or unversioned →
    backed up, migrated in one transaction and stamped.

    :returns: the path of the pre-upgrade copy, or None when none was needed.
    :raises StoreUnusable: (its subclasses) with a message for the operator.
    """
    if _is_special(path):
        return None
    path = Path(path)
    fresh = not path.exists() or path.stat().st_size == 0
    try:
        conn = _connect(path)
    except sqlite3.Error as exc:
        raise StoreUnusable(f"无法打开数据库 / cannot open the store {path}: {exc}") from None
    try:
        if not fresh and check:
            quick_check(conn, path)
        try:
            return _prepare(conn, path)
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc) or "not a database" in str(exc):
                raise StoreDamaged(f"数据库文件已损坏 / the store is damaged: {path}（{exc}）。"
                                   f"{RESTORE_HINT}") from None
            raise
    finally:
        conn.close()


def _prepare(conn, path):
    found = _recorded(conn, path)
    if found == SCHEMA_VERSION:
        return None
    # The write lock first: serve and syncd starting together upgrade once, and nobody
    # writes between the copy and the migration.
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _recorded(conn, path)
        if found is None:  # a new store: made by this code, so current from the start
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            return None
        if found == SCHEMA_VERSION:  # another process upgraded it meanwhile
            conn.execute("COMMIT")
            return None
        recorded = _version(conn)
        try:
            copy = backup_copy(path, recorded)
        except (OSError, sqlite3.Error) as exc:
            raise UpgradeFailed(f"无法保存升级前的副本（{exc}），数据库没有改动：请检查磁盘空间 / "
                                f"cannot copy the store before upgrading it: {exc}") from exc
        logger.info("store %s: schema version %s, upgrading to %s (copy before: %s)",
                    path, recorded or "unversioned", SCHEMA_VERSION, copy)
        version = max(recorded, BASELINE_VERSION)
        try:
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            logger.error("store %s: upgrade from version %s to %s failed, nothing changed "
                         "(%s); the copy before the upgrade is %s", path, version,
                         version + 1, exc, copy)
            raise UpgradeFailed(
                f"数据库升级失败（版本 {version} → {version + 1}）：{exc}。数据库没有改动；"
                f"升级前的副本：{copy} / upgrading the store failed, it was left as it "
                "was") from exc
        logger.info("store %s upgraded to schema version %s", path, SCHEMA_VERSION)
        return copy
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _recorded(conn, path):
    """The version the store is at (unversioned read as the baseline), None for a new one.

    :raises StoreTooNew, StoreUnusable:
    """
    version = _version(conn)
    if version > SCHEMA_VERSION:
        logger.error("store %s has schema version %s, newer than this release knows (%s): "
                     "upgrade tongban before starting this node", path, version,
                     SCHEMA_VERSION)
        raise StoreTooNew(f"此数据库由更新版本的通办创建（版本 {version}），请升级通办后再启动 / "
                          f"{path} was made by a newer tongban (schema version {version}; "
                          f"this release knows up to {SCHEMA_VERSION})")
    if version:
        return version
    tables = _tables(conn)
    if not tables:
        return None
    if not tables.intersection(CORE_TABLES):
        # Some other program's database: opening it would add our tables to it.
        raise StoreUnusable(f"{path} 不是通办的数据库 / is not a tongban store "
                            f"(none of the tables {', '.join(CORE_TABLES)})")
    return 0


def backup_copy(path, version):
    """Copy the store at ``path`` (online, consistent) into its node's backups directory.

    Another connection reads while the caller holds the write lock: nothing changes
    during the copy. The copy is written beside, then renamed, readable by the owner only.
    :returns: the copy's path.
    """
    directory = Path(path).parent / BACKUP_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    stamp = clock.utcnow().strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"pre-upgrade-v{version}-{stamp}.sqlite"
    serial = 1
    while target.exists():  # two upgrades in one second never overwrite a copy
        serial += 1
        target = directory / f"pre-upgrade-v{version}-{stamp}-{serial}.sqlite"
    partial = target.with_name(target.name + ".partial")
    source = _connect(path)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        copy = sqlite3.connect(str(partial))
        try:
            source.backup(copy)
        finally:
            copy.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    os.replace(partial, target)
    return target


def version_of(path):
    """The schema version recorded in the store at ``path`` (0: unversioned)."""
    conn = _connect(path)
    try:
        return _version(conn)
    finally:
        conn.close()
