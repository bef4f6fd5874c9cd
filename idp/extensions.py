"""Extensions, created unbound here and bound to the app in ``create_app``."""

from functools import wraps

from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from idp.http import client_address

# Stable constraint names so that Alembic migrations are the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every idp model."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
# Keyed on the client's address resolved through IDP_TRUSTED_PROXIES by the key function itself (not on
# REMOTE_ADDR, which still holds the proxy's address when flask-limiter's own before-request check runs first).
limiter = Limiter(key_func=client_address)


def keep_loaded(view):
    """Run ``view`` with objects staying loaded across its commits (no reload of each one after every commit).

    For the hot views that commit part-way (the authorization, token and sign-in step endpoints): what they read
    after a commit are rows they loaded or wrote themselves in the same request, so reloading them is only
    extra SELECTs. Every other request keeps SQLAlchemy's default (expire on commit).
    """

    @wraps(view)
    def wrapped(*args, **kwargs):
        session = db.session()
        session.expire_on_commit = False
        try:
            return view(*args, **kwargs)
        finally:
            session.expire_on_commit = True

    return wrapped


def reads_only(view):
    """Run ``view``'s statements without a transaction around them (autocommit), for views that only read.

    PostgreSQL's READ COMMITTED gives each statement its own snapshot either way, so a view that only reads sees
    the same rows; what it saves is the BEGIN and the ROLLBACK, two of a userinfo request's three round trips to
    the database (issue 5). Should such a view ever write, each statement commits on its own, so it is for views
    whose writes, if any, stand alone (the signing keys created on first use).

    It sets psycopg2's own ``autocommit`` on the request's connection, which sends nothing (SQLAlchemy's
    AUTOCOMMIT isolation level would cost a ``SET`` round trip to undo); ``watch_connections`` clears it when the
    connection goes back to the pool. SQLite keeps its transaction.
    """

    @wraps(view)
    def wrapped(*args, **kwargs):
        if db.engine.dialect.name == "postgresql":
            from psycopg2.extensions import STATUS_READY

            connection = db.session.connection().connection.dbapi_connection
            if connection.status == STATUS_READY:  # no transaction open on it yet (nothing sent in this request)
                connection.autocommit = True
        return view(*args, **kwargs)

    return wrapped


# --- PostgreSQL connections: replaced when dead, without a round trip per request -----------------------------------

# A connection that rested in the pool longer than this is pinged (SELECT 1) before use: a connection dropped
# silently on the network (a NAT or firewall timeout) shows nothing on its socket.
PING_AFTER_IDLE_SECONDS = 30.0


def watch_connections(engine) -> None:
    """Hand out only live PostgreSQL connections (SQLAlchemy's pessimistic disconnect handling, done cheaply).

    A PostgreSQL connection at rest has nothing to read: the server speaks only when asked (idp uses no
    LISTEN). When the server ends a connection (a restart, ``pg_terminate_backend``, ``idle_session_timeout``)
    it sends a FATAL message and closes, so the socket turns readable. Checking that costs one ``select()``
    instead of the ``SELECT 1`` round trip that ``pool_pre_ping`` spends on every request; a dead connection
    raises DisconnectionError, and the pool replaces it and tries again before the request sees anything.
    Anything else unread on an idle connection (an unsolicited ParameterStatus after a configuration reload) also
    retires it: at worst one needless reconnect, never a request on a connection in an unknown state.
    """
    import select
    import time

    from sqlalchemy import event
    from sqlalchemy.exc import DisconnectionError

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
