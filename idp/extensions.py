"""Extensions, created unbound here and bound to the app in ``create_app``."""

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, TypeVar

from flask import current_app, request
from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from idp.http import client_address
from idp.security.network import rate_key

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


# Where a session keeps what must run once its commit has returned (a list of callables).
AFTER_COMMIT = "idp.after_commit"


class Session(FlaskSession):
    """The class of ``db.session``: once a commit has returned, it runs what was waiting for it.

    A commit's own events run while the commit is still in progress, when the session may not be used; what needs
    the database after the work is saved (idp.jobs: a job run inline) is put in ``info[AFTER_COMMIT]`` by such an
    event and runs here, with the session usable again and no transaction of the caller's left open.
    """

    def commit(self) -> None:
        super().commit()
        for run in self.info.pop(AFTER_COMMIT, ()):
            run()


db = SQLAlchemy(model_class=Base, session_options={"class_": Session})
# The base class of every model. Flask-SQLAlchemy builds db.Model at run time, which a type checker cannot follow;
# it sees the declarative base that db.Model extends.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
migrate = Migrate()
csrf = CSRFProtect()
def _rate_key() -> str:
    """Per-IP limits count the client's address, an IPv6 one by its /64 (idp.security.network.rate_key)."""
    return rate_key(client_address())


class _Limiter(Limiter):
    """Flask-Limiter, its before-request check skipped outright on the endpoints without limits. Its request filter
    (below, the public API) spares them the storage, but the check still works out every request's exemption
    scopes and meta limits before it finds nothing to count: 4% of a userinfo request (issue 22, bench/README.md,
    eleventh pass). Version 4 offers no public way to skip the hook, so this overrides the method it registers
    (the version is pinned; under another one a renamed method would only bring the cost back)."""

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        if not _unlimited():
            super()._check_request_limit(callable_name, in_middleware)


# Keyed on the client's address resolved through IDP_TRUSTED_PROXIES by the key function itself (not on
# REMOTE_ADDR, which still holds the proxy's address when flask-limiter's own before-request check runs first).
limiter = _Limiter(key_func=_rate_key)

# The protocol and operations endpoints that carry no rate limit, the hot paths of a relying party and a load
# balancer, and the sign-in's authorization and step pages (their password and code answers are throttled per
# account and address by idp.login.throttle, SECURITY.md 21, not by Flask-Limiter). Flask-Limiter looks up the
# limits of every request in a before-request hook, which found none here and cost ~50 us each, a tenth of a
# discovery answer (issue 22, bench/README.md); a request filter (its public API) skips that for these endpoints.
# A limit added to one of them later would be skipped too: tests/test_rate_limits.py checks that none of them has
# one.
UNLIMITED_ENDPOINTS = frozenset({"oidc.discovery", "oidc.oauth_metadata", "oidc.jwks", "oidc.token", "oidc.userinfo",
                                 "oidc.introspect", "oidc.revoke", "ops.healthz", "ops.readyz", "ops.metrics_endpoint",
                                 "oidc.authorize", "login.step"})


@limiter.request_filter
def _unlimited() -> bool:
    return request.endpoint in UNLIMITED_ENDPOINTS


T = TypeVar("T")


def per_app(name: str, make: Callable[[], T]) -> T:
    """The current app's own ``name`` object (kept keys, kept clients), made by ``make`` on first use: the tests
    build many apps in one process, production one per worker."""
    found = current_app.extensions.get(name)
    if found is None:
        found = current_app.extensions[name] = make()
    return found


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
