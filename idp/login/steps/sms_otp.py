"""Second factor: a code sent by text message to a verified phone (a restricted factor, SP 800-63B 3.1.3.3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idp.login.codes import CodeDelivery, mask_phone, send_sms_code
from idp.login.forms import FactorCodeForm
from idp.login.steps import FactorStep, Outcome, Step, StepContext, register
from idp.login.transaction import update
from idp.models import Factor


def _phone(ctx: StepContext) -> Factor | None:
    """The verified phone used most recently (the first one added, if none was used yet)."""
    phones = ctx.factors("sms")
    used = [f for f in phones if f.last_used_at is not None]
    return max(used, key=lambda f: f.last_used_at) if used else min(phones, key=lambda f: f.id, default=None)


@register
class SmsStep(CodeDelivery, FactorStep, Step):
    """Text a 6-digit code to the user's verified number."""

    name = "sms"
    purpose = "sms_login"
    template = "login/sms.html"
    form_class = FactorCodeForm
    title = "Text message"
    order = 42

    def deliver(self, ctx: StepContext) -> None:
        factor = _phone(ctx)
        send_sms_code(ctx.user, factor.phone, lambda code: f"{code} is your sign-in code. Do not share it.",
                      purpose=self.purpose, ttl=ctx.config["IDP_SMS_CODE_TTL"], transaction_id=ctx.txn.id, ip=ctx.ip)

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        error = self.ensure_sent(ctx)
        factor = _phone(ctx)
        return {"phone": mask_phone(factor.phone) if factor else "", "send_error": error,
                "others": self.others(ctx),
                "remember_days": ctx.config["IDP_REMEMBER_DEVICE_DAYS"]}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        outcome = self.check(ctx, data.get("code", ""), ("sms",))
        if outcome.ok:
            factor = _phone(ctx)
            factor.last_used_at = ctx.now
            update(ctx.txn, remember_device=bool(data.get("remember")))
        return outcome
