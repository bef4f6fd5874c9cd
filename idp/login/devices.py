"""Known and remembered devices (SECURITY.md 28): an opaque random token in a cookie, stored hashed."""

from __future__ import annotations

from datetime import timedelta

from flask_babel import format_datetime
from flask_babel import gettext as _
from itsdangerous import BadSignature, URLSafeTimedSerializer

from idp import audit
from idp.extensions import db
from idp.jobs import enqueue
from idp.login.context import StepContext
from idp.models import Device, User
from idp.security.tokens import new_token, token_hash


def describe(user_agent: str) -> str:
    """A short name for a browser from its User-Agent ("Chrome on Linux")."""
    ua = user_agent or ""
    browser = next((name for key, name in (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
                                           ("Safari/", "Safari")) if key in ua), _("A browser"))
    system = next((name for key, name in (("Android", "Android"), ("iPhone", "iPhone"), ("iPad", "iPad"),
                                          ("Windows", "Windows"), ("Mac OS", "macOS"), ("Linux", "Linux"))
                   if key in ua), _("an unknown system"))
    return _("%(browser)s on %(system)s", browser=browser, system=system)


def seen(user: User, ctx: StepContext, *, remember: bool, sid: str | None = None) -> str | None:
    """Record a completed sign-in from this browser; returns a new cookie token when one must be set.

    A browser the user never signed in from gets a token and the user a "new sign-in" mail; with
    ``remember`` (after a second factor) the device skips that factor for IDP_REMEMBER_DEVICE_DAYS.
    """
    device = ctx.device()
    token = None
    if device is None or device.revoked_at is not None:
        token = new_token(32)
        with db.session.no_autoflush:  # (the sign-in's rows go in with its one flush, at its commit)
            first_ever = db.session.execute(db.select(Device.id).where(Device.user_id == user.id).limit(1)).first() \
                is None
        device = Device(user_id=user.id, token_hash=token_hash(token), name=describe(ctx.user_agent), ip=ctx.ip,
                        created_at=ctx.now, last_used_at=ctx.now)
        db.session.add(device)
        audit.record("device.new", subject=user, device=device.name, ip=ctx.ip, user_agent=ctx.user_agent)
        if user.email_verified and not first_ever:  # a brand-new account's first browser is not news
            # With a link that ends the new session (``sid``): signed, so nobody can end sessions by guessing.
            end_link = ctx.url("account.end_session_link", _anchor=sign_session(sid, ctx.config["IDP_SECRET_KEY"])) \
                if sid else None
            enqueue("send_mail", to=user.email, template="new_signin",
                    context={"name": user.name, "device": device.name, "ip": ctx.ip,
                             "when": format_datetime(ctx.now, "long"), "end_link": end_link})
    device.last_used_at = ctx.now
    device.ip = ctx.ip
    days = int(ctx.config["IDP_REMEMBER_DEVICE_DAYS"])
    if remember and days > 0:
        device.remembered_until = ctx.now + timedelta(days=days)
        audit.record("device.remembered", subject=user, device=device.name, days=days, ip=ctx.ip,
                     user_agent=ctx.user_agent)
    return token


END_SESSION = "end_session"  # the salt of a new-sign-in mail's "end that session" link


def sign_session(sid: str, secret_key: str) -> str:
    """The token of an "end that session" link: the session's id, signed (it ends one session, nothing else)."""
    return URLSafeTimedSerializer(secret_key, salt=f"idp.{END_SESSION}").dumps(sid)


def signed_session(token: str, secret_key: str, max_age: int) -> str | None:
    """The session id an "end that session" link names, or None when tampered or older than ``max_age``."""
    try:
        sid = URLSafeTimedSerializer(secret_key, salt=f"idp.{END_SESSION}").loads(token, max_age=max_age)
    except BadSignature:
        return None
    return sid if isinstance(sid, str) else None


def remembered_devices(user: User) -> list[Device]:
    """The user's devices that are remembered and not revoked."""
    return list(db.session.execute(db.select(Device).where(
        Device.user_id == user.id, Device.revoked_at.is_(None), Device.remembered_until.is_not(None))
        .order_by(Device.last_used_at.desc())).scalars())
