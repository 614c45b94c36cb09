"""A simulated region on this machine: how fast the catalog and cases move (issue 3).

    python bench/region.py [--townships 20 --villages 20 --items 1500 --cases 100]
                           [--per-host N | --hosts N] [--switch-interval 0.05]
                           [--dir DIR] [--out FILE] [--json] [--small]

1 county, ``--townships`` townships, ``--villages`` villages each: every node a real store
behind its own waitress server, synced by its own ``SyncDaemon``, over real HTTP with
signed requests. The nodes are spread over host processes (``bench/region_host.py``): by
default the county in one and each township with its villages in another; one more
village runs as real ``tongban serve`` + ``tongban syncd`` processes for the memory figure.

Measured:

* the catalog: ``--items`` items (complete items of the schema, ~3 KB each) and the
  release listing them, signed with the county key and written at the county in one
  transaction; per village, the time until it has verified and activated the release
  (p50, p95, max);
* cases: one every ``--case-interval`` seconds at villages across every township
  (header + ``accepted`` event, handler its township); the time until both are in the
  township's store and in the county's (p50, p95); HTTP bytes moved per case, gross and
  net of what the idle region moves in the same time;
* memory: VmRSS of the real village's serve and syncd once it holds the catalog.

``--small`` (2 townships of 5 villages, 200 items, 5 cases) is the smoke test.
"""

import argparse
import logging
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from region_build import assign_hosts, build_region, host_count, plan_region, spec_dicts  # noqa: E402
from region_host import host_main  # noqa: E402
from replication import machine  # noqa: E402

from shared.demo import TONGBAN  # noqa: E402
from tests.nodeproc import free_port, wait_for_http  # noqa: E402

logger = logging.getLogger("bench.region")

DEFAULT_SWITCH_INTERVAL = sys.getswitchinterval()
TARGETS = {"catalog_max": 30.0, "case_handler_p95": 2.0, "village_mib": 150.0}


# -- small helpers --------------------------------------------------------------------------

def percentile(values, fraction):
    """The nearest-rank percentile of ``values`` (None when empty)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, -(-int(round(fraction * 1000)) * len(ordered) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


def proc_kib(pid, field):
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class Hosts:
    """The host processes and their command connections."""

    def __init__(self, nodes, count, region_key, log_dir):
        context = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for index in range(count):
            specs = spec_dicts([n for n in nodes if n.host == index])
            parent, child = context.Pipe()
            proc = context.Process(target=host_main, name=f"region-host-{index}",
                                   args=(child, index, specs, region_key, str(log_dir)))
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def call(self, name, hosts=None, **kwargs):
        """Send a command to every host (or those in ``hosts``); returns their answers."""
        targets = range(len(self.conns)) if hosts is None else hosts
        for index in targets:
            self.conns[index].send((name, kwargs))
        answers = []
        for index in targets:
            status, value = self.conns[index].recv()
            if status != "ok":
                raise RuntimeError(f"host {index}: {name} failed: {value}")
            answers.append(value)
        return answers

    def stop(self):
        """Stop the daemons, then the processes."""
        try:
            self.call("stop")
        except (RuntimeError, OSError, EOFError) as exc:
            logger.warning("hosts did not stop cleanly: %s", exc)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()


# -- phases ---------------------------------------------------------------------------------

def wait_for_quiet(hosts, expected_links, timeout):
    """Wait until every link is up with (almost) nothing waiting either way."""
    deadline = time.monotonic() + timeout
    last_line = 0.0
    while True:
        answers = hosts.call("status")
        up = sum(a["states"].get("up", 0) for a in answers)
        waiting = sum(a["waiting"] for a in answers)
        # Status documents keep flowing up (every node reports), so "settled" allows a
        # few in flight.
        if up == expected_links and waiting <= max(5, expected_links // 20):
            return answers
        now = time.monotonic()
        if now - last_line >= 2:
            last_line = now
            logger.info("  warming up: %d/%d links up, %d documents waiting", up,
                        expected_links, waiting)
        if now > deadline:
            raise RuntimeError(f"the region did not settle within {timeout:.0f} s: "
                               f"{up}/{expected_links} links up, {waiting} waiting")
        time.sleep(0.5)


def measure_catalog(hosts, nodes, items, timeout):
    """Release the catalog at the county; per village, seconds until all of it arrived."""
    hosts.call("arm", number=1)
    cpu_before = sum(a["cpu"] for a in hosts.call("status"))
    county_host = nodes[0].host
    written = hosts.call("release", hosts=[county_host], count=items, number=1)[0]
    t0 = written["t0"]
    logger.info("  release written at the county in %.2f s", written["t1"] - t0)
    villages = {n.code for n in nodes if n.tier == "village" and n.host >= 0}
    townships = {n.code for n in nodes if n.tier == "township"}
    deadline = time.monotonic() + timeout
    while True:
        done = {}
        for answer in hosts.call("catalog"):
            done.update({code: t for code, t in answer.items() if t is not None})
        arrived = villages & done.keys()
        logger.info("  catalog at %d/%d villages, %d/%d townships (%.1f s)", len(arrived),
                    len(villages), len(townships & done.keys()), len(townships),
                    time.monotonic() - t0)
        if len(arrived) == len(villages) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    times = {code: done[code] - t0 for code in arrived}
    cpu = sum(a["cpu"] for a in hosts.call("status")) - cpu_before
    logger.info("  catalog phase: %.0f CPU-seconds in the host processes, %.0f µs per "
                "document written", cpu, cpu / max(1, items * (len(arrived) + len(townships)))
                * 1e6)
    return {"cpu_seconds": cpu, "villages": [times[c] for c in sorted(times)], "missing": len(villages - arrived),
            "townships": [done[c] - t0 for c in townships if c in done],
            "write_seconds": written["t1"] - t0}


def measure_bytes(hosts):
    """Total requests and bytes served by every host."""
    requests = bytes_moved = 0
    for answer in hosts.call("bytes"):
        for count, inbound, outbound in answer.values():
            requests += count
            bytes_moved += inbound + outbound
    return requests, bytes_moved


def measure_cases(hosts, nodes, count, interval, timeout):
    """Accept ``count`` cases at villages spread over every township; arrival times."""
    villages = [n for n in nodes if n.tier == "village" and n.host >= 0]
    townships = sorted({n.parent for n in villages})
    # Round-robin over townships, a different village of each every time.
    by_town = {t: [v for v in villages if v.parent == t] for t in townships}
    chosen = [by_town[townships[i % len(townships)]][(i // len(townships)) %
                                                     len(by_town[townships[i % len(townships)]])]
              for i in range(count)]
    # The idle region's traffic, sampled before and after the cases for as long as they
    # take, to tell the cases' bytes from the background (rounds, status documents).
    idle_seconds = count * interval + 3.0
    idle_before = _idle_sample(hosts, idle_seconds)
    started = time.monotonic()
    before = measure_bytes(hosts)
    written = {}
    for i, village in enumerate(chosen):
        number, t0 = hosts.call("case", hosts=[village.host], village=village.code)[0]
        written[number] = (village, t0)
        pause = started + (i + 1) * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    county = nodes[0].code
    deadline = time.monotonic() + timeout
    while True:
        seen = {}
        for answer in hosts.call("cases"):
            seen.update(answer)
        at_handler, at_county = [], []
        for number, (village, t0) in written.items():
            h = seen.get(village.parent, {}).get(number, {})
            c = seen.get(county, {}).get(number, {})
            if "case" in h and "event" in h:
                at_handler.append(max(h["case"], h["event"]) - t0)
            if "case" in c and "event" in c:
                at_county.append(max(c["case"], c["event"]) - t0)
        if len(at_county) == len(written) and len(at_handler) == len(written) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Wait out the tail so the last case's rounds are counted.
    remaining = started + idle_seconds - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    after = measure_bytes(hosts)
    elapsed = time.monotonic() - started
    idle_after = _idle_sample(hosts, idle_seconds)
    idle = {key: (idle_before[key] + idle_after[key]) / 2 for key in idle_before}
    gross = after[1] - before[1]
    return {"handler": at_handler, "county": at_county, "count": len(written),
            "gross_bytes_per_case": gross / len(written),
            "net_bytes_per_case": (gross - idle["bytes"] * elapsed) / len(written),
            "requests_per_case": (after[0] - before[0] - idle["requests"] * elapsed)
            / len(written),
            "idle_bytes_per_second": idle["bytes"], "idle_cpu": idle["cpu"]}


def _idle_sample(hosts, seconds):
    """Requests, bytes and CPU-seconds per second of the region doing nothing new."""
    before = measure_bytes(hosts)
    cpu_before = sum(a["cpu"] for a in hosts.call("status"))
    time.sleep(seconds)
    after = measure_bytes(hosts)
    cpu = sum(a["cpu"] for a in hosts.call("status")) - cpu_before
    return {"requests": (after[0] - before[0]) / seconds,
            "bytes": (after[1] - before[1]) / seconds, "cpu": cpu / seconds}


def active_items(node_dir):
    """Items of the release in force at a node (read-only, from outside its processes)."""
    conn = sqlite3.connect(f"file:{node_dir}/store.sqlite?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM catalog_item").fetchone()[0]
    except sqlite3.OperationalError:  # the table is made when the node first opens
        return 0
    finally:
        conn.close()


def measure_memory(spec, items, log_dir, timeout):
    """Run one village as real ``tongban serve`` + ``tongban syncd``; its memory once it
    holds the catalog."""
    serve_log = open(Path(log_dir) / "memory-serve.log", "ab")
    sync_log = open(Path(log_dir) / "memory-syncd.log", "ab")
    serve = subprocess.Popen([*TONGBAN, "serve", spec.dir, "--port", str(spec.port)],
                             stdout=serve_log, stderr=subprocess.STDOUT)
    syncd = None
    try:
        wait_for_http(spec.url + "/", serve)
        started = time.monotonic()
        syncd = subprocess.Popen([*TONGBAN, "syncd", spec.dir], stdout=sync_log,
                                 stderr=subprocess.STDOUT)
        while active_items(spec.dir) < items:
            if syncd.poll() is not None:
                raise RuntimeError(f"syncd of {spec.code} exited with {syncd.returncode}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"village {spec.code} did not get the catalog in time")
            time.sleep(0.5)
        synced_in = time.monotonic() - started
        # A few seconds of steady state: rounds, longpoll, a request to the page.
        import requests
        requests.get(spec.url + "/", timeout=10)
        time.sleep(3.0)
        result = {"synced_seconds": synced_in}
        for name, proc in (("serve", serve), ("syncd", syncd)):
            result[name] = {"rss": proc_kib(proc.pid, "VmRSS"), "hwm": proc_kib(proc.pid, "VmHWM")}
        return result
    finally:
        for proc in (syncd, serve):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        serve_log.close()
        sync_log.close()


# -- the run ----------------------------------------------------------------------------------

def run(args, workdir):
    """Build the region, run every phase; returns the results."""
    ports = set()

    def port():
        while True:
            candidate = free_port()
            if candidate not in ports:
                ports.add(candidate)
                return candidate

    nodes = assign_hosts(plan_region(workdir / "nodes", args.townships, args.villages, port,
                                     args.parent_threads), args.per_host, args.hosts)
    hosted = [n for n in nodes if n.host >= 0]
    args.hosts = host_count(nodes)
    logger.info("building %d nodes (%d townships × %d villages, + 1 real village) in %s",
                len(nodes), args.townships, args.villages, workdir)
    region_key = build_region(
        nodes, settings={"SYNC_REQUEST_TIMEOUT": args.request_timeout,
                         **({"SYNC_INTERVAL": args.sync_interval} if args.sync_interval else {})},
        progress=lambda done, total: logger.info("  %d/%d node directories", done, total))
    log_dir = workdir / "logs"
    log_dir.mkdir(exist_ok=True)
    started = time.monotonic()
    hosts = Hosts(nodes, args.hosts, region_key, log_dir)
    try:
        counts = hosts.call("open")
        logger.info("%d host processes (pids %s) serve %s nodes (%.1f s)", args.hosts,
                    ",".join(str(p.pid) for p in hosts.procs), "+".join(map(str, counts)),
                    time.monotonic() - started)
        hosts.call("start_sync")
        links = sum(1 for n in hosted if n.parent)
        settle = wait_for_quiet(hosts, links, args.timeout)
        logger.info("region up: %d links, %.1f s after start; host RSS %s MiB, threads %s",
                    links, time.monotonic() - started,
                    "/".join(f"{a['rss_kib'] / 1024:.0f}" for a in settle),
                    "/".join(str(a["threads"]) for a in settle))
        logger.info("catalog release: %d items (GIL switch interval %g s)", args.items,
                    args.switch_interval)
        hosts.call("switch_interval", seconds=args.switch_interval)
        catalog = measure_catalog(hosts, nodes, args.items, args.timeout)
        hosts.call("switch_interval", seconds=DEFAULT_SWITCH_INTERVAL)
        wait_for_quiet(hosts, links, args.timeout)
        logger.info("cases: %d, one every %.2f s", args.cases, args.case_interval)
        cases = measure_cases(hosts, nodes, args.cases, args.case_interval, args.timeout)
        settle = hosts.call("status")
        memory_spec = next(n for n in nodes if n.host < 0)
        logger.info("memory: village %s as real serve + syncd processes", memory_spec.code)
        memory = measure_memory(memory_spec, args.items, log_dir, args.timeout)
    finally:
        hosts.stop()
    return {"nodes": len(hosted), "catalog": catalog, "cases": cases, "memory": memory,
            "host_rss_mib": [a["rss_kib"] / 1024 for a in settle],
            "host_threads": [a["threads"] for a in settle]}


def summary_rows(results):
    """``(measure, value, target, met)`` rows."""
    cat, cases, mem = results["catalog"], results["cases"], results["memory"]
    v = cat["villages"]
    village_mib = (mem["serve"]["rss"] + mem["syncd"]["rss"]) / 1024
    village_peak = (mem["serve"]["hwm"] + mem["syncd"]["hwm"]) / 1024
    catalog_max = max(v) if v and not cat["missing"] else None
    handler_p95 = percentile(cases["handler"], 0.95)

    def fmt(value, unit="s"):
        return "—" if value is None else f"{value:.2f} {unit}"
    return [
        ("catalog at a village, p50", fmt(percentile(v, 0.5)), "", ""),
        ("catalog at a village, p95", fmt(percentile(v, 0.95)), "", ""),
        ("catalog at every village (max)", fmt(catalog_max) + (
            f" ({cat['missing']} villages missing)" if cat["missing"] else ""),
         "< 30 s", _met(catalog_max, TARGETS["catalog_max"])),
        ("case visible at its township, p50", fmt(percentile(cases["handler"], 0.5)), "", ""),
        ("case visible at its township, p95", fmt(handler_p95), "< 2 s",
         _met(handler_p95, TARGETS["case_handler_p95"])),
        ("case visible at the county, p50", fmt(percentile(cases["county"], 0.5)), "", ""),
        ("case visible at the county, p95", fmt(percentile(cases["county"], 0.95)), "", ""),
        ("HTTP bytes per case, net of idle traffic",
         f"{cases['net_bytes_per_case'] / 1024:.1f} KiB", "", ""),
        ("HTTP bytes per case, gross", f"{cases['gross_bytes_per_case'] / 1024:.1f} KiB", "", ""),
        ("village serve + syncd RSS", f"{village_mib:.0f} MiB "
         f"(serve {mem['serve']['rss'] / 1024:.0f}, syncd {mem['syncd']['rss'] / 1024:.0f}; "
         f"peak {village_peak:.0f})", "< 150 MB", _met(village_mib * 1.048576,
                                                        TARGETS["village_mib"])),
    ]


def _met(value, limit):
    if value is None:
        return "no"
    return "yes" if value < limit else "no"


def markdown(results, args, command):
    """The results as a Markdown section."""
    cat, cases, mem = results["catalog"], results["cases"], results["memory"]
    towns = cat["townships"]
    lines = [
        "## Region: catalog release and cases (issue 3)", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}. {results['nodes']} nodes (1 county, "
        f"{args.townships} townships, {args.townships * args.villages} villages) in "
        f"{args.hosts} host processes, each node its own store, waitress server and "
        f"SyncDaemon, signed requests over HTTP on 127.0.0.1; {args.items} items of "
        f"~2.5 KB in one release (GIL switch interval {args.switch_interval:g} s in the "
        f"host processes meanwhile, Python's {DEFAULT_SWITCH_INTERVAL:g} s otherwise); "
        f"{cases['count']} cases, one every {args.case_interval} s.",
        "",
        "| measure | result | target | met |",
        "|---|---:|---:|:-:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    lines += [
        "",
        f"The county wrote the release in {cat['write_seconds']:.2f} s; the last township "
        f"had it after {max(towns):.1f} s. " if towns else "",
        f"Per case {cases['requests_per_case']:.0f} HTTP requests beyond the idle traffic "
        f"(idle region: {cases['idle_bytes_per_second'] / 1024:.1f} KiB/s and "
        f"{cases['idle_cpu']:.2f} CPU-seconds per second). The real "
        f"village took {mem['synced_seconds']:.1f} s to pull registry and catalog from "
        f"its township. Host processes at the end: RSS "
        f"{', '.join(f'{r:.0f}' for r in results['host_rss_mib'])} MiB, threads "
        f"{', '.join(map(str, results['host_threads']))}.",
        "",
    ]
    return "\n".join(lines)


def main():
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--townships", type=int, default=20)
    parser.add_argument("--villages", type=int, default=20, help="villages per township")
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--case-interval", type=float, default=0.5)
    parser.add_argument("--hosts", type=int, help="host processes in all (the county has "
                        "one; townships with their villages share the rest)")
    parser.add_argument("--switch-interval", type=float, default=0.05,
                        help="GIL switch interval of the host processes during the catalog "
                        "release (default 0.05 s; Python's 0.005 s otherwise): ~175 threads "
                        "per process hand the GIL around ten times less often")
    parser.add_argument("--parent-threads", type=int,
                        help="waitress threads of the county and each township (default: "
                        "children + 8, as every child holds a longpoll)")
    parser.add_argument("--per-host", type=int, help="villages per host process (default: "
                        "a township and all its villages share one; the county has its own)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="SYNC_REQUEST_TIMEOUT of every node (default 600 s: 420 nodes "
                        "share two cores, so a request that takes 0.3 s on a township's own "
                        "machine can take a minute here, and a timed-out request is work "
                        "thrown away and done again)")
    parser.add_argument("--sync-interval", type=float,
                        help="SYNC_INTERVAL of every node (default: the product's 30 s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds each phase may take")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary "
                        "one, removed afterwards)")
    parser.add_argument("--out", type=Path, help="write the Markdown section to this file")
    parser.add_argument("--small", action="store_true",
                        help="2 townships × 5 villages, 200 items, 5 cases")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args()
    if args.small:
        args.townships, args.villages, args.items, args.cases = 2, 5, 200, 5
        args.case_interval = min(args.case_interval, 0.2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # SIGTERM unwinds like Ctrl-C, so the host processes are stopped and the work
    # directory removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    command = "python bench/region.py " + " ".join(sys.argv[1:])
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        results = run(args, args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="region-") as tmp:
            results = run(args, Path(tmp))
    text = markdown(results, args, command.strip())
    logger.info("\n%s", text)
    if args.json:
        import json
        sys.stdout.write(json.dumps(results) + "\n")
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    cat = results["catalog"]
    return 1 if cat["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
