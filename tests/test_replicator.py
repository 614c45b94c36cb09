"""The replicator: protocol steps without a network, local pairs, faults, and real peers
(pouchdb-server, tongban node processes, the ``tongban replicate`` command)."""

import threading
import time
import uuid

import pytest
import requests

from shared import errors
from syncd.peers import HttpPeer, LocalPeer, peer_from_string
from syncd.replicator import (
    HISTORY_LIMIT,
    build_checkpoint,
    compare_replication_logs,
    replicate,
    replication_id,
)
from tests import nodeproc


def fill(store, count, prefix="doc", start=0):
    """Create ``count`` documents; returns their revs by id."""
    docs = [{"_id": f"{prefix}{i:04d}", "type": "case", "n": i}
            for i in range(start, start + count)]
    return {entry["id"]: entry["rev"] for entry in store.bulk_docs(docs)}


def local_doc_count(store):
    return store.db.execute_sql("SELECT COUNT(*) FROM local_doc").fetchone()[0]


def same_documents(a, b):
    """Both stores hold the same documents with the same winners and conflicts."""
    rows_a = {r["id"]: r for r in a.changes(0, style="all_docs")[0]}
    rows_b = {r["id"]: r for r in b.changes(0, style="all_docs")[0]}
    assert rows_a.keys() == rows_b.keys()
    for doc_id, row in rows_a.items():
        assert sorted(c["rev"] for c in row["changes"]) == \
            sorted(c["rev"] for c in rows_b[doc_id]["changes"])
        if not row.get("deleted"):
            assert a.get(doc_id, conflicts=True) == b.get(doc_id, conflicts=True)


# -- pure steps ---------------------------------------------------------------------------


def test_replication_id_is_deterministic_and_depends_on_the_filter():
    first = replication_id("local:a", "http://h/db")
    assert first == replication_id("local:a", "http://h/db")
    assert first != replication_id("http://h/db", "local:a")
    assert first != replication_id("local:a", "http://h/db", doc_ids=["x"])
    assert replication_id("a", "b", ["x", "y"]) == replication_id("a", "b", ["y", "x"])


def entry(session, seq):
    return {"session_id": session, "recorded_seq": seq}


def test_compare_logs_without_logs_starts_over():
    assert compare_replication_logs(None, None) == (0, [])
    assert compare_replication_logs({"session_id": "s", "source_last_seq": 5}, None) == (0, [])


def test_compare_logs_same_session_takes_its_seq():
    log = {"session_id": "s2", "source_last_seq": 9, "history": [entry("s2", 9), entry("s1", 4)]}
    assert compare_replication_logs(log, dict(log)) == (9, log["history"])


def test_compare_logs_finds_the_latest_common_session():
    # The target's last checkpoint was lost (restored from a backup): s1 is common.
    source = {"session_id": "s3", "source_last_seq": 12,
              "history": [entry("s3", 12), entry("s2", 8), entry("s1", 4)]}
    target = {"session_id": "s1", "source_last_seq": 4, "history": [entry("s1", 4)]}
    assert compare_replication_logs(source, target) == (4, [entry("s1", 4)])
    assert compare_replication_logs(target, source)[0] == 4


def test_compare_logs_with_nothing_in_common_starts_over():
    source = {"session_id": "a", "history": [entry("a", 3)]}
    target = {"session_id": "b", "history": [entry("b", 7)]}
    assert compare_replication_logs(source, target) == (0, [])


def test_compare_logs_reads_pouchdb_fields():
    source = {"session_id": "p1", "last_seq": 6, "history": [{"session_id": "p1", "last_seq": 6}]}
    assert compare_replication_logs(source, dict(source))[0] == 6
    target = {"session_id": "p0", "last_seq": 2,
              "history": [{"session_id": "p0", "last_seq": 2}]}
    older = dict(source, history=source["history"] + [{"session_id": "p0", "last_seq": 2}])
    assert compare_replication_logs(older, target)[0] == 2


def test_checkpoint_history_is_capped():
    history = [entry(f"s{i}", i) for i in range(80)]
    body = build_checkpoint("new", 99, entry("new", 99), history)
    assert len(body["history"]) == HISTORY_LIMIT and body["history"][0]["session_id"] == "new"
    assert body["source_last_seq"] == 99 and body["replication_id_version"] == 1


# -- local pairs ------------------------------------------------------------------------


def test_one_shot_with_creates_updates_deletes_and_conflicts(stores):
    source, target = stores("a"), stores("b")
    revs = fill(source, 5)
    source.put({"_id": "doc0000", "_rev": revs["doc0000"], "n": 100})
    source.put({"_id": "doc0001", "_rev": revs["doc0001"], "_deleted": True})
    # The same document edited on both sides: a conflict after replication.
    source.put({"_id": "shared", "who": "source"})
    target.put({"_id": "shared", "who": "target"})

    result = replicate(LocalPeer(source), LocalPeer(target))
    assert result["docs_written"] == 6 and result["doc_write_failures"] == 0
    back = replicate(LocalPeer(target), LocalPeer(source))
    assert back["docs_written"] == 1  # only the target's side of the conflict

    same_documents(source, target)
    assert target.get("doc0000")["n"] == 100
    with pytest.raises(errors.NotFound):
        target.get("doc0001")
    winner = target.get("shared", conflicts=True)
    assert len(winner["_conflicts"]) == 1
    assert winner == source.get("shared", conflicts=True)


def test_incremental_run_moves_only_new_changes_and_reads_the_checkpoint(stores):
    source, target = stores("a"), stores("b")
    fill(source, 10)
    first = replicate(LocalPeer(source), LocalPeer(target), batch_size=4)
    assert first["docs_written"] == 10 and first["recorded_seq"] == source.update_seq()
    fill(source, 3, start=10)
    second = replicate(LocalPeer(source), LocalPeer(target), batch_size=4)
    assert second["start_last_seq"] == first["recorded_seq"]
    assert second["docs_read"] == second["docs_written"] == second["missing_checked"] == 3
    rep_id = replication_id(LocalPeer(source).identity(), LocalPeer(target).identity())
    for store in (source, target):
        log = store.get_local(rep_id)
        assert log["session_id"] == second["session_id"]
        assert log["source_last_seq"] == source.update_seq()
        assert [h["session_id"] for h in log["history"]] == \
            [second["session_id"], first["session_id"]]
        for key in ("start_time", "end_time", "docs_read", "docs_written",
                    "doc_write_failures", "missing_checked", "missing_found", "recorded_seq"):
            assert key in log["history"][0]


class BreakingTarget(LocalPeer):
    """A target whose connection breaks at its ``fail_at``-th bulk_docs."""

    def __init__(self, store, fail_at):
        super().__init__(store)
        self.calls = 0
        self.fail_at = fail_at

    def bulk_docs(self, docs, *, new_edits=False):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise errors.PeerError("connection reset", original=ConnectionResetError())
        return super().bulk_docs(docs, new_edits=new_edits)


@pytest.mark.parametrize("prefetch", [False, True])
def test_interrupted_replication_resumes_without_duplicates(stores, prefetch):
    source, target = stores("a"), stores("b")
    fill(source, 50)
    with pytest.raises(errors.PeerError):
        replicate(LocalPeer(source), BreakingTarget(target, fail_at=3), batch_size=10,
                  prefetch=prefetch)
    assert target.doc_count() == 20
    rep_id = replication_id(LocalPeer(source).identity(), LocalPeer(target).identity())
    # Checkpointed exactly up to what was written: the end of the second batch.
    assert target.get_local(rep_id)["source_last_seq"] == 20
    assert source.get_local(rep_id)["source_last_seq"] == 20

    resumed = replicate(LocalPeer(source), LocalPeer(target), batch_size=10, prefetch=prefetch)
    assert resumed["start_last_seq"] == 20
    assert resumed["docs_read"] == resumed["docs_written"] == 30
    same_documents(source, target)


class AnswerLostSource(LocalPeer):
    """A source across a link that loses the answer to its ``lose_at``-th checkpoint write
    after the write was applied (the request reached it, the reply did not come back)."""

    def __init__(self, store, lose_at):
        super().__init__(store)
        self.writes = 0
        self.lose_at = lose_at

    def put_local(self, local_id, doc):
        rev = super().put_local(local_id, doc)
        self.writes += 1
        if self.writes == self.lose_at:
            raise errors.PeerError("PUT _local: HTTP 200 with an empty body (answer cut short)")
        return rev


def test_a_checkpoint_whose_answer_was_lost_is_still_written_on_the_other_side(stores):
    source, target = stores("a"), stores("b")
    fill(source, 50)
    rep_id = replication_id(LocalPeer(source).identity(), LocalPeer(target).identity())
    # Two runs in a row lose the answer to a checkpoint the source did write: the
    # target must hold the same checkpoint, or the next run would start from an older
    # session (CouchDB's history walk) and read again what the target already has.
    for lose_at, recorded in ((3, 30), (1, 40)):
        with pytest.raises(errors.PeerError):
            replicate(AnswerLostSource(source, lose_at), LocalPeer(target), batch_size=10)
        assert target.get_local(rep_id)["source_last_seq"] == recorded
        assert source.get_local(rep_id)["source_last_seq"] == recorded
        assert source.get_local(rep_id)["session_id"] == target.get_local(rep_id)["session_id"]
    resumed = replicate(LocalPeer(source), LocalPeer(target), batch_size=10)
    assert resumed["start_last_seq"] == 40
    assert resumed["docs_read"] == 10
    same_documents(source, target)


class RefusingTarget(LocalPeer):
    """A target that refuses one document with ``error`` and writes the rest."""

    def __init__(self, store, refused, error="forbidden"):
        super().__init__(store)
        self.refused = refused
        self.error = error

    def bulk_docs(self, docs, *, new_edits=False):
        kept = [doc for doc in docs if doc["_id"] != self.refused]
        failures = super().bulk_docs(kept, new_edits=new_edits)
        return failures + [{"id": self.refused, "error": self.error, "reason": "refused"}
                           for doc in docs if doc["_id"] == self.refused]


def test_a_failed_document_is_counted_and_the_checkpoint_stays_before_it(stores, caplog):
    source, target = stores("a"), stores("b")
    fill(source, 30)
    result = replicate(LocalPeer(source), RefusingTarget(target, "doc0012", "unknown_error"),
                       batch_size=10)
    assert result["doc_write_failures"] == 1 and result["docs_written"] == 29
    assert result["recorded_seq"] == 12  # doc0012 has seq 13
    assert "doc0012" in caplog.text
    again = replicate(LocalPeer(source), LocalPeer(target), batch_size=10)
    assert again["start_last_seq"] == 12
    assert again["docs_written"] == 1 and again["missing_found"] == 1
    same_documents(source, target)


@pytest.mark.parametrize("error", ["forbidden", "unauthorized"])
def test_a_refused_document_is_counted_and_skipped_as_couchdb_does(stores, caplog, error):
    source, target = stores("a"), stores("b")
    fill(source, 30)
    result = replicate(LocalPeer(source), RefusingTarget(target, "doc0012", error),
                       batch_size=10)
    assert result["doc_write_failures"] == 1 and result["docs_written"] == 29
    # The target will refuse it every time: the checkpoint passes it, the log names it.
    assert result["recorded_seq"] == 30
    assert "doc0012" in caplog.text and error in caplog.text
    again = replicate(LocalPeer(source), RefusingTarget(target, "doc0012", error))
    assert again["start_last_seq"] == 30 and again["docs_read"] == 0
    with pytest.raises(errors.NotFound):
        target.get("doc0012")


def test_a_refused_document_does_not_hide_a_later_failure(stores):
    """Skipping a refused document never lets the checkpoint pass another failure."""

    class TwoFailures(RefusingTarget):
        def bulk_docs(self, docs, *, new_edits=False):
            failures = super().bulk_docs(
                [d for d in docs if d["_id"] != "doc0020"], new_edits=new_edits)
            return failures + [{"id": "doc0020", "error": "unknown_error", "reason": "disk"}
                               for d in docs if d["_id"] == "doc0020"]

    source, target = stores("a"), stores("b")
    fill(source, 30)
    result = replicate(LocalPeer(source), TwoFailures(target, "doc0005"), batch_size=10)
    assert result["doc_write_failures"] == 2
    assert result["recorded_seq"] == 20  # doc0020 has seq 21


def test_an_unreachable_target_aborts_without_checkpoint(stores):
    source = stores("a")
    fill(source, 5)
    target = HttpPeer(f"http://127.0.0.1:{nodeproc.free_port()}/db")
    with pytest.raises(errors.PeerError):
        replicate(LocalPeer(source), target)
    assert local_doc_count(source) == 0


def test_doc_ids_filter(stores):
    source, target = stores("a"), stores("b")
    fill(source, 10)
    result = replicate(LocalPeer(source), LocalPeer(target), doc_ids=["doc0003", "doc0007"])
    assert result["docs_written"] == 2
    assert sorted(r["id"] for r in target.changes(0)[0]) == ["doc0003", "doc0007"]
    # A different filter is a different replication with its own checkpoint.
    assert replicate(LocalPeer(source), LocalPeer(target))["docs_written"] == 8


def wait_until(predicate, deadline_seconds=30):
    """Poll ``predicate`` until true; fail (not measure) after a generous deadline."""
    deadline = time.monotonic() + deadline_seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.mark.parametrize("prefetch", [False, True])
def test_continuous_picks_up_a_later_write_and_stops_on_the_event(stores, prefetch):
    source, target = stores("a"), stores("b")
    fill(source, 3)
    stop = threading.Event()
    outcome = {}

    def run():
        outcome["entry"] = replicate(LocalPeer(source), LocalPeer(target), continuous=True,
                                     stop=stop, poll_timeout=0.5, prefetch=prefetch)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_until(lambda: target.doc_count() == 3)
        source.put({"_id": "later", "v": 1})
        wait_until(lambda: target.doc_count() == 4)
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert outcome["entry"]["docs_written"] == 4
    assert target.get("later")["v"] == 1


def test_progress_is_reported_per_batch(stores):
    source, target = stores("a"), stores("b")
    fill(source, 25)
    seen = []
    replicate(LocalPeer(source), LocalPeer(target), batch_size=10, on_progress=seen.append)
    assert [s["docs_written"] for s in seen] == [10, 20, 25]


# -- real peers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pouchdb_server(tmp_path_factory):
    proc = nodeproc.start_pouchdb_server(tmp_path_factory.mktemp("pouchdb"))
    yield proc
    proc.stop()


def test_pouchdb_server_both_ways(stores, pouchdb_server):
    url = f"{pouchdb_server.url}/r{uuid.uuid4().hex[:8]}"
    requests.put(url).raise_for_status()
    local = stores("a")
    revs = fill(local, 20)
    local.put({"_id": "doc0000", "_rev": revs["doc0000"], "_deleted": True})
    remote = HttpPeer(url)
    pushed = replicate(LocalPeer(local), remote, batch_size=7)
    assert pushed["docs_written"] == 20
    # PouchDB writes on its side and keeps our checkpoint at _local/<id>.
    requests.put(f"{url}/from-pouch", json={"v": 1}).raise_for_status()
    rev = requests.get(f"{url}/doc0005").json()["_rev"]
    requests.put(f"{url}/doc0005", json={"_rev": rev, "n": 55}).raise_for_status()
    local.put({"_id": "doc0005", "_rev": revs["doc0005"], "n": -5})  # a conflict
    pulled = replicate(remote, LocalPeer(local))
    assert pulled["docs_written"] == 2 and pulled["doc_write_failures"] == 0
    replicate(LocalPeer(local), remote)
    rep_id = replication_id(LocalPeer(local).identity(), remote.identity())
    assert requests.get(f"{url}/_local/{rep_id}").json()["session_id"]
    remote_doc = requests.get(f"{url}/doc0005", params={"conflicts": "true"}).json()
    assert remote_doc == local.get("doc0005", conflicts=True)
    assert requests.get(f"{url}/doc0000").status_code == 404
    # Without _bulk_get, the open_revs fallback reads the same.
    other = stores("c")
    remote._has_bulk_get = False
    assert replicate(remote, LocalPeer(other))["docs_written"] == 22  # doc0005: 2 leaves
    same_documents(local, other)
    remote.close()


@pytest.fixture
def node(tmp_path):
    node = nodeproc.start_node(tmp_path / "n", tier="county", code="441521")
    yield node
    node.stop()


def test_tongban_node_both_ways(stores, node):
    local = stores("a")
    revs = fill(local, 30)
    remote = HttpPeer(node.db_url, auth=node.auth)
    own_docs = remote.info()["doc_count"]  # what init wrote (the node's registry entry)
    pushed = replicate(LocalPeer(local), remote, batch_size=8)
    assert pushed["docs_written"] == 30
    session = node.session()
    session.put(f"{node.db_url}/from-node", json={"v": 1}).raise_for_status()
    local.put({"_id": "doc0001", "_rev": revs["doc0001"], "_deleted": True})
    pulled = replicate(remote, LocalPeer(local))
    assert pulled["docs_written"] == 1 + own_docs
    again = replicate(LocalPeer(local), remote)
    assert again["docs_written"] == 1
    assert session.get(f"{node.db_url}/doc0001").status_code == 404
    assert replicate(remote, LocalPeer(local))["docs_written"] == 0
    remote.close()


def test_cli_replicates_a_node_directory_to_a_node_url(tmp_path, node):
    node_dir = nodeproc.make_node_dir(tmp_path / "village", tier="village",
                                      code="441521100201")
    peer = peer_from_string(str(node_dir))
    fill(peer.store, 12)
    peer.close()
    result = nodeproc.tongban("replicate", node_dir, node.authed_db_url, "--batch-size", "5")
    assert "12 written" in result.stdout and "0 failures" in result.stdout
    assert node.session().get(f"{node.db_url}/doc0011").status_code == 200
    again = nodeproc.tongban("replicate", node_dir, node.authed_db_url)
    assert "0 written" in again.stdout


def test_cli_fails_plainly_on_an_unreachable_peer(tmp_path):
    node_dir = nodeproc.make_node_dir(tmp_path / "n")
    result = nodeproc.tongban("replicate", node_dir,
                              f"http://127.0.0.1:{nodeproc.free_port()}", check=False)
    assert result.returncode != 0
    assert "replication failed" in result.stderr and "Traceback" not in result.stderr
