"""Jobs behind the account pages. The request only enqueues; the job looks the account up, so a reset request
for an unknown address costs the request exactly what a known one costs (SECURITY.md 19)."""

from __future__ import annotations

from flask import current_app

from idp import audit
from idp.extensions import db
from idp.http import external_url
from idp.jobs import enqueue
from idp.login import onetime
from idp.models import User, utcnow
from idp.models.user import normalize_email


def start_password_reset(email: str, ip: str | None = None, user_agent: str | None = None,
                         language: str | None = None) -> None:
    """Mail a reset link (in ``language``) if ``email`` belongs to an enabled account and no link went out within
    the cooldown."""
    cfg = current_app.config
    now = utcnow()
    user = db.session.execute(db.select(User).where(User.email == normalize_email(email))).scalar_one_or_none()
    if user is None or user.disabled:
        return
    last = onetime.latest("password_reset", user.id)
    if last is not None and (now - last.created_at).total_seconds() < cfg["IDP_RESEND_COOLDOWN"]:
        return
    issued = onetime.issue("password_reset", user, now=now, ttl=cfg["IDP_RESET_LINK_TTL"],
                           secret_key=cfg["IDP_SECRET_KEY"])
    audit.record("password.reset_requested", subject=user, ip=ip, user_agent=user_agent)
    assert issued.token is not None
    link = external_url("account.reset_password",  # the token in the fragment: see account.views._link_page
                        _anchor=onetime.sign(issued.token, "password_reset", cfg["IDP_SECRET_KEY"]))
    enqueue("send_mail", to=user.email, template="password_reset", language=language,
            context={"name": user.name, "link": link, "minutes": cfg["IDP_RESET_LINK_TTL"] // 60})
    db.session.commit()  # the link's token, and the mail that carries it (sent once this has committed)
