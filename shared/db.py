"""SQLite connections: one place for every pragma the store relies on."""

import logging
import os

from peewee import DatabaseProxy, SqliteDatabase

from shared.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The node's database for the web app's models; the factory binds it with ``init_app``.
database = DatabaseProxy()

#: ``synchronous`` for benchmarks only (bench/durability.py compares ``normal`` and
#: ``full``); a station never sets it: the receipt's promise needs ``full``.
SYNCHRONOUS_ENV = "TONGBAN_SQLITE_SYNCHRONOUS"
SYNCHRONOUS_VALUES = ("normal", "full")

PRAGMAS = {
    "journal_mode": "wal",
    # A receipt means durable (DESIGN.md, Operations): under WAL, FULL syncs the WAL at
    # every commit, so a case a clerk has a receipt for survives a power cut or an OS
    # crash. NORMAL only survives a process crash (kill -9): a power cut may lose the
    # last commits. The cost is one fsync per commit (docs/operations.md, bench numbers).
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": 30000,
    # 8 MiB of page cache per connection (serve and syncd each hold several): a village
    # PC's whole catalog and cases fit, and taking in a release does not grow the process.
    "cache_size": -8000,
    "temp_store": "memory",
}


def pragmas():
    """The pragmas of every store connection (``synchronous`` from the benchmark's
    environment variable when it is set).

    :raises ConfigurationError: the variable holds anything but normal or full.
    """
    chosen = dict(PRAGMAS)
    override = os.environ.get(SYNCHRONOUS_ENV, "").strip().lower()
    if override:
        if override not in SYNCHRONOUS_VALUES:
            raise ConfigurationError(
                f"{SYNCHRONOUS_ENV} must be one of {', '.join(SYNCHRONOUS_VALUES)}, "
                f"not {override!r}")
        chosen["synchronous"] = override
    return chosen


def open_database(path):
    """Open a peewee SQLite database at ``path`` with WAL and the project's pragmas.

    Writers take the lock up front (IMMEDIATE) so that two processes writing the same
    store (serve and syncd) wait on busy_timeout instead of failing to upgrade a lock.
    """
    return SqliteDatabase(str(path), pragmas=pragmas(), lock_type="IMMEDIATE")


def init_app(app, store):
    """Bind the app's models to the node store's database."""
    database.initialize(store.db)
