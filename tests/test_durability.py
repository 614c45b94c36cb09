"""A receipt means durable (issue 14, item 2): what a clerk has a receipt for survives.

A township runs as a real ``tongban serve`` process, enrolled the real way, the sample
catalog in force. A clerk accepts a case through the window; the moment the answer that
leads to the receipt arrives, serve is killed (``kill -9``); after a restart the case is
there, on its page and in the store. A power cut cannot be staged in a test, so the store
connections are checked to run with ``PRAGMA synchronous=FULL``, which is what makes a
commit survive one under WAL (docs/operations.md, "Durability").
"""

import re
import sqlite3
import threading

import pytest
import requests

from shared import config as cfg
from shared import db as dbmod
from shared.app import open_store
from shared.cases import idnumbers
from shared.cases.index import state_of
from shared.errors import ConfigurationError
from tests import nodeproc
from tests.nodeproc import tongban
from tests.test_calendar_warnings import publish_in_dir

COUNTY, TOWNSHIP = "441521", "441521101"
CLERK, PASSWORD = "clerk-t", "pw-clerk-2026"
CITIZEN = idnumbers.make_resident_id("441521", "19580716", 41)
#: A township item: materials 0 and 1 are brought (a scan for 0), the rest are shared.
LOW_INCOME = "GD-LS-04"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
#: ``PRAGMA synchronous`` answers a number: 2 is FULL.
FULL = 2


def township_dir(base):
    """A township node directory, enrolled at a real county, holding the county's signed
    catalog (copied as replication would), with a clerk account. No process left running."""
    county = nodeproc.start_node(base / "county", tier="county", code=COUNTY, name="海丰县")
    try:
        node_dir = nodeproc.enrol_node(county.node_dir, county.url, base / "township",
                                       "township", TOWNSHIP, name="海城镇")
    finally:
        county.stop()
    publish_in_dir(county.node_dir)
    source = open_store(cfg.load_config(county.node_dir))
    try:
        rows, _ = source.changes(0)
        docs = [source.get(row["id"], revs=True) for row in rows]
    finally:
        source.close()
    target = open_store(cfg.load_config(node_dir))
    try:
        target.bulk_docs(docs, new_edits=False)
    finally:
        target.close()
    tongban("user", "add", node_dir, CLERK, "--role", "clerk", "--full-name", "王小明",
            input_text=PASSWORD + "\n")
    return node_dir


def accept_case(node):
    """The clerk's complete acceptance at the window; returns the answer (not followed)."""
    browser = nodeproc.staff_session(node, CLERK, PASSWORD)
    page = browser.get(f"{node.url}/cases/window", params={"item": LOW_INCOME}, timeout=10)
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = {"csrf_token": token, "step": "decide", "item": LOW_INCOME, "applicant": CITIZEN,
            "name": "陈阿婆", "phone": "13800138000", "address": "海丰县海城镇某村 12 号",
            "m0_status": "provided", "m1_status": "provided", "decision": "accept"}
    return browser.post(f"{node.url}/cases/window", data=form, timeout=30,
                        files={"m0_files": ("申请书.pdf", PDF, "application/pdf")},
                        allow_redirects=False)


def held_state(node_dir, number):
    """The case's folded state in the node's store (None when it is not there)."""
    store = open_store(cfg.load_config(node_dir))
    try:
        return state_of(store.db, number)
    finally:
        store.close()


@pytest.fixture(scope="module")
def township(tmp_path_factory):
    return township_dir(tmp_path_factory.mktemp("durability"))


def test_a_case_with_a_receipt_survives_kill_9_of_serve(township):
    node = nodeproc.start_serve(township)
    try:
        answer = accept_case(node)
        # The answer that sends the clerk's browser to the receipt: serve dies at once.
        node.process.kill()
        node.process.wait(timeout=10)
    finally:
        node.stop(kill=True)
    assert answer.status_code == 302, answer.text
    match = re.search(r"/cases/([0-9]+-[0-9]{8}-[0-9]+)/receipt$", answer.headers["Location"])
    assert match, answer.headers["Location"]
    number = match.group(1)

    again = nodeproc.start_serve(township)
    try:
        browser = nodeproc.staff_session(again, CLERK, PASSWORD)
        receipt = browser.get(f"{again.url}/cases/{number}/receipt", timeout=10)
        assert receipt.status_code == 200
        assert number in receipt.text
        page = browser.get(f"{again.url}/cases/{number}", timeout=10)
        assert page.status_code == 200 and "陈阿婆" in page.text
    finally:
        again.stop()
    state = held_state(township, number)
    assert state is not None and state["status"] == "handling"


def test_the_serving_process_commits_with_synchronous_full(township):
    # Read from the running process itself: its own request connection says what it runs.
    node = nodeproc.start_serve(township)
    try:
        text = requests.get(f"{node.url}/metrics", timeout=10).text
    finally:
        node.stop()
    assert re.search(r"^tongban_store_synchronous 2$", text, re.MULTILINE), text


def test_every_store_connection_runs_with_synchronous_full(tmp_path):
    store = open_store(cfg.load_config(nodeproc.make_node_dir(tmp_path / "node")))
    try:
        assert store.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute_sql("PRAGMA synchronous").fetchone()[0] == FULL
        # peewee opens one connection per thread: each gets the pragmas.
        seen = []
        worker = threading.Thread(
            target=lambda: seen.append(store.db.execute_sql("PRAGMA synchronous").fetchone()[0]))
        worker.start()
        worker.join()
        assert seen == [FULL]
    finally:
        store.close()


def test_a_wrong_benchmark_setting_is_refused_before_the_store_opens(tmp_path, monkeypatch):
    monkeypatch.setenv(dbmod.SYNCHRONOUS_ENV, "off")
    with pytest.raises(ConfigurationError, match="normal, full"):
        dbmod.open_database(tmp_path / "store.sqlite")
    assert not (tmp_path / "store.sqlite").exists()
    monkeypatch.setenv(dbmod.SYNCHRONOUS_ENV, "normal")
    db = dbmod.open_database(tmp_path / "store.sqlite")
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1
    db.close()
    plain = sqlite3.connect(tmp_path / "store.sqlite")  # the setting is per connection
    assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plain.close()
