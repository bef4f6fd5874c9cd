"""Second factor: a code from an authenticator app (TOTP, RFC 6238)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idp.login import enrolment
from idp.login.forms import FactorCodeForm
from idp.login.steps import FactorStep, Outcome, Step, StepContext, register
from idp.login.transaction import update


@register
class TotpStep(FactorStep, Step):
    """Ask for the current code of any of the user's authenticator apps."""

    name = "totp"
    template = "login/totp.html"
    form_class = FactorCodeForm
    title = "Authenticator app"
    order = 41

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        return {"others": self.others(ctx),
                "remember_days": ctx.config["IDP_REMEMBER_DEVICE_DAYS"]}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        blocked = ctx.code_attempts_blocked()
        if blocked:
            return blocked
        for factor in ctx.factors("totp"):
            if enrolment.accept_totp(factor, data.get("code", ""), ctx.now, ctx.config["IDP_SECRET_KEY"]):
                update(ctx.txn, remember_device=bool(data.get("remember")))
                return Outcome(True, amr=("otp",))
        ctx.code_attempt_failed("totp")
        return Outcome(False, "That code is not right. Use the newest code from your app.")
