"""gunicorn's settings for idp behind nginx: `gunicorn -c deploy/gunicorn.conf.py wsgi:app` (deploy/systemd/).

Read from the environment (the systemd unit's EnvironmentFile, /etc/idp/idp.env):

- ``IDP_WORKERS``: sync worker processes (default: one per core available to the process, at least 2; see below);
- ``IDP_BIND``: where to listen (default 127.0.0.1:8000: only nginx on the same host talks to gunicorn);
- ``IDP_TRUSTED_PROXIES``: the proxies (nginx) whose X-Forwarded-Proto gunicorn believes, the same list idp uses
  for X-Forwarded-For, so that the two never disagree about who is a proxy;
- ``PROMETHEUS_MULTIPROC_DIR``: when set, the folder where each worker keeps its metrics (prometheus-client's
  multiprocess mode): emptied when gunicorn starts, a dead worker's live gauges removed as it exits.

Graceful reload (an upgrade, a changed setting): ``systemctl reload idp-web`` sends SIGHUP. The master re-reads
this file and the environment it was started with, starts new workers, which import the new code, and stops the
old ones once they have finished their requests (``graceful_timeout``). That works because the master never imports
idp: the app is loaded in each worker (no ``preload_app``), and this file imports idp only inside the access log
method, which runs in workers. A changed EnvironmentFile needs ``systemctl restart idp-web`` (systemd passes the
environment at start only).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from gunicorn.glogging import Logger

# The repository root (/opt/idp): `wsgi:app` is found there whatever the working directory.
chdir = str(Path(__file__).resolve().parent.parent)
proc_name = "idp-web"


def _cores() -> int:
    """Cores this process may run on (a cpuset or `taskset` counts, unlike os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# One sync worker per core, and at least two. idp's work is CPU-bound: an argon2id verification keeps one core
# busy for ~135 ms (RFC 9106's cost, which production enforces), each token is an RS256 signature, and otherwise a
# request waits only a few milliseconds for PostgreSQL and Redis. gunicorn's `2 * cores + 1` assumes workers that
# mostly wait for I/O; here a second worker per core makes two hashes share that core, each taking twice as long,
# and costs ~105 MB more. The bench measured it: on 2 cores, 2 workers served more sign-ins and tokens than 4
# (README "Deployment", bench/README.md). At least two, so that one worker waiting on a client's `jwks_uri` (up to
# its 5-second timeout) or being restarted does not stop everything on a one-core host. More waiting (many
# private_key_jwt clients) is a reason to raise IDP_WORKERS.
workers = int(os.environ.get("IDP_WORKERS") or max(2, _cores()))
worker_class = "sync"  # nginx buffers whole requests and responses, so a slow client never holds a worker
bind = [address.strip() for address in (os.environ.get("IDP_BIND") or "127.0.0.1:8000").split(",")]

# Nothing legitimate takes 30 s (a sign-in ~0.2 s, a jwks_uri fetch at most 5 s): a worker silent for longer is
# stuck and is replaced. On reload or stop, a worker finishes its request within graceful_timeout (below systemd's
# TimeoutStopSec, 90 s by default). The sync worker closes each connection after its response, so keepalive
# matters only if worker_class is changed to gthread; nginx opens a connection per request anyway.
timeout = 30
graceful_timeout = 30
keepalive = 5
# nginx accepts request lines of up to 8 KiB (large_client_header_buffers); gunicorn's default is 4094 bytes, which
# a long authorization request (a `request` object, many scopes) could pass and then get a 400 from gunicorn alone.
limit_request_line = 8190


def _trusted_proxies() -> str:
    """IDP_TRUSTED_PROXIES as gunicorn reads it: idp accepts 10.0.0.1/8 and means 10.0.0.0/8, gunicorn would refuse
    to start on it; a bad entry raises here, as idp would refuse to start on it."""
    entries = [entry.strip() for entry in os.environ.get("IDP_TRUSTED_PROXIES", "").split(",") if entry.strip()]
    return ",".join(str(ipaddress.ip_network(entry, strict=False)) for entry in entries)


# X-Forwarded-Proto from a trusted proxy makes wsgi.url_scheme (Flask's request.scheme) https; nothing else counts.
# gunicorn's default also believes X-Forwarded-Ssl and X-Forwarded-Protocol, which nginx passes through unchanged
# from the client: a client sending "X-Forwarded-Ssl: off" would make gunicorn refuse every request of its own
# (the headers disagree), so only the header nginx sets itself is listed. Empty (no proxy configured): no client is
# believed, as idp believes none for X-Forwarded-For.
forwarded_allow_ips = _trusted_proxies()
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
# gunicorn maps the SCRIPT_NAME and PATH_INFO headers of a trusted proxy into the environ by default; idp is served
# at the root and nginx sends neither, so none is taken.
forwarder_headers = ""

# The control socket (`gunicornc`) lives in the unit's RuntimeDirectory (/run/idp-web); without one (a test, a
# shell) there is none, rather than one in $HOME shared by every gunicorn of that user.
if os.environ.get("RUNTIME_DIRECTORY"):
    control_socket = os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "gunicorn.ctl")
else:
    control_socket_disable = True

accesslog = "-"  # standard output: the journal under systemd, one JSON object per line (JSONLogger)
errorlog = "-"
loglevel = "info"


def _header(headers, name: str) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value
    return None


class _Line:
    """A finished log line, handed to the logger as an object. idp.logs.SecretsFilter (on the gunicorn.access
    logger in every worker) redacts string messages; run over JSON text it could eat the backslash of an escaped
    quote (its value pattern stops at '"', not at '\\') and break the line, so each field is redacted before
    json.dumps instead, and the filter leaves this object alone."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


class JSONLogger(Logger):
    """gunicorn's access log as one JSON object per line, secrets redacted with idp.logs.redact (SECURITY.md 30).

    ``remote_addr`` is the client's address as idp resolved it through IDP_TRUSTED_PROXIES (idp writes it into the
    WSGI environ, idp.http.client_address), the one its audit rows and rate limits use; ``peer`` is the
    connection's own address (nginx). ``request_id`` is the X-Request-ID nginx sent (the client's, or one nginx
    made), ``response_request_id`` the one the response carried, if any.
    """

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        # Imported here, in a worker that has loaded the app: the master must not import idp (module docstring).
        from idp.http import PEER_ADDR
        from idp.logs import redact

        status = resp.status
        code = int(str(status).split(None, 1)[0]) if status else 0
        remote = environ.get("REMOTE_ADDR") or ""
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "remote_addr": remote,
            "peer": environ.get(PEER_ADDR) or remote,
            "method": environ.get("REQUEST_METHOD"),
            "path": redact(environ.get("RAW_URI") or environ.get("PATH_INFO") or ""),
            "scheme": environ.get("wsgi.url_scheme"),
            "status": code,
            "bytes": getattr(resp, "sent", None) or 0,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "user_agent": redact(environ.get("HTTP_USER_AGENT", "")[:512]),
            "request_id": redact(environ.get("HTTP_X_REQUEST_ID", "")[:200]) or None,
            "response_request_id": _header(getattr(resp, "headers", None), "x-request-id"),
        }
        try:
            self.access_log.info(_Line(json.dumps(line, ensure_ascii=False)))
        except Exception:  # a log line must never fail a request
            self.exception("access log line failed")


logger_class = JSONLogger


def on_starting(server):
    """Refuse settings before any worker starts; and the metrics of a previous run are stale: gunicorn's workers
    start over with new pids."""
    _check_settings()
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    # Only the files of gunicorn's previous workers (prometheus-client's TYPE_PID.db): a mistyped variable must not
    # empty some other folder, and the RQ workers sharing the folder (TYPE_rqworker-PID.db, idp.metrics) are alive.
    for stale in path.glob("*.db"):
        if stale.stem.rpartition("_")[2].isdigit():
            stale.unlink()


def _check_settings() -> None:
    """Build the app once in a child process, so that settings production refuses stop gunicorn itself with the
    app's one line and exit status 2 (wsgi.py), instead of each worker failing the same way while the master
    starts new ones forever. A child, because the master must not import idp (module docstring)."""
    check = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=chdir, env=os.environ.copy(), check=False)
    if check.returncode == 2:  # the child printed the line
        sys.exit(2)
    if check.returncode != 0:
        sys.exit(f"idp: the app could not be built (exit status {check.returncode}); see the lines above")


def child_exit(server, worker):
    """A worker exited (a reload, a crash, a timeout): its live gauges no longer count (prometheus-client)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
