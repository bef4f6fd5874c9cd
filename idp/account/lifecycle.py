"""A user deleting their own account, undoing it, and taking their data with them: once, for the account page
(idp.account.views) and the account API (idp.account.api).

A deletion is the administrators' soft delete (idp.admin.service): disabled and hidden at once, every session ended
and every token revoked, purged after IDP_DELETE_GRACE_DAYS; the user is mailed a link that undoes it until then.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from idp import audit
from idp.extensions import db
from idp.http import external_url
from idp.jobs import enqueue
from idp.login import onetime, sessions
from idp.models import AuditEvent, Consent, Device, Factor, LoginSession, OneTimeToken, User, utcnow

RESTORE = "restore"  # the one-time token of the undo link


def _grace_seconds() -> int:
    return int(current_app.config["IDP_DELETE_GRACE_DAYS"]) * 86400


def delete(user: User, **details: Any) -> tuple[int, int]:
    """Delete the account softly and mail the undo link; returns (sessions ended, tokens revoked). Commits."""
    now = utcnow()
    was_disabled = user.disabled
    user.deleted_at = now
    user.disabled = True
    ended, revoked = sessions.sign_out_everywhere(user, "user_deleted", now)
    key = current_app.config["IDP_SECRET_KEY"]
    issued = onetime.issue(RESTORE, user, now=now, ttl=_grace_seconds(), secret_key=key)
    assert issued.token is not None
    link = external_url("account.restore", _anchor=onetime.sign(issued.token, RESTORE, key))
    # Kept in the (append-only) log as an administrator's deletion is: restoring gives that state back.
    audit.record("user.deleted", subject=user, self_service=True, was_disabled=was_disabled, sessions_ended=ended,
                 tokens_revoked=revoked, **details)
    enqueue("send_mail", to=user.email, template="account_deleted",
            context={"name": user.name, "link": link, "days": current_app.config["IDP_DELETE_GRACE_DAYS"]})
    db.session.commit()
    return ended, revoked


def restore_link(token: str) -> OneTimeToken | None:
    """The live undo token behind a mailed link's token, for an account still deleted, or None."""
    row = onetime.find_by_link(RESTORE, token, now=utcnow(), secret_key=current_app.config["IDP_SECRET_KEY"],
                               ttl=_grace_seconds())
    return row if row is not None and row.user.deleted_at is not None else None


def restore(row: OneTimeToken) -> bool:
    """Undo the deletion (the link is used once); False when another request used it first. Commits."""
    now = utcnow()
    if not onetime.use(row, now):
        return False
    user = row.user
    deleted = db.session.execute(db.select(AuditEvent.details).where(
        AuditEvent.event == "user.deleted", AuditEvent.subject_id == user.id).order_by(AuditEvent.id.desc())
        .limit(1)).scalar()
    user.deleted_at = None
    user.disabled = bool((deleted or {}).get("was_disabled"))
    audit.record("user.restored", subject=user, self_service=True)
    db.session.commit()
    return True


def export(user: User) -> dict[str, Any]:
    """Everything idp holds about the user, without a secret or a hash (GDPR Art. 15 and 20): the profile, the
    factors, devices, sessions, applications, and the audit events about them. The export is audited."""
    def when(moment: Any) -> str | None:
        return moment.isoformat() if moment is not None else None

    def rows(model: Any, *where: Any) -> list[Any]:
        return list(db.session.execute(db.select(model).where(*where).order_by(model.id)).scalars())

    events = rows(AuditEvent, AuditEvent.subject_id == user.id)
    data = {
        "profile": {"sub": user.subject, "email": user.email, "email_verified": user.email_verified,
                    "name": user.name, "phone_number": user.phone, "phone_number_verified": user.phone_verified,
                    "locale": user.locale, "created_at": when(user.created_at),
                    "password_changed_at": when(user.password_changed_at)},
        "factors": [{"kind": f.kind, "name": f.name, "created_at": when(f.created_at), "confirmed_at":
                     when(f.confirmed_at), "last_used_at": when(f.last_used_at)}
                    for f in rows(Factor, Factor.user_id == user.id)],
        "devices": [{"name": d.name, "ip": d.ip, "created_at": when(d.created_at), "last_used_at":
                     when(d.last_used_at), "remembered_until": when(d.remembered_until)}
                    for d in rows(Device, Device.user_id == user.id)],
        "sessions": [{"ip": s.ip, "user_agent": s.user_agent, "created_at": when(s.created_at),
                      "ended_at": when(s.ended_at), "acr": s.acr, "amr": list(s.amr)}
                     for s in rows(LoginSession, LoginSession.user_id == user.id)],
        "applications": [{"client_id": c.client_id, "scopes": c.scopes, "granted_at": when(c.created_at),
                          "revoked_at": when(c.revoked_at)} for c in rows(Consent, Consent.user_id == user.id)],
        "events": [{"at": when(e.at), "event": e.event, "ip": e.ip, "user_agent": e.user_agent,
                    "client_id": e.client_id, "details": e.details} for e in events],
    }
    audit.record("user.exported", subject=user, events=len(events))
    db.session.commit()
    return data
