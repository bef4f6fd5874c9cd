"""Second factors, recovery codes and known devices."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.extensions import Model
from idp.models.types import UTCDateTime, utcnow
from idp.models.user import User


class Factor(Model):
    """An enrolled factor: a TOTP app, a verified phone (SMS), or a WebAuthn credential (security key, passkey)."""

    __tablename__ = "factors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # the factor's kind: totp | sms | webauthn | ...
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # counts only once confirmed
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # TOTP: the seed, encrypted; the last accepted time step (replay protection).
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    last_step: Mapped[int | None] = mapped_column(Integer)
    # SMS: the verified number in E.164.
    phone: Mapped[str | None] = mapped_column(String(32))
    # WebAuthn: credential id and COSE public key (base64url), signature counter, what the authenticator is.
    credential_id: Mapped[str | None] = mapped_column(String(1024), unique=True)
    public_key: Mapped[str | None] = mapped_column(Text)
    sign_count: Mapped[int] = mapped_column(Integer, default=0)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)  # a synced passkey
    discoverable: Mapped[bool] = mapped_column(Boolean, default=False)
    transports: Mapped[str] = mapped_column(String(200), default="")

    user: Mapped[User] = relationship()

    # Each factor module maps its own subtype of this row (single-table inheritance on ``kind``).
    __mapper_args__ = {"polymorphic_on": "kind"}


class RecoveryCode(Model):
    """One of ten single-use recovery codes, stored as a keyed hash."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Device(Model):
    """A browser a user signed in from: known (no new-sign-in mail) and, if asked, remembered (skips the 2nd factor)."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    remembered_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
