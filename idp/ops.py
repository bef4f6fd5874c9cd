"""What an operator's tools ask of a running idp (issue 20): /healthz, /readyz and /metrics.

- ``/healthz``: the process answers (a load balancer's liveness check). It reads nothing, so a slow database
  never makes an orchestrator kill healthy workers.
- ``/readyz``: this instance can serve sign-ins: PostgreSQL answers, its schema is at the migrations' head (an
  instance started before ``idp db upgrade`` finished, or a new release beside an old schema, is not ready), Redis
  answers when configured, and a signing key exists. JSON naming each check, 503 when one fails; no setting, URL
  or error text is shown (what failed is logged), and nothing is written.
- ``/metrics``: Prometheus text (idp.metrics) for the addresses in IDP_METRICS_ALLOW only, judged on the client's
  address as resolved through IDP_TRUSTED_PROXIES: behind nginx a request from the internet arrives from the
  proxy's loopback address but carries its real address in X-Forwarded-For, so even a proxy configuration that
  forgot to close the location does not publish the metrics. Everyone else gets the 404 any unknown path gets.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from alembic.script import ScriptDirectory
from flask import Blueprint, Response, abort, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST
from redis import Redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from idp import metrics
from idp.extensions import db
from idp.http import client_address
from idp.security import network

log = logging.getLogger("idp.ops")
bp = Blueprint("ops", __name__)

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")
# A readiness probe must answer before the prober gives up (Kubernetes and most balancers wait 1 s by default).
REDIS_TIMEOUT = 0.5


def _heads() -> set[str]:
    """The migration heads this code expects, read once per process from the migrations folder."""
    cached = current_app.extensions.get("idp.migration_heads")
    if cached is None:
        cached = set(ScriptDirectory(MIGRATIONS).get_heads())
        current_app.extensions["idp.migration_heads"] = cached
    return cached


def _redis() -> Redis | None:
    url = current_app.config["IDP_REDIS_URL"]
    if not url:
        return None
    client = current_app.extensions.get("idp.readiness_redis")
    if client is None:
        client = Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
        current_app.extensions["idp.readiness_redis"] = client
    return client


@bp.get("/healthz")
def healthz() -> Any:
    """Liveness: the process answers."""
    return _no_store(jsonify(status="ok"))


@bp.get("/readyz")
def readyz() -> Any:
    """Readiness: the database, its schema, Redis and a signing key (see the module's docstring)."""
    checks: dict[str, str] = {}
    try:
        versions = {row[0] for row in db.session.execute(text("SELECT version_num FROM alembic_version"))}
        checks["database"] = "ok"
        checks["migrations"] = "ok" if versions == _heads() else "not at head"
        found = db.session.execute(text("SELECT 1 FROM signing_keys WHERE retired_at IS NULL LIMIT 1")).first()
        checks["signing_key"] = "ok" if found else "missing"
    except SQLAlchemyError as exc:
        log.warning("readiness: database check failed: %s", type(exc).__name__)
        checks["database"] = "unavailable"
    finally:
        db.session.rollback()  # read only: end the transaction the checks began
    client = _redis()
    if client is None:
        checks["redis"] = "not configured"
    else:
        try:
            client.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # any Redis failure (refused, timeout, auth) means not ready, never a 500
            log.warning("readiness: redis check failed: %s", type(exc).__name__)
            checks["redis"] = "unavailable"
    ready = all(value in ("ok", "not configured") for value in checks.values())
    response = jsonify(status="ready" if ready else "not ready", checks=checks)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = "5"
    return _no_store(response)


@bp.get("/metrics")
def metrics_endpoint() -> Any:
    """Prometheus exposition, for IDP_METRICS_ALLOW only."""
    allowed = network.networks(current_app.config["IDP_METRICS_ALLOW"])
    if not network.is_trusted(client_address(), allowed):
        abort(404)
    return _no_store(Response(metrics.exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST))


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
