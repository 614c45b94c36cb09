"""Writes the disk refuses (full, I/O error): one clear refusal, nothing half-written.

SQLite answers a full disk with ``SQLITE_FULL`` and may roll the whole transaction back
itself; peewee's own rollback then fails ("cannot rollback - no transaction is
active") and hides the cause. :func:`storage_failure` follows the exception chain to
it, :func:`guarded` turns it into :class:`shared.errors.InsufficientStorage` (or
``StorageFailed``) where the store writes, and :func:`init_app` shows a person the
Chinese message (``/db`` answers CouchDB's ``507 insufficient_storage``, shared/couch.py).
"""

import contextlib
import errno
import logging
import sqlite3

import peewee

from shared import errors

logger = logging.getLogger(__name__)

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _classify(exc):
    if isinstance(exc, errors.StorageFailed):
        return exc
    if isinstance(exc, (sqlite3.Error, peewee.DatabaseError)):
        text = str(exc)
        code = getattr(exc, "sqlite_errorcode", None)
        if "database or disk is full" in text or code == sqlite3.SQLITE_FULL:
            return errors.InsufficientStorage("database or disk is full: nothing was stored")
        if "disk I/O error" in text or (code is not None and (code & 0xFF) == sqlite3.SQLITE_IOERR):
            return errors.StorageFailed("disk I/O error: nothing was stored")
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return errors.InsufficientStorage("no space left on device: nothing was stored")
    return None


def storage_failure(exc):
    """The StorageFailed ``exc`` is, or was caused by (the chain followed), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = _classify(exc)
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def guarded(what):
    """Raise StorageFailed (InsufficientStorage) for a write the disk refused in the block.

    Put it outside the write's ``atomic()``: its rollback's own failure is seen too.
    """
    try:
        yield
    except errors.StorageFailed:
        raise
    except Exception as exc:
        failure = storage_failure(exc)
        if failure is None:
            raise
        logger.error("%s refused by the disk (%s): nothing of it was stored", what, exc)
        raise failure from exc


def _storage_page(exc):
    """A person's page (JSON under /db and /sync) for a write the disk refused."""
    from flask import current_app, request

    from shared.couch import status_of
    from shared.staff import message_page

    failure = storage_failure(exc)
    if failure is None:
        raise exc  # not ours: Flask's own handling (the 500 page) goes on
    logger.error("%s %s: a write refused by the disk (%s)", request.method, request.path, exc)
    status = status_of(failure)
    if request.path == "/db" or request.path.startswith(("/db/", "/sync/")):
        return current_app.json.response({"error": failure.error,
                                          "reason": failure.reason}), status
    return message_page(status, "未能保存", failure.message)


def init_app(app):
    """Answer every write the disk refused with its message, wherever it was raised."""
    for kind in (errors.StorageFailed, peewee.DatabaseError, sqlite3.Error, OSError):
        app.register_error_handler(kind, _storage_page)
