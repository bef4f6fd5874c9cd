"""The append-only audit log (written only by idp.audit)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, event
from sqlalchemy.orm import Mapped, mapped_column

from idp.extensions import Model
from idp.models.types import UTCDateTime, utcnow


class AuditEvent(Model):
    """One security event. Rows carry ids and snapshots, not foreign keys, so they outlive what they describe."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    subject_id: Mapped[int | None] = mapped_column(Integer, index=True)
    subject_email: Mapped[str | None] = mapped_column(String(320))
    client_id: Mapped[str | None] = mapped_column(String(128))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AuditLogIsAppendOnly(RuntimeError):
    """Raised when code tries to change or remove an audit row."""


@event.listens_for(AuditEvent, "before_update")
def _refuse_update(mapper, connection, target):
    raise AuditLogIsAppendOnly("audit events are never updated")


@event.listens_for(AuditEvent, "before_delete")
def _refuse_delete(mapper, connection, target):
    raise AuditLogIsAppendOnly("audit events are never deleted")
