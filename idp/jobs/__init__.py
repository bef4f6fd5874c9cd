"""Background jobs, enqueued by name: on RQ when IDP_REDIS_URL is set, inline otherwise.

A job is a plain function, listed by name in the app's job table (``idp.JOBS``, handed to ``init_app``); it runs
inside an app context and gets only JSON-serialisable keyword arguments, so the worker and the inline path run
exactly the same code. RQ calls ``idp.worker.execute``, named by its import path so that this module (which every
service imports to enqueue) never imports the app factory.

When a job goes out: ``enqueue`` only records it on the database session, and the commit of the session's
transaction sends it; a rollback, or a session that ends without committing, drops it. So no mail or text speaks
of a row that was never stored (a code, a link, a lock), and a request that fails after asking for one sends
nothing. A caller enqueues, then commits (a job asked for after the last commit waits for the next one).

- RQ: the job is pushed to the queue by the commit's ``after_commit`` event (which needs no database).
- Redis unavailable at that moment: the caller's work is saved already, so the request neither fails nor loses
  the message: the job runs inline in that process, logged (``job queued inline: redis unavailable``) and
  audited (``job.inline``).
- Inline (no Redis): right after the commit has returned (``idp.extensions.Session``), in the same session with
  the caller's transaction ended, retried briefly.
- Each attempt that fails is audited (``job.retry``, then ``job.failed``); a job whose worker died while running it
  is retried too (``idp.jobs.rq_worker``).

Delivery is at least once: a worker that dies after the SMTP server (or Twilio) accepted a message but before RQ
recorded the job as done runs it again, and the message arrives twice; so may a job whose push to Redis failed
half-way and then ran inline.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from redis import Redis
from rq import Queue, Retry
from sqlalchemy.event import listens_for
from sqlalchemy.orm import Session, SessionTransaction

from idp import audit, i18n
from idp.extensions import AFTER_COMMIT, db

log = logging.getLogger("idp.jobs")

# The RQ entry point, by import path (see the module's docstring).
ENTRY_POINT = "idp.worker.execute"

# Inline mode (development and tests without Redis, or Redis down) retries at once with a short backoff instead of
# the RQ schedule, so that a request is never held for minutes.
INLINE_BACKOFF = (0.05, 0.2)

# The jobs a session's transaction asked for, sent when it commits.
_PENDING = "idp.jobs.pending"


@dataclass
class _Job:
    name: str
    kwargs: dict[str, Any]
    queue: Queue | None  # None: run inline
    retry_intervals: list[int]
    timeout: int
    savepoint: SessionTransaction | None  # the innermost SAVEPOINT open when it was asked for


def init_app(app: Flask, jobs: Mapping[str, Callable[..., Any]]) -> None:
    """Keep the app's job table, and bind a Redis connection and RQ queue when IDP_REDIS_URL is set (otherwise
    jobs run inline). Nothing connects to Redis until a job is pushed."""
    app.extensions["idp.jobs"] = dict(jobs)
    app.extensions["idp.queue"] = None
    if app.config["IDP_REDIS_URL"]:
        connection = Redis.from_url(app.config["IDP_REDIS_URL"])
        app.extensions["idp.queue"] = Queue(app.config["IDP_QUEUE_NAME"], connection=connection)
    app.teardown_appcontext(_forgotten)


def _jobs() -> dict[str, Callable[..., Any]]:
    return current_app.extensions["idp.jobs"]


def queue():
    """The app's RQ queue, or None when jobs run inline."""
    return current_app.extensions.get("idp.queue")


@functools.cache
def _takes_language(job: Callable[..., Any]) -> bool:
    """Whether a job takes the language its message is written in (asked once per job, not per enqueue)."""
    return "language" in inspect.signature(job).parameters


def enqueue(name: str, **kwargs: Any) -> None:
    """Run job ``name`` once the current transaction commits: in the background (RQ, retried with backoff), or
    inline (retried briefly). Nothing is sent if the transaction rolls back."""
    jobs = _jobs()
    if name not in jobs:
        raise KeyError(f"unknown job {name!r}")
    if _takes_language(jobs[name]):
        # A message is written in the language of the page that caused it (idp.i18n), or the one a command
        # forced for its user, never the worker's.
        kwargs.setdefault("language", i18n.current_language())
    cfg = current_app.config
    session = db.session()
    session.info.setdefault(_PENDING, []).append(_Job(
        name, kwargs, queue(), list(cfg["IDP_JOB_RETRY_INTERVALS"]), cfg["IDP_JOB_TIMEOUT"],
        session.get_nested_transaction()))


def _push(job: _Job) -> None:
    intervals = job.retry_intervals
    assert job.queue is not None
    job.queue.enqueue(ENTRY_POINT, job.name, job.kwargs,
                      retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
                      job_timeout=job.timeout, result_ttl=0, failure_ttl=7 * 86400, description=f"idp job {job.name}")


@listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    """The transaction committed: its jobs go to the queue now; those that run inline (no Redis, or Redis down)
    wait for the commit to return."""
    if session.in_nested_transaction():  # a SAVEPOINT was released: its jobs wait for the outermost commit
        return
    pending: list[_Job] = session.info.pop(_PENDING, None) or []
    inline: list[tuple[_Job, str | None]] = []
    down: str | None = None  # why Redis refused a job of this commit: the next ones are not tried again
    for job in pending:
        if job.queue is None:
            inline.append((job, None))
            continue
        if down is None:
            try:
                _push(job)
                continue
            except Exception as exc:  # Redis down (RedisError), or anything else that kept it from the queue
                down = type(exc).__name__
        log.warning("job queued inline: redis unavailable (job %s, %s)", job.name, down)
        inline.append((job, down))
    if inline:
        session.info.setdefault(AFTER_COMMIT, []).append(functools.partial(_run_inline, inline))


@listens_for(Session, "after_soft_rollback")
def _savepoint_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    """A SAVEPOINT rolled back: the jobs asked for inside it go with its work (the outer transaction's stay)."""
    if not previous_transaction.nested or not session.info.get(_PENDING):
        return

    def inside(savepoint: SessionTransaction | None) -> bool:
        while savepoint is not None:
            if savepoint is previous_transaction:
                return True
            savepoint = savepoint.parent
        return False

    session.info[_PENDING] = [job for job in session.info[_PENDING] if not inside(job.savepoint)]


@listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended without committing (a committed one took its jobs in _committed): its jobs
    are dropped with its work."""
    if transaction.parent is not None or transaction.nested:
        return
    for job in session.info.pop(_PENDING, None) or ():
        log.info("job %s dropped: the transaction that asked for it did not commit", job.name)


def _forgotten(_exc: BaseException | None) -> None:
    """At the end of a request or command: a job still waiting was asked for after the last commit, and nothing
    committed after it. That is a bug of its caller (enqueue, then commit), said loudly; the job is dropped."""
    if not db.session.registry.has():
        return
    for job in db.session.info.pop(_PENDING, None) or ():
        log.warning("job %s dropped: nothing committed after it was asked for", job.name)


def _run_inline(batch: list[tuple[_Job, str | None]]) -> None:
    """Run jobs in this process, once the commit that released them has returned."""
    for job, fallback in batch:
        try:
            if fallback is not None:
                audit.record("job.inline", job=job.name, reason="redis unavailable", error=fallback, commit=True)
            run_inline(job.name, job.kwargs)
        except Exception:  # the caller's work is committed: nothing here may turn its answer into an error
            db.session.rollback()
            log.exception("job %s could not be run inline", job.name)


def run_inline(name: str, kwargs: dict[str, Any]) -> None:
    """Run a job now, retried briefly; each failed attempt is audited, the last as job.failed."""
    for attempt, delay in enumerate((*INLINE_BACKOFF, None), start=1):
        try:
            _jobs()[name](**kwargs)
            db.session.commit()  # the job's own work, and the jobs it asked for
            return
        except Exception as exc:  # a failed delivery is audited, never lost silently
            _report_failure(name, attempt, exc, final=delay is None)
            if delay is None:
                return
            time.sleep(delay)


def run_reporting(name: str, kwargs: dict[str, Any], rq_job: Any) -> None:
    """Run a job on behalf of RQ (inside an app context), auditing a failed attempt before RQ retries it."""
    try:
        _jobs()[name](**kwargs)
        db.session.commit()  # the job's own work, and the jobs it asked for
    except Exception as exc:
        report_attempt(name, rq_job, exc)
        raise


def report_attempt(name: str, rq_job: Any, exc: BaseException | str) -> None:
    """Audit a failed attempt of an RQ job (before RQ retries it or gives up): job.retry, or job.failed when no
    retry is left. ``exc`` is what failed, or its name."""
    retries_left = getattr(rq_job, "retries_left", None) or 0
    attempt = len(current_app.config["IDP_JOB_RETRY_INTERVALS"]) - retries_left + 1
    _report_failure(name, attempt, exc, final=retries_left == 0)


def _report_failure(name: str, attempt: int, exc: BaseException | str, *, final: bool) -> None:
    db.session.rollback()
    error = exc if isinstance(exc, str) else type(exc).__name__
    log.error("job %s failed (attempt %d%s): %s", name, attempt, ", giving up" if final else "", error)
    audit.record("job.failed" if final else "job.retry", job=name, attempt=attempt, error=error, commit=True)
