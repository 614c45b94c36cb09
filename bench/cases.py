"""Case figures for docs/benchmarks.md (issue 5).

1. Folding a case with 50 events (the fold every queue, page and projection relies on).
2. The accept-case request at a village under 20 concurrent clerks: a real ``tongban serve``
   process, 20 threads each logged in as its own clerk, each POSTing complete acceptances to
   ``/cases/window`` (the clerk's form, CSRF and all) and following the redirect to the
   receipt, as a browser would.

Usage::

    python bench/cases.py [--events 50] [--clerks 20] [--requests 15]
"""

import argparse
import datetime
import logging
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replication import machine  # noqa: E402
from shared import config as cfg  # noqa: E402
from shared import identity  # noqa: E402
from shared.app import open_store  # noqa: E402
from shared.cases import fold as F  # noqa: E402
from shared.cases import idnumbers  # noqa: E402
from shared.catalog import publish  # noqa: E402
from shared.catalog.sample import sample_catalog  # noqa: E402
from shared.models import Account, hash_password  # noqa: E402
from tests import nodeproc  # noqa: E402

logger = logging.getLogger("bench.cases")
ITEM = "GD-LS-01"  # its one non-shared material is the form (index 2)
PDF = b"%PDF-1.4\n" + b"0" * 40_000 + b"\n%%EOF\n"  # a ~40 KB scan


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def bench_fold(events_count):
    """Median and p95 milliseconds to fold one case of ``events_count`` events."""
    from tests.casekit import Kit, applicant, approver, clerk, full_materials

    with tempfile.TemporaryDirectory() as tmp:
        kit = Kit(Path(tmp))
        try:
            desk = kit.desk("441521101001")
            number = desk.receive("GD-LS-02", applicant(),
                                  full_materials(desk, "GD-LS-02"), "accept", clerk())
            while len(desk.load(number)[1]) < events_count - 1:
                desk.complain(number, "进度查询")
                complaint = desk.state(number)["complaints"][-1]["id"]
                desk.handle_complaint(number, approver(), complaint, "replied", "已答复")
            desk.complain(number, "最后一条")
            header, events, _ = desk.load(number)
            count = len(events)
            timings = []
            for _ in range(200):
                started = time.perf_counter()
                state = F.fold(header, events)
                timings.append((time.perf_counter() - started) * 1000)
            assert len(state["timeline"]) >= count - 5
            # What a page does: read the documents from SQLite and fold.
            reads = []
            for _ in range(100):
                started = time.perf_counter()
                desk.load(number)
                reads.append((time.perf_counter() - started) * 1000)
        finally:
            kit.close()
    return {"events": count, "fold_median_ms": statistics.median(timings),
            "fold_p95_ms": percentile(timings, 0.95),
            "read_and_fold_median_ms": statistics.median(reads),
            "read_and_fold_p95_ms": percentile(reads, 0.95)}


def _village(base):
    """County, township and village, serving and syncing; the catalog in force."""
    county = nodeproc.start_node(base / "county", tier="county", code="441521", name="海丰县")
    store = open_store(cfg.load_config(county.node_dir))
    Account.create(username="editor", password_hash=hash_password("pw-editor"),
                   roles="county_admin", created="2026-11-22")
    Account.create(username="boss", password_hash=hash_password("pw-boss"),
                   roles="approver", created="2026-11-22")
    items, agencies = sample_catalog()
    publish.publish(store, items, agencies, proposer="editor", approver="boss",
                    private_key=identity.load_private_key(county.node_dir))
    store.close()
    township_dir = nodeproc.enrol_node(county.node_dir, county.url, base / "township",
                                       "township", "441521101", name="测试镇")
    nodeproc.update_config(township_dir, SYNC_INTERVAL=300)
    township = nodeproc.start_node(township_dir, create=False)
    village_dir = nodeproc.enrol_node(county.node_dir, township.url, base / "village",
                                      "village", "441521101001", name="测试村")
    nodeproc.update_config(village_dir, SYNC_INTERVAL=300)
    village = nodeproc.start_node(village_dir, create=False)
    procs = [nodeproc.start_syncd(township_dir), nodeproc.start_syncd(village_dir), village,
             township, county]
    nodeproc.eventually(
        lambda: requests.get(village.url + "/status/catalog", timeout=5).json()["release"] == 1,
        "the catalog at the village", timeout=120)
    return village, procs


def _login(url, username, password):
    session = requests.Session()
    page = session.get(f"{url}/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    answer = session.post(f"{url}/login", data={"username": username, "password": password,
                                                 "csrf_token": token}, timeout=10)
    answer.raise_for_status()
    return session


def _csrf(session, url):
    page = session.get(url, timeout=10).text
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def bench_accept(clerks, per_clerk, think=(1.0, 3.0), offline=False):
    """p50/p95 of complete acceptances at a village under ``clerks`` concurrent clerks.

    Each clerk waits ``think`` seconds (uniform) between acceptances; a real one takes
    minutes over a form, so this is a busy morning compressed. ``think=(0, 0)`` fires
    back to back: the node saturated, its throughput the figure. ``offline``: the township
    and county stop once the catalog is in force, so the village PC's own two processes
    (serve, and syncd retrying its parent) are all that run, as on a real village PC.
    """
    with tempfile.TemporaryDirectory() as tmp:
        village, procs = _village(Path(tmp))
        try:
            if offline:
                for proc in (procs[0], procs[3], procs[4]):  # township syncd, township, county
                    proc.stop()
            store = open_store(cfg.load_config(village.node_dir))
            for index in range(clerks):
                Account.create(username=f"clerk{index}", password_hash=hash_password("pw-c"),
                               roles="clerk", created="2026-11-22", full_name=f"窗口{index}")
            store.close()
            sessions = [_login(village.url, f"clerk{i}", "pw-c") for i in range(clerks)]
            tokens = [_csrf(s, f"{village.url}/cases/window") for s in sessions]
            timings, receipts, failures = [], [], []
            barrier = threading.Barrier(clerks)

            def work(index):
                session, token = sessions[index], tokens[index]
                rng = random.Random(index)
                barrier.wait()
                for request in range(per_clerk):
                    time.sleep(rng.uniform(*think))
                    number = idnumbers.make_resident_id(
                        "441521", datetime.date(1960, 1, 1 + index), 100 + request)
                    form = {"csrf_token": token, "step": "decide", "item": ITEM,
                            "applicant": number, "name": "测试申请人",
                            "phone": "13800138000", "address": "海丰县",
                            "m2_status": "provided", "delivery_station": "441521101001",
                            "decision": "accept"}
                    files = {"m2_files": ("form.pdf", PDF, "application/pdf")}
                    started = time.perf_counter()
                    answer = session.post(f"{village.url}/cases/window", data=form,
                                          files=files, timeout=60, allow_redirects=False)
                    elapsed = (time.perf_counter() - started) * 1000
                    target = answer.headers.get("Location", "")
                    if answer.status_code != 303 and answer.status_code != 302 or \
                            "/receipt" not in target:
                        failures.append((answer.status_code, target, answer.text[:300]))
                        continue
                    timings.append(elapsed)
                    # The clerk's browser then loads the receipt (timed apart).
                    started = time.perf_counter()
                    receipt = session.get(village.url + target if target.startswith("/")
                                          else target, timeout=60)
                    receipts.append((time.perf_counter() - started) * 1000)
                    if receipt.status_code != 200:
                        failures.append((receipt.status_code, target, receipt.text[:300]))
            threads = [threading.Thread(target=work, args=(i,)) for i in range(clerks)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
        finally:
            for proc in procs:
                proc.stop()
    if failures:
        logger.error("%d acceptances failed, first: %s", len(failures), failures[0])
    return {"clerks": clerks, "think_s": think, "offline": offline, "accepted": len(timings),
            "failed": len(failures), "per_s": len(timings) / wall,
            "p50_ms": statistics.median(timings) if timings else None,
            "p95_ms": percentile(timings, 0.95) if timings else None,
            "max_ms": max(timings) if timings else None,
            "receipt_p50_ms": statistics.median(receipts) if receipts else None,
            "receipt_p95_ms": percentile(receipts, 0.95) if receipts else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--clerks", type=int, default=20)
    parser.add_argument("--requests", type=int, default=15, help="acceptances per clerk")
    parser.add_argument("--think", type=float, nargs=2, default=(1.0, 3.0),
                        metavar=("MIN", "MAX"), help="seconds between a clerk's acceptances")
    parser.add_argument("--offline", action="store_true",
                        help="only the village's own processes run during the measurement")
    parser.add_argument("--skip-accept", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logger.info("machine: %s", machine())
    fold = bench_fold(args.events)
    logger.info("fold: %s", {k: round(v, 3) if isinstance(v, float) else v
                             for k, v in fold.items()})
    if not args.skip_accept:
        accept = bench_accept(args.clerks, args.requests, tuple(args.think), args.offline)
        logger.info("accept: %s", {k: round(v, 1) if isinstance(v, float) else v
                                   for k, v in accept.items()})


if __name__ == "__main__":
    main()
