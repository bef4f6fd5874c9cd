"""What idp's and its server's log lines may not carry: secrets in request lines (SECURITY.md 30).

A request line holds the query string, and some protocol parameters are secrets there (an `id_token_hint` at the
end-session endpoint, a `code` in a callback URL, a token someone pasted into a query). The werkzeug and gunicorn
access logs and idp's own error lines go through ``SecretsFilter``, which replaces those values. SQL parameters are
kept out of error messages by the engine itself (``hide_parameters``, set in ``create_app``), and a database error
is logged by ``database_error``, without the server's message, which can quote values (PostgreSQL shows the
statement with psycopg2's interpolated parameters, and a unique violation the duplicate key).
"""

from __future__ import annotations

import logging
import re
import traceback

from sqlalchemy.exc import DBAPIError

# Query parameters whose values are secrets (RFC 6749, 7009, 7636, 7662, OIDC Core and RP-Initiated Logout).
SECRET_PARAMETERS = ("id_token_hint", "logout_hint", "code", "code_verifier", "token", "refresh_token",
                     "access_token", "id_token", "client_secret", "client_assertion", "password", "auth_session")
REDACTED = "[redacted]"

_QUERY_SECRET = re.compile(r"((?:^|[?&;])(?:" + "|".join(SECRET_PARAMETERS) + r")=)[^&;#\s\"]*", re.IGNORECASE)
# One-time link tokens once travelled in these paths; any such line (a stale link, a probe) is redacted too.
_PATH_TOKEN = re.compile(r"(/(?:reset|verify-email|unlock)/)[^/?#\s\"]+")
# A mailed link's token after '#' never reaches a server, but a pasted URL may show it in a log line.
_FRAGMENT_TOKEN = re.compile(r"(/(?:reset|verify-email|unlock)#)[^\s\"]+")

# The loggers that write request lines or the path of a failed request.
LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error", "idp")


def redact(text: str) -> str:
    """``text`` with every secret query value and link token replaced by [redacted]."""
    if "=" in text:
        text = _QUERY_SECRET.sub(r"\1" + REDACTED, text)
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


def install() -> None:
    """Put the filter on the loggers that write request lines (once per process, however many apps are made)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, SecretsFilter) for existing in logger.filters):
            logger.addFilter(SecretsFilter())


def database_error(exc: DBAPIError) -> str:
    """A database error for the log without any value it could quote: the driver's error class, the SQLSTATE, the
    statement (its parameters are placeholders) and where it was raised."""
    orig = exc.orig
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlite_errorname", None) or "-"
    where = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(orig).__name__} (SQLSTATE {code}) on: {exc.statement}\n{where}"
