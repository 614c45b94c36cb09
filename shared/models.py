"""Query tables and node-local tables (peewee models on the node's database)."""

import hashlib
import hmac
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from peewee import CharField, DateTimeField, Model, TextField

from shared.db import database

FULL_SCOPE = "*"
ROLES = ("replicator", "clerk", "approver", "supervisor", "county_admin")

# scrypt parameters: ~50 ms per check on the slow village PCs, 16 MiB of memory.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password):
    """A salted, slow hash of ``password`` in the form ``scrypt$N$r$p$salt$hash``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt,
                            n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


#: Password checks run on this many dedicated threads, and nowhere else. Each scrypt takes
#: 16 MiB: 64 request threads checking at once took 64 x 16 MiB; a small fixed pool bounds
#: how many run at once, and so the memory they take (``tongban serve`` also has glibc
#: give each check's block back when it ends: ``serving.return_large_blocks``). serve sets
#: it from ``PASSWORD_CHECK_THREADS``.
PASSWORD_CHECK_THREADS = 2
_checks = None
_checks_lock = threading.Lock()


def set_password_check_threads(count):
    """Run at most ``count`` password checks at once (before the first check)."""
    global PASSWORD_CHECK_THREADS, _checks
    with _checks_lock:
        PASSWORD_CHECK_THREADS = max(1, int(count))
        old, _checks = _checks, None
    if old is not None:
        old.shutdown(wait=False)


def _check_pool():
    global _checks
    with _checks_lock:
        if _checks is None:
            _checks = ThreadPoolExecutor(max_workers=PASSWORD_CHECK_THREADS,
                                         thread_name_prefix="password-check")
        return _checks


def check_password(stored, password):
    """True when ``password`` matches a hash made by ``hash_password``.

    The scrypt runs on the password-check pool (``PASSWORD_CHECK_THREADS`` at once); the
    caller waits for it.
    """
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = _check_pool().submit(
        hashlib.scrypt, password.encode("utf-8"), salt=bytes.fromhex(salt),
        n=int(n), r=int(r), p=int(p)).result()
    return hmac.compare_digest(candidate.hex(), digest)


class BaseModel(Model):
    """Every model lives in the node's database."""

    class Meta:
        database = database


class Account(BaseModel):
    """A login of this node: staff member or replication client. Never replicated."""

    username = CharField(unique=True)
    password_hash = TextField()
    roles = TextField()  # comma-separated, from ROLES
    created = DateTimeField()
    #: What a replicator account may replicate: a node code (exactly what that node
    #: may) or ``*`` (everything). See docs/sync.md, "Scopes".
    scope = CharField(default=FULL_SCOPE)
    #: What citizens read on a case's progress page beside each step.
    full_name = CharField(default="")
    office_phone = CharField(default="")
    #: The staff member's department (parallel handling: who gives which opinion).
    department = CharField(default="")

    @property
    def role_list(self):
        """The account's roles as a list."""
        return [r for r in self.roles.split(",") if r]


MODELS = [Account]


def migrate(db):
    """Bring the tables of a node made by an older version up to the models (idempotent)."""
    columns = {row[1] for row in db.execute_sql("PRAGMA table_info(account)").fetchall()}
    if columns and "scope" not in columns:
        # Accounts made before scopes existed keep seeing everything, as they did.
        db.execute_sql("ALTER TABLE account ADD COLUMN scope VARCHAR(255) NOT NULL "
                       f"DEFAULT '{FULL_SCOPE}'")
    for column in ("full_name", "office_phone", "department"):
        if columns and column not in columns:
            db.execute_sql(f"ALTER TABLE account ADD COLUMN {column} VARCHAR(255) NOT NULL "
                           "DEFAULT ''")
