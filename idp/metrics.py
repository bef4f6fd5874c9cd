"""Prometheus metrics (issue 20), with the official client, in gunicorn's multiprocess mode when it runs there.

Under gunicorn each worker is a process of its own, so a counter in one worker's memory would be a fraction of the
truth and a scrape would see whichever worker answered. prometheus-client's multiprocess mode keeps every process's
samples in files under ``PROMETHEUS_MULTIPROC_DIR`` and sums them at scrape time; deploy/gunicorn.conf.py empties
that folder at start and marks a dead worker's files (``mark_process_dead``). Without the variable (the development
server, tests, one process) the samples live in this process's default registry.

What is counted:
- every request: ``idp_http_requests_total`` and the ``idp_http_request_duration_seconds`` histogram by method and
  route (the URL rule, never the raw path: a path carries tokens and would make one series per probe);
- sign-ins by outcome and by factor, lockouts and tokens issued by grant, from the audit rows a transaction commits
  (``count_events``, called by idp.audit after the commit): a count never includes work that rolled back, and it
  moves on every path that audits (hosted pages, the challenge endpoint, the token endpoint) without a second
  bookkeeping beside the audit log;
- mails and texts sent and failed (``counts_messages``, around the functions that hand them over);
- at scrape time only (``ScrapeCollector``): the depth of the RQ queue and the age of the active signing keys, read
  fresh so that every instance reports the same truth.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar

from flask import Flask, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from idp.extensions import db
from idp.models import SigningKey, utcnow

log = logging.getLogger("idp.metrics")
P = ParamSpec("P")
R = TypeVar("R")

REQUESTS = Counter("idp_http_requests", "HTTP requests answered, by method, route and status.",
                   ["method", "route", "status"])
LATENCY = Histogram("idp_http_request_duration_seconds", "Time to answer a request, by method and route.",
                    ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
SIGNINS = Counter("idp_signins", "Sign-ins finished (success) or refused at the password (failure).", ["outcome"])
FACTORS = Counter("idp_signin_factors", "Factor checks during sign-in, by factor (the amr value, or the "
                  "factor named by the failure) and outcome.", ["factor", "outcome"])
LOCKOUTS = Counter("idp_lockouts", "Accounts locked after repeated failed sign-ins.")
TOKENS = Counter("idp_tokens_issued", "Token responses issued, by grant type.", ["grant"])
MESSAGES = Counter("idp_messages", "Mails and texts handed to their server, or failed, by channel and outcome.",
                   ["channel", "outcome"])

# The identifier in the sample files of an RQ worker's jobs (share_files_across_work_horses): deploy/gunicorn.conf.py
# removes the files of gunicorn's previous workers at its start, named by their bare pid, and leaves these alone.
WORKER_FILE_PREFIX = "rqworker-"
# The methods counted under their own name (RFC 9110 9.3); any other is counted as OTHER.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A route for requests that matched no URL rule (a 404, a probe): one series for all of them.
UNMATCHED = "(unmatched)"
# The factor each failure event names (idp.login.context records mfa.failure with the method it checked).
_FAILED_FACTOR = {"login.failure": "pwd", "webauthn.failure": "webauthn"}


def multiprocess_dir() -> str | None:
    """The folder of gunicorn's multiprocess samples, or None in a single process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def share_files_across_work_horses() -> None:
    """In an RQ worker (``idp worker``), write the samples of every job under the worker's own identity.

    RQ forks a work horse per job, so the mail and text counts happen in a new process each time; in multiprocess
    mode each process writes files named after its pid, which would leave one set of files per job, never removed
    (counts must outlive the process that made them) and read at every scrape. A worker runs one job at a time, so
    its horses can share one set of files, named after the worker: prometheus-client's ``MultiProcessValue``
    takes the identifier to name them by (its documented ``process_identifier`` rule: one identifier per process
    writing at a time, which one worker's successive horses keep). Samples made before this call keep their files.
    """
    if not multiprocess_dir():
        return
    from prometheus_client import values

    identity = f"{WORKER_FILE_PREFIX}{os.getpid()}"
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: identity)


def init_app(app: Flask) -> None:
    """Time and count every request of ``app``."""
    app.before_request(_started)
    app.after_request(_answered)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _answered(response: Any) -> Any:
    rule = request.url_rule
    count_request(request.method, rule.rule if rule is not None else UNMATCHED, response.status_code,
                  g.get("metrics_started"))
    return response


def count_request(method: str, route: str, status: int, started: float | None) -> None:
    """Count one request answered with ``status`` and time it (``started``: its perf_counter at the start)."""
    # Any token is a method to HTTP: other methods share one label, or each would be a series of its own.
    method = method if method in METHODS else "OTHER"
    REQUESTS.labels(method, route, str(status)).inc()
    if started is not None:
        LATENCY.labels(method, route).observe(time.perf_counter() - started)


def count_events(rows: Iterable[Mapping[str, Any]]) -> None:
    """Count the sign-in, lockout and token events among audit rows that were just committed."""
    for row in rows:
        event = row["event"]
        details = row.get("details") or {}
        if event == "login.success":
            SIGNINS.labels("success").inc()
            for factor in details.get("amr") or ():
                FACTORS.labels(str(factor), "success").inc()
        elif event == "login.failure":
            SIGNINS.labels("failure").inc()
            FACTORS.labels(_FAILED_FACTOR[event], "failure").inc()
        elif event == "mfa.failure":
            FACTORS.labels(str(details.get("method") or "unknown"), "failure").inc()
        elif event == "webauthn.failure":
            FACTORS.labels(_FAILED_FACTOR[event], "failure").inc()
        elif event == "account.locked":
            LOCKOUTS.inc()
        elif event in ("token.issued", "token.refreshed"):
            TOKENS.labels(str(details.get("grant_type") or "unknown")).inc()


def counts_messages(channel: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count each call of the decorated delivery function as one ``channel`` message (mail | sms) ``sent``, or
    ``failed`` when it raises (each failed attempt of a retried job counts)."""

    def decorate(deliver: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(deliver)
        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = deliver(*args, **kwargs)
            except Exception:
                MESSAGES.labels(channel, "failed").inc()
                raise
            MESSAGES.labels(channel, "sent").inc()
            return result

        return counted

    return decorate


class ScrapeCollector(Collector):
    """Gauges read when Prometheus scrapes: the RQ queue's depth and the signing keys' age. Each source that does
    not answer is left out of the scrape (and logged), so a scrape never fails for it."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        q = self.app.extensions.get("idp.queue")  # idp.jobs binds it (None when jobs run inline)
        if q is not None:
            depth = GaugeMetricFamily("idp_queue_depth", "Jobs waiting in the RQ queue, and failed jobs kept.",
                                      labels=["queue", "state"])
            try:
                depth.add_metric([q.name, "queued"], q.count)
                depth.add_metric([q.name, "failed"], q.failed_job_registry.count)
                yield depth
            except Exception as exc:  # Redis is down: the other gauges still go out
                log.warning("queue depth not scraped: %s", type(exc).__name__)
        try:
            rows = db.session.execute(select(SigningKey.alg, SigningKey.created_at)
                                      .where(SigningKey.retired_at.is_(None))).all()  # a few rows
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.warning("signing key age not scraped: %s", type(exc).__name__)
            return
        age = GaugeMetricFamily("idp_signing_key_age_seconds", "Age of the newest active signing key, by "
                                "algorithm (alert when rotation is overdue).", labels=["alg"])
        newest: dict[str, Any] = {}
        for alg, created_at in rows:
            newest[alg] = max(created_at, newest.get(alg, created_at))
        now = utcnow()
        for alg, created_at in sorted(newest.items()):
            age.add_metric([alg], (now - created_at).total_seconds())
        yield age


def exposition() -> bytes:
    """The text of a scrape: every process's samples (or this process's), then the scrape-time gauges."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        samples = generate_latest(registry)
    else:
        samples = generate_latest(REGISTRY)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ScrapeCollector(current_app._get_current_object()))  # type: ignore[attr-defined]
    return samples + generate_latest(scrape)
