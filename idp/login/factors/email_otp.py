"""A code sent to the verified email address. Offered when picked; it never counts toward MFA (SECURITY.md 24)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_babel import lazy_gettext as _l

from idp.jobs import enqueue
from idp.login import onetime
from idp.login.codes import CodeDelivery
from idp.login.context import Outcome, StepContext
from idp.login.factors.base import FactorType
from idp.login.forms import FactorCodeForm
from idp.models import Factor, User


class EmailCode(CodeDelivery, FactorType):
    """Mail a 6-digit code; proves access to the mailbox, which is not a second factor."""

    kind = "email_otp"
    amr_values = frozenset({"email_otp"})
    counts_toward_mfa = False
    automatic = False
    purpose = "email_login"
    template = "login/email_otp.html"
    form_class = FactorCodeForm
    title = _l("Email code")
    chooser_label = _l("Code by email (does not count as a second factor)")

    def offered(self, user: User, confirmed: list[Factor]) -> bool:
        return user.email_verified

    def deliver(self, ctx: StepContext) -> None:
        user = ctx.user
        assert user is not None
        ttl = ctx.config["IDP_EMAIL_CODE_TTL"]
        issued = onetime.issue(self.purpose, user, now=ctx.now, ttl=ttl, secret_key=ctx.config["IDP_SECRET_KEY"],
                               link=False, code=True, transaction_id=ctx.txn.id)
        enqueue("send_mail", to=user.email, template="login_code",
                context={"name": user.name, "code": issued.code, "minutes": ttl // 60})

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        assert ctx.user is not None
        self.ensure_sent(ctx)
        return {"email": ctx.user.email}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        return self.check(ctx, data.get("code", ""), ("email_otp",))
