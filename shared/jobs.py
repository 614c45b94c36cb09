"""The scheduled jobs every node runs, whatever its tier (syncd runs them on APScheduler;
a tier's own ``<tier>.jobs`` module adds what only that tier does, see syncd/scheduler.py)."""

from shared.backup import BACKUP_TRIGGER, backup_job
from shared.cases.supervision import SWEEP_TRIGGER, sweep_job

#: The yellow/red card sweep over the cases this node answers for, and the scheduled
#: backup (BACKUP_* settings).
SHARED_JOBS = ((sweep_job, SWEEP_TRIGGER), (backup_job, BACKUP_TRIGGER))
