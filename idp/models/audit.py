"""The append-only audit log (written only by idp.audit)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text, event
from sqlalchemy.orm import Mapped, ORMExecuteState, Session, mapped_column

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
    # The hash chain (SECURITY.md 35): the row_hash of the row before (64 zeros for the first) and
    # sha256(prev_hash + canonical JSON of this row's content), both hex; written by idp.audit, checked by
    # `idp audit verify`. Nullable only because a column added to a filled table on SQLite cannot be NOT NULL
    # without a rebuild; every row has them (migration 0010 chains the rows that were there before).
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    row_hash: Mapped[str | None] = mapped_column(String(64))


class AuditCheckpoint(Model):
    """A signed statement that the chain ended at ``last_event_id`` with ``row_hash`` at time ``at``: a JWS over
    those three, by the active signing key ``kid``. Rewriting the chain up to a checkpoint would need that key."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), index=True)
    row_hash: Mapped[str] = mapped_column(String(64))
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)


class AuditAnchor(Model):
    """Where the kept part of the chain begins after a prune (idp.audit.prune, IDP_AUDIT_RETENTION_DAYS): the rows
    up to ``last_event_id`` were archived to the file ``archive`` and may be deleted, and the first kept row links
    to ``row_hash``, the hash of the last of them. Signed like a checkpoint (a JWS by the active signing key ``kid``
    over every column but kid and signature, marked as an anchor), so nobody without that key can cut the start
    of the log off and anchor what is left. The database lets a DELETE of audit_events through only for rows an
    anchor covers (migration 0012)."""

    __tablename__ = "audit_anchors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), unique=True, index=True)
    row_hash: Mapped[str] = mapped_column(String(64))
    events: Mapped[int] = mapped_column(Integer)  # how many rows the prune archived
    archive: Mapped[str] = mapped_column(String(255))  # the archive's file name (in IDP_AUDIT_ARCHIVE_DIR)
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)


class AuditLogIsAppendOnly(RuntimeError):
    """Raised when code tries to change or remove an audit row."""


@event.listens_for(AuditEvent, "before_update")
@event.listens_for(AuditCheckpoint, "before_update")
@event.listens_for(AuditAnchor, "before_update")
def _refuse_update(mapper, connection, target):
    raise AuditLogIsAppendOnly("audit events are never updated")


@event.listens_for(AuditEvent, "before_delete")
@event.listens_for(AuditCheckpoint, "before_delete")
@event.listens_for(AuditAnchor, "before_delete")
def _refuse_delete(mapper, connection, target):
    raise AuditLogIsAppendOnly("audit events are never deleted")


# The one bulk change of the audit tables the application makes: idp.audit.prune's DELETE of archived rows, marked
# with this execution option. Any other UPDATE or DELETE statement on them run through a session is refused here
# (the triggers of migrations 0001, 0010 and 0012 refuse it in the database too, whoever runs it).
PRUNE_OPTION = "idp_audit_prune"
_GUARDED = frozenset({"audit_events", "audit_checkpoints", "audit_anchors"})


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk_change(state: ORMExecuteState) -> None:
    if not (state.is_update or state.is_delete):
        return
    name = getattr(getattr(state.statement, "table", None), "name", None)
    if name not in _GUARDED:
        return
    if state.is_delete and name == "audit_events" and state.execution_options.get(PRUNE_OPTION):
        return
    raise AuditLogIsAppendOnly(f"{name} is append-only")
