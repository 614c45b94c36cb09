"""Who may use the CouchDB endpoints at ``/db``, and which documents they may read or write.

``couch.py`` asks one policy object, stored in ``app.extensions["couch_policy"]``, three
questions and nothing else:

* ``authenticate(request)`` -> a :class:`Principal`, or raise ``Unauthorized``;
* ``can_read(principal, doc_id)`` -> bool, on every read path (a document the caller
  may not read looks missing: its existence is not revealed);
* ``check_write(principal, doc_id, doc, state)`` -> raise ``Forbidden`` to refuse one
  document; it has the signature of ``Store.bulk_docs(check=...)`` once bound to the
  principal.

The default :class:`ReplicatorPolicy` accepts HTTP Basic for accounts holding the
``replicator`` role and allows every read and write. Node-signed requests and per-node
scopes replace the policy object; couch.py stays as it is.
"""

import abc
import base64
import binascii
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from shared import errors
from shared import models

logger = logging.getLogger(__name__)

REALM = "tongban"
BAD_CREDENTIALS = "Name or password is incorrect."
REPLICATOR_ROLE = "replicator"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller of the CouchDB endpoints.

    :param name: the account name (or, later, a node code).
    :param roles: the roles it holds.
    :param kind: ``"account"`` for HTTP Basic; other schemes name themselves.
    """

    name: str
    roles: tuple = ()
    kind: str = "account"
    attributes: dict = field(default_factory=dict, compare=False, hash=False)


class CredentialCache:
    """Successful password checks, remembered so that scrypt runs once per client.

    Keys are the user name and a salted SHA-256 of the password (the salt is random
    per process, so the cache never holds anything that could be replayed elsewhere).
    An entry remembers the stored hash it was verified against and is ignored once the
    account's hash changes (password reset) or it is older than ``ttl`` seconds.
    """

    def __init__(self, max_size=1024, ttl=300.0, clock=time.monotonic):
        self.max_size = max_size
        self.ttl = ttl
        self.clock = clock
        self._salt = os.urandom(16)
        self._entries = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, username, password):
        digest = hashlib.sha256(self._salt + password.encode("utf-8")).digest()
        return username, digest

    def hit(self, username, password, stored_hash):
        """True when this password was verified against ``stored_hash`` recently."""
        key = self._key(username, password)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            verified_hash, expires = entry
            if verified_hash != stored_hash or expires <= self.clock():
                del self._entries[key]
                return False
            self._entries.move_to_end(key)
            return True

    def remember(self, username, password, stored_hash):
        """Record a successful check of ``password`` against ``stored_hash``."""
        key = self._key(username, password)
        with self._lock:
            self._entries[key] = (stored_hash, self.clock() + self.ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def clear(self):
        """Forget every verification."""
        with self._lock:
            self._entries.clear()


def basic_credentials(request):
    """``(username, password)`` from an ``Authorization: Basic`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep:
        return None
    return username, password


class CouchPolicy(abc.ABC):
    """The interface couch.py relies on; subclasses decide who is who and who sees what."""

    @abc.abstractmethod
    def authenticate(self, request):
        """Identify the caller of ``request``.

        :returns: a :class:`Principal`.
        :raises Unauthorized: no or wrong credentials.
        """

    def challenge_headers(self, request):
        """Headers to add to a 401 answer to ``request`` (``WWW-Authenticate``)."""
        return {}

    def can_read(self, principal, doc_id):
        """True when ``principal`` may read document ``doc_id`` (``_local/`` ids included)."""
        return True

    def check_write(self, principal, doc_id, doc, state):
        """Refuse a write by raising ``Forbidden``.

        :param doc: the incoming document (a dict as sent).
        :param state: the store's loaded state of the document (None for ``_local`` docs).
        :raises Forbidden: ``principal`` may not write this document.
        """

    def read_filter(self, principal):
        """``can_read`` bound to ``principal``: the ``row_filter`` of ``Store.changes``.

        May return None when ``principal`` reads everything (the feed then runs
        unfiltered). A filter may memoise: couch.py makes a new one for each read of
        the feed, so that a longpoll sees documents that became readable while it waited.
        """
        def readable(doc_id):
            return self.can_read(principal, doc_id)
        return readable

    def write_check(self, principal, new_edits=True):
        """``check_write`` bound to ``principal``: the ``check`` of ``Store.bulk_docs``.

        :param new_edits: the mode of the write (a policy may judge a replicated
            revision already held differently from a new edit).
        """
        def check(doc_id, doc, state):
            self.check_write(principal, doc_id, doc, state)
        return check


class ReplicatorPolicy(CouchPolicy):
    """HTTP Basic for accounts with the ``replicator`` role; every document allowed.

    :param cache: a :class:`CredentialCache` (one per process is right).
    """

    def __init__(self, cache=None):
        self.cache = cache or CredentialCache()

    def authenticate(self, request):
        """Check Basic credentials against the node's accounts (scrypt once, then cached)."""
        account = self.authenticate_account(request)
        return Principal(name=account.username, roles=tuple(account.role_list))

    def authenticate_account(self, request):
        """The :class:`~shared.models.Account` whose Basic credentials ``request`` carries.

        :raises Unauthorized: no Basic credentials, a wrong password, or an account
            without the ``replicator`` role.
        """
        credentials = basic_credentials(request)
        if credentials is None:
            raise errors.Unauthorized(BAD_CREDENTIALS)
        username, password = credentials
        account = models.Account.get_or_none(models.Account.username == username)
        if account is None:
            raise errors.Unauthorized(BAD_CREDENTIALS)
        stored = account.password_hash
        if not self.cache.hit(username, password, stored):
            if not models.check_password(stored, password):
                logger.info("bad password for %s from %s", username, request.remote_addr)
                raise errors.Unauthorized(BAD_CREDENTIALS)
            self.cache.remember(username, password, stored)
        if REPLICATOR_ROLE not in account.role_list:
            raise errors.Unauthorized(BAD_CREDENTIALS)
        return account

    def challenge_headers(self, request):
        """Challenge clients other than browser scripts.

        A cross-origin script (PouchDB in a browser sends ``Origin``) that receives a
        Basic challenge makes the browser pop up its own login dialog; CouchDB avoids
        that by not challenging at all. Command-line and server clients get the header.
        """
        if request.headers.get("Origin") or \
                request.headers.get("X-Requested-With") == "XMLHttpRequest":
            return {}
        return {"WWW-Authenticate": f'Basic realm="{REALM}"'}


def init_app(app, policy=None):
    """Install the policy the /db endpoints use (the default one unless given)."""
    app.extensions["couch_policy"] = policy or ReplicatorPolicy()


def get_policy(app=None):
    """The policy of the current (or given) app."""
    from flask import current_app

    return (app or current_app).extensions["couch_policy"]
