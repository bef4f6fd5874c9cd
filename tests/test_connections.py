"""PostgreSQL connections that died in the pool are replaced before a request uses them (no 500 after a database
restart), without a ``SELECT 1`` round trip on every request (the ping was a sixth of a userinfo request).

PostgreSQL only: SQLite has no server to end a connection.
"""

from __future__ import annotations

import time

import psycopg2
import pytest
from sqlalchemy import event

from idp import pg_connections
from idp.extensions import db


@pytest.fixture
def pg_app(app):
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("PostgreSQL connections only")
    return app


@pytest.fixture
def backends(pg_app):
    """The server process ids of the connections the app's pool opened, in order; and what each checkout ran."""
    pids: list[int] = []
    statements: list[str] = []
    with pg_app.app_context():
        engine = db.engine

    def connected(dbapi_connection, record):
        pids.append(dbapi_connection.get_backend_pid())

    def executed(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "connect", connected)
    event.listen(engine, "before_cursor_execute", executed)
    yield pids, statements
    event.remove(engine, "connect", connected)
    event.remove(engine, "before_cursor_execute", executed)


def _terminate(app, pid: int) -> None:
    """End one server process, as a restart or an administrator would, and wait until it is gone."""
    with app.app_context():
        params = db.engine.url.translate_connect_args(username="user")
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert cur.fetchone()[0] is True
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone()[0] == 0:
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"backend {pid} did not end")
    finally:
        conn.close()
    time.sleep(0.1)  # the FATAL message and the close reach the client's socket


def test_a_connection_the_server_ended_is_replaced_before_use(pg_app, backends):
    pids, _ = backends
    http = pg_app.test_client()
    assert http.get("/jwks.json").status_code == 200
    assert len(pids) == 1
    _terminate(pg_app, pids[0])
    response = http.get("/jwks.json")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert len(pids) == 2 and pids[1] != pids[0]  # a new connection, opened before the request ran a statement


def test_a_live_connection_is_reused_without_a_ping(pg_app, backends):
    pids, statements = backends
    http = pg_app.test_client()
    assert http.get("/jwks.json").status_code == 200
    statements.clear()
    assert http.get("/jwks.json").status_code == 200
    assert len(pids) == 1
    assert not [s for s in statements if s.strip().upper() == "SELECT 1"], statements


def test_a_connection_that_rested_long_is_pinged(pg_app, backends, monkeypatch):
    """A connection dropped silently (no FIN from a firewall) shows nothing on its socket: after a rest, ping it."""
    pids, _ = backends
    http = pg_app.test_client()
    assert http.get("/jwks.json").status_code == 200
    with pg_app.app_context():
        dialect = db.engine.dialect
    pinged = []
    monkeypatch.setattr(pg_connections, "PING_AFTER_IDLE_SECONDS", 0.0)
    monkeypatch.setattr(dialect, "do_ping", lambda dbapi_connection: pinged.append(1) and False)  # no answer
    response = http.get("/jwks.json")
    assert response.status_code == 200
    assert pinged  # the rested connection was pinged, failed, and was replaced
    assert len(pids) == 2
