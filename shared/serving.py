"""What keeps ``tongban serve`` up under idle sockets, slow headers and floods of feeds.

* waitress's settings (:func:`waitress_options`): how many connections it keeps, how long
  an idle one lives, and ``channel_request_lookahead`` so that a running request sees its
  client leave (``environ["waitress.client_disconnected"]``);
* a time limit on request headers (:func:`limit_header_time`), which waitress lacks: a
  client trickling a header byte by byte is closed after ``SERVE_HEADER_TIMEOUT``;
* :class:`FeedLimits`: longpoll and continuous feeds held open at once, per principal and
  in all, so that feeds never hold every serve thread (the changes view asks it).

Settings (shared/config.py): ``SERVE_CONNECTION_LIMIT``, ``SERVE_CHANNEL_TIMEOUT``,
``SERVE_HEADER_TIMEOUT``, ``SERVE_CLEANUP_INTERVAL``, ``FEED_MAX_CONCURRENT``,
``FEED_MAX_PER_PRINCIPAL``.
"""

import logging
import threading
import time
import weakref

logger = logging.getLogger(__name__)

#: Threads ``tongban serve`` runs when nobody says (its ``--threads`` default).
DEFAULT_THREADS = 64
#: File descriptors beyond the connections: the store, logs, syncd's sockets, the trigger.
SPARE_FILES = 128


def waitress_options(config, threads):
    """The keyword arguments of ``waitress.create_server`` for a node's ``config``."""
    return {
        "threads": threads,
        "ident": "tongban",
        "connection_limit": int(config["SERVE_CONNECTION_LIMIT"]),
        # Only connections without a running request time out: a longpoll is not idle.
        "channel_timeout": max(1, int(config["SERVE_CHANNEL_TIMEOUT"])),
        "cleanup_interval": max(1, int(config["SERVE_CLEANUP_INTERVAL"])),
        # Keep reading while a request runs (one request ahead at most): a client that
        # goes away is noticed at once, and a queued request of a gone client is skipped.
        "channel_request_lookahead": 1,
        # poll(2) has no FD_SETSIZE (1024) ceiling on hundreds of connections.
        "asyncore_use_poll": True,
        "max_request_body_size": config["MAX_REQUEST_SIZE"],
        "clear_untrusted_proxy_headers": True,
    }


#: glibc's ``mallopt`` parameter number of the mmap threshold (malloc.h).
M_MMAP_THRESHOLD = -3
#: Blocks from this size up are mapped on their own and given back to the system when freed.
LARGE_BLOCK = 1024 * 1024


def return_large_blocks(threshold=LARGE_BLOCK):
    """Have glibc give large blocks back to the system as soon as they are freed.

    By default glibc raises its mmap threshold to the size of the largest block freed so
    far, so that after the first password check (scrypt: 16 MiB) every later one is
    carved from a thread's heap arena and stays there: a process whose checks ran on many
    threads or arenas kept 16 MiB in each. A fixed threshold keeps the 16 MiB of a check
    (and large request bodies) only while it runs. Returns False where there is no glibc.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def raise_open_file_limit(connections):
    """Raise the soft limit of open files to fit ``connections`` (never above the hard one)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            logger.warning("cannot raise the open files limit from %s to %s", soft, target)


def limit_header_time(server, seconds):
    """Close connections whose request header has not arrived within ``seconds``.

    Wraps the waitress server's periodic ``maintenance`` (every ``cleanup_interval``): a
    connection seen with the same unfinished header at two looks ``seconds`` apart is
    closed. A body still arriving is not limited (a village link uploads slowly), nor is
    a connection whose request is running.
    """
    first_seen = weakref.WeakKeyDictionary()  # channel -> (its partial request, when)
    maintenance = server.maintenance

    def maintenance_with_header_timeout(now):
        maintenance(now)
        at, closed = time.monotonic(), 0
        for channel in list(server.active_channels.values()):
            partial = channel.request
            if partial is None or partial.headers_finished or channel.requests:
                first_seen.pop(channel, None)
                continue
            seen = first_seen.get(channel)
            if seen is None or seen[0] is not partial:
                first_seen[channel] = (partial, at)
            elif at - seen[1] >= seconds and not channel.will_close:
                channel.will_close = True
                closed += 1
        if closed:
            logger.info("closing %d connections: no complete request header in %s s",
                        closed, seconds)

    server.maintenance = maintenance_with_header_timeout
    return server


class FeedLimits:
    """Feeds open at once, per principal and in all (one object per app)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.total = 0
        self.by_principal = {}

    @staticmethod
    def limits(config):
        """``(in all, per principal)`` from the app's config; in all stays below the
        threads serve runs (``SERVE_THREADS``, set by ``tongban serve``)."""
        threads = int(config.get("SERVE_THREADS") or DEFAULT_THREADS)
        total = config.get("FEED_MAX_CONCURRENT")
        if total is None:
            total = threads * 3 // 4
        total = max(1, min(int(total), threads - 1))
        return total, max(1, int(config.get("FEED_MAX_PER_PRINCIPAL") or 1))

    def acquire(self, key, total, per_principal):
        """Take a slot for ``key``: None when taken, else ``"principal"`` or ``"total"``
        saying which limit refused it."""
        with self._lock:
            held = self.by_principal.get(key, 0)
            if held >= per_principal:
                return "principal"
            if self.total >= total:
                return "total"
            self.by_principal[key] = held + 1
            self.total += 1
        return None

    def release(self, key):
        """Give back a slot taken for ``key``."""
        with self._lock:
            held = self.by_principal.get(key, 0)
            if held <= 1:
                self.by_principal.pop(key, None)
            else:
                self.by_principal[key] = held - 1
            if held:
                self.total -= 1
