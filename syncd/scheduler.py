"""The scheduler of ``tongban syncd``: every scheduled job of a node runs on APScheduler.

Jobs: the periodic sync round (which only asks the daemon's trigger loop for a round, so
that rounds never overlap), every node's jobs (``shared.jobs.SHARED_JOBS``) and the
tier's own: a tier package may have a ``jobs`` module with ``JOBS``. Each is a
``(function, trigger)`` pair where ``function`` is a plain ``job(now=None)`` and
``trigger`` the keyword arguments of ``add_job`` (``{"trigger": "interval", "minutes": 5}``,
``{"trigger": "cron", "hour": 1}``).
Jobs run inside the app context when the daemon was given the app.

Nothing here starts at import or in the app factory: syncd calls ``start()``.
"""

import functools
import importlib
import logging

from apscheduler.schedulers.background import BackgroundScheduler

logger = logging.getLogger(__name__)

JOB_DEFAULTS = {
    # A node that slept (a village PC suspended overnight) runs a missed job once, not
    # once per missed interval, and never two copies at a time.
    "coalesce": True,
    "max_instances": 1,
    "misfire_grace_time": 300,
}


def tier_jobs(tier):
    """The ``(function, trigger)`` pairs a node of ``tier`` runs: every node's, then the
    tier's own ``jobs`` module's."""
    from shared.jobs import SHARED_JOBS

    name = f"{tier}.jobs"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        module = None
    return [*SHARED_JOBS, *getattr(module, "JOBS", ())]


def _in_app(app, function):
    """``function`` run inside ``app``'s context (when there is an app)."""
    if app is None:
        return function

    @functools.wraps(function)
    def job():
        with app.app_context():
            return function()

    return job


def build_scheduler(config, daemon=None, *, app=None, jobs=None):
    """A BackgroundScheduler with the node's jobs, not started.

    :param config: the node's settings (``TIER``; ``SYNC_INTERVAL`` seconds).
    :param daemon: a :class:`syncd.daemon.SyncDaemon` whose rounds to schedule, or None.
    :param app: the node's Flask app, for the jobs' context.
    :param jobs: the ``(function, trigger)`` pairs to add (default: the tier's).
    """
    scheduler = BackgroundScheduler(job_defaults=JOB_DEFAULTS)
    if daemon is not None:
        scheduler.add_job(daemon.request_round, "interval",
                          seconds=float(daemon.options["SYNC_INTERVAL"]),
                          id="sync_round", name="sync round")
    for function, trigger in (tier_jobs(config["TIER"]) if jobs is None else jobs):
        trigger = dict(trigger)
        job_id = f"{function.__module__}.{function.__name__}"
        scheduler.add_job(_in_app(app, function), trigger.pop("trigger"), id=job_id,
                          name=job_id, **trigger)
        logger.debug("scheduled %s (%s)", job_id, trigger)
    return scheduler
