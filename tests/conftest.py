"""Fixtures: the app on SQLite (default) or PostgreSQL + Redis (IDP_TEST_DATABASE_URL / IDP_TEST_REDIS_URL),
a real SMTP server on loopback, factories for users and clients, and the app on a live loopback server."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from idp import create_app
from idp.extensions import db, limiter
from tests.support import Mailbox, SMTPServer, make_user_in, node_package

# Under pytest-xdist each worker ("gw0", "gw1", ...) gets a database and a Redis database of its own, derived from
# the configured ones, since the suite wipes its database's schema and counts what lands in Redis.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def _per_worker_database(url: str) -> str:
    """``postgresql://host/test`` -> ``postgresql://host/test_gw0`` in worker gw0; unchanged without xdist."""
    if not url or not WORKER:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}_{WORKER}"))


def _per_worker_redis(url: str) -> str:
    """``redis://host:6379/0`` -> ``redis://host:6379/1`` in worker gw0, ``/2`` in gw1 ... (16 databases)."""
    if not url or not WORKER:
        return url
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base + int(WORKER.removeprefix('gw')) + 1) % 16}"))


CONFIGURED_DATABASE_URL = os.environ.get("IDP_TEST_DATABASE_URL", "")
TEST_DATABASE_URL = _per_worker_database(CONFIGURED_DATABASE_URL)
TEST_REDIS_URL = _per_worker_redis(os.environ.get("IDP_TEST_REDIS_URL", ""))
SECRET = "test-secret-key-" + "x" * 40


def base_config(tmp_path, **extra) -> dict:
    """Settings of one test's app; every test gets its own outbox, queue and rate-limit key space."""
    run = uuid.uuid4().hex[:12]
    config = {
        "IDP_ENV": "testing",
        "IDP_SECRET_KEY": SECRET,
        "IDP_ISSUER": "http://localhost",
        "IDP_OUTBOX_DIR": str(tmp_path / "outbox"),
        "IDP_REDIS_URL": TEST_REDIS_URL,
        "IDP_QUEUE_NAME": f"idp-test-{run}",
        "RATELIMIT_KEY_PREFIX": f"idp-test-{run}",
        "IDP_JOB_RETRY_INTERVALS": [],
        # Cheap argon2id: a production hash costs ~100 ms, and the suite hashes thousands of passwords. The tests
        # about the cost itself (tests/test_config.py, tests/test_security_unit.py) use the production cost.
        "IDP_PASSWORD_HASH_COST": "t=1,m=64,p=1",
    }
    config.update(extra)
    if config["IDP_ENV"] == "production" and "IDP_PASSWORD_HASH_COST" not in extra:
        del config["IDP_PASSWORD_HASH_COST"]  # production refuses a cheap cost: it hashes at its own
    return config


@pytest.fixture(scope="session")
def database(tmp_path_factory):
    """A migrated database: PostgreSQL when IDP_TEST_DATABASE_URL is set (wiped first), else a SQLite template."""
    if TEST_DATABASE_URL:
        if TEST_DATABASE_URL != CONFIGURED_DATABASE_URL:
            _create_database(TEST_DATABASE_URL)
        engine = create_engine(TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg2://", 1))
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        url = TEST_DATABASE_URL
    else:
        url = "sqlite:///" + str(tmp_path_factory.mktemp("db") / "template.sqlite3")
    app = create_app(base_config(tmp_path_factory.mktemp("migrate"), IDP_DATABASE_URL=url))
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()
    return url


def _create_database(url: str) -> None:
    """Create this worker's database beside the configured one (through the server's maintenance database)."""
    parts = urlsplit(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    name = parts.path.lstrip("/")
    engine = create_engine(urlunsplit(parts._replace(path="/postgres")), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first() is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


def _fresh_database(database: str, tmp_path) -> str:
    if database.startswith("sqlite:///"):
        copy = tmp_path / "idp.sqlite3"
        shutil.copy(database[len("sqlite:///"):], copy)
        return f"sqlite:///{copy}"
    return database


def _empty_tables(app) -> None:
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in db.metadata.sorted_tables)
            with db.engine.begin() as conn:  # TRUNCATE fires no row trigger: the audit log stays append-only
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="session")
def smtp_server():
    """A real SMTP server (aiosmtpd) on 127.0.0.1 for the whole run."""
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_app(database, tmp_path, smtp_server):
    """Build an app with extra settings (mail goes to the loopback SMTP server unless told otherwise)."""
    apps = []

    def factory(**extra):
        url = _fresh_database(database, tmp_path)
        defaults = {"IDP_DATABASE_URL": url, "IDP_MAIL_BACKEND": "smtp", "IDP_SMTP_HOST": "127.0.0.1",
                    "IDP_SMTP_PORT": smtp_server.port}
        config = base_config(tmp_path, **{**defaults, **extra})
        app = create_app(config)
        if not apps:
            # flask-limiter keeps the first app's RATELIMIT_KEY_PREFIX for good, so with Redis its counters (the
            # per-IP form limit, say) would carry over from the tests before: each test starts with none.
            limiter.reset()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        _empty_tables(app)


@pytest.fixture
def app(make_app):
    """The app under test with default test settings."""
    return make_app()


@pytest.fixture
def client(app):
    """A browser-like test client."""
    return app.test_client()


@pytest.fixture
def mailbox(app, smtp_server):
    """What the loopback SMTP server received during this test (RQ jobs are run first when Redis is used)."""
    smtp_server.messages.clear()
    return Mailbox(app, smtp_server)


@pytest.fixture
def make_user(app):
    """Create a user directly in the database: make_user(email=..., password=..., verified=True, **fields)."""
    def factory(**kwargs):
        return make_user_in(app, **kwargs)
    return factory


@pytest.fixture
def alice(make_user):
    """The default user (alice@example.com, tests.support.PASSWORD, verified); a module may define its own."""
    return make_user()


@pytest.fixture
def conf(make_client):
    """A confidential first-party client (no consent screen): (client_id, secret); a module may define its own."""
    return make_client(name="Conf App", first_party=True)


@pytest.fixture
def make_client(app):
    """Register a client: make_client(redirect_uris=[...], public=False, first_party=False, ...) -> (id, secret)."""
    from tests.support import make_client_in

    def factory(**kwargs):
        return make_client_in(app, **kwargs)
    return factory


class _Deferred:
    """A WSGI app handed to the server after it has bound its port (the app's issuer needs that port)."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


class LiveServer:
    """The app served by werkzeug on 127.0.0.1 in a background thread, named ``host`` in its issuer.

    WebAuthn needs a host name as RP ID (an IP address is not one), so those tests name it "localhost".
    """

    def __init__(self, make_app, host: str = "127.0.0.1", **extra):
        deferred = _Deferred()
        # Threaded: Chromium may open a connection ahead of time and send nothing on it for a while.
        self._server = make_server("127.0.0.1", 0, deferred, threaded=True)
        self.url = f"http://{host}:{self._server.server_port}"
        try:
            self.app = deferred.app = make_app(IDP_ISSUER=self.url, **extra)  # mailed links point here
        except BaseException:
            self._server.server_close()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="idp-live-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def live_server(make_app):
    """The app on a live loopback server whose IDP_ISSUER is the server's own origin."""
    server = LiveServer(make_app)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_localhost(make_app):
    """The app on a live loopback server reached as http://localhost:PORT (its issuer): WebAuthn needs a host name
    as RP ID, and "localhost" is a secure context in Chromium."""
    server = LiveServer(make_app, host="localhost")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cli(app):
    """Run an `idp` command against the test app: cli("users", "list", input=...)."""
    runner = app.test_cli_runner()

    def run(*args, input=None):
        return runner.invoke(args=list(args), input=input)

    return run


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium, once for the whole run (Playwright's sync API allows one driver per thread)."""
    from playwright.sync_api import sync_playwright

    from tests.support import CHROMIUM, CHROMIUM_ARGS

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def console_errors():
    """Console errors (CSP violations among them) and uncaught exceptions of every page in a browser test."""
    return []


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe.min.js from npm (tests/rp), evaluated in each page through the DevTools protocol: the page's own CSP
    (script-src 'self') is left as it is, since nothing is added to the document."""
    try:
        return (node_package("axe-core") / "axe.min.js").read_text()
    except (OSError, AssertionError) as problem:
        if os.environ.get("IDP_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"IDP_TEST_REQUIRE_BROWSER=1 but axe-core could not be installed: {problem}", pytrace=False)
        pytest.skip(f"axe-core could not be installed (npm ci in tests/rp): {problem}")
