"""What only a village schedules, besides every node's jobs (shared/jobs.py)."""

from shared.retention import RETENTION_TRIGGER, retention_job

#: Closed cases beyond RETENTION_DAYS leave this PC (a local purge; they stay at the
#: township and the county, see shared/retention.py).
JOBS = [(retention_job, RETENTION_TRIGGER)]
