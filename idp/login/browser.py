"""What the browser carries into the login engine: its binding, its sign-in session, and a step context."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, session, url_for

from idp import audit
from idp.extensions import limiter
from idp.http import external_url, session_cookie_name
from idp.login import sessions
from idp.login.steps import StepContext
from idp.login.throttle import Throttle, account_key
from idp.models import LoginSession, LoginTransaction, User, utcnow
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


def current_user() -> User | None:
    """The signed-in user, if any."""
    live = current_session()
    return live.user if live is not None else None


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


def unlock_account(user: User, method: str) -> None:
    """Lift the lock of repeated failed sign-ins, and the failed-attempt delays with it (or the user would stay
    shut out for up to a day); audited. The caller commits."""
    user.locked_at = None
    user.failed_logins = 0
    throttle().succeeded("password", {"account": account_key(user.email)})
    audit.record("account.unlocked", subject=user, method=method)


def step_context(txn: LoginTransaction) -> StepContext:
    """Everything a step may use, gathered from this request."""
    return StepContext(txn=txn, now=utcnow(), ip=g.client_ip, user_agent=g.user_agent, config=current_app.config,
                       throttle=throttle(), url=external_url, device_token=request.cookies.get(device_cookie_name()))


def device_cookie_name() -> str:
    """``__Host-`` prefixed in production, like the session cookie."""
    return "__Host-idp_device" if current_app.config["IDP_ENV"] == "production" else "idp_device"
