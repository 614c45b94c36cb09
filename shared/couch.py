"""The CouchDB HTTP API of the node's store, served at ``/db`` (CouchDB 3.5 behaviour).

PouchDB, Apache CouchDB's replicator and syncd replicate through these endpoints, so
status codes, ``{"error", "reason"}`` bodies and parameter parsing follow CouchDB's
chttpd. A view parses the request, asks the policy (shared/auth.py) and calls the store.
Every read goes through ``policy.can_read``; every write passes ``policy.write_check``.

Responses are built with one compact ``json`` encoder rather than ``jsonify``: replication
bodies are large and this is the hot path.
"""

import functools
import json
import logging
import re
import time
import uuid
from urllib.parse import unquote_to_bytes

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from shared import __version__, auth, errors
from shared.store import revs as R
from shared.store.store import LOCAL_OPERATOR

logger = logging.getLogger(__name__)

bp = Blueprint("couch", __name__)

COUCHDB_VERSION = "3.5.0"
# Flask answers OPTIONS itself (CORS pre-flight must not need credentials or a 405).
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "COPY", "PATCH"]
FEEDS = ("normal", "longpoll", "continuous", "live", "eventsource")
DEFAULT_FEED_TIMEOUT_MS = 60000
CHANGES_CHUNK_ROWS = 500
#: ``pending`` of a filtered feed counts the readable rows among at most this many of
#: the changes that follow (a lower bound: counting a scope must not cost a full scan,
#: and counting every row would tell a caller how much it may not see).
PENDING_SCAN_ROWS = 10000
#: Integers in query parameters (``limit``, ``skip``, ``since``, ``timeout``) beyond this
#: are refused: SQLite's INTEGER is 64-bit, and no database holds more rows or sequences.
MAX_QUERY_INT = 2 ** 63 - 1
#: A ``\uD800``–``\uDFFF`` escape: only these can make a lone surrogate, which is no
#: character and cannot be stored or sent as UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# -- protocol errors (HTTP-level, so they live here and not in shared/errors.py) --------

class BadContentType(errors.TongbanError):
    """The request body is not of the media type the endpoint takes."""

    error = "bad_content_type"


class MethodNotAllowed(errors.TongbanError):
    """The endpoint exists but not for this method."""

    error = "method_not_allowed"


class FileExists(errors.TongbanError):
    """``PUT /db`` on the database that exists."""

    error = "file_exists"


class QueryParseError(errors.BadRequest):
    """A query parameter of the wrong type."""

    error = "query_parse_error"


STATUS = [
    (errors.BadRequest, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (MethodNotAllowed, 405),
    (errors.Conflict, 409),
    (FileExists, 412),
    (errors.DocumentTooLarge, 413),
    (BadContentType, 415),
    # CouchDB 3.4+ (its disk monitor) refuses writes to a full disk this way.
    (errors.InsufficientStorage, 507),
]


def status_of(exc):
    """The HTTP status of a domain error (500 for anything unforeseen)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status, error, reason, headers=None):
    """CouchDB's error body."""
    return json_response({"error": error, "reason": reason}, status, headers)


def handle_domain_error(exc):
    """Render a domain error raised by a view or the store."""
    headers = None
    if isinstance(exc, errors.Unauthorized):
        headers = dict(auth.get_policy().challenge_headers(request) or {})
        if exc.refusal:
            headers[errors.REFUSAL_HEADER] = exc.refusal
    return error_response(status_of(exc), exc.error, exc.reason, headers)


def handle_invalid_rev(exc):
    """A malformed rev anywhere (query, body, _revs_diff) is CouchDB's one 400."""
    return error_response(400, "bad_request", "Invalid rev format")


def handle_http_error(exc):
    """Werkzeug's own errors (request over MAX_REQUEST_SIZE, routing) in CouchDB's form."""
    if exc.code == 413:
        return error_response(413, "too_large", "the request entity is too large")
    if exc.code == 405:
        return error_response(405, "method_not_allowed", "Only GET,HEAD,POST,PUT allowed")
    if exc.code == 404:
        return error_response(404, "not_found", "missing")
    return error_response(exc.code or 500, exc.name.lower().replace(" ", "_"),
                          exc.description or "")


def handle_unexpected(exc):
    """Log a bug and answer as CouchDB does for an internal failure."""
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "unknown_error", type(exc).__name__)


def register_error_handlers(blueprint):
    """Map every error raised under /db to CouchDB's status and body, in one place.

    Handlers sit on the blueprint (not the app) so that the tiers' HTML pages keep
    Flask's own error pages; a blueprint takes handlers only before its first
    registration, hence the call at import below.
    """
    blueprint.register_error_handler(errors.TongbanError, handle_domain_error)
    blueprint.register_error_handler(R.InvalidRev, handle_invalid_rev)
    blueprint.register_error_handler(HTTPException, handle_http_error)
    blueprint.register_error_handler(Exception, handle_unexpected)


register_error_handlers(bp)


# -- request and response helpers ----------------------------------------------------

def json_response(obj, status=200, headers=None):
    """A compact JSON response with CouchDB's trailing newline."""
    response = Response(_encode(obj) + "\n", status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


def _reject_constant(name):
    # CouchDB's parser refuses NaN and Infinity; Python's accepts them.
    raise ValueError(name)


def parse_json(data):
    """Decode strict UTF-8 JSON; anything else is CouchDB's "invalid UTF-8 JSON".

    A lone surrogate escape (``"\\ud800"``) decodes to no character at all: CouchDB's
    parser refuses it, and ours would only fail later, storing or answering it.
    """
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        value = json.loads(data, parse_constant=_reject_constant)
        if "\\u" in data and _SURROGATE_ESCAPE.search(data):
            # Surrogate escapes are rare (pairs spell emoji); encoding finds a lone one.
            _encode(value).encode("utf-8")
        return value
    except (UnicodeError, ValueError, RecursionError):
        raise errors.BadRequest("invalid UTF-8 JSON") from None


def json_body(required_type=None):
    """The request body as JSON (``required_type`` dict or list raises CouchDB's reasons)."""
    body = parse_json(request.get_data(cache=False))
    if required_type is dict and not isinstance(body, dict):
        raise errors.BadRequest("Request body must be a JSON object")
    return body


def require_json_content():
    """Refuse a body that is not declared ``application/json`` (POST /db, _bulk_docs)."""
    if request.mimetype != "application/json":
        raise BadContentType("Content-Type must be application/json")


def query_bool(name, default=False):
    """A ``true``/``false`` query parameter."""
    value = request.args.get(name)
    if value is None:
        return default
    if value == "true":
        return True
    if value == "false":
        return False
    raise QueryParseError(f"Invalid boolean parameter: \"{value}\"")


def query_int(name, default=None):
    """An integer query parameter."""
    value = request.args.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise QueryParseError(f"Invalid value for integer: \"{value}\"") from None
    if abs(number) > MAX_QUERY_INT:
        raise QueryParseError(f"Integer value out of range: \"{name}\"")
    return number


def query_json(*names):
    """The first present of ``names`` as a JSON query parameter, or None."""
    for name in names:
        value = request.args.get(name)
        if value is not None:
            return parse_json(value)
    return None


def prefers_multipart():
    """True when the client asks for ``multipart/mixed`` over JSON (CouchDB replicator)."""
    accept = request.accept_mimetypes
    quality = max((q for mime, q in accept if mime.lower() == "multipart/mixed"), default=0)
    return quality > 0 and quality >= max(
        (q for mime, q in accept if mime.lower() == "application/json"), default=0)


def etag(rev):
    """The ETag header of a document revision."""
    return {"ETag": f'"{rev}"'}


def store():
    """The node's store."""
    return current_app.extensions["store"]


def policy():
    """The node's access policy."""
    return auth.get_policy()


def readable(doc_id):
    """True when the caller may read ``doc_id``."""
    return policy().can_read(g.couch_principal, doc_id)


def write_check(new_edits=True):
    """The caller's write check, for ``Store.bulk_docs(check=...)``."""
    return policy().write_check(g.couch_principal, new_edits=new_edits)


def route(rule, allowed):
    """Register a view for every method; others get CouchDB's 405 naming ``allowed``.

    Taking all methods keeps Werkzeug from answering 405 itself without the endpoint's
    CouchDB wording, and lets ``/db/_changes`` win over ``/db/<docid>`` for any method.
    """
    methods = set(allowed.split(","))

    def decorator(view):
        # Stacked decorators (two rules, one view) share one wrapper and endpoint.
        wrapper = getattr(view, "couch_wrapper", None)
        if wrapper is None:
            @functools.wraps(view)
            def wrapper(**kwargs):
                if request.method not in methods:
                    raise MethodNotAllowed(f"Only {allowed} allowed")
                return view(**kwargs)

            view.couch_wrapper = wrapper
        bp.add_url_rule(rule, view.__name__, wrapper, methods=ALL_METHODS)
        return view

    return decorator


PUBLIC_ENDPOINTS = {"couch.uuids"}


@bp.before_request
def authenticate():
    """Every /db request carries credentials the policy accepts."""
    if request.method == "OPTIONS" or request.endpoint in PUBLIC_ENDPOINTS:
        return
    if not request.headers.get("Authorization", "").isascii():
        # Every scheme we take is ASCII (base64, digits, hex); anything else is no
        # credential, and must not reach a decoder that takes only ASCII.
        raise errors.Unauthorized(auth.BAD_CREDENTIALS)
    g.couch_principal = policy().authenticate(request)


# -- server ----------------------------------------------------------------------------

def welcome(app=None):
    """The body of ``GET /`` for CouchDB clients (PouchDB and the replicator read it)."""
    app = app or current_app
    return {
        "couchdb": "Welcome",
        "version": COUCHDB_VERSION,
        "uuid": app.extensions["store"].uuid,
        "features": [],
        "vendor": {"name": "tongban", "version": __version__},
        "tongban": {"tier": app.config["TIER"], "code": app.config["NODE_CODE"],
                    "name": app.config.get("NODE_NAME") or ""},
    }


@route("/_uuids", "GET,HEAD")
def uuids():
    """``GET /_uuids?count=N``: fresh random ids."""
    count = query_int("count", 1)
    if count < 1 or count > 1000:
        raise errors.BadRequest("count must be between 1 and 1000")
    return json_response({"uuids": [uuid.uuid4().hex for _ in range(count)]},
                         headers={"Cache-Control": "must-revalidate, no-cache"})


# -- database ----------------------------------------------------------------------------

@route("/db", "GET,HEAD,POST,PUT")
@route("/db/", "GET,HEAD,POST,PUT")
def database():
    """Database information, "create" (it always exists) and document creation."""
    if request.method == "PUT":
        raise FileExists("The database could not be created, the file already exists.")
    if request.method == "POST":
        require_json_content()
        doc = json_body()
        if not isinstance(doc, dict):
            raise errors.BadRequest("Document must be a JSON object")
        rev = write_one(doc)
        return json_response({"ok": True, "id": g.couch_written_id, "rev": rev}, 201, etag(rev))
    info = store().info()
    info["props"] = {}
    info["cluster"] = {"q": 1, "n": 1, "w": 1, "r": 1}
    return json_response(info)


def write_one(doc, new_edits=True):
    """Write one document through the policy; returns its rev or raises its error."""
    results = store().bulk_docs([doc], new_edits=new_edits, check=write_check(new_edits))
    if new_edits:
        entry = results[0]
        if "error" in entry:
            raise _error_from_entry(entry)
        g.couch_written_id = entry["id"]
        return entry["rev"]
    if results:
        raise _error_from_entry(results[0])
    g.couch_written_id = doc.get("_id")
    return doc.get("_rev") or R.path_from_revisions(None, doc.get("_revisions"))[0]


_ERRORS_BY_WORD = {cls.error: cls for cls in (
    errors.BadRequest, errors.InvalidDocId, errors.DocValidation, errors.Conflict,
    errors.Forbidden, errors.NotFound, errors.DocumentTooLarge, errors.Unauthorized)}


def _error_from_entry(entry):
    return _ERRORS_BY_WORD.get(entry["error"], errors.BadRequest)(entry["reason"])


@route("/db/_ensure_full_commit", "POST")
def ensure_full_commit():
    """Every write is committed before it is acknowledged; say so."""
    return json_response(
        {"ok": True, "instance_start_time": store().info()["instance_start_time"]}, 201)


@route("/db/_revs_limit", "GET,PUT")
def revs_limit():
    """Read or set how many revisions per branch the store keeps (setting it is the node
    operator's: it changes what every replica of every document keeps)."""
    if request.method == "PUT":
        require_operator()
        store().set_revs_limit(json_body())
        return json_response({"ok": True})
    return json_response(store().revs_limit)


def is_operator(principal):
    """True for a caller who runs this node: a full-scope account of its own.

    Other nodes and scoped accounts (a village's tablet) are never: they sign or log in
    to replicate their scope, not to change the database.
    """
    return principal.kind == "account" and principal.attributes.get("full") is True


def require_operator():
    """Refuse a database setting to anyone but the node operator, as CouchDB refuses a
    member that is not a database admin."""
    if not is_operator(g.couch_principal):
        raise errors.Forbidden("You are not a db or server admin.")


# -- documents ---------------------------------------------------------------------------

def _check_path_utf8():
    """Refuse a document path whose bytes are not UTF-8 (``%ED%A0%80``, a surrogate).

    Werkzeug decodes such a path with replacement characters: without this check, a PUT
    would store the document under an id the client never sent. CouchDB answers a write
    with ``illegal_docid``; a read finds nothing.
    """
    environ = request.environ
    try:
        # PATH_INFO holds the decoded bytes (as latin-1) under waitress; the request line
        # as sent is the only trace of them where the WSGI layer replaced them already.
        environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
        if raw:
            unquote_to_bytes(raw.encode("latin-1").split(b"?", 1)[0]).decode("utf-8")
    except UnicodeError:
        if request.method in ("GET", "HEAD"):
            raise errors.NotFound("missing") from None
        raise errors.InvalidDocId("Document id must be valid UTF-8") from None


def _check_doc_path(doc_id):
    """Only design documents may have a ``/`` in their id (no attachments here)."""
    _check_path_utf8()
    if "/" in doc_id and not doc_id.startswith("_design/"):
        if request.method in ("GET", "HEAD"):
            raise errors.NotFound("missing")
        raise errors.BadRequest("Attachments are not supported")


@route("/db/<couchpath:doc_id>", "DELETE,GET,HEAD,PUT")
def document(doc_id):
    """One document: read (incl. ``open_revs``), write, delete."""
    _check_doc_path(doc_id)
    if request.method in ("GET", "HEAD"):
        return get_document(doc_id)
    if request.method == "PUT":
        return put_document(doc_id)
    return delete_document(doc_id)


def get_document(doc_id):
    """``GET /db/{id}`` with CouchDB's query parameters."""
    if not readable(doc_id):
        raise errors.NotFound("missing")
    meta = query_bool("meta")
    options = {
        "revs": query_bool("revs"),
        "latest": query_bool("latest"),
    }
    open_revs = request.args.get("open_revs")
    if open_revs is not None:
        wanted = "all" if open_revs == "all" else parse_json(open_revs)
        if wanted != "all" and not (isinstance(wanted, list)
                                    and all(isinstance(r, str) for r in wanted)):
            raise errors.BadRequest("Invalid rev format")
        results = store().open_revs(doc_id, wanted, **options)
        if prefers_multipart():
            return multipart_response(results)
        return json_response(results)
    doc = store().get(
        doc_id, request.args.get("rev"),
        conflicts=meta or query_bool("conflicts"),
        deleted_conflicts=meta or query_bool("deleted_conflicts"),
        revs_info=meta or query_bool("revs_info"), **options)
    tag = f'"{doc["_rev"]}"'
    if request.headers.get("If-None-Match") == tag:
        return Response(status=304, headers={"ETag": tag})
    return json_response(doc, headers={"ETag": tag})


def multipart_response(results):
    """``open_revs`` as ``multipart/mixed``: one JSON part per revision, as CouchDB sends."""
    boundary = uuid.uuid4().hex
    parts = []
    for entry in results:
        if "ok" in entry:
            parts.append("Content-Type: application/json\r\n\r\n" + _encode(entry["ok"]))
        else:
            parts.append('Content-Type: application/json; error="true"\r\n\r\n'
                         + _encode({"missing": entry["missing"]}))
    body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--"
    return Response(body.encode("utf-8"),
                    content_type=f'multipart/mixed; boundary="{boundary}"')


def _request_rev():
    """The rev named by the ``rev`` query parameter or the ``If-Match`` header."""
    rev = request.args.get("rev")
    if rev is None and request.headers.get("If-Match"):
        rev = request.headers["If-Match"].strip('"')
    return rev


def put_document(doc_id):
    """``PUT /db/{id}``: create or update (``new_edits=false`` writes a replicated rev)."""
    if request.mimetype.startswith("multipart/"):
        raise BadContentType("Attachments (multipart/related) are not supported")
    size = request.content_length
    if size is not None and size > store().max_document_size:
        # Refuse before reading and parsing megabytes that cannot be stored anyway.
        raise errors.DocumentTooLarge("")
    doc = json_body()
    if not isinstance(doc, dict):
        raise errors.BadRequest("Document must be a JSON object")
    rev = _request_rev()
    if rev is not None:
        if "_rev" in doc and doc["_rev"] != rev:
            raise errors.BadRequest(
                "Document rev from request body and query string have different values")
        doc["_rev"] = rev
    doc["_id"] = doc_id
    new_edits = query_bool("new_edits", True)
    rev = write_one(doc, new_edits=new_edits)
    return json_response({"ok": True, "id": doc_id, "rev": rev}, 201, etag(rev))


def delete_document(doc_id):
    """``DELETE /db/{id}?rev=``: write a tombstone on the given leaf."""
    # As CouchDB: a missing or already deleted document is a 404, not a new tombstone.
    if not readable(doc_id):
        raise errors.NotFound("missing")
    store().get(doc_id)
    doc = {"_id": doc_id, "_deleted": True}
    rev = _request_rev()
    if rev is not None:
        doc["_rev"] = rev
    rev = write_one(doc)
    return json_response({"ok": True, "id": doc_id, "rev": rev}, 200, etag(rev))


def local_owner(principal):
    """Whose ``_local`` documents ``principal`` reads and writes: its own.

    A replication id is computable by anyone (from ``GET /`` and the peers' URLs), so a
    shared namespace let any caller read, move or delete another's checkpoint. Each
    caller now has its own: a node by its signed code, an account by its name. Clients
    see nothing of it (``_local/<id>`` as ever).
    """
    return f"{principal.kind}:{principal.name}"


def _get_own_local(local_id, principal):
    """``principal``'s ``_local/{local_id}``; the node operator also reads, when it has
    none of its own, the node's (which holds every document of a store from before
    documents had owners, so its replications resume where they were)."""
    try:
        return store().get_local(local_id, owner=local_owner(principal))
    except errors.NotFound:
        if not is_operator(principal):
            raise
    return store().get_local(local_id, owner=LOCAL_OPERATOR)


@route("/db/_local/<couchpath:local_id>", "DELETE,GET,HEAD,PUT")
def local_document(local_id):
    """Checkpoints and other caller-local documents: never replicated, never in _changes,
    each caller's its own (``local_owner``)."""
    _check_path_utf8()
    doc_id = f"_local/{local_id}"
    principal = g.couch_principal
    if request.method in ("GET", "HEAD"):
        if not readable(doc_id):
            raise errors.NotFound("missing")
        return json_response(_get_own_local(local_id, principal))
    if request.method == "DELETE":
        policy().check_write(principal, doc_id, {"_deleted": True}, None)
        store().delete_local(local_id, owner=local_owner(principal))
        return json_response({"ok": True, "id": doc_id, "rev": "0-0"})
    doc = json_body()
    if not isinstance(doc, dict):
        raise errors.BadRequest("Document must be a JSON object")
    policy().check_write(principal, doc_id, doc, None)
    rev = store().put_local(local_id, doc, owner=local_owner(principal))
    return json_response({"ok": True, "id": doc_id, "rev": rev}, 201)


# -- bulk --------------------------------------------------------------------------------

@route("/db/_bulk_docs", "POST")
def bulk_docs():
    """Write a batch; ``new_edits: false`` merges replicated revisions as given."""
    require_json_content()
    body = json_body(dict)
    if "docs" not in body:
        raise errors.BadRequest("POST body must include `docs` parameter.")
    docs = body["docs"]
    if not isinstance(docs, list):
        raise errors.BadRequest("`docs` parameter must be an array.")
    new_edits = body.get("new_edits", True)
    if not isinstance(new_edits, bool):
        raise errors.BadRequest("`new_edits` parameter must be a boolean.")
    results = store().bulk_docs(docs, new_edits=new_edits, check=write_check(new_edits))
    return json_response(results, 201)


@route("/db/_bulk_get", "POST")
def bulk_get():
    """Many documents or revisions in one request (PouchDB and CouchDB 3 replicators)."""
    body = json_body(dict)
    wanted = body.get("docs")
    if not isinstance(wanted, list):
        raise errors.BadRequest("Missing JSON list of 'docs'.")
    revs = query_bool("revs")
    latest = query_bool("latest")
    # What replicators ask (an exact revision of a readable document) is read in one
    # batch with the stored JSON spliced in; anything else entry by entry.
    can_read = functools.partial(policy().can_read, g.couch_principal)
    batch = [index for index, item in enumerate(wanted) if _batchable(item, can_read)]
    found = dict(zip(batch, store().open_revs_json(
        [(wanted[index]["id"], wanted[index]["rev"]) for index in batch],
        revs=revs, latest=latest)))
    parts = []
    for index, item in enumerate(wanted):
        doc_id = item.get("id") if isinstance(item, dict) else None
        if index in found:
            docs = ",".join(
                '{"ok":' + text + "}" if kind == "ok" else
                _encode(_bulk_get_error(doc_id, text, "not_found", "missing"))
                for kind, text in found[index])
        else:
            docs = ",".join(_encode(entry) for entry in _bulk_get_one(item, revs, latest))
        parts.append('{"id":' + _encode(doc_id) + ',"docs":[' + docs + "]}")
    # The same text as json_response({"results": [...]}) of _bulk_get_one's entries.
    return Response('{"results":[' + ",".join(parts) + "]}\n", mimetype="application/json")


def _batchable(item, can_read):
    """True for a request entry naming a readable document and a well-formed rev."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or \
            not isinstance(item.get("rev"), str):
        return False
    try:
        R.parse_rev(item["rev"])
    except R.InvalidRev:
        return False
    return can_read(item["id"])


def _bulk_get_one(item, revs, latest):
    """The ``docs`` list of one ``_bulk_get`` request entry."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return [_bulk_get_error(None, None, "bad_request", "document id missed")]
    doc_id, rev = item["id"], item.get("rev")
    if not readable(doc_id):
        return [_bulk_get_error(doc_id, rev or "undefined", "not_found", "missing")]
    try:
        if rev is None:
            return [{"ok": store().get(doc_id, revs=revs)}]
        if not isinstance(rev, str):
            raise R.InvalidRev(rev)
        entries = store().open_revs(doc_id, [rev], revs=revs, latest=latest)
    except errors.NotFound as exc:
        return [_bulk_get_error(doc_id, rev or "undefined", "not_found", exc.reason)]
    except R.InvalidRev:
        return [_bulk_get_error(doc_id, rev, "bad_request", "Invalid rev format")]
    return [entry if "ok" in entry else
            _bulk_get_error(doc_id, entry["missing"], "not_found", "missing")
            for entry in entries]


def _bulk_get_error(doc_id, rev, error, reason):
    return {"error": {"id": doc_id, "rev": rev, "error": error, "reason": reason}}


@route("/db/_revs_diff", "POST")
def revs_diff():
    """Which of the offered revisions this node lacks."""
    wanted = json_body(dict)
    # A document the caller may not read is answered as absent: all its revs missing,
    # no possible ancestors, and in the place the request gave it.
    hidden = {doc_id: revs for doc_id, revs in wanted.items() if not readable(doc_id)}
    visible = {doc_id: revs for doc_id, revs in wanted.items() if doc_id not in hidden}
    found = store().revs_diff(visible)
    if not hidden:
        return json_response(found)
    result = {}
    for doc_id, revs in wanted.items():
        if doc_id in hidden:
            if not isinstance(revs, list):
                raise errors.BadRequest("Invalid rev format")
            for rev in revs:
                R.parse_rev(rev)
            missing = R.find_missing({}, revs)
            if missing:
                result[doc_id] = {"missing": missing}
        elif doc_id in found:
            result[doc_id] = found[doc_id]
    return json_response(result)


@route("/db/_all_docs", "GET,HEAD,POST")
def all_docs():
    """Live documents in id order, or the rows for ``keys``."""
    keys = query_json("keys")
    if request.method == "POST":
        body = json_body(dict)
        if "keys" in body:
            keys = body["keys"]
    if keys is not None and not isinstance(keys, list):
        raise errors.BadRequest("`keys` body member must be an array.")
    key = query_json("key")
    startkey = query_json("startkey", "start_key")
    endkey = query_json("endkey", "end_key")
    if key is not None:
        startkey = endkey = key
    descending = query_bool("descending")
    limit = query_int("limit")
    skip = max(query_int("skip", 0), 0)
    options = {"include_docs": query_bool("include_docs"), "conflicts": query_bool("conflicts")}
    if limit is not None and limit < 0:
        raise QueryParseError(f"Invalid value for positive integer: \"{limit}\"")
    # total_rows and offset count every live document, readable or not: computing them
    # per caller would cost a scan of the whole store per request, and they reveal only
    # how many documents the node holds, never which.
    if keys is not None:
        total, rows = store().all_docs(keys=keys, limit=limit, skip=skip, **options)
        rows = [row if "error" in row or readable(row["id"])
                else {"key": row["key"], "error": "not_found"} for row in rows]
        return json_response({"total_rows": total, "offset": None, "rows": rows})
    if not _key_range_possible(startkey, endkey, descending):
        total, _ = store().all_docs(limit=0)
        return json_response({"total_rows": total, "offset": skip, "rows": []})
    total, rows = _readable_all_docs(
        startkey=_string_bound(startkey), endkey=_string_bound(endkey),
        inclusive_end=query_bool("inclusive_end", True), descending=descending,
        limit=limit, skip=skip, **options)
    return json_response({"total_rows": total, "offset": skip, "rows": rows})


def _string_bound(key):
    # Ids are strings; in CouchDB's collation every non-string key sorts before them
    # (null, booleans, numbers) or after them (arrays, objects), so only strings bound.
    return key if isinstance(key, str) else None


def _key_range_possible(startkey, endkey, descending):
    """False when a non-string key puts the whole range outside the string ids."""
    low, high = (endkey, startkey) if descending else (startkey, endkey)
    if isinstance(low, (list, dict)):
        return False
    if high is not None and not isinstance(high, (str, list, dict)):
        return False
    return True


def _readable_all_docs(*, limit, skip, **options):
    """``Store.all_docs`` keeping only readable rows, paging after the filter.

    The store pages in SQL; rows the policy hides are refilled by reading on from the
    last id seen, so one query suffices whenever everything is readable.
    """
    wanted = None if limit is None else min(skip + limit, MAX_QUERY_INT)
    rows = []
    total, chunk = store().all_docs(limit=wanted, **options)
    while True:
        rows.extend(row for row in chunk if readable(row["id"]))
        if wanted is None or len(rows) >= wanted or len(chunk) < wanted:
            break
        # Continue after the last id: it becomes the inclusive start, skipped once.
        options["startkey"] = chunk[-1]["id"]
        _, chunk = store().all_docs(limit=wanted, skip=1, **options)
    rows = rows[skip:]
    return total, rows if limit is None else rows[:limit]


# -- changes -----------------------------------------------------------------------------

def parse_since():
    """``since``: a non-negative integer or ``now``."""
    value = request.args.get("since", "0")
    if value == "now":
        return store().update_seq()
    text = value.strip('"')
    # Accept CouchDB-style "N-opaque" sequences a client may echo back from another peer
    # only when N is ours; anything else is malformed (as are Unicode digits, and
    # numbers no sequence reaches: SQLite's INTEGER is 64-bit).
    if text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_QUERY_INT:
        return int(text)
    raise errors.BadRequest("Malformed sequence supplied in 'since' parameter.")


def _changes_filter():
    """``(doc_ids, extra_filter)`` from ``filter`` and its parameters."""
    name = request.args.get("filter")
    if name is None:
        return None, None
    if name == "_doc_ids":
        doc_ids = query_json("doc_ids")
        data = request.get_data(cache=False) if request.method == "POST" else b""
        if data.strip():
            body = parse_json(data)
            if not isinstance(body, dict):
                raise errors.BadRequest("Request body must be a JSON object")
            if "doc_ids" in body:
                doc_ids = body["doc_ids"]
        if not isinstance(doc_ids, list) or not all(isinstance(i, str) for i in doc_ids):
            raise errors.BadRequest("`doc_ids` filter parameter is not a list of doc ids.")
        return doc_ids, None
    if name == "_design":
        return None, lambda doc_id: doc_id.startswith("_design/")
    if name in ("_view", "_selector"):
        raise errors.BadRequest(f"Filter `{name}` is not supported by this node.")
    raise errors.NotFound("missing")


@route("/db/_changes", "GET,POST,HEAD")
def changes():
    """The changes feed: ``normal``, ``longpoll``, ``continuous`` and ``eventsource``."""
    feed = request.args.get("feed", "normal")
    if feed not in FEEDS:
        raise errors.BadRequest(
            "Supported `feed` types: normal, continuous, live, longpoll, eventsource")
    style = request.args.get("style", "main_only")
    if style not in ("main_only", "all_docs"):
        raise errors.BadRequest("Supported `style` values: main_only, all_docs")
    since = parse_since()
    limit = query_int("limit")
    if limit is not None:
        # CouchDB stops after the first row for any limit below one.
        limit = max(limit, 1)
    doc_ids, extra = _changes_filter()
    principal = g.couch_principal
    feed_policy = policy()

    def row_filter():
        """A fresh filter for each read: a policy's filter memoises what it decided, and
        a case may become readable while a longpoll or continuous feed waits."""
        readable_by = feed_policy.read_filter(principal)
        if readable_by is None or extra is None:
            return readable_by or extra
        return lambda d: extra(d) and readable_by(d)

    options = {"style": style, "include_docs": query_bool("include_docs"),
               "conflicts": query_bool("conflicts"), "doc_ids": doc_ids}
    descending = query_bool("descending")
    feed = "continuous" if feed == "live" else feed
    heartbeat = _heartbeat_seconds()
    max_wait = float(current_app.config.get("LONGPOLL_MAX_TIMEOUT", 60.0))
    timeout_ms = query_int("timeout")
    timeout = min(max_wait, (timeout_ms if timeout_ms is not None
                             else DEFAULT_FEED_TIMEOUT_MS) / 1000.0)
    feed_store = store()

    def read(seq, limit, descending=False):
        """One read of the feed, and the rows that follow it (CouchDB's ``pending``)."""
        rows_filter = row_filter()
        rows, last_seq = feed_store.changes(seq, limit=limit, descending=descending,
                                            row_filter=rows_filter, **options)
        if descending or limit is None or len(rows) < limit:
            # Not cut short by limit: the store read the rest of the feed already.
            return rows, last_seq, 0
        return rows, last_seq, feed_store.pending(last_seq, doc_ids, row_filter=rows_filter,
                                                  scan_limit=PENDING_SCAN_ROWS)

    if feed == "normal" or descending:
        rows, last_seq, pending = read(since, limit, descending)
        return Response(_normal_body(rows, last_seq, pending), mimetype="application/json")

    # waitress says when the client has gone (serve reads ahead on every connection): a
    # feed whose client left ends within DISCONNECT_CHECK_SECONDS, not at its timeout.
    client_gone = request.environ.get("waitress.client_disconnected") or (lambda: False)

    def wait(seq, deadline):
        """Wait for a change after ``seq``: yields heartbeat newlines, then True on a change.

        Ends without yielding True when the deadline passes first, or the client goes.
        """
        beat_at = time.monotonic() + heartbeat if heartbeat else None
        while not client_gone():
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return
            step = min(remaining, DISCONNECT_CHECK_SECONDS)
            if beat_at is not None:
                step = max(0.0, min(step, beat_at - now))
            if feed_store.wait_for_change(seq, step):
                yield True
                return
            now = time.monotonic()
            if beat_at is not None and now >= beat_at and deadline - now > 0:
                beat_at = now + heartbeat
                yield "\n"

    if feed == "longpoll":
        rows, last_seq, pending = read(since, limit)
        if rows:
            # Nothing to wait for: answered at once, without a feed slot.
            return Response(_normal_body(rows, last_seq, pending),
                            mimetype="application/json")
        release, refused = _feed_slot(principal)
        if refused is not None:
            return refused

        def longpoll():
            nonlocal rows, last_seq, pending
            try:
                deadline = time.monotonic() + timeout
                while not rows:
                    changed = yield from _relay(wait(last_seq, deadline))
                    if client_gone():
                        return
                    if not changed:
                        break
                    # A change the filters drop leaves rows empty: keep waiting after it.
                    rows, last_seq, pending = read(last_seq, limit)
                yield from _normal_body(rows, last_seq, pending)
            finally:
                release()

        return _feed_response(longpoll(), release, "application/json")

    eventsource = feed == "eventsource"
    release, refused = _feed_slot(principal)
    if refused is not None:
        return refused

    def continuous():
        try:
            seq, sent = since, 0
            deadline = time.monotonic() + timeout
            while True:
                rows, seq_after = feed_store.changes(
                    seq, limit=None if limit is None else limit - sent,
                    row_filter=row_filter(), **options)
                for row in rows:
                    if eventsource:
                        yield f"data: {_encode(row)}\nid: {row['seq']}\n\n"
                    else:
                        yield _encode(row) + "\n"
                sent += len(rows)
                seq = seq_after
                if rows:
                    deadline = time.monotonic() + timeout
                if limit is not None and sent >= limit:
                    break
                changed = yield from _relay(wait(seq, deadline))
                if client_gone():
                    return
                if not changed:
                    break
            if not eventsource:
                yield _encode({"last_seq": seq, "pending": 0}) + "\n"
        finally:
            release()

    return _feed_response(continuous(), release, "text/event-stream" if eventsource
                          else "application/json")


#: How often a waiting feed looks whether its client is still there (seconds).
DISCONNECT_CHECK_SECONDS = 1.0
#: ``Retry-After`` of a feed refused for the limits (seconds).
FEED_RETRY_AFTER = 10


def _feed_slot(principal):
    """Take one of the feed slots of the app for ``principal`` (shared/serving.py).

    :returns: ``(release, None)``, ``release`` giving the slot back (idempotent), or
        ``(None, response)``: 429 when the principal holds ``FEED_MAX_PER_PRINCIPAL``
        feeds already, 503 when the node holds ``FEED_MAX_CONCURRENT``.
    """
    from shared import serving

    app = current_app._get_current_object()
    limits = app.extensions.get("couch_feed_limits")
    if limits is None:
        limits = app.extensions.setdefault("couch_feed_limits", serving.FeedLimits())
    total, per_principal = serving.FeedLimits.limits(app.config)
    key = (principal.kind, principal.name)
    refused = limits.acquire(key, total, per_principal)
    if refused is None:
        released = []

        def release():
            if not released:
                released.append(True)
                limits.release(key)
        return release, None
    headers = {"Retry-After": str(FEED_RETRY_AFTER)}
    who = f"节点 {principal.name}" if principal.kind == "node" else f"账户 {principal.name}"
    logger.info("changes feed of %s %s refused: %s limit reached", principal.kind,
                   principal.name, refused)
    if refused == "principal":
        return None, error_response(
            429, "too_many_requests",
            f"{who}同时打开的变更订阅已达上限（{per_principal} 个），请稍后再试", headers)
    return None, error_response(
        503, "service_unavailable",
        f"本节点同时打开的变更订阅已达上限（{total} 个），请稍后再试", headers)


def _feed_response(body, release, mimetype):
    """A streamed feed whose slot is given back when the server closes it (also when the
    body never started: a client gone before the first chunk)."""
    response = Response(body, mimetype=mimetype)
    response.call_on_close(release)
    return response


def _relay(events):
    """Pass a wait's heartbeats through; return True when it ended on a change."""
    changed = False
    for event in events:
        if event is True:
            changed = True
        else:
            yield event
    return changed


def _heartbeat_seconds():
    """``heartbeat`` in seconds (``true`` means CouchDB's default 60 s), or None."""
    value = request.args.get("heartbeat")
    if value is None or value == "false":
        return None
    if value == "true":
        return 60.0
    try:
        millis = int(value)
    except ValueError:
        raise QueryParseError(f"Invalid heartbeat value: \"{value}\"") from None
    if millis <= 0:
        raise errors.BadRequest(
            "The heartbeat value should be a positive integer (in milliseconds).")
    if millis > MAX_QUERY_INT:  # a float cannot hold it: refused like CouchDB's bad ints
        raise QueryParseError(f"Invalid heartbeat value: \"{value[:40]}\"")
    return millis / 1000.0


def _normal_body(rows, last_seq, pending):
    """The ``{"results": [...], "last_seq", "pending"}`` body, streamed in chunks."""
    yield '{"results":[\n'
    for start in range(0, len(rows), CHANGES_CHUNK_ROWS):
        chunk = ",\n".join(_encode(row) for row in rows[start:start + CHANGES_CHUNK_ROWS])
        yield (",\n" if start else "") + chunk
    yield f'\n],\n"last_seq":{last_seq},"pending":{pending}}}\n'


class CouchPathConverter(PathConverter):
    """A document id in a path: anything, newlines too (Werkzeug's ``path`` stops at one,
    and the id would fall through to the app's HTML 404)."""

    regex = "[^/][\\s\\S]*?"


def init_app(app):
    """Register the /db endpoints, their error mapping and the default access policy."""
    if "couch_policy" not in app.extensions:
        auth.init_app(app)
    app.url_map.converters["couchpath"] = CouchPathConverter
    app.register_blueprint(bp)
