"""One host process of ``bench/region.py``: many nodes served and synced in one process.

Each node is what ``tongban serve`` and ``tongban syncd`` make of its directory: the app of
``create_app(node_dir=...)`` served by its own waitress server on its own port, and a
:class:`syncd.daemon.SyncDaemon` on the same store in threads. Every child talks to its
parent over real HTTP with signed requests, in this process or another.

For the measurements each store gets one extra projection, :class:`Watch`, which notes
when the catalog release is complete and when each case's header and ``accepted`` event
arrive (inside the write transaction, at no cost worth counting), and each app is wrapped
in :class:`CountingApp`, which counts the bytes of every request and response.

The driver sends commands over a ``multiprocessing`` connection: ``(name, kwargs)``; the
answer is ``("ok", value)`` or ``("error", text)``.
"""

import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger("bench.region.host")

ITEM_PREFIX = "item:"


class Watch:
    """A projection that notes arrivals (``time.monotonic()``, system-wide on Linux).

    It runs after the catalog's activation projection in the same transaction, so the
    release counts as arrived when the node has verified and activated it.
    """

    tables = []

    def __init__(self):
        self.release_number = None
        self.complete_at = None
        self.cases = {}  # number -> {"case": t, "event": t}

    def arm(self, release_number):
        """Start waiting for release ``release_number`` to become active."""
        self.release_number, self.complete_at = release_number, None

    def apply(self, db, docs):
        """Note what ``docs`` bring (never raises, re-announces nothing)."""
        now = time.monotonic()
        catalog = False
        for doc_id, doc in docs:
            if doc is None:
                continue
            if doc_id.startswith((ITEM_PREFIX, "release:")):
                catalog = True
            elif doc_id.startswith("case:"):
                self.cases.setdefault(doc_id[5:], {}).setdefault("case", now)
            elif doc_id.startswith("event:") and doc.get("kind") == "accepted":
                self.cases.setdefault(doc.get("case"), {}).setdefault("event", now)
        if catalog and self.complete_at is None and self.release_number is not None:
            row = db.execute_sql("SELECT number FROM catalog_state WHERE id = 1").fetchone()
            if row and row[0] >= self.release_number:
                self.complete_at = now

    def reset(self, db):
        """Nothing to rebuild."""


class CountingApp:
    """WSGI middleware counting request and response bytes (request line, headers and
    body, as the HTTP layer sees them; waitress's own ``Date``/``Server`` headers are
    approximated by a constant)."""

    SERVER_HEADERS = len("Server: tongban\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                         "Connection: keep-alive\r\n")

    def __init__(self, app):
        self.app = app
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        size = len(environ.get("REQUEST_METHOD", "")) + len(environ.get("REQUEST_URI", "")) + 12
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                size += len(key) - 5 + len(value) + 4
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                size += len(key) + len(environ[key]) + 4
        size += 2 + int(environ.get("CONTENT_LENGTH") or 0)
        out = [0]

        def counting_start(status, headers, exc_info=None):
            out[0] += 9 + len(status) + 2 + self.SERVER_HEADERS + 2 + sum(
                len(k) + len(v) + 4 for k, v in headers)
            return start_response(status, headers, exc_info)

        with self.lock:
            self.requests += 1
            self.bytes_in += size
        return _CountedBody(self.app(environ, counting_start), self, out)


class _CountedBody:
    """The response iterable, counting chunks as they go out (longpolls stream)."""

    def __init__(self, body, owner, out):
        self.body, self.owner, self.out = body, owner, out

    def __iter__(self):
        for chunk in self.body:
            self.out[0] += len(chunk)
            yield chunk

    def close(self):
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            with self.owner.lock:
                self.owner.bytes_out += self.out[0]
            self.out[0] = 0


class HostedNode:
    """One node of this host: app, server, daemon."""

    def __init__(self, spec):
        from shared.app import create_app

        self.spec = spec
        self.code = spec["code"]
        self.tier = spec["tier"]
        self.app = create_app(node_dir=spec["dir"])
        self.store = self.app.extensions["store"]
        self.watch = Watch()
        self.store.add_projection(self.watch)
        self.counter = CountingApp(self.app)
        self.server = None
        self.daemon = None
        self.daemon_thread = None

    def serve(self):
        """Start its waitress server (as ``tongban serve`` configures it) in a thread."""
        import waitress

        config = self.app.config
        self.server = waitress.create_server(
            self.counter, host="127.0.0.1", port=self.spec["port"],
            threads=self.spec["threads"], ident="tongban",
            channel_timeout=int(config["LONGPOLL_MAX_TIMEOUT"]) + 30,
            max_request_body_size=config["MAX_REQUEST_SIZE"],
            clear_untrusted_proxy_headers=True,
            # A host holds thousands of descriptors; select() stops at 1024.
            asyncore_use_poll=True)
        threading.Thread(target=self.server.run, daemon=True,
                         name=f"serve-{self.code}").start()

    def start_sync(self, stop):
        """Start its sync daemon (as ``tongban syncd`` runs it) in a thread."""
        from syncd.daemon import SyncDaemon

        self.daemon = SyncDaemon(self.app.config, self.store, app=self.app)
        self.daemon_thread = threading.Thread(target=self.daemon.run, args=(stop,),
                                              daemon=True, name=f"syncd-{self.code}")
        self.daemon_thread.start()

    def links(self):
        """``[(state, pending_pull, pending_push, failures)]`` of its links."""
        if self.daemon is None:
            return []
        return [(link.state, link.row.get("pending_pull"), link.row.get("pending_push"),
                 link.backoff.failures) for link in self.daemon.links]


class Host:
    """The nodes of this process and the commands the driver sends."""

    def __init__(self, index, specs, region_key):
        self.index = index
        self.specs = specs
        self.region_key = region_key
        self.nodes = {}
        self.stop = threading.Event()
        self.case_seq = {}

    # -- commands ------------------------------------------------------------------------

    def cmd_open(self):
        """Create every node's app and start its server; returns the count."""
        for spec in self.specs:
            node = HostedNode(spec)
            node.serve()
            self.nodes[node.code] = node
        return len(self.nodes)

    def cmd_start_sync(self):
        """Start every node's sync daemon."""
        for node in self.nodes.values():
            node.start_sync(self.stop)
        return len(self.nodes)

    def cmd_status(self):
        """Link states and waiting counts, summed over this host's nodes."""
        states, waiting, failures = {}, 0, 0
        for node in self.nodes.values():
            for state, pull, push, failed in node.links():
                states[state] = states.get(state, 0) + 1
                waiting += (pull or 0) + (push or 0)
                failures += failed
        times = os.times()
        return {"states": states, "waiting": waiting, "failures": failures,
                "threads": threading.active_count(), "rss_kib": _rss_kib(),
                "cpu": times.user + times.system}

    def cmd_switch_interval(self, seconds):
        """Set this process's GIL switch interval (``sys.setswitchinterval``)."""
        import sys

        sys.setswitchinterval(seconds)

    def cmd_arm(self, number):
        """Arm every node's watch for release ``number``."""
        for node in self.nodes.values():
            node.watch.arm(number)

    def cmd_release(self, count, number):
        """Write a catalog release at the county (this host must hold it)."""
        from region_build import catalog_release

        from shared import identity

        county = next(n for n in self.nodes.values() if n.tier == "county")
        started = time.monotonic()
        # Signing is part of publishing: it counts from here.
        docs, release = catalog_release(count, number,
                                        identity.load_private_key(county.spec["dir"]))
        results = county.store.bulk_docs(docs + [release])
        finished = time.monotonic()
        failed = [r for r in results if "error" in r]
        if failed:
            raise RuntimeError(f"release not written: {failed[:3]}")
        return {"t0": started, "t1": finished}

    def cmd_catalog(self):
        """``{code: complete_at or None}`` of every node."""
        return {code: node.watch.complete_at for code, node in self.nodes.items()}

    def cmd_case(self, village):
        """Accept a case at ``village`` (handler: its township); ``(number, t0)``."""
        from shared import casedocs, identity
        from shared.hlc import NodeClock

        node = self.nodes[village]
        clock = NodeClock(node.store)
        hlc = clock.now()
        seq = self.case_seq[village] = self.case_seq.get(village, 0) + 1
        number = casedocs.case_number(village, casedocs.day_of(hlc), seq)
        applicant = identity.person_key(self.region_key, f"44152119800101{seq:04d}")
        header = casedocs.case_header(number, "item:GD-LS-01-001", village, village[:9],
                                      applicant, hlc)
        event = casedocs.case_event(number, "accepted", village, clock.now(),
                                    note="受理 / bench")
        started = time.monotonic()
        results = node.store.bulk_docs([header, event])
        if any("error" in r for r in results):
            raise RuntimeError(f"case not written: {results}")
        return number, started

    def cmd_cases(self):
        """``{code: {number: {"case": t, "event": t}}}`` for the township and county."""
        return {code: dict(node.watch.cases) for code, node in self.nodes.items()
                if node.tier != "village"}

    def cmd_bytes(self):
        """``{tier: (requests, bytes in, bytes out)}`` served by this host's nodes."""
        totals = {}
        for node in self.nodes.values():
            c = node.counter
            with c.lock:
                row = totals.setdefault(node.tier, [0, 0, 0])
                row[0] += c.requests
                row[1] += c.bytes_in
                row[2] += c.bytes_out
        return totals

    def cmd_stop(self, timeout=30.0):
        """Stop every daemon (each finishes its batch and records its status)."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            if node.daemon_thread is not None:
                node.daemon_thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return True


def _rss_kib():
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def host_main(conn, index, specs, region_key, log_dir):
    """The host process: answer the driver's commands until ``stop``."""
    logging.basicConfig(
        level=logging.WARNING, filename=str(Path(log_dir) / f"host-{index}.log"),
        format=f"%(asctime)s host{index} %(levelname)s %(name)s: %(message)s")
    host = Host(index, specs, region_key)
    parent = os.getppid()

    def orphaned():
        # A driver killed without stopping us: nobody will read the results.
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True, name="orphan-watch").start()
    while True:
        try:
            name, kwargs = conn.recv()
        except EOFError:
            name, kwargs = "stop", {}
        try:
            answer = ("ok", getattr(host, f"cmd_{name}")(**kwargs))
        except Exception as exc:  # reported to the driver, which stops the run
            logger.exception("command %s failed", name)
            answer = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(answer)
        except (BrokenPipeError, EOFError):
            name = "stop"
        if name == "stop":
            break
    # Daemon threads (servers, longpolls) end with the process.
    os._exit(0)
