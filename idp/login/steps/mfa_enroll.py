"""Enrolment inside sign-in: a user who must use MFA but has no usable factor adds one here.

The screen offers every factor that can be enrolled in a sign-in (``enrol_in_sign_in``), each through its own
part of the template; only phishing-resistant ones when the sign-in needs that level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from idp.login.assurance import ACR_PHISHING_RESISTANT
from idp.login.context import Outcome, Step, StepContext
from idp.login.factors import REGISTRY, FactorType
from idp.login.forms import EnrolForm


def enrollable(ctx: StepContext) -> list[FactorType]:
    """The factors this sign-in can add, strongest first."""
    phishing_resistant = ctx.required_level == ACR_PHISHING_RESISTANT
    return [factor for factor in REGISTRY
            if factor.enrol_in_sign_in and factor.available()
            and (factor.phishing_resistant or not phishing_resistant)]


class EnrolStep(Step):
    """Add a second factor (an authenticator app confirmed by its first code, a security key...), then go on."""

    name = "mfa_enroll"
    template = "login/mfa_enroll.html"
    form_class = EnrolForm
    title = _l("Set up a second factor")

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        phishing_resistant = ctx.required_level == ACR_PHISHING_RESISTANT
        factors = enrollable(ctx)
        variables: dict[str, Any] = {"phishing_resistant": phishing_resistant, "enrol_factors": factors}
        for factor in factors:
            variables.update(factor.sign_in_enrol_begin(ctx, phishing_resistant))
        return variables

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        for factor in enrollable(ctx):
            outcome = factor.sign_in_enrol_verify(ctx, data)
            if outcome is not None:
                return outcome
        if ctx.required_level == ACR_PHISHING_RESISTANT:
            return Outcome(False, _("This sign-in needs a security key or passkey."))
        return Outcome(False, _("That code is not right. Check the time on your phone and try the newest code."))
