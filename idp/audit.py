"""The one writer of the append-only audit log (SECURITY.md 29)."""

from __future__ import annotations

import logging
from typing import Any

from flask import g, has_request_context
from sqlalchemy import insert

from idp.extensions import db
from idp.models import AuditEvent, User

log = logging.getLogger("idp.audit")

# Keys that must never reach an audit row (SECURITY.md 30); a caller that passes one is a bug we want loud.
_SECRET_KEYS = {"password", "code", "token", "secret", "otp", "seed", "private_key", "client_secret"}

# Rows are only ever appended, and nothing reads one back in the request that wrote it, so they are written as one
# prepared INSERT in the caller's transaction instead of through the ORM's unit of work (issue 5: on the token
# endpoint that bookkeeping cost more than the statement itself). They commit or roll back with the caller's work.
_APPEND = insert(AuditEvent.__table__)


def record(event: str, *, subject: User | None = None, actor: User | None = None, client_id: str | None = None,
           ip: str | None = None, user_agent: str | None = None, commit: bool = False, **details: Any) -> None:
    """Append one event; who/where default to the current request's client (as resolved by idp.http)."""
    leaked = _SECRET_KEYS.intersection(details)
    if leaked:
        raise ValueError(f"audit details may not carry secrets: {sorted(leaked)}")
    if has_request_context():
        ip = ip if ip is not None else g.get("client_ip")
        user_agent = user_agent if user_agent is not None else g.get("user_agent")
    subject_id = subject.id if subject is not None else None
    db.session.connection().execute(_APPEND, {  # `at` is the column's default, the time of the INSERT
        "event": event,
        "actor_id": actor.id if actor is not None else subject_id,
        "subject_id": subject_id,
        "subject_email": subject.email if subject is not None else details.pop("email", None),
        "client_id": client_id,
        "ip": ip,
        "user_agent": (user_agent or "")[:512] or None,
        "details": details,
    })
    if commit:
        db.session.commit()
    log.info("%s subject=%s client=%s ip=%s", event, subject_id, client_id, ip)
