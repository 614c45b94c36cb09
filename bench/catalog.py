"""Catalog benchmark (issue 4): a 1,500-item signed release from the county to a village,
and full-text search over 1,500 items.

A real chain of three nodes on this machine (county, township, village: ``tongban serve``
each, ``tongban syncd`` at the township and the village, enrolled the real way). The county
publishes release 1 (1,500 items, editor proposes, approver approves and signs) and then
release 2 (20 items edited). For each release the script times: approval (sign and write at
the county), arrival and activation at the township, arrival and activation at the village,
and the village's own verification time (signature, every listed hash, install).

Search: every query of a list (two-character words, partial words, several words, misses)
many times against the village's store in-process (``shared.catalog.active.search``) and
through its public search page over HTTP; p50 and p95.

    python bench/catalog.py [--items 1500] [--out docs/bench-catalog.md]
"""

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replication import machine  # noqa: E402
from shared import config as cfg  # noqa: E402
from shared import identity  # noqa: E402
from shared.app import open_store  # noqa: E402
from shared.catalog import active, publish  # noqa: E402
from shared.catalog.sample import repeated_items, sample_catalog  # noqa: E402
from shared.models import Account, hash_password  # noqa: E402
from tests import nodeproc  # noqa: E402

logger = logging.getLogger("bench.catalog")

COUNTY, TOWN, VILLAGE = "441521", "441521101", "441521101001"
QUERIES = ["养老", "低保", "残疾人", "身份证", "户口簿", "参保登记", "补贴 申请", "居住证",
           "救助供养", "医疗保险", "宅基地", "不存在的事项名称", "生育 登记", "就业困难人员认定",
           "护理", "临时救助"]
SEARCH_ROUNDS = 30


def generated_catalog(count):
    """``count`` valid items (the sample repeated) and the sample agencies."""
    return repeated_items(count), sample_catalog()[1]


def chain(base):
    """Start county, township and village; returns ``(nodes, processes)``."""
    procs = []
    county = nodeproc.start_node(base / COUNTY, tier="county", code=COUNTY, name="海丰县")
    procs.append(county)
    nodes = {COUNTY: county}
    for code, parent, tier in ((TOWN, COUNTY, "township"), (VILLAGE, TOWN, "village")):
        node_dir = nodeproc.enrol_node(county.node_dir, nodes[parent].url, base / code, tier,
                                       code)
        nodes[code] = nodeproc.start_node(node_dir, create=False)
        procs.append(nodes[code])
    for code in (TOWN, VILLAGE):
        procs.append(nodeproc.start_syncd(nodes[code].node_dir))
    return nodes, procs


def wait_active(node, number, timeout=600.0):
    """``(monotonic time, status)`` once ``node`` reports release ``number`` active."""
    deadline = time.monotonic() + timeout
    session = requests.Session()
    while time.monotonic() < deadline:
        status = session.get(node.url + "/status/catalog", timeout=10).json()
        if (status.get("release") or 0) >= number:
            return time.monotonic(), status
        time.sleep(0.05)
    raise RuntimeError(f"release {number} not active at {node.url} within {timeout} s")


def timed_release(store, key, nodes, make_drafts, note):
    """Propose and approve a release; time it to the township and the village."""
    make_drafts()
    proposal = publish.propose(store.db, "editor", note)
    started = time.monotonic()
    release = publish.approve(store, proposal.id, "boss", key)
    signed = time.monotonic()
    township, _ = wait_active(nodes[TOWN], release["number"])
    village, status = wait_active(nodes[VILLAGE], release["number"])
    verify = status["verify_seconds"]
    result = {"number": release["number"], "entries": len(release["entries"]),
              "sign": signed - started, "township": township - started,
              "village": village - started, "village_verify": verify}
    logger.info("release %s: %s", release["number"], result)
    return result


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def search_figures(node):
    """p50/p95 of search in-process and over HTTP at ``node`` (milliseconds)."""
    store = open_store(cfg.load_config(node.node_dir))
    inproc, hits = [], {}
    try:
        for _ in range(SEARCH_ROUNDS):
            for query in QUERIES:
                started = time.perf_counter()
                found = active.search(store.db, query)
                inproc.append((time.perf_counter() - started) * 1000)
                hits[query] = len(found)
    finally:
        store.close()
    over_http = []
    session = requests.Session()
    page = node.url + "/catalog/search"
    if session.get(page, params={"q": "养老"}, timeout=10).status_code == 200:
        for _ in range(SEARCH_ROUNDS // 3):
            for query in QUERIES:
                started = time.perf_counter()
                response = session.get(page, params={"q": query}, timeout=10)
                response.raise_for_status()
                over_http.append((time.perf_counter() - started) * 1000)
    figures = {"queries": len(QUERIES), "runs": len(inproc), "hits": hits,
               "p50": statistics.median(inproc), "p95": percentile(inproc, 0.95),
               "max": max(inproc)}
    if over_http:
        figures.update(http_p50=statistics.median(over_http),
                       http_p95=percentile(over_http, 0.95), http_runs=len(over_http))
    return figures


def run(count, base):
    """The whole benchmark; returns its figures."""
    nodes, procs = chain(base)
    try:
        store = open_store(cfg.load_config(nodes[COUNTY].node_dir))
        key = identity.load_private_key(nodes[COUNTY].node_dir)
        for name, role in (("editor", "county_admin"), ("boss", "approver")):
            Account.create(username=name, password_hash=hash_password("pw-" + name),
                           roles=role, created="2026-11-22")
        items, agencies = generated_catalog(count)
        first = timed_release(
            store, key, nodes,
            lambda: publish.import_catalog(store.db, items, agencies, "editor"),
            f"{count} items")

        def edit_twenty():
            for item in items[:20]:
                item = dict(item, hours="工作日 8:00—12:00，14:00—17:30（冬令时）")
                publish.save_draft(store.db, "item", item, "editor")

        second = timed_release(store, key, nodes, edit_twenty, "20 items edited")
        store.close()
        search = search_figures(nodes[VILLAGE])
    finally:
        for proc in reversed(procs):
            proc.stop()
    return {"count": count, "first": first, "second": second, "search": search}


def markdown(results, command):
    """The results as a Markdown section."""
    lines = [
        "## Catalog release and search (issue 4)", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}. County → township → village, each `tongban "
        "serve` in its own process, syncd at the township and the village (longpoll), "
        "enrolled with signed requests. Times from the approval (signing) until the node "
        "reports the release verified and active.", "",
        "| release | documents listed | sign + write at county | active at township "
        "| active at village | village's own verification |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("1: {count} items".format(count=results["count"]), results["first"]),
                     ("2: 20 items edited", results["second"])):
        lines.append(f"| {label} | {r['entries']:,} | {r['sign']:.2f} s | {r['township']:.2f} s "
                     f"| {r['village']:.2f} s | {r['village_verify']:.3f} s |")
    s = results["search"]
    lines += [
        "",
        f"Search over {results['count']:,} items at the village ({s['queries']} queries: "
        "two-character words, partial words, several words, a miss; "
        f"{s['runs']} runs in-process): p50 {s['p50']:.2f} ms, p95 {s['p95']:.2f} ms, "
        f"max {s['max']:.2f} ms (target p95 < 50 ms)."
        + (f" Through the public search page over HTTP ({s['http_runs']} requests): "
           f"p50 {s['http_p50']:.1f} ms, p95 {s['http_p95']:.1f} ms." if "http_p50" in s else ""),
        "",
    ]
    return "\n".join(lines)


def main():
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--out", type=Path, help="write the Markdown section to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = "python bench/catalog.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.items, Path(tmp))
    text = markdown(results, command.strip())
    logger.info("\n%s", text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
