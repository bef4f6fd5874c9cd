"""The RQ worker that ``idp worker`` runs: RQ's forking worker, set up so that a job whose worker died is retried
within about a minute, and audited like any other failed attempt.

A job runs in a work horse, a process the worker forks for it and watches. Either may die mid-job:

- The work horse alone (the kernel's OOM killer, say): the worker sees it go, and RQ counts the attempt as failed
  and retries it within its budget (IDP_JOB_RETRY_INTERVALS). The worker audits it (work_horse_killed_handler).
- The worker too (SIGKILL, the machine or the container gone): the job stays in the queue's StartedJobRegistry,
  its entry kept alive by the worker's heartbeats. Once they stop, the entry expires, and the next maintenance
  pass of any worker of the queue (at its start, then every IDP_WORKER_MAINTENANCE_INTERVAL) finds the job
  abandoned there: RQ 3.0's StartedJobRegistry.cleanup retries it if its budget allows, else fails it, and calls
  the worker's exception handlers with AbandonedJobError, which audit it.

With RQ's defaults the second case is slow: an entry outlives the last heartbeat by 60 s (plus the 30 s between
heartbeats), and an idle worker blocks on the queue for 405 s between maintenance passes of 10 min, so a job
could wait a quarter of an hour, longer than a sign-in code lives (IDP_EMAIL_CODE_TTL). Here the worker beats
every IDP_WORKER_HEARTBEAT seconds, an entry expires after three beats are missed, and an idle worker wakes for
maintenance every IDP_WORKER_MAINTENANCE_INTERVAL seconds. (Whatever counts a queue's StartedJobRegistry runs
that cleanup too, `rq info` among them: the job is retried then as well, but without idp's handlers that retry is
not audited.)

Delivery is at least once: a worker that died after the SMTP server (or Twilio) accepted a message, but before
RQ recorded the job as done, leaves a job that is run again, and that message arrives twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from rq import Queue, Worker
from rq.exceptions import AbandonedJobError
from rq.job import Job

from idp.extensions import db
from idp.jobs import ENTRY_POINT, report_attempt

log = logging.getLogger("idp.jobs")


class JobWorker(Worker):
    """RQ's Worker with idp's heartbeat and maintenance intervals, auditing the attempts of jobs whose work horse
    or worker died. Runs inside the app context (``idp worker``)."""

    def __init__(self, queues: Sequence[Queue], *, config: Mapping[str, Any], **kwargs: Any):
        heartbeat = max(1, int(config["IDP_WORKER_HEARTBEAT"]))
        maintenance = max(1, int(config["IDP_WORKER_MAINTENANCE_INTERVAL"]))
        super().__init__(queues, job_monitoring_interval=heartbeat, maintenance_interval=maintenance,
                         # An idle worker blocks on the queue for worker_ttl - 15 s, and runs its maintenance only
                         # between two waits.
                         worker_ttl=maintenance + 15,
                         exception_handlers=[_audit_abandoned], work_horse_killed_handler=_audit_killed, **kwargs)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long the running job's entry in the StartedJobRegistry lives without a new heartbeat: until the next
        one is due, plus two more (RQ's own: plus 60 s)."""
        interval = float(self.job_monitoring_interval)
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        return int(max(interval, 0)) + 2 * self.job_monitoring_interval

    def execute_job(self, job: Job, queue: Queue) -> None:
        _forget_earlier_executions(job)
        super().execute_job(job, queue)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        """The forked work horse: it forgets the connections pooled by the worker (which audits with them) before
        the job opens its own; two processes must never talk on one database connection."""
        db.engine.dispose(close=False)
        super().main_work_horse(job, queue)


def _forget_earlier_executions(job: Job) -> None:
    """Before a job runs, empty its execution registry: the execution about to be created is its only live one,
    and what the registry holds was left by an earlier attempt whose worker died.

    RQ 3.0.0 keeps such an entry 60 s longer than the execution it names, and finishing the job once that
    execution has expired fails (ExecutionRegistry.get_executions raises ValueError): the job, done and its mail
    sent, would count as failed and be retried, sending the mail again. With this module's short heartbeats an
    abandoned job runs again inside that window; RQ's defaults reach it too (a worker restarted a minute or two
    after the death finds the job at once).
    """
    job.connection.delete(job.execution_registry.key)


def _job_name(job: Job) -> str:
    return str(job.args[0]) if job.func_name == ENTRY_POINT and job.args else str(job.func_name)


def _audit(job: Job, error: str) -> None:
    try:
        report_attempt(_job_name(job), job, error)
    except Exception:  # the database is gone too: say so, but never stop the worker over it
        log.exception("could not audit the failed attempt of job %s", job.id)
    finally:
        db.session.remove()  # no connection of the worker's stays checked out across a fork


def _audit_abandoned(job: Job, exc_type: type[BaseException], exc_value: BaseException, traceback: Any) -> None:
    """An exception handler of the worker. RQ calls it from a maintenance pass for a job found abandoned (its worker
    died), before retrying or failing it; other failures were audited by the job's own process (run_reporting)."""
    if issubclass(exc_type, AbandonedJobError):
        log.warning("job %s abandoned by a worker that died", job.id)
        _audit(job, exc_type.__name__)


def _audit_killed(job: Job, retpid: int | None, ret_val: int | None, rusage: Any) -> None:
    """RQ calls this when the work horse running ``job`` died (a signal), before retrying or failing the job."""
    log.warning("job %s: its work horse died (wait status %s)", job.id, ret_val)
    _audit(job, "WorkHorseKilled")
