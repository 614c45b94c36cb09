"""Interop with the real PouchDB 9 replicator against a tongban node in its own process.

Each test starts a fresh county node (so counts and sequences are its own), runs a
scenario of tests/peers/pouch.js on a memory PouchDB, and checks what a user would see on
both sides: the documents, their bodies and their revisions.
"""

import datetime
import json
import queue
import subprocess
import threading
import uuid
from urllib.parse import quote

import pytest

from tests.nodeproc import PEERS_DIR, npm_ready, run_node_script, start_node

#: How long a test waits for a line from a running script before giving up (a hang guard,
#: not a timing assertion).
LINE_WAIT = 120


@pytest.fixture
def node(tmp_path):
    """A node served by its own process on 127.0.0.1, stopped in teardown.

    A township not yet enrolled: its store starts empty (a county's holds its own
    registry entry), and its replicator account has the full scope.
    """
    npm_ready()
    node = start_node(tmp_path / "township", tier="township", code="441521101")
    yield node
    node.stop()


@pytest.fixture
def http(node):
    """A requests session authenticated as the node's replicator account."""
    session = node.session()
    yield session
    session.close()


def write_scenario(node, tmp_path, steps, remote=None):
    """Write a scenario file (argv cannot carry a 1 MB document) and return its path."""
    path = tmp_path / f"scenario-{uuid.uuid4().hex}.json"
    scenario = {"remote": remote or node.authed_db_url, "steps": steps}
    path.write_text(json.dumps(scenario, ensure_ascii=False), encoding="utf-8")
    return path


def pouch(node, tmp_path, steps, remote=None):
    """Run ``steps`` in one pouch.js process; returns the named step results."""
    path = write_scenario(node, tmp_path, steps, remote)
    try:
        out = run_node_script("pouch.js", f"@{path}")
    except RuntimeError as exc:
        # The script's JSON error names the failing step; the node log shows why.
        pytest.fail(f"{exc}\n--- node log (tail) ---\n{node.log()[-6000:]}")
    return out["named"]


class Script:
    """pouch.js run in the background, its stdout lines read by a thread into a queue."""

    def __init__(self, node, tmp_path, steps):
        path = write_scenario(node, tmp_path, steps)
        # stderr goes to a file: nobody reads it while the script runs, so a pipe could fill.
        self.stderr_path = path.with_suffix(".stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                ["node", str(PEERS_DIR / "pouch.js"), f"@{path}"], cwd=PEERS_DIR,
                stdout=subprocess.PIPE, stderr=stderr, text=True, encoding="utf-8")
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            if line.strip():
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def next_line(self):
        """The next JSON line the script prints (None once it has exited)."""
        try:
            return self.lines.get(timeout=LINE_WAIT)
        except queue.Empty:
            pytest.fail(f"pouch.js printed nothing for a long time:\n{self.stderr()}")

    def kill(self):
        """SIGKILL (the script dies wherever it is, requests possibly in flight); close up."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)
        self.process.stdout.close()

    def stderr(self):
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def doc_url(node, doc_id):
    """The node URL of a document (ids may hold Chinese and '/', so quote everything)."""
    return f"{node.db_url}/{quote(doc_id, safe='')}"


def node_get(http, node, doc_id, **params):
    """GET a document from the node; asserts 200 and returns the body."""
    response = http.get(doc_url(node, doc_id), params=params)
    assert response.status_code == 200, f"GET {doc_id}: {response.status_code} {response.text}"
    return response.json()


def node_put(http, node, doc):
    """PUT a document on the node; returns its new rev."""
    response = http.put(doc_url(node, doc["_id"]), json=doc)
    assert response.status_code in (201, 202), f"PUT {doc['_id']}: {response.text}"
    return response.json()["rev"]


def node_bulk(http, node, docs, new_edits=True):
    """POST _bulk_docs on the node; asserts no document failed."""
    body = {"docs": docs}
    if not new_edits:
        body["new_edits"] = False
    response = http.post(f"{node.db_url}/_bulk_docs", json=body)
    assert response.status_code == 201, f"_bulk_docs: {response.status_code} {response.text}"
    result = response.json()
    assert not [row for row in result if "error" in row], result
    return result


def node_docs(http, node, **params):
    """Every live document on the node, ``{id: doc}``, via _all_docs?include_docs=true."""
    response = http.get(f"{node.db_url}/_all_docs",
                        params={"include_docs": "true", **params})
    assert response.status_code == 200, response.text
    return {row["id"]: row["doc"] for row in response.json()["rows"]}


def node_changes(http, node, **params):
    """The node's _changes results."""
    response = http.get(f"{node.db_url}/_changes", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def generated(prefix, count, start=0, **extra):
    """A pouch.js ``generate`` spec (ids prefix + 5 digits, member ``n``)."""
    return {"prefix": prefix, "count": count, "start": start, **extra}


def gen_ids(prefix, count, start=0):
    return [f"{prefix}{i:05d}" for i in range(start, start + count)]


def couch_winner(leaves):
    """CouchDB's winning rev among live leaves: the longest branch, then the highest id."""
    return max(leaves, key=lambda rev: (int(rev.split("-", 1)[0]), rev.split("-", 1)[1]))


def assert_replicated(result, written=None, read=None):
    """A finished replication that wrote ``written`` docs and reported no error."""
    assert result["status"] == "complete", result
    assert result["errors"] == [] and result["doc_write_failures"] == 0, result
    if written is not None:
        assert result["docs_written"] == written, result
    if read is not None:
        assert result["docs_read"] == read, result


def test_push(node, http, tmp_path):
    """Docs written in PouchDB arrive on the node with the same ids, bodies and revs."""
    named = pouch(node, tmp_path, [
        {"op": "bulk", "generate": generated("户籍-", 20, body={"村": "赤坑村"})},
        {"op": "put", "doc": {"_id": "事项-养老金-001", "名称": "城乡居民养老保险待遇申领",
                              "时限": {"法定": 20, "承诺": 5}}},
        {"op": "replicate", "direction": "push", "name": "push"},
        {"op": "docs", "name": "local"},
    ])
    assert_replicated(named["push"], written=21, read=21)
    local = named["local"]
    assert len(local) == 21
    assert node_docs(http, node) == local


def test_pull(node, http, tmp_path):
    """Docs written on the node over HTTP arrive in PouchDB unchanged."""
    node_bulk(http, node, [{"_id": f"材料-{i:03d}", "名称": f"身份证复印件 {i}", "份数": i}
                           for i in range(25)])
    named = pouch(node, tmp_path, [
        {"op": "replicate", "direction": "pull", "name": "pull"},
        {"op": "docs", "name": "local"},
    ])
    assert_replicated(named["pull"], written=25, read=25)
    assert named["local"] == node_docs(http, node)
    assert len(named["local"]) == 25


def test_updates_both_ways(node, http, tmp_path):
    """An edit on either side replaces the body on the other, with the same new rev."""
    node_bulk(http, node, [{"_id": f"办件-{i}", "状态": "受理"} for i in range(3)])
    named = pouch(node, tmp_path, [
        {"op": "replicate", "direction": "pull", "name": "pull0"},
        {"op": "update", "id": "办件-0", "set": {"状态": "补正"}, "name": "local_edit"},
        {"op": "update", "db": "remote", "id": "办件-1", "set": {"状态": "办结"},
         "name": "remote_edit"},
        {"op": "replicate", "direction": "push", "name": "push"},
        {"op": "replicate", "direction": "pull", "name": "pull"},
        {"op": "docs", "name": "local"},
    ])
    assert_replicated(named["push"], written=1)
    assert_replicated(named["pull"], written=1)
    local = named["local"]
    on_node = node_docs(http, node)
    assert local == on_node
    assert on_node["办件-0"]["状态"] == "补正"
    assert on_node["办件-0"]["_rev"] == named["local_edit"]["rev"]
    assert local["办件-1"]["状态"] == "办结"
    assert local["办件-1"]["_rev"] == named["remote_edit"]["rev"]
    assert local["办件-2"]["_rev"].startswith("1-")


def test_deletes_both_ways(node, http, tmp_path):
    """Deletions travel as tombstones in both directions and show up in _changes."""
    # Deleted on the node over HTTP before PouchDB ever saw it: the tombstone still comes.
    rev = node_put(http, node, {"_id": "撤回-1", "原因": "申请人撤回"})
    response = http.delete(doc_url(node, "撤回-1"), params={"rev": rev})
    assert response.status_code == 200, response.text
    node_tombstone = response.json()["rev"]
    named = pouch(node, tmp_path, [
        {"op": "bulk", "generate": generated("删除-", 4)},
        {"op": "replicate", "direction": "push", "name": "push0"},
        {"op": "delete", "id": "删除-00000", "name": "local_delete"},
        {"op": "delete", "db": "remote", "id": "删除-00001", "name": "remote_delete"},
        {"op": "replicate", "direction": "push", "name": "push"},
        {"op": "replicate", "direction": "pull", "name": "pull"},
        {"op": "get_many", "ids": ["删除-00000", "删除-00001", "删除-00002", "撤回-1"],
         "name": "gets"},
        {"op": "get", "id": "撤回-1", "options": {"rev": node_tombstone}, "name": "tomb"},
        {"op": "changes", "options": {"since": 0}, "name": "changes"},
    ])
    assert_replicated(named["push0"], written=4)
    assert_replicated(named["push"], written=1)
    gets = named["gets"]
    for doc_id in ("删除-00000", "删除-00001", "撤回-1"):
        assert gets[doc_id]["error"]["status"] == 404, gets[doc_id]
    assert gets["删除-00002"]["_id"] == "删除-00002"
    assert named["tomb"]["_deleted"] is True
    local_deleted = {row["id"]: row["changes"][0]["rev"]
                     for row in named["changes"]["results"] if row.get("deleted")}
    assert local_deleted == {"删除-00000": named["local_delete"]["rev"],
                             "删除-00001": named["remote_delete"]["rev"],
                             "撤回-1": node_tombstone}

    # The node: the PouchDB deletion is a tombstone with PouchDB's rev, in _changes too.
    response = http.get(doc_url(node, "删除-00000"))
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"
    tomb = node_get(http, node, "删除-00000", rev=named["local_delete"]["rev"])
    assert tomb["_deleted"] is True
    node_deleted = {row["id"]: row["changes"][0]["rev"]
                    for row in node_changes(http, node)["results"] if row.get("deleted")}
    assert node_deleted == local_deleted
    assert set(node_docs(http, node)) == {"删除-00002", "删除-00003"}


def without_conflicts(doc):
    return {key: value for key, value in doc.items() if key != "_conflicts"}


def test_conflicts_agree_on_both_sides(node, http, tmp_path):
    """Concurrent edits and new_edits:false branches: both sides pick the same winner."""
    base_rev = node_put(http, node, {"_id": "冲突-甲", "联系电话": "0660-0000000"})
    # 乙: one generation on each side, written with new_edits:false (replicator-style).
    node_bulk(http, node, [{"_id": "冲突-乙", "_rev": "1-" + "b" * 32, "来源": "县"}],
              new_edits=False)
    # 丙: a longer branch on the node must beat a higher id on a shorter local branch.
    node_bulk(http, node, [{"_id": "冲突-丙", "_rev": "2-" + "1" * 32, "来源": "县",
                            "_revisions": {"start": 2, "ids": ["1" * 32, "0" * 32]}}],
              new_edits=False)
    ids = ["冲突-甲", "冲突-乙", "冲突-丙"]
    named = pouch(node, tmp_path, [
        {"op": "bulk", "new_edits": False,
         "docs": [{"_id": "冲突-乙", "_rev": "1-" + "a" * 32, "来源": "村"},
                  {"_id": "冲突-丙", "_rev": "1-" + "f" * 32, "来源": "村"}]},
        {"op": "replicate", "direction": "pull", "name": "pull0"},
        {"op": "update", "id": "冲突-甲", "set": {"联系电话": "13800000001"},
         "name": "local_edit"},
        {"op": "update", "db": "remote", "id": "冲突-甲", "set": {"联系电话": "13900000002"},
         "name": "remote_edit"},
        {"op": "replicate", "direction": "push", "name": "push"},
        {"op": "replicate", "direction": "pull", "name": "pull"},
        {"op": "get_many", "ids": ids, "options": {"conflicts": True}, "name": "local"},
        # Once in agreement, another round in each direction has nothing to write.
        {"op": "replicate", "direction": "push", "name": "push_again"},
        {"op": "replicate", "direction": "pull", "name": "pull_again"},
    ])
    assert_replicated(named["push_again"], written=0)
    assert_replicated(named["pull_again"], written=0)
    leaves = {
        "冲突-甲": {named["local_edit"]["rev"], named["remote_edit"]["rev"]},
        "冲突-乙": {"1-" + "a" * 32, "1-" + "b" * 32},
        "冲突-丙": {"1-" + "f" * 32, "2-" + "1" * 32},
    }
    assert named["local_edit"]["rev"].startswith("2-") and base_rev.startswith("1-")
    for doc_id in ids:
        local = named["local"][doc_id]
        remote = node_get(http, node, doc_id, conflicts="true")
        winner = couch_winner(leaves[doc_id])
        assert local["_rev"] == remote["_rev"] == winner, (doc_id, local, remote)
        # The order of _conflicts is not part of the protocol; compare them as sets.
        assert sorted(local.get("_conflicts", [])) == sorted(remote.get("_conflicts", [])) \
            == sorted(leaves[doc_id] - {winner}), (doc_id, local, remote)
        assert without_conflicts(local) == without_conflicts(remote), (doc_id, local, remote)
    assert named["local"]["冲突-丙"]["来源"] == "县"


def test_conflict_resolution_replicates(node, http, tmp_path):
    """Removing the losing rev in PouchDB clears the conflict on the node as well."""
    node_bulk(http, node, [{"_id": "冲突-丁", "_rev": "1-" + "c" * 32, "v": "县"}],
              new_edits=False)
    loser = "1-" + "c" * 32
    named = pouch(node, tmp_path, [
        {"op": "bulk", "new_edits": False,
         "docs": [{"_id": "冲突-丁", "_rev": "1-" + "d" * 32, "v": "村"}]},
        {"op": "replicate", "direction": "pull", "name": "pull0"},
        {"op": "remove", "id": "冲突-丁", "rev": loser, "name": "resolve"},
        {"op": "replicate", "direction": "push", "name": "push"},
        {"op": "get", "id": "冲突-丁", "options": {"conflicts": True}, "name": "local"},
    ])
    # The count depends on how PouchDB batches the two leaves; what matters is the result.
    assert_replicated(named["push"])
    remote = node_get(http, node, "冲突-丁", conflicts="true")
    assert "_conflicts" not in remote and "_conflicts" not in named["local"]
    assert remote == named["local"] and remote["_rev"] == "1-" + "d" * 32


def test_incremental_push_uses_checkpoint(node, http, tmp_path):
    """A second push moves only the new changes and resumes from the _local checkpoint."""
    named = pouch(node, tmp_path, [
        {"op": "bulk", "generate": generated("登记-", 20)},
        {"op": "replicate", "direction": "push", "name": "first"},
        {"op": "bulk", "generate": generated("登记-", 5, start=20)},
        {"op": "update", "id": "登记-00000", "set": {"复核": True}},
        {"op": "update", "id": "登记-00001", "set": {"复核": True}},
        {"op": "replicate", "direction": "push", "name": "second"},
        {"op": "replicate", "direction": "push", "name": "third"},
        {"op": "replication_id", "direction": "push", "name": "rep"},
        {"op": "docs", "name": "local"},
    ])
    assert_replicated(named["first"], written=20, read=20)
    assert_replicated(named["second"], written=7, read=7)
    assert_replicated(named["third"], written=0, read=0)
    assert node_docs(http, node) == named["local"]
    checkpoint = node_get(http, node, named["rep"]["id"])
    assert checkpoint["last_seq"] == named["third"]["last_seq"], checkpoint
    assert checkpoint["session_id"] and checkpoint["history"], checkpoint


def test_incremental_pull_uses_checkpoint(node, http, tmp_path):
    """A second pull reads only what changed on the node since the checkpoint."""
    node_bulk(http, node, [{"_id": f"评价-{i:02d}", "评价": "满意"} for i in range(15)])
    named = pouch(node, tmp_path, [
        {"op": "replicate", "direction": "pull", "name": "first"},
        {"op": "bulk", "db": "remote",
         "docs": [{"_id": f"评价-{i:02d}", "评价": "基本满意"} for i in range(15, 19)]},
        {"op": "update", "db": "remote", "id": "评价-00", "set": {"评价": "不满意"}},
        {"op": "replicate", "direction": "pull", "name": "second"},
        {"op": "replicate", "direction": "pull", "name": "third"},
        {"op": "replication_id", "direction": "pull", "name": "rep"},
        {"op": "docs", "name": "local"},
    ])
    assert_replicated(named["first"], written=15, read=15)
    assert_replicated(named["second"], written=5, read=5)
    assert_replicated(named["third"], written=0, read=0)
    assert named["local"] == node_docs(http, node)
    # PouchDB checkpoints a pull on the source too: that _local doc lives on the node.
    checkpoint = node_get(http, node, named["rep"]["id"])
    assert checkpoint["last_seq"] == named["third"]["last_seq"], checkpoint
    # ``since`` is exclusive: the changes after the first pull's last_seq are the 5 new ones.
    since_first = node_changes(http, node, since=named["first"]["last_seq"])
    assert sorted(row["id"] for row in since_first["results"]) == \
        ["评价-00", "评价-15", "评价-16", "评价-17", "评价-18"]


@pytest.mark.parametrize("checkpoint, on_node", [(False, False), ("source", False),
                                                  ("target", True)])
def test_push_checkpoint_option(node, http, tmp_path, checkpoint, on_node):
    """PouchDB's ``checkpoint`` option decides whether the node (the target) gets a _local
    doc; with none, a repeated push starts over yet writes nothing (revs_diff says so)."""
    options = {"checkpoint": checkpoint}
    named = pouch(node, tmp_path, [
        {"op": "bulk", "generate": generated("选项-", 8)},
        {"op": "replicate", "direction": "push", "options": options, "name": "first"},
        {"op": "replicate", "direction": "push", "options": options, "name": "second"},
        {"op": "replication_id", "direction": "push", "options": options, "name": "rep"},
    ])
    assert_replicated(named["first"], written=8)
    assert_replicated(named["second"], written=0, read=0)
    response = http.get(doc_url(node, named["rep"]["id"]))
    assert response.status_code == (200 if on_node else 404), response.text
    if on_node:
        assert response.json()["last_seq"] == named["second"]["last_seq"]
    assert len(node_docs(http, node)) == 8


def assert_once_each(docs, ids):
    """Exactly ``ids`` are present, each at its first revision and without conflicts."""
    assert sorted(docs) == sorted(ids)
    for doc_id, doc in docs.items():
        assert doc["_rev"].startswith("1-"), doc
        assert "_conflicts" not in doc, doc


def test_interrupted_push_resumes(node, http, tmp_path):
    """A push cancelled after a few batches resumes: the rest only, nothing duplicated."""
    named = pouch(node, tmp_path, [
        {"op": "bulk", "generate": generated("断点-", 60)},
        {"op": "replicate", "direction": "push", "options": {"batch_size": 5},
         "cancel_after_written": 20, "name": "cut"},
        {"op": "replicate", "direction": "push", "options": {"batch_size": 5},
         "name": "resume"},
        {"op": "docs", "name": "local"},
    ])
    cut, resume = named["cut"], named["resume"]
    assert cut["status"] == "cancelled" and 20 <= cut["docs_written"] < 60, cut
    assert_replicated(resume, written=60 - cut["docs_written"])
    on_node = node_docs(http, node, conflicts="true")
    assert_once_each(on_node, gen_ids("断点-", 60))
    assert on_node == named["local"]
    changes = node_changes(http, node)["results"]
    assert sorted(row["id"] for row in changes) == gen_ids("断点-", 60)
    assert http.get(node.db_url).json()["doc_count"] == 60


def test_interrupted_pull_resumes(node, http, tmp_path):
    """A pull cancelled after a few batches resumes: the rest only, nothing duplicated."""
    node_bulk(http, node, [{"_id": i, "n": n} for n, i in enumerate(gen_ids("断点-", 60))])
    named = pouch(node, tmp_path, [
        {"op": "replicate", "direction": "pull", "options": {"batch_size": 5},
         "cancel_after_written": 20, "name": "cut"},
        {"op": "replicate", "direction": "pull", "options": {"batch_size": 5},
         "name": "resume"},
        {"op": "docs", "options": {"conflicts": True}, "name": "local"},
    ])
    cut, resume = named["cut"], named["resume"]
    assert cut["status"] == "cancelled" and 20 <= cut["docs_written"] < 60, cut
    assert_replicated(resume, written=60 - cut["docs_written"])
    local = named["local"]
    assert_once_each(local, gen_ids("断点-", 60))
    assert local == node_docs(http, node)


def test_push_killed_midway_then_repeated(node, http, tmp_path):
    """The pushing process is SIGKILLed mid-replication; a new one completes the rest.

    The second process builds the same docs again; PouchDB's revs are deterministic, so
    they are the same revisions and the node must not duplicate or branch any of them.
    """
    spec = generated("崩溃-", 200, pad=2000, pad_pattern="补正材料")
    script = Script(node, tmp_path, [
        {"op": "bulk", "generate": spec, "summary": True},
        {"op": "replicate", "direction": "push", "options": {"batch_size": 10},
         "hang_after_written": 30},
    ])
    try:
        line = script.next_line()
        assert line and line.get("event") == "hang", (line, script.stderr())
    finally:
        script.kill()
    survived = node_docs(http, node)
    assert len(survived) >= line["docs_written"], "docs the node acknowledged were lost"
    named = pouch(node, tmp_path, [
        {"op": "bulk", "generate": spec, "summary": True},
        {"op": "replicate", "direction": "push", "options": {"batch_size": 10},
         "name": "again"},
        {"op": "docs", "name": "local"},
    ])
    assert_replicated(named["again"], written=200 - len(survived))
    on_node = node_docs(http, node, conflicts="true")
    assert_once_each(on_node, gen_ids("崩溃-", 200))
    assert on_node == named["local"]


BIG_PATTERN = "城乡居民基本养老保险abcdefghij"


def big_text(size):
    """The same text pouch.js builds for fill {"pattern": BIG_PATTERN, "size": size}."""
    return (BIG_PATTERN * (size // len(BIG_PATTERN) + 1))[:size]


def test_one_megabyte_document(node, http, tmp_path):
    """A ~1 MB document (mostly Chinese) survives a push and a pull into a fresh PouchDB."""
    size = 500_000  # characters; about 1.1 MB of UTF-8
    named = pouch(node, tmp_path, [
        {"op": "put", "doc": {"_id": "附件-扫描件-001", "类型": "扫描件"},
         "fill": {"field": "内容", "pattern": BIG_PATTERN, "size": size}, "name": "put"},
        {"op": "replicate", "direction": "push", "name": "push"},
    ])
    assert_replicated(named["push"], written=1)
    on_node = node_get(http, node, "附件-扫描件-001")
    assert len(json.dumps(on_node, ensure_ascii=False).encode()) > 1_000_000
    assert on_node["内容"] == big_text(size)
    assert on_node["_rev"] == named["put"]["rev"]

    named = pouch(node, tmp_path, [
        {"op": "replicate", "direction": "pull", "name": "pull"},
        {"op": "get", "id": "附件-扫描件-001", "name": "doc"},
    ])
    assert_replicated(named["pull"], written=1)
    assert named["doc"] == on_node


def test_chinese_ids_and_bodies(node, http, tmp_path):
    """Chinese ids (and a character outside the BMP) round-trip through both directions."""
    from_node = {"_id": "事项-养老金-001", "名称": "养老金领取资格认证",
                 "地址": "海丰县附城镇𠀾村", "材料": [{"名称": "居民身份证", "份数": 1}]}
    node_rev = node_put(http, node, from_node)
    from_pouch = {"_id": "办件-441521-20240301-0001", "申请人": "陈大文",
                  "事项": "事项-养老金-001", "备注": "一次性告知：需补正户口簿 📄"}
    named = pouch(node, tmp_path, [
        {"op": "put", "doc": from_pouch, "name": "put"},
        {"op": "replicate", "direction": "pull", "name": "pull"},
        {"op": "replicate", "direction": "push", "name": "push"},
        {"op": "get", "id": "事项-养老金-001", "name": "pulled"},
    ])
    assert_replicated(named["pull"], written=1)
    assert_replicated(named["push"], written=1)
    assert named["pulled"] == {**from_node, "_rev": node_rev}
    assert node_get(http, node, from_pouch["_id"]) == {**from_pouch,
                                                         "_rev": named["put"]["rev"]}
    assert sorted(node_docs(http, node)) == sorted([from_node["_id"], from_pouch["_id"]])


def test_doc_ids_pull(node, http, tmp_path):
    """A doc_ids pull brings exactly the named documents and nothing else."""
    node_bulk(http, node, [{"_id": f"事项-{i:03d}", "序号": i} for i in range(12)]
              + [{"_id": "事项-养老金-001", "序号": 99}])
    wanted = ["事项-003", "事项-007", "事项-养老金-001"]
    named = pouch(node, tmp_path, [
        {"op": "replicate", "direction": "pull", "options": {"doc_ids": wanted},
         "name": "pull"},
        {"op": "docs", "name": "local"},
    ])
    assert_replicated(named["pull"], written=3, read=3)
    local = named["local"]
    assert sorted(local) == sorted(wanted)
    on_node = node_docs(http, node)
    assert local == {doc_id: on_node[doc_id] for doc_id in wanted}


def test_live_pull_delivers_new_writes(node, http, tmp_path):
    """A live (longpoll) pull picks up a doc written on the node while it runs."""
    node_put(http, node, {"_id": "通知-000", "内容": "开始"})
    script = Script(node, tmp_path, [
        {"op": "live", "direction": "pull", "ready_signal": "caught-up",
         "until_ids": ["通知-001", "通知-002"], "name": "live"},
        {"op": "get_many", "ids": ["通知-000", "通知-001", "通知-002"], "name": "docs"},
    ])
    try:
        ready = script.next_line()
        assert ready == {"event": "ready", "signal": "caught-up"}, (ready, script.stderr())
        # Written after the replication caught up: only the live feed can deliver these.
        revs = {"通知-001": node_put(http, node, {"_id": "通知-001", "内容": "补正材料已收到"})}
        revs["通知-002"] = node_put(http, node, {"_id": "通知-002", "内容": "已办结，请取件"})
        out = script.next_line()
        script.process.wait(timeout=LINE_WAIT)
    finally:
        script.kill()
    assert out and out.get("ok"), (out, node.log()[-4000:])
    live, docs = out["named"]["live"], out["named"]["docs"]
    assert live["status"] == "cancelled" and live["errors"] == [], live
    assert docs["通知-001"] == {"_id": "通知-001", "内容": "补正材料已收到",
                               "_rev": revs["通知-001"]}
    assert docs["通知-002"]["_rev"] == revs["通知-002"]
    assert docs["通知-000"]["内容"] == "开始"


def test_wrong_credentials_are_refused(node, http, tmp_path):
    """PouchDB with a wrong password gets 401 and writes nothing to the node."""
    bad = node.authed_db_url.replace(":sync-secret-123@", ":wrong-password@")
    named = pouch(node, tmp_path, [
        {"op": "put", "doc": {"_id": "越权-1"}},
        {"op": "replicate", "direction": "push", "expect_error": True, "name": "push"},
    ], remote=bad)
    assert named["push"]["error"].get("status") == 401, named["push"]
    assert node_docs(http, node) == {}


def test_a_scoped_account_gives_pouchdb_exactly_its_station_s_scope(node, http, tmp_path):
    """A village tablet's PouchDB, through an account scoped to that village, pulls the
    catalog and its own cases only, and cannot push what the village may not write."""
    from shared import casedocs
    from tests.nodeproc import tongban

    own, other = "441521101001", "441521101002"
    stamp = "001795000000000-00000"
    docs = [{"_id": "item:demo-001", "type": "item", "title": "高龄津贴申领"}]
    for village, seq in ((own, 1), (other, 2)):
        number = casedocs.case_number(village, datetime.date(2026, 11, 22), seq)
        docs.append(casedocs.case_header(number, "item:demo-001", village, "441521101",
                                         f"{seq:064x}", stamp))
        docs.append(casedocs.case_event(number, "accepted", village, stamp))
    node_bulk(http, node, docs)
    tongban("user", "add", node.node_dir, "tablet", "--role", "replicator", "--scope", own,
            input_text="tablet-secret-1\n")
    host = node.url.split("://", 1)[1]
    own_number = casedocs.case_number(own, datetime.date(2026, 11, 22), 1)
    named = pouch(node, tmp_path, [
        {"op": "replicate", "direction": "pull", "name": "pull"},
        {"op": "docs", "name": "local"},
        {"op": "bulk", "db": "local", "docs": [
            casedocs.case_event(own_number, "supplemented", own, "001795000000001-00000"),
            {"_id": "item:forged", "type": "item", "title": "伪造事项"}]},
        {"op": "replicate", "direction": "push", "name": "push"},
    ], remote=f"http://tablet:tablet-secret-1@{host}/db")
    assert set(named["local"]) == {"item:demo-001", f"case:{own_number}",
                                   f"event:{own_number}:{stamp}:{own}"}
    assert named["push"]["docs_written"] == 1 and named["push"]["doc_write_failures"] == 1
    held = node_docs(http, node)
    assert f"event:{own_number}:001795000000001-00000:{own}" in held
    assert "item:forged" not in held
