"""What ``tongban replicate`` and ``tongban syncd`` run."""

import logging
import signal
import threading
import time

import click

from shared.errors import ConfigurationError, PeerError
from syncd.peers import peer_from_string
from syncd.replicator import replicate

logger = logging.getLogger(__name__)

#: Seconds between two progress lines.
PROGRESS_INTERVAL = 1.0


def summary_line(entry, seconds, stopped=False):
    """The one-line summary printed at the end of a run."""
    rate = entry["docs_written"] / seconds if seconds > 0 else 0.0
    return (f"{'stopped' if stopped else 'done'}: {entry['docs_read']} docs read, "
            f"{entry['docs_written']} written, {entry['doc_write_failures']} failures, "
            f"{seconds:.1f} s, {rate:.0f} docs/s, checkpoint at seq {entry['recorded_seq']}")


def run_replicate(source, target, *, continuous=False, doc_ids=None, batch_size=500):
    """Replicate SOURCE to TARGET for the CLI; Ctrl-C stops after the current batch.

    :raises click.ClickException: a peer is invalid or failed, or documents failed to
        replicate (the exit status is then non-zero).
    """
    try:
        source_peer = peer_from_string(source)
        target_peer = peer_from_string(target)
    except (PeerError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from exc

    stop = threading.Event()
    outcome = {}
    last_line = [0.0]

    def progress(stats):
        now = time.monotonic()
        if now - last_line[0] >= PROGRESS_INTERVAL:
            last_line[0] = now
            click.echo(f"  {stats['docs_read']} read, {stats['docs_written']} written, "
                       f"{stats['doc_write_failures']} failures, seq {stats['last_seq']}",
                       err=True)

    def work():
        try:
            outcome["entry"] = replicate(
                source_peer, target_peer, continuous=continuous, doc_ids=doc_ids,
                batch_size=batch_size, stop=stop, on_progress=progress)
        except PeerError as exc:
            outcome["error"] = exc
        except Exception as exc:  # reported below as a failure, never swallowed
            logger.exception("replication failed")
            outcome["error"] = exc

    started = time.monotonic()
    # The replication runs in a worker so that Ctrl-C in the main thread only sets the
    # stop flag: the current batch finishes and is checkpointed, nothing is cut mid-write.
    worker = threading.Thread(target=work, name="replicate")
    worker.start()
    stopped = False
    while worker.is_alive():
        try:
            worker.join(0.2)
        except KeyboardInterrupt:
            if stopped:
                continue
            stopped = True
            click.echo("stopping after the current batch...", err=True)
            stop.set()
    seconds = time.monotonic() - started
    source_peer.close()
    target_peer.close()

    if "error" in outcome:
        raise click.ClickException(f"replication failed: {outcome['error']}")
    entry = outcome["entry"]
    click.echo(summary_line(entry, seconds, stopped))
    if entry["doc_write_failures"]:
        raise click.ClickException(
            f"{entry['doc_write_failures']} documents were not replicated (see the log)")
    if stopped and not continuous:
        raise click.ClickException("interrupted; the next run resumes from the checkpoint")


def run_syncd(app, *, once=False, verbose=0):
    """Run the sync daemon of ``app``'s node: until SIGTERM/SIGINT, or one round.

    :raises click.ClickException: invalid sync settings; with ``once``, a failed link.
    """
    from syncd.daemon import SyncDaemon

    # State changes and failures are worth a line by default; the replicator's per-run
    # lines only with -v (a busy node runs many rounds a minute).
    logging.getLogger("syncd").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logging.getLogger("syncd.replicator").setLevel(
        logging.WARNING if not verbose else logging.DEBUG if verbose > 1 else logging.INFO)
    try:
        from shared.hlc import wall_clock_from_env

        clock = wall_clock_from_env()
        daemon = SyncDaemon(app.config, app.extensions["store"], app=app, clock=clock)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc

    if once:
        results = daemon.run_once()
        for link in daemon.links:
            click.echo(daemon.summary(link))
        daemon.close()
        if not daemon.links:
            click.echo("no links: this node has no PARENT_URL or UPSTREAM_URL", err=True)
        failed = [name for name, ok in results.items() if not ok]
        if failed:
            raise click.ClickException(f"sync failed on: {', '.join(failed)}")
        return

    stop = threading.Event()

    def request_stop(signum, frame):
        logger.info("signal %s: stopping after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    daemon.run(stop)
