"""Changing and resetting a password: once, for the account pages (idp.account.views) and the account API
(idp.account.api). Each returns what was wrong by field, or None when the change is done (audited, committed,
mailed); the caller says it in its own form (a page's field message, a problem document)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_babel import gettext as _

from idp import audit
from idp.extensions import db
from idp.jobs import enqueue
from idp.login import onetime, sessions
from idp.login.browser import throttle
from idp.login.context import too_many_attempts
from idp.login.mfa import has_second_factor
from idp.login.throttle import account_key
from idp.models import LoginSession, OneTimeToken, User, utcnow
from idp.security.passwords import hash_password, password_problems, verify_password


def change(user: User, current: str, new: str, *, ip: str, keep: LoginSession | None,
           **details: Any) -> dict[str, list[str]] | None:
    """Change a password knowing the current one (throttled like a sign-in); every other session ends."""
    keys = {"account": account_key(user.email), "ip": ip}
    limiter = throttle()
    wait = limiter.retry_after("password", keys)
    if wait:
        return {"current": [too_many_attempts(wait)]}
    if not verify_password(user.password_hash, current):
        limiter.failed("password", keys)
        audit.record("password.change_failed", subject=user, reason="bad_password", durable=True, **details)
        db.session.commit()
        return {"current": [_("Your current password is not right.")]}
    problems = password_problems(new, single_factor=not has_second_factor(user),
                                 context=(user.email.split("@")[0], user.name))
    if problems:
        return {"password": problems}
    now = utcnow()
    user.password_hash = hash_password(new)
    user.password_changed_at = now
    ended = sessions.end_all(user, "password_changed", now, keep=keep)
    audit.record("password.changed", subject=user, sessions_ended=ended, **details)
    enqueue("send_mail", to=user.email, template="password_changed", context={"name": user.name})
    db.session.commit()
    return None


def reset_link(token: str) -> OneTimeToken | None:
    """The live reset (or invitation) token behind a mailed link's token, or None."""
    cfg = current_app.config
    now = utcnow()
    return (onetime.find_by_link("password_reset", token, now=now, secret_key=cfg["IDP_SECRET_KEY"],
                                 ttl=cfg["IDP_RESET_LINK_TTL"])
            or onetime.find_by_link("invite", token, now=now, secret_key=cfg["IDP_SECRET_KEY"],
                                    ttl=cfg["IDP_INVITE_LINK_TTL"]))


def reset(row: OneTimeToken, new: str, **details: Any) -> dict[str, list[str]] | None:
    """Set a new password from a mailed link (used once, atomically: SECURITY.md 32); every session ends and every
    token is revoked, and the user signs in again with every factor (SECURITY.md 20). ``{"token": [...]}`` when
    another request used the link first."""
    user = row.user
    problems = password_problems(new, single_factor=not has_second_factor(user),
                                 context=(user.email.split("@")[0], user.name))
    if problems:
        return {"password": problems}
    now = utcnow()
    if not onetime.use(row, now):
        return {"token": [_("It has expired, was already used, or was replaced by a newer one.")]}
    user.password_hash = hash_password(new)
    user.password_changed_at = now
    user.failed_logins = 0
    user.locked_at = None
    if user.email_verified_at is None and row.email == user.email:
        user.email_verified_at = now  # the link proved the address
    ended, revoked = sessions.sign_out_everywhere(user, "password_reset", now)
    audit.record("password.reset", subject=user, sessions_ended=ended, tokens_revoked=revoked, **details)
    enqueue("send_mail", to=user.email, template="password_changed", context={"name": user.name})
    db.session.commit()
    return None
