"""Login steps: each factor or screen is one class in its own file that registers itself.

A step says whether it ``applies`` to a transaction, ``begin``s its screen (sending a code if it has one),
and ``verify``s one answer. Steps never read flask.request or flask.session: the view hands them a
StepContext and the validated form data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from flask_wtf import FlaskForm

from idp.login.throttle import Throttle
from idp.models import LoginTransaction, User

# Reasons that demand that the user proves who they are again, whatever session they have.
FRESH_LOGIN_REASONS = frozenset({"no_session", "prompt_login", "max_age"})


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

    @property
    def user(self) -> User | None:
        return self.txn.user

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
    extra: dict[str, Any] = field(default_factory=dict)


class Step:
    """Base of every login step."""

    name: ClassVar[str]
    template: ClassVar[str]
    form_class: ClassVar[type[FlaskForm]]
    title: ClassVar[str] = ""
    order: ClassVar[int] = 100  # position in the plan: identification first, consent last

    def applies(self, ctx: StepContext) -> bool:
        """Whether this step is part of the plan for this transaction now."""
        raise NotImplementedError  # every step defines it; the base is never registered

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        """Prepare the screen (send a code if needed) and return the template's variables."""
        return {}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        """Check one answer from the step's form."""
        raise NotImplementedError  # every step defines it; the base is never registered

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
from idp.login.steps import consent, email_verification, password  # noqa: E402,F401
