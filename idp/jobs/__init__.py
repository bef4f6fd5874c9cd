"""Background jobs, enqueued by name: on RQ when IDP_REDIS_URL is set, inline otherwise.

A job is a plain function, listed by name in the app's job table (``idp.JOBS``, handed to ``init_app``); it runs
inside an app context and gets only JSON-serialisable keyword arguments, so the worker and the inline path run
exactly the same code. RQ calls ``idp.worker.execute``, named by its import path so that this module (which every
service imports to enqueue) never imports the app factory.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry

from idp import audit, i18n
from idp.extensions import db

log = logging.getLogger("idp.jobs")

# The RQ entry point, by import path (see the module's docstring).
ENTRY_POINT = "idp.worker.execute"

# Inline mode (development and tests without Redis) retries at once with a short backoff instead of the
# RQ schedule, so that a request is never held for minutes.
INLINE_BACKOFF = (0.05, 0.2)


class QueueUnavailable(Exception):
    """The job queue (Redis) could not take a job: the request that asked for it fails with 503, and its own work
    rolls back with it (nothing half-done, no audit row saying a mail went out)."""


def init_app(app: Flask, jobs: Mapping[str, Callable[..., Any]]) -> None:
    """Keep the app's job table, and bind a Redis connection and RQ queue when IDP_REDIS_URL is set (otherwise
    jobs run inline)."""
    app.extensions["idp.jobs"] = dict(jobs)
    app.extensions["idp.queue"] = None
    if app.config["IDP_REDIS_URL"]:
        connection = Redis.from_url(app.config["IDP_REDIS_URL"])
        app.extensions["idp.queue"] = Queue(app.config["IDP_QUEUE_NAME"], connection=connection)


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
    """Run job ``name`` in the background (RQ, retried with backoff) or inline (retried briefly)."""
    jobs = _jobs()
    if name not in jobs:
        raise KeyError(f"unknown job {name!r}")
    if _takes_language(jobs[name]):
        # A message is written in the language of the page that caused it (idp.i18n), or the one a command
        # forced for its user, never the worker's.
        kwargs.setdefault("language", i18n.current_language())
    q = queue()
    if q is not None:
        intervals = list(current_app.config["IDP_JOB_RETRY_INTERVALS"])
        try:
            q.enqueue(ENTRY_POINT, name, kwargs,
                      retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
                      result_ttl=0, failure_ttl=7 * 86400, description=f"idp job {name}")
        except RedisError as exc:
            log.error("job %s could not be queued: %s", name, type(exc).__name__)
            raise QueueUnavailable(name) from exc
        return
    # As on RQ, the job runs after the work that asked for it is saved: a failed attempt then rolls back only
    # the job's own writes, never the caller's (a lockout, its unlock token, their audit rows).
    db.session.commit()
    for attempt, delay in enumerate((*INLINE_BACKOFF, None), start=1):
        try:
            jobs[name](**kwargs)
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
    except Exception as exc:
        retries_left = getattr(rq_job, "retries_left", None) or 0
        attempt = len(current_app.config["IDP_JOB_RETRY_INTERVALS"]) - retries_left + 1
        _report_failure(name, attempt, exc, final=retries_left == 0)
        raise


def _report_failure(name: str, attempt: int, exc: Exception, *, final: bool) -> None:
    db.session.rollback()
    log.error("job %s failed (attempt %d%s): %s", name, attempt, ", giving up" if final else "", type(exc).__name__)
    audit.record("job.failed" if final else "job.retry", job=name, attempt=attempt, error=type(exc).__name__,
                 commit=True)
