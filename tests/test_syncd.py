"""The sync daemon: back-off, rounds with injected time, request signing, and real
processes (a parent ``tongban serve``, a child's ``serve`` and ``syncd`` on one store)."""

import hashlib
import http.server
import json
import random
import re
import subprocess
import threading

import pytest
import requests

from shared import clock, errors, identity
from shared.app import create_app
from shared.demo import TONGBAN
from shared.syncstatus import LinkStatusTable
from syncd.daemon import Backoff, SyncDaemon, classify, parent_db_url
from syncd.peers import HttpPeer, LocalPeer
from syncd.replicator import replication_id
from tests import nodeproc
from tests.conftest import skewed_env
from tests.nodeproc import eventually

VILLAGE, TOWNSHIP = "441521100201", "441521100"


# -- back-off and failure kinds ------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(base=1.0, cap=300.0, rng=lambda: 1.0)  # the top of every window
    delays = [backoff.failed() for _ in range(11)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    backoff.reset()
    assert backoff.failed() == 1
    assert backoff.refused() == 300  # a refusal waits the cap at once


def test_backoff_jitter_stays_within_the_window():
    rng = random.Random(20261122)
    backoff = Backoff(base=1.0, cap=10.0, rng=rng.random)
    for failure in range(40):
        window = min(10.0, 2.0 ** failure)
        delay = backoff.failed()
        assert 0.0 <= delay <= window
    spread = {round(Backoff(1.0, 10.0, rng.random).failed() * 1000) for _ in range(50)}
    assert len(spread) > 40  # jittered, not in step


@pytest.mark.parametrize("exc, kind", [
    (errors.PeerError("GET x: ConnectionRefusedError", original=ConnectionRefusedError()),
     "unreachable"),
    (errors.PeerError("GET x: TimeoutError: timed out", original=TimeoutError()), "timeout"),
    (errors.PeerError("HTTP 401 unauthorized: Name or password is incorrect.", status=401),
     "refused"),
    (errors.PeerError("HTTP 403 forbidden", status=403), "refused"),
    # Told by the kind the peer found (the parent's X-Tongban-Refusal), never by wording:
    (errors.PeerError("HTTP 401 unauthorized: clock skew of 86400 s", status=401),
     "refused"),
    (errors.PeerError("HTTP 401 unauthorized", status=401, kind="clock_skew"), "clock_skew"),
    (errors.PeerError("HTTP 200 with an empty body (answer cut short)"), "unreachable"),
    (errors.PeerError("HTTP 500 unknown_error", status=500), "server_error"),
    (errors.PeerError("HTTP 404 not_found: missing", status=404), "bad_answer"),
    (errors.PeerError("local store failed: disk I/O error", kind="local"), "local"),
    (errors.PeerError("local store failed: disk I/O error"), "unreachable"),
    (KeyError("bug"), "internal"),
])
def test_failures_are_classified_for_people(exc, kind):
    assert classify(exc)[0] == kind


def test_parent_db_url():
    assert parent_db_url("http://h:1") == "http://h:1/db"
    assert parent_db_url("http://u:p@h:1/") == "http://u:p@h:1/db"
    assert parent_db_url("https://h/tongban/441521/") == "https://h/tongban/441521/db"
    assert parent_db_url("http://h:1/db") == "http://h:1/db"


@pytest.mark.parametrize("bad, message", [
    ({"PARENT_URL": "ftp://township"}, "http(s) URL"),
    ({"PARENT_URL": "http:///db"}, "not an http(s) database URL"),
    ({"SYNC_INTERVAL": 0}, "SYNC_INTERVAL must be a positive number"),
    ({"SYNC_MAX_BACKOFF": "soon"}, "SYNC_MAX_BACKOFF must be a positive number"),
])
def test_bad_sync_settings_are_refused_at_start(tmp_path, bad, message):
    app = village_app(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(errors.ConfigurationError) as raised:
        SyncDaemon(dict(app.config, **bad), app.extensions["store"])
    assert message in str(raised.value)
    app.extensions["store"].close()


def test_the_scheduler_runs_the_sync_round_and_the_tiers_jobs(tmp_path):
    from syncd.scheduler import build_scheduler

    app = village_app(tmp_path, "http://127.0.0.1:9", SYNC_INTERVAL=0.1)
    daemon = SyncDaemon(app.config, app.extensions["store"])
    ran = threading.Event()

    def sweep():
        ran.set()

    scheduler = build_scheduler(app.config, daemon, app=app,
                                jobs=[(sweep, {"trigger": "interval", "seconds": 0.1})])
    assert {job.id for job in scheduler.get_jobs()} == {"sync_round", f"{__name__}.sweep"}
    scheduler.start()
    try:
        assert ran.wait(20)
        eventually(lambda: daemon.links[0].want_pull and daemon.links[0].want_push,
                   "a round requested by the scheduler")
    finally:
        scheduler.shutdown()
        daemon.close()
        app.extensions["store"].close()


# -- request signing over a real socket ------------------------------------------------------


class FakeSigner:
    """Stands in for shared.identity.RequestSigner: numbered headers, calls recorded."""

    def __init__(self):
        self.calls = []
        self.observed = []

    def headers(self, method, path_qs, body):
        self.calls.append((method, path_qs, body))
        return {"Authorization": f"Tongban-Node n={len(self.calls)}",
                "X-Body-Sha256": hashlib.sha256(body).hexdigest()}

    def observe_server_time(self, server_time):
        self.observed.append(server_time)


@pytest.fixture
def recording_server():
    """An HTTP server that answers 401 + X-Tongban-Time to a request with ``skew`` in its
    Authorization header number 1, 401 without it when ``refuse`` is set, else JSON."""
    seen = []
    behaviour = {"skew_first": True, "refuse": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"method": self.command, "path": self.path, "body": body,
                         "authorization": self.headers.get("Authorization"),
                         "body_sha256": self.headers.get("X-Body-Sha256")})
            skewed = behaviour.get("skew_always") or (behaviour["skew_first"] and len(seen) == 1)
            if behaviour["refuse"] or skewed:
                payload = {"error": "unauthorized", "reason": "clock skew of 86400 s"}
                self.send_response(401)
                if skewed:
                    self.send_header("X-Tongban-Time", "1800000000.25")
                    self.send_header("X-Tongban-Refusal", "clock_skew")
            else:
                payload = {"db_name": "db", "update_seq": 0} if self.command == "GET" \
                    and self.path == "/db" else {"results": [], "last_seq": 0, "pending": 0} \
                    if "_changes" in self.path else {}
                self.send_response(200)
            data = json.dumps(payload).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen, behaviour
    server.shutdown()
    server.server_close()


def test_http_peer_signs_every_request_and_retries_once_with_the_servers_time(
        recording_server):
    url, seen, behaviour = recording_server
    signer = FakeSigner()
    # Credentials in the URL are not sent when requests are signed.
    peer = HttpPeer(url.replace("://", "://user:pw@") + "/db", signer=signer)
    assert peer.info()["db_name"] == "db"
    assert signer.observed == [1800000000.25]
    assert [s["authorization"] for s in seen] == ["Tongban-Node n=1", "Tongban-Node n=2"]

    peer.changes(0, limit=5)
    peer.revs_diff({"a": ["1-abc"]})
    for request, (method, path_qs, body) in zip(seen, signer.calls):
        # What was signed is exactly what went on the wire.
        assert request["method"] == method and request["path"] == path_qs
        assert request["body"] == body
        assert request["body_sha256"] == hashlib.sha256(request["body"]).hexdigest()
    assert seen[2]["path"].startswith("/db/_changes?") and "limit=5" in seen[2]["path"]
    assert seen[3]["body"] == b'{"a":["1-abc"]}'

    behaviour["refuse"] = True  # a 401 that says nothing about time: no second try
    count = len(seen)
    with pytest.raises(errors.PeerError) as raised:
        peer.info()
    assert raised.value.status == 401 and len(seen) == count + 1
    assert signer.observed == [1800000000.25]
    # The wording of the reason does not make it a clock problem: the kind the peer says.
    assert classify(raised.value)[0] == "refused"
    behaviour.update(refuse=False, skew_always=True)
    with pytest.raises(errors.PeerError) as raised:
        peer.info()
    assert classify(raised.value)[0] == "clock_skew"
    peer.close()


# -- one round with time injected -------------------------------------------------------


def village_app(tmp_path, parent_url, **extra):
    config = {"TIER": "village", "NODE_CODE": VILLAGE, "SECRET_KEY": "s",
              "DB_PATH": str(tmp_path / "village.sqlite"), "PARENT_URL": parent_url,
              "SYNC_MAX_BACKOFF": 60}
    config.update(extra)
    return create_app(config)


@pytest.fixture
def offline_village(tmp_path):
    app = village_app(tmp_path, f"http://127.0.0.1:{nodeproc.free_port()}")
    store = app.extensions["store"]
    yield app, store
    store.close()


def test_run_once_records_a_failed_round_and_waits_out_the_back_off(offline_village):
    app, store = offline_village
    store.bulk_docs([{"_id": f"memo:{i}", "type": "memo"} for i in range(3)])
    daemon = SyncDaemon(app.config, store, rng=lambda: 1.0, clock=lambda: 1e9)

    assert daemon.run_once(now=1000.0) == {"parent": False}
    row = LinkStatusTable(store.db).get("parent")
    assert row["state"] == "backing_off" and row["error_kind"] == "unreachable"
    assert row["last_success"] is None and row["last_attempt"] == 1000.0
    assert row["next_retry"] == 1001.0 and row["failures"] == 1
    assert row["pending_push"] == 3  # counted from the store, parent or no parent

    # Before the retry time nothing is attempted; at it, the next try doubles the wait.
    assert daemon.run_once(now=1000.5) == {"parent": None}
    assert LinkStatusTable(store.db).get("parent")["last_attempt"] == 1000.0
    assert daemon.run_once(now=1001.0) == {"parent": False}
    row = LinkStatusTable(store.db).get("parent")
    assert row["next_retry"] == 1003.0 and row["failures"] == 2
    for _ in range(10):
        daemon.run_once(now=row["next_retry"])
        row = LinkStatusTable(store.db).get("parent")
    assert row["next_retry"] - row["last_attempt"] == 60  # the configured cap
    # A failed round never counts as a success and never writes a checkpoint.
    assert row["last_success"] is None
    assert store.db.execute_sql("SELECT COUNT(*) FROM local_doc").fetchone()[0] == 0
    daemon.close()


def test_a_local_write_while_offline_shows_as_waiting_at_once(offline_village):
    app, store = offline_village
    daemon = SyncDaemon(app.config, store, rng=lambda: 1.0)
    daemon.run_once(now=1000.0)
    assert LinkStatusTable(store.db).get("parent")["pending_push"] == 0
    store.put({"_id": "memo:new", "type": "memo"})
    daemon.step(now=1000.5)  # still backing off: no attempt, but the count moves
    row = LinkStatusTable(store.db).get("parent")
    # The memo and the node's status document (written after the failed round).
    assert row["pending_push"] == 2 and row["last_attempt"] == 1000.0
    assert store.get(f"status:{VILLAGE}")["state"] == "backing_off"
    daemon.close()


@pytest.fixture(scope="module")
def township(tmp_path_factory):
    node = nodeproc.start_node(tmp_path_factory.mktemp("township") / "t", tier="township",
                               code=TOWNSHIP, name="测试镇")
    yield node
    node.stop()


def test_run_once_pulls_and_pushes_and_reports_up(tmp_path, township, caplog):
    session = township.session()
    session.put(f"{township.db_url}/memo:unit-1", json={"type": "memo"}).raise_for_status()
    app = village_app(tmp_path, township.authed_db_url)
    store = app.extensions["store"]
    store.put({"_id": "memo:unit-2", "type": "memo"})
    daemon = SyncDaemon(app.config, store)
    with caplog.at_level("INFO", logger="syncd.daemon"):
        assert daemon.run_once(now=5000.0) == {"parent": True}
    # the first sync says how large this node's scope is before it starts
    assert re.search(r"initial sync over parent: \d+ documents in this node's scope",
                     caplog.text)
    assert store.get("memo:unit-1")["type"] == "memo"
    assert session.get(f"{township.db_url}/memo:unit-2").status_code == 200
    row = LinkStatusTable(store.db).get("parent")
    assert row["state"] == "up" and row["last_success"] == 5000.0
    assert row["error_kind"] is None and row["next_retry"] is None
    assert row["pending_pull"] == 0 and row["pending_push"] == 0
    # The node's status document is written for the parent to see (pushed next round).
    status = store.get(f"status:{VILLAGE}")
    assert status["type"] == "node_status" and status["state"] == "up"
    daemon.close()
    store.close()


def test_a_refusing_parent_puts_the_link_in_refused_for_the_cap(tmp_path, township):
    url = township.authed_db_url.replace("sync-secret-123", "wrong-password")
    app = village_app(tmp_path, url)
    store = app.extensions["store"]
    daemon = SyncDaemon(app.config, store)
    assert daemon.run_once(now=7000.0) == {"parent": False}
    row = LinkStatusTable(store.db).get("parent")
    assert row["state"] == "refused" and row["error_kind"] == "refused"
    assert row["next_retry"] == 7000.0 + 60
    assert "401" in row["error"]
    daemon.close()
    store.close()


def test_a_document_the_parent_forbids_is_skipped_and_reported(tmp_path, township, caplog):
    nodeproc.tongban("user", "add", township.node_dir, "village-201", "--role", "replicator",
                     "--scope", VILLAGE, input_text="village-secret-1\n")
    host = township.url.split("://", 1)[1]
    app = village_app(tmp_path, f"http://village-201:village-secret-1@{host}")
    store = app.extensions["store"]
    # A village may not write catalog items: the township refuses it as forbidden.
    store.put({"_id": "item:forged", "type": "item", "title": "伪造事项"})
    daemon = SyncDaemon(app.config, store)
    assert daemon.run_once(now=9000.0) == {"parent": True}
    row = LinkStatusTable(store.db).get("parent")
    assert row["state"] == "up" and row["doc_failures"] == 1
    assert row["error_kind"] == "doc_failures"
    assert township.session().get(f"{township.db_url}/item:forged").status_code == 404
    # Skipped as CouchDB does: the checkpoint passed it, the next round does not retry it.
    assert daemon.run_once(now=9001.0) == {"parent": True}
    push = daemon.links[0].last_entries["push"]
    assert push["doc_write_failures"] == 0  # only the status document was pushed
    assert push["docs_read"] == push["docs_written"] == 1
    assert caplog.text.count("item:forged") == 1
    row = LinkStatusTable(store.db).get("parent")
    assert row["error_kind"] is None and row["pending_push"] == 0
    daemon.close()
    store.close()


# -- real processes: serve + syncd beside it, a parent that goes away --------------------


class Region:
    """A township parent process and a village with its own serve and syncd."""

    def __init__(self, base):
        self.base = base
        self.parent = nodeproc.start_node(base / "township", tier="township", code=TOWNSHIP,
                                          name="测试镇")
        self.parent_port = int(self.parent.url.rsplit(":", 1)[1])
        parent_root = self.parent.authed_db_url.rsplit("/db", 1)[0]
        self.child_dir = nodeproc.make_node_dir(base / "village", tier="village",
                                                code=VILLAGE, name="测试村", parent=parent_root)
        config_path = self.child_dir / "tongban.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        # A round every 5 minutes: only the longpoll and the write trigger can explain a
        # document arriving within seconds. A short cap keeps the reconnect test short;
        # short longpolls show an idle link confirmed without rounds.
        config.update(SYNC_INTERVAL=300, SYNC_MAX_BACKOFF=3, SYNC_LONGPOLL_TIMEOUT=2)
        config_path.write_text(json.dumps(config), encoding="utf-8")
        self.child = nodeproc.start_node(self.child_dir, create=False)
        self.syncd = None

    def start_syncd(self):
        log_path = self.child_dir / "syncd.log"
        log = open(log_path, "ab")
        process = subprocess.Popen([*TONGBAN, "syncd", str(self.child_dir), "-v"],
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.syncd = nodeproc.Proc(process, None, log_path)
        return self.syncd

    def status(self):
        result = nodeproc.tongban("sync", "status", self.child_dir, "--json")
        report = json.loads(result.stdout)
        return {link["link"]: link for link in report["links"]}.get("parent")

    def status_when(self, predicate, what):
        """The parent link's status once ``predicate`` holds for it (within 20 s)."""
        def check():
            status = self.status()
            return status if status and predicate(status) else None
        return eventually(check, what)

    def child_has(self, doc_id):
        return self.child.session().get(f"{self.child.db_url}/{doc_id}").status_code == 200

    def parent_has(self, doc_id):
        try:
            response = self.parent.session().get(f"{self.parent.db_url}/{doc_id}", timeout=5)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def stop(self):
        for proc in (self.syncd, self.child, self.parent):
            if proc is not None:
                proc.stop()


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    region = Region(tmp_path_factory.mktemp("region"))
    region.start_syncd()
    yield region
    region.stop()


def test_changes_flow_both_ways_without_waiting_for_the_interval(region):
    region.status_when(lambda s: s["state"] == "up", "the first round")
    region.parent.session().put(f"{region.parent.db_url}/memo:from-parent",
                                json={"type": "memo", "title": "户籍证明"}).raise_for_status()
    eventually(lambda: region.child_has("memo:from-parent"), "parent write at the child",
               timeout=20)
    # serve (another process) writes at the child; syncd notices and pushes at once.
    region.child.session().put(f"{region.child.db_url}/memo:local-1",
                               json={"type": "memo"}).raise_for_status()
    eventually(lambda: region.parent_has("memo:local-1"), "child write at the parent",
               timeout=20)
    # The village's status document reached the township, whose page lists it.
    eventually(lambda: region.parent_has(f"status:{VILLAGE}"), "status document upstream")
    # The nodes below are for staff: a supervisor reads them.
    nodeproc.tongban("user", "add", region.parent.node_dir, "du", "--role", "supervisor",
            input_text="supervisor-pass-1\n")
    staff = nodeproc.staff_session(region.parent, "du", "supervisor-pass-1")
    page = staff.get(f"{region.parent.url}/sync/status", timeout=10).text
    assert "下级节点同步情况" in page and VILLAGE in page and "在线" in page


def test_an_idle_link_is_confirmed_by_its_longpoll_without_rounds(region):
    """Nothing changes anywhere: no round runs (the interval is 5 minutes), yet each
    longpoll the parent answers with nothing new moves the last success forward, so the
    county never sees a healthy idle village as lagging."""
    first = region.status_when(lambda s: s["state"] == "up", "link up")
    rounds = region.syncd.log().count("replication ")
    second = region.status_when(lambda s: s["last_success"] > first["last_success"] + 1.5,
                                "the last success moves on while idle")
    region.status_when(lambda s: s["last_success"] > second["last_success"] + 1.5,
                       "and again")
    # Two confirmations; at most one round (a status document may be pushed) meanwhile.
    assert region.syncd.log().count("replication ") - rounds <= 2


def test_parent_down_shows_offline_then_converges_when_it_returns(region):
    region.status_when(lambda s: s["state"] == "up", "link up")
    region.parent.stop()
    region.child.session().put(f"{region.child.db_url}/memo:while-down",
                               json={"type": "memo"}).raise_for_status()
    status = region.status_when(lambda s: s["state"] == "backing_off" and s["pending_push"],
                                "backing off with documents waiting")
    assert status["error_kind"] == "unreachable"
    assert status["message"] == "上级节点无法连接"
    assert status["pending_push"] >= 1 and status["offline"]

    text = nodeproc.tongban("sync", "status", region.child_dir).stdout
    # (no "next retry" line asserted: with a 3 s cap the retry may be due by the time the
    # command has started)
    assert "backing_off" in text and "上级节点无法连接" in text and "last error" in text
    page = requests.get(f"{region.child.url}/sync/status")
    assert page.status_code == 200 and 'lang="zh-CN"' in page.text
    assert "本站目前离线" in page.text and "上级节点无法连接" in page.text
    assert "份文档等待上传" in page.text

    region.parent = nodeproc.start_node(region.base / "township", port=region.parent_port,
                                        create=False)
    eventually(lambda: region.parent_has("memo:while-down"), "convergence after the outage")
    status = region.status_when(lambda s: s["state"] == "up" and s["pending_push"] == 0,
                                "status back up")
    assert status["error_kind"] is None and not status["offline"]
    page = requests.get(f"{region.child.url}/sync/status").text
    assert "同步正常" in page and "本站目前离线" not in page


def test_a_restarted_syncd_resumes_from_its_checkpoints(region):
    region.status_when(lambda s: s["state"] == "up" and s["pending_push"] == 0,
                       "nothing waiting")
    region.syncd.stop()  # SIGTERM: a clean stop
    assert region.syncd.process.returncode == 0, region.syncd.log()
    assert region.status()["state"] == "stopped"
    page = requests.get(f"{region.child.url}/sync/status").text
    assert "同步程序（tongban syncd）未在运行" in page and "同步已停止" in page

    result = nodeproc.tongban("syncd", region.child_dir, "--once")
    assert "pull: 0 read" in result.stdout and "push: 0 read" in result.stdout
    assert region.status()["state"] == "up"
    # The checkpoints are _local documents on both sides, at the child's latest change.
    child_url = region.child.url + "/db"
    info = region.child.session().get(child_url).json()
    local_id = replication_id(_local_identity(region), region.parent.db_url)
    checkpoint = region.child.session().get(f"{child_url}/_local/{local_id}").json()
    assert checkpoint["source_last_seq"] == info["update_seq"]
    on_parent = region.parent.session().get(f"{region.parent.db_url}/_local/{local_id}")
    assert on_parent.json()["session_id"] == checkpoint["session_id"]


def test_once_exits_non_zero_when_the_parent_is_down(region):
    region.parent.stop()
    result = nodeproc.tongban("syncd", region.child_dir, "--once", check=False)
    assert result.returncode != 0
    assert "上级节点无法连接" in result.stdout and "Traceback" not in result.stderr
    assert region.status()["last_success"] is not None  # the earlier success is kept
    assert region.status()["state"] == "backing_off"


def _local_identity(region):
    from shared.app import open_store
    from shared.config import load_config

    peer = LocalPeer(open_store(load_config(region.child_dir)))
    try:
        return peer.identity()
    finally:
        peer.close()


# -- a county with a region hub; an enrolled node signing its requests ---------------------


def test_county_replicates_both_ways_with_an_upstream_hub(tmp_path):
    from shared.app import open_store
    from shared.config import load_config

    hub = nodeproc.start_pouchdb_server(tmp_path / "hub")
    try:
        hub_db = f"{hub.url}/region"
        requests.put(hub_db).raise_for_status()
        county_dir = nodeproc.make_node_dir(tmp_path / "county", tier="county", code="441521")
        config_path = county_dir / "tongban.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["UPSTREAM_URL"] = hub_db
        config_path.write_text(json.dumps(config), encoding="utf-8")
        store = open_store(load_config(county_dir))
        store.put({"_id": "memo:county", "type": "memo"})
        store.close()

        result = nodeproc.tongban("syncd", county_dir, "--once")
        assert result.stdout.startswith("upstream up")
        assert requests.get(f"{hub_db}/memo:county").status_code == 200
        requests.put(f"{hub_db}/memo:hub", json={"type": "memo"}).raise_for_status()
        nodeproc.tongban("syncd", county_dir, "--once")
        store = open_store(load_config(county_dir))
        assert store.get("memo:hub")["type"] == "memo"
        store.close()
        report = json.loads(nodeproc.tongban("sync", "status", county_dir, "--json").stdout)
        (link,) = report["links"]
        assert link["link"] == "upstream" and link["state"] == "up"
        assert link["peer"] == hub_db and link["pending_push"] == 0
    finally:
        hub.stop()


def test_an_enrolled_node_signs_its_requests_and_corrects_a_wrong_clock(tmp_path):
    county = nodeproc.start_node(tmp_path / "county", tier="county", code="441521",
                                 name="测试县")
    try:
        code = nodeproc.tongban("enrol", county.node_dir, "--code", TOWNSHIP,
                                "--tier", "township").stdout.strip()
        town_dir = tmp_path / "town"
        nodeproc.tongban("init", town_dir, "--tier", "township", "--code", TOWNSHIP,
                         "--name", "测试镇", "--parent", county.url, "--enrol", code)
        assert (town_dir / "node.key").exists()
        assert "@" not in json.loads((town_dir / "tongban.json").read_text())["PARENT_URL"]
        # The township's clock is a day ahead: the county refuses its first timestamp,
        # tells it the time, and the request signed again goes through.
        result = subprocess.run(
            [*TONGBAN, "syncd", str(town_dir), "--once", "-v"], capture_output=True,
            text=True, timeout=120,
            env={**__import__("os").environ, **skewed_env(86400)})
        assert result.returncode == 0, result.stderr
        assert "refused our timestamp" in result.stderr
        # What the county says: a timestamp out of the window is a clock refusal, a key it
        # does not know is not.
        key = identity.load_private_key(town_dir)
        late = identity.RequestSigner(TOWNSHIP, key, clock=lambda: clock.time() - 86400)
        answer = requests.get(county.db_url, headers=late.headers("GET", "/db", b""),
                              timeout=10)
        assert answer.status_code == 401
        assert answer.headers.get("X-Tongban-Refusal") == "clock_skew"
        stranger = identity.RequestSigner(TOWNSHIP, identity.new_private_key(),
                                          clock=clock.time)
        answer = requests.get(county.db_url, headers=stranger.headers("GET", "/db", b""),
                              timeout=10)
        assert answer.status_code == 401 and "X-Tongban-Refusal" not in answer.headers
        # Its status document, written after the round, goes up with the next one.
        nodeproc.tongban("syncd", town_dir, "--once")
        status = county.session().get(f"{county.db_url}/status:{TOWNSHIP}").json()
        assert status["state"] == "up"
        # Without the correction it would claim to report from a day in the future.
        from shared.syncstatus import parse_iso
        assert abs(parse_iso(status["reported_at"]) - clock.time()) < 3600
        nodeproc.tongban("user", "add", county.node_dir, "du", "--role", "supervisor",
                         input_text="supervisor-pass-1\n")
        staff = nodeproc.staff_session(county, "du", "supervisor-pass-1")
        page = staff.get(f"{county.url}/sync/status", timeout=10).text
        assert "下级节点同步情况" in page and TOWNSHIP in page and "测试镇" in page
    finally:
        county.stop()


def test_a_contact_is_recorded_only_on_a_link_whose_row_is_up(stores):
    """The longpoll thread records contacts; a failing round's row is never overwritten."""
    from shared.syncstatus import LinkStatusTable

    table = LinkStatusTable(stores("village").db)
    table.ensure()
    base = {"link": "parent", "peer": "http://t", "failures": 0, "doc_failures": 0,
            "updated": 100.0}
    table.save(dict(base, state="up", last_success=100.0))
    table.confirm("parent", 160.0)
    assert table.get("parent")["last_success"] == 160.0
    table.confirm("parent", 150.0)  # an older contact never moves it back
    assert table.get("parent")["last_success"] == 160.0
    table.save(dict(base, state="backing_off", last_success=160.0, next_retry=170.0))
    table.confirm("parent", 200.0)
    row = table.get("parent")
    assert (row["state"], row["last_success"], row["next_retry"]) == ("backing_off", 160.0, 170.0)
