"""Enrolment inside sign-in: a user who must use MFA but has no usable factor adds one here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idp.extensions import db
from idp.login import enrolment
from idp.login.assurance import ACR_PHISHING_RESISTANT
from idp.login.forms import EnrolForm
from idp.login.steps import Outcome, Step, StepContext, register
from idp.login.transaction import update
from idp.models import Factor
from idp.security import webauthn as wa


@register
class EnrolStep(Step):
    """Add an authenticator app (confirmed by its first code) or a security key / passkey, then continue."""

    name = "mfa_enroll"
    template = "login/mfa_enroll.html"
    form_class = EnrolForm
    title = "Set up a second factor"
    order = 50

    def applies(self, ctx: StepContext) -> bool:
        return ctx.needs_factor() and ctx.chosen_factor() is None

    def _pending_totp(self, ctx: StepContext) -> Factor:
        factor_id = ctx.state.get("enrol_totp_id")
        factor = db.session.get(Factor, factor_id) if factor_id else None
        if factor is None or factor.user_id != ctx.user.id or factor.confirmed_at is not None:
            factor = enrolment.start_totp(ctx.user, ctx.now)
            update(ctx.txn, enrol_totp_id=factor.id)
        return factor

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        phishing_resistant = ctx.required_level() == ACR_PHISHING_RESISTANT
        challenge = wa.new_challenge()
        update(ctx.txn, webauthn_reg_challenge=challenge)
        variables = {"phishing_resistant": phishing_resistant,
                     "registration": enrolment.registration_options(ctx.user, challenge, passkey=True)}
        if not phishing_resistant:
            variables.update(enrolment.totp_display(self._pending_totp(ctx), ctx.user))
        return variables

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        if data.get("credential"):
            challenge = ctx.state.get("webauthn_reg_challenge")
            update(ctx.txn, webauthn_reg_challenge=None)
            try:
                factor, verified = enrolment.add_webauthn(ctx.user, data["credential"], challenge or "", ctx.now)
            except wa.WebAuthnFailed:
                return Outcome(False, "The security key or passkey could not be registered. Try again.")
            enrolment.notify_change(ctx.user, f"A {factor.name.lower()} was added to your account.",
                                    event="factor.added", kind="webauthn", ip=ctx.ip, user_agent=ctx.user_agent)
            return Outcome(True, amr=wa.amr_for(factor.backed_up, verified))
        if ctx.required_level() == ACR_PHISHING_RESISTANT:
            return Outcome(False, "This sign-in needs a security key or passkey.")
        factor = self._pending_totp(ctx)
        if not enrolment.confirm_totp(factor, data.get("code") or "", ctx.now):
            return Outcome(False, "That code is not right. Check the time on your phone and try the newest code.")
        enrolment.notify_change(ctx.user, "An authenticator app was added to your account.", event="factor.added",
                                kind="totp", ip=ctx.ip, user_agent=ctx.user_agent)
        return Outcome(True, amr=("otp",))
