"""A bounded fuzz of every door a stranger can knock on: the CouchDB API at ``/db`` and the
citizens' public forms (progress, online pre-application, appointments).

Random methods, paths (lone surrogates and bytes that are no UTF-8 at all, percent-encoded
as a client could send them), query parameters (huge integers, ``NaN``, JSON), bodies
(random JSON, JSON with lone surrogates, invalid UTF-8, random bytes) and credentials go
through the Flask test client. Whatever comes in: no answer is a 5xx, an error on ``/db``
is CouchDB's ``{"error", "reason"}``, and a refused request (4xx) changes nothing stored.
"""

import datetime
import json
import re
from io import BytesIO
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared import clock, identity, registry
from shared.cases import appointments as ap
from shared.views import appointments as appointment_pages
from shared.views import progress
from tests import casekit as K
from tests.conftest import REPLICATOR, add_account, basic_auth, make_county

SETTINGS = settings(max_examples=600, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
FORM_SETTINGS = settings(SETTINGS, max_examples=300)

TABLET = ("tablet", "tablet-pass-123")
SCOPED_NODE = "441521101001"
NUMBER = f"{SCOPED_NODE}-20261122-0001"


# -- values -------------------------------------------------------------------------------

#: Integers past every limit: SQLite's 64 bits, floats, Python's 4300-digit conversion.
HUGE_INTS = [2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 25, 10 ** 30, -(2 ** 63) - 1, 10 ** 300]
STRINGS = ["", " ", "\ud800", "\udfff", "a\ud83d", "\ud83d\ude00", "\x00", "\ufffd", "é",
           "中文", "_local/ck", "_design/d", "_bad", "case:" + NUMBER, "status:441521",
           "item:x", "a/b", "%", "%ED%A0%80", "../..", "NaN", "Infinity", "-Infinity",
           "1-abc", "0-0", "0-1", "2-" + "f" * 32, "9" * 30 + "-abc", "1-", "-1-a", "a" * 300]

text = st.one_of(st.text(max_size=10), st.text(max_size=10), st.text(max_size=10),
                 st.sampled_from(STRINGS),
                 st.builds(lambda a, b: a + "\ud800" + b, st.text(max_size=3),
                           st.text(max_size=3)))
integers = st.one_of(st.integers(-3, 5), st.integers(), st.sampled_from(HUGE_INTS))
scalars = st.one_of(st.none(), st.booleans(), integers,
                    st.floats(allow_nan=True, allow_infinity=True), text)
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)),
    max_leaves=12)

doc_ids = st.one_of(st.sampled_from(["a", "b", "c", "_design/d", "_local/ck", "new",
                                     "case:" + NUMBER, "status:" + SCOPED_NODE]), text)
revs = st.one_of(st.sampled_from(["1-abc", "0-0", "2-" + "0" * 32, "1-" + "a" * 32]), text,
                 st.builds(lambda n, h: f"{n}-{h}", integers, st.text("0123456789abcdef",
                                                                      max_size=33)))


def documents():
    plain = st.fixed_dictionaries({"v": json_values}, optional={
        "_id": doc_ids, "type": text, "items": st.lists(json_values, max_size=3)})
    members = st.fixed_dictionaries({}, optional={
        "_id": doc_ids, "_rev": st.one_of(revs, json_values), "_deleted": json_values,
        "_revisions": st.one_of(json_values, st.fixed_dictionaries(
            {"start": integers, "ids": st.lists(st.one_of(text, json_values), max_size=3)})),
        "_attachments": json_values, "_foo": json_values, "_conflicts": json_values,
        "v": json_values, "type": text})
    return st.one_of(plain, plain, members, json_values)


def encode(value, how):
    """JSON text of ``value`` (with Python's ``NaN`` and ``Infinity``): escaped (surrogates
    as ``\\udxxx``) or raw (surrogates as the bytes UTF-8 forbids)."""
    if how == "escaped":
        return json.dumps(value, ensure_ascii=True, allow_nan=True).encode("ascii")
    return json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8",
                                                                        "surrogatepass")


bodies = st.one_of(
    st.builds(encode, json_values, st.sampled_from(["escaped", "raw"])),
    st.builds(encode, st.fixed_dictionaries({}, optional={
        "docs": st.one_of(st.lists(documents(), max_size=4), json_values),
        "new_edits": json_values, "keys": st.one_of(st.lists(text, max_size=4), json_values),
        "doc_ids": json_values}), st.sampled_from(["escaped", "raw"])),
    st.builds(encode, st.fixed_dictionaries({"docs": st.lists(st.fixed_dictionaries(
        {}, optional={"id": st.one_of(doc_ids, json_values),
                      "rev": st.one_of(revs, json_values)}), max_size=4)}),
        st.sampled_from(["escaped", "raw"])),
    st.builds(encode, st.dictionaries(doc_ids, st.one_of(st.lists(revs, max_size=3),
                                                         json_values), max_size=3),
              st.sampled_from(["escaped", "raw"])),
    st.builds(encode, documents(), st.sampled_from(["escaped", "raw"])),
    st.binary(max_size=40),
    st.just(b""))

PARAMS = ["since", "limit", "skip", "keys", "key", "startkey", "start_key", "endkey",
          "end_key", "descending", "include_docs", "conflicts", "deleted_conflicts",
          "revs_info", "meta", "rev", "revs", "open_revs", "latest", "feed", "style",
          "timeout", "heartbeat", "filter", "doc_ids", "new_edits", "count",
          "inclusive_end"]


def param_values(name):
    choices = [st.sampled_from(["true", "false", "now", "0", "-1", "nan", "NaN", "inf",
                                "Infinity", "1e999", "１２", "²", "all", "normal",
                                "longpoll", "continuous", "eventsource", "live",
                                "_doc_ids", "_design", "_view", "all_docs"]),
               st.builds(str, integers), text,
               st.builds(lambda v: json.dumps(v), json_values)]
    if name == "heartbeat":
        # Kept within a float until couch._heartbeat_seconds bounds it (see the test of
        # known answers below).
        choices[1] = st.builds(str, st.integers(-10 ** 30, 10 ** 30))
    return st.one_of(*choices)


queries = st.lists(st.sampled_from(PARAMS).flatmap(
    lambda name: st.tuples(st.just(name), param_values(name))), max_size=4)


def wire(value):
    """``value`` percent-encoded as a client sends it (a surrogate as its UTF-8 bytes)."""
    if isinstance(value, bytes):
        return quote(value, safe="")
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def query_string(pairs):
    return "&".join(f"{wire(name)}={wire(value)}" for name, value in pairs)


DB_PATHS = ["/db", "/db/", "/db/_all_docs", "/db/_changes", "/db/_bulk_docs",
            "/db/_bulk_get", "/db/_revs_diff", "/db/_revs_limit", "/db/_ensure_full_commit",
            "/db/_local/ck", "/db/_local/", "/db/_local", "/db/a", "/db/b", "/db/c",
            "/db/_design/d", "/db/_nope", "/_uuids", "/"]
paths = st.one_of(
    st.sampled_from(DB_PATHS),
    st.builds(lambda prefix, doc_id: prefix + wire(doc_id),
              st.sampled_from(["/db/", "/db/_local/", "/db/_design/"]), doc_ids),
    st.builds(lambda prefix, raw: prefix + wire(raw),
              st.sampled_from(["/db/", "/db/_local/"]), st.binary(min_size=1, max_size=6)))
methods = st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "COPY", "PATCH",
                           "OPTIONS"])
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "text/plain", "multipart/related; boundary=x",
                                 "application/x-www-form-urlencoded", None])
credentials = st.sampled_from(["full"] * 5 + ["tablet"] * 2 + ["node"] * 2 +
                              ["none", "wrong", "non-ascii", "node-garbage"])


def _json(value):
    return encode(value, "escaped")


#: Requests shaped as clients send them, with random parts: they get past the first checks
#: (and write, conflict, read) where a wholly random request is refused at once.
shaped = st.one_of(
    st.tuples(st.just("PUT"), st.builds(lambda i: "/db/" + wire(i), doc_ids), queries,
              st.builds(_json, documents()), st.just("application/json")),
    st.tuples(st.just("POST"), st.just("/db"), st.just([]), st.builds(_json, documents()),
              st.just("application/json")),
    st.tuples(st.just("DELETE"), st.builds(lambda i: "/db/" + wire(i), doc_ids),
              st.lists(st.tuples(st.just("rev"), revs), max_size=1), st.just(b""),
              st.just(None)),
    st.tuples(st.just("POST"), st.just("/db/_bulk_docs"), st.just([]), st.builds(
        lambda docs, new_edits: _json({"docs": docs, "new_edits": new_edits}),
        st.lists(documents(), max_size=4), st.one_of(st.booleans(), json_values)),
        st.just("application/json")),
    st.tuples(st.just("POST"), st.just("/db/_bulk_get"), queries, st.builds(
        lambda docs: _json({"docs": docs}), st.lists(st.fixed_dictionaries(
            {"id": doc_ids}, optional={"rev": revs}), max_size=4)), st.just("application/json")),
    st.tuples(st.just("POST"), st.just("/db/_revs_diff"), st.just([]), st.builds(
        _json, st.dictionaries(doc_ids, st.lists(revs, max_size=3), max_size=3)),
        st.just("application/json")),
    st.tuples(st.sampled_from(["GET", "POST"]), st.just("/db/_all_docs"), queries, st.builds(
        lambda keys: _json({"keys": keys}), st.lists(st.one_of(doc_ids, json_values),
                                                     max_size=4)), st.just("application/json")),
    st.tuples(st.sampled_from(["GET", "POST"]), st.just("/db/_changes"), queries, st.builds(
        lambda ids: _json({"doc_ids": ids}), st.lists(doc_ids, max_size=3)),
        st.just("application/json")),
    st.tuples(st.sampled_from(["GET", "PUT", "DELETE"]),
              st.builds(lambda i: "/db/_local/" + wire(i), doc_ids), st.just([]),
              st.builds(_json, documents()), st.just("application/json")),
    st.tuples(st.sampled_from(["GET", "PUT"]), st.just("/db/_revs_limit"), st.just([]),
              st.builds(_json, st.one_of(integers, json_values)), st.just("application/json")),
    st.tuples(st.just("GET"), st.builds(lambda i: "/db/" + wire(i), doc_ids), queries,
              st.just(b""), st.just(None)),
)
chaotic = st.tuples(methods, paths, queries, bodies, content_types)


# -- /db ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def db_node(tmp_path_factory):
    """A county node holding a few documents and the checkpoints of two callers; village
    ``SCOPED_NODE`` is in its registry (its key in ``app.village_signer``)."""
    app = make_county(tmp_path_factory.mktemp("fuzz-db"), LONGPOLL_MAX_TIMEOUT=0.05)
    village_key = identity.new_private_key()
    registry.publish_entry(app.extensions["store"], app.key, code=SCOPED_NODE,
                           tier="village", name="东村",
                           public_key=identity.b64(identity.public_key_bytes(village_key)))
    app.village_signer = identity.RequestSigner(SCOPED_NODE, village_key)
    add_account(app, *REPLICATOR)
    add_account(app, *TABLET, scope=SCOPED_NODE)
    client = app.test_client()
    full, tablet = basic_auth(*REPLICATOR), basic_auth(*TABLET)
    for doc_id in ("a", "b", "_design/d"):
        assert client.put(f"/db/{doc_id}", json={"v": 1}, headers=full).status_code == 201
    assert client.put("/db/_local/ck", json={"seq": 1}, headers=full).status_code == 201
    assert client.put("/db/_local/ck", json={"seq": 2}, headers=tablet).status_code == 201
    yield app
    app.extensions["store"].close()


def snapshot(store):
    """Everything a request could change: documents, checkpoints, settings."""
    db = store.db
    return (store.update_seq(),
            db.execute_sql("SELECT id, seq, rev, deleted FROM document ORDER BY id").fetchall(),
            db.execute_sql("SELECT owner, id, rev, body FROM local_doc "
                           "ORDER BY owner, id").fetchall(),
            store.meta("revs_limit"))


def auth_headers(kind):
    if kind == "full":
        return basic_auth(*REPLICATOR)
    if kind == "tablet":
        return basic_auth(*TABLET)
    if kind == "wrong":
        # Not the replicator's name: failed logins lock an account out for a while.
        return basic_auth("nobody", "not-the-password")
    if kind == "non-ascii":
        return {"Authorization": "Basic \xe9\xe8=="}
    if kind == "node-garbage":
        return {"Authorization": f"{identity.AUTH_SCHEME} node=441521101, ts=nan, "
                                 f"nonce={'a' * 32}, sig=\"\xe9\""}
    return {}


def check_answer(response, path, method, before, after):
    body = response.get_data()  # a streamed feed runs to its end here
    response.close()  # as a server does: a feed gives its slot back
    where = f"{method} {path}: {response.status_code} {body[:300]!r}"
    assert response.status_code < 500, where
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    if response.status_code >= 400:
        assert after == before, f"a refused request changed the store: {where}"
        on_db = path == "/db" or path.startswith(("/db/", "/db?", "/_uuids"))
        if on_db and method != "HEAD":
            error = json.loads(body)
            assert isinstance(error.get("error"), str) and isinstance(error.get("reason"),
                                                                      str), where


@SETTINGS
@given(request=st.one_of(shaped, chaotic), who=credentials,
       if_match=st.one_of(st.none(), st.none(), revs), address=st.integers(1, 60000))
def test_the_db_api_never_fails_and_refusals_change_nothing(db_node, request, who, if_match,
                                                            address):
    method, path, query, body, content_type = request
    store = db_node.extensions["store"]
    target = path + ("?" + query_string(query) if query else "")
    headers = db_node.village_signer.headers(method, target, body) if who == "node" else \
        auth_headers(who)
    if content_type:
        headers["Content-Type"] = content_type
    if if_match is not None:
        headers["If-Match"] = wire(if_match)
    before = snapshot(store)
    # Each example from its own address: failed logins lock an address out for a while.
    environ = {"REMOTE_ADDR": f"10.{address // 250}.{address % 250}.1"}
    response = db_node.test_client().open(target, method=method, headers=headers, data=body,
                                          environ_base=environ)
    event(f"status {response.status_code}")  # --hypothesis-show-statistics shows the mix
    check_answer(response, target, method, before, snapshot(store))


@pytest.mark.parametrize("target, body", [
    # couch._heartbeat_seconds divided an unbounded int (OverflowError past a float).
    ("/db/_changes?heartbeat=" + "1" * 400, None),
    # shared.store.revs.parse_rev converted a rev's position with int() (ValueError past
    # 4300 digits), on every path that parses a rev.
    ("/db/a?rev=" + "9" * 5000 + "-abc", None),
    ("/db/_revs_diff", json.dumps({"a": ["9" * 5000 + "-abc"]}).encode()),
], ids=["heartbeat", "rev", "revs_diff"])
def test_inputs_that_once_gave_a_5xx(db_node, target, body):
    store = db_node.extensions["store"]
    before = snapshot(store)
    headers = {**basic_auth(*REPLICATOR), "Content-Type": "application/json"}
    response = db_node.test_client().open(target, method="POST" if body else "GET",
                                          headers=headers, data=body)
    check_answer(response, target, "POST" if body else "GET", before, snapshot(store))


# -- the public forms -----------------------------------------------------------------------

TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def village(tmp_path_factory):
    """Village A of a small region: a decided case its applicant has proven, open
    appointment slots, and a citizen's browser holding the form token."""
    kit = K.Kit(tmp_path_factory.mktemp("fuzz-forms"))
    county = kit.apps[K.COUNTY]
    for code, tier in ((K.TOWNSHIP, "township"), (K.VILLAGE_A, "village")):
        key = identity.b64(identity.public_key_bytes(identity.new_private_key()))
        registry.publish_entry(kit.store(K.COUNTY), county.key, code=code, tier=tier,
                               name=K.NAMES[code], public_key=key)
    kit.sync()
    app = kit.apps[K.VILLAGE_A]
    for code, node in kit.apps.items():
        node.extensions["case_desk"] = kit.desk(code)
        if "progress" not in node.blueprints:
            progress.init_app(node)
        if "appointments" not in node.blueprints:
            appointment_pages.init_app(node)
    desk = kit.desk(K.VILLAGE_A)
    number = desk.receive("GD-LS-04", K.applicant(), K.full_materials(desk, "GD-LS-04"),
                          "accept", K.clerk())
    kit.sync()
    kit.desk(K.TOWNSHIP).approve(number, K.approver(), "准予")
    kit.sync()
    slot = ap.publish_slots(kit.store(K.VILLAGE_A).db,
                            clock.today() + datetime.timedelta(days=1), "09:00", "10:00", 30,
                            2, by="clerk-a")[0]
    browser = app.test_client()
    token = TOKEN.search(browser.get("/progress").get_data(as_text=True)).group(1)
    proven = browser.post("/progress", data={"number": number, "proof": "陈阿婆",
                                             "form_token": token})
    assert proven.status_code == 302, proven.get_data(as_text=True)
    yield {"kit": kit, "app": app, "browser": browser, "token": token, "number": number,
           "slot": slot["id"]}
    kit.close()


FIELDS = ["number", "proof", "form_token", "score", "text", "id_number", "name", "phone",
          "address", "station", "slot", "code", "csrf_token"]
#: The public pages and the methods they take.
FORM_ROUTES = [("/progress", "GET,POST"), ("/progress/exit", "POST"),
               ("/progress/{number}", "GET"), ("/progress/{number}/rate", "POST"),
               ("/progress/{number}/complain", "POST"), ("/progress/{other}", "GET"),
               ("/progress/{other}/rate", "POST"), ("/progress/{other}/complain", "POST"),
               ("/apply", "GET"), ("/apply/GD-LS-04", "GET,POST"),
               ("/apply/GD-LS-13", "GET,POST"), ("/apply/GD-LS-14", "GET,POST"),
               ("/apply/{other}", "GET,POST"), ("/apply/done/{number}", "GET"),
               ("/apply/done/{other}", "GET"), ("/appointments", "GET,POST"),
               ("/appointments/booked", "GET"), ("/appointments/cancel", "GET,POST")]
form_requests = st.sampled_from(FORM_ROUTES).flatmap(lambda route: st.tuples(
    st.just(route[0]), st.sampled_from(route[1].split(",") * 6 + ["GET", "POST", "PUT",
                                                                 "DELETE"])))
form_values = st.one_of(text, st.builds(str, integers),
                        st.sampled_from(["{token}", "{number}", "{slot}", K.CITIZEN,
                                         "13800138000", "陈阿婆", "1", "5", "441521101001"]))


def form_body(pairs, fill):
    return "&".join(f"{wire(name)}={wire(fill(value))}" for name, value in pairs).encode()


@FORM_SETTINGS
@given(route=form_requests, other=text, pairs=st.lists(st.tuples(
        st.sampled_from(FIELDS), form_values), max_size=6),
    token=st.sampled_from(["{token}"] * 4 + ["", "x"]),
    kind=st.sampled_from(["urlencoded", "urlencoded", "multipart", "raw"]),
    raw=st.binary(max_size=60), address=st.integers(1, 250),
    files=st.lists(st.tuples(st.sampled_from(["material-0", "material-1", "material-x"]),
                             st.binary(max_size=40), st.text(max_size=8)), max_size=2))
def test_the_public_forms_never_fail_and_refusals_change_nothing(village, route, other, pairs,
                                                                 token, kind, raw, address,
                                                                 files):
    path, method = route
    store = village["kit"].store(K.VILLAGE_A)
    pairs = [("form_token", token), *pairs]

    def fill(value):
        return value.format(token=village["token"], number=village["number"],
                            slot=village["slot"]) if value.startswith("{") and \
            value.endswith("}") and value[1:-1] in ("token", "number", "slot") else value

    target = path.format(number=village["number"], other=wire(other) or "x")
    client = village["browser"]
    environ = {"REMOTE_ADDR": f"10.9.{address}.{address % 7 + 1}"}
    if kind == "multipart":
        data = {name: fill(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                for name, value in pairs}
        for field, content, filename in files:
            data[field] = (BytesIO(content), filename or "f")
        options = {"data": data, "content_type": "multipart/form-data"}
    elif kind == "raw":
        options = {"data": raw, "content_type": "application/x-www-form-urlencoded"}
    else:
        options = {"data": form_body(pairs, fill),
                   "content_type": "application/x-www-form-urlencoded"}
    before = snapshot(store)
    response = client.open(target, method=method, environ_base=environ, **options)
    event(f"status {response.status_code}")
    check_answer(response, target, method, before, snapshot(store))
