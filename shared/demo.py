"""``tongban demo``: a whole sample region on this machine.

One county (海丰县), two of its townships and two villages under each, from the real
division codes in ``shared/data/region-haifeng.json``. Every node is its own
``tongban serve`` process with its own port and directory; the county is seeded with
the sample catalog (``shared/data/catalog-sample.json``) as ``"type": "item"``
documents, and continuous replications (pull from the parent, push to it) carry the
catalog down the tree until every village holds it.
"""

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import requests

from shared import config as cfg

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
#: How a node's own processes are started. ``-P`` (Python 3.11+) keeps the current
#: directory off sys.path, so a folder named ``shared`` where the user stands is never
#: imported in place of this package.
TONGBAN = [sys.executable, "-P", "-m", "shared.cli"]
REPLICATOR_USER = "replicator"
TOWNSHIPS, VILLAGES_PER_TOWNSHIP = 2, 2


@dataclass
class DemoNode:
    """One node of the demo region."""

    tier: str
    code: str
    name: str
    port: int
    node_dir: Path
    parent: "DemoNode | None" = None
    password: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self):
        """The node's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self):
        """Credentials of the node's replicator account."""
        return (REPLICATOR_USER, self.password)


def load_region():
    """The county of the demo region with its towns and villages."""
    return json.loads((DATA_DIR / "region-haifeng.json").read_text(encoding="utf-8"))["county"]


def catalog_documents():
    """The sample catalog as ``item`` documents (ids ``item:<catalog id>``)."""
    catalog = json.loads((DATA_DIR / "catalog-sample.json").read_text(encoding="utf-8"))
    docs = []
    for item in catalog["items"]:
        doc = {key: value for key, value in item.items() if not key.startswith("_")}
        doc["_id"] = f"item:{item['id']}"
        doc["type"] = "item"
        docs.append(doc)
    return docs


def plan_region(base_dir, base_port):
    """The demo's nodes: county first, then each township followed by its villages."""
    county = load_region()
    nodes = [DemoNode("county", county["code"][:6], county["name"], base_port,
                      base_dir / f"county-{county['code'][:6]}")]
    port = base_port + 1
    for town in county["towns"][:TOWNSHIPS]:
        township = DemoNode("township", town["code"], town["name"], port,
                            base_dir / f"township-{town['code']}", parent=nodes[0])
        nodes.append(township)
        port += 1
        for village in town["villages"][:VILLAGES_PER_TOWNSHIP]:
            nodes.append(DemoNode("village", village["code"], village["name"], port,
                                  base_dir / f"village-{village['code']}", parent=township))
            port += 1
    return nodes


def _port_free(port):
    with socket.socket() as sock:
        # The server binds with SO_REUSEADDR; probing the same way ignores TIME_WAIT
        # connections left by a previous run and still finds a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cli(*args, input_text=None):
    result = subprocess.run([*TONGBAN, *map(str, args)],
                            input=input_text, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or f"tongban {args[0]} failed")
    return result


def prepare_node(node, secrets_file):
    """Create the node's directory and replicator account unless they exist."""
    known = json.loads(secrets_file.read_text()) if secrets_file.exists() else {}
    if (node.node_dir / cfg.CONFIG_FILE).exists() and node.code in known:
        node.password = known[node.code]
        return False
    node.password = secrets.token_urlsafe(18)
    args = ["init", node.node_dir, "--tier", node.tier, "--code", node.code, "--name", node.name]
    if node.parent:
        args += ["--parent", node.parent.url]
    _cli(*args)
    _cli("user", "add", node.node_dir, REPLICATOR_USER, "--role", "replicator",
         input_text=node.password + "\n")
    known[node.code] = node.password
    secrets_file.write_text(json.dumps(known, indent=2))
    os.chmod(secrets_file, 0o600)
    return True


def seed_catalog(county):
    """Write the sample catalog into the county's store (once; later runs keep edits)."""
    from shared.app import open_store

    store = open_store(cfg.load_config(county.node_dir))
    try:
        docs = [doc for doc in catalog_documents() if not _exists(store, doc["_id"])]
        if docs:
            store.bulk_docs(docs)
        return len(docs)
    finally:
        store.close()


def _exists(store, doc_id):
    from shared.errors import NotFound

    try:
        store.get(doc_id)
        return True
    except NotFound:
        return False


def start_serving(node, log_dir):
    """Start ``tongban serve`` for the node; its output goes to a log file."""
    log = open(log_dir / f"{node.tier}-{node.code}.log", "ab")
    node.process = subprocess.Popen(
        [*TONGBAN, "-v", "serve", str(node.node_dir),
         "--port", str(node.port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()


def wait_until_up(node, timeout=30.0):
    """Wait for the node's HTTP server; raise when its process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"{node.name} ({node.code}) exited; see its log")
        try:
            requests.get(node.url + "/", timeout=1, headers={"Accept": "application/json"})
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{node.name} ({node.code}) did not start within {timeout:.0f} s")


def node_status(node):
    """``(doc_count, item_count)`` of a node read over HTTP, or None when it does not answer."""
    try:
        response = requests.get(node.url + "/db/_all_docs", auth=node.auth, timeout=5,
                                params={"startkey": '"item:"', "endkey": '"item:\ufff0"'})
        response.raise_for_status()
        items = len(response.json()["rows"])
        info = requests.get(node.url + "/db", auth=node.auth, timeout=5).json()
        return info["doc_count"], items
    except (requests.RequestException, ValueError, KeyError):
        return None


class Links:
    """Continuous replications between every node and its parent (both directions)."""

    def __init__(self, nodes):
        from syncd.peers import HttpPeer

        self.stop = threading.Event()
        self.threads = []
        for node in nodes:
            if node.parent is None:
                continue
            child = HttpPeer(node.url + "/db", auth=node.auth)
            parent = HttpPeer(node.parent.url + "/db", auth=node.parent.auth)
            for source, target, label in ((parent, child, "pull"), (child, parent, "push")):
                thread = threading.Thread(target=self._run, args=(source, target, node, label),
                                          name=f"{label}-{node.code}", daemon=True)
                self.threads.append(thread)

    def _run(self, source, target, node, label):
        from syncd.replicator import replicate

        delay = 1.0
        while not self.stop.is_set():
            try:
                replicate(source, target, continuous=True, stop=self.stop)
            except Exception:  # the link survives any failure: retry with back-off
                logger.warning("%s %s failed; retrying in %.0f s", label, node.code, delay,
                               exc_info=logger.isEnabledFor(logging.DEBUG))
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def start(self):
        """Start every link."""
        for thread in self.threads:
            thread.start()

    def close(self):
        """Ask every link to stop and wait briefly for them."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


def run_demo(base_dir, base_port, exit_when_synced=False, echo=click.echo, timeout=120.0):
    """Create (or reuse), start and connect the demo region; returns when stopped.

    :param exit_when_synced: stop everything once every node holds the catalog
        (used by tests and CI); otherwise run until Ctrl-C.
    :returns: the final ``{code: (doc_count, item_count)}`` of every node.
    """
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    nodes = plan_region(base_dir, base_port)
    busy = [n.port for n in nodes if not _port_free(n.port)]
    if busy:
        raise RuntimeError(f"ports {busy} are in use: choose another --base-port")
    secrets_file = base_dir / "demo-secrets.json"
    log_dir = base_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    echo(f"示范区域 / demo region in {base_dir}")
    for node in nodes:
        created = prepare_node(node, secrets_file)
        echo(f"  {'created' if created else 'reused '} {node.tier:8} {node.code} {node.name}")
    seeded = seed_catalog(nodes[0])
    echo(f"  county catalog: {seeded} item(s) added, {len(catalog_documents())} in the sample")
    links = None
    try:
        for node in nodes:
            start_serving(node, log_dir)
        for node in nodes:
            wait_until_up(node)
        links = Links(nodes)
        links.start()
        expected = len(catalog_documents())
        status = _wait_for_catalog(nodes, expected, timeout, echo)
        echo("")
        for node in nodes:
            docs, items = status.get(node.code) or ("?", "?")
            indent = {"county": "", "township": "  ", "village": "    "}[node.tier]
            echo(f"{indent}{node.url:24} {cfg.TIER_NAMES[node.tier]} {node.code} {node.name}"
                 f" · 文档 {docs} · 事项 {items}/{expected}")
        echo("")
        if exit_when_synced:
            return status
        echo("按 Ctrl-C 停止 / press Ctrl-C to stop")
        while all(node.process.poll() is None for node in nodes):
            time.sleep(1)
        dead = [n for n in nodes if n.process.poll() is not None]
        raise RuntimeError(f"{dead[0].name} ({dead[0].code}) stopped unexpectedly; see "
                           f"{log_dir}")
    except KeyboardInterrupt:
        echo("stopping …")
        return {}
    finally:
        if links:
            links.close()
        for node in nodes:
            if node.process and node.process.poll() is None:
                node.process.terminate()
        for node in nodes:
            if node.process:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
        echo("demo stopped")


def _wait_for_catalog(nodes, expected, timeout, echo):
    """Poll every node until each holds ``expected`` items, showing progress."""
    deadline = time.monotonic() + timeout
    last_line = None
    while True:
        status = {node.code: node_status(node) for node in nodes}
        synced = sum(1 for s in status.values() if s and s[1] >= expected)
        line = f"  catalog reached {synced}/{len(nodes)} nodes"
        if line != last_line:
            echo(line)
            last_line = line
        if synced == len(nodes):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"the catalog did not reach every node within {timeout:.0f} s")
        time.sleep(0.5)
