"""The sign-in plan: every step in order, each with the condition under which it runs.

The plan is re-read after every answer (identifying the user changes what is left); the first entry whose
condition holds is the screen to show, and when none holds the transaction is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from idp.login import mfa
from idp.login.context import Step, StepContext
from idp.login.factors import REGISTRY
from idp.login.steps.consent import ConsentStep
from idp.login.steps.email_verification import EmailVerificationStep
from idp.login.steps.mfa_enroll import EnrolStep
from idp.login.steps.password import PasswordStep

PASSWORD = PasswordStep()
EMAIL_VERIFICATION = EmailVerificationStep()
ENROL = EnrolStep()
CONSENT = ConsentStep()


def identity_unproven(ctx: StepContext) -> bool:
    """Nobody is identified yet, or the request demands a fresh sign-in (prompt=login, max_age, re-auth)."""
    return PASSWORD.name not in ctx.state.done and (ctx.user is None or ctx.fresh_login)


def email_unverified(ctx: StepContext) -> bool:
    """The user's address is unverified (or this is a sign-up for an address that already has an account)."""
    if EMAIL_VERIFICATION.name in ctx.state.done:
        return False
    return bool(ctx.state.existing_account) or (ctx.user is not None and not ctx.user.email_verified)


def factor_missing(ctx: StepContext) -> bool:
    """A second factor (or a stronger one) is needed and the user has one to offer."""
    return mfa.needs_factor(ctx) and mfa.chosen_factor(ctx) is not None


def no_usable_factor(ctx: StepContext) -> bool:
    """A second factor is needed and the user has none that reaches the level: they add one now."""
    return mfa.needs_factor(ctx) and mfa.chosen_factor(ctx) is None


def consent_asked(ctx: StepContext) -> bool:
    """A third-party client (or prompt=consent) needs the user's consent to the scopes."""
    return "consent" in ctx.reasons and CONSENT.name not in ctx.state.done and ctx.user is not None


def chosen_factor(ctx: StepContext) -> Step | None:
    """The factor the user picked, else the strongest one they can use."""
    return REGISTRY.get(mfa.chosen_factor(ctx))


@dataclass(frozen=True)
class Entry:
    """One line of the plan: the step (or how to pick it) and when it runs."""

    step: Step | Callable[[StepContext], Step | None]
    when: Callable[[StepContext], bool]

    def resolve(self, ctx: StepContext) -> Step | None:
        return self.step if isinstance(self.step, Step) else self.step(ctx)


PLAN: list[Entry] = [
    Entry(PASSWORD, when=identity_unproven),  # identify: email + password, or a passkey
    Entry(EMAIL_VERIFICATION, when=email_unverified),  # a code (or the link) from the verification mail
    Entry(chosen_factor, when=factor_missing),  # second factor: the level needs one and the user has one
    Entry(ENROL, when=no_usable_factor),  # second factor: the level needs one the user does not have yet
    Entry(CONSENT, when=consent_asked),  # a third-party client's scopes
]


def next_step(ctx: StepContext) -> Step | None:
    """The step to show now, or None when the transaction can be completed."""
    for entry in PLAN:
        if entry.when(ctx):
            return entry.resolve(ctx)
    return None

