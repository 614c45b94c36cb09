"""Replication peers: one interface over a local store and a remote CouchDB-protocol database.

The replicator sees only :class:`Peer`; ``LocalPeer`` calls a :class:`~shared.store.store.Store`
in this process, ``HttpPeer`` speaks the CouchDB HTTP API (a tongban node's ``/db``, Apache
CouchDB, PouchDB Server). Every transport failure and HTTP error becomes
:class:`~shared.errors.PeerError` with ``status`` and ``original``; none passes silently.
"""

import abc
import errno
import http.client
import json
import logging
import os
import threading
import urllib.parse

import couchdb.http

from shared import errors

logger = logging.getLogger(__name__)

#: Seconds a socket may stay silent; longer than any longpoll we ask for.
DEFAULT_TIMEOUT = 120.0

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Peer(abc.ABC):
    """One side of a replication: the calls of the CouchDB replication protocol.

    Sequences are opaque: a peer returns them and takes them back, the replicator only
    compares them for equality.
    """

    #: True when calls run in this process and hold the GIL (no network wait to overlap).
    in_process = False

    @abc.abstractmethod
    def identity(self):
        """A stable string naming this database, used in the replication id.

        :returns: the store's uuid for a local peer, the URL without credentials for a remote.
        """

    @abc.abstractmethod
    def info(self):
        """Database information (``GET /db``); also proves the peer is reachable.

        :returns: a dict with at least ``update_seq``.
        :raises PeerError: the database is missing or unreachable.
        """

    @abc.abstractmethod
    def changes(self, since, *, limit=None, doc_ids=None):
        """One batch of the changes feed with ``style=all_docs`` (every leaf of each document).

        :param since: exclusive lower bound, a sequence this peer returned (or 0).
        :param limit: at most this many rows.
        :param doc_ids: only these documents (the ``_doc_ids`` filter), or None.
        :returns: ``(rows, last_seq)``; each row ``{"seq", "id", "changes": [{"rev"}],
            "deleted"?}``.
        :raises PeerError:
        """

    @abc.abstractmethod
    def wait_for_changes(self, since, timeout, *, doc_ids=None):
        """Block until a change after ``since`` exists or ``timeout`` seconds pass (longpoll).

        :returns: True when there may be a change after ``since``.
        :raises PeerError:
        """

    @abc.abstractmethod
    def revs_diff(self, wanted):
        """Which revisions this peer lacks (``POST /db/_revs_diff``).

        :param wanted: ``{doc_id: [rev, ...]}``.
        :returns: ``{doc_id: {"missing": [rev, ...], "possible_ancestors": [...]?}}``.
        :raises PeerError:
        """

    @abc.abstractmethod
    def bulk_get(self, wanted):
        """Read revisions with their history (``POST /db/_bulk_get?revs=true``).

        :param wanted: ``[{"id": doc_id, "rev": rev}, ...]``.
        :returns: one entry per revision found or not: ``{"ok": doc}`` with ``_revisions``,
            or ``{"error": {"id", "rev", "error", "reason"}}``.
        :raises PeerError: the request as a whole failed.
        """

    @abc.abstractmethod
    def bulk_docs(self, docs, *, new_edits=False):
        """Write replicated revisions as given (``POST /db/_bulk_docs``, ``new_edits:false``).

        :param docs: documents with ``_id``, ``_rev`` and ``_revisions``.
        :returns: the failures only: ``[{"id", "rev"?, "error", "reason"}, ...]``.
        :raises PeerError: the request as a whole failed (nothing may have been written).
        """

    @abc.abstractmethod
    def get_local(self, local_id):
        """Read the checkpoint document ``_local/{local_id}``.

        :returns: the document with ``_id`` and ``_rev``, or None when it does not exist.
        :raises PeerError:
        """

    @abc.abstractmethod
    def put_local(self, local_id, doc):
        """Write the checkpoint document ``_local/{local_id}`` (``doc["_rev"]`` as last read).

        :returns: the new ``_rev``.
        :raises PeerError:
        """

    @abc.abstractmethod
    def ensure_full_commit(self):
        """Ask the peer to make every write so far durable (``POST /db/_ensure_full_commit``).

        :raises PeerError:
        """

    def pending(self, since):
        """How many changes follow ``since`` (CouchDB's ``pending``), for status reports.

        :returns: a count, or None when the peer does not say.
        :raises PeerError:
        """
        return None

    def close(self):
        """Release connections or files; the peer is unusable afterwards."""

    def __repr__(self):
        return f"<{type(self).__name__} {self.identity()}>"


class LocalPeer(Peer):
    """A peer over a :class:`~shared.store.store.Store` in this process.

    Store errors are domain errors, not peer failures, except that a refused whole batch
    is reported as PeerError like a remote peer's 400 would be.

    :param store: the node's store.
    :param name: how logs and the replication id name it (default: its uuid).
    """

    in_process = True

    def __init__(self, store, name=None):
        self.store = store
        self.name = name

    def identity(self):
        """The store's uuid (stable for the file's life)."""
        return f"local:{self.store.uuid}"

    def info(self):
        """The store's ``GET /db`` information."""
        return self._call(self.store.info)

    def changes(self, since, *, limit=None, doc_ids=None):
        """The store's changes feed with ``style=all_docs``."""
        return self._call(self.store.changes, since or 0, limit=limit, style="all_docs",
                          doc_ids=doc_ids)

    def wait_for_changes(self, since, timeout, *, doc_ids=None):
        """Wait on the store's update sequence (doc_ids are not looked at: a wake-up may be
        spurious, which only costs one empty changes read)."""
        return self._call(self.store.wait_for_change, since or 0, timeout)

    def revs_diff(self, wanted):
        """The store's ``_revs_diff``."""
        return self._call(self.store.revs_diff, wanted)

    def bulk_get(self, wanted):
        """Read the asked revisions with ``revs`` and ``latest``, grouped per document."""
        results = []
        for doc_id, revs in _revs_by_doc(wanted).items():
            entries = self._call(self.store.open_revs, doc_id, revs, revs=True, latest=True)
            results.extend(_fetched(doc_id, entry) for entry in entries)
        return results

    def bulk_docs(self, docs, *, new_edits=False):
        """The store's ``bulk_docs``; returns only the failures."""
        result = self._call(self.store.bulk_docs, docs, new_edits=new_edits)
        if new_edits:
            return [entry for entry in result if "error" in entry]
        return result

    def get_local(self, local_id):
        """The store's ``_local`` document, or None."""
        try:
            return self.store.get_local(local_id)
        except errors.NotFound:
            return None

    def put_local(self, local_id, doc):
        """Write the store's ``_local`` document."""
        return self._call(self.store.put_local, local_id, doc)

    def ensure_full_commit(self):
        """Nothing to do: every store write is its own committed transaction."""

    def pending(self, since):
        """Documents changed after ``since`` in the store."""
        return self._call(self.store.pending, since or 0)

    def close(self):
        """Close this thread's connection to the store."""
        self.store.close()

    @staticmethod
    def _call(method, *args, **kwargs):
        # A request the store refuses whole (BadRequest) fails the batch as a remote peer's
        # 400 would; an SQLite failure (disk full, locked too long) is a peer failure too.
        try:
            return method(*args, **kwargs)
        except errors.BadRequest as exc:
            raise errors.PeerError(f"local store refused the request: {exc.reason}",
                                   status=400, original=exc, kind="local") from exc
        except errors.TongbanError:
            raise
        except Exception as exc:
            raise errors.PeerError(f"local store failed: {exc}", original=exc,
                                   kind="local") from exc


class _NoCache:
    """Disables couchdb.http's ETag cache: replication never re-reads a URL, and a cached
    checkpoint must never stand in for the current one."""

    def get(self, url):
        return None

    def put(self, url, response):
        pass

    def remove(self, url):
        pass


class _RecordingPool(couchdb.http.ConnectionPool):
    """couchdb.http's connection pool, remembering per thread the headers of the last
    response: the library raises on an error status and drops them, and a signed request
    refused for clock skew carries the server's time in a header."""

    def __init__(self, timeout):
        super().__init__(timeout)
        self._local = threading.local()

    def get(self, url):
        conn = super().get(url)
        if not getattr(conn, "_tongban_recording", False):
            original, local = conn.getresponse, self._local

            def getresponse(*args, **kwargs):
                response = original(*args, **kwargs)
                local.headers = response.msg
                return response

            conn.getresponse = getresponse
            conn._tongban_recording = True
        return conn

    def last_header(self, name):
        """A header of the last response this thread received, or None."""
        headers = getattr(self._local, "headers", None)
        return headers.get(name) if headers is not None else None


class HttpPeer(Peer):
    """A CouchDB-protocol database over HTTP (keep-alive connections).

    Built on ``couchdb.http`` (CouchDB-Python, the customer's client library for the
    protocol). Measured against pouchdb-server on Python 3.11 it is as fast as requests.
    Three gaps of that layer on Python 3 are covered here: its ETag response cache is
    switched off; its own retry of a lost connection resends the same headers (a signed
    request's nonce, refused as a replay), so it is switched off and each request is
    retried once here, on a fresh connection and signed afresh (every call the replicator
    makes is idempotent); and an error with a large or chunked body fails inside the
    library with an unrelated exception, which is caught and reported as PeerError like
    any other transport failure. An empty answer is a failure too (an answer cut short
    can look complete). Credentials are taken from the URL by ``urllib`` (passwords may
    hold ``:`` or ``@``) and passed per request.

    Node-to-node requests are signed instead (docs/sync.md, "Signed requests"): a
    ``signer`` gives the headers of each request; when the other node answers 401 with
    ``X-Tongban-Time`` (our clock is off), the signer is told the server's time and the
    request is signed and sent once more.

    :param url: the database URL, optionally with ``user:password@``.
    :param auth: ``(user, password)``, overriding credentials in the URL.
    :param session: a ``couchdb.http.Session`` to share connections (one is made otherwise).
    :param timeout: socket timeout in seconds.
    :param signer: an object with ``headers(method, path_qs, body_bytes) -> dict`` and
        ``observe_server_time(unix_seconds)`` (``shared.identity.RequestSigner``); when
        given, no Basic credentials are sent.
    """

    def __init__(self, url, auth=None, session=None, *, timeout=DEFAULT_TIMEOUT, signer=None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.PeerError(f"not an http(s) database URL: {url!r}")
        credentials = None
        if parts.username is not None:
            credentials = (urllib.parse.unquote(parts.username),
                           urllib.parse.unquote(parts.password or ""))
        self.credentials = tuple(auth) if auth else credentials
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        self.url = urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.session = session or couchdb.http.Session(timeout=timeout)
        self.session.cache = _NoCache()
        # couchdb.http resends a request whose answer was lost with the same headers: a
        # signed request's nonce then comes again and the parent refuses it as a replay
        # (the link shown "refused" for the back-off cap). _send retries, signing afresh.
        self.session.retryable_errors = frozenset()
        if not isinstance(self.session.connection_pool, _RecordingPool):
            self.session.connection_pool = _RecordingPool(self.session.connection_pool.timeout)
        self.signer = signer
        self._has_bulk_get = None  # unknown until the first try

    # -- transport ----------------------------------------------------------------------

    def _url(self, path, params):
        url = self.url
        if path:
            url += "/" + "/".join(urllib.parse.quote(part, safe="") for part in path)
        if params:
            url += "?" + urllib.parse.urlencode(
                {k: _query_value(v) for k, v in params.items() if v is not None})
        return url

    def _request(self, method, path=(), *, params=None, body=None):
        """Send one request and return its decoded JSON body.

        :raises PeerError: on a transport failure or an HTTP status of 400 or more.
        """
        url = self._url(path, params)
        payload = None if body is None else _dumps(body).encode("utf-8")
        try:
            status, raw = self._send(method, url, payload)
        except errors.PeerError as exc:
            server_time = getattr(exc, "server_time", None)
            if self.signer is None or exc.status != 401 or server_time is None:
                raise
            # The other node says our clock is off: correct the offset, sign again, once.
            logger.info("%s refused our timestamp; signing again with its time", self.url)
            self.signer.observe_server_time(server_time)
            status, raw = self._send(method, url, payload)
        if not raw:
            # Every call here is answered with JSON. An empty body is an answer cut short:
            # a header block cut before its Content-Length or Transfer-Encoding reads as
            # complete, with no body. Taken for "nothing", _revs_diff would say the target
            # lacks nothing (the batch skipped, checkpointed past) and _local "no checkpoint".
            # No status: like an IncompleteRead, it is the link's failure, not the server's.
            raise errors.PeerError(f"{method} {url}: HTTP {status} with an empty body "
                                   f"(answer cut short)")
        try:
            # Decoded as strict UTF-8 first: json.loads(bytes) decodes with
            # "surrogatepass", which is markedly slower on non-ASCII text (the catalog).
            return json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise errors.PeerError(f"{method} {url}: response is not JSON", status=status,
                                   original=exc) from exc

    def _send(self, method, url, payload):
        """One request, retried once on a keep-alive connection the server closed.

        :returns: ``(status, body bytes)``.
        :raises PeerError: with ``server_time`` set from ``X-Tongban-Time`` on a 401.
        """
        parts = urllib.parse.urlsplit(url)
        # The path and query exactly as couchdb.http puts them on the request line.
        path_qs = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            if self.signer is not None:
                # Fresh per attempt: a resent nonce would be refused as a replay.
                headers.update(self.signer.headers(method, path_qs, payload or b""))
            try:
                status, _, data = self.session.request(
                    method, url, body=payload, headers=headers,
                    credentials=None if self.signer is not None else self.credentials)
                return status, (data.read() if data is not None else b"")
            except couchdb.http.HTTPError as exc:
                error = _http_error(method, url, exc)
                error.server_time = None
                if error.status == 401:
                    pool = self.session.connection_pool
                    error.server_time = _float_or_none(pool.last_header("X-Tongban-Time"))
                    if pool.last_header(errors.REFUSAL_HEADER) == "clock_skew":
                        error.kind = "clock_skew"
                raise error from exc
            except Exception as exc:
                if not _connection_lost(exc):
                    raise errors.PeerError(
                        f"{method} {url}: {exc.__class__.__name__}: {exc}",
                        original=exc) from exc
                # An idle keep-alive connection closed by the server, or an answer lost
                # on the way: retry once, fresh (every call here is idempotent).
                if attempt == 2:
                    raise errors.PeerError(f"{method} {url}: connection lost ({exc})",
                                           original=exc) from exc
                logger.debug("retrying %s %s after %r", method, url, exc)

    # -- the protocol ---------------------------------------------------------------------

    def identity(self):
        """The database URL without credentials."""
        return self.url

    def info(self):
        """``GET /db``."""
        result = self._request("GET")
        if not isinstance(result, dict) or "update_seq" not in result:
            raise errors.PeerError(f"{self.url} is not a CouchDB database", kind="bad_answer")
        return result

    def changes(self, since, *, limit=None, doc_ids=None):
        """``GET /db/_changes?style=all_docs`` (``POST`` with ``filter=_doc_ids``)."""
        result = self._changes({"style": "all_docs", "since": since or 0, "limit": limit},
                               doc_ids)
        return result["results"], result["last_seq"]

    def wait_for_changes(self, since, timeout, *, doc_ids=None):
        """``_changes?feed=longpoll``: returns when a change exists or the timeout passes."""
        result = self._changes({"feed": "longpoll", "since": since or 0, "limit": 1,
                                "timeout": int(timeout * 1000), "style": "all_docs"}, doc_ids)
        return bool(result.get("results"))

    def pending(self, since):
        """``_changes?since=&limit=0``: the rows it returns plus its ``pending``."""
        result = self._request("GET", ["_changes"], params={"since": since or 0, "limit": 0})
        if not isinstance(result, dict) or not isinstance(result.get("pending"), int):
            return None
        return len(result.get("results") or []) + result["pending"]

    def _changes(self, params, doc_ids):
        # The _doc_ids filter takes its ids in a POST body; everything else is a GET.
        if doc_ids is None:
            return self._request("GET", ["_changes"], params=params)
        return self._request("POST", ["_changes"], params={**params, "filter": "_doc_ids"},
                             body={"doc_ids": list(doc_ids)})

    def revs_diff(self, wanted):
        """``POST /db/_revs_diff``."""
        if not wanted:
            return {}
        return self._request("POST", ["_revs_diff"], body=wanted) or {}

    def bulk_get(self, wanted):
        """``POST /db/_bulk_get?revs=true``, or one ``GET ?open_revs=`` per document when
        the server has no ``_bulk_get`` (CouchDB before 2.0, some PouchDB servers)."""
        if not wanted:
            return []
        if self._has_bulk_get is not False:
            try:
                result = self._request("POST", ["_bulk_get"],
                                       params={"revs": True, "attachments": True},
                                       body={"docs": wanted})
            except errors.PeerError as exc:
                if exc.status not in (400, 404, 405, 501) or self._has_bulk_get:
                    raise
                logger.info("%s has no _bulk_get (%s); using open_revs", self.url,
                            exc.status)
                self._has_bulk_get = False
            else:
                self._has_bulk_get = True
                return [_fetched(item["id"], entry)
                        for item in result["results"] for entry in item["docs"]]
        return self._open_revs(wanted)

    def _open_revs(self, wanted):
        results = []
        for doc_id, revs in _revs_by_doc(wanted).items():
            entries = self._request("GET", [doc_id], params={
                "open_revs": revs, "revs": True, "latest": True, "attachments": True})
            results.extend(_fetched(doc_id, entry) for entry in entries)
        return results

    def bulk_docs(self, docs, *, new_edits=False):
        """``POST /db/_bulk_docs`` with ``new_edits``; returns only the failures."""
        if not docs:
            return []
        result = self._request("POST", ["_bulk_docs"],
                               body={"docs": docs, "new_edits": new_edits}) or []
        return [entry for entry in result if "error" in entry]

    def get_local(self, local_id):
        """``GET /db/_local/{id}``; None on 404."""
        try:
            return self._request("GET", ["_local", local_id])
        except errors.PeerError as exc:
            if exc.status == 404:
                return None
            raise

    def put_local(self, local_id, doc):
        """``PUT /db/_local/{id}``."""
        body = dict(doc, _id=f"_local/{local_id}")
        if body.get("_rev") is None:
            body.pop("_rev", None)
        result = self._request("PUT", ["_local", local_id], body=body)
        return result.get("rev")

    def ensure_full_commit(self):
        """``POST /db/_ensure_full_commit`` (a server without it commits every write)."""
        try:
            self._request("POST", ["_ensure_full_commit"], body={})
        except errors.PeerError as exc:
            if exc.status not in (404, 405):
                raise
            logger.debug("%s has no _ensure_full_commit", self.url)

    def close(self):
        """Close the pooled connections."""
        pool = self.session.connection_pool
        with pool.lock:
            for conns in pool.conns.values():
                for conn in conns:
                    conn.close()
            pool.conns.clear()


def _revs_by_doc(wanted):
    """``[{"id", "rev"}, ...]`` grouped as ``{doc_id: [rev, ...]}`` in first-seen order."""
    by_doc = {}
    for item in wanted:
        by_doc.setdefault(item["id"], []).append(item["rev"])
    return by_doc


def _fetched(doc_id, entry):
    """One ``_bulk_get``/``open_revs`` entry as ``{"ok": doc}`` or ``{"error": {...}}``
    (PouchDB and ``open_revs`` say ``{"missing": rev}`` where CouchDB says ``error``)."""
    if "ok" in entry:
        return entry
    if "missing" in entry:
        return {"error": {"id": doc_id, "rev": entry["missing"], "error": "not_found",
                          "reason": "missing"}}
    error = entry.get("error")
    if not isinstance(error, dict):
        error = {"error": str(error), "reason": str(entry.get("reason", ""))}
    return {"error": dict(error, id=error.get("id", doc_id))}


def _connection_lost(exc):
    """True for a connection closed or reset under a request, as http.client raises it
    or as couchdb.http re-raises it (``socket.error(ECONNRESET)``, errno in ``args``)."""
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                        BrokenPipeError)):
        return True
    return type(exc) is OSError and bool(exc.args) and \
        exc.args[0] in (errno.ECONNRESET, errno.EPIPE)


def _float_or_none(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _query_value(value):
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (list, dict)):
        return _dumps(value)
    return value


def _http_error(method, url, exc):
    """Turn a couchdb.http error into PeerError with the HTTP status."""
    statuses = {
        couchdb.http.Unauthorized: 401, couchdb.http.Forbidden: 403,
        couchdb.http.ResourceNotFound: 404, couchdb.http.ResourceConflict: 409,
        couchdb.http.PreconditionFailed: 412,
    }
    detail = exc.args[0] if exc.args else ""
    status = statuses.get(type(exc))
    if status is None and isinstance(detail, tuple) and len(detail) == 2:
        status, detail = detail
    if isinstance(detail, tuple):
        detail = ": ".join(str(part) for part in detail if part)
    elif isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")[:200]
    return errors.PeerError(f"{method} {url}: HTTP {status} {detail}".rstrip(),
                            status=status, original=exc)


def peer_from_string(spec, *, auth=None):
    """Make a peer from a command-line argument.

    :param spec: a node directory (holding ``tongban.json``), a node URL
        ``http://host:port`` (its ``/db``) or any other http(s) URL (a CouchDB database).
    :param auth: ``(user, password)`` for an HTTP peer, overriding the URL's.
    :returns: a :class:`LocalPeer` or :class:`HttpPeer`.
    :raises PeerError: ``spec`` is neither.
    :raises ConfigurationError: the node directory's configuration is invalid.
    """
    from shared.config import CONFIG_FILE, load_config

    if spec.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(spec)
        if parts.path in ("", "/"):
            spec = urllib.parse.urlunsplit(parts._replace(path="/db"))
        return HttpPeer(spec, auth=auth)
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, CONFIG_FILE)):
        from shared.app import open_store

        return LocalPeer(open_store(load_config(spec)), name=spec)
    raise errors.PeerError(
        f"{spec!r} is neither a node directory (with {CONFIG_FILE}) nor an http(s) URL")
