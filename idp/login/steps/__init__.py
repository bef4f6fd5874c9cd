"""Login steps: each factor or screen is one class in its own file that registers itself.

A step says whether it ``applies`` to a transaction, ``begin``s its screen (sending a code if it has one),
and ``verify``s one answer. Steps never read flask.request or flask.session: the view hands them a
StepContext and the validated form data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from flask_wtf import FlaskForm

from idp import audit
from idp.extensions import db
from idp.login import mfa
from idp.login.assurance import meets
from idp.login.throttle import Throttle, account_key
from idp.models import Client, Device, Factor, LoginTransaction, User
from idp.security.tokens import token_hash

# Reasons that demand that the user proves who they are again, whatever session they have.
FRESH_LOGIN_REASONS = frozenset({"no_session", "prompt_login", "max_age", "reauth"})


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
    device_token: str | None = None  # the browser's device cookie, if any
    # Answers computed once per request: the planner asks every step whether it applies, and each asks these.
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def _once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def user(self) -> User | None:
        return self.txn.user

    @property
    def proven_amr(self) -> list[str]:
        """Methods that count: this transaction's, plus the existing session's for a step-up (not when the
        request demands a fresh sign-in: prompt=login or max_age re-authenticate every factor)."""
        fresh = bool(self.reasons & FRESH_LOGIN_REASONS)
        session_amr = None if fresh else self.state["context"].get("session_amr")
        return [*(session_amr or []), *self.state["amr"]]

    def device(self) -> Device | None:
        """This browser's device record for the user being signed in."""
        if not self.device_token or self.user is None:
            return None
        return self._once(f"device:{self.user.id}", lambda: db.session.execute(
            db.select(Device).where(Device.token_hash == token_hash(self.device_token), Device.user_id == self.user.id)
        ).scalar_one_or_none())

    def client(self) -> Client | None:
        """The client this sign-in is for (None for a direct sign-in to the account pages)."""
        return self._once("client", lambda: mfa.client_of(self.state["context"]))

    def factors(self, kind: str | None = None) -> list[Factor]:
        """The user's confirmed second factors (of one ``kind``, if given)."""
        factors = self._once(f"factors:{self.user.id}", lambda: mfa.confirmed_factors(self.user))
        return factors if kind is None else [factor for factor in factors if factor.kind == kind]

    def remembered(self) -> bool:
        """Whether a remembered device stands in for the second factor here."""
        return self._once(f"remembered:{self.user.id if self.user else None}", lambda: mfa.remembered_device_counts(
            self.reasons, self.state["context"], self.device(), self.now, self.client()))

    def required_level(self) -> str:
        return self._once(f"required:{self.user.id}", lambda: mfa.required_level(
            self.user, self.state["context"], self.client(), bool(self.factors())))

    def needs_factor(self) -> bool:
        """Whether a second factor (or a stronger one) must still be verified."""
        if self.user is None:
            return False
        return not meets(mfa.reached_level(self.proven_amr, self.remembered()), self.required_level())

    def factor_candidates(self) -> list[str]:
        """Factor steps the user can still take, strongest first (none before the user is known)."""
        if self.user is None:
            return []
        done = set(self.state["done"])
        usable = self._once(f"usable:{self.user.id}", lambda: mfa.usable_steps(
            self.user, self.required_level(), self.factors()))
        return [name for name in usable if name not in done]

    def _otp_keys(self) -> dict[str, str]:
        return {"account": account_key(self.user.email), "ip": self.ip}

    def code_attempts_blocked(self) -> Outcome | None:
        """The failure to answer while this account must wait after too many wrong codes (SECURITY.md 21)."""
        wait = self.throttle.retry_after("otp", self._otp_keys())
        return Outcome(False, f"Too many attempts. Try again in {wait} seconds.") if wait else None

    def code_attempt_failed(self, method: str) -> None:
        """Count a wrong code against the account and the IP, and audit it."""
        self.throttle.failed("otp", self._otp_keys())
        audit.record("mfa.failure", subject=self.user, method=method, ip=self.ip, user_agent=self.user_agent,
                     durable=True)

    def chosen_factor(self) -> str | None:
        """The factor step to show: the user's pick, else the strongest enrolled (an email code only if picked)."""
        candidates = self.factor_candidates()
        picked = self.state.get("factor")
        if picked in candidates:
            return picked
        automatic = [name for name in candidates if name != "email_otp"]
        return automatic[0] if automatic else None

    @property
    def state(self) -> dict[str, Any]:
        return self.txn.state

    @property
    def reasons(self) -> set[str]:
        return set(self.txn.state["reasons"])


@dataclass
class Outcome:
    """The result of verifying one answer: success with the methods proven, or a message for the user."""

    ok: bool
    error: str | None = None
    amr: tuple[str, ...] = ()


class FactorStep:
    """Mixin of the second-factor steps: a factor applies when it is the chosen one and more is needed."""

    name: ClassVar[str]

    def applies(self, ctx: StepContext) -> bool:
        return ctx.needs_factor() and ctx.chosen_factor() == self.name

    def others(self, ctx: StepContext) -> list[str]:
        """The other factors the user may pick instead (the chooser under the form)."""
        return [name for name in ctx.factor_candidates() if name != self.name]


class Step(ABC):
    """Base of every login step."""

    name: ClassVar[str]
    template: ClassVar[str]
    form_class: ClassVar[type[FlaskForm]]
    title: ClassVar[str] = ""
    order: ClassVar[int] = 100  # position in the plan: identification first, consent last

    @abstractmethod
    def applies(self, ctx: StepContext) -> bool:
        """Whether this step is part of the plan for this transaction now."""

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        """Prepare the screen (send a code if needed) and return the template's variables."""
        return {}

    @abstractmethod
    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        """Check one answer from the step's form."""

    def resend(self, ctx: StepContext) -> str | None:
        """Send the code again if the step has one; returns a message for the user, or None."""
        return None


REGISTRY: dict[str, Step] = {}
ORDER: list[str] = []


def register(cls: type[Step]) -> type[Step]:
    """Add a step class to the registry; the plan runs steps by ascending ``order``."""
    REGISTRY[cls.name] = cls()
    ORDER[:] = sorted(REGISTRY, key=lambda name: REGISTRY[name].order)
    return cls


# Importing the step modules registers them; ``order`` (not import order) decides the plan.
from idp.login.steps import (  # noqa: E402,F401
    consent,
    email_otp,
    email_verification,
    mfa_enroll,
    password,
    recovery_code,
    sms_otp,
    totp,
    webauthn,
)
