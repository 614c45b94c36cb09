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
import math
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

from werkzeug.exceptions import TooManyRequests

from shared import errors, models

logger = logging.getLogger(__name__)

REALM = "tongban"
BAD_CREDENTIALS = "Name or password is incorrect."
REPLICATOR_ROLE = "replicator"
THROTTLED = "密码错误次数过多，请 {minutes} 分钟后再试"
BUSY = "同时核对的登录过多，请稍后再试"


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
        self._verifying = {}

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

    @contextmanager
    def verifying(self, username, password):
        """Hold the one check of these credentials: concurrent requests carrying the same
        name and password wait here for the first one's check, then find it remembered
        (so a client opening many connections at once costs one scrypt, not one each)."""
        key = self._key(username, password)
        with self._lock:
            held = self._verifying.get(key)
            if held is None:
                held = self._verifying[key] = [threading.Lock(), 0]
            held[1] += 1
        try:
            with held[0]:
                yield
        finally:
            with self._lock:
                held[1] -= 1
                if held[1] == 0:
                    self._verifying.pop(key, None)


class Throttled(TooManyRequests):
    """Too many failed Basic logins of an account or from an address: refused unchecked.

    A werkzeug HTTP error, so that /db answers it in CouchDB's form (429
    ``too_many_requests``) like its other HTTP-level errors.
    """

    def __init__(self, retry_after, reason=None):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(reason or THROTTLED.format(minutes=max(1, math.ceil(seconds / 60))),
                         retry_after=seconds)


class FailureThrottle:
    """Failed password checks per account and per client address, in memory and bounded.

    ``begin(keys)`` before a check, ``finish(keys, ok)`` after it. Once ``limit`` failures
    of a key fall within ``window`` seconds the key is locked for ``lockout`` seconds:
    ``begin`` refuses at once (no scrypt). Checks in progress count towards the limit, so
    that 64 parallel guesses cannot all be checked before the first failure is counted.
    A success clears the account's failures and remembers the (account, address) pair:
    an address that logged in to an account before is not locked out by failures of that
    account elsewhere (only by its own), so guessing cannot lock out a known client.

    :param max_keys: keys (and known pairs) kept, least recently used dropped first.
    :param clock: seconds for durations (``time.monotonic``).
    """

    def __init__(self, limit=10, window=300.0, lockout=300.0, max_keys=4096,
                 clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [window start, failures, checks in progress, locked until]
        self._entries = OrderedDict()
        self._known = OrderedDict()

    @staticmethod
    def keys(username, address):
        """The keys one attempt counts against (the account's only when it exists)."""
        keys = [("address", address or "")]
        if username is not None:
            keys.append(("account", username))
        return keys

    def _entry(self, key, now):
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = [now, 0, 0, 0.0]
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        if entry[3] and entry[3] <= now:
            entry[1], entry[3], entry[0] = 0, 0.0, now  # the lock is over
        elif not entry[3] and now - entry[0] >= self.window:
            entry[0], entry[1] = now, 0  # a new window
        return entry

    def _exempt(self, key, keys):
        """An account's lock does not apply at an address that logged in to it before."""
        if key[0] != "account":
            return False
        address = next((k[1] for k in keys if k[0] == "address"), None)
        return (key[1], address) in self._known

    def begin(self, keys):
        """Reserve a check for ``keys``.

        :raises Throttled: a key is locked, or its failures and checks in progress
            reach the limit.
        """
        now = self.clock()
        with self._lock:
            entries = [(key, self._entry(key, now)) for key in keys]
            for key, entry in entries:
                if self._exempt(key, keys):
                    continue
                if entry[3] > now:
                    raise Throttled(entry[3] - now)
                if entry[1] + entry[2] >= self.limit:
                    # Only checks in progress make up the difference: they end soon.
                    raise Throttled(1, BUSY)
            for _, entry in entries:
                entry[2] += 1

    def finish(self, keys, ok, username=None):
        """End a check begun with ``begin(keys)``: count a failure, or clear the account."""
        now = self.clock()
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    continue  # dropped from the table meanwhile
                entry[2] = max(0, entry[2] - 1)
                if ok:
                    if key[0] == "account":
                        entry[0], entry[1], entry[3] = now, 0, 0.0
                    continue
                if entry[1] == 0:
                    entry[0] = now  # the window starts at its first failure
                entry[1] += 1
                if entry[1] >= self.limit and not entry[3] > now:
                    entry[3] = now + self.lockout
                    logger.warning("Basic logins locked for %s s: %s %s after %d failures",
                                   self.lockout, key[0], key[1], entry[1])
            if ok and username is not None:
                address = next((k[1] for k in keys if k[0] == "address"), None)
                self._known[(username, address)] = True
                self._known.move_to_end((username, address))
                while len(self._known) > self.max_keys:
                    self._known.popitem(last=False)

    def clear(self):
        """Forget every failure, lock and known address."""
        with self._lock:
            self._entries.clear()
            self._known.clear()


def basic_credentials(request):
    """``(username, password)`` from an ``Authorization: Basic`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: non-ASCII input
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
    :param throttle: a :class:`FailureThrottle`; by default one made at the first login
        from the app's ``AUTH_FAILURE_LIMIT``, ``AUTH_FAILURE_WINDOW`` and ``AUTH_LOCKOUT``.
    """

    def __init__(self, cache=None, throttle=None):
        self.cache = cache or CredentialCache()
        self.throttle = throttle
        self._throttle_lock = threading.Lock()

    def authenticate(self, request):
        """Check Basic credentials against the node's accounts (scrypt once, then cached)."""
        account = self.authenticate_account(request)
        return Principal(name=account.username, roles=tuple(account.role_list))

    def _failure_throttle(self):
        if self.throttle is None:
            from flask import current_app, has_app_context

            config = current_app.config if has_app_context() else {}
            with self._throttle_lock:
                if self.throttle is None:
                    self.throttle = FailureThrottle(
                        limit=int(config.get("AUTH_FAILURE_LIMIT", 10)),
                        window=float(config.get("AUTH_FAILURE_WINDOW", 300)),
                        lockout=float(config.get("AUTH_LOCKOUT", 300)))
        return self.throttle

    def authenticate_account(self, request):
        """The :class:`~shared.models.Account` whose Basic credentials ``request`` carries.

        Credentials checked recently are remembered (no scrypt); others are checked once
        for all concurrent requests carrying them, and only while the account and the
        address are not throttled.

        :raises Unauthorized: no Basic credentials, a wrong password, or an account
            without the ``replicator`` role.
        :raises Throttled: too many recent failures of the account or from the address
            (the password is not checked).
        """
        credentials = basic_credentials(request)
        if credentials is None:
            raise errors.Unauthorized(BAD_CREDENTIALS)
        username, password = credentials
        account = models.Account.get_or_none(models.Account.username == username)
        stored = account.password_hash if account is not None else None
        if account is None or not self.cache.hit(username, password, stored):
            self._check(request, username, password, account)
        if REPLICATOR_ROLE not in account.role_list:
            raise errors.Unauthorized(BAD_CREDENTIALS)
        return account

    def _check(self, request, username, password, account):
        """Check the password of ``account`` (None: no such account), throttled."""
        address = request.remote_addr
        stored = account.password_hash if account is not None else None
        with self.cache.verifying(username, password):
            if account is not None and self.cache.hit(username, password, stored):
                return  # checked by a concurrent request while this one waited
            throttle = self._failure_throttle()
            keys = throttle.keys(username if account is not None else None, address)
            try:
                throttle.begin(keys)
            except Throttled as exc:
                logger.info("Basic login of %s from %s refused unchecked: throttled",
                            username, address)
                _retry_after(exc.retry_after)
                raise
            ok = False
            try:
                ok = account is not None and models.check_password(stored, password)
            finally:
                throttle.finish(keys, ok, username)
            if not ok:
                logger.info("bad password for %s from %s", username, address)
                raise errors.Unauthorized(BAD_CREDENTIALS)
            self.cache.remember(username, password, stored)

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


def _retry_after(seconds):
    """Send ``Retry-After`` with the answer to the current request (when there is one)."""
    from flask import after_this_request, has_request_context

    if not has_request_context():
        return

    @after_this_request
    def add_header(response):
        response.headers["Retry-After"] = str(seconds)
        return response


def init_app(app, policy=None):
    """Install the policy the /db endpoints use (the default one unless given)."""
    app.extensions["couch_policy"] = policy or ReplicatorPolicy()


def get_policy(app=None):
    """The policy of the current (or given) app."""
    from flask import current_app

    return (app or current_app).extensions["couch_policy"]
