"""The user account."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from idp.extensions import Model
from idp.models.types import UTCDateTime, utcnow


def new_subject() -> str:
    """An opaque, never reused subject identifier (OIDC Core 2: `sub`)."""
    return secrets.token_urlsafe(16)


def normalize_email(email: str) -> str:
    """The form an address is stored and compared in: trimmed and lower-cased, so uniqueness ignores case."""
    return (email or "").strip().lower()


class VerifiedAccessors:
    """Whether a user's address and number are verified, from their columns: for the model below and for the
    columns of one read with a token (idp.oidc.server.UserView), so that it is decided in one place."""

    __slots__ = ()
    if TYPE_CHECKING:
        email_verified_at: datetime | None
        phone: str | None
        phone_verified_at: datetime | None

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None

    @property
    def phone_verified(self) -> bool:
        """Whether the profile number was proved by a code sent to it (OIDC Core 5.1 phone_number_verified)."""
        return self.phone is not None and self.phone_verified_at is not None


class User(VerifiedAccessors, Model):
    """A person who signs in."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), unique=True, default=new_subject)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    locale: Mapped[str | None] = mapped_column(String(16))  # the language chosen on the profile page (idp.i18n)
    phone: Mapped[str | None] = mapped_column(String(32))  # the profile number, E.164 (OIDC Core 5.1 phone_number)
    phone_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # when a texted code proved it
    password_hash: Mapped[str | None] = mapped_column(String(255))
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Deleted by an administrator: disabled and hidden at once, purged after IDP_DELETE_GRACE_DAYS (idp.admin).
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    mfa_required: Mapped[bool] = mapped_column(Boolean, default=False)  # set by an admin: no sign-in without MFA
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @validates("phone")
    def _phone_changed(self, _key: str, value: str | None) -> str | None:
        # A proof belongs to one number: whoever writes another number (a page, the console, the CLI) drops it,
        # so phone_number_verified can never be true for a number no code went to. (So a constructor given both
        # must name `phone` first; set_verified_phone is the one way in that keeps a proof.)
        if value != self.phone:
            self.phone_verified_at = None
        return value

    def set_verified_phone(self, phone: str, when: datetime) -> None:
        """Hold ``phone`` as the profile number, proved at ``when`` by a code texted to it."""
        self.phone = phone
        self.phone_verified_at = when

    @property
    def locked(self) -> bool:
        return self.locked_at is not None

    roles: Mapped[list[AdminRole]] = relationship(back_populates="user", cascade="all, delete-orphan",
                                                  foreign_keys="AdminRole.user_id")

    def roles_at(self, now: datetime) -> frozenset[str]:
        """The admin roles the user holds at ``now`` (a grant with an end time lapses by itself)."""
        return frozenset(grant.role for grant in self.roles if grant.until is None or grant.until > now)

    @property
    def is_admin(self) -> bool:
        """Whether the user holds any admin role now (full admin, helpdesk or auditor)."""
        return bool(self.roles_at(utcnow()))

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email}>"


class AdminJob(Model):
    """A bulk admin action (idp.admin.bulk): the users it was confirmed for, frozen then, and each one's result."""

    __tablename__ = "admin_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[int | None] = mapped_column(Integer)  # the administrator (None: the command line)
    via: Mapped[str] = mapped_column(String(16), default="console")
    user_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    results: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # user id -> "done" or why not
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AdminRole(Model):
    """An admin role granted to a user (idp.admin.service.Role), for good or until an end time."""

    __tablename__ = "admin_roles"
    __table_args__ = (UniqueConstraint("user_id", "role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    granted_by: Mapped[int | None] = mapped_column(Integer)  # the granting admin's id (None: the command line)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)  # lapses then, audited (housekeeping)

    user: Mapped[User] = relationship(back_populates="roles", foreign_keys=[user_id])
