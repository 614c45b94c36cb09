"""``/healthz`` and ``/metrics`` (issue 14, item 6), read the way a monitoring script and
a Prometheus scraper read them: from real ``tongban serve`` processes over HTTP; the
access rule of ``/metrics`` through the test client, which can pose as another address.
"""

import json
import math
import re
import subprocess
import sys

import pytest
import requests

from shared import syncstatus
from tests import nodeproc
from tests.conftest import add_account, make_app, staff_login
from tests.nodeproc import eventually
from tests.test_durability import accept_case, township_dir

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
HOLD_LOCK = ("import sqlite3, sys\n"
             "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "conn.execute('BEGIN IMMEDIATE')\n"
             "print('locked', flush=True)\n"
             "sys.stdin.read()\n")


def parse_metrics(text):
    """``{(name, ((label, value), ...)): float}`` of a text exposition; checks that every
    sample follows its family's HELP and TYPE lines and that every line is well formed."""
    samples, typed, helped = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name in helped, f"TYPE before HELP: {line}"
            typed[name] = kind
            continue
        assert line and not line.startswith("#"), f"stray line: {line!r}"
        match = SAMPLE.match(line)
        assert match, f"not a sample: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) \
            if re.sub(r"_(bucket|sum|count)$", "", name) in typed else name
        assert family in typed, f"sample without TYPE: {line}"
        assert name.startswith("tongban_"), name
        pairs = tuple(LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value.replace("+Inf", "inf"))
    return samples, typed


def value(samples, name, **labels):
    """The sample ``name`` with exactly ``labels`` (None when absent)."""
    for (found, pairs), number in samples.items():
        if found == name and dict(pairs) == {k: str(v) for k, v in labels.items()}:
            return number
    return None


def scrape(node):
    answer = requests.get(f"{node.url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(answer.text)


def health(node):
    answer = requests.get(f"{node.url}/healthz", timeout=30)
    return answer.status_code, answer.json()


def health_when(node, wanted, status=200):
    """The /healthz report when it answers ``status`` and ``wanted(report)`` holds."""
    code, report = health(node)
    return report if code == status and wanted(report) else None


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    node_dir = nodeproc.make_node_dir(tmp_path_factory.mktemp("health") / "county")
    # A short wait for the write lock, so a held lock answers quickly.
    nodeproc.update_config(node_dir, HEALTH_WRITE_TIMEOUT=0.5)
    node = nodeproc.start_serve(node_dir)
    yield node
    node.stop()


def test_healthz_says_degraded_until_syncd_has_run_then_ok(county):
    status, report = health(county)
    assert status == 200
    assert set(report) == {"status", "checks"}
    assert set(report["checks"]) == {"store_writable", "syncd_heartbeat_age_seconds",
                                     "disk_free_bytes"}
    assert report["checks"]["store_writable"] == {"status": "ok", "value": True}
    assert report["checks"]["syncd_heartbeat_age_seconds"]["value"] is None
    assert report["checks"]["syncd_heartbeat_age_seconds"]["status"] == "degraded"
    assert report["checks"]["disk_free_bytes"]["value"] > 0
    assert report["status"] == "degraded"

    # A county has no parent: its syncd runs only the scheduled jobs, and still beats.
    syncd = nodeproc.start_syncd(county.node_dir)
    try:
        report = eventually(lambda: health_when(county, lambda r: r["status"] == "ok"),
                            "healthz ok once syncd runs", timeout=60)
    finally:
        syncd.stop()
    age = report["checks"]["syncd_heartbeat_age_seconds"]
    assert age["status"] == "ok" and 0 <= age["value"] <= syncstatus.STALE_AFTER


def test_healthz_fails_with_503_while_the_store_takes_no_write(county):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK,
                               str(county.node_dir / "store.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        report = eventually(lambda: health_when(county, lambda r: r["status"] == "fail",
                                                status=503),
                            "healthz fails while another process holds the write lock",
                            timeout=30)
        assert report["status"] == "fail"
        assert report["checks"]["store_writable"] == {"status": "fail", "value": False}
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    eventually(lambda: health(county)[0] == 200, "healthz back once the lock is gone",
               timeout=30)


def test_metrics_parse_and_count_requests_by_route_template(county):
    for _ in range(3):
        assert requests.get(f"{county.url}/catalog", timeout=10).status_code == 200
    for item in ("GD-A-1", "GD-B-2"):  # one route, whatever the item
        requests.get(f"{county.url}/catalog/item/{item}", timeout=10)
    requests.get(f"{county.url}/no/such/page/{'x' * 40}", timeout=10)
    samples, typed = scrape(county)
    assert typed["tongban_http_request_duration_seconds"] == "histogram"
    labels = {"route": "/catalog", "method": "GET"}
    count = value(samples, "tongban_http_request_duration_seconds_count", **labels)
    assert count >= 3
    bounds = sorted(float(dict(pairs)["le"].replace("+Inf", "inf"))
                    for (name, pairs), _ in samples.items()
                    if name == "tongban_http_request_duration_seconds_bucket"
                    and {k: v for k, v in pairs if k != "le"} == labels)
    assert len(bounds) >= 5 and math.isinf(bounds[-1])
    counts = [value(samples, "tongban_http_request_duration_seconds_bucket", **labels,
                    le="+Inf" if math.isinf(b) else repr(b)) for b in bounds]
    assert counts == sorted(counts) and counts[-1] == count  # cumulative, +Inf is all
    assert value(samples, "tongban_http_request_duration_seconds_sum", **labels) > 0
    assert value(samples, "tongban_http_request_duration_seconds_count",
                 route="/catalog/item/<item_id>", method="GET") == 2
    # A path of the client's choosing never becomes a series of its own.
    assert not any("x" * 40 in str(key) for key in samples)
    assert value(samples, "tongban_http_requests_total", route="unmatched", method="GET",
                 code=404) >= 1
    assert value(samples, "tongban_store_synchronous") == 2


def test_metrics_read_restarts_from_run_state(county):
    state_file = county.node_dir / "run-state.json"
    samples, typed = scrape(county)
    assert typed["tongban_restarts_total"] == "counter"
    assert value(samples, "tongban_restarts_total", child="serve") == 0
    assert value(samples, "tongban_restarts_total", child="syncd") == 0
    state_file.write_text(json.dumps({"state": "running", "children": {
        "serve": {"pid": 1, "restarts": 3}, "syncd": {"pid": 2, "restarts": 1}}}))
    try:
        samples, _ = scrape(county)
    finally:
        state_file.unlink()
    assert value(samples, "tongban_restarts_total", child="serve") == 3
    assert value(samples, "tongban_restarts_total", child="syncd") == 1


def test_the_open_case_count_follows_an_acceptance(tmp_path):
    node = nodeproc.start_serve(township_dir(tmp_path))
    try:
        samples, _ = scrape(node)
        before = value(samples, "tongban_cases_open", status="handling")
        assert before == 0
        assert value(samples, "tongban_catalog_verified") == 1
        assert accept_case(node).status_code == 302
        samples, _ = scrape(node)
        assert value(samples, "tongban_cases_open", status="handling") == before + 1
        # A township with a parent whose syncd never ran: the case waits for its upload.
        assert value(samples, "tongban_unsent_cases") == 1
        assert value(samples, "tongban_cases_carded", color="red") == 0
    finally:
        node.stop()


def test_sync_links_show_lag_and_waiting_documents(tmp_path):
    app = make_app(tmp_path)
    try:
        store = app.extensions["store"]
        for index in range(5):
            store.put({"_id": f"doc-{index}", "n": index})
        syncstatus.LinkStatusTable(store.db).save({
            "link": "parent", "peer": "http://township.example/db", "state": "backing_off",
            "updated": 0, "push_seq": 2, "pending_push": 3, "pending_pull": 7,
            "last_success": None})
        samples, _ = parse_metrics(app.test_client().get("/metrics").get_data(as_text=True))
    finally:
        app.extensions["store"].close()
    assert value(samples, "tongban_sync_lag_seqs", link="parent", direction="push") == 3
    assert value(samples, "tongban_sync_pending_documents", link="parent",
                 direction="pull") == 7
    assert value(samples, "tongban_sync_link_up", link="parent") == 0


def test_healthz_is_degraded_below_the_disk_threshold(tmp_path):
    app = make_app(tmp_path, HEALTH_DISK_FREE_MIN_BYTES=10 ** 18)
    try:
        answer = app.test_client().get("/healthz")
    finally:
        app.extensions["store"].close()
    assert answer.status_code == 200
    disk = answer.get_json()["checks"]["disk_free_bytes"]
    assert disk["status"] == "degraded" and disk["threshold"] == 10 ** 18


def test_metrics_only_for_loopback_or_staff(tmp_path):
    app = make_app(tmp_path)
    add_account(app, "clerk", "pw-clerk-123", roles=("clerk",))
    try:
        remote = app.test_client()
        remote.environ_base["REMOTE_ADDR"] = "192.0.2.7"
        refused = remote.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
        assert refused.status_code == 403
        assert "工作人员" in refused.get_json()["reason"]
        assert "tongban_" not in refused.get_data(as_text=True)
        # /healthz is for anyone, and says nothing but its checks.
        assert set(remote.get("/healthz").get_json()) == {"status", "checks"}

        local = app.test_client()
        local.environ_base["REMOTE_ADDR"] = "::1"
        assert local.get("/metrics").status_code == 200
        # Behind a reverse proxy on the same machine every request is "local": off.
        app.config["METRICS_FROM_LOOPBACK"] = False
        assert local.get("/metrics").status_code == 403
        app.config["METRICS_FROM_LOOPBACK"] = True

        staff = staff_login(app, "clerk", "pw-clerk-123")
        staff.environ_base["REMOTE_ADDR"] = "192.0.2.8"
        assert staff.get("/metrics").status_code == 200
    finally:
        app.extensions["store"].close()
