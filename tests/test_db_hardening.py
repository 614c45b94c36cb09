"""Issue 12, with real processes over HTTP: checkpoints are their writer's own, database
settings are the operator's, bad input is a 4xx (never a 5xx), a ``ts=nan`` signature is
refused (before and after a restart), every answer carries the security headers, and the
sync status page keeps the region's internals for logged-in staff.

The region: county, township ``TOWN`` (``tongban serve``), its villages ``A`` (serve, and
``tongban syncd --once`` rounds) and ``B`` (enrolled: its key signs the attacks).
"""

import json
import os
import re
from urllib.parse import quote

import pytest
import requests

from shared import casedocs, identity
from syncd.daemon import parent_db_url
from syncd.replicator import replication_id
from tests import nodeproc

COUNTY, TOWN = "441521", "441521101"
A, B = "441521101001", "441521101002"
STAFF = ("wang", "staff-pass-12345")
TABLET = ("tablet", "tablet-pass-12345")
NUMBER = f"{A}-20260615-0001"
KEY = "c" * 64


def hlc(step):
    return f"{1781488800000 + step:015d}-00000"


class Region:
    """County and township serving, village A serving, village B enrolled only."""

    def __init__(self, base):
        self.procs = []
        self.county = self._serve(nodeproc.start_node(base / "county", tier="county",
                                                      code=COUNTY, name="测试县"))
        town_dir = nodeproc.enrol_node(self.county.node_dir, self.county.url, base / "town",
                                       "township", TOWN, "测试镇")
        self.town = self._serve(nodeproc.start_node(town_dir, create=False))
        self.town_port = int(self.town.url.rsplit(":", 1)[1])
        self.a_dir = nodeproc.enrol_node(self.county.node_dir, self.town.url, base / "a",
                                         "village", A, "东村")
        self.b_dir = nodeproc.enrol_node(self.county.node_dir, self.town.url, base / "b",
                                         "village", B, "西村")
        self.a = self._serve(nodeproc.start_node(self.a_dir, create=False))
        nodeproc.tongban("user", "add", town_dir, STAFF[0], "--role", "approver",
                         input_text=STAFF[1] + "\n")
        nodeproc.tongban("user", "add", town_dir, TABLET[0], "--role", "replicator",
                         "--scope", A, input_text=TABLET[1] + "\n")
        self.signers = {code: identity.RequestSigner(code, identity.load_private_key(path))
                        for code, path in ((A, self.a_dir), (B, self.b_dir))}

    def _serve(self, node):
        self.procs.append(node)
        return node

    def restart_town(self):
        self.procs.remove(self.town)
        self.town.stop()
        self.town = self._serve(nodeproc.start_serve(self.town.node_dir, port=self.town_port))

    def signed(self, code, method, path, body=None, data=None):
        """A request to the township signed by village ``code`` (``path`` as sent)."""
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        data = data or b""
        headers = self.signers[code].headers(method, path, data)
        if data:
            headers["Content-Type"] = "application/json"
        return requests.request(method, self.town.url + path, data=data, headers=headers,
                                timeout=30)

    def operator(self, method, path, body=None, data=None, auth=None):
        """A request to the township with its full-scope replicator account."""
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        return requests.request(method, self.town.url + path, data=data, headers=headers,
                                auth=auth or self.town.auth, timeout=30)

    def sync_a(self):
        """One round of village A's syncd (pull, then push)."""
        return nodeproc.tongban("syncd", self.a_dir, "--once", "-v")

    def a_has(self, doc_id):
        response = self.a.session().get(f"{self.a.db_url}/{quote(doc_id, safe='')}",
                                         timeout=10)
        return response.status_code == 200

    def pull_id(self):
        """Village A's pull replication id, from what anyone can see: the township's URL
        and A's ``GET /``."""
        uuid = requests.get(self.a.url + "/", headers={"Accept": "application/json"},
                            timeout=10).json()["uuid"]
        return replication_id(parent_db_url(self.town.url), f"local:{uuid}")

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    region = Region(tmp_path_factory.mktemp("hardening"))
    # A case of village A, accepted there and held by its township (written at the
    # township by its operator, as replication from A would have brought it).
    for doc in (casedocs.case_header(NUMBER, "item:GD-LS-04", A, TOWN, KEY, hlc(1)),
                casedocs.case_event(NUMBER, "accepted", A, hlc(2))):
        assert region.operator("PUT", f"/db/{quote(doc['_id'], safe='')}", doc).status_code \
            == 201
    result = region.sync_a()
    assert region.a_has(f"case:{NUMBER}"), result.stderr
    yield region
    region.stop()


def checkpoint_of(region, code, rep_id):
    response = region.signed(code, "GET", f"/db/_local/{rep_id}")
    return response.json() if response.status_code == 200 else None


# -- finding 3: checkpoints are their writer's own -------------------------------------------

def test_another_node_cannot_read_a_checkpoint(region):
    rep_id = region.pull_id()
    own = checkpoint_of(region, A, rep_id)
    assert own and own["session_id"] and own["source_last_seq"] > 0, own
    stolen = region.signed(B, "GET", f"/db/_local/{rep_id}")
    assert stolen.status_code == 404, stolen.text
    assert stolen.json() == {"error": "not_found", "reason": "missing"}
    # Nor a scoped account, nor an account reading what a node wrote.
    tablet = region.operator("GET", f"/db/_local/{rep_id}", auth=TABLET)
    assert tablet.status_code == 404, tablet.text


def test_another_node_cannot_delete_a_checkpoint(region):
    region.sync_a()
    rep_id = region.pull_id()
    before = checkpoint_of(region, A, rep_id)
    region.signed(B, "DELETE", f"/db/_local/{rep_id}")
    assert checkpoint_of(region, A, rep_id) == before


def test_another_node_cannot_move_a_checkpoint_past_an_approval(region):
    region.sync_a()
    rep_id = region.pull_id()
    before = checkpoint_of(region, A, rep_id)
    # B writes what it would need A's checkpoint to say: far ahead, same session.
    forged = dict(before, source_last_seq=before["source_last_seq"] + 10000)
    written = region.signed(B, "PUT", f"/db/_local/{rep_id}", forged)
    assert written.status_code == 201, written.text
    # The township approves A's case; A's next round brings the approval.
    approval = casedocs.case_event(NUMBER, "approved", TOWN, hlc(3), result="准予")
    assert region.operator("PUT", f"/db/{quote(approval['_id'], safe='')}",
                           approval).status_code == 201
    region.sync_a()
    status = json.loads(nodeproc.tongban("sync", "status", region.a_dir, "--json").stdout)
    link = {entry["link"]: entry for entry in status["links"]}["parent"]
    assert link["state"] == "up" and link["pending_pull"] == 0, link
    assert region.a_has(approval["_id"]), "village A missed the township's approval"
    # B reads back its own document under that id; A's is A's.
    assert checkpoint_of(region, B, rep_id)["source_last_seq"] == forged["source_last_seq"]
    assert checkpoint_of(region, A, rep_id)["session_id"] != forged["session_id"]


def test_an_account_has_its_own_checkpoints(region):
    put = region.operator("PUT", "/db/_local/pouch-ck", {"last_seq": 7}, auth=TABLET)
    assert put.status_code == 201 and put.json()["id"] == "_local/pouch-ck", put.text
    assert region.operator("GET", "/db/_local/pouch-ck", auth=TABLET).json()["last_seq"] == 7
    assert region.signed(A, "GET", "/db/_local/pouch-ck").status_code == 404
    assert region.operator("GET", "/db/_local/pouch-ck").status_code == 404
    assert region.operator("DELETE", "/db/_local/pouch-ck", auth=TABLET).status_code == 200


# -- finding 7: the node-wide revs_limit is the operator's -------------------------------------

def test_only_the_operator_sets_revs_limit(region):
    for response in (region.signed(B, "PUT", "/db/_revs_limit", 1),
                     region.operator("PUT", "/db/_revs_limit", 1, auth=TABLET)):
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    assert region.signed(B, "GET", "/db/_revs_limit").json() == 1000
    for bad in (0, -1, "5", 1.5, True, None, [], 10 ** 30):
        response = region.operator("PUT", "/db/_revs_limit", data=json.dumps(bad).encode())
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"] == "bad_request"
    assert region.operator("GET", "/db/_revs_limit").json() == 1000
    assert region.operator("PUT", "/db/_revs_limit", 500).json() == {"ok": True}
    assert region.operator("GET", "/db/_revs_limit").json() == 500
    assert region.operator("PUT", "/db/_revs_limit", 1000).status_code == 200


# -- finding 9: bad input is a 4xx ------------------------------------------------------------

HUGE = str(10 ** 25)
SURROGATE = '"\\ud800"'  # JSON text of a lone surrogate


@pytest.mark.parametrize("method, path, body, status, error", [
    ("GET", f"/db/_changes?since={HUGE}", None, 400, "bad_request"),
    ("GET", f"/db/_changes?limit={HUGE}", None, 400, "query_parse_error"),
    ("GET", f"/db/_all_docs?limit={HUGE}", None, 400, "query_parse_error"),
    ("GET", f"/db/_all_docs?skip={HUGE}", None, 400, "query_parse_error"),
    ("POST", "/db/_bulk_docs", '{"docs": [{"_id": %s}]}' % SURROGATE, 400, "bad_request"),
    ("POST", "/db/_bulk_docs", '{"docs": [{"_id": "x", "v": %s}]}' % SURROGATE, 400,
     "bad_request"),
    ("POST", "/db/_all_docs", '{"keys": [%s]}' % SURROGATE, 400, "bad_request"),
    ("GET", "/db/_all_docs?keys=" + quote("[%s]" % SURROGATE, safe=""), None, 400,
     "bad_request"),
    ("POST", "/db/_bulk_get", '{"docs": [{"id": %s}]}' % SURROGATE, 400, "bad_request"),
    ("POST", "/db/_revs_diff", '{%s: ["1-abc"]}' % SURROGATE, 400, "bad_request"),
    ("PUT", "/db/_local/ck", '{"v": %s}' % SURROGATE, 400, "bad_request"),
    ("PUT", "/db/_local/ck", '{"_rev": "0-%s"}' % ("9" * 30), 400, "bad_request"),
    ("PUT", "/db/doc1", '{"v": %s}' % SURROGATE, 400, "bad_request"),
    ("PUT", "/db/%ED%A0%80", "{}", 400, "illegal_docid"),  # a surrogate, as UTF-8 bytes
    ("PUT", "/db/%FF%FE", "{}", 400, "illegal_docid"),
    ("DELETE", "/db/%ED%A0%80?rev=1-abc", None, 400, "illegal_docid"),
    ("PUT", "/db/_local/%ED%A0%80", "{}", 400, "illegal_docid"),
])
def test_bad_input_is_refused_with_couchdb_errors(region, method, path, body, status, error):
    before = region.operator("GET", "/db").json()["update_seq"]
    response = region.operator(method, path, data=body.encode("utf-8") if body else None)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"] == error, response.text
    assert region.operator("GET", "/db").json()["update_seq"] == before


def test_a_path_that_is_not_utf8_names_no_document(region):
    # Decoded with replacement characters, %ED%A0%80 would read (and write) this one.
    replaced = "\ufffd" * 3 + "-probe"
    assert region.operator("PUT", "/db/" + quote(replaced), {"v": 1}).status_code == 201
    assert region.operator("PUT", "/db/_local/" + quote(replaced), {"v": 1}).status_code \
        == 201
    for path in ("/db/%ED%A0%80-probe", "/db/_local/%ED%A0%80-probe"):
        response = region.operator("GET", path)
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "not_found", "reason": "missing"}


def nan_authorization(signer, method, path, nonce):
    """What a node could send: its real signature over a ``nan`` timestamp."""
    ts = float("nan")
    message = identity.signing_string(method, path, b"", ts, nonce, signer.code)
    return {"Authorization": f"{identity.AUTH_SCHEME} node={signer.code}, ts=nan, "
                             f"nonce={nonce}, sig=\"{identity.sign(signer.private_key, message)}\""}


def test_a_nan_or_infinite_timestamp_is_refused_even_after_a_restart(region):
    signer = region.signers[A]
    nonce = os.urandom(16).hex()
    headers = nan_authorization(signer, "GET", "/db", nonce)
    first = requests.get(region.town.url + "/db", headers=headers, timeout=10)
    assert first.status_code == 401, first.text
    assert first.json()["error"] == "unauthorized"
    for ts in ("inf", "-inf", "1e9", "NaN"):
        value = headers["Authorization"].replace("ts=nan", f"ts={ts}")
        response = requests.get(region.town.url + "/db", headers={"Authorization": value},
                                timeout=10)
        assert response.status_code == 401, (ts, response.text)
    # The restarted process has forgotten every nonce: the same request, replayed.
    region.restart_town()
    replayed = requests.get(region.town.url + "/db", headers=headers, timeout=10)
    assert replayed.status_code == 401, replayed.text
    # A proper signature still goes through.
    assert region.signed(A, "GET", "/db").status_code == 200


# -- finding 9: security headers, and the status page ---------------------------------------

@pytest.mark.parametrize("path, accept", [("/", "text/html"), ("/catalog", "text/html"),
                                          ("/sync/status", "text/html"),
                                          ("/", "application/json"),
                                          ("/db/_nope", "application/json")])
def test_every_answer_carries_the_security_headers(region, path, accept):
    response = requests.get(region.town.url + path, headers={"Accept": accept},
                            auth=region.town.auth, timeout=10)
    assert response.status_code < 500
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    policy = headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "frame-ancestors 'none'", "base-uri 'self'",
                      "form-action 'self'", "object-src 'none'"):
        assert directive in policy, policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]


def staff_session(region):
    """A browser logged in as a member of the township's staff."""
    browser = requests.Session()
    page = browser.get(region.town.url + "/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = browser.post(region.town.url + "/login", allow_redirects=False, timeout=10,
                            data={"username": STAFF[0], "password": STAFF[1],
                                  "csrf_token": token})
    assert response.status_code == 302, response.text
    return browser


def test_the_status_page_shows_the_nodes_below_only_to_staff(region):
    # Village A's status document reaches the township with A's next push; one round of
    # the township's own syncd gives it a parent link to show.
    region.sync_a()
    region.sync_a()
    nodeproc.tongban("syncd", region.town.node_dir, "--once")
    public = requests.get(region.town.url + "/sync/status", timeout=10).text
    assert 'id="banner"' in public and "本站" in public
    assert A not in public and "下级节点同步情况" not in public
    assert region.county.url.split("://", 1)[1] not in public  # the parent's address
    assert 'id="staff-only"' in public
    staff = staff_session(region).get(region.town.url + "/sync/status", timeout=10).text
    assert "下级节点同步情况" in staff and f'id="node-{A}"' in staff
    assert region.county.url.split("://", 1)[1] in staff
