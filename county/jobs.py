"""Scheduled jobs of a county node: syncd runs ``JOBS`` on APScheduler (syncd/scheduler.py)."""

from shared.cases.supervision import SWEEP_TRIGGER, sweep_job

#: The yellow/red card sweep over the cases this node answers for.
JOBS = [(sweep_job, SWEEP_TRIGGER)]
