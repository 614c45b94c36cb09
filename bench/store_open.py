"""How long opening a store costs: ``PRAGMA quick_check`` and the version check at start.

    python bench/store_open.py --docs 100000 [--dir /tmp/store-open-bench]

Fills a store with ``--docs`` documents of about 1.5 KB (in batches of 1,000), then times
``shared.store.schema.prepare`` with and without the quick check, and the copy an
upgrade takes first (``backup_copy``).
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from shared.store import schema
from shared.store.store import Store


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="store-open-"))
    base.mkdir(parents=True, exist_ok=True)
    path = base / "store.sqlite"
    store = Store(path)
    text = "办件材料" * 120
    for start in range(0, args.docs, 1000):
        store.bulk_docs([{"_id": f"doc-{i:08d}", "type": "bench", "text": text, "n": i}
                         for i in range(start, min(start + 1000, args.docs))])
    store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    size = path.stat().st_size
    schema.prepare(path)  # stamps the version
    for check in (True, False):
        started = time.monotonic()
        schema.prepare(path, check=check)
        took = time.monotonic() - started
        print(f"prepare(check={check}): {took:.3f} s for {size / 2**20:.0f} MiB, "
              f"{args.docs} documents")
    started = time.monotonic()
    copy = schema.backup_copy(path, schema.SCHEMA_VERSION)
    print(f"backup_copy: {time.monotonic() - started:.3f} s")
    copy.unlink()
    if not args.dir:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
