"""The CouchDB replication protocol, in the order of its specification.

Section numbers refer to https://docs.couchdb.org/en/stable/replication/protocol.html
("2.4. CouchDB Replication Protocol", version 3). ``replicate()`` is the protocol; each
step it needs is a small function here, the pure ones (``replication_id``,
``compare_replication_logs``, ``build_checkpoint``) testable without any peer.

This module sees peers only (``syncd.peers.Peer``): no Flask, no peewee, no HTTP client.
"""

import email.utils
import hashlib
import json
import logging
import queue
import threading
import uuid

logger = logging.getLogger(__name__)

#: Version of our replication id scheme: hashed into the id and recorded in checkpoints,
#: so that a future scheme starts from a clean slate instead of misreading old ones.
REPLICATION_ID_VERSION = 1
#: CouchDB keeps this many entries in a checkpoint's ``history``.
HISTORY_LIMIT = 50
#: Seconds one longpoll waits in continuous mode before the stop flag is looked at again.
POLL_TIMEOUT = 10.0

#: Write errors for one document that CouchDB's replicator skips: the target will never take
#: that revision from us (a scope or validation refusal), so holding the checkpoint before
#: it would only make every later run read it again. Counted and logged, never silent.
SKIPPED_WRITE_ERRORS = ("forbidden", "unauthorized")

STAT_KEYS = ("missing_checked", "missing_found", "docs_read", "docs_written",
             "doc_write_failures")


def replication_id(source_id, target_id, doc_ids=None):
    """The replication id: the same source, target and filter always give the same id.

    As CouchDB's base id it leaves out ``continuous``, so a one-shot run and a continuous
    one share their checkpoints.

    :param source_id: ``Peer.identity()`` of the source (uuid or URL without credentials).
    :param target_id: the same for the target.
    :param doc_ids: the ``_doc_ids`` filter, or None.
    :returns: a hex string; the checkpoint lives at ``_local/<id>`` on both peers.
    """
    material = [f"tongban-replication-v{REPLICATION_ID_VERSION}", source_id, target_id,
                sorted(set(doc_ids)) if doc_ids is not None else None]
    return hashlib.md5(json.dumps(material).encode("utf-8")).hexdigest()


def _log_seq(log):
    """The sequence a checkpoint document records (CouchDB's or PouchDB's field)."""
    return log.get("source_last_seq", log.get("last_seq", 0))


def _entry_seq(entry):
    """The sequence a history entry records (CouchDB's or PouchDB's field)."""
    return entry.get("recorded_seq", entry.get("last_seq", 0))


def compare_replication_logs(source_log, target_log):
    """Find the last sequence both peers agree was replicated (spec 2.4.2.3.3).

    Both logs the same session: that session's sequence. Otherwise walk both histories
    for the most recent session that both recorded. Nothing in common: start over at 0.

    :param source_log: the source's checkpoint document, or None.
    :param target_log: the target's checkpoint document, or None.
    :returns: ``(start_seq, history)`` where history is the list to extend.
    """
    if not source_log or not target_log:
        return 0, []
    if source_log.get("session_id") and \
            source_log.get("session_id") == target_log.get("session_id"):
        return _log_seq(source_log), list(source_log.get("history") or [])
    return _compare_histories(list(source_log.get("history") or []),
                              list(target_log.get("history") or []))


def _compare_histories(source_history, target_history):
    # CouchDB's compare_rep_history: look for the head of either history in the other,
    # then drop both heads and look again.
    while source_history and target_history:
        source_head, target_head = source_history[0], target_history[0]
        if source_head.get("session_id") in _session_ids(target_history):
            return _entry_seq(source_head), source_history
        for index, entry in enumerate(source_history[1:], 1):
            if entry.get("session_id") == target_head.get("session_id"):
                # Carry the source's history from the common session on.
                return _entry_seq(target_head), source_history[index:]
        source_history, target_history = source_history[1:], target_history[1:]
    return 0, []


def _session_ids(history):
    return {entry.get("session_id") for entry in history}


def now_rfc1123():
    """The current time as CouchDB writes it in checkpoints."""
    return email.utils.formatdate(usegmt=True)


def build_history_entry(session_id, start_time, start_seq, recorded_seq, stats):
    """One ``history`` entry of a checkpoint, as CouchDB writes it."""
    entry = {
        "session_id": session_id,
        "start_time": start_time,
        "end_time": now_rfc1123(),
        "start_last_seq": start_seq,
        "end_last_seq": recorded_seq,
        "recorded_seq": recorded_seq,
    }
    entry.update({key: stats[key] for key in STAT_KEYS})
    return entry


def build_checkpoint(session_id, recorded_seq, entry, history, limit=HISTORY_LIMIT):
    """The checkpoint body written to both peers (spec 2.4.2.5.5): newest entry first,
    the history carried over from the common ancestry, at most ``limit`` entries."""
    return {
        "session_id": session_id,
        "source_last_seq": recorded_seq,
        "replication_id_version": REPLICATION_ID_VERSION,
        "history": [entry, *history][:limit],
    }


class Batch:
    """The changes read in one step and the revisions fetched for them."""

    __slots__ = ("since", "last_seq", "rows", "docs", "fetch_errors", "missing_checked",
                 "missing_found")

    def __init__(self, since, last_seq, rows, docs=(), fetch_errors=(), missing_checked=0,
                 missing_found=0):
        self.since = since
        self.last_seq = last_seq
        self.rows = rows
        self.docs = list(docs)
        self.fetch_errors = list(fetch_errors)
        self.missing_checked = missing_checked
        self.missing_found = missing_found


#: Documents carrying a scanned material (up to ~6 MB each, shared/cases/scans.py).
HEAVY_PREFIX = "scan:"
#: At most this many of them per batch, so one batch stays a few MB in memory and in its
#: requests (a village's syncd lives in ~80 MiB; the server refuses requests over 64 MiB).
MAX_HEAVY_PER_BATCH = 2


def limit_heavy(rows, last_seq, limit=MAX_HEAVY_PER_BATCH):
    """Cut ``rows`` before the first heavy document beyond ``limit``.

    :returns: ``(rows, last_seq, cut)``; when cut, ``last_seq`` is the last kept row's
        sequence and the feed must be read again from there.
    """
    heavy = 0
    for index, row in enumerate(rows):
        if str(row.get("id", "")).startswith(HEAVY_PREFIX):
            heavy += 1
            if heavy > limit:
                return rows[:index], rows[index - 1]["seq"], True
    return rows, last_seq, False


def read_batches(source, target, since, *, batch_size, doc_ids, continuous, halted,
                 poll_timeout):
    """Yield one :class:`Batch` per step of spec 2.4.2.4 and 2.4.2.5.1.

    :param halted: a callable, true when the caller wants no more batches.
    """
    while not halted():
        # 2.4.2.4.2 Read Batch of Changes (style=all_docs: every leaf, conflicts included)
        rows, last_seq = source.changes(since, limit=batch_size, doc_ids=doc_ids)
        rows, last_seq, cut = limit_heavy(rows, last_seq)
        if rows or last_seq != since:
            yield fetch_missing(source, target, Batch(since, last_seq, rows))
            since = last_seq
        if cut or len(rows) >= batch_size:
            continue
        # 2.4.2.4.4 Replication Completed: a one-shot replication ends at the feed's end
        if not continuous:
            return
        # 2.4.2.4.1 Listen to Changes Feed: continuous mode longpolls for the next change
        while not halted() and not source.wait_for_changes(since, poll_timeout,
                                                           doc_ids=doc_ids):
            pass


def fetch_missing(source, target, batch):
    """Ask the target what it lacks, then fetch exactly that from the source."""
    # 2.4.2.4.3 Calculate Revision Difference: one _revs_diff for the whole batch
    wanted = {row["id"]: [change["rev"] for change in row["changes"]] for row in batch.rows}
    batch.missing_checked = sum(len(revs) for revs in wanted.values())
    diff = target.revs_diff(wanted) if wanted else {}
    requests = [{"id": doc_id, "rev": rev}
                for doc_id, entry in diff.items() for rev in entry.get("missing", ())]
    batch.missing_found = len(requests)
    # 2.4.2.5.1 Fetch Changed Documents: one _bulk_get?revs=true for the whole batch
    for result in source.bulk_get(requests) if requests else ():
        if "ok" in result:
            batch.docs.append(result["ok"])
        else:
            batch.fetch_errors.append(result.get("error") or result)
    return batch


def first_failure_seq(batch, failed_ids):
    """The last sequence of ``batch`` before its first failed document: the furthest a
    checkpoint may go, so that the next run reads that document again."""
    safe = batch.since
    for row in batch.rows:
        if row["id"] in failed_ids:
            return safe
        safe = row["seq"]
    return batch.last_seq


class _Prefetch:
    """Run an iterator in a thread, a few items ahead: reading batch N+1 from the source
    overlaps writing batch N to the target. Errors reach the consumer in order."""

    def __init__(self, iterator, cancelled, depth=2):
        self._queue = queue.Queue(depth)
        self.cancelled = cancelled
        self._thread = threading.Thread(target=self._run, args=(iterator,),
                                        name="replicator-read", daemon=True)
        self._thread.start()

    def _run(self, iterator):
        try:
            for item in iterator:
                if not self._put(("item", item)):
                    return
        except BaseException as exc:  # handed to the consumer, who raises it
            self._put(("error", exc))
            return
        self._put(("end", None))

    def _put(self, entry):
        while not self.cancelled.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            kind, value = self._queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def close(self, timeout=None):
        """Stop the reader and wait for it (it may finish one peer call first)."""
        self.cancelled.set()
        self._thread.join(timeout)


class _Checkpointer:
    """Writes the checkpoint on both peers, keeping each side's ``_rev``."""

    def __init__(self, source, target, rep_id, session_id, start_time, start_seq, history,
                 source_log, target_log):
        self.peers = ((source, source_log), (target, target_log))
        self.revs = [log.get("_rev") if log else None for _, log in self.peers]
        self.rep_id = rep_id
        self.session_id = session_id
        self.start_time = start_time
        self.start_seq = start_seq
        self.history = history
        self.history_limit = HISTORY_LIMIT
        self.recorded_seq = start_seq

    def entry(self, stats):
        """This session's history entry with the current statistics."""
        return build_history_entry(self.session_id, self.start_time, self.start_seq,
                                   self.recorded_seq, stats)

    def record(self, seq, stats):
        """Write a checkpoint at ``seq`` on the source, then the target (as CouchDB does)."""
        if seq == self.recorded_seq:
            return
        self.recorded_seq = seq
        body = build_checkpoint(self.session_id, seq, self.entry(stats), self.history,
                                self.history_limit)
        # Both peers are written even when the first write fails: every document up to
        # ``seq`` is committed on the target, so either side may claim it. A write whose
        # answer was lost may still have been applied; stopping there would leave the
        # other side a session behind, and the next run would start from the older of
        # the two (CouchDB's history walk), reading again what it already has.
        failure = None
        for index, (peer, _) in enumerate(self.peers):
            try:
                self.revs[index] = peer.put_local(self.rep_id,
                                                  dict(body, _rev=self.revs[index]))
            except Exception as exc:  # raised below, once the other side is written too
                failure = failure or exc
        if failure is not None:
            raise failure
        logger.debug("checkpoint %s at %s", self.rep_id, seq)


def replicate(source, target, *, continuous=False, doc_ids=None, batch_size=500, stop=None,
              on_progress=None, poll_timeout=POLL_TIMEOUT, prefetch=None,
              history_limit=HISTORY_LIMIT):
    """Replicate every change of ``source`` to ``target`` (one-shot or continuous).

    Checkpoints only what the target acknowledged: a document that failed to fetch or
    write is counted in ``doc_write_failures``, logged, and the checkpoint stays before it
    for the rest of the run, so the next run reads it again. A write the target refuses
    as ``forbidden`` or ``unauthorized`` is counted and logged the same way but, as in
    CouchDB, does not hold the checkpoint back (it would be refused again).

    :param source: a :class:`syncd.peers.Peer` to read.
    :param target: a :class:`syncd.peers.Peer` to write.
    :param continuous: after catching up, longpoll the source until ``stop`` is set.
    :param doc_ids: replicate only these documents.
    :param batch_size: changes per step (one _revs_diff, _bulk_get and _bulk_docs each).
    :param stop: a ``threading.Event``; once set, the run ends after the current batch.
    :param on_progress: called with a dict of statistics and ``recorded_seq`` after each batch.
    :param poll_timeout: seconds per longpoll in continuous mode.
    :param prefetch: read the next batch in a thread while the current one is written;
        by default only when a peer is remote (two in-process stores only contend for
        the GIL: measured slower).
    :param history_limit: sessions a checkpoint keeps in its ``history`` (CouchDB's 50 by
        default; every one-shot run is a session, and the whole history is read and
        written with each checkpoint).
    :returns: this session's history entry (statistics, sequences, times).
    :raises PeerError: a peer is unreachable or refused a request; the batch under way is
        not checkpointed.
    """
    stop = stop or threading.Event()
    start_time = now_rfc1123()
    session_id = uuid.uuid4().hex
    stats = dict.fromkeys(STAT_KEYS, 0)

    # 2.4.2.1 Verify Peers, 2.4.2.2 Get Peers Information (an unreachable peer raises here)
    source.info()
    target.info()

    # 2.4.2.3 Find Common Ancestry
    # 2.4.2.3.1 Generate Replication ID
    rep_id = replication_id(source.identity(), target.identity(), doc_ids)
    # 2.4.2.3.2 Retrieve Replication Logs from Source and Target
    source_log = source.get_local(rep_id)
    target_log = target.get_local(rep_id)
    # 2.4.2.3.3 Compare Replication Logs
    start_seq, history = compare_replication_logs(source_log, target_log)
    logger.info("replicating %r -> %r (id %s) from seq %s%s", source, target, rep_id,
                start_seq, " continuously" if continuous else "")
    checkpointer = _Checkpointer(source, target, rep_id, session_id, start_time, start_seq,
                                 history, source_log, target_log)
    checkpointer.history_limit = history_limit

    # 2.4.2.4 Locate Changed Documents (in a reader thread when prefetching)
    cancelled = threading.Event()
    batches = read_batches(source, target, start_seq, batch_size=batch_size,
                           doc_ids=doc_ids, continuous=continuous,
                           halted=lambda: stop.is_set() or cancelled.is_set(),
                           poll_timeout=poll_timeout)
    reader = None
    if prefetch is None:
        prefetch = not (source.in_process and target.in_process)
    if prefetch:
        reader = _Prefetch(batches, cancelled)
        batches = iter(reader)

    held_at = None  # the checkpoint may not pass the first failed document
    try:
        for batch in batches:
            stats["missing_checked"] += batch.missing_checked
            stats["missing_found"] += batch.missing_found
            stats["docs_read"] += len(batch.docs)
            failed = [dict(error, error=error.get("error", "fetch_failed"))
                      for error in batch.fetch_errors]
            skipped = []
            # 2.4.2.5.2 Upload Batch of Changed Documents: new_edits=false keeps the
            # source's revisions and history as they are
            if batch.docs:
                write_failures = target.bulk_docs(batch.docs, new_edits=False)
                stats["docs_written"] += len(batch.docs) - len(write_failures)
                for failure in write_failures:
                    (skipped if failure.get("error") in SKIPPED_WRITE_ERRORS
                     else failed).append(failure)
            for failure in skipped + failed:
                logger.warning("replication %s: %s %s not replicated: %s %s", rep_id,
                               failure.get("id"), failure.get("rev", ""),
                               failure.get("error"), failure.get("reason", ""))
            stats["doc_write_failures"] += len(skipped) + len(failed)
            if failed and held_at is None:
                held_at = first_failure_seq(batch, {f.get("id") for f in failed})
            # 2.4.2.5.4 Ensure In Commit, then 2.4.2.5.5 Record Replication Checkpoint
            seq = held_at if held_at is not None else batch.last_seq
            if seq != checkpointer.recorded_seq:
                target.ensure_full_commit()
                checkpointer.record(seq, stats)
            if on_progress is not None:
                on_progress(dict(stats, recorded_seq=checkpointer.recorded_seq,
                                 last_seq=batch.last_seq))
            if stop.is_set():
                break
    finally:
        if reader is not None:
            reader.close(timeout=poll_timeout + 5)

    entry = checkpointer.entry(stats)
    logger.info("replication %s done: read %d, written %d, failures %d, at seq %s", rep_id,
                stats["docs_read"], stats["docs_written"], stats["doc_write_failures"],
                checkpointer.recorded_seq)
    return entry


__all__ = ["replicate", "replication_id", "compare_replication_logs", "build_checkpoint",
           "build_history_entry", "first_failure_seq", "read_batches", "fetch_missing",
           "limit_heavy"]
