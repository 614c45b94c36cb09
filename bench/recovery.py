"""Recovery time of a lost village PC from its township.

    python bench/recovery.py [--cases 2000] [--out /tmp/ops/recovery-bench.md]

A county, a township (serve + syncd) and a village, all real processes on this machine.
The village accepts ``--cases`` cases the way the window does (``CaseDesk.receive``, one
scanned PDF each), pushes them up with ``tongban syncd --once``, and is then lost: its
directory is deleted, the county issues ``tongban enrol --replace`` and the replacement
runs ``tongban init … --enrol CODE --recover``. Timed: accepting, pushing, recovering.
"""

import argparse
import datetime
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replication import machine  # noqa: E402

from shared import config as cfg  # noqa: E402
from shared.app import open_store  # noqa: E402
from shared.cases import idnumbers  # noqa: E402
from shared.demo import TONGBAN  # noqa: E402
from tests import nodeproc  # noqa: E402
from tests.casekit import applicant, clerk, upload  # noqa: E402
from tests.test_recovery import catalog_number, publish_catalog, with_desk  # noqa: E402

logger = logging.getLogger("bench.recovery")
COUNTY, TOWN, VILLAGE = "441521", "441521101", "441521101001"


def syncd_once(node_dir):
    result = subprocess.run([*TONGBAN, "syncd", str(node_dir), "--once"], capture_output=True,
                            text=True, timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"syncd --once failed:\n{result.stdout}\n{result.stderr}")


def accept(node_dir, count):
    """``count`` cases of as many citizens (one scan each), as the window accepts them."""
    def work(desk, store):
        for index in range(count):
            citizen = idnumbers.make_resident_id(
                "441521", datetime.date(1950, 1, 1) + datetime.timedelta(days=index), 123)
            desk.receive("GD-LS-01", applicant(citizen), {2: {"scans": [upload(desk)]}},
                         "accept", clerk())
    with_desk(node_dir, work)


def elided(lines, keep=3):
    """The output without the middle of the progress lines (one per replication batch)."""
    progress = [i for i, line in enumerate(lines) if " of ~" in line]
    cut = set(progress[keep:-keep]) if len(progress) > 2 * keep else set()
    out = [line for i, line in enumerate(lines) if i not in cut]
    if cut:
        out.insert(progress[keep], f"… {len(cut)} more progress lines …")
    return out


def doc_count(node_dir):
    store = open_store(cfg.load_config(node_dir))
    try:
        return store.doc_count(), store.db.execute_sql(
            "SELECT COUNT(*) FROM case_state").fetchone()[0]
    finally:
        store.close()


def run(cases, base):
    procs = []
    try:
        county = nodeproc.start_node(base / "county", tier="county", code=COUNTY, name="海丰县")
        procs.append(county)
        publish_catalog(county.node_dir)
        town_dir = nodeproc.enrol_node(county.node_dir, county.url, base / "town", "township",
                                       TOWN, "海城镇")
        town = nodeproc.start_node(town_dir, create=False)
        procs += [town, nodeproc.start_syncd(town_dir)]
        village_dir = nodeproc.enrol_node(county.node_dir, town.url, base / "village",
                                          "village", VILLAGE, "东门村")
        nodeproc.eventually(lambda: catalog_number(town_dir), "catalog at the township", 120)
        syncd_once(village_dir)
        started = time.monotonic()
        accept(village_dir, cases)
        accept_s = time.monotonic() - started
        started = time.monotonic()
        syncd_once(village_dir)
        push_s = time.monotonic() - started
        docs, held = doc_count(village_dir)
        shutil.rmtree(village_dir)
        code = nodeproc.tongban("enrol", county.node_dir, "--code", VILLAGE, "--tier",
                                "village", "--replace").stdout.strip()
        fresh = base / "replacement"
        started = time.monotonic()
        result = subprocess.run(
            [*TONGBAN, "-v", "init", str(fresh), "--tier", "village", "--code", VILLAGE,
             "--parent", town.url, "--enrol", code, "--recover"],
            capture_output=True, text=True, timeout=3600, check=False)
        recover_s = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"recovery failed:\n{result.stdout}\n{result.stderr}")
        recovered_docs, recovered = doc_count(fresh)
        return {"cases": cases, "docs": docs, "held": held, "accept_s": accept_s,
                "push_s": push_s, "recover_s": recover_s, "recovered": recovered,
                "recovered_docs": recovered_docs,
                "lines": [line for line in (result.stdout + result.stderr).splitlines()
                          if line.strip() and "skewed" not in line]}
    finally:
        for proc in reversed(procs):
            proc.stop()


def report(found, command):
    lines = [
        "# Recovery of a lost village PC from its township",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
        "",
        ("| cases | documents | accept at the village | push to the township | "
         "`init --recover` (enrol + pull + index) | recovered |"),
        "|---:|---:|---:|---:|---:|---:|",
        (f"| {found['cases']} | {found['docs']} | {found['accept_s']:.1f} s | "
         f"{found['push_s']:.1f} s | {found['recover_s']:.1f} s | {found['recovered']} cases, "
         f"{found['recovered_docs']} documents |"),
        "",
        "What `tongban -v init … --recover` printed (stdout and log):",
        "",
        "```",
        *elided(found["lines"]),
        "```",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="tongban-recovery-") as base:
        found = run(args.cases, Path(base))
    text = report(found, "python bench/recovery.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
