"""SQLite connections: one place for every pragma the store relies on."""

import logging

from peewee import DatabaseProxy, SqliteDatabase

logger = logging.getLogger(__name__)

#: The node's database for the web app's models; the factory binds it with ``init_app``.
database = DatabaseProxy()

PRAGMAS = {
    "journal_mode": "wal",
    # WAL with synchronous=NORMAL is durable against process crashes (kill -9); only an OS
    # crash can lose the last transactions, never corrupt the file.
    "synchronous": "normal",
    "foreign_keys": 1,
    "busy_timeout": 30000,
    # 8 MiB of page cache per connection (serve and syncd each hold several): a village
    # PC's whole catalog and cases fit, and taking in a release does not grow the process.
    "cache_size": -8000,
    "temp_store": "memory",
}


def open_database(path):
    """Open a peewee SQLite database at ``path`` with WAL and the project's pragmas.

    Writers take the lock up front (IMMEDIATE) so that two processes writing the same
    store (serve and syncd) wait on busy_timeout instead of failing to upgrade a lock.
    """
    return SqliteDatabase(str(path), pragmas=PRAGMAS, lock_type="IMMEDIATE")


def init_app(app, store):
    """Bind the app's models to the node store's database."""
    database.initialize(store.db)
