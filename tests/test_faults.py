"""Faults, with real processes (issue 3, item 8).

Every test runs ``tongban serve`` and ``tongban syncd`` as separate processes on real SQLite
files, with nodes enrolled at a county so that syncd signs its requests as in production:

* kill -9 of syncd (and of either node's serve) at 20 random moments of a 20,000-document
  replication in both directions: the stores converge to exactly the same documents, and
  no checkpoint ever pointed past what its target held;
* the parent down while both sides write: converges, without conflicts, when it returns;
* a link that drops, truncates and delays the parent's answers, or cuts them right after
  their status line: syncd retries (signing afresh), never takes a cut answer for an empty
  one, and neither store is damaged, loses a document or holds a partial one;
* a village whose clock is a day behind (and one a day ahead): its requests are accepted
  once the signer corrected its offset, and a case's events fold in causal order at every
  node (hybrid logical clock), which the wall clocks would have got wrong.

``TONGBAN_FAULT_SEED`` replays another sequence of kill moments.
"""

import json
import logging
import os
import random
import re
import sqlite3
import threading
import time

import pytest
import requests

from shared import casedocs, clock
from shared.app import open_store
from shared.config import load_config
from shared.hlc import NodeClock, parse_hlc
from shared.syncstatus import parse_iso
from syncd.daemon import parent_db_url
from syncd.peers import HttpPeer
from syncd.replicator import replication_id
from tests import nodeproc
from tests.conftest import skewed_env
from tests.faultproxy import FaultProxy

logger = logging.getLogger(__name__)

COUNTY, TOWN = "441521", "441521101"
DAY = 86400
SEED = int(os.environ.get("TONGBAN_FAULT_SEED", "20261122"))
#: About 1 KB of UTF-8 (33 bytes, 30 times): the size of a catalog item or a case header.
FILLER = "政务服务事项办理指南，" * 30
APPLICANT = "ab" * 32
#: Short back-off so that a restarted parent is found again within a second or two.
FAST_SYNC = {"SYNC_BACKOFF_BASE": 0.2, "SYNC_MAX_BACKOFF": 1.0, "SYNC_INTERVAL": 5}


# -- reading a store file beside the processes that write it --------------------------------


def connect(path):
    """A plain SQLite connection to a node's store (autocommit; reads only)."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def store_path(node_dir):
    return load_config(node_dir)["DB_PATH"]


def doc_revs(conn, prefix=""):
    """``{id: winning rev}`` of the live documents whose id starts with ``prefix``."""
    return dict(conn.execute(
        "SELECT id, rev FROM document WHERE deleted = 0 AND id >= ? AND id < ?",
        (prefix, prefix + "\uffff")).fetchall())


def count(conn, prefix):
    return conn.execute("SELECT COUNT(*) FROM document WHERE id >= ? AND id < ?",
                        (prefix, prefix + "\uffff")).fetchone()[0]


def checkpoint_seq(conn, rep_id):
    """The ``source_last_seq`` of checkpoint ``_local/<rep_id>``, or None."""
    row = conn.execute("SELECT body FROM local_doc WHERE id = ?", (rep_id,)).fetchone()
    return json.loads(row[0]).get("source_last_seq") if row else None


def winner_bodies(conn):
    """``{id: body}`` of every live document's winning revision."""
    rows = conn.execute(
        "SELECT d.id, r.body FROM document d JOIN revision r "
        "ON r.doc_id = d.id AND r.rev = d.rev WHERE d.deleted = 0").fetchall()
    return {doc_id: json.loads(body) for doc_id, body in rows}


def integrity(conn):
    return conn.execute("PRAGMA integrity_check").fetchone()[0]


def without_status(revs):
    # status:<code> is the township's heartbeat, rewritten while we look: compared apart.
    return {doc_id: rev for doc_id, rev in revs.items() if not doc_id.startswith("status:")}


def port_of(node):
    return int(node.url.rsplit(":", 1)[1])


def all_docs(node):
    """``{id: rev}`` from the node's ``/db/_all_docs`` (full-scope replicator account)."""
    response = node.session().get(f"{node.db_url}/_all_docs", timeout=60)
    response.raise_for_status()
    return {row["id"]: row["value"]["rev"] for row in response.json()["rows"]}


def sync_status(node_dir):
    """The parent link's row of ``tongban sync status --json``."""
    report = json.loads(nodeproc.tongban("sync", "status", node_dir, "--json").stdout)
    return {link["link"]: link for link in report["links"]}.get("parent")


def wait(predicate, what, *, timeout=30.0, interval=0.1, logs=None):
    """``nodeproc.eventually``, with ``logs()`` (read when it fails) in the message."""
    try:
        return nodeproc.eventually(predicate, what, timeout=timeout, interval=interval)
    except AssertionError as exc:
        if logs is None:
            raise
        raise AssertionError(f"{exc}\n{logs()}") from None


def item(doc_id, n):
    return {"_id": doc_id, "type": "item", "title": f"事项 {n}", "guide": FILLER}


def town_case(day, n):
    number = f"{TOWN}-{day}-{n:04d}"
    hlc = f"{int(clock.time() * 1000):015d}-{n % 100000:05d}"
    return casedocs.case_header(number, "item:F00001", TOWN, TOWN, APPLICANT, hlc,
                                note=FILLER)


def seed(node_dir, docs, chunk=1000):
    """Write ``docs`` at a node in-process (as its serve would), in chunks."""
    store = open_store(load_config(node_dir))
    try:
        for start in range(0, len(docs), chunk):
            results = store.bulk_docs(docs[start:start + chunk])
            assert all("ok" in r for r in results), [r for r in results if "ok" not in r][:3]
    finally:
        store.close()


# -- a county and a township enrolled under it ------------------------------------------------


class Pair:
    """A county (serve) and a township enrolled under it (serve, and syncd when started).

    The township's syncd signs every request with the key it got at enrolment.
    """

    def __init__(self, base, **sync_settings):
        self.county_dir = nodeproc.make_node_dir(base / "county", tier="county", code=COUNTY,
                                                 name="海丰县")
        self.county = nodeproc.start_node(self.county_dir, create=False)
        self.county_port = port_of(self.county)
        self.town_dir = nodeproc.enrol_node(self.county_dir, self.county.url, base / "town",
                                            "township", TOWN, "梅陇镇")
        nodeproc.update_config(self.town_dir, **sync_settings)
        self.town = nodeproc.start_node(self.town_dir, create=False)
        self.town_port = port_of(self.town)
        self.syncd = None
        self.county_db = connect(store_path(self.county_dir))
        self.town_db = connect(store_path(self.town_dir))

    def replication_ids(self):
        """``(pull id, push id)`` of the township's link to its parent."""
        parent_url = json.loads((self.town_dir / "tongban.json").read_text())["PARENT_URL"]
        remote = HttpPeer(parent_db_url(parent_url)).identity()
        uuid = self.town_db.execute("SELECT value FROM meta WHERE key = 'uuid'").fetchone()[0]
        local = f"local:{uuid}"
        return replication_id(remote, local), replication_id(local, remote)

    def start_syncd(self):
        self.syncd = nodeproc.start_syncd(self.town_dir)
        return self.syncd

    def restart_county(self):
        self.county = nodeproc.start_node(self.county_dir, port=self.county_port, create=False)

    def restart_town(self):
        self.town = nodeproc.start_node(self.town_dir, port=self.town_port, create=False)

    def stop(self):
        for proc in (self.syncd, self.town, self.county):
            if proc is not None:
                proc.stop()
        self.county_db.close()
        self.town_db.close()

    def logs(self):
        """The processes' logs, for a failure message."""
        text = self.syncd.log()[-6000:] if self.syncd else ""
        return f"--- syncd ---\n{text}"


@pytest.fixture
def pair(tmp_path):
    made = []

    def make(**sync_settings):
        made.append(Pair(tmp_path, **sync_settings))
        return made[-1]

    yield make
    for each in made:
        each.stop()


def assert_same_documents(pair, ids_expected):
    """Both nodes hold exactly the same documents at the same revisions: generation 1,
    no conflicts, each revision stored once, bodies equal, and every id expected."""
    county, town = all_docs(pair.county), all_docs(pair.town)
    assert without_status(county) == without_status(town)
    missing = sorted(set(ids_expected) - set(town))
    assert not missing, f"{len(missing)} documents lost, e.g. {missing[:5]}"
    for conn in (pair.county_db, pair.town_db):
        assert integrity(conn) == "ok"
        conflicted = conn.execute(
            "SELECT id FROM document WHERE leaves != '' LIMIT 5").fetchall()
        assert conflicted == [], f"conflicts created: {conflicted}"
        twice = conn.execute(
            "SELECT doc_id FROM revision WHERE doc_id NOT LIKE 'status:%' AND doc_id NOT "
            "LIKE 'node:%' GROUP BY doc_id HAVING COUNT(*) > 1 LIMIT 5").fetchall()
        assert twice == [], f"documents stored twice: {twice}"
    not_first = [d for d in ids_expected if not town[d].startswith("1-")]
    assert not not_first, f"documents past generation 1: {not_first[:5]}"
    county_bodies, town_bodies = winner_bodies(pair.county_db), winner_bodies(pair.town_db)
    damaged = [d for d in ids_expected if county_bodies.get(d) != town_bodies.get(d)]
    assert not damaged, f"bodies differ: {damaged[:5]}"


# -- (a) kill -9 during a 20,000-document replication --------------------------------------


class Writer(threading.Thread):
    """Writes through both nodes' /db while the kills go on: a catalog item at the county,
    a case header at the township, in turn. Remembers what each node acknowledged."""

    def __init__(self, pair):
        super().__init__(daemon=True, name="writer")
        self.pair = pair
        self.stopped = threading.Event()
        self.acked = []
        self.failed = 0

    def run(self):
        n = 0
        while not self.stopped.wait(0.05):
            n += 1
            if n % 2:
                node, doc = self.pair.county, item(f"item:W{n:05d}", n)
            else:
                node, doc = self.pair.town, town_case("20261123", n)
            try:
                response = requests.put(f"{node.db_url}/{doc['_id']}", json=doc,
                                        auth=node.auth, timeout=10)
            except requests.RequestException:
                self.failed += 1  # the node is being killed: maybe written, maybe not
                continue
            if response.status_code == 201:
                self.acked.append(doc["_id"])
            else:
                self.failed += 1

    def stop(self):
        self.stopped.set()
        self.join(15)


class CheckpointSampler:
    """Reads each direction's checkpoint on its target together with the target's
    documents (one read transaction: one moment), then checks that every source change
    at or before the checkpoint's sequence is at the target at that revision.

    The source's changes up to a sequence never change afterwards (documents here are
    immutable and a new write takes a later sequence), so reading them later is exact.
    """

    def __init__(self, pair):
        self.pair = pair
        self.pull_id, self.push_id = pair.replication_ids()
        self.samples = []  # (moment, direction, checkpoint seq, violations)

    def sample(self, moment):
        pair = self.pair
        for direction, rep_id, target, source in (
                ("pull", self.pull_id, pair.town_db, pair.county_db),
                ("push", self.push_id, pair.county_db, pair.town_db)):
            target.execute("BEGIN")
            try:
                seq = checkpoint_seq(target, rep_id)
                held = doc_revs(target)
            finally:
                target.execute("COMMIT")
            violations = []
            if seq is not None:
                rows = source.execute(
                    "SELECT id, rev FROM document WHERE seq <= ? AND deleted = 0 AND "
                    "(id LIKE 'item:%' OR id LIKE 'case:%')", (seq,)).fetchall()
                violations = [(doc_id, rev) for doc_id, rev in rows
                              if held.get(doc_id) != rev]
            self.samples.append((moment, direction, seq, violations))
            # Fail at once: the moment is the clue.
            assert not violations, (
                f"{moment}: the {direction} checkpoint at seq {seq} is past "
                f"{len(violations)} documents its target lacks, e.g. {violations[:3]}")

    def seqs(self, direction):
        return [seq for _, d, seq, _ in self.samples if d == direction and seq is not None]


def test_kill_9_of_syncd_and_serve_during_a_20000_document_replication(pair):
    rng = random.Random(SEED)
    pair = pair(**FAST_SYNC)
    pulled = [item(f"item:F{n:05d}", n) for n in range(14000)]  # county -> township
    pushed = [town_case("20261122", n) for n in range(1, 6001)]  # township -> county
    seed(pair.county_dir, pulled)
    seed(pair.town_dir, pushed)
    total = len(pulled) + len(pushed)

    def progress():
        return count(pair.town_db, "item:F") + count(pair.county_db, f"case:{TOWN}-20261122-")

    sampler = CheckpointSampler(pair)
    writer = Writer(pair)
    writer.start()
    pair.start_syncd()
    # 20 kills of syncd; at 8 of them the county's or the township's serve dies first.
    kinds = ["syncd"] * 12 + ["county"] * 4 + ["township"] * 4
    rng.shuffle(kinds)
    # One kill moment in each twentieth of the replication (stratified, so that they
    # spread over it), measured in documents arrived, plus a random pause.
    thresholds = [int(total * 0.95 * (i + rng.random()) / 20) for i in range(20)]
    moments = []
    try:
        for number, (threshold, kind) in enumerate(zip(thresholds, kinds), 1):
            started = progress()
            restarted_at = time.monotonic()

            def due():
                assert pair.syncd.process.poll() is None, \
                    f"syncd exited by itself:\n{pair.logs()}"
                done = progress()
                # After a restart, let syncd do something before the next kill.
                moved = done > started or time.monotonic() - restarted_at > 1.0
                return (done,) if done >= threshold and moved else None
            (at,) = wait(due, f"kill {number}: {threshold} documents arrived",
                         timeout=60, interval=0.02, logs=pair.logs)
            time.sleep(rng.uniform(0.0, 0.15))
            if kind == "county":
                pair.county.stop(kill=True)
            elif kind == "township":
                pair.town.stop(kill=True)
            if kind != "syncd":
                time.sleep(rng.uniform(0.0, 0.6))  # syncd meets the dead node meanwhile
            pair.syncd.stop(kill=True)
            moments.append((number, kind, at, progress()))
            sampler.sample(f"after kill {number} ({kind})")
            if kind == "county":
                pair.restart_county()
            elif kind == "township":
                pair.restart_town()
            pair.start_syncd()
            if number % 4 == 0:
                # A moment with syncd running (the snapshot keeps the sample exact).
                time.sleep(rng.uniform(0.1, 0.5))
                sampler.sample(f"while running, after kill {number}")
        logger.info("kill moments (number, kind, arrived at the kill, after): %s", moments)
        writer.stop()
        acked = list(writer.acked)

        expected = [d["_id"] for d in pulled + pushed] + acked

        def converged():
            town, county = doc_revs(pair.town_db), doc_revs(pair.county_db)
            return without_status(town) == without_status(county) and \
                all(doc_id in town for doc_id in expected)
        wait(converged, "convergence after the kills", timeout=90, interval=0.2,
             logs=pair.logs)
        pair.syncd.stop()
        assert pair.syncd.process.returncode == 0, pair.logs()
        sampler.sample("after convergence")
    finally:
        writer.stop()

    assert_same_documents(pair, expected)
    assert count(pair.town_db, "item:F") == count(pair.county_db, "item:F") == 14000
    assert count(pair.town_db, f"case:{TOWN}-20261122-") == 6000
    assert count(pair.county_db, f"case:{TOWN}-20261122-") == 6000
    # The writes acknowledged during the kills arrived too; the writer met dead nodes.
    assert len(acked) > 20 and writer.failed > 0

    # No checkpoint, at any moment sampled, pointed past what its target held (each
    # sample asserted it) ...
    assert len(sampler.samples) >= 2 * 20
    # ... and the kills landed in the middle of both directions (not before or after them).
    final_pull = checkpoint_seq(pair.town_db, sampler.pull_id)
    final_push = checkpoint_seq(pair.county_db, sampler.push_id)
    assert any(0 < s < final_pull for s in sampler.seqs("pull")), sampler.seqs("pull")
    assert any(0 < s < final_push for s in sampler.seqs("push")), sampler.seqs("push")
    assert len({at for _, _, at, _ in moments if 0 < at < total}) >= 10, moments
    # And a restarted syncd resumed from its checkpoints instead of starting over.
    starts = re.findall(r"\(id (\w+)\) from seq (\d+)", pair.syncd.log())
    resumed = {rep_id for rep_id, seq in starts if int(seq) > 0}
    assert {sampler.pull_id, sampler.push_id} <= resumed

    status = sync_status(pair.town_dir)
    assert status["state"] == "stopped" and status["last_success"] is not None


# -- (b) the parent down while both sides write ----------------------------------------------


def stamp(node_dir, build, wall_clock=time.time):
    """Write the documents ``build(hlc)`` returns at a node, in-process, stamped with the
    node's hybrid logical clock in the same transaction (as a clerk's write would be).

    :param wall_clock: the node's wall clock (a skewed one for a village that is off).
    :returns: the HLC string used.
    """
    store = open_store(load_config(node_dir))
    try:
        with store.db.atomic():
            hlc = NodeClock(store, wall_clock=wall_clock).now()
            results = store.bulk_docs(build(hlc))
        assert all("ok" in r for r in results), results
        return hlc
    finally:
        store.close()


def test_parent_down_while_both_sides_write_converges_when_it_returns(pair):
    pair = pair(**FAST_SYNC)
    pair.start_syncd()
    wait(lambda: (sync_status(pair.town_dir) or {}).get("state") == "up", "the first round",
         logs=pair.logs)
    # A case of the township, known on both sides before the outage.
    number = f"{TOWN}-20261122-0001"
    stamp(pair.town_dir, lambda hlc: [
        casedocs.case_header(number, "item:GD-01", TOWN, TOWN, APPLICANT, hlc),
        casedocs.case_event(number, "accepted", TOWN, hlc)])
    nodeproc.eventually(lambda: count(pair.county_db, f"event:{number}:") == 1,
                        "the case at the county")

    pair.county.stop()
    # The township keeps working through its own serve, the county in-process on its file.
    session = pair.town.session()
    town_ids = []
    for n in range(2, 42):
        doc = town_case("20261122", n)
        session.put(f"{pair.town.db_url}/{doc['_id']}", json=doc).raise_for_status()
        town_ids.append(doc["_id"])
    town_ids.append(f"event:{number}:" + stamp(pair.town_dir, lambda hlc: [
        casedocs.case_event(number, "supplemented", TOWN, hlc)]) + f":{TOWN}")
    county_items = [item(f"item:D{n:03d}", n) for n in range(40)]
    seed(pair.county_dir, county_items)
    county_ids = [d["_id"] for d in county_items]
    county_ids.append(f"event:{number}:" + stamp(pair.county_dir, lambda hlc: [
        casedocs.case_event(number, "approved", COUNTY, hlc)]) + f":{COUNTY}")

    status = nodeproc.eventually(
        lambda: (s := sync_status(pair.town_dir)) and s["state"] == "backing_off"
        and (s["pending_push"] or 0) >= len(town_ids) and s,
        "backing off with the township's writes waiting")
    assert status["error_kind"] == "unreachable" and status["offline"]
    assert status["last_success"] is not None  # the success before the outage is kept
    assert not any(doc_id in doc_revs(pair.county_db) for doc_id in town_ids)

    pair.restart_county()
    expected = town_ids + county_ids

    def converged():
        town, county = doc_revs(pair.town_db), doc_revs(pair.county_db)
        return all(d in town and d in county for d in expected) and \
            without_status(town) == without_status(county)
    wait(converged, "the union on both sides", logs=pair.logs)
    status = nodeproc.eventually(
        lambda: (s := sync_status(pair.town_dir)) and s["state"] == "up"
        and s["pending_push"] == 0 and s["pending_pull"] == 0 and s,
        "the link up with nothing waiting")
    assert status["error_kind"] is None and not status["offline"]
    pair.syncd.stop()
    assert_same_documents(pair, expected + [f"case:{number}"])
    # The case's events from both sides, in one order at both nodes.
    for conn in (pair.town_db, pair.county_db):
        events = [doc for doc_id, doc in winner_bodies(conn).items()
                  if doc_id.startswith(f"event:{number}:")]
        assert [e["kind"] for e in casedocs.events_in_order(events)] == \
            ["accepted", "supplemented", "approved"]


# -- (c) a link that drops, truncates and delays answers -------------------------------------


def sync_through(pair, proxy, *, pulled):
    """Point the township at ``proxy``, seed ``pulled`` items at the county and 1,000 cases
    at the township, start syncd; returns ``(items, cases)``, all of which must end up on
    both sides."""
    nodeproc.update_config(pair.town_dir, PARENT_URL=proxy.url)
    items = [item(f"item:P{n:05d}", n) for n in range(pulled)]
    cases = [town_case("20261122", n) for n in range(1, 1001)]
    seed(pair.county_dir, items)
    seed(pair.town_dir, cases)
    pair.start_syncd()
    return items, cases


def test_a_link_that_drops_truncates_and_delays_answers_never_damages_a_store(pair):
    pair = pair(**FAST_SYNC, SYNC_BATCH_SIZE=100, SYNC_REQUEST_TIMEOUT=10,
                SYNC_LONGPOLL_TIMEOUT=5)
    proxy = FaultProxy(pair.county_port, seed=SEED, drop=0.04, truncate=0.04, delay=0.1,
                       max_delay=0.5)
    try:
        pulled, pushed = sync_through(pair, proxy, pulled=2000)
        expected = [d["_id"] for d in pulled + pushed]

        def converged():
            town, county = doc_revs(pair.town_db), doc_revs(pair.county_db)
            return all(d in town and d in county for d in expected) and \
                without_status(town) == without_status(county)
        wait(converged, "convergence through the faulty link", timeout=120, interval=0.2,
             logs=lambda: f"{proxy.counts}\n{pair.logs()}")
        # Faults did happen, and syncd got through them by retrying.
        counts = dict(proxy.counts)
        assert counts["dropped"] >= 3 and counts["truncated"] >= 3 and \
            counts["delayed"] >= 3, counts
        pair.syncd.stop()
        log = pair.syncd.log()
        assert log.count("next try in") >= 2, log[-4000:]
    finally:
        proxy.close()
    # Every fault was taken for what it is, a failure of the link: never a bug of syncd,
    # never a refusal. The clocks are right, so the parent never refused a signature: a
    # request resent with its nonce would be refused as a replay, at worst twice in a row
    # and then the link waits as "refused" (the back-off cap, five minutes by default).
    assert "Traceback" not in log and "round failed" not in log, log[-4000:]
    assert "refused our timestamp" not in log and "拒绝了本节点的请求" not in log, log[-4000:]
    # Nothing partial anywhere: every document's body is its source's, bit for bit.
    assert_same_documents(pair, expected)
    town_bodies, county_bodies = winner_bodies(pair.town_db), winner_bodies(pair.county_db)
    for doc in pulled:
        assert town_bodies[doc["_id"]] == {k: v for k, v in doc.items() if k != "_id"}
    for doc in pushed:
        assert county_bodies[doc["_id"]] == {k: v for k, v in doc.items() if k != "_id"}


class AnswerCutter(FaultProxy):
    """A link that fails between two packets of an answer: some answers of the parent end
    right after their status line (the header block then looks complete and carries no
    length, so only the client's own checks can tell the answer from an empty one), or
    are lost whole after the parent acted on the request.

    :param cut: the odds of cutting one answer.
    :param paths: cut only answers to requests whose path holds one of these.
    :param keep_status: forward the status line of a cut answer (else nothing of it).
    """

    def __init__(self, target_port, *, seed, cut, paths=None, keep_status=True):
        super().__init__(target_port, seed=seed)
        self.cut = cut
        self.paths = paths
        self.keep_status = keep_status
        self.counts["cut"] = 0
        self.requests = {}  # upstream socket -> request line of the answer awaited

    def _pipe(self, source, sink, damage):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not damage:
                    # One request at a time on a connection (no pipelining): remember it.
                    if data[:8].split(b" ")[0] in (b"GET", b"POST", b"PUT", b"DELETE"):
                        self.requests[sink] = data.split(b"\r\n", 1)[0]
                elif data.startswith(b"HTTP/1.1 2") and self._cuts(self.requests.get(source)):
                    if self.keep_status:
                        sink.sendall(data[:data.index(b"\r\n") + 2])
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _cuts(self, request_line):
        if self.paths is not None and not any(
                path.encode() in (request_line or b"") for path in self.paths):
            return False
        with self.lock:
            cut = self.random.random() < self.cut
            self.counts["cut"] += cut
        return cut


@pytest.mark.parametrize("paths, cut, keep_status", [
    # Only _revs_diff: an empty answer read as "the parent lacks nothing" would make the
    # push skip a batch for good, and its documents would never arrive.
    (("/_revs_diff",), 0.3, True),
    # Any answer: each is a failed request, retried; none restarts a replication from
    # its beginning (a cut _local read is not "no checkpoint") or passes for a bug.
    (None, 0.1, True),
    # Answers lost whole: a request retried must be signed afresh, or the parent refuses
    # it as a replay and the link waits as "refused".
    (None, 0.1, False),
], ids=["revs_diff", "any", "lost"])
def test_an_answer_cut_short_is_retried_never_taken_for_an_empty_one(
        pair, paths, cut, keep_status):
    pair = pair(**FAST_SYNC, SYNC_BATCH_SIZE=50, SYNC_REQUEST_TIMEOUT=10,
                SYNC_LONGPOLL_TIMEOUT=5)
    proxy = AnswerCutter(pair.county_port, seed=SEED, cut=cut, paths=paths,
                         keep_status=keep_status)
    try:
        pulled, pushed = sync_through(pair, proxy, pulled=300)
        expected = [d["_id"] for d in pulled + pushed]

        def converged():
            town, county = doc_revs(pair.town_db), doc_revs(pair.county_db)
            return all(d in town and d in county for d in expected)
        wait(converged, "every document through the cutting link", timeout=60,
             interval=0.2, logs=lambda: f"{proxy.counts}\n{pair.logs()}")
        assert proxy.counts["cut"] >= 3, proxy.counts
        pair.syncd.stop()
    finally:
        proxy.close()
    log = pair.syncd.log()
    # Said as a problem of the link, never as a bug of syncd; and with the clocks right,
    # no signature was ever refused (a retried request was signed afresh, not replayed).
    assert "Traceback" not in log and "round failed" not in log, log[-4000:]
    assert "refused our timestamp" not in log and "拒绝了本节点的请求" not in log, log[-4000:]
    # Every request reached the parent (only answers were cut), so no checkpoint was lost:
    # a replication never starts behind where an earlier run of it started.
    furthest = {}
    for rep_id, seq in re.findall(r"\(id (\w+)\) from seq (\d+)", log):
        assert int(seq) >= furthest.get(rep_id, 0), f"{rep_id} went back to seq {seq}"
        furthest[rep_id] = int(seq)
    assert_same_documents(pair, expected)


# -- (d) a village whose clock is a day off --------------------------------------------------


class Region:
    """A county, a township (serve + syncd) and villages under it, all enrolled; the
    county and the township have correct clocks."""

    def __init__(self, base):
        self.base = base
        self.pair = Pair(base, **FAST_SYNC)
        self.pair.start_syncd()
        self.procs = []

    def village(self, code, skew):
        """Enrol village ``code`` through the township and start its serve and syncd with
        a wall clock ``skew`` seconds off (``TONGBAN_CLOCK_SKEW_SECONDS``)."""
        pair = self.pair
        node_dir = nodeproc.enrol_node(pair.county_dir, pair.town.url, self.base / code,
                                       "village", code, f"村 {code}")
        nodeproc.update_config(node_dir, **FAST_SYNC)
        env = skewed_env(skew)
        serve = nodeproc.start_serve(node_dir, env=env)
        syncd = nodeproc.start_syncd(node_dir, env=env)
        self.procs += [syncd, serve]
        return node_dir, serve, syncd

    def stop(self):
        for proc in self.procs:
            proc.stop()
        self.pair.stop()


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    region = Region(tmp_path_factory.mktemp("skew"))
    yield region
    region.stop()


def case_events(node, number):
    """The events of case ``number`` a node holds (read with its replicator account)."""
    response = node.session().get(f"{node.db_url}/_all_docs", params={
        "startkey": json.dumps(f"event:{number}:"), "endkey": json.dumps(f"event:{number};"),
        "include_docs": "true"}, timeout=30)
    response.raise_for_status()
    return [row["doc"] for row in response.json()["rows"]]


@pytest.mark.parametrize("code, skew", [("441521101001", -DAY), ("441521101002", DAY)],
                         ids=["a day behind", "a day ahead"])
def test_a_village_a_day_off_still_orders_a_cases_events(region, code, skew):
    town, county = region.pair.town, region.pair.county
    village_dir, village, syncd = region.village(code, skew)

    def village_clock():
        return clock.time() + skew

    def kinds_at(node):
        return [e["kind"] for e in casedocs.events_in_order(case_events(node, number))]

    # The village accepts a case, stamped by its own (wrong) clock.
    accepted_at = clock.time()
    # Numbered by the village's date, as its clerk's screen shows it.
    number = casedocs.case_number(code, casedocs.day_of(
        f"{int(village_clock() * 1000):015d}-00000"), 1)
    accepted = stamp(village_dir, lambda hlc: [
        casedocs.case_header(number, "item:GD-01", code, TOWN, APPLICANT, hlc),
        casedocs.case_event(number, "accepted", code, hlc)], wall_clock=village_clock)
    # Stamped a day off real time: the skew is real.
    assert abs(parse_hlc(accepted).ms / 1000 - (accepted_at + skew)) < 600
    wait(lambda: kinds_at(town) == ["accepted"], "the case at the township",
         logs=lambda: syncd.log()[-3000:])

    # The township (right clock) decides; it goes down to the village.
    approved_at = clock.time()
    approved = stamp(region.pair.town_dir, lambda hlc: [
        casedocs.case_event(number, "approved", TOWN, hlc)])
    wait(lambda: kinds_at(village) == ["accepted", "approved"], "the decision at the village",
         logs=lambda: syncd.log()[-3000:])

    # The village delivers, on its wrong clock again.
    delivered_wall = village_clock()
    delivered = stamp(village_dir, lambda hlc: [
        casedocs.case_event(number, "delivered", code, hlc)], wall_clock=village_clock)
    in_order = ["accepted", "approved", "delivered"]
    for node in (town, county, village):
        nodeproc.eventually(lambda: kinds_at(node) == in_order,
                            f"the three events in order at {node.url}")
    assert accepted < approved < delivered

    # The wall clocks alone would have got it wrong.
    if skew < 0:
        # The village's clock said "delivered" a day before the township approved.
        assert delivered_wall * 1000 < parse_hlc(approved).ms
    else:
        # The village's clock said "accepted" a day after the township approved.
        assert accepted_at + skew > approved_at

    # The village's requests, signed a day off, were refused once, then signed with the
    # township's time and accepted: its status report reached the township with the
    # township's time, and the link is up.
    log = syncd.log()
    assert "refused our timestamp; signing again with its time" in log
    status = nodeproc.eventually(
        lambda: (r := town.session().get(f"{town.db_url}/status:{code}")).ok and r.json(),
        "the village's status at the township")
    assert status["state"] == "up"
    assert abs(parse_iso(status["reported_at"]) - clock.time()) < 600
    nodeproc.eventually(lambda: sync_status(village_dir)["state"] == "up", "village link up")
