"""Backup figures (issue 14): a village with 10,000 cases backed up, verified, restored.

A village node directory is made the way ``tongban init --enrol`` leaves one (config,
``node.key``, ``secrets.json`` with a region key; bench/region_build.py), then its store
gets ``--cases`` cases (a header and an acceptance event each, written through the
store with every projection, as ``bench/region_host.py`` does), ``--audit`` audit entries
and ``--scans`` encrypted scans of ``--scan-kb`` KiB. Then it times ``shared.backup``'s
``create`` (what ``tongban backup DIR FILE`` runs), ``verify`` (with the passphrase) and
``restore`` into a new directory, and reports the archive's size next to the node's.

Usage::

    python bench/backup.py [--cases 10000] [--scans 1000] [--scan-kb 60] [--audit 2000]
                           [--runs 3] [--dir DIR] [--out /tmp/ops/backup-bench.md]
"""

import argparse
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.region_build import NodeSpec, _write_node_dir  # noqa: E402
from bench.replication import machine  # noqa: E402
from shared import audit, backup, casedocs, identity  # noqa: E402

logger = logging.getLogger("bench.backup")

VILLAGE = "441521100001"
PASSPHRASE = "bench-backup-passphrase"
BATCH = 500


def make_village(node_dir):
    """A village node directory with its keys and an empty store."""
    county_key = identity.new_private_key()
    spec = NodeSpec(code=VILLAGE, tier="village", parent=VILLAGE[:9], dir=str(node_dir),
                    port=9)
    _write_node_dir(spec, identity.b64(identity.public_key_bytes(county_key)),
                    identity.b64(os.urandom(32)), identity.new_private_key(),
                    "http://127.0.0.1:9", {})


def fill(node_dir, cases, scans, scan_kb, audit_entries):
    """Write the cases, audit entries and scans into the village's store."""
    from shared.app import create_app
    from shared.cases.blobs import BlobStore
    from shared.cases.scans import scan_key
    from shared.hlc import NodeClock

    app = create_app(node_dir=node_dir)
    store = app.extensions["store"]
    region_key = identity.load_secrets(node_dir)["region_key"]
    started = time.monotonic()
    try:
        clock = NodeClock(store)
        docs = []
        for seq in range(1, cases + 1):
            hlc = clock.now()
            number = casedocs.case_number(VILLAGE, casedocs.day_of(hlc), seq)
            applicant = identity.person_key(region_key, f"44152119800101{seq % 10000:04d}")
            docs.append(casedocs.case_header(number, "item:GD-LS-01-001", VILLAGE,
                                             VILLAGE[:9], applicant, hlc))
            docs.append(casedocs.case_event(number, "accepted", VILLAGE, clock.now(),
                                            note="受理 / bench"))
            if len(docs) >= BATCH or seq == cases:
                failures = [r for r in store.bulk_docs(docs) if "error" in r]
                if failures:
                    raise RuntimeError(f"cases not written: {failures[:3]}")
                docs = []
            if seq % 2000 == 0:
                logger.info("%d of %d cases written (%.0f s)", seq, cases,
                            time.monotonic() - started)
        node_audit = audit.NodeAudit(node_dir, store.db)
        for n in range(audit_entries):
            node_audit.record("clerk-a", "view_person", f"person:{n}", {"case": n})
        blobs = BlobStore(Path(node_dir) / "blobs", key=scan_key(region_key))
        for n in range(scans):
            blobs.put(b"%PDF-1.7\n" + os.urandom(scan_kb * 1024 - 9), f"scan-{n}.pdf")
        doc_count = store.doc_count()
    finally:
        store.close()
    logger.info("village filled: %d documents, %d audit entries, %d scans in %.0f s",
                doc_count, audit_entries, scans, time.monotonic() - started)
    return doc_count


def size_of(path):
    """Bytes of a file or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(what, function, *args):
    """``(seconds, result)`` of ``function(*args)``, logged."""
    logger.info("%s …", what)
    started = time.monotonic()
    result = function(*args)
    seconds = time.monotonic() - started
    logger.info("%s: %.2f s", what, seconds)
    return seconds, result


def run(args, workdir):
    """Build the village, then time backup, verify and restore; returns the figures."""
    node_dir = workdir / "village"
    make_village(node_dir)
    doc_count = fill(node_dir, args.cases, args.scans, args.scan_kb, args.audit)
    times = {"backup_s": [], "verify_s": [], "restore_s": []}
    for run_number in range(1, args.runs + 1):
        archive = workdir / f"village-{run_number}.zip"
        seconds, manifest = timed("backup", backup.create, node_dir, archive, PASSPHRASE)
        times["backup_s"].append(seconds)
        seconds, checked = timed("verify", backup.verify, archive, PASSPHRASE)
        times["verify_s"].append(seconds)
        if not checked.ok:
            raise RuntimeError(f"the archive does not verify: {checked.checks}")
        restored = workdir / f"restored-{run_number}"
        seconds, _ = timed("restore", backup.restore, archive, restored, PASSPHRASE)
        times["restore_s"].append(seconds)
        if manifest["store"]["doc_count"] != doc_count:
            raise RuntimeError("the backup's document count is not the node's")
        shutil.rmtree(restored)
    return {"cases": args.cases, "docs": doc_count, "scans": args.scans,
            "scan_kb": args.scan_kb, "audit": args.audit,
            "store_mb": size_of(node_dir / "store.sqlite") / 1e6,
            "node_mb": size_of(node_dir) / 1e6, "archive_mb": size_of(archive) / 1e6,
            "runs": args.runs, **times,
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0}


def spread(values):
    """``1.62 s (1.55–1.80)``: the median and the range of ``values``."""
    return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"


def markdown(result, command):
    """The figures as a Markdown section."""
    free, nproc = "", os.cpu_count()
    if shutil.which("free"):
        free = subprocess.run(["free", "-g"], capture_output=True, text=True,
                              check=False).stdout.rstrip()
    if shutil.which("nproc"):
        nproc = subprocess.run(["nproc"], capture_output=True, text=True,
                               check=False).stdout.strip()
    return "\n".join([
        "## Backups (issue 14)", "",
        f"Command: `{command}`  ",
        (f"Machine: {machine()}; `nproc` {nproc}; load average during the run "
         f"{result['load']:.1f} (other work on the machine slows the slowest runs)  "),
        (f"Date: {time.strftime('%Y-%m-%d')}. A village node with {result['cases']:,} cases "
         f"({result['docs']:,} documents: a header and an acceptance event each, written "
         f"through the store and its projections), {result['audit']:,} audit entries and "
         f"{result['scans']:,} encrypted scans of {result['scan_kb']} KiB. Times are "
         "`shared.backup.create` / `verify` / `restore` in one process (the CLI commands "
         "add ~1 s of start-up); keys sealed with scrypt (n=2^15) + AES-256-GCM."), "",
        "| store | node dir | archive | backup | verify | restore |",
        "|---|---|---|---|---|---|",
        (f"| {result['store_mb']:.1f} MB | {result['node_mb']:.1f} MB | "
         f"{result['archive_mb']:.1f} MB | {spread(result['backup_s'])} | "
         f"{spread(result['verify_s'])} | {spread(result['restore_s'])} |"), "",
        (f"Times: median of {result['runs']} runs (fastest–slowest). `restore` includes the "
         "full check that `verify` makes."), "",
        "`free -g`:", "", "```", free or "(free not available)", "```", ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--scan-kb", type=int, default=60)
    parser.add_argument("--audit", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3, help="Backups, verifies, restores.")
    parser.add_argument("--dir", type=Path, default=None,
                        help="Work directory (default: a temporary one, removed after).")
    parser.add_argument("--out", type=Path, default=None, help="Write the Markdown here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("shared").setLevel(logging.WARNING)
    logging.getLogger("shared.backup").setLevel(logging.INFO)  # its phases and times
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench-backup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text = markdown(result, "python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(text)  # the report is this tool's output
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
