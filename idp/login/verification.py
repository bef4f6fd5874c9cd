"""Verifying an email address: a long-lived link, and inside a sign-in a short code from the same mail."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from idp import audit
from idp.jobs import enqueue
from idp.login import consume, onetime
from idp.models import OneTimeToken, User

PURPOSE = "verify_email"
CODE_PURPOSE = "verify_email_code"  # a short code lives at most 10 minutes, the link a day


def send_verification(user: User, *, now: datetime, config: Mapping[str, Any], url: Callable[..., str],
                      transaction_id: str | None = None) -> None:
    """Mail a verification link (long-lived) and, inside a sign-in, a 6-digit code bound to that transaction."""
    secret = config["IDP_SECRET_KEY"]
    issued = onetime.issue(PURPOSE, user, now=now, ttl=config["IDP_VERIFY_LINK_TTL"], secret_key=secret)
    assert issued.token is not None
    code = None
    code_minutes = config["IDP_EMAIL_CODE_TTL"] // 60
    if transaction_id is not None:
        code = onetime.issue(CODE_PURPOSE, user, now=now, ttl=config["IDP_EMAIL_CODE_TTL"],
                             secret_key=secret, link=False, code=True, transaction_id=transaction_id).code
    link = url("account.verify_email", _anchor=onetime.sign(issued.token, PURPOSE, secret))
    enqueue("send_mail", to=user.email, template="verify_email",
            context={"name": user.name, "link": link, "code": code, "code_minutes": code_minutes})


def mark_verified(row: OneTimeToken, now: datetime, *, ip: str, user_agent: str, method: str) -> None:
    """Mark the address the token was sent to as verified and audit it (the caller has used the token)."""
    user = row.user
    if consume.email_verified(user, row.email, now):
        audit.record("email.verified", subject=user, method=method, ip=ip, user_agent=user_agent)


def link_row(token: str, now: datetime, config: Mapping[str, Any]) -> OneTimeToken | None:
    """The live verification token behind a mailed link's token, or None."""
    return onetime.find_by_link(PURPOSE, token, now=now, secret_key=config["IDP_SECRET_KEY"],
                                ttl=config["IDP_VERIFY_LINK_TTL"])


def verify_by_link(row: OneTimeToken, now: datetime, *, ip: str, user_agent: str) -> bool:
    """Verify the address with a link's token, used once (SECURITY.md 32): the page's and the account API's way;
    False when another request used it first. The caller commits."""
    if not onetime.use(row, now):
        return False
    mark_verified(row, now, ip=ip, user_agent=user_agent, method="link")
    return True
