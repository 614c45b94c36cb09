"""Issue 12, with real processes over HTTP: the write policy of cases and releases, and
handle-anywhere look-ups only for a citizen at the counter.

The region: county, township ``TOWN`` and its villages ``A`` and ``B``, each enrolled and
running ``tongban serve`` and (but the county) ``tongban syncd``. A accepts a citizen's
case; B is the station that should never get it. B's attacks are signed with B's own key
(or made with a replicator account scoped to B), as B's PC could make them. Each test
fails on the code before issue 12 (findings 1, 2, 4, 8 and the existence oracle of 9).
"""

import datetime
import json
import re
from urllib.parse import quote

import pytest
import requests

from shared import audit, casedocs, clock, identity
from shared import config as cfg
from shared.app import create_app, open_store
from shared.cases import idnumbers, scans
from shared.cases.index import state_of
from shared.catalog import active, publish
from shared.catalog import release as rel
from shared.catalog.sample import sample_catalog
from shared.hlc import NodeClock
from shared.models import Account, hash_password
from tests import nodeproc
from tests.nodeproc import eventually

COUNTY, TOWN = "441521", "441521101"
A, B = "441521101001", "441521101002"
#: Look-ups of one station the county answers in an hour, in this region.
LIMIT = 3
SUPERVISOR = ("du", "supervisor-pass-1")
TABLET_B = ("tablet-b", "tablet-b-pass-1")
CLERK_B = {"username": "clerk-b", "role": "clerk", "name": "李四"}
#: The citizen whose case A accepts; B knows the birth date and the county.
BIRTH = datetime.date(1950, 3, 1)
CITIZEN = idnumbers.make_resident_id(COUNTY, BIRTH, 123)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def hlc(step=0):
    """An HLC string of the node clock now (plus ``step`` ms)."""
    return f"{int(clock.time() * 1000) + step:015d}-00000"


class Region:
    """County, township, two villages: enrolled, serving and syncing."""

    def __init__(self, base):
        self.procs = []
        self.nodes = {}
        county_dir = nodeproc.make_node_dir(base / COUNTY, tier="county", code=COUNTY,
                                            name="海丰县")
        nodeproc.update_config(county_dir, LOOKUP_LIMIT_PER_HOUR=LIMIT)
        county = nodeproc.start_node(county_dir, create=False)
        self._add(COUNTY, county)
        for code, parent, tier in ((TOWN, COUNTY, "township"), (A, TOWN, "village"),
                                   (B, TOWN, "village")):
            node_dir = nodeproc.enrol_node(county.node_dir, self.nodes[parent].url,
                                           base / code, tier, code)
            nodeproc.update_config(node_dir, SYNC_INTERVAL=300, SYNC_MAX_BACKOFF=2)
            self._add(code, nodeproc.start_node(node_dir, create=False))
        for code in (TOWN, A, B):
            self.procs.append(nodeproc.start_syncd(self.nodes[code].node_dir))
        self.dirs = {code: node.node_dir for code, node in self.nodes.items()}
        self.signers = {code: identity.RequestSigner(code, identity.load_private_key(path))
                        for code, path in self.dirs.items()}
        self.region_key = identity.load_secrets(self.dirs[COUNTY])["region_key"]

    def _add(self, code, node):
        self.nodes[code] = node
        self.procs.append(node)

    def signed(self, code, method, path, body=None, to=TOWN):
        """A request to node ``to`` signed with node ``code``'s key (``path`` as sent)."""
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None \
            else b""
        headers = self.signers[code].headers(method, path, data)
        if data:
            headers["Content-Type"] = "application/json"
        return requests.request(method, self.nodes[to].url + path, data=data,
                                headers=headers, timeout=30)

    def store(self, code):
        """The node's store, opened in this process (an intruder, or a test's look)."""
        return open_store(cfg.load_config(self.dirs[code]))

    def has(self, code, doc_id, reader=None):
        """Whether ``reader`` (a node code, by default the node's own account) reads
        ``doc_id`` at node ``code``."""
        if reader is None:
            node = self.nodes[code]
            return node.session().get(f"{node.db_url}/{doc_id}", timeout=10).status_code == 200
        return self.signed(reader, "GET", f"/db/{doc_id}", to=code).status_code == 200

    def catalog(self, code):
        return requests.get(self.nodes[code].url + "/status/catalog", timeout=10).json()

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    region = Region(tmp_path_factory.mktemp("writepolicy"))
    try:
        nodeproc.tongban("user", "add", region.dirs[COUNTY], SUPERVISOR[0], "--role",
                         "supervisor", input_text=SUPERVISOR[1] + "\n")
        nodeproc.tongban("user", "add", region.dirs[TOWN], TABLET_B[0], "--role",
                         "replicator", "--scope", B, input_text=TABLET_B[1] + "\n")
        store = region.store(COUNTY)
        try:
            for name, role in (("editor", "county_admin"), ("boss", "approver")):
                Account.create(username=name, password_hash=hash_password("pw-" + name),
                               roles=role, created="2026-11-22")
            items, agencies = sample_catalog()
            publish.publish(store, items, agencies, proposer="editor", approver="boss",
                            private_key=identity.load_private_key(region.dirs[COUNTY]))
        finally:
            store.close()
        for code in (TOWN, A, B):
            eventually(lambda code=code: region.catalog(code)["release"] == 1,
                       f"release 1 active at {code}", timeout=90)
        region.case = accept_case(region, A, CITIZEN)
        eventually(lambda: region.has(COUNTY, f"case:{region.case}"),
                   "A's case reaches the county", timeout=60)
    except BaseException:
        region.stop()
        raise
    yield region
    region.stop()


def accept_case(region, code, id_number, seq=1):
    """Accept a case at station ``code`` (header and ``accepted`` event) on its store."""
    app = create_app(node_dir=region.dirs[code])
    store = app.extensions["store"]
    try:
        node_clock = NodeClock(store)
        stamp = node_clock.now()
        number = casedocs.case_number(code, casedocs.day_of(stamp), seq)
        header = casedocs.case_header(number, "item:GD-LS-02@1", code, TOWN,
                                      identity.person_key(region.region_key, id_number), stamp)
        accepted = casedocs.case_event(number, "accepted", code, node_clock.now(),
                                       route=[TOWN], delivery_station=code)
        assert all(r.get("ok") for r in store.bulk_docs([header, accepted]))
        return number
    finally:
        store.close()


def marker(region, number):
    """A genuine event of A's on its case, written at A; returns its id once the county
    holds it (so whatever reached the township before it has gone on up too)."""
    store = region.store(A)
    try:
        event = casedocs.case_event(number, "supplemented", A, NodeClock(store).now())
        assert store.bulk_docs([event])[0].get("ok")
    finally:
        store.close()
    eventually(lambda: region.has(COUNTY, event["_id"]), "A's event reaches the county",
               timeout=60)
    return event["_id"]


def scan_of(region, number, author, **extra):
    doc = scans.scan_doc(scans.scan_key(identity.unb64(region.region_key)), number, author,
                         PDF + author.encode(), "application/pdf")
    doc.update(extra)
    return doc


def replicated(doc, rev_hash="f" * 32):
    """``doc`` as a replicator pushes it (``new_edits: false``) with a given revision."""
    return dict(doc, _rev="1-" + rev_hash)


def write_three_ways(region, code, doc, account=None):
    """Write ``doc`` to the township as ``code`` (or with ``account``'s Basic credentials):
    ``_bulk_docs``, ``_bulk_docs`` with ``new_edits: false``, and ``PUT``. Returns the three
    answers as ``(status, error body)``."""
    def send(method, path, body):
        if account is not None:
            return requests.request(method, region.nodes[TOWN].url + path, json=body,
                                    auth=account, timeout=30)
        return region.signed(code, method, path, body)

    answers = []
    response = send("POST", "/db/_bulk_docs", {"docs": [doc]})
    answers.append((response.status_code, response.json()[0]))
    response = send("POST", "/db/_bulk_docs", {"docs": [replicated(doc)], "new_edits": False})
    answers.append((response.status_code, (response.json() or [{}])[0]))
    response = send("PUT", f"/db/{quote(doc['_id'], safe=':')}", doc)
    answers.append((response.status_code, response.json()))
    return answers


def refused(answers):
    """True when every answer of :func:`write_three_ways` is a refusal."""
    return all(body.get("error") in ("forbidden", "doc_validation") for _, body in answers)


# -- finding 1: a station joins any case ---------------------------------------------------

def test_a_station_cannot_make_itself_or_another_a_participant(region):
    number = region.case
    assert not region.has(TOWN, f"case:{number}", reader=B)
    attacks = {
        # A scan of the case naming B among its parties: the hole of finding 1.
        "a scan with parties": (B, scan_of(region, number, B, parties=[B])),
        "a scan of a case it takes no part in": (B, scan_of(region, number, B)),
        "B joining itself": (B, casedocs.case_event(number, "joined", B, hlc(1),
                                                   parties=[B])),
        # A takes part, but only the county joins a station, and a transfer comes from the
        # node the case is with (the township), to a township or the county.
        "A joining B": (A, casedocs.case_event(number, "joined", A, hlc(2), parties=[B])),
        "A transferring to B": (A, casedocs.case_event(number, "transferred", A, hlc(3),
                                                       parties=[B], to=B, reason="x")),
        "A changing the routing": (A, casedocs.case_event(number, "accepted", A, hlc(4),
                                                          parties=[B], route=[B])),
    }
    for what, (code, doc) in attacks.items():
        answers = write_three_ways(region, code, doc)
        assert refused(answers), (what, answers)
    # The same with the replicator account of B's tablet.
    scan = scan_of(region, number, B, parties=[B])
    answers = write_three_ways(region, B, scan, account=TABLET_B)
    assert refused(answers), answers
    # Nothing refused was stored: the township's own full-scope account finds none of it.
    for what, (_, doc) in {**attacks, "the tablet's scan": (B, scan)}.items():
        assert not region.has(TOWN, doc["_id"]), what
    # B takes no part at the township, nor (once the township pushed all it took) above it.
    marker(region, number)
    for code in (TOWN, COUNTY):
        assert not region.has(code, f"case:{number}", reader=B), code
        feed = region.signed(B, "GET", "/db/_changes", to=code).json()
        assert not [row for row in feed["results"] if number in row["id"]], code
    tablet = requests.get(f"{region.nodes[TOWN].db_url}/case:{number}", auth=TABLET_B,
                          timeout=10)
    assert tablet.status_code == 404


# -- finding 4: a station writes events into another station's case -----------------------

def test_a_station_cannot_complain_or_rate_on_another_stations_case(region):
    number = region.case
    for kind, fields in (("complained", {"text": "伪造的投诉"}), ("rated", {"score": 1}),
                         ("withdrawn", {}), ("supplemented", {})):
        doc = casedocs.case_event(number, kind, B, hlc(10), **fields)
        answers = write_three_ways(region, B, doc)
        assert all(body.get("error") == "forbidden" for _, body in answers), (kind, answers)
    marker(region, number)
    for code in (TOWN, COUNTY):
        store = region.store(code)
        try:
            state = state_of(store.db, number)
        finally:
            store.close()
        assert state["complaints"] == [] and state["rating"] is None, code
        assert state["status"] == "handling", code
    # An old document written before the policy (straight into the county's store) is
    # ignored by the fold everywhere: B takes no part, so it speaks for no citizen.
    planted = casedocs.case_event(number, "complained", B, hlc(20), text="旧的伪造投诉")
    store = region.store(COUNTY)
    try:
        assert store.bulk_docs([planted])[0].get("ok")
        state = state_of(store.db, number)
    finally:
        store.close()
    assert state["complaints"] == []
    assert [i["event"] for i in state["ignored"]] == [planted["_id"]]


# -- the existence oracle of finding 9 ------------------------------------------------------

def test_write_refusals_say_the_same_for_an_absent_case_and_another_stations(region):
    number = region.case
    ghost = casedocs.case_number(A, casedocs.day_of(hlc()), 9999)
    stamp = hlc(30)
    templates = {
        # Before issue 12: "does not take part" for the one, "not known here" for the other.
        "an event with parties": lambda n: casedocs.case_event(n, "joined", B, stamp,
                                                               parties=[B]),
        # Before: "immutable" for the one (it exists), a validation error for the other.
        "a header under B's name": lambda n: casedocs.case_header(
            f"{B}-{n.split('-', 1)[1]}", "item:GD-LS-02@1", B, TOWN, "d" * 64, stamp) |
        {"_id": f"case:{n}", "number": n},
        "an event": lambda n: casedocs.case_event(n, "complained", B, stamp, text="x"),
        "a scan": lambda n: dict(scan_of(region, number, B), _id=scans.scan_id(n, "a" * 64),
                                 case=n, sha256="a" * 64),
    }
    for what, template in templates.items():
        real = write_three_ways(region, B, template(number))
        absent = write_three_ways(region, B, template(ghost))
        assert json.dumps(real).replace(number, ghost) == json.dumps(absent), what
        assert refused(real), (what, real)
    # A deletion as well: the same 404 for both.
    rev = region.nodes[TOWN].session().get(f"{region.nodes[TOWN].db_url}/case:{number}",
                                           timeout=10).json()["_rev"]
    deletions = [region.signed(B, "DELETE", f"/db/case:{n}?rev={rev}") for n in (number, ghost)]
    assert [r.status_code for r in deletions] == [404, 404]
    assert deletions[0].text.replace(number, ghost) == deletions[1].text


# -- finding 2: handle-anywhere look-ups can be enumerated -----------------------------------

def ask(region, code, id_number, clerk=CLERK_B, to=TOWN):
    body = {"person_key": identity.person_key(region.region_key, id_number)}
    if clerk is not None:
        body["clerk"] = clerk
    return region.signed(code, "POST", "/sync/lookup", body, to=to)


def test_look_ups_come_from_a_clerk_are_audited_and_throttled(region):
    number = region.case
    key = identity.person_key(region.region_key, CITIZEN)
    # Not with an account (the tablet's, scoped to B), not without a clerk at the counter.
    tablet = requests.post(region.nodes[TOWN].url + "/sync/lookup", json={"person_key": key},
                           auth=TABLET_B, timeout=30)
    assert tablet.status_code == 403 and tablet.json()["error"] == "forbidden"
    anonymous = ask(region, B, CITIZEN, clerk=None)
    assert anonymous.status_code == 403 and "clerk" in anonymous.json()["reason"]
    # B tries the birth date's candidates: the real one is fifth; three are answered.
    candidates = [idnumbers.make_resident_id(COUNTY, BIRTH, seq) for seq in (5, 17, 29, 41)]
    candidates.insert(4, CITIZEN)
    answers = [ask(region, B, candidate) for candidate in candidates]
    assert [a.status_code for a in answers] == [200] * LIMIT + [429] * (5 - LIMIT)
    assert all(a.json()["cases"] == [] for a in answers[:LIMIT])
    assert answers[LIMIT].json()["error"] == "upstream_refused"
    assert f"已达 {LIMIT} 次上限" in answers[LIMIT].json()["reason"]
    marker(region, number)
    assert not region.has(TOWN, f"case:{number}", reader=B)
    # The county's audit log: who, for which station, when, how many hits, and refusals.
    store = region.store(COUNTY)
    try:
        entries = [e for e in audit.entries(store.db, limit=50)
                   if e["action"].startswith("sync_lookup")]
        report = audit.verify(store.db, audit.audit_key_of(region.dirs[COUNTY]))
    finally:
        store.close()
    answered = [e for e in entries if e["action"] == "sync_lookup"]
    assert len(answered) == LIMIT and {e["staff"] for e in answered} == {f"{B}:clerk-b"}
    assert all(e["detail"]["station"] == B and e["detail"]["via"] == TOWN and
               e["detail"]["hits"] == 0 and e["at"] for e in answered)
    assert len([e for e in entries if e["action"] == "sync_lookup_refused"]) == 5 - LIMIT
    assert report.ok, report.problems
    # The alarm, at the county, for its supervisors (and only for them).
    page_url = region.nodes[COUNTY].url + "/sync/lookups"
    assert requests.get(page_url, allow_redirects=False, timeout=10).status_code == 302
    page = nodeproc.staff_session(region.nodes[COUNTY], *SUPERVISOR).get(page_url, timeout=10).text
    alarm = re.search(r'<tr class="alarm" data-station="(\d+)">(.*?)</tr>', page, re.DOTALL)
    assert alarm and alarm.group(1) == B and f"超过 {LIMIT} 次上限" in alarm.group(2)
    # Another station's clerk is not held back by B's quota, and finds the case.
    answer = ask(region, A, CITIZEN, clerk={"username": "clerk-a", "role": "clerk"})
    assert answer.status_code == 200 and [c["number"] for c in answer.json()["cases"]] == \
        [number]


# -- finding 8: a planted release revision blocks the genuine release -------------------------

def test_a_planted_release_revision_blocks_nothing(region):
    # A village may not write catalog documents into its township (nor the township into
    # the county: the forged number below never reaches it).
    item_id = rel.item_doc_id("GD-LS-06", 2)
    forged_release = {"_id": rel.release_doc_id(2), "type": "release", "number": 2,
                      "entries": []}
    for doc in (forged_release, {"_id": item_id, "type": "item", "name": "伪造"}):
        assert refused(write_three_ways(region, B, doc)), doc["_id"]
    # An intruder at the township plants winning revisions of the next release and of an
    # item it will list: unsigned, and forged; they travel down to the villages.
    store = region.store(COUNTY)
    try:
        genuine = {k: v for k, v in store.get(rel.item_doc_id("GD-LS-06", 1)).items()
                   if not k.startswith("_")}
    finally:
        store.close()
    wins = {"start": 9, "ids": ["f" * 32] + [f"{n:032x}" for n in range(8, 0, -1)]}
    planted = [dict(genuine, version=2, name="伪造的事项", _id=item_id, _revisions=wins),
               dict(forged_release, _revisions=wins)]
    store = region.store(TOWN)
    try:
        assert store.bulk_docs(planted, new_edits=False) == []
    finally:
        store.close()
    eventually(lambda: "没有签名" in (region.catalog(B).get("alarm") or ""),
               "the planted release reaches village B (and is refused)", timeout=60)
    # The county publishes release 2; the planted revisions still win at every node below.
    store = region.store(COUNTY)
    try:
        item = publish.working_record(store.db, "item", "GD-LS-06")
        item["hours"] = "工作日 8:00—12:00（冬令时）"
        publish.save_draft(store.db, "item", item, "editor")
        proposal = publish.propose(store.db, "editor")
        number = publish.approve(store, proposal.id, "boss",
                                 identity.load_private_key(region.dirs[COUNTY]))["number"]
    finally:
        store.close()
    assert number == 2
    for code in (TOWN, B):
        eventually(lambda code=code: region.catalog(code)["release"] == 2,
                   f"the genuine release 2 activates at {code}", timeout=90)
        store = region.store(code)
        try:
            assert store.get(item_id)["name"] == "伪造的事项"  # the winner is the planted one
            assert active.active_item(store.db, "GD-LS-06")["hours"] == item["hours"]
            assert active.active_item(store.db, "GD-LS-06")["name"] != "伪造的事项"
            alarms = [a["message"] for a in active.catalog_status(store.db, 20)["alarms"]]
        finally:
            store.close()
        assert any(item_id in m and "与签名不符" in m for m in alarms), alarms
        assert any("第 2 号发布没有签名" in m for m in alarms), alarms
