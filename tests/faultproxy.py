"""A TCP proxy that damages the link between two nodes: drops, truncates and delays.

It stands between a child's syncd and its parent's ``tongban serve`` (127.0.0.1 only).
Faults are applied to the parent's answers, chunk by chunk, with a seeded random
generator: a dropped connection closes both sides at once, a truncated one forwards part
of a chunk and then closes, a delayed one waits before forwarding. ``set_faults`` changes
the odds while it runs; ``counts`` says what it did, so a test can prove faults happened.
"""

import logging
import random
import socket
import threading
import time

logger = logging.getLogger(__name__)


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_port``, damaging answers as configured."""

    def __init__(self, target_port, *, seed=1, drop=0.0, truncate=0.0, delay=0.0,
                 max_delay=2.0):
        self.target_port = target_port
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.set_faults(drop=drop, truncate=truncate, delay=delay, max_delay=max_delay)
        self.counts = {"connections": 0, "dropped": 0, "truncated": 0, "delayed": 0}
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = threading.Event()
        self.sockets = set()
        threading.Thread(target=self._accept, daemon=True, name="faultproxy").start()

    def set_faults(self, *, drop=0.0, truncate=0.0, delay=0.0, max_delay=2.0):
        """Probabilities per forwarded chunk of the parent's answers."""
        with self.lock:
            self.drop, self.truncate, self.delay = drop, truncate, delay
            self.max_delay = max_delay

    def _roll(self):
        with self.lock:
            value = self.random.random()
            if value < self.drop:
                return "dropped", 0.0
            if value < self.drop + self.truncate:
                return "truncated", 0.0
            if value < self.drop + self.truncate + self.delay:
                return "delayed", self.random.uniform(0.05, self.max_delay)
            return None, 0.0

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()  # the parent is down: the child sees a refused link
                continue
            upstream.settimeout(None)
            with self.lock:
                self.counts["connections"] += 1
                self.sockets.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _close(self, *socks):
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            with self.lock:
                self.sockets.discard(sock)

    def _pipe(self, source, sink, damage):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if damage:
                    fault, pause = self._roll()
                    if fault:
                        with self.lock:
                            self.counts[fault] += 1
                    if fault == "dropped":
                        break
                    if fault == "truncated":
                        sink.sendall(data[:max(1, len(data) // 2)])
                        break
                    if fault == "delayed":
                        time.sleep(pause)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def close(self):
        """Stop accepting and cut every connection."""
        self.stopped.set()
        self.listener.close()
        with self.lock:
            socks = list(self.sockets)
        self._close(*socks)
