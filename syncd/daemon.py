"""The sync daemon: keeps this node's store in step with its parent (and a region hub).

A *link* pairs the local store with one remote database: ``parent`` (``PARENT_URL``,
its ``/db``) for a township or village, ``upstream`` (``UPSTREAM_URL``, any
CouchDB-compatible database such as pouchdb-server or an Apache CouchDB cluster) for a
county. A *round* on a link is a one-shot pull then a one-shot push with
:func:`syncd.replicator.replicate`, which keeps its checkpoints in ``_local`` documents on
both sides, so a restarted daemon resumes where it stopped.

What starts a round:

* APScheduler, every ``SYNC_INTERVAL`` seconds (the safety net);
* a longpoll on the remote's ``_changes`` (one thread per link, only while the link is
  up): a change there starts a pull at once;
* a local write: ``tongban serve`` writes from another process, so the trigger loop
  polls the store's ``update_seq`` every ``SYNC_WATCH_INTERVAL`` seconds (one indexed
  read) and starts a push when it moved;
* a failed round's retry time: exponential back-off with full jitter (base
  ``SYNC_BACKOFF_BASE``, cap ``SYNC_MAX_BACKOFF``), reset by a success; a link the remote
  refuses (401/403) waits the cap.

Rounds run in one thread (the trigger loop, or the caller of :meth:`SyncDaemon.run_once`);
after each, the link's row in ``sync_link`` (``shared.syncstatus``) says how it went.
"""

import logging
import random
import threading
import time
import urllib.parse

from shared import config as cfg
from shared import errors, heartbeat, syncstatus
from shared.clock import time as clock_time
from syncd.peers import HttpPeer, LocalPeer
from syncd.replicator import STAT_KEYS, replicate, replication_id

logger = logging.getLogger(__name__)

#: Settings the daemon reads, declared with every other setting in shared/config.py.
DEFAULTS = {key: value for key, value in cfg.DEFAULTS.items()
            if key.startswith("SYNC_") or key == "UPSTREAM_URL"}


#: A first sync larger than this many documents is logged as a warning.
LARGE_SCOPE = 100_000
#: Seconds between the progress lines of a first sync.
PROGRESS_EVERY = 5.0

#: Sessions each checkpoint keeps. Every round is a one-shot replication and so a new
#: session; with CouchDB's 50, each checkpoint read and written (by every round, over the
#: link) carries ~15 KB of history, most of the bytes a case moves. A few sessions are
#: enough to find the common ancestry after a round cut between its two checkpoint writes.
ROUND_HISTORY = 5

#: Status members a restarted daemon takes over from the previous run's row.
CARRIED_OVER = ("last_success", "last_pull", "last_push", "last_attempt", "error_kind",
                "error")


def settings(config):
    """The daemon's settings from ``config`` over :data:`DEFAULTS`, validated.

    :raises ConfigurationError: a number that is not positive.
    """
    merged = dict(DEFAULTS)
    merged.update({key: config[key] for key in DEFAULTS if config.get(key) is not None})
    for key, value in merged.items():
        if key == "UPSTREAM_URL":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise errors.ConfigurationError(f"{key} must be a positive number, not {value!r}")
    for key in ("PARENT_URL", "UPSTREAM_URL"):
        url = config.get(key)
        if url and not str(url).startswith(("http://", "https://")):
            raise errors.ConfigurationError(f"{key} must be an http(s) URL, not {url!r}")
    return merged


def parent_db_url(url):
    """The database URL of a parent node: its ``/db`` unless the URL names it already."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if path.rsplit("/", 1)[-1] != "db":
        path += "/db"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def make_signer(config, clock=clock_time):
    """The node's request signer when its directory holds its key, else None.

    :param clock: the node's wall clock (the signer corrects it by the parent's time).
    :raises ConfigurationError: the key file is unreadable.
    """
    from shared import identity

    node_dir = config.get("NODE_DIR")
    key = identity.load_private_key(node_dir) if node_dir else None
    if key is None:
        return None
    return identity.RequestSigner(config["NODE_CODE"], key, clock=clock)


class Backoff:
    """Exponential back-off with full jitter: after the n-th failure in a row, wait a
    uniformly random time in ``[0, min(cap, base * 2**(n-1))]``.

    Full jitter spreads 400 villages that lost their township at the same moment over
    the whole window instead of letting them retry in step.

    :param rng: a callable returning a float in [0, 1) (injected by tests).
    """

    def __init__(self, base=1.0, cap=300.0, rng=random.random):
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def ceiling(self):
        """The longest wait the next failure may get."""
        return min(self.cap, self.base * 2 ** self.failures)

    def failed(self):
        """Count a failure; returns the seconds to wait before the next attempt."""
        ceiling = self.ceiling()
        self.failures += 1
        return self.rng() * ceiling

    def refused(self):
        """Count a refusal (the remote will not change its mind soon): wait the cap."""
        self.failures += 1
        return self.cap

    def reset(self):
        """A success: the next failure starts from ``base`` again."""
        self.failures = 0


def classify(exc):
    """What kind of failure ``exc`` is, for people: ``(kind, detail)``.

    Kinds are the keys of ``shared.syncstatus.ERROR_MESSAGES``.
    """
    detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, errors.PeerError) \
        else str(exc)
    if not isinstance(exc, errors.PeerError):
        return ("local" if isinstance(exc, errors.TongbanError) else "internal"), detail
    if exc.kind:
        return exc.kind, detail
    if exc.status in (401, 403):
        return "refused", detail
    if exc.status is not None and exc.status >= 500:
        return "server_error", detail
    if exc.status is not None:
        return "bad_answer", detail
    if isinstance(exc.original, TimeoutError):
        return "timeout", detail
    if isinstance(exc.original, ValueError):
        return "bad_answer", detail
    return "unreachable", detail


class Link:
    """One remote database the node syncs with, and what the daemon knows about it."""

    def __init__(self, name, remote, watcher, local, backoff):
        self.name = name
        self.remote = remote
        self.watcher = watcher  # a second peer for the longpoll, never used by rounds
        self.backoff = backoff
        self.lock = threading.Lock()
        #: Notified after every round, so the longpoll knows when to look again.
        self.changed = threading.Condition()
        self.pull_id = replication_id(remote.identity(), local.identity())
        self.push_id = replication_id(local.identity(), remote.identity())
        self.pull_seq = _checkpoint_seq(local, self.pull_id)  # remote seq, pulled to
        self.pull_seen = self.pull_seq  # remote seq the last pull read (longpoll since)
        self.push_seq = _checkpoint_seq(local, self.push_id) or 0  # local seq, pushed to
        self.pull_rounds = 0
        self.next_retry = None
        self.want_pull = self.want_push = False
        self.last_entries = {}
        self.row = {"link": name, "peer": remote.identity(), "state": "starting",
                    "failures": 0, "doc_failures": 0, "pending_pull": None,
                    "pending_push": None}

    @property
    def state(self):
        """``starting``, ``up``, ``backing_off``, ``refused`` or ``stopped``."""
        return self.row["state"]

    def close(self):
        """Close the link's connections."""
        self.remote.close()
        if self.watcher is not None:
            self.watcher.close()


def _checkpoint_seq(local, rep_id):
    """The source sequence of the checkpoint ``rep_id`` this store holds, or None."""
    log = local.get_local(rep_id)
    if not log:
        return None
    return log.get("source_last_seq", log.get("last_seq"))


class SyncDaemon:
    """Rounds, triggers and back-off for every link of one node.

    :param config: the node's settings (``TIER``, ``NODE_CODE``, ``PARENT_URL``,
        ``UPSTREAM_URL``, ``NODE_DIR`` and the ``SYNC_*`` keys of :data:`DEFAULTS`).
    :param store: the node's :class:`~shared.store.store.Store` (serve may use the same
        file from another process).
    :param clock: unix time now; :param rng: jitter source (both injected by tests).
    :param stop_event: once set, rounds end after their current batch.
    :param app: the Flask app, for the tier's scheduled jobs (their app context).
    :raises ConfigurationError: invalid settings.
    """

    def __init__(self, config, store, *, clock=clock_time, rng=random.random,
                 stop_event=None, app=None):
        self.config = config
        self.options = settings(config)
        self.store = store
        self.clock = clock
        self.app = app
        self.stop_event = stop_event or threading.Event()
        self.local = LocalPeer(store, name="local")
        self.table = syncstatus.LinkStatusTable(store.db)
        self.table.ensure()
        heartbeat.ensure(store.db)
        self.links = self._build_links(rng)
        self.table.remove_except([link.name for link in self.links])
        self._wake = threading.Condition()
        self._seen_seq = store.update_seq()
        self._last_heartbeat = None

    def _build_links(self, rng):
        urls = []
        if self.config.get("PARENT_URL"):
            urls.append(("parent", parent_db_url(self.config["PARENT_URL"])))
        if self.options["UPSTREAM_URL"]:
            urls.append(("upstream", self.options["UPSTREAM_URL"]))
        signer = make_signer(self.config, self.clock) \
            if urls and urls[0][0] == "parent" else None
        links = []
        for name, url in urls:
            # Credentials in the URL are an explicit choice (a replicator account, a hub's
            # user) and win; otherwise a node signs its requests to its parent.
            has_password = urllib.parse.urlsplit(url).username is not None
            link_signer = signer if name == "parent" and not has_password else None
            timeout = self.options["SYNC_REQUEST_TIMEOUT"]
            try:
                remote = HttpPeer(url, timeout=timeout, signer=link_signer)
                watcher = HttpPeer(url, signer=link_signer,
                                   timeout=self.options["SYNC_LONGPOLL_TIMEOUT"] + timeout)
            except errors.PeerError as exc:
                raise errors.ConfigurationError(f"{name} link: {exc}") from exc
            backoff = Backoff(self.options["SYNC_BACKOFF_BASE"],
                              self.options["SYNC_MAX_BACKOFF"], rng)
            link = Link(name, remote, watcher, self.local, backoff)
            previous = self.table.get(name)
            if previous and previous["peer"] == link.row["peer"]:
                # A restart keeps what is known about the past (last success, last error).
                link.row.update({key: previous[key] for key in CARRIED_OVER})
            links.append(link)
        return links

    # -- one round -----------------------------------------------------------------------

    def run_once(self, now=None):
        """One pull+push round on every link that is not waiting out a back-off.

        Never raises: a failure is logged and recorded in the link's status row.

        :param now: unix time of the round (tests inject it; the clock otherwise).
        :returns: ``{link: True | False | None}``: succeeded, failed, skipped (its retry
            time has not come).
        """
        results = {}
        for link in self.links:
            at = self.clock() if now is None else now
            if link.next_retry is not None and at < link.next_retry:
                results[link.name] = None
                continue
            results[link.name] = self._round(link, at)
        self._report(self.clock() if now is None else now)
        return results

    def _round(self, link, now, *, pull=True, push=True):
        """Replicate over ``link`` and record the outcome; True on success."""
        with link.lock:
            link.row["last_attempt"] = now
            try:
                self._replicate(link, pull, push)
            except Exception as exc:
                self._failed(link, now, exc)
                ok = False
            else:
                self._succeeded(link, now, pull, push)
                ok = True
            finally:
                if pull:
                    link.pull_rounds += 1
                with link.changed:
                    link.changed.notify_all()
            self._save(link, now)
            return ok

    def _replicate(self, link, pull, push):
        link.last_entries = {}
        if pull:
            self._pull(link)
        if push:
            entry = replicate(self.local, link.remote, stop=self.stop_event,
                              batch_size=int(self.options["SYNC_BATCH_SIZE"]),
                              history_limit=ROUND_HISTORY)
            link.push_seq = entry["recorded_seq"]
            link.last_entries["push"] = entry
            if entry["docs_written"] and not self.stop_event.is_set():
                # What we just wrote is now in the remote's feed after our pull
                # checkpoint: read past it at once (nothing is missing, so nothing is
                # fetched), or the longpoll and the waiting count take it for news.
                self._pull(link)
                pull = True
        if pull:
            # What is still waiting up there (changes that came in during the round).
            link.row["pending_pull"] = link.remote.pending(link.pull_seq)
        link.row["pending_push"] = self.local.pending(link.push_seq)

    def _pull(self, link):
        seen = []
        initial = None
        if link.pull_seq is None:
            # First sync: say how much this node's scope holds before it starts, and
            # warn when it is large (a village PC on a slow link may need hours).
            initial = link.remote.pending(0)
            if initial is not None:
                log = logger.warning if initial > LARGE_SCOPE else logger.info
                log("initial sync over %s: %d documents in this node's scope", link.name,
                    initial)
                link.row["pending_pull"] = initial

        said = [time.monotonic()]

        def progress(stats):
            seen.append(stats["last_seq"])
            # A line every few seconds, not one per batch (thousands on a first sync).
            if initial and time.monotonic() - said[0] >= PROGRESS_EVERY:
                said[0] = time.monotonic()
                logger.info("initial sync over %s: %d of ~%d documents", link.name,
                            stats["docs_read"], initial)

        entry = replicate(link.remote, self.local, stop=self.stop_event,
                          batch_size=int(self.options["SYNC_BATCH_SIZE"]),
                          on_progress=progress, history_limit=ROUND_HISTORY)
        link.pull_seq = entry["recorded_seq"]
        link.pull_seen = seen[-1] if seen else entry["recorded_seq"]
        previous = link.last_entries.get("pull")
        if previous is not None:
            entry = dict(entry, **{key: previous[key] + entry[key] for key in STAT_KEYS})
        link.last_entries["pull"] = entry

    def _succeeded(self, link, now, pull, push):
        link.backoff.reset()
        link.next_retry = None
        refused = sum(entry["doc_write_failures"] for entry in link.last_entries.values())
        link.row.update(state="up", last_success=now, failures=0, next_retry=None,
                        doc_failures=refused, error_kind="doc_failures" if refused else None,
                        error=f"{refused} documents not replicated" if refused else None)
        if "pull" in link.last_entries:
            link.row["last_pull"] = now
        if push:
            link.row["last_push"] = now
        logger.debug("%s link: round done (%s)", link.name, self.summary(link))

    def _failed(self, link, now, exc):
        kind, detail = classify(exc)
        if kind in ("refused", "clock_skew"):
            delay, state = link.backoff.refused(), "refused"
        else:
            delay, state = link.backoff.failed(), "backing_off"
        link.next_retry = now + delay
        if kind == "internal":
            logger.exception("%s link: round failed", link.name)
        else:
            logger.warning("%s link: %s (%s); next try in %.1f s", link.name,
                           syncstatus.describe_error(kind, link.name), detail, delay)
        link.row.update(state=state, error_kind=kind, error=detail, next_retry=link.next_retry,
                        failures=link.backoff.failures)
        try:
            link.row["pending_push"] = self.local.pending(link.push_seq)
        except Exception:
            logger.exception("%s link: cannot count the documents waiting", link.name)

    def _save(self, link, now):
        """Write ``link``'s status row; a failure to do so is logged, never raised."""
        try:
            self.table.save(dict(link.row, updated=now, push_seq=link.push_seq))
        except Exception:
            logger.exception("%s link: cannot record its status", link.name)

    def summary(self, link):
        """One line on ``link``'s last round for logs and ``syncd --once``."""
        parts = [f"{link.name} {link.state}"]
        for direction in ("pull", "push"):
            entry = link.last_entries.get(direction)
            if entry is not None:
                parts.append(f"{direction}: {entry['docs_read']} read, "
                             f"{entry['docs_written']} written, "
                             f"{entry['doc_write_failures']} failures")
        if link.row.get("error_kind") and link.state != "up":
            parts.append(syncstatus.describe_error(link.row["error_kind"], link.name))
            parts.append(str(link.row.get("error")))
        parts.append(f"waiting: push {link.row.get('pending_push')}, "
                     f"pull {link.row.get('pending_pull')}")
        return "; ".join(parts)

    def _report(self, now):
        """Write this node's ``status:<code>`` document when it is due; never raises."""
        if not self.links:
            return
        main = self.links[0]
        # The signer learnt how far our clock is from the parent's (0 when it never said).
        offset = getattr(main.remote.signer, "offset", 0.0) or 0.0
        code = self.config["NODE_CODE"]
        try:
            doc = syncstatus.build_status_doc(
                code, self.config["TIER"], main.row, now + offset,
                syncstatus.catalog_report(self.store.db),
                pending_cases=syncstatus.unsent_cases(self.store, code)["count"])
            try:
                old = self.store.get(doc["_id"])
            except errors.NotFound:
                old = None
            if not syncstatus.status_doc_due(old, doc, now + offset):
                return
            if old is not None:
                doc["_rev"] = old["_rev"]
            self.store.put(doc)
        except errors.Conflict:
            logger.debug("status document changed under us; written next time")
        except Exception:
            logger.exception("cannot write the node's status document")

    # -- triggers ------------------------------------------------------------------------

    def request_round(self):
        """Ask for a pull and a push on every link (the scheduler's periodic job)."""
        self._request(self.links, pull=True, push=True)

    def _request(self, links, *, pull=False, push=False):
        with self._wake:
            for link in links:
                link.want_pull = link.want_pull or pull
                link.want_push = link.want_push or push
            self._wake.notify_all()

    def step(self, now=None):
        """One pass of the trigger loop: notice local writes, run the rounds asked for
        and the retries that are due, keep the status rows fresh. Never raises."""
        try:
            seq = self.store.update_seq()
        except Exception:
            logger.exception("cannot read the local update sequence")
            seq = self._seen_seq
        wrote = seq > self._seen_seq
        if wrote:
            self._seen_seq = seq
            self._request(self.links, push=True)
        ran = False
        for link in self.links:
            at = self.clock() if now is None else now
            with self._wake:
                pull, push = link.want_pull, link.want_push
            if link.next_retry is not None:
                if at < link.next_retry:
                    if wrote:
                        self._count_waiting(link, at)
                    continue
                pull = push = True  # a retry is a full round
            if not (pull or push):
                continue
            with self._wake:
                link.want_pull = link.want_push = False
            self._round(link, at, pull=pull, push=push)
            ran = True
        at = self.clock() if now is None else now
        if ran or self._last_heartbeat is None or \
                at - self._last_heartbeat >= syncstatus.HEARTBEAT:
            self._last_heartbeat = at
            try:
                heartbeat.beat(self.store.db, "syncd", at)  # for /healthz
                self.table.touch([link.name for link in self.links], at)
            except Exception:
                logger.exception("cannot record the heartbeat")
            self._report(at)

    def _count_waiting(self, link, now):
        """A local write while the link is down: show it as waiting at once."""
        try:
            link.row["pending_push"] = self.local.pending(link.push_seq)
        except Exception:
            logger.exception("%s link: cannot count the documents waiting", link.name)
            return
        self._save(link, now)

    def _longpoll(self, link):
        """Wait on the remote's changes feed while the link is up; ask for a pull when
        something arrives. Never polls a link that is down: the rounds' back-off rules."""
        errors_in_row = Backoff(self.options["SYNC_BACKOFF_BASE"],
                                self.options["SYNC_MAX_BACKOFF"])
        while not self.stop_event.is_set():
            with link.changed:
                if link.state != "up" or link.pull_seen is None:
                    link.changed.wait(1.0)
                    continue
                since, rounds = link.pull_seen, link.pull_rounds
            try:
                changed = link.watcher.wait_for_changes(
                    since, self.options["SYNC_LONGPOLL_TIMEOUT"])
                errors_in_row.reset()
            except Exception as exc:
                # Let a pull round find out what is wrong (and back off); pause this
                # feed by its own back-off in case only long requests fail (a proxy).
                logger.info("%s link: changes feed failed (%s)", link.name, exc)
                changed = True
                self.stop_event.wait(errors_in_row.failed())
            if self.stop_event.is_set():
                continue
            if not changed:
                self._confirmed(link)
                continue
            self._request([link], pull=True)
            with link.changed:
                while not self.stop_event.is_set() and link.pull_rounds == rounds:
                    link.changed.wait(1.0)

    def _confirmed(self, link):
        """The parent answered a longpoll with nothing new: this node holds everything it
        may see there, so the link counts as synced now (its lag stays under a longpoll's
        length between the rare periodic rounds). Only for a link that is up."""
        with link.changed:
            if link.state != "up":
                return
            now = self.clock()
            link.row["last_success"] = max(now, link.row.get("last_success") or 0)
        try:
            self.table.confirm(link.name, now)
        except Exception:
            logger.exception("%s link: cannot record the contact", link.name)

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop_event=None):
        """Sync until ``stop_event`` is set (SIGTERM, SIGINT): scheduler, longpolls and
        the trigger loop; the round under way finishes its batch and checkpoints."""
        from syncd.scheduler import build_scheduler

        if stop_event is not None:
            self.stop_event = stop_event
        now = self.clock()
        for link in self.links:
            link.row["state"] = "starting"
            self._save(link, now)
        scheduler = build_scheduler(self.config, self, app=self.app)
        scheduler.start()
        for link in self.links:
            threading.Thread(target=self._longpoll, args=(link,), daemon=True,
                             name=f"longpoll-{link.name}").start()
        logger.info("syncd for %s node %s: %s", self.config["TIER"], self.config["NODE_CODE"],
                    ", ".join(f"{l.name} {l.remote.identity()}" for l in self.links)
                    or "no links (jobs only)")
        self.request_round()
        try:
            while not self.stop_event.is_set():
                self.step()
                with self._wake:
                    if not any(l.want_pull or l.want_push for l in self.links):
                        self._wake.wait(self.options["SYNC_WATCH_INTERVAL"])
        finally:
            scheduler.shutdown(wait=True)
            now = self.clock()
            for link in self.links:
                link.row.update(state="stopped", next_retry=None)
                self._save(link, now)
            self.close()
            logger.info("syncd stopped")

    def close(self):
        """Close every connection (the longpoll threads end on their next return)."""
        self.stop_event.set()
        for link in self.links:
            link.close()
        self.local.close()
