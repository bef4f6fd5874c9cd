"""The planner: turns a transaction's reasons, the user and what is done into the ordered steps still to run."""

from __future__ import annotations

from idp.login.steps import ORDER, REGISTRY, Step, StepContext


def plan(ctx: StepContext) -> list[str]:
    """Names of the steps still to run, in order (re-planned after every step: identifying the user changes it)."""
    return [name for name in ORDER if REGISTRY[name].applies(ctx)]


def next_step(ctx: StepContext) -> Step | None:
    """The step to show now, or None when the transaction can be completed (the first of plan(), found without
    asking the steps after it)."""
    return next((REGISTRY[name] for name in ORDER if REGISTRY[name].applies(ctx)), None)
