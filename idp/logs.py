"""What idp's and its server's log lines may not carry: secrets in request lines (SECURITY.md 30).

A request line holds the query string, and some protocol parameters are secrets there (an `id_token_hint` at the
end-session endpoint, a `code` in a callback URL, a token someone pasted into a query). The werkzeug and gunicorn
access logs and idp's own error lines go through ``SecretsFilter``, which replaces those values. SQL parameters are
kept out of error messages by the engine itself (``hide_parameters``, set in ``create_app``), and a database error
is logged by ``database_error``, without the server's message, which can quote values (PostgreSQL shows the
statement with psycopg2's interpolated parameters, and a unique violation the duplicate key).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from flask import Flask, current_app, g, has_request_context, request
from flask.logging import default_handler
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from idp.security import network

# Query parameters whose values are secrets (RFC 6749, 7009, 7636, 7662, OIDC Core and RP-Initiated Logout).
SECRET_PARAMETERS = ("id_token_hint", "logout_hint", "code", "code_verifier", "token", "refresh_token",
                     "access_token", "id_token", "client_secret", "client_assertion", "password", "auth_session")
REDACTED = "[redacted]"

# A name=value pair after the start, ?, & or ;. The name is compared once percent-decoded and lower-cased, as the
# server reads it: `co%64e=` is the `code` parameter too.
_QUERY_PAIR = re.compile(r"((?:^|[?&;])([^=&;#\s\"?]{1,64})=)([^&;#\s\"]*)")
_SECRET_NAMES = frozenset(SECRET_PARAMETERS)
# One-time link tokens once travelled in these paths; any such line (a stale link, a probe) is redacted too.
_PATH_TOKEN = re.compile(r"(/(?:reset|verify-email|unlock)/)[^/?#\s\"]+")
# A mailed link's token after '#' never reaches a server, but a pasted URL may show it in a log line.
_FRAGMENT_TOKEN = re.compile(r"(/(?:reset|verify-email|unlock)#)[^\s\"]+")

# The loggers that write request lines or the path of a failed request.
LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error", "idp")


def _redact_pair(match: re.Match[str]) -> str:
    name = unquote_plus(match.group(2)).lower()
    return match.group(1) + REDACTED if name in _SECRET_NAMES else match.group(0)


def redact(text: str) -> str:
    """``text`` with every secret query value and link token replaced by [redacted]."""
    if "=" in text:
        text = _QUERY_PAIR.sub(_redact_pair, text)
    if "/reset" in text or "/verify-email" in text or "/unlock" in text:
        text = _PATH_TOKEN.sub(r"\1" + REDACTED, text)
        text = _FRAGMENT_TOKEN.sub(r"\1" + REDACTED, text)
    return text


class SecretsFilter(logging.Filter):
    """Redact secrets from a record's message and its arguments (a tuple, or gunicorn's dict of access atoms)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, dict):
            for key, value in list(record.args.items()):
                if isinstance(value, str):
                    record.args[key] = redact(value)
        elif isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def install(log_format: str = "text") -> None:
    """Put the filter on the loggers that write request lines, and give idp's logger one handler on standard error
    in ``log_format`` (json | text); once per process, however many apps are made (the last app's format wins)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, SecretsFilter) for existing in logger.filters):
            logger.addFilter(SecretsFilter())
    logger = logging.getLogger("idp")
    # Flask gives its app logger (named after the app: "idp") a default handler of its own when it has none yet;
    # beside this one every line would be written twice.
    logger.removeHandler(default_handler)
    handler = next((h for h in logger.handlers if isinstance(h, _IdpHandler)), None)
    if handler is None:
        handler = _IdpHandler()
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))


# --- One line per request, with a request id (issue 20) -----------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-ID"
# What an X-Request-ID from the proxy may look like (nginx's $request_id is 32 hex digits; a UUID has dashes): any
# other value is replaced, so a header cannot smuggle a forged line break or a megabyte into every log line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
request_log = logging.getLogger("idp.request")


class _IdpHandler(logging.StreamHandler):
    """The handler ``install`` puts on idp's logger (told apart from any handler a host application adds). It
    writes to whatever ``sys.stderr`` is when a line is written, like logging's own last-resort handler, not to the
    stream of the moment it was made (a test runner or a daemon may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class RequestIdFilter(logging.Filter):
    """Give every record the id of the request it was written in ('-' outside a request). Outside a request (a
    command, a job) only warnings and errors pass: `idp clients create --json` prints its JSON, not the audit
    line of the client it created."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == request_log.name and "request_id" in record.__dict__:
            return True  # a request line, written with its request's id (``request_line``)
        if not has_request_context():
            record.request_id = "-"
            return record.levelno >= logging.WARNING
        record.request_id = g.get("request_id", "-")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, the record's ``fields`` (the request
    line's method, route, status...) and a formatted exception if any. json.dumps escapes what a value could
    carry (a quote, a line break), so a line is always one parsable object."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def init_app(app: Flask) -> None:
    """Give each request an id (the proxy's when it comes from a trusted proxy, else a new one), return it in
    X-Request-ID, and write one line per request on the ``idp.request`` logger."""
    app.before_request(_begin)
    app.after_request(_finish)


def _begin() -> None:
    g.request_started = time.perf_counter()
    environ = request.environ
    # The connection's peer: where idp.http.client_address keeps it once REMOTE_ADDR holds the client's (a rate
    # limit's key may have resolved it before this hook).
    peer = environ.get(network.PEER_ADDR) or environ.get("REMOTE_ADDR") or ""
    g.request_id = request_id(request.headers.get(REQUEST_ID_HEADER, ""), peer,
                              current_app.config["IDP_TRUSTED_PROXIES"])


def request_id(offered: str, peer: str, trusted_proxies: Any) -> str:
    """A request's id: the X-Request-ID the connection's ``peer`` sent when that peer is a trusted proxy and the
    value looks like an id, else a new random one."""
    trusted = network.networks(trusted_proxies)
    if offered and trusted and network.is_trusted(peer, trusted) and _REQUEST_ID.fullmatch(offered):
        return offered
    return secrets.token_hex(16)


def _finish(response: Any) -> Any:
    rid = g.get("request_id", "")
    response.headers[REQUEST_ID_HEADER] = rid
    started = g.get("request_started")
    rule = request.url_rule
    request_line(request.method, rule.rule if rule is not None else None, request.path, response.status_code,
                 started, g.get("client_ip"), _client_id(), _subject(), rid)
    return response


def request_line(method: str, route: str | None, path: str, status: int, started: float | None, ip: str | None,
                 client_id: str | None, user: str | None, rid: str) -> None:
    """Write the one line of a request answered with ``status`` (``started`` is its perf_counter at the start)."""
    if not request_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "method": printable(method[:16]),
        "route": route,
        "path": printable(redact(path)[:2000]),
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started is not None else None,
        "ip": ip,
        "client_id": client_id,
        "user": user,
    }
    # Made and handed over with the logger's public makeRecord and handle, as Logger.info does, less its walk up the
    # stack for the caller's file and line, which no line format shows (a fifth of what writing the record costs).
    request_log.handle(request_log.makeRecord(
        request_log.name, logging.INFO, "", 0, "%s %s %s %sms client=%s user=%s",
        (fields["method"], fields["path"], status, fields["duration_ms"], client_id or "-", user or "-"), None,
        extra={"fields": fields, "request_id": rid}))


def _client_id() -> str | None:
    """The client a request names: a client_id parameter, or the user name of Basic client authentication (RFC 6749
    2.3.1). A form is read only if the view already parsed it: reading it here could parse a body nobody wanted
    (or fail on one too large)."""
    value = request.args.get("client_id") if request.query_string else None
    form = request.__dict__.get("form")
    if not value and form is not None:
        value = form.get("client_id")
    if not value and "Authorization" in request.headers:
        try:
            authorization = request.authorization
        except ValueError:  # a Basic header that is not base64 of ASCII names nobody (and must not fail the request)
            authorization = None
        if authorization is not None and authorization.type == "basic":
            value = authorization.username
    return printable(value[:128]) if value else None


def printable(text: str) -> str:
    """``text`` with every control character escaped (\\n, \\x1b...): what a request sent (its path, a client_id)
    cannot start a line of its own or move a terminal's cursor in a text log; JSON lines escape them anyway."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _subject() -> str | None:
    """The subject of the user the request acted for, when the request already loaded that user (no extra query)."""
    for holder in (g.get("login_session"), g.get("authlib_server_oauth2_token")):
        if holder is None:
            continue
        state = inspect(holder, raiseerr=False)  # None: not a model (a token read as a view, idp.oidc.server)
        if state is None or "user" not in state.unloaded:
            user = holder.user
            if user is not None:
                return user.subject
    user = g.get("api_user")
    return user.subject if user is not None else None


def database_error(exc: DBAPIError) -> str:
    """A database error for the log without any value it could quote: the driver's error class, the SQLSTATE, the
    statement (its parameters are placeholders) and where it was raised."""
    orig = exc.orig
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlite_errorname", None) or "-"
    where = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(orig).__name__} (SQLSTATE {code}) on: {exc.statement}\n{where}"
