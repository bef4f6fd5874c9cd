"""Background jobs, enqueued by name: on RQ when IDP_REDIS_URL is set, inline otherwise.

A job is a plain function registered with ``@job``; it runs inside an app context and gets only
JSON-serialisable keyword arguments, so the worker and the inline path run exactly the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app

log = logging.getLogger("idp.jobs")

JOBS: dict[str, Callable[..., Any]] = {}

# Inline mode (development and tests without Redis) retries at once with a short backoff instead of the
# RQ schedule, so that a request is never held for minutes.
INLINE_BACKOFF = (0.05, 0.2)


def job(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn`` as a job under its own name."""
    JOBS[fn.__name__] = fn
    return fn


def init_app(app: Flask) -> None:
    """Bind a Redis connection and RQ queue when IDP_REDIS_URL is set; otherwise jobs run inline."""
    app.extensions["idp.queue"] = None
    if app.config["IDP_REDIS_URL"]:
        from redis import Redis
        from rq import Queue

        connection = Redis.from_url(app.config["IDP_REDIS_URL"])
        app.extensions["idp.queue"] = Queue(app.config["IDP_QUEUE_NAME"], connection=connection)
    from idp.jobs import mail, sms  # noqa: F401  (registers the mail and SMS jobs)


def queue():
    """The app's RQ queue, or None when jobs run inline."""
    return current_app.extensions.get("idp.queue")


def enqueue(name: str, **kwargs: Any) -> None:
    """Run job ``name`` in the background (RQ, retried with backoff) or inline (retried briefly)."""
    if name not in JOBS:
        raise KeyError(f"unknown job {name!r}")
    q = queue()
    if q is not None:
        from rq import Retry

        intervals = list(current_app.config["IDP_JOB_RETRY_INTERVALS"])
        q.enqueue(execute, name, kwargs, retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
                  result_ttl=0, failure_ttl=7 * 86400, description=f"idp job {name}")
        return
    # As on RQ, the job runs after the work that asked for it is saved: a failed attempt then rolls back only
    # the job's own writes, never the caller's (a lockout, its unlock token, their audit rows).
    from idp.extensions import db

    db.session.commit()
    for attempt, delay in enumerate((*INLINE_BACKOFF, None), start=1):
        try:
            JOBS[name](**kwargs)
            return
        except Exception as exc:  # a failed delivery is audited, never lost silently
            _report_failure(name, attempt, exc, final=delay is None)
            if delay is None:
                return
            time.sleep(delay)


def execute(name: str, kwargs: dict[str, Any]) -> None:
    """The RQ entry point: run a registered job in an app context, auditing each failed attempt."""
    from rq import get_current_job

    if _has_app():
        return _run_reporting(name, kwargs, get_current_job())
    from idp import create_app

    with create_app().app_context():
        return _run_reporting(name, kwargs, get_current_job())


def _has_app() -> bool:
    from flask import has_app_context

    return has_app_context()


def _run_reporting(name: str, kwargs: dict[str, Any], rq_job) -> None:
    try:
        JOBS[name](**kwargs)
    except Exception as exc:
        retries_left = getattr(rq_job, "retries_left", None) or 0
        attempt = len(current_app.config["IDP_JOB_RETRY_INTERVALS"]) - retries_left + 1
        _report_failure(name, attempt, exc, final=retries_left == 0)
        raise


def _report_failure(name: str, attempt: int, exc: Exception, *, final: bool) -> None:
    from idp import audit
    from idp.extensions import db

    db.session.rollback()
    log.error("job %s failed (attempt %d%s): %s", name, attempt, ", giving up" if final else "", type(exc).__name__)
    audit.record("job.failed" if final else "job.retry", job=name, attempt=attempt, error=type(exc).__name__,
                 commit=True)
