"""Building the simulated region of ``bench/region.py``: node directories and the catalog.

Calling ``tongban init`` and ``tongban enrol`` 421 times would take minutes, so the
directories are made here the way those commands make them (shared/cli.py ``init``,
shared/enrolment.py): ``tongban.json`` with ``TIER``, ``NODE_CODE``, ``PARENT_URL``,
``PARENT_CODE``, ``SECRET_KEY`` and ``COUNTY_PUBLIC_KEY``; ``node.key``; ``secrets.json``
with the region key. Every node's registry entry is signed with the county key and the
county's store holds them all; every other store starts as a copy of the county's (what
enrolment leaves: the registry relayed unchanged) with a fresh uuid, so each node has its
own replication ids and every request between nodes is signed and scoped for real.
"""

import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from shared import config as cfg
from shared import identity, registry

logger = logging.getLogger("bench.region")

COUNTY_CODE = "441521"
DATA_DIR = Path(__file__).resolve().parent.parent / "shared" / "data"
#: Village code suffix of the extra village run as real ``serve`` + ``syncd`` processes.
MEMORY_VILLAGE_SUFFIX = "900"


@dataclass
class NodeSpec:
    """One node of the simulated region and where it runs."""

    code: str
    tier: str
    parent: str | None
    dir: str
    port: int
    host: int = -1  # index of the host process; -1: a real process of its own
    threads: int = 2  # waitress worker threads of its server

    @property
    def url(self):
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"


def plan_region(base_dir, townships, villages, ports, parent_threads=None):
    """The nodes: county, then townships each followed by their villages, then the
    extra village of the memory measurement (under the first township).

    :param ports: a callable returning a free TCP port.
    :param parent_threads: waitress threads of the county and the townships (default:
        one per child, for its longpoll, plus 8).
    """
    base_dir = Path(base_dir)
    nodes = [NodeSpec(COUNTY_CODE, "county", None, str(base_dir / COUNTY_CODE), ports(),
                      threads=parent_threads or townships + 8)]
    for t in range(1, townships + 1):
        town = f"{COUNTY_CODE}{100 + t:03d}"
        extra = 1 if t == 1 else 0
        # Each child holds one longpoll on its parent all the time, plus its rounds.
        nodes.append(NodeSpec(town, "township", COUNTY_CODE, str(base_dir / town), ports(),
                              threads=parent_threads or villages + extra + 8))
        for v in range(1, villages + 1):
            code = f"{town}{v:03d}"
            nodes.append(NodeSpec(code, "village", town, str(base_dir / code), ports()))
    town = f"{COUNTY_CODE}101"
    code = town + MEMORY_VILLAGE_SUFFIX
    nodes.append(NodeSpec(code, "village", town, str(base_dir / code), ports()))
    return nodes


def assign_hosts(nodes, per_host=None, hosts=None):
    """Spread the nodes over host processes: the county alone, each township with
    ``per_host`` of its villages, the rest of its villages ``per_host`` to a process
    (default: a township and all its villages in one process); or, with ``hosts``, the
    townships and their villages grouped evenly into ``hosts - 1`` processes.

    Every node brings its own threads (server workers, daemon loop, longpoll,
    scheduler), and the threads of one process share one GIL: the more nodes a process
    holds, the more of its CPU goes into handing the GIL around instead of work.
    """
    host_of = {nodes[0].code: 0}
    next_host = 1
    townships = [n for n in nodes if n.tier == "township"]
    if hosts is not None and hosts > 1 and per_host is None:
        # A fixed number of processes: the townships and their villages grouped evenly.
        for index, town in enumerate(townships):
            host_of[town.code] = 1 + index * (hosts - 1) // len(townships)
        for node in nodes:
            if node.tier == "village" and not _is_memory_village(node):
                host_of[node.code] = host_of[node.parent]
            node.host = -1 if _is_memory_village(node) else host_of[node.code]
        return nodes
    villages_of = {}
    for node in nodes:
        if node.tier == "village" and not _is_memory_village(node):
            villages_of.setdefault(node.parent, []).append(node)
    for town in (n for n in nodes if n.tier == "township"):
        villages = villages_of.get(town.code, [])
        size = per_host or len(villages) or 1
        host_of[town.code] = next_host
        for index, village in enumerate(villages):
            if index and index % size == 0:
                next_host += 1
            host_of[village.code] = next_host
        next_host += 1
    for node in nodes:
        node.host = -1 if _is_memory_village(node) else host_of[node.code]
    return nodes


def _is_memory_village(node):
    return node.tier == "village" and node.code.endswith(MEMORY_VILLAGE_SUFFIX)


def host_count(nodes):
    """How many host processes ``nodes`` were assigned to."""
    return max(n.host for n in nodes) + 1


def _write_node_dir(spec, county_public, region_key, key, parent_url, extra):
    node_dir = Path(spec.dir)
    node_dir.mkdir(parents=True)
    settings = {
        "TIER": spec.tier, "NODE_CODE": spec.code, "NODE_NAME": f"bench {spec.code}",
        "PARENT_URL": parent_url, "PARENT_CODE": cfg.parent_code(spec.code),
        "SECRET_KEY": secrets.token_hex(32), "COUNTY_PUBLIC_KEY": county_public,
        **extra,
    }
    (node_dir / cfg.CONFIG_FILE).write_text(
        json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    identity.save_private_key(node_dir, key)
    identity.save_secrets(node_dir, {"region_key": region_key})


def build_region(nodes, *, settings=None, progress=None):
    """Make every node directory; returns the region key (base64).

    :param settings: further ``tongban.json`` settings of every node.
    :param progress: called with ``(done, total)`` now and then.
    """
    from shared.app import open_store

    started = time.monotonic()
    by_code = {n.code: n for n in nodes}
    county = nodes[0]
    county_key = identity.new_private_key()
    county_public = identity.b64(identity.public_key_bytes(county_key))
    region_key = identity.b64(os.urandom(32))
    entries = []
    for spec in nodes:
        key = county_key if spec.tier == "county" else identity.new_private_key()
        parent_url = by_code[spec.parent].url if spec.parent else None
        _write_node_dir(spec, county_public, region_key, key, parent_url, settings or {})
        entries.append(registry.make_entry(
            county_key, code=spec.code, tier=spec.tier, name=f"bench {spec.code}",
            public_key=identity.b64(identity.public_key_bytes(key))))
    # The county's store: its registry, published as tongban enrol would (new edits).
    store = open_store(cfg.load_config(county.dir))
    try:
        failures = [r for r in store.bulk_docs(entries) if "error" in r]
        if failures:
            raise RuntimeError(f"registry entries not written: {failures[:3]}")
        verified = store.db.execute_sql("SELECT COUNT(*) FROM node_registry").fetchone()[0]
        if verified != len(nodes):
            raise RuntimeError(f"only {verified} of {len(nodes)} registry entries verify")
        store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    template = Path(county.dir) / cfg.STORE_FILE
    for done, spec in enumerate(nodes[1:], 2):
        target = Path(spec.dir) / cfg.STORE_FILE
        shutil.copyfile(template, target)
        # A store is one database: its own uuid (replication ids) and start time.
        conn = sqlite3.connect(target)
        with conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'uuid'", (uuid.uuid4().hex,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'instance_start_time'",
                         (str(int(time.time() * 1000000)),))
        conn.close()
        if progress and (done % 50 == 0 or done == len(nodes)):
            progress(done, len(nodes))
    logger.info("region built: %d node directories in %.1f s", len(nodes),
                time.monotonic() - started)
    return region_key


def catalog_release(count, release_number, county_key):
    """``count`` published item documents varied from the sample catalog (complete items
    of the schema, ~3 KB each) and the release listing them, signed with ``county_key``."""
    from shared.catalog import release as rel
    from shared.catalog.sample import repeated_items

    docs = [rel.published_doc("item", item, release_number) for item in repeated_items(count)]
    release = rel.sign_release(
        county_key, number=release_number,
        time=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        entries=[{"id": d["_id"], "version": release_number, "hash": rel.content_hash(d)}
                 for d in docs],
        proposed_by="bench", approved_by="bench")
    return docs, release


def spec_dicts(nodes):
    """The specs as plain dicts (to hand to a host process)."""
    return [asdict(n) for n in nodes]
