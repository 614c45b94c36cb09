"""Real processes for tests and benchmarks: tongban nodes and the npm CouchDB peers.

Everything binds to 127.0.0.1 on a free port and is stopped by ``stop()`` (fixtures
call it in teardown; an ``atexit`` hook catches the rest).
"""

import atexit
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

from shared.demo import TONGBAN

logger = logging.getLogger(__name__)

PEERS_DIR = Path(__file__).resolve().parent / "peers"
REPLICATOR_USER = "replicator"
REPLICATOR_PASSWORD = "sync-secret-123"
_RUNNING = []


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count, low=20000, high=32000):
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range.

    A block taken from the ephemeral range (where ``free_port`` draws) can be half taken
    by an outgoing connection between the check and the bind, which made the demo test flaky.
    """
    from shared.demo import port_free

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - count)
        if all(port_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {low} and {high}")


def tongban(*args, input_text=None, check=True, cwd=None):
    """Run the ``tongban`` CLI in a subprocess (the installed entry point's module)."""
    result = subprocess.run(
        [*TONGBAN, *map(str, args)],
        input=input_text, capture_output=True, text=True, cwd=cwd, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"tongban {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def wait_for_http(url, process, timeout=30.0):
    """Poll ``url`` until it answers, or fail when ``process`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class Proc:
    """A started process with a base URL; ``stop()`` ends it (and is idempotent)."""

    def __init__(self, process, url, log_path=None):
        self.process = process
        self.url = url
        self.log_path = log_path
        _RUNNING.append(self)

    def stop(self, kill=False):
        """Terminate (or kill) the process and wait for it."""
        if self.process.poll() is None:
            (self.process.kill if kill else self.process.terminate)()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self in _RUNNING:
            _RUNNING.remove(self)

    def log(self):
        """What the process wrote so far (for failure messages)."""
        if self.log_path and Path(self.log_path).exists():
            return Path(self.log_path).read_text(errors="replace")
        return ""


class Node(Proc):
    """A tongban node served by ``tongban serve`` in its own process."""

    def __init__(self, process, url, node_dir, log_path):
        super().__init__(process, url, log_path)
        self.node_dir = Path(node_dir)
        self.db_url = url + "/db"
        self.auth = (REPLICATOR_USER, REPLICATOR_PASSWORD)

    @property
    def authed_db_url(self):
        """The /db URL with the replicator's credentials in it (for PouchDB)."""
        host = self.url.split("://", 1)[1]
        return f"http://{REPLICATOR_USER}:{REPLICATOR_PASSWORD}@{host}/db"

    def session(self):
        """A requests session authenticated as the replicator account."""
        session = requests.Session()
        session.auth = self.auth
        return session


def make_node_dir(node_dir, tier="county", code="441521", name="测试县", parent=None):
    """``tongban init`` a node directory and add the replicator account."""
    args = ["init", node_dir, "--tier", tier, "--code", code, "--name", name]
    if parent:
        args += ["--parent", parent]
    tongban(*args)
    tongban("user", "add", node_dir, REPLICATOR_USER, "--role", "replicator",
            input_text=REPLICATOR_PASSWORD + "\n")
    return Path(node_dir)


def enrol_node(county_dir, parent_url, node_dir, tier, code, name=""):
    """Issue an enrolment code at the county and ``tongban init --enrol`` a new node."""
    enrol_code = tongban("enrol", county_dir, "--code", code, "--tier", tier).stdout.strip()
    tongban("init", node_dir, "--tier", tier, "--code", code, "--name", name,
            "--parent", parent_url, "--enrol", enrol_code)
    tongban("user", "add", node_dir, REPLICATOR_USER, "--role", "replicator",
            input_text=REPLICATOR_PASSWORD + "\n")
    return Path(node_dir)


def start_node(node_dir, *, port=None, create=True, **init_args):
    """Start ``tongban serve`` on a node directory (made first when ``create``)."""
    node_dir = Path(node_dir)
    if create and not (node_dir / "tongban.json").exists():
        make_node_dir(node_dir, **init_args)
    return start_serve(node_dir, port=port)


def npm_ready():
    """Install the npm peers into tests/peers/node_modules when they are missing."""
    if (PEERS_DIR / "node_modules" / "pouchdb-server").is_dir() and \
            (PEERS_DIR / "node_modules" / "pouchdb-core").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the interop tests need Node.js and npm")
    subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=PEERS_DIR, check=True,
                   timeout=600)


def start_pouchdb_server(workdir, port=None):
    """Start pouchdb-server (in-memory) as a reference CouchDB-compatible server."""
    npm_ready()
    port = port or free_port()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"pouchdb-server-{port}.log"
    log = open(log_path, "ab")
    binary = PEERS_DIR / "node_modules" / "pouchdb-server" / "bin" / "pouchdb-server"
    process = subprocess.Popen(
        ["node", str(binary), "--in-memory", "--host", "127.0.0.1", "--port", str(port),
         "--no-stdout-logs"],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    log.close()
    proc = Proc(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for_http(proc.url + "/", process)
    except RuntimeError:
        proc.stop()
        raise RuntimeError(f"pouchdb-server did not start:\n{proc.log()}") from None
    return proc


def run_node_script(script, *args, timeout=300, env=None):
    """Run a script of tests/peers with Node.js; returns its parsed JSON output (last line)."""
    npm_ready()
    result = subprocess.run(
        ["node", str(PEERS_DIR / script), *map(str, args)], capture_output=True, text=True,
        timeout=timeout, cwd=PEERS_DIR, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"node {script} failed ({result.returncode}):\n{result.stderr}\n"
                           f"{result.stdout[-4000:]}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


@atexit.register
def _stop_all():
    for proc in list(_RUNNING):
        proc.stop(kill=True)


def eventually(predicate, what, timeout=30.0, interval=0.1):
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``.

    A bound on waiting, not a timing assertion: it only turns a hang into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(interval)


def update_config(node_dir, **settings):
    """Set members of a node directory's ``tongban.json`` (sync settings, PARENT_URL)."""
    path = Path(node_dir) / "tongban.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(settings)
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return config


def start_serve(node_dir, *, port=None, env=None, wrapper=None):
    """``tongban serve`` on an existing node directory, with ``env`` added to its
    environment (``TONGBAN_CLOCK_SKEW_SECONDS``: a station whose clock is off), run under
    ``wrapper`` (a command prefix such as ``prlimit --fsize=N --``) when given."""
    node_dir = Path(node_dir)
    port = port or free_port()
    log_path = node_dir / f"serve-{port}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [*(wrapper or ()), *TONGBAN, "-v", "serve", str(node_dir), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    log.close()
    url = f"http://127.0.0.1:{port}"
    node = Node(process, url, node_dir, log_path)
    try:
        wait_for_http(url + "/", process)
    except RuntimeError:
        node.stop()
        raise RuntimeError(f"node did not start:\n{node.log()}") from None
    return node


def start_syncd(node_dir, *, env=None, verbose=1):
    """``tongban syncd`` on a node directory in its own process (log in ``syncd.log``).

    :param env: added to the environment (a skewed clock).
    :param verbose: how many ``-v``: 1 logs each replication's start and end.
    """
    node_dir = Path(node_dir)
    log_path = node_dir / "syncd.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [*TONGBAN, "syncd", str(node_dir), *(["-v"] * verbose)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    log.close()
    return Proc(process, None, log_path)


def staff_session(node, username, password):
    """A browser logged in at ``node`` as staff ``username``."""
    browser = requests.Session()
    page = browser.get(node.url + "/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = browser.post(node.url + "/login", allow_redirects=False, timeout=10,
                            data={"username": username, "password": password,
                                  "csrf_token": token})
    assert response.status_code == 302, response.text
    return browser
