"""The sign-in engine's vocabulary: a step, the context it runs in, and the outcome of one answer.

A step ``begin``s its screen (sending a code if it has one) and ``verify``s one answer. Steps never read
flask.request or flask.session: the page (or any other front end) hands them a StepContext and the validated
form data. Whether a step runs at all is the planner's business (``idp.login.planner``), not the step's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from flask_babel import format_timedelta
from flask_babel import gettext as _
from flask_wtf import FlaskForm

from idp import audit
from idp.extensions import db
from idp.login.throttle import Throttle, account_key
from idp.models import Device, Factor, LoginTransaction, TransactionState, User
from idp.security.tokens import token_hash

# Reasons that demand that the user proves who they are again, whatever session they have.
FRESH_LOGIN_REASONS = frozenset({"no_session", "prompt_login", "max_age", "reauth"})
# Reasons that are an explicit demand to authenticate now: a remembered device never answers them.
EXPLICIT_REASONS = frozenset({"acr", "prompt_login", "max_age", "reauth"})


def confirmed_factors(user: User) -> list[Factor]:
    """The user's confirmed factors (an unconfirmed enrolment does not count), oldest first."""
    return list(db.session.execute(
        db.select(Factor).where(Factor.user_id == user.id, Factor.confirmed_at.is_not(None)).order_by(Factor.id)
    ).scalars())


@dataclass
class StepContext:
    """What a step may know about the sign-in in progress and the world (time, client, settings)."""

    txn: LoginTransaction
    now: datetime
    ip: str
    user_agent: str
    config: Mapping[str, Any]
    throttle: Throttle
    url: Callable[..., str]  # builds an absolute URL: url(endpoint, **values)
    # The client with this id, to read (idp.oidc.server.client_view: the worker's kept view, no copy per request).
    find_client: Callable[[str], Any]
    device_token: str | None = None  # the browser's device cookie, if any
    # Filled in by the planner when the user is known: the level this sign-in must reach.
    required_level: str = ""
    # Answers computed once per request: the planner asks several questions that need the same rows.
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this request, the remembered answer after."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def state(self) -> TransactionState:
        return self.txn.state

    @property
    def user(self) -> User | None:
        return self.txn.user

    @property
    def reasons(self) -> set[str]:
        return set(self.txn.state.reasons)

    @property
    def fresh_login(self) -> bool:
        """Whether the request demands that every factor is proven again (prompt=login, max_age, no session)."""
        return bool(self.reasons & FRESH_LOGIN_REASONS)

    @property
    def proven_amr(self) -> list[str]:
        """Methods that count: this transaction's, plus the existing session's for a step-up (not when the
        request demands a fresh sign-in: prompt=login or max_age re-authenticate every factor)."""
        session_amr = None if self.fresh_login else self.state.session_amr
        return [*(session_amr or []), *self.state.amr]

    def device(self) -> Device | None:
        """This browser's device record for the user being signed in."""
        user = self.user
        if not self.device_token or user is None:
            return None
        token = self.device_token
        return self.once(f"device:{user.id}", lambda: db.session.execute(
            db.select(Device).where(Device.token_hash == token_hash(token), Device.user_id == user.id)
        ).scalar_one_or_none())

    def client(self) -> Any:
        """The client this sign-in is for (None for a direct sign-in to the account pages), read-only: the model,
        or the worker's kept view of it (``find_client``)."""
        client_id = self.state.client_id
        return self.find_client(client_id) if client_id else None

    def confirmed_factors(self) -> list[Factor]:
        """The user's confirmed factors (an unconfirmed enrolment does not count), oldest first."""
        user = self.user
        if user is None:
            return []
        return self.once(f"factors:{user.id}", lambda: confirmed_factors(user))

    def _otp_keys(self) -> dict[str, str]:
        assert self.user is not None
        return {"account": account_key(self.user.email), "ip": self.ip}

    def code_attempts_blocked(self) -> Outcome | None:
        """The failure to answer while this account must wait after too many wrong codes (SECURITY.md 21)."""
        wait = self.throttle.retry_after("otp", self._otp_keys())
        return Outcome(False, too_many_attempts(wait)) if wait else None

    def code_attempt_failed(self, method: str) -> None:
        """Count a wrong code against the account and the IP, and audit it."""
        self.throttle.failed("otp", self._otp_keys())
        audit.record("mfa.failure", subject=self.user, method=method, ip=self.ip, user_agent=self.user_agent,
                     durable=True)


def too_many_attempts(seconds: int) -> str:
    """The message of a throttled attempt: the wait said the way the page's language says durations."""
    return _("Too many attempts. Try again in %(wait)s.",
             wait=format_timedelta(timedelta(seconds=seconds), threshold=1.1, add_direction=False))


@dataclass
class Outcome:
    """The result of verifying one answer: success with the methods proven, or a message for the user."""

    ok: bool
    error: str | None = None
    amr: tuple[str, ...] = ()


class Step(ABC):
    """One screen of the sign-in: its template and form, how to begin it and how to check its answer."""

    name: ClassVar[str]
    template: ClassVar[str]
    form_class: ClassVar[type[FlaskForm]]
    title: ClassVar[str] = ""

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        """Prepare the screen (send a code if needed) and return the template's variables."""
        return {}

    @abstractmethod
    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        """Check one answer from the step's form."""

    def resend(self, ctx: StepContext) -> str | None:
        """Send the code again if the step has one; returns a message for the user, or None."""
        return None
