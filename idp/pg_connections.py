"""PostgreSQL connections without needless round trips: the two places idp steps under SQLAlchemy's session.

Both were measured (bench/README.md) and kept because the library's public mechanism costs a round trip per
request that these avoid:

- ``reads_only`` runs a read-only view in psycopg2's autocommit: no BEGIN and ROLLBACK around its statements.
  Round trips per request (strace): jwks 3 -> 1, userinfo 3 -> 1, introspection 4 -> 2; CPU of idp plus its
  PostgreSQL backend: userinfo -21%, introspection -14%, jwks -18%. SQLAlchemy's AUTOCOMMIT isolation level, the
  public way, sends a ``SET`` to undo it when the connection goes back.
- ``watch_connections`` replaces a connection the server has closed by looking at its socket (one ``select()``)
  instead of ``pool_pre_ping``'s ``SELECT 1`` on every checkout, which was a sixth of a userinfo request.

tests/test_connections.py checks them against what the library's own mechanisms guarantee: a connection killed by
the server is replaced before a request sees it (as with ``pool_pre_ping``), one resting long is pinged, and a
connection leaves the pool's autocommit back off (as SQLAlchemy's isolation-level reset would); tests/test_queries.py
checks that the next request
on the same connection is one transaction again.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from psycopg2.extensions import STATUS_READY
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

from idp.extensions import db


def reads_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``view``'s statements without a transaction around them (autocommit), for views that only read.

    PostgreSQL's READ COMMITTED gives each statement its own snapshot either way, so a view that only reads sees
    the same rows; what it saves is the BEGIN and the ROLLBACK, two of a userinfo request's three round trips to
    the database. Should such a view ever write, each statement commits on its own, so it is for views
    whose writes, if any, stand alone (the signing keys created on first use).

    It sets psycopg2's own ``autocommit`` on the request's connection, which sends nothing (SQLAlchemy's
    AUTOCOMMIT isolation level would cost a ``SET`` round trip to undo); ``watch_connections`` clears it when the
    connection goes back to the pool. SQLite keeps its transaction.
    """

    @wraps(view)
    def wrapped(*args, **kwargs):
        if db.engine.dialect.name == "postgresql":
            connection = db.session.connection().connection.dbapi_connection
            # No transaction open on it yet (nothing sent in this request).
            if connection is not None and connection.status == STATUS_READY:
                connection.autocommit = True
        return view(*args, **kwargs)

    return wrapped


# --- PostgreSQL connections: replaced when dead, without a round trip per request -----------------------------------

# A connection that rested in the pool longer than this is pinged (SELECT 1) before use: a connection dropped
# silently on the network (a NAT or firewall timeout) shows nothing on its socket.
PING_AFTER_IDLE_SECONDS = 30.0


def watch_connections(engine: Engine) -> None:
    """Hand out only live PostgreSQL connections (SQLAlchemy's pessimistic disconnect handling, done cheaply).

    A PostgreSQL connection at rest has nothing to read: the server speaks only when asked (the pool's
    connections never LISTEN; idp.changes listens on a connection of its own). When the server ends a connection
    (a restart, ``pg_terminate_backend``, ``idle_session_timeout``) it sends a FATAL message and closes, so the
    socket turns readable. Checking that costs one ``select()``
    instead of the ``SELECT 1`` round trip that ``pool_pre_ping`` spends on every request; a dead connection
    raises DisconnectionError, and the pool replaces it and tries again before the request sees anything.
    Anything else unread on an idle connection (an unsolicited ParameterStatus after a configuration reload) also
    retires it: at worst one needless reconnect, never a request on a connection in an unknown state.
    """
    @event.listens_for(engine, "checkin")
    def _rested_from(dbapi_connection, record) -> None:
        record.info["checked_in_at"] = time.monotonic()
        if dbapi_connection is not None and getattr(dbapi_connection, "autocommit", False):
            dbapi_connection.autocommit = False  # set for one request by reads_only; the pool's default is off

    @event.listens_for(engine, "checkout")
    def _alive(dbapi_connection, record, proxy) -> None:
        if getattr(dbapi_connection, "closed", 0):
            raise DisconnectionError("connection closed")
        try:
            readable, _, _ = select.select([dbapi_connection], [], [], 0)
        except (OSError, ValueError) as exc:  # no usable socket any more
            raise DisconnectionError(str(exc)) from exc
        if readable:
            raise DisconnectionError("the server ended the connection")
        rested = time.monotonic() - record.info.get("checked_in_at", time.monotonic())
        if rested > PING_AFTER_IDLE_SECONDS and not engine.dialect.do_ping(dbapi_connection):
            raise DisconnectionError("no answer to a ping")
