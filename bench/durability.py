"""The cost of ``PRAGMA synchronous=FULL`` against NORMAL (WAL), both in one run.

    python bench/durability.py [--docs 5000] [--clerks 4] [--requests 25] [--commits 500]

For each setting (``TONGBAN_SQLITE_SYNCHRONOUS``, which every node process started here
inherits): single-row commits on a store file in this process; the replication benchmark
(bench/replication.py: PouchDB → node, node → PouchDB, node → node) at one size; and the
case-acceptance loop of bench/cases.py (clerks POSTing complete acceptances to a real
village ``tongban serve`` back to back, the township and county stopped). Printed as
Markdown with the command and the machine's size.
"""

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench.cases import bench_accept, percentile  # noqa: E402
from bench.replication import ROOT, machine  # noqa: E402
from shared import db as dbmod  # noqa: E402
from syncd.peers import HttpPeer  # noqa: E402
from syncd.replicator import replicate  # noqa: E402
from tests.nodeproc import PEERS_DIR, npm_ready, start_node  # noqa: E402

logger = logging.getLogger("bench.durability")


def bench_commits(count):
    """Milliseconds per single-row commit on a fresh store file (the pragmas in force)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        db = dbmod.open_database(Path(tmp) / "store.sqlite")
        db.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        mode = db.execute_sql("PRAGMA synchronous").fetchone()[0]
        timings = []
        for index in range(count):
            started = time.perf_counter()
            with db.atomic():
                db.execute_sql("INSERT INTO t (body) VALUES (?)", ("x" * 1000,))
            timings.append((time.perf_counter() - started) * 1000)
        db.close()
    return {"pragma": mode, "median_ms": statistics.median(timings),
            "p95_ms": percentile(timings, 0.95), "per_s": count / (sum(timings) / 1000)}


def _pouch(db_url, count):
    """bench/pouch_bench.js against ``db_url``: docs/s of the push and of the pull."""
    import subprocess

    env = {**os.environ, "NODE_PATH": str(PEERS_DIR / "node_modules")}
    result = subprocess.run(["node", str(ROOT / "bench" / "pouch_bench.js"), db_url, str(count)],
                            capture_output=True, text=True, env=env, timeout=3600, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    # The node holds its own registry entry (``node:<code>``, written by init) besides.
    if data["push"]["errors"] or data["push"]["docs_written"] != count or \
            data["pull"]["errors"] or data["pull"]["docs_written"] < count:
        raise RuntimeError(f"PouchDB round against {db_url} incomplete: {data}")
    return count / data["push"]["seconds"], count / data["pull"]["seconds"]


def measure(count, workdir):
    """bench/replication.py's node figures at one size: PouchDB → node, node → PouchDB,
    node → node (its own ``measure`` expects an empty node; ``init`` now writes one doc)."""
    source = start_node(workdir / "source", tier="county", code="441521")
    target = start_node(workdir / "target", tier="county", code="441521")
    try:
        push, pull = _pouch(source.authed_db_url, count)
        started = time.perf_counter()
        history = replicate(HttpPeer(source.db_url, auth=source.auth),
                            HttpPeer(target.db_url, auth=target.auth), batch_size=500)
        seconds = time.perf_counter() - started
        written = requests.get(target.db_url, auth=target.auth, timeout=30).json()["doc_count"]
        if written < count or history["doc_write_failures"]:
            raise RuntimeError(f"node → node incomplete: {written} of {count}, {history}")
    finally:
        target.stop()
        source.stop()
    return {"pouch_to_node": push, "node_to_pouch": pull, "node_to_node": count / seconds}


def run(setting, args):
    """Every figure with ``synchronous`` = ``setting``."""
    os.environ[dbmod.SYNCHRONOUS_ENV] = setting
    logger.info("synchronous=%s: commits", setting)
    result = {"setting": setting, "commits": bench_commits(args.commits)}
    logger.info("synchronous=%s: replication of %d docs", setting, args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        result["replication"] = measure(args.docs, Path(tmp))
    logger.info("synchronous=%s: %d clerks x %d acceptances", setting, args.clerks,
                args.requests)
    result["accept"] = bench_accept(args.clerks, args.requests, think=(0.0, 0.0), offline=True)
    logger.info("%s", json.dumps(result, default=str))
    return result


def markdown(results, command):
    """The results side by side."""
    by = {r["setting"]: r for r in results}
    rows = [
        ("single-row commit, median ms", lambda r: r["commits"]["median_ms"], ".2f"),
        ("single-row commit, p95 ms", lambda r: r["commits"]["p95_ms"], ".2f"),
        ("single-row commits per s", lambda r: r["commits"]["per_s"], ",.0f"),
        ("PouchDB → node, docs/s", lambda r: r["replication"]["pouch_to_node"], ",.0f"),
        ("node → PouchDB, docs/s", lambda r: r["replication"]["node_to_pouch"], ",.0f"),
        ("node → node, docs/s", lambda r: r["replication"]["node_to_node"], ",.0f"),
        ("acceptances per s (saturated)", lambda r: r["accept"]["per_s"], ".1f"),
        ("acceptance POST p50 ms", lambda r: r["accept"]["p50_ms"], ".0f"),
        ("acceptance POST p95 ms", lambda r: r["accept"]["p95_ms"], ".0f"),
        ("receipt GET p50 ms", lambda r: r["accept"]["receipt_p50_ms"], ".0f"),
    ]
    lines = ["## synchronous=NORMAL vs FULL (WAL)", "", f"Command: `{command}`  ",
             f"Machine: {machine()}  ", f"Date: {time.strftime('%Y-%m-%d')}", "",
             "| figure | NORMAL | FULL | FULL ÷ NORMAL |", "|---|---:|---:|---:|"]
    for label, pick, fmt in rows:
        normal, full = pick(by["normal"]), pick(by["full"])
        ratio = f"{full / normal:.2f}" if normal else "-"
        lines.append(f"| {label} | {normal:{fmt}} | {full:{fmt}} | {ratio} |")
    accepted = {s: (by[s]["accept"]["accepted"], by[s]["accept"]["failed"]) for s in by}
    lines += ["", f"Acceptances (done, failed): {accepted}.", ""]
    return "\n".join(lines)


def main():
    """Run both settings and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--clerks", type=int, default=4)
    parser.add_argument("--requests", type=int, default=25, help="acceptances per clerk")
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    npm_ready()
    command = "python bench/durability.py " + " ".join(sys.argv[1:])
    results = [run(setting, args) for setting in ("normal", "full")]
    text = markdown(results, command.strip())
    logger.info("\n%s", text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
