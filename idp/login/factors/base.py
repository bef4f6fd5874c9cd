"""What a factor is to idp: one class holding its descriptor, its sign-in step, its self-service enrolment and
removal, and the kind of stored credential it uses. The registry (``idp.login.factors.REGISTRY``) lists them;
the planner, the assurance rules, the chooser, the security page and in-flow enrolment read it and name none."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from flask_babel import gettext as _
from flask_wtf import FlaskForm

from idp.extensions import db
from idp.login.context import Outcome, Step, StepContext
from idp.models import Factor, User


@dataclass
class EnrolContext:
    """What a self-service enrolment stage may know: who, when, from where, and what the stage before it left."""

    user: User
    now: datetime
    ip: str
    user_agent: str
    config: Mapping[str, Any]
    pending: dict[str, Any]  # JSON values the previous stage kept (the page stores them between requests)
    args: Mapping[str, str] = field(default_factory=dict)  # the page's query parameters (?type=key)


@dataclass
class Enrolled:
    """The result of one enrolment stage: done, go on to another stage, or an error to show on the form."""

    ok: bool
    error: str | None = None
    next_stage: str | None = None  # the stage to go on to (None: the enrolment is complete); after a failure,
    # the stage to start again from, with the error shown there
    pending: dict[str, Any] | None = None  # what to keep for the next stage
    notice: str = ""  # what changed, audited and mailed to the user (SECURITY.md 27); "" when nothing did
    event: str = "factor.added"  # the audit event of that change
    message: str = ""  # shown on the security page afterwards
    show: str | None = None  # a template rendered once instead of going back (recovery codes are shown once)
    show_context: dict[str, Any] = field(default_factory=dict)


@dataclass
class Action:
    """A button of a factor's section on the security page: a link to an enrolment stage, or a form posting to it."""

    label: str
    params: dict[str, str] = field(default_factory=dict)
    post: bool = False
    primary: bool = True


@dataclass
class Section:
    """A factor's part of the security page: its enrolled credentials and what the user can do."""

    title: str
    hint: str = ""
    items: list[tuple[Factor, str]] = field(default_factory=list)  # each credential with a line about it
    summary: str = ""
    actions: list[Action] = field(default_factory=list)


class FactorType(Step):
    """One kind of factor. The sign-in step is this object itself (``name`` is the kind)."""

    kind: ClassVar[str]
    amr_values: ClassVar[frozenset[str]]  # the RFC 8176 values a successful verify() can report
    counts_toward_mfa: ClassVar[bool] = True  # with a password, it makes a multi-factor sign-in
    phishing_resistant: ClassVar[bool] = False  # it can reach urn:idp:acr:phr (with user verification)
    automatic: ClassVar[bool] = True  # offered without being picked; False: only when the user picks it
    chooser_label: ClassVar[str] = ""  # its line in "Use another method"
    enrol_in_sign_in: ClassVar[bool] = False  # can be added in the middle of a sign-in that needs MFA
    enrol_partial: ClassVar[str] = ""  # the template part that in-flow enrolment includes for it
    # Self-service enrolment: the URL segment and its stages (name -> template and form), the first is the entry.
    slug: ClassVar[str] = ""
    enrol_stages: ClassVar[dict[str, tuple[str, type[FlaskForm]]]] = {}
    enrol_by_post_only: ClassVar[bool] = False  # the entry stage is a button on the security page, not a page

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    def available(self) -> bool:
        """Whether this server can offer the factor at all (WebAuthn needs a host name as RP ID)."""
        return True

    # --- stored credentials -----------------------------------------------------------------------------------

    def credentials(self, user: User, confirmed: list[Factor]) -> list[Factor]:
        """The user's confirmed credentials of this kind."""
        return [factor for factor in confirmed if factor.kind == self.kind]

    def offered(self, user: User, confirmed: list[Factor]) -> bool:
        """Whether the user can use this factor to sign in (``confirmed``: all their confirmed factors)."""
        return bool(self.credentials(user, confirmed))

    def remove(self, factor: Factor) -> None:
        """Delete one stored credential (the page audits and notifies)."""
        db.session.delete(factor)

    # --- the security page ------------------------------------------------------------------------------------

    def section(self, user: User, confirmed: list[Factor], config: Mapping[str, Any]) -> Section | None:
        """The factor's part of the security page, or None when it has none."""
        return None

    def enrol_begin(self, stage: str, ec: EnrolContext) -> dict[str, Any] | None:
        """Prepare an enrolment stage's page; returns its template variables (may set ``ec.pending``), or None
        when the stage cannot be shown yet (the page goes back to the first stage)."""
        return {}

    def enrol_verify(self, stage: str, ec: EnrolContext, data: Mapping[str, Any]) -> Enrolled:
        """Check the answer posted to an enrolment stage."""
        return Enrolled(False, _("This sign-in method cannot be added here."))

    # --- enrolment in the middle of a sign-in (see idp.login.steps.enrol) --------------------------------------

    def sign_in_enrol_begin(self, ctx: StepContext, phishing_resistant: bool) -> dict[str, Any]:
        """Template variables for this factor's part of the in-flow enrolment screen."""
        return {}

    def sign_in_enrol_verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome | None:
        """An Outcome if the posted form was this factor's enrolment, else None."""
        return None


class Registry:
    """The factors idp offers, strongest first (the order of the chooser and of automatic choice)."""

    def __init__(self, factors: Iterable[FactorType]):
        self._factors: list[FactorType] = list(factors)

    def __iter__(self) -> Iterator[FactorType]:
        return iter(list(self._factors))

    def get(self, kind: str | None) -> FactorType | None:
        """The factor of ``kind``, or None."""
        return next((factor for factor in self._factors if factor.kind == kind), None)

    def by_slug(self, slug: str) -> FactorType | None:
        """The factor whose self-service pages live under ``slug``."""
        return next((factor for factor in self._factors if factor.slug and factor.slug == slug), None)

    def register(self, factor: FactorType, *, before: str | None = None) -> FactorType:
        """Add a factor (an extension's or a test's), last or before the factor of kind ``before``."""
        if self.get(factor.kind) is not None:
            raise ValueError(f"a factor of kind {factor.kind!r} is already registered")
        index = next((i for i, f in enumerate(self._factors) if f.kind == before), len(self._factors))
        self._factors.insert(index, factor)
        return factor

    def unregister(self, kind: str) -> None:
        """Remove the factor of ``kind``."""
        self._factors = [factor for factor in self._factors if factor.kind != kind]

    def mfa_amr(self) -> frozenset[str]:
        """Methods that, with a password, make a multi-factor sign-in."""
        return frozenset().union(*(f.amr_values for f in self._factors if f.counts_toward_mfa))

    def phishing_resistant_amr(self) -> frozenset[str]:
        """Methods that, with user verification, are phishing-resistant on their own."""
        return frozenset().union(*(f.amr_values for f in self._factors if f.phishing_resistant))
