"""Known and remembered devices (SECURITY.md 28): an opaque random token in a cookie, stored hashed."""

from __future__ import annotations

from datetime import timedelta

from flask_babel import format_datetime
from flask_babel import gettext as _

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


def seen(user: User, ctx: StepContext, *, remember: bool) -> str | None:
    """Record a completed sign-in from this browser; returns a new cookie token when one must be set.

    A browser the user never signed in from gets a token and the user a "new sign-in" mail; with
    ``remember`` (after a second factor) the device skips that factor for IDP_REMEMBER_DEVICE_DAYS.
    """
    device = ctx.device()
    token = None
    if device is None or device.revoked_at is not None:
        token = new_token(32)
        first_ever = db.session.execute(db.select(Device.id).where(Device.user_id == user.id).limit(1)).first() is None
        device = Device(user_id=user.id, token_hash=token_hash(token), name=describe(ctx.user_agent), ip=ctx.ip,
                        created_at=ctx.now, last_used_at=ctx.now)
        db.session.add(device)
        audit.record("device.new", subject=user, device=device.name, ip=ctx.ip, user_agent=ctx.user_agent)
        if user.email_verified and not first_ever:  # a brand-new account's first browser is not news
            enqueue("send_mail", to=user.email, template="new_signin",
                    context={"name": user.name, "device": device.name, "ip": ctx.ip,
                             "when": format_datetime(ctx.now, "long")})
    device.last_used_at = ctx.now
    device.ip = ctx.ip
    days = int(ctx.config["IDP_REMEMBER_DEVICE_DAYS"])
    if remember and days > 0:
        device.remembered_until = ctx.now + timedelta(days=days)
        audit.record("device.remembered", subject=user, device=device.name, days=days, ip=ctx.ip,
                     user_agent=ctx.user_agent)
    return token


def remembered_devices(user: User) -> list[Device]:
    """The user's devices that are remembered and not revoked."""
    return list(db.session.execute(db.select(Device).where(
        Device.user_id == user.id, Device.revoked_at.is_(None), Device.remembered_until.is_not(None))
        .order_by(Device.last_used_at.desc())).scalars())
