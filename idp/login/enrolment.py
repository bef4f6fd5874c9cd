"""What every change to a user's sign-in methods ends with: an audit row and a mail (SECURITY.md 27)."""

from __future__ import annotations

from typing import Any

from idp import audit
from idp.jobs import enqueue
from idp.models import User


def notify_change(user: User, what: str, *, event: str, next_step: str = "", **details: Any) -> None:
    """Audit a security change and tell the user by email (SECURITY.md 27); ``next_step`` is a line for the mail."""
    audit.record(event, subject=user, **details)
    if user.email_verified:
        enqueue("send_mail", to=user.email, template="security_notice",
                context={"name": user.name, "what": what, "detail": next_step})
