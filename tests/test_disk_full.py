"""A full disk and a damaged store file: refused with a clear message, nothing half-written.

A full disk is SQLite's own: ``PRAGMA max_page_count`` on the store's connection makes
any write that needs another page fail with ``SQLITE_FULL``, exactly as a full disk does.
The Flask test client serves in the test's thread, so the pragma is on the connection
the request writes with. The last test does it for real: a ``tongban serve`` process
whose store sits on a small tmpfs filled to the last pages (or, where mounting is not
allowed, runs under ``prlimit --fsize``).
"""

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from shared import errors
from tests import casekit
from tests.casekit import VILLAGE_A
from tests.nodeproc import free_port, make_node_dir, tongban
from tests.test_case_pages import LOW_INCOME, decide, kit, login, text  # noqa: F401 - kit

FIXTURE_STORE = Path(__file__).parent / "fixtures" / "store-v1" / "store.sqlite"
BIG = "满" * 200_000  # a document far larger than any free page left


def fill_disk(store):
    """No page beyond those the store has now, for this thread's connection."""
    pages = store.db.execute_sql("PRAGMA page_count").fetchone()[0]
    store.db.execute_sql(f"PRAGMA max_page_count = {pages}")


def free_disk(store):
    store.db.execute_sql("PRAGMA max_page_count = 4294967294")


def snapshot(store):
    """What a half-written write would change: counts, sequence, every table's rows."""
    db = store.db
    tables = [row[0] for row in db.execute_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    counts = {t: db.execute_sql(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    info = store.info()
    return counts, info["doc_count"], info["update_seq"]


def test_db_write_on_a_full_disk_answers_couchdb_507_and_stores_nothing(app, client,
                                                                        auth_headers):
    store = app.extensions["store"]
    client.put("/db/before", json={"n": 1}, headers=auth_headers)
    before = snapshot(store)
    fill_disk(store)
    try:
        one = client.post("/db", json={"_id": "big", "text": BIG}, headers=auth_headers)
        bulk = client.post("/db/_bulk_docs", headers=auth_headers, json={
            "docs": [{"_id": f"doc-{i}", "text": BIG[:20_000]} for i in range(20)]})
        local = client.put("/db/_local/big", json={"text": BIG}, headers=auth_headers)
        after = snapshot(store)
    finally:
        free_disk(store)
    for response in (one, bulk, local):
        assert response.status_code == 507, response.get_data(as_text=True)
        assert response.get_json()["error"] == "insufficient_storage"
    assert after == before
    assert client.get("/db/big", headers=auth_headers).status_code == 404
    # Space again: the same write goes through.
    again = client.post("/db", json={"_id": "big", "text": BIG}, headers=auth_headers)
    assert again.status_code == 201


def test_the_store_raises_insufficient_storage_and_keeps_serving_reads(stores):
    store = stores("s")
    store.put({"_id": "kept", "n": 1})
    fill_disk(store)
    try:
        with pytest.raises(errors.InsufficientStorage):
            store.bulk_docs([{"_id": "big", "text": BIG}])
        assert store.get("kept")["n"] == 1
    finally:
        free_disk(store)


def test_the_window_says_the_disk_is_full_and_no_case_is_half_written(kit):  # noqa: F811
    # kit: the case pages' region, its village serving the window to its clerk.
    clerk = login(kit, VILLAGE_A, "clerk-a")
    store = kit.store(VILLAGE_A)
    before = snapshot(store)
    statuses = {0: "provided", 1: "provided"}
    files = {0: (casekit.PDF, "申请书.pdf")}
    fill_disk(store)
    try:
        response = decide(clerk, LOW_INCOME, "accept", statuses, files)
        after = snapshot(store)
    finally:
        free_disk(store)
    page = text(response)
    assert response.status_code == 507
    assert "磁盘已满，未能保存：" in page and "请联系管理员清理磁盘空间" in page
    assert "Traceback" not in page
    assert after == before  # no case, event, number or projection row
    # With space again the same acceptance gets the day's first number: none was used up.
    accepted = decide(clerk, LOW_INCOME, "accept", statuses, files)
    assert accepted.status_code == 302
    assert accepted.location.split("/")[2].endswith("-0001")


def corrupt(path):
    """Overwrite bytes inside the ``document`` table's root page (not the file header)."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'document'").fetchone()[0]
    conn.close()
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * page_size + 8)
        handle.write(b"\xff" * 64)


@pytest.fixture
def damaged_node(tmp_path):
    node = make_node_dir(tmp_path / "node")
    shutil.copyfile(FIXTURE_STORE, node / "store.sqlite")
    corrupt(node / "store.sqlite")
    return node


@pytest.mark.parametrize("command", [["serve", "--port"], ["syncd", "--once"], ["info"]])
def test_a_damaged_store_stops_the_command_with_how_to_restore(damaged_node, command):
    extra = [*command[1:], free_port()] if command[0] == "serve" else command[1:]
    result = tongban(command[0], damaged_node, *extra, check=False)
    assert result.returncode != 0
    assert "数据库文件已损坏" in result.stderr
    assert "tongban restore BACKUP DIR" in result.stderr
    assert "Traceback" not in result.stderr


# -- a real full disk under a real serve process ------------------------------------------


def _mount_small_disk(path, size="24m"):
    """A tmpfs of ``size`` at ``path``: a real filesystem that fills up. False when this
    machine does not let us mount (no CAP_SYS_ADMIN)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


def _fill(path, leave):
    """A filler file on ``path``'s filesystem that leaves about ``leave`` bytes free."""
    free = shutil.disk_usage(path).free
    filler = path / "filler"
    with open(filler, "wb") as out:
        out.truncate(0)
        chunk = b"\0" * (1 << 20)
        remaining = free - leave
        while remaining > 0:
            out.write(chunk[:min(len(chunk), remaining)])
            remaining -= len(chunk)
    return filler


#: ~90 KB: below waitress's in-memory request buffer, so only the store writes to disk.
MEDIUM = "满" * 30_000


def test_a_full_disk_under_a_real_serve_refuses_the_write_and_keeps_serving(tmp_path):
    from tests import nodeproc

    node_dir = tmp_path / "county"
    make_node_dir(node_dir, tier="county", code="441521", name="测试县")
    disk = tmp_path / "disk"
    mounted = _mount_small_disk(disk)
    try:
        if mounted:
            # The store on a data disk that is full but for a few pages: a real ENOSPC.
            shutil.move(node_dir / "store.sqlite", disk / "store.sqlite")
            nodeproc.update_config(node_dir, DB_PATH=str(disk / "store.sqlite"))
            filler = _fill(disk, leave=256 * 1024)
            wrapper = None
        else:
            # No mount allowed here: the OS refuses writes past a file size
            # (RLIMIT_FSIZE), a real write error all the same.
            filler = None
            limit = (node_dir / "store.sqlite").stat().st_size + 300_000 + 123
            wrapper = ["prlimit", f"--fsize={limit}", "--"]
        node = nodeproc.start_serve(node_dir, wrapper=wrapper)
        try:
            session = node.session()
            before = session.get(node.db_url, timeout=10).json()
            answers = [session.post(node.db_url, json={"_id": f"doc{i}", "text": MEDIUM},
                                    timeout=30) for i in range(12)]
            refused = [a for a in answers if a.status_code >= 500]
            assert refused, [a.status_code for a in answers]
            expected = (507, "insufficient_storage") if mounted else (500, "storage_failed")
            assert (refused[0].status_code, refused[0].json()["error"]) == expected, \
                refused[0].text
            assert "nothing was stored" in refused[0].json()["reason"]
            # Nothing half-written: exactly the answered writes are there, and the node
            # still reads.
            stored = [a.json()["id"] for a in answers if a.status_code == 201]
            after = session.get(node.db_url, timeout=10).json()
            assert after["doc_count"] == before["doc_count"] + len(stored)
            for doc_id in stored:
                assert session.get(f"{node.db_url}/{doc_id}", timeout=10).status_code == 200
            assert "Traceback" not in node.log()
        finally:
            node.stop()
        if filler is not None:
            filler.unlink()  # space again: the same write goes through
            node = nodeproc.start_serve(node_dir)
            try:
                answer = node.session().post(node.db_url,
                                             json={"_id": "again", "text": MEDIUM}, timeout=30)
                assert answer.status_code == 201, answer.text
            finally:
                node.stop()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)
