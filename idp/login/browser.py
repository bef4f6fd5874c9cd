"""What the browser carries into the login engine: its binding, its sign-in session, and a step context."""

from __future__ import annotations

from collections.abc import Iterable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, session, url_for
from werkzeug.wrappers import Response

from idp import audit
from idp.extensions import db, limiter
from idp.http import external_url, session_cookie_name
from idp.login import sessions, transaction
from idp.login.context import StepContext
from idp.login.throttle import Throttle, account_key
from idp.models import LoginSession, LoginTransaction, TransactionState, User, utcnow
from idp.oidc.server import client_view
from idp.security.tokens import new_token


def binding() -> str:
    """A random value in the (signed) Flask session that ties login transactions to this browser."""
    value = session.get("bind")
    if not value:
        value = session["bind"] = new_token(16)
    return value


def rotate_binding() -> None:
    """A fresh binding after sign-in, so nothing begun before it can be carried on by someone else."""
    session["bind"] = new_token(16)


def current_session() -> LoginSession | None:
    """The live sign-in session of this request, loaded once per request."""
    if "login_session" not in g:
        cfg = current_app.config
        g.login_session = sessions.load(request.cookies.get(session_cookie_name()), now=utcnow(),
                                        idle_timeout=cfg["IDP_SESSION_IDLE_TIMEOUT"],
                                        max_age=cfg["IDP_SESSION_MAX_AGE"])
    return g.login_session


def this_address() -> str:
    """The path and query this request came to, as a return address is written (``begin_transaction``)."""
    query = request.query_string.decode("latin-1")  # percent-encoded ASCII; compared once decoded (transaction)
    return request.script_root + request.path + (f"?{query}" if query else "")


def signed_in() -> LoginSession:
    """The live sign-in session of a view behind ``login_required`` (which guarantees there is one)."""
    live = current_session()
    if live is None:
        raise RuntimeError("signed_in() outside a login_required view")
    return live


def current_user() -> User | None:
    """The signed-in user, if any."""
    live = current_session()
    return live.user if live is not None else None


def saved_language() -> str | None:
    """The signed-in user's chosen language (idp.i18n)."""
    user = current_user()
    return user.locale if user is not None else None


def transaction_language() -> str | None:
    """The ``ui_locales`` language of the sign-in transaction this request's page belongs to (idp.i18n)."""
    shown = g.get("shown_transaction")  # the first screen shown at the URL that began it (views.begin_here)
    if shown is not None:
        return shown.state.ui_locale
    tid = (request.view_args or {}).get("tid")
    # The error page of a request refused for a NUL (idp.http.refuse_nul) asks too: PostgreSQL cannot take one.
    if not isinstance(tid, str) or len(tid) > 64 or "\x00" in tid:
        return None
    txn = db.session.get(LoginTransaction, tid)
    return txn.state.ui_locale if txn is not None else None


def login_required(view):
    """Send a visitor without a session to sign in, coming back here afterwards."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        if current_session() is None:
            return redirect(url_for("login.begin", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)
    return wrapped


def safe_next(target: str | None) -> str | None:
    """Only a same-site path may be a return address (no open redirect): '/x', never '//x', '///x', '/\\x' or
    'http://x'. Control characters are refused too: browsers drop tabs and line breaks from a URL (so '/<tab>/x'
    is '//x' to them) and a line break cannot go into a Location header at all."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def throttle() -> Throttle:
    """The failed-attempt throttle over flask-limiter's storage (Redis when configured)."""
    cfg = current_app.config
    return Throttle(limiter.limiter, {"account": cfg["IDP_THROTTLE_ACCOUNT"], "ip": cfg["IDP_THROTTLE_IP"],
                                      "otp:account": cfg["IDP_THROTTLE_OTP"]},
                    prefix=cfg.get("RATELIMIT_KEY_PREFIX", "idp"))


def unlock_account(user: User, method: str, **details: Any) -> None:
    """Lift the lock of repeated failed sign-ins, and the failed-attempt delays with it (or the user would stay
    shut out for up to a day); audited. The caller commits."""
    user.locked_at = None
    user.failed_logins = 0
    throttle().succeeded("password", {"account": account_key(user.email)})
    audit.record("account.unlocked", subject=user, method=method, **details)


def step_context(txn: LoginTransaction) -> StepContext:
    """Everything a step may use, gathered from this request."""
    return StepContext(txn=txn, now=utcnow(), ip=g.client_ip, user_agent=g.user_agent, config=current_app.config,
                       throttle=throttle(), url=external_url, find_client=client_view,
                       device_token=request.cookies.get(device_cookie_name()))


def device_cookie_name() -> str:
    """``__Host-`` prefixed in production, like the session cookie."""
    return "__Host-idp_device" if current_app.config["IDP_ENV"] == "production" else "idp_device"


def start_transaction(*, reasons: Iterable[str], return_to: str, user: User | None = None,
                      tid_param: str | None = None, **state: Any) -> LoginTransaction:
    """Store (and commit) a login transaction for this browser.

    ``state`` sets fields of the transaction's TransactionState (client_id, scopes, login_hint, done, amr...).
    With ``tid_param``, the transaction's id is added to ``return_to`` under that query parameter, so the page it
    returns to can tell which reasons were answered.
    """
    txn = transaction.start(binding=binding(), state=TransactionState(reasons=list(reasons), return_to=return_to,
                                                                      **state),
                            now=utcnow(), ttl=current_app.config["IDP_LOGIN_TRANSACTION_TTL"], user=user)
    if tid_param:
        separator = "&" if "?" in return_to else "?"
        transaction.update(txn, return_to=f"{return_to}{separator}{tid_param}={txn.id}")
    db.session.commit()
    return txn


def begin_transaction(**kwargs: Any) -> Response:
    """Store a login transaction for this browser (``start_transaction``'s arguments) and send it to the first
    screen's own URL (the account pages, the admin console and the device flow start one this way; the sign-in
    page and the authorization endpoint show the first screen at once: idp.login.views.begin_here)."""
    return redirect(url_for("login.step", tid=start_transaction(**kwargs).id))
