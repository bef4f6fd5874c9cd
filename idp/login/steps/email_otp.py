"""A code sent to the verified email address. Offered when picked; it never counts toward MFA (SECURITY.md 24)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idp.jobs import enqueue
from idp.login import onetime
from idp.login.codes import CodeDelivery
from idp.login.forms import FactorCodeForm
from idp.login.steps import FactorStep, Outcome, Step, StepContext, register


@register
class EmailCodeStep(CodeDelivery, FactorStep, Step):
    """Mail a 6-digit code; proves access to the mailbox, which is not a second factor."""

    name = "email_otp"
    purpose = "email_login"
    template = "login/email_otp.html"
    form_class = FactorCodeForm
    title = "Email code"
    order = 44

    def deliver(self, ctx: StepContext) -> None:
        ttl = ctx.config["IDP_EMAIL_CODE_TTL"]
        issued = onetime.issue(self.purpose, ctx.user, now=ctx.now, ttl=ttl, secret_key=ctx.config["IDP_SECRET_KEY"],
                               link=False, code=True, transaction_id=ctx.txn.id)
        enqueue("send_mail", to=ctx.user.email, template="login_code",
                context={"name": ctx.user.name, "code": issued.code, "minutes": ttl // 60})

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        self.ensure_sent(ctx)
        return {"email": ctx.user.email, "others": self.others(ctx)}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        return self.check(ctx, data.get("code", ""), ("email_otp",))
