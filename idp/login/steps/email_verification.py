"""Verify the email address inside the sign-in flow: a 6-digit code typed here, or the link from the same mail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from idp import audit
from idp.jobs import enqueue
from idp.login import onetime
from idp.login.codes import CodeDelivery
from idp.login.context import Outcome, Step, StepContext
from idp.login.forms import CodeForm
from idp.login.transaction import update
from idp.login.verification import CODE_PURPOSE, mark_verified, send_verification


class EmailVerificationStep(CodeDelivery, Step):
    """Inserted when the user's address is unverified; the flow resumes once it is.

    A sign-up for an address that already has an account walks the same screen (no enumeration), but its
    "code" can never match: the real owner got an "account exists" mail instead.
    """

    name = "email_verification"
    purpose = CODE_PURPOSE
    template = "login/verify_email.html"
    form_class = CodeForm
    title = _l("Verify your email")

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        email = ctx.state.existing_account or (ctx.user.email if ctx.user else "")
        self.ensure_sent(ctx)
        return {"email": email}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        if ctx.state.existing_account:
            return self._decoy_attempt(ctx)
        try:
            row = onetime.check_code(CODE_PURPOSE, ctx.txn.id, data.get("code", ""), now=ctx.now,
                                     secret_key=ctx.config["IDP_SECRET_KEY"],
                                     max_attempts=ctx.config["IDP_CODE_MAX_ATTEMPTS"])
        except onetime.CodeRejected as rejected:
            audit.record("email.verification_failed", subject=ctx.user, ip=ctx.ip, user_agent=ctx.user_agent,
                         durable=True)
            return Outcome(False, str(rejected))
        mark_verified(row, ctx.now, ip=ctx.ip, user_agent=ctx.user_agent, method="code")
        return Outcome(True)

    def deliver(self, ctx: StepContext) -> None:
        """The code and link; or, for an address that already has an account, the "account exists" mail."""
        update(ctx.txn, decoy_attempts=0)
        if ctx.state.existing_account:
            enqueue("send_mail", to=ctx.state.existing_account, template="account_exists",
                    context={"signin": ctx.url("login.begin"), "reset": ctx.url("account.forgot")})
            return
        assert ctx.user is not None
        send_verification(ctx.user, now=ctx.now, config=ctx.config, url=ctx.url, transaction_id=ctx.txn.id)

    def _decoy_attempt(self, ctx: StepContext) -> Outcome:
        attempts = ctx.state.decoy_attempts + 1
        update(ctx.txn, decoy_attempts=attempts)
        sent_at = self.sent_at(ctx) or 0
        if ctx.now.timestamp() - sent_at > ctx.config["IDP_EMAIL_CODE_TTL"]:
            return Outcome(False, _("This code has expired. Send a new one."))
        if attempts >= ctx.config["IDP_CODE_MAX_ATTEMPTS"]:
            return Outcome(False, _("Too many wrong codes. Send a new one."))
        return Outcome(False, _("That code is not right. Check the latest email and try again."))
