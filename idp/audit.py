"""The one writer of the append-only audit log (SECURITY.md 29)."""

from __future__ import annotations

import logging
from typing import Any

from flask import g, has_request_context

from idp.extensions import db
from idp.models import AuditEvent, User

log = logging.getLogger("idp.audit")

# Keys that must never reach an audit row (SECURITY.md 30); a caller that passes one is a bug we want loud.
_SECRET_KEYS = {"password", "code", "token", "secret", "otp", "seed", "private_key", "client_secret"}


def record(event: str, *, subject: User | None = None, actor: User | None = None, client_id: str | None = None,
           ip: str | None = None, user_agent: str | None = None, commit: bool = False, **details: Any) -> AuditEvent:
    """Append one event; who/where default to the current request's client (as resolved by idp.http)."""
    leaked = _SECRET_KEYS.intersection(details)
    if leaked:
        raise ValueError(f"audit details may not carry secrets: {sorted(leaked)}")
    if has_request_context():
        ip = ip if ip is not None else g.get("client_ip")
        user_agent = user_agent if user_agent is not None else g.get("user_agent")
    row = AuditEvent(
        event=event,
        actor_id=actor.id if actor is not None else (subject.id if subject is not None else None),
        subject_id=subject.id if subject is not None else None,
        subject_email=subject.email if subject is not None else details.pop("email", None),
        client_id=client_id,
        ip=ip,
        user_agent=(user_agent or "")[:512] or None,
        details=details,
    )
    db.session.add(row)
    if commit:
        db.session.commit()
    log.info("%s subject=%s client=%s ip=%s", event, row.subject_id, client_id, ip)
    return row
