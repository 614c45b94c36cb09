"""Schema versions: a store made before versioning opens intact (a copy taken first), a
store from a newer release is refused untouched, a migration commits whole or not at all.

The old store is tests/fixtures/store-v1/, made by tests/fixtures/make_store_v1.py with
the release before versioning: a village's catalog, two cases, a checkpoint, audit entries.
"""

import hashlib
import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from shared import audit
from shared.cases.index import state_of
from shared.store import schema
from tests.casekit import VILLAGE_A
from tests.conftest import make_app
from tests.nodeproc import free_port, make_node_dir, tongban

FIXTURE = Path(__file__).parent / "fixtures" / "store-v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


def old_node(tmp_path):
    """A copy of the fixture's store (never the committed file) in a node directory."""
    node = tmp_path / "node"
    node.mkdir()
    for name in ("store.sqlite", "audit-head.json"):
        shutil.copyfile(FIXTURE / name, node / name)
    return node


def open_village(node):
    return make_app(node, TIER="village", NODE_CODE=VILLAGE_A)


def digest(directory):
    """``{name: sha256}`` of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def stamp(path, version):
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def columns(path, table):
    conn = sqlite3.connect(path)
    try:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    finally:
        conn.close()


def test_the_fixture_is_an_unversioned_store():
    # Read from the file's header (user_version: 4 bytes at offset 60), never opened:
    # opening it could leave -wal and -shm files beside the committed fixture.
    header = (FIXTURE / "store.sqlite").read_bytes()[:100]
    assert header.startswith(b"SQLite format 3\0")
    assert int.from_bytes(header[60:64], "big") == 0


def test_a_store_made_before_versioning_opens_with_everything_and_a_copy_first(tmp_path):
    node = old_node(tmp_path)
    app = open_village(node)
    store = app.extensions["store"]
    try:
        for doc_id, rev in EXPECTED["documents"].items():
            assert store.get(doc_id)["_rev"] == rev
        assert store.doc_count() == len(EXPECTED["documents"])
        assert store.update_seq() == EXPECTED["update_seq"]
        for number, status in EXPECTED["cases"].items():
            assert state_of(store.db, number)["status"] == status
        assert store.get_local("sync-checkpoint") == EXPECTED["local"]
        report = audit.verify(store.db, bytes.fromhex(EXPECTED["audit_key"]))
        assert report.ok, report.problems
        assert report.entries == EXPECTED["audit_entries"]
    finally:
        store.close()
    assert schema.version_of(node / "store.sqlite") == schema.SCHEMA_VERSION
    copies = list((node / "backups").glob("pre-upgrade-v0-*.sqlite"))
    assert len(copies) == 1
    # The copy is the store as it was: unversioned, every document at its revision.
    copy = sqlite3.connect(copies[0])
    assert copy.execute("PRAGMA user_version").fetchone()[0] == 0
    assert dict(copy.execute("SELECT id, rev FROM document")) == EXPECTED["documents"]
    copy.close()
    assert copies[0].stat().st_mode & 0o077 == 0
    # Opened again: current already, no second copy.
    open_village(node).extensions["store"].close()
    assert len(list((node / "backups").iterdir())) == 1


def test_a_new_store_carries_the_current_version_and_needs_no_copy(tmp_path):
    app = make_app(tmp_path)
    app.extensions["store"].close()
    assert schema.version_of(tmp_path / "store.sqlite") == schema.SCHEMA_VERSION
    assert not (tmp_path / "backups").exists()


def test_a_store_from_a_newer_release_is_refused_and_left_byte_identical(tmp_path):
    node = make_node_dir(tmp_path / "node")
    shutil.copyfile(FIXTURE / "store.sqlite", node / "store.sqlite")
    stamp(node / "store.sqlite", schema.SCHEMA_VERSION + 1)
    before = digest(node)
    result = tongban("serve", node, "--port", free_port(), check=False)
    assert result.returncode != 0
    assert (f"此数据库由更新版本的通办创建（版本 {schema.SCHEMA_VERSION + 1}），"
            "请升级通办后再启动") in result.stderr
    assert "newer tongban" in result.stderr
    assert "Traceback" not in result.stderr
    assert digest(node) == before


def test_a_file_that_is_no_store_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("CREATE TABLE something_else (x)")
    conn.close()
    with pytest.raises(schema.StoreUnusable, match="不是通办的数据库"):
        make_app(tmp_path)


def add_priority(conn):
    conn.execute("ALTER TABLE case_state ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")


def test_a_migration_step_runs_after_the_copy_and_the_version_follows(tmp_path, monkeypatch):
    node = old_node(tmp_path)
    open_village(node).extensions["store"].close()  # now version 1
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(schema.MIGRATIONS, 1, add_priority)
    store = open_village(node).extensions["store"]
    assert store.doc_count() == len(EXPECTED["documents"])
    store.close()
    assert "priority" in columns(node / "store.sqlite", "case_state")
    assert schema.version_of(node / "store.sqlite") == 2
    copy, = (node / "backups").glob("pre-upgrade-v1-*.sqlite")
    assert "priority" not in columns(copy, "case_state")


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    node = old_node(tmp_path)
    open_village(node).extensions["store"].close()
    conn = sqlite3.connect(node / "store.sqlite")
    rows_before = conn.execute("SELECT id, rev FROM document ORDER BY id").fetchall()
    conn.close()

    def half_then_fail(conn):
        add_priority(conn)
        conn.execute("DELETE FROM document")
        raise RuntimeError("step failed half-way")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(schema.MIGRATIONS, 1, half_then_fail)
    with pytest.raises(schema.UpgradeFailed, match="数据库升级失败（版本 1 → 2）"):
        open_village(node)
    assert schema.version_of(node / "store.sqlite") == 1
    assert "priority" not in columns(node / "store.sqlite", "case_state")
    conn = sqlite3.connect(node / "store.sqlite")
    assert conn.execute("SELECT id, rev FROM document ORDER BY id").fetchall() == rows_before
    conn.close()
    assert len(list((node / "backups").glob("pre-upgrade-v1-*.sqlite"))) == 1


def test_two_processes_opening_an_old_store_at_once_upgrade_it_once(tmp_path, monkeypatch):
    node = old_node(tmp_path)
    open_village(node).extensions["store"].close()
    runs = []

    def counted(conn):
        runs.append(1)
        add_priority(conn)

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(schema.MIGRATIONS, 1, counted)
    errors = []

    def prepare():
        try:
            schema.prepare(node / "store.sqlite")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and runs == [1]
    assert schema.version_of(node / "store.sqlite") == 2
    assert len(list((node / "backups").glob("pre-upgrade-v1-*.sqlite"))) == 1


def test_a_store_made_by_this_code_outside_a_node_is_current_too(stores, tmp_path):
    stores("plain").close()
    assert schema.version_of(tmp_path / "plain.sqlite") == schema.SCHEMA_VERSION
