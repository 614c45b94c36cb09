"""The least CPU a node spends taking in a catalog release, with no network at all.

A county publishes a release of ``--items`` items (signed, as the county does). Then,
``--repeat`` times, a fresh village store in this process takes the release exactly as
replication hands it over: the documents as ``_bulk_get`` returns them (with their
revision histories) are decoded and written with ``new_edits=false`` in one batch, and the
catalog projection verifies and activates the release in the same transaction. The bare
store write (no projections) is timed too.

Whatever the transport, every village of a simulated region pays at least this, so
``nodes × per-node seconds ÷ cores`` is a lower bound of the time until the last village
has the release when all the nodes share this machine's cores.

    python bench/release_floor.py [--items 1500] [--repeat 5] [--nodes 420]
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

from bench.replication import machine  # noqa: E402
from shared.catalog import publish  # noqa: E402
from shared.catalog.sample import repeated_items, sample_catalog  # noqa: E402
from shared.store.store import Store  # noqa: E402
from tests.conftest import add_account, make_app, make_county  # noqa: E402

logger = logging.getLogger("bench.release_floor")


def published(base, count):
    """The documents of a signed ``count``-item release as replication carries them."""
    (base / "county").mkdir()
    county = make_county(base / "county")
    add_account(county, "editor", "pw-editor-1", roles=("county_admin",))
    add_account(county, "boss", "pw-boss-1", roles=("approver",))
    store = county.extensions["store"]
    release = publish.publish(store, repeated_items(count), sample_catalog()[1],
                              proposer="editor", approver="boss", private_key=county.key)
    docs = [store.get(e["id"], revs=True) for e in release["entries"]]
    docs.append(store.get(release["_id"], revs=True))
    store.close()
    return json.dumps(docs, ensure_ascii=False).encode("utf-8"), \
        county.config["COUNTY_PUBLIC_KEY"]


def one_village(base, n, payload, county_key):
    """``(decode, write + activate, bare write)`` seconds of CPU for one fresh village."""
    village_dir = base / f"village-{n}"
    village_dir.mkdir()
    app = make_app(village_dir, TIER="village", NODE_CODE="441521101001",
                   COUNTY_PUBLIC_KEY=county_key)
    store = app.extensions["store"]
    started = time.process_time()
    docs = json.loads(payload)
    decoded = time.process_time()
    store.bulk_docs(docs, new_edits=False)
    written = time.process_time()
    active = store.db.execute_sql("SELECT number FROM catalog_state").fetchone()
    if not active:
        raise RuntimeError("the release did not activate")
    store.close()
    bare = Store(village_dir / "bare.sqlite")
    docs = json.loads(payload)
    bare_started = time.process_time()
    bare.bulk_docs(docs, new_edits=False)
    bare_written = time.process_time()
    bare.close()
    return decoded - started, written - decoded, bare_written - bare_started


def main():
    """Measure and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=420,
                        help="nodes that take the release (the region: 20 + 400)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        payload, county_key = published(base, args.items)
        runs = []
        for n in range(args.repeat):
            runs.append(one_village(base, n, payload, county_key))
            logger.info("village %d: decode %.3f s, write + verify + activate %.3f s, "
                        "bare write %.3f s", n + 1, *runs[-1])
    decode = statistics.median(r[0] for r in runs)
    full = statistics.median(r[1] for r in runs)
    bare = statistics.median(r[2] for r in runs)
    cores = os.cpu_count()
    per_node = decode + full
    print(f"Command: `python bench/release_floor.py {' '.join(sys.argv[1:])}`".strip())
    print(f"Machine: {machine()}")
    print(f"{args.items} items, {len(payload) / 1e6:.1f} MB as replicated; median of "
          f"{args.repeat} fresh village stores, CPU seconds: decode {decode:.3f}, write + "
          f"verify + activate {full:.3f} (bare store write {bare:.3f}); per node "
          f"{per_node:.3f} s, so {args.nodes} nodes on {cores} cores need at least "
          f"{args.nodes * per_node / cores:.0f} s.")


if __name__ == "__main__":
    main()
