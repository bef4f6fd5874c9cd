"""idp: an OAuth 2.0 / OpenID Connect identity provider."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749 import InsecureTransportError
from flask import Flask, jsonify, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from idp import branding, cli, http, i18n, jobs, limits_storage, logs, metrics, prepared
from idp import config as settings
from idp.account import jobs as account_jobs
from idp.account.api import bp as account_api_bp
from idp.account.security import bp as security_bp
from idp.account.views import bp as account_bp
from idp.admin import bulk as admin_bulk
from idp.admin.api import bp as admin_api_bp
from idp.admin.console import bp as admin_console_bp
from idp.dev import bp as dev_bp
from idp.dev import demo_bp
from idp.extensions import csrf, db, limiter, migrate
from idp.http import Request
from idp.jobs import mail, sms
from idp.login import browser as login_browser
from idp.login import views as login_views
from idp.login.views import bp as login_bp
from idp.oidc import logout as oidc_logout
from idp.oidc import views as oidc_views
from idp.oidc.challenge import bp as challenge_bp
from idp.oidc.device import bp as device_bp
from idp.oidc.dynamic import bp as registration_bp
from idp.oidc.server import create_server, current_server
from idp.oidc.views import bp as oidc_bp
from idp.ops import bp as ops_bp
from idp.pg_connections import watch_connections
from idp.security import passwords

# Every background job, by the name it is enqueued under (idp.jobs).
JOBS: dict[str, Callable[..., Any]] = {
    "send_mail": mail.send_mail,
    "send_sms": sms.send_sms,
    "start_password_reset": account_jobs.start_password_reset,
    "admin_bulk": admin_bulk.run_job,
    "backchannel_logout": oidc_logout.deliver_backchannel,
}

# The HTTP errors a person may meet on a hosted page, in their words (title, what to do).
HTTP_ERRORS = {
    400: (_l("This request is not valid"), _l("Go back and try again.")),
    403: (_l("Not allowed"), _l("You may not open this page.")),
    404: (_l("Page not found"), _l("Check the address, or start again from the sign-in page.")),
    405: (_l("Not allowed here"), _l("This address does not accept this kind of request.")),
    413: (_l("Too much data"), _l("The form sent more than this server accepts.")),
    415: (_l("Unsupported content"), _l("This address does not accept that kind of content.")),
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class App(Flask):
    """Flask, asking once per function whether it must be run as a coroutine. Flask asks ``ensure_sync`` (its
    documented override point) for every hook and view on every request, and the answer, from
    ``inspect.iscoroutinefunction``, never changes for a function: idp has 17 hooks per request (issue 22). Kept
    weakly: a function made per request (``after_this_request``) leaves with its request."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Whether each function is synchronous (a flag, not the function: a value must not hold its weak key).
        self._synchronous: weakref.WeakKeyDictionary[Callable[..., Any], bool] = weakref.WeakKeyDictionary()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            synchronous = self._synchronous.get(func)
            if synchronous is None:
                synchronous = self._synchronous[func] = super().ensure_sync(func) is func
        except TypeError:  # a callable that cannot be hashed or weakly referenced: asked each time, as Flask does
            return super().ensure_sync(func)
        return func if synchronous else super().ensure_sync(func)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings, extensions, blueprints, error handlers and CLI."""
    app = App(__name__, instance_relative_config=True, template_folder=os.path.join(ROOT, "templates"),
                static_folder=os.path.join(ROOT, "static"))
    os.makedirs(app.instance_path, exist_ok=True)
    app.request_class = Request
    app.session_interface = http.FlowCookieSessions()
    # Tests pass their settings explicitly and are not influenced by the shell's IDP_* variables or a .env file.
    values = settings.load(environ={} if test_config is not None else None, overrides=test_config,
                           instance_path=app.instance_path)
    app.config.update(values)
    passwords.use_cost(app.config["IDP_PASSWORD_HASH_COST"])
    _flask_settings(app)

    db.init_app(app)
    if app.config["IDP_DATABASE_URL"].startswith("postgresql"):
        with app.app_context():
            watch_connections(db.engine)
    migrate.init_app(app, db, directory=os.path.join(ROOT, "migrations"))
    csrf.init_app(app)
    i18n.init_app(app, i18n.Sources(transaction_language=login_browser.transaction_language,
                                     saved_language=login_browser.saved_language))
    limiter.init_app(app)
    jobs.init_app(app, JOBS)
    branding.init_app(app)

    logs.init_app(app)  # first: the request id and the clock start before any other hook runs
    metrics.init_app(app)
    app.before_request(http.refuse_nul)
    app.before_request(lambda: http.resolve_client(app))
    app.after_request(http.security_headers)
    oidc_logout.init_app(app)  # after security_headers: its CSP hook runs first

    create_server(app)
    app.register_blueprint(login_bp)
    login_views.answer_returns(app, oidc_views.answer_completed)  # a sign-in for a client answers it at once
    app.register_blueprint(account_bp)
    app.register_blueprint(security_bp)
    app.register_blueprint(oidc_bp)
    app.register_blueprint(admin_api_bp)
    app.register_blueprint(admin_console_bp)
    app.register_blueprint(challenge_bp)
    app.register_blueprint(device_bp)
    app.register_blueprint(registration_bp)
    app.register_blueprint(account_api_bp)
    app.register_blueprint(ops_bp)
    if app.config["IDP_ENV"] == "development":
        app.register_blueprint(dev_bp)
        app.register_blueprint(demo_bp)

    _error_handlers(app)
    # Flask's documented way to add WSGI middleware: the two documents' plain GETs are answered before Flask.
    app.wsgi_app = prepared.PreparedDocuments(app, app.wsgi_app)  # type: ignore[method-assign]
    app.add_template_filter(json_block, "json_block")
    cli.register(app)
    logging.getLogger("idp").setLevel(logging.INFO)
    logs.install(app.config["IDP_LOG_FORMAT"])
    return app


def _flask_settings(app: Flask) -> None:
    cfg = app.config
    production = cfg["IDP_ENV"] == "production"
    cfg.update(
        SECRET_KEY=cfg["IDP_SECRET_KEY"],
        SQLALCHEMY_DATABASE_URI=cfg["IDP_DATABASE_URL"],
        # No SQL parameter (a token hash, an email, a password hash) in an error message or a log (SECURITY.md 30).
        SQLALCHEMY_ENGINE_OPTIONS={"hide_parameters": True, **cfg.get("SQLALCHEMY_ENGINE_OPTIONS", {})},
        # Flask's own signed cookie carries only the CSRF secret, flash messages and the browser binding.
        SESSION_COOKIE_NAME="__Host-idp_flow" if production else "idp_flow",
        SESSION_COOKIE_SECURE=production,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PREFERRED_URL_SCHEME="https" if production else "http",
        MAX_CONTENT_LENGTH=1024 * 1024,
        # Redis, counted in this process's memory while Redis is down (idp.limits_storage).
        RATELIMIT_STORAGE_URI=limits_storage.SCHEME + cfg["IDP_REDIS_URL"] if cfg["IDP_REDIS_URL"] else "memory://",
        RATELIMIT_KEY_PREFIX=cfg.get("RATELIMIT_KEY_PREFIX", "idp"),
        RATELIMIT_HEADERS_ENABLED=False,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the flow cookie; forms left open do not expire
        # Flask-WTF's https Referer check cannot work with Referrer-Policy: no-referrer (SECURITY.md 16); the
        # token and the SameSite=Lax cookie are the CSRF defence (ASVS V3.5).
        WTF_CSRF_SSL_STRICT=False,
    )


@event.listens_for(Engine, "connect")
def _sqlite_foreign_keys(dbapi_connection, connection_record):
    """SQLite enforces foreign keys only when asked, per connection."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def json_block(text: str):
    """A JSON text safe inside <script type="application/json">: <, > and & escaped as JSON unicode escapes."""
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or used right now (refused or dropped connections, a
    server shutting down, a pool with no free connection, SQLite's lock timeout), not that a statement was wrong."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, OperationalError):
        orig = exc.orig
        if type(orig).__module__.startswith("sqlite3"):  # SQLite also calls a missing table an OperationalError
            return "locked" in str(orig) or "unable to open" in str(orig)
        return True  # psycopg2: connection refused or dropped, shutdown, statement timeout, deadlock
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _error_handlers(app: Flask) -> None:
    def render(status: int, title: str, message: str, headers=()):
        db.session.rollback()  # a failed request leaves nothing half-written
        if http.oauth_caller():
            response = http.oauth_error(status, message or title)
        elif _wants_json() or request.path.startswith(("/admin/api/", "/api/v1/")):  # an API caller: a problem
            response = jsonify({"type": "about:blank", "title": title, "status": status, "detail": message})
            response.content_type = "application/problem+json"
        else:
            response = app.make_response(render_template("error.html", title=title, message=message))
        response.status_code = status
        for name, value in headers:  # Allow on a 405 (RFC 9110 15.5.6), Retry-After and the like
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(InsecureTransportError)
    def insecure_transport(exc):
        # A request over plain http (RFC 6749 3.1, 3.2), refused by Authlib while it builds its request, before its
        # own error handling, wherever a view builds one (the protocol endpoints, the device authorization): the
        # OAuth error insecure_transport to a protocol caller, a 400 in its own form to anyone else.
        if http.oauth_caller():
            db.session.rollback()
            return current_server().handle_error_response(None, exc)
        return render(400, str(HTTP_ERRORS[400][0]), exc.description)

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return render(400, _("This form has expired"), _("Go back, reload the page and try again."))

    @app.errorhandler(429)
    def too_many(exc):
        # Retry-After (RFC 9110 10.2.3): at most the length of the window that was exceeded.
        limit = getattr(getattr(exc, "limit", None), "limit", None)
        wait = [("Retry-After", str(int(limit.get_expiry())))] if limit is not None else []
        return render(429, _("Too many requests"), _("Please wait a minute and try again."), wait)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        code = exc.code or 500
        # Werkzeug's own title and description are English; ours are in the page's language. A description
        # that idp wrote itself (abort(400, _("..."))) was translated where it was written.
        title, default = HTTP_ERRORS.get(code, (exc.name, exc.description or ""))
        own = exc.description if exc.description and exc.description != type(exc).description else None
        return render(code, str(title), own or str(default), exc.get_headers())

    @app.errorhandler(Exception)
    def unexpected(exc):
        if database_unavailable(exc):
            # PostgreSQL restarting, failing over or out of connections: the caller may retry, and this is not a
            # bug of ours (no traceback). The pool has discarded the broken connections; the next request opens
            # new ones (issue 20).
            app.logger.warning("database unavailable on %s %s: %s", request.method, request.path,
                               type(getattr(exc, "orig", None) or exc).__name__)
            return render(503, _("Service unavailable"), _("Please try again in a minute."), [("Retry-After", "5")])
        if isinstance(exc, DBAPIError):  # its message may quote values (SECURITY.md 30)
            app.logger.error("unhandled database error on %s %s: %s", request.method, request.path,
                             logs.database_error(exc))
        else:
            app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return render(500, _("Something went wrong"), _("The error was logged. Please try again."))
