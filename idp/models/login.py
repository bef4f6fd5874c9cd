"""Server-side state of signing in: login transactions, login sessions and one-time tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.extensions import Model
from idp.models.types import JSONDataclass, UTCDateTime, utcnow
from idp.models.user import User


@dataclass(frozen=True)
class TransactionState:
    """What a login transaction remembers between screens. Frozen: a change is a new value
    (``dataclasses.replace``) assigned to ``LoginTransaction.state``, which SQLAlchemy then writes."""

    reasons: list[str]  # why the user must sign in: no_session, prompt_login, max_age, acr, consent, reauth...
    return_to: str  # where the browser goes once every step has passed
    done: list[str] = field(default_factory=list)  # names of the steps that succeeded
    amr: list[str] = field(default_factory=list)  # methods (RFC 8176) proven in this transaction

    # What the request asked for (fixed when the transaction starts).
    client_id: str | None = None
    client_name: str = ""
    scopes: list[str] = field(default_factory=list)
    acr_values: list[str] = field(default_factory=list)
    satisfied: list[str] = field(default_factory=list)  # reasons an earlier transaction of this request answered
    session_amr: list[str] | None = None  # the session's methods, which a step-up builds on
    login_hint: str = ""
    reauth_purpose: str = ""  # for a "reauth": what the user is about to change (idp.login.steps.password)
    ui_locale: str | None = None  # the first language of the request's ui_locales that idp speaks (idp.i18n)
    existing_account: str | None = None  # a sign-up for an address that has an account (no enumeration)
    # An authorization request made at the challenge endpoint (idp.oidc.challenge): PKCE and nonce for its code.
    code_request: dict[str, Any] | None = None

    # Progress.
    factor: str | None = None  # the second factor the user picked in the chooser
    remember_device: bool = False
    denied: bool = False  # the user denied consent
    used: bool = False  # the completed transaction was read back by the page it returned to
    webauthn_challenge: str | None = None  # for an assertion; single use
    webauthn_reg_challenge: str | None = None  # for a registration during sign-in; single use
    enrol_factor_id: int | None = None  # the unconfirmed factor being enrolled during sign-in
    code_sent_at: dict[str, float] = field(default_factory=dict)  # purpose -> when the last code was sent
    decoy_attempts: int = 0  # codes typed for a sign-up of an existing address

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TransactionState:
        """Read a stored state; keys this version does not know are dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


class LoginTransaction(Model):
    """One sign-in in progress: why it started, where to return, which steps are done (a JSON plan, never pickled)."""

    __tablename__ = "login_transactions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    binding_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    state: Mapped[TransactionState] = mapped_column(JSONDataclass(TransactionState))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User | None] = relationship()


class LoginSession(Model):
    """A signed-in browser. The cookie holds a random token; only its hash is stored here."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sid: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime())
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)
    acr: Mapped[str] = mapped_column(String(64), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    end_reason: Mapped[str | None] = mapped_column(String(32))

    user: Mapped[User] = relationship()

    def timed_out(self, now: datetime, *, idle_timeout: int, max_age: int) -> str | None:
        """Why the session is over by the clock ("idle_timeout" or "max_age"), or None while it may go on."""
        if (now - self.last_seen_at).total_seconds() > idle_timeout:
            return "idle_timeout"
        if (now - self.created_at).total_seconds() > max_age:
            return "max_age"
        return None


class OneTimeToken(Model):
    """An emailed link and/or code (verify email, reset password, unlock): stored hashed, expiring, single use."""

    __tablename__ = "one_time_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    code_hash: Mapped[str | None] = mapped_column(String(64))
    transaction_id: Mapped[str | None] = mapped_column(String(64), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()
