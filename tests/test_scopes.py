"""Scopes enforced by the serving node on every read and write path (docs/sync.md, "Scopes").

A township holds the cases of its villages A and B; one of B's cases was transferred to
village C of another township. Signed requests (real keys, a real signed registry) go
through the Flask test client on real SQLite files.
"""

import json
import sqlite3
import threading
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from shared import casedocs, clock, identity, registry
from shared.models import Account
from shared.scopes import CaseParties
from tests.conftest import add_account, basic_auth, make_app

COUNTY, TOWN, TOWN2 = "441521", "441521101", "441521102"
A, B, REVOKED, UNKNOWN = "441521101001", "441521101002", "441521101009", "441521101008"
C, D = "441521102001", "441521102002"
TIERS = {6: "county", 9: "township", 12: "village"}
KEY = "a" * 64
DAY = "20261122"


def hlc(n):
    """An HLC string, ``n`` steps after a fixed moment."""
    return f"{1795000000000 + n:015d}-00000"


def number(code, seq):
    return f"{code}-{DAY}-{seq:04d}"


A1, B1, B2, D1 = number(A, 1), number(B, 1), number(B, 2), number(D, 1)


def header(num, origin, handler, step=0):
    return casedocs.case_header(num, "item:1", origin, handler, KEY, hlc(step))


def event(num, node, step, kind="notice", parties=()):
    return casedocs.case_event(num, kind, node, hlc(step), parties)


@pytest.fixture(scope="module")
def keys():
    """The county key and one key per node code."""
    return {code: identity.new_private_key()
            for code in (COUNTY, TOWN, TOWN2, A, B, C, D, REVOKED, UNKNOWN)}


def registry_docs(keys):
    """Signed registry entries of every node but UNKNOWN; REVOKED at version 2, revoked."""
    county = keys[COUNTY]
    docs = []
    for code, key in keys.items():
        if code == UNKNOWN:
            continue
        pub = identity.b64(identity.public_key_bytes(key))
        docs.append(registry.make_entry(county, code=code, tier=TIERS[len(code)],
                                        name=code, public_key=pub,
                                        status="revoked" if code == REVOKED else "active",
                                        version=2 if code == REVOKED else 1))
    return docs


def seed(store, keys):
    """The documents a township (or county) holds: registry, catalog, cases, statuses."""
    docs = registry_docs(keys) + [
        {"_id": "item:1", "type": "item", "name": "低保申请"},
        {"_id": "release:1", "type": "release", "items": ["item:1"]},
        header(A1, A, TOWN, 1), event(A1, A, 2, "accepted"),
        header(B1, B, TOWN, 3), event(B1, B, 4, "accepted"),
        event(B1, TOWN, 5, "transferred", parties=[C]),
        header(B2, B, TOWN, 6), event(B2, B, 7, "accepted"),
        {"_id": f"status:{A}", "type": "status"}, {"_id": f"status:{B}", "type": "status"},
        {"_id": "settings", "type": "settings", "secret": "only for full scope"},
        {"_id": "_design/x", "views": {}},
    ]
    for doc in docs:
        store.put(doc)


def make_node(tmp_path, keys, tier, code, name):
    pub = identity.b64(identity.public_key_bytes(keys[COUNTY]))
    path = tmp_path / name
    path.mkdir()
    app = make_app(path, TIER=tier, NODE_CODE=code, COUNTY_PUBLIC_KEY=pub)
    seed(app.extensions["store"], keys)
    return app


@pytest.fixture
def town(tmp_path, keys):
    app = make_node(tmp_path, keys, "township", TOWN, "town")
    yield app
    app.extensions["store"].close()


class Signed:
    """Signed requests of one node to ``app``'s /db, through the test client."""

    def __init__(self, app, code, key, clock=clock.time):
        self.client = app.test_client()
        self.signer = identity.RequestSigner(code, key, clock=clock)

    def headers(self, method, path, data=b""):
        return self.signer.headers(method, path, data)

    def open(self, method, path, body=None, data=None, headers=None):
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        data = data or b""
        all_headers = {**self.headers(method, path, data), **(headers or {})}
        if data:
            all_headers.setdefault("Content-Type", "application/json")
        return self.client.open(path, method=method, data=data, headers=all_headers)

    def get(self, path, **kwargs):
        return self.open("GET", path, **kwargs)

    def post(self, path, body=None, **kwargs):
        return self.open("POST", path, body, **kwargs)

    def put(self, path, body=None, **kwargs):
        return self.open("PUT", path, body, **kwargs)

    def json(self, method, path, body=None, status=200):
        response = self.open(method, path, body)
        assert response.status_code == status, response.get_data(as_text=True)
        return response.get_json()

    def changes(self, query=""):
        return self.json("GET", "/db/_changes" + query)


def q(value):
    """A JSON query parameter, percent-encoded."""
    return quote(json.dumps(value), safe="")


def node(app, keys, code, **kwargs):
    return Signed(app, code, keys[code], **kwargs)


def ids_of(rows):
    return [row["id"] for row in rows if "id" in row]


def live_ids(store):
    _, rows = store.all_docs()
    return {row["id"] for row in rows}


A_SEES = {f"case:{A1}", f"event:{A1}:{hlc(2)}:{A}", "item:1", "release:1", f"status:{A}"}
B_DOCS = {f"case:{B1}", f"event:{B1}:{hlc(4)}:{B}", f"event:{B1}:{hlc(5)}:{TOWN}",
          f"case:{B2}", f"event:{B2}:{hlc(7)}:{B}"}
HIDDEN_FROM_A = B_DOCS | {f"status:{B}", "settings", "_design/x"}


def leaks(text):
    """True when a response to A names anything of B's or of the full scope."""
    return any(secret in text for secret in (B1, B2, f"status:{B}", "only for full scope",
                                             "_design/x"))


def visible_to_a(ids):
    """The ids of a listing, less the registry (every node reads it)."""
    return {i for i in ids if not i.startswith("node:")}


# -- reading ---------------------------------------------------------------------------

def test_village_reads_its_own_cases_and_the_catalog_only(town, keys):
    a = node(town, keys, A)
    feed = a.changes()
    assert visible_to_a(ids_of(feed["results"])) == A_SEES
    assert {i for i in ids_of(feed["results"]) if i.startswith("node:")}, "registry reaches all"
    assert feed["last_seq"] == town.extensions["store"].update_seq()
    rows = a.json("GET", "/db/_all_docs?include_docs=true")["rows"]
    assert visible_to_a(ids_of(rows)) == A_SEES
    assert a.json("GET", f"/db/case:{A1}")["origin"] == A
    assert a.json("GET", "/db/item:1")["name"] == "低保申请"
    # A client that percent-encodes ':' signed the path as it sent it.
    assert a.json("GET", f"/db/case%3A{A1}")["origin"] == A


def _ghost(doc_id):
    """An id of the same kind that exists nowhere (the answer for it is the baseline)."""
    return doc_id.replace(B, "441521101007")


@pytest.mark.parametrize("template", [
    "/db/{id}", "/db/{id}?rev={rev}", "/db/{id}?open_revs=all",
    "/db/{id}?open_revs={revs}", "/db/{id}?revs=true&revs_info=true&conflicts=true",
    "/db/{id}?open_revs={revs}&latest=true",
])
def test_another_villages_documents_look_missing_by_id(town, keys, template):
    a = node(town, keys, A)
    store = town.extensions["store"]
    for doc_id in sorted(HIDDEN_FROM_A - {"_design/x"}):
        rev = store.get(doc_id)["_rev"]
        answers = []
        for asked in (doc_id, _ghost(doc_id)):
            path = template.format(id=asked, rev=rev, revs=q([rev]))
            response = a.get(path)
            answers.append((response.status_code, response.get_data(as_text=True)))
            head = a.open("HEAD", path)
            assert head.status_code == response.status_code
        assert answers[0][0] == 404, (doc_id, answers[0])
        assert answers[0] == answers[1], doc_id
        assert not leaks(answers[0][1])


def test_bulk_get_and_revs_diff_answer_as_for_a_missing_document(town, keys):
    a = node(town, keys, A)
    store = town.extensions["store"]
    for doc_id in sorted(HIDDEN_FROM_A - {"_design/x"}):
        rev = store.get(doc_id)["_rev"]
        other = "1-" + "0" * 32
        ghost = _ghost(doc_id)
        for query in ("", "?revs=true", "?revs=true&latest=true"):
            asked = [{"id": doc_id}, {"id": doc_id, "rev": rev}, {"id": doc_id, "rev": "x"}]
            got = a.json("POST", "/db/_bulk_get" + query, {"docs": asked})
            baseline = a.json("POST", "/db/_bulk_get" + query,
                              {"docs": [dict(item, id=ghost) for item in asked]})
            assert json.dumps(got).replace(doc_id, ghost) == json.dumps(baseline)
            assert all("error" in d for r in got["results"] for d in r["docs"])
        diff = a.json("POST", "/db/_revs_diff", {doc_id: [rev, other, rev], "item:1": [rev]})
        baseline = a.json("POST", "/db/_revs_diff", {ghost: [rev, other, rev],
                                                     "item:1": [rev]})
        assert json.dumps(diff).replace(doc_id, ghost) == json.dumps(baseline)
        assert "possible_ancestors" not in diff[doc_id]


@pytest.mark.parametrize("query", [
    "", "?include_docs=true", "?include_docs=true&conflicts=true", "?descending=true",
    "?limit=2&skip=1", "?startkey={lo}&endkey={hi}",
    "?start_key={lo}&end_key={hi}&include_docs=true",
    "?startkey={hi}&endkey={lo}&descending=true&include_docs=true", "?key={key}",
    "?keys={keys}", "?keys={keys}&include_docs=true",
])
def test_all_docs_never_lists_another_villages_documents(town, keys, query):
    a = node(town, keys, A)
    path = "/db/_all_docs" + query.format(
        lo=q("case:"), hi=q("event:\ufff0"), key=q(f"case:{B1}"),
        keys=q(sorted(HIDDEN_FROM_A) + [f"case:{A1}"]))
    response = a.get(path)
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    # Asked by key, the keys come back (as for any missing document), nothing more.
    assert "keys" in query or not leaks(text)
    assert "only for full scope" not in text
    listed = set(ids_of(response.get_json()["rows"]))
    assert not listed & HIDDEN_FROM_A
    if "keys" in query:
        rows = response.get_json()["rows"]
        assert ids_of(rows) == [f"case:{A1}"]
        assert [r["error"] for r in rows[:-1]] == ["not_found"] * len(HIDDEN_FROM_A)
    posted = a.json("POST", "/db/_all_docs?include_docs=true",
                    {"keys": sorted(HIDDEN_FROM_A)})
    assert all(row == {"key": row["key"], "error": "not_found"} for row in posted["rows"])


@pytest.mark.parametrize("query", [
    "", "?include_docs=true", "?style=all_docs&include_docs=true&conflicts=true",
    "?descending=true", "?limit=1", "?feed=longpoll&timeout=100", "?feed=continuous&timeout=100",
    "?feed=continuous&timeout=100&include_docs=true", "?feed=eventsource&timeout=100",
    "?filter=_doc_ids&doc_ids={ids}", "?filter=_doc_ids&doc_ids={ids}&include_docs=true",
    "?filter=_doc_ids&doc_ids={ids}&feed=longpoll&timeout=100", "?filter=_design",
])
def test_changes_never_carry_another_villages_documents(town, keys, query):
    a = node(town, keys, A)
    path = "/db/_changes" + query.format(ids=q(sorted(HIDDEN_FROM_A)))
    response = a.get(path)
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert not leaks(text)
    posted = a.post("/db/_changes?filter=_doc_ids&include_docs=true",
                    {"doc_ids": sorted(HIDDEN_FROM_A | {f"case:{A1}"})})
    assert ids_of(posted.get_json()["results"]) == [f"case:{A1}"]


def test_pending_counts_only_what_the_caller_may_read(town, keys):
    a = node(town, keys, A)
    everything = a.changes()["results"]
    first = a.changes("?limit=1")
    assert first["pending"] == len(everything) - 1
    assert len(everything) < town.extensions["store"].doc_count()


def test_a_longpoll_wakes_for_readable_changes_only(town, keys):
    a = node(town, keys, A)
    store = town.extensions["store"]
    since = store.update_seq()
    answer = {}

    def poll():
        answer["feed"] = a.changes(f"?feed=longpoll&since={since}&timeout=5000")

    waiter = threading.Thread(target=poll)
    waiter.start()
    store.put(event(B2, B, 20))          # B's: must not end A's wait
    store.put(event(A1, TOWN, 21))       # A's case: must
    waiter.join(30)
    assert not waiter.is_alive()
    assert ids_of(answer["feed"]["results"]) == [f"event:{A1}:{hlc(21)}:{TOWN}"]


def test_a_node_that_joins_a_case_receives_its_older_documents(town, keys):
    store = town.extensions["store"]
    c = node(town, keys, C)
    feed = c.changes()
    # C took part in B1 by transfer; B2 is not its business yet.
    assert {i for i in ids_of(feed["results"]) if B in i and "node:" not in i} == {
        f"case:{B1}", f"event:{B1}:{hlc(4)}:{B}", f"event:{B1}:{hlc(5)}:{TOWN}"}
    checkpoint = feed["last_seq"]
    # The county answers C's look-up and joins it to B2, pushing the event as a replicator
    # does. (Only the county joins a station: B itself may not, see test_write_policy.py.)
    joined = event(B2, COUNTY, 30, "joined", parties=[C])
    joined["_rev"] = "1-" + "ab" * 16
    assert node(town, keys, COUNTY).json("POST", "/db/_bulk_docs",
                                         {"docs": [joined], "new_edits": False}, 201) == []
    later = c.changes(f"?since={checkpoint}")["results"]
    assert ids_of(later) == [f"case:{B2}", f"event:{B2}:{hlc(7)}:{B}",
                             f"event:{B2}:{hlc(30)}:{COUNTY}"]
    assert c.json("GET", f"/db/case:{B2}")["origin"] == B
    # The township of C reads it now as well; A still does not.
    assert f"case:{B2}" in ids_of(node(town, keys, TOWN2).changes()["results"])
    assert a_cannot_see(town, keys, f"case:{B2}")
    # Nothing else moved: a second look from the new checkpoint is empty.
    assert c.changes(f"?since={store.update_seq()}")["results"] == []


def test_a_waiting_feed_sees_a_case_its_caller_joins_meanwhile(town, keys):
    store = town.extensions["store"]
    c = node(town, keys, C)
    since = store.update_seq()
    answer = {}

    def poll():
        # Continuous: one JSON row per line, ended by the last_seq line.
        response = c.get(f"/db/_changes?feed=continuous&since={since}&timeout=1000")
        lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()
                 if line.strip()]
        answer["feed"] = lines[:-1]

    policy = town.extensions["couch_policy"]
    first_read = threading.Event()
    read_filter = policy.read_filter

    def observed(principal):
        first_read.set()
        return read_filter(principal)

    policy.read_filter = observed
    store.put(event(B2, B, 31))            # read (and refused) before C joins
    waiter = threading.Thread(target=poll)
    waiter.start()
    assert first_read.wait(30)
    store.put(event(B2, TOWN, 32, "transferred", parties=[C]))
    waiter.join(30)
    assert not waiter.is_alive()
    got = ids_of(answer["feed"])
    # Re-announced: the header first, then the older events, then the one that joined C.
    assert got == [f"case:{B2}", f"event:{B2}:{hlc(7)}:{B}", f"event:{B2}:{hlc(31)}:{B}",
                   f"event:{B2}:{hlc(32)}:{TOWN}"]


def a_cannot_see(app, keys, doc_id):
    a = node(app, keys, A)
    return a.get(f"/db/{doc_id}").status_code == 404 and \
        doc_id not in ids_of(a.changes()["results"])


def test_ancestors_read_their_villages_cases_and_no_one_elses(tmp_path, keys):
    county = make_node(tmp_path, keys, "county", COUNTY, "county")
    try:
        store = county.extensions["store"]
        for doc in (header(D1, D, TOWN2, 40), event(D1, D, 41, "accepted")):
            store.put(doc)
        town_ids = set(ids_of(node(county, keys, TOWN).changes()["results"]))
        assert {f"case:{A1}", f"case:{B1}", f"case:{B2}", f"status:{A}"} <= town_ids
        assert f"case:{D1}" not in town_ids and "settings" not in town_ids
        town2_ids = set(ids_of(node(county, keys, TOWN2).changes()["results"]))
        # B1 was transferred to C, so C's township holds it too; D1 is its own.
        assert {f"case:{B1}", f"case:{D1}"} <= town2_ids
        assert f"case:{A1}" not in town2_ids and f"case:{B2}" not in town2_ids
        assert node(county, keys, COUNTY).json("GET", f"/db/case:{D1}")["origin"] == D
    finally:
        county.extensions["store"].close()


# -- writing ---------------------------------------------------------------------------

def _replicated(doc, parent_rev=None, rev_hash="cd" * 16):
    """``doc`` as a replicator sends it: a given revision, optionally after ``parent_rev``."""
    doc = dict(doc)
    if parent_rev is None:
        doc["_rev"] = "1-" + rev_hash
    else:
        pos, parent_hash = parent_rev.split("-")
        doc["_revisions"] = {"start": int(pos) + 1, "ids": [rev_hash, parent_hash]}
    return doc


def forbidden_docs(store):
    """Documents village A may not write, with what each should say."""
    a1 = store.get(f"case:{A1}")
    changed = dict(a1, handler=TOWN2)
    return {
        "catalog item": ({"_id": "item:2", "type": "item", "name": "伪造"}, "county"),
        "registry entry": ({"_id": f"node:{A}", "type": "node", "code": A}, "county"),
        "another station's case header": (header(number(B, 9), B, TOWN, 50), "originate"),
        "an event authored by another node": (event(A1, B, 51), "authored"),
        "an event with parties on a case it may not read": (
            event(B1, A, 52, "joined", parties=[A]), "take part"),
        "an event with parties on an unknown case": (
            event(number(A, 8), A, 53, "joined", parties=[A]), "not known"),
        "a second revision of its case header": (changed, "immutable"),
        "a deletion of its case header": (
            {"_id": f"case:{A1}", "_rev": a1["_rev"], "_deleted": True}, None),
        "another village's status": ({"_id": f"status:{B}", "type": "status"}, None),
        "a design document": ({"_id": "_design/y", "views": {}}, None),
        "an unscoped document": ({"_id": "settings", "v": 2}, None),
    }


def _snapshot(store):
    return store.update_seq(), {doc_id: store.get(doc_id)["_rev"]
                                for doc_id in live_ids(store)}


@pytest.mark.parametrize("mode", ["new_edits", "replicated", "put", "put_replicated"])
def test_forbidden_writes_change_nothing(town, keys, mode):
    store = town.extensions["store"]
    a = node(town, keys, A)
    before = _snapshot(store)
    for what, (doc, reason) in forbidden_docs(store).items():
        doc = dict(doc)
        if mode in ("replicated", "put_replicated"):
            if "_rev" in doc:
                doc = _replicated({k: v for k, v in doc.items() if k != "_rev"}, doc["_rev"])
            else:
                doc = _replicated(doc)
        if mode == "new_edits":
            result = a.json("POST", "/db/_bulk_docs", {"docs": [doc]}, 201)
            error = result[0]
        elif mode == "replicated":
            result = a.json("POST", "/db/_bulk_docs", {"docs": [doc], "new_edits": False}, 201)
            assert len(result) == 1, what
            error = result[0]
        else:
            query = "?new_edits=false" if mode == "put_replicated" else ""
            response = a.put(f"/db/{quote(doc['_id'], safe=':/')}{query}", doc)
            assert response.status_code == 403, (what, response.get_data(as_text=True))
            error = response.get_json()
        assert error["error"] == "forbidden", (what, error)
        if reason:
            assert reason in error["reason"], (what, error)
    assert _snapshot(store) == before


def test_forbidden_is_decided_before_any_conflict(town, keys):
    """A write to a document the caller cannot read says 403, never 409 (which would tell
    that it exists)."""
    store = town.extensions["store"]
    a = node(town, keys, A)
    before = _snapshot(store)
    for doc in (header(B1, B, TOWN, 3), header(A1, A, TOWN, 1)):
        response = a.put(f"/db/{doc['_id']}", doc)
        assert response.status_code == 403, response.get_data(as_text=True)
    deleted = a.open("DELETE", f"/db/case:{B1}?rev={store.get(f'case:{B1}')['_rev']}")
    assert deleted.status_code == 404
    assert _snapshot(store) == before


def test_a_village_writes_its_own_cases(town, keys):
    store = town.extensions["store"]
    a = node(town, keys, A)
    a2 = number(A, 2)
    batch = [header(a2, A, TOWN, 60), event(a2, A, 61, "accepted", parties=[TOWN]),
             event(A1, A, 62), {"_id": f"status:{A}", "type": "status", "v": 2,
                                "_rev": store.get(f"status:{A}")["_rev"]}]
    result = a.json("POST", "/db/_bulk_docs", {"docs": batch}, 201)
    assert all(entry.get("ok") for entry in result), result
    assert store.get(f"case:{a2}")["origin"] == A
    # A copy of a revision held already is accepted and changes nothing.
    seq = store.update_seq()
    held = store.get(f"case:{a2}", revs=True)
    assert a.json("POST", "/db/_bulk_docs", {"docs": [held], "new_edits": False}, 201) == []
    assert store.update_seq() == seq
    # Its checkpoint documents are its own business.
    assert a.put("/db/_local/checkpoint", {"seq": 3}).status_code == 201
    assert a.json("GET", "/db/_local/checkpoint")["seq"] == 3


def test_an_event_needs_its_header_first_in_a_batch(town, keys):
    a = node(town, keys, A)
    a3 = number(A, 3)
    late = [event(a3, A, 70, "accepted", parties=[TOWN]), header(a3, A, TOWN, 69)]
    result = a.json("POST", "/db/_bulk_docs", {"docs": late}, 201)
    assert result[0]["error"] == "forbidden" and result[1]["ok"]
    # Sent again once the header is there (the replicator's next round), it is taken.
    assert a.json("POST", "/db/_bulk_docs", {"docs": late[:1]}, 201)[0]["ok"]


def test_case_documents_must_have_their_shape(town, keys):
    a = node(town, keys, A)
    wrong_id = dict(event(A1, A, 80), _id=f"event:{A1}:{hlc(80)}:{B}")
    bad = dict(header(number(A, 4), A, TOWN, 81), item="not-an-item")
    result = a.json("POST", "/db/_bulk_docs", {"docs": [wrong_id, bad]}, 201)
    assert [r["error"] for r in result] == ["forbidden", "doc_validation"]


def _written(response):
    return [entry.get("error") or "ok" for entry in response]


def test_who_takes_part_changes_only_through_the_entitled_events(town, keys):
    """The events that carry participants, written by the nodes entitled to: the
    acceptance's routing, a transfer by the node the case is with, a change of delivery
    station; each refused when the fold would not take it (issue 12)."""
    a, township = node(town, keys, A), node(town, keys, TOWN)
    a5 = number(A, 5)
    accepted = casedocs.case_event(a5, "accepted", A, hlc(91), [TOWN, COUNTY, C],
                                   route=[TOWN, COUNTY], delivery_station=C)
    assert _written(a.json("POST", "/db/_bulk_docs",
                           {"docs": [header(a5, A, COUNTY, 90), accepted]}, 201)) == ["ok"] * 2
    assert node(town, keys, C).get(f"/db/case:{a5}").status_code == 200
    refused = {
        "a second acceptance": casedocs.case_event(a5, "accepted", A, hlc(92), [D],
                                                   route=[TOWN], delivery_station=D),
        "a route through another village": casedocs.case_event(
            number(A, 6), "accepted", A, hlc(93), [B], route=[B], delivery_station=A),
        "a transfer by a node the case is not with": casedocs.case_event(
            a5, "transferred", A, hlc(94), [TOWN2], to=TOWN2, reason="x"),
        "a transfer to a village": casedocs.case_event(
            a5, "transferred", TOWN, hlc(95), [D], to=D, reason="x"),
        "a party its kind does not name": casedocs.case_event(
            a5, "delivery_changed", A, hlc(96), [D], station=A),
        "a party not in the registry": casedocs.case_event(
            a5, "delivery_changed", A, hlc(97), [UNKNOWN], station=UNKNOWN),
        "a join by anyone but the county": casedocs.case_event(
            a5, "joined", TOWN, hlc(98), [D]),
    }
    docs = [header(number(A, 6), A, TOWN, 92)]
    for what, doc in refused.items():
        writer = township if doc["node"] == TOWN else a
        result = writer.json("POST", "/db/_bulk_docs", {"docs": docs + [doc]}, 201)
        assert result[-1].get("error") == "forbidden", (what, result)
        docs = []
    db = town.extensions["store"].db
    assert CaseParties.participants(db, a5) == {A, COUNTY, TOWN, C}
    for code in (D, B):
        assert node(town, keys, code).get(f"/db/case:{a5}").status_code == 404, code
    # The entitled ones: the delivery station moves; the township hands its stage on.
    moved = casedocs.case_event(a5, "delivery_changed", A, hlc(99), [D], station=D)
    handed = casedocs.case_event(a5, "transferred", TOWN, hlc(100), [TOWN2], to=TOWN2,
                                 reason="管辖调整")
    assert _written(a.json("POST", "/db/_bulk_docs", {"docs": [moved]}, 201)) == ["ok"]
    assert _written(township.json("POST", "/db/_bulk_docs", {"docs": [handed]}, 201)) == ["ok"]
    assert CaseParties.participants(db, a5) == {A, COUNTY, TOWN, C, D, TOWN2}
    assert node(town, keys, D).get(f"/db/case:{a5}").status_code == 200


def test_a_scan_or_an_event_of_another_kind_makes_nobody_a_participant(town, keys):
    store = town.extensions["store"]
    scan = {"_id": f"scan:{A1}:{'b' * 64}", "type": "scan", "case": A1, "node": A,
            "sha256": "b" * 64, "mime": "application/pdf", "size": 3, "data": "eHh4",
            "parties": [B]}
    rated = dict(event(A1, A, 101, "rated"), parties=[B])
    a = node(town, keys, A)
    result = a.json("POST", "/db/_bulk_docs", {"docs": [scan, rated]}, 201)
    assert [r["error"] for r in result] == ["doc_validation", "doc_validation"]
    # Written past the policy (an older store), they still name no participant.
    store.bulk_docs([scan, rated])
    assert node(town, keys, B).get(f"/db/case:{A1}").status_code == 404


# -- authentication --------------------------------------------------------------------

def _refusal(response):
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers.get("X-Tongban-Time")
    float(response.headers["X-Tongban-Time"])
    body = response.get_json()
    assert body["error"] == "unauthorized"
    return body["reason"]


def test_unknown_revoked_and_forged_nodes_are_refused(town, keys):
    assert "unknown node" in _refusal(node(town, keys, UNKNOWN).get("/db"))
    assert "revoked" in _refusal(node(town, keys, REVOKED).get("/db"))
    forged = Signed(town, A, keys[B])
    assert "bad signature" in _refusal(forged.get("/db"))
    a = node(town, keys, A)
    assert a.get("/db").status_code == 200
    # The signature covers the body and the query as sent.
    signed = a.headers("POST", "/db/_revs_diff", b"{}")
    response = a.client.post("/db/_revs_diff", data=b'{"x":[]}',
                             headers={**signed, "Content-Type": "application/json"})
    assert "bad signature" in _refusal(response)
    signed = a.headers("GET", "/db/_changes?since=0")
    assert "bad signature" in _refusal(a.client.get("/db/_changes?since=5", headers=signed))
    malformed = a.client.get("/db", headers={"Authorization": "Tongban-Node node=1"})
    assert malformed.status_code == 401


def test_a_replayed_request_is_refused(town, keys):
    a = node(town, keys, A)
    headers = a.headers("GET", f"/db/case:{A1}")
    assert a.client.get(f"/db/case:{A1}", headers=headers).status_code == 200
    assert "replayed" in _refusal(a.client.get(f"/db/case:{A1}", headers=headers))


def test_a_skewed_clock_learns_the_servers_time_and_signs_again(town, keys):
    skewed = node(town, keys, A, clock=lambda: clock.time() + 3600)
    response = skewed.get("/db")
    assert _refusal(response).startswith("clock skew")
    skewed.signer.observe_server_time(response.headers["X-Tongban-Time"])
    assert skewed.get("/db").status_code == 200


def test_requests_signed_before_the_server_started_are_refused(town, keys):
    early = node(town, keys, A, clock=lambda: clock.time() - 120)
    assert "before this node started" in _refusal(early.get("/db"))


def test_the_registry_reaching_the_node_revokes_at_once(town, keys):
    a = node(town, keys, A)
    assert a.get("/db").status_code == 200
    store = town.extensions["store"]
    current = store.get(f"node:{A}")
    revoked = registry.make_entry(keys[COUNTY], code=A, tier="village", name=A,
                                  public_key=current["public_key"], status="revoked",
                                  version=2)
    revoked["_rev"] = current["_rev"]
    store.put(revoked)
    assert "revoked" in _refusal(a.get("/db"))


# -- Basic accounts with a scope ---------------------------------------------------------

def test_basic_accounts_see_their_scope(town, keys):
    add_account(town, "a-sync", "a-secret-123")
    with town.app_context():
        Account.update(scope=A).where(Account.username == "a-sync").execute()
    add_account(town, "hub", "hub-secret-123")
    client = town.test_client()
    scoped = basic_auth("a-sync", "a-secret-123")
    feed = client.get("/db/_changes", headers=scoped).get_json()
    assert visible_to_a(ids_of(feed["results"])) == A_SEES
    assert client.get(f"/db/case:{B1}", headers=scoped).status_code == 404
    refused = client.post("/db/_bulk_docs", json={"docs": [{"_id": "item:9"}]}, headers=scoped)
    assert refused.get_json()[0]["error"] == "forbidden"
    full = basic_auth("hub", "hub-secret-123")
    everything = set(ids_of(client.get("/db/_changes", headers=full).get_json()["results"]))
    assert everything == live_ids(town.extensions["store"])
    assert client.get(f"/db/case:{B1}", headers=full).status_code == 200
    # Even everything-scope accounts cannot rewrite a case.
    b1 = client.get(f"/db/case:{B1}", headers=full).get_json()
    rewrite = client.put(f"/db/case:{B1}", json=dict(b1, handler=TOWN2), headers=full)
    assert rewrite.status_code == 403
    wrong = client.get("/db", headers=basic_auth("a-sync", "wrong-password"))
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers


def test_accounts_of_older_nodes_get_the_full_scope(tmp_path):
    path = tmp_path / "store.sqlite"
    conn = sqlite3.connect(path)
    # A node's store from before account scopes (its own tables, and the old account table).
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE account (id INTEGER PRIMARY KEY, username VARCHAR(255) "
                 "NOT NULL UNIQUE, password_hash TEXT NOT NULL, roles TEXT NOT NULL, "
                 "created DATETIME NOT NULL)")
    conn.execute("INSERT INTO account (username, password_hash, roles, created) "
                 "VALUES ('old', 'x', 'replicator', ?)", (datetime.now(timezone.utc),))
    conn.commit()
    conn.close()
    app = make_app(tmp_path)
    try:
        with app.app_context():
            assert Account.get(Account.username == "old").scope == "*"
    finally:
        app.extensions["store"].close()


def test_user_add_takes_a_scope(tmp_path):
    from shared.app import create_app
    from shared.cli import main

    runner = CliRunner()
    node_dir = tmp_path / "n"
    assert runner.invoke(main, ["init", str(node_dir), "--tier", "township",
                                "--code", TOWN]).exit_code == 0
    result = runner.invoke(main, ["user", "add", str(node_dir), "pouch", "--role",
                                  "replicator", "--scope", A], input="a-long-password\n")
    assert result.exit_code == 0, result.output
    wrong = runner.invoke(main, ["user", "add", str(node_dir), "x", "--role", "replicator",
                                 "--scope", "44"], input="a-long-password\n")
    assert wrong.exit_code != 0 and "--scope" in wrong.output
    app = create_app(node_dir=node_dir)
    try:
        with app.app_context():
            assert Account.get(Account.username == "pouch").scope == A
    finally:
        app.extensions["store"].close()
