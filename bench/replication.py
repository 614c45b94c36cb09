"""Replication throughput, all peers measured in one run on the same data.

    python bench/replication.py [--sizes 10000 50000] [--out docs/benchmarks.md]

For each size: PouchDB 9 (memory) → node and node → PouchDB; node → node with tongban's
replicator (two ``tongban serve`` processes over HTTP, replicator in this process); and
the same PouchDB client against pouchdb-server as the reference. Documents are ~1 KB
JSON with Chinese text. Results are printed and, with --out, written as Markdown with
the command and the machine's size.
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncd.peers import HttpPeer  # noqa: E402
from syncd.replicator import replicate  # noqa: E402
from tests.nodeproc import PEERS_DIR, npm_ready, start_node, start_pouchdb_server  # noqa: E402

logger = logging.getLogger("bench.replication")


def pouch_round(db_url, count, existing=0):
    """Push ``count`` docs from a memory PouchDB to ``db_url`` and pull them back (with the
    ``existing`` documents the database held before, such as a node's own registry entry)."""
    import subprocess

    env = {**os.environ, "NODE_PATH": str(PEERS_DIR / "node_modules")}
    result = subprocess.run(["node", str(ROOT / "bench" / "pouch_bench.js"), db_url, str(count)],
                            capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    for direction, expected in (("push", count), ("pull", count + existing)):
        if data[direction]["errors"] or data[direction]["docs_written"] != expected:
            raise RuntimeError(f"PouchDB {direction} against {db_url} incomplete: {data}")
    return count / data["push"]["seconds"], (count + existing) / data["pull"]["seconds"]


def node_to_node(workdir, source_node, count):
    """Replicate the source node's ``count`` docs into a fresh node process over HTTP."""
    target = start_node(workdir / f"target-{count}", tier="county", code="441521")
    try:
        source = HttpPeer(source_node.db_url, auth=source_node.auth)
        sink = HttpPeer(target.db_url, auth=target.auth)
        started = time.perf_counter()
        history = replicate(source, sink, batch_size=500)
        seconds = time.perf_counter() - started
        # Both nodes hold their own registry entry from ``tongban init`` besides the docs.
        missing = doc_ids(source_node) - doc_ids(target)
        if missing or history["doc_write_failures"]:
            raise RuntimeError(f"node → node incomplete: {len(missing)} missing, {history}")
        return history["docs_written"] / seconds
    finally:
        target.stop()


def doc_ids(node):
    """The ids of every document a node holds."""
    rows = requests.get(f"{node.db_url}/_all_docs", auth=node.auth, timeout=60).json()["rows"]
    return {row["id"] for row in rows}


def measure(count, workdir):
    """All four figures for one size."""
    logger.info("size %d: PouchDB against pouchdb-server", count)
    server = start_pouchdb_server(workdir)
    try:
        requests.put(f"{server.url}/bench", timeout=10).raise_for_status()
        ref_push, ref_pull = pouch_round(f"{server.url}/bench", count)
    finally:
        server.stop()
    logger.info("size %d: PouchDB against a tongban node", count)
    node = start_node(workdir / f"node-{count}", tier="county", code="441521")
    try:
        existing = requests.get(node.db_url, auth=node.auth, timeout=30).json()["doc_count"]
        node_push, node_pull = pouch_round(node.authed_db_url, count, existing)
        logger.info("size %d: node → node", count)
        n2n = node_to_node(workdir, node, count)
    finally:
        node.stop()
    return {"count": count, "pouch_to_server": ref_push, "server_to_pouch": ref_pull,
            "pouch_to_node": node_push, "node_to_pouch": node_pull, "node_to_node": n2n}


def machine():
    """A one-line description of this machine's size."""
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
            memory = f", {kib / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return (f"{os.cpu_count()} cores{memory}, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}")


def markdown(results, command):
    """The results as a Markdown section."""
    lines = [
        "## Replication throughput (issue 2)", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}. Documents: ~1 KB JSON with Chinese text; "
        "PouchDB 9.0.0 with the memory adapter and its default batch_size 100; "
        "pouchdb-server 4.2.0 in memory; tongban nodes are `tongban serve` processes "
        "(waitress, SQLite WAL); node → node is tongban's replicator over HTTP, batch 500.",
        "",
        "| docs | PouchDB → pouchdb-server | pouchdb-server → PouchDB | PouchDB → node "
        "| node → PouchDB | node → node | node → node ÷ PouchDB → pouchdb-server |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['count']:,} | {r['pouch_to_server']:,.0f} | {r['server_to_pouch']:,.0f} "
            f"| {r['pouch_to_node']:,.0f} | {r['node_to_pouch']:,.0f} | {r['node_to_node']:,.0f} "
            f"| {r['node_to_node'] / r['pouch_to_server']:.1f}× |")
    lines += ["", "Figures are documents per second.", ""]
    return "\n".join(lines)


def main():
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--out", type=Path, help="write the Markdown section to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    npm_ready()
    command = "python bench/replication.py " + " ".join(sys.argv[1:])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.sizes:
            results.append(measure(count, Path(tmp)))
            logger.info("%s", json.dumps(results[-1]))
    text = markdown(results, command.strip())
    logger.info("\n%s", text)
    if args.out:
        args.out.write_text("# Benchmarks\n\n" + text, encoding="utf-8")


if __name__ == "__main__":
    main()
