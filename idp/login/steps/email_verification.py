"""Verify the email address inside the sign-in flow: a 6-digit code typed here, or the link from the same mail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idp import audit
from idp.jobs import enqueue
from idp.login import consume, onetime
from idp.login.codes import CodeDelivery
from idp.login.forms import CodeForm
from idp.login.steps import Outcome, Step, StepContext, register
from idp.login.transaction import update

PURPOSE = "verify_email"
CODE_PURPOSE = "verify_email_code"  # a short code lives at most 10 minutes, the link a day


@register
class EmailVerificationStep(CodeDelivery, Step):
    """Inserted when the user's address is unverified; the flow resumes once it is."""

    name = "email_verification"
    purpose = CODE_PURPOSE
    template = "login/verify_email.html"
    form_class = CodeForm
    title = "Verify your email"
    order = 20

    def applies(self, ctx: StepContext) -> bool:
        if self.name in ctx.state["done"]:
            return False
        # A sign-up for an address that already has an account walks the same screen (no enumeration),
        # but its "code" can never match: the real owner got an "account exists" mail instead.
        if ctx.state["context"].get("existing_account"):
            return True
        return ctx.user is not None and not ctx.user.email_verified

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        email = ctx.state["context"].get("existing_account") or ctx.user.email
        self.ensure_sent(ctx)
        return {"email": email}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        if ctx.state["context"].get("existing_account"):
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

    def sent_key(self) -> str:
        return "code_sent_at"

    def deliver(self, ctx: StepContext) -> None:
        """The code and link; or, for an address that already has an account, the "account exists" mail."""
        context = ctx.state["context"]
        update(ctx.txn, context={**context, "decoy_attempts": 0})
        if context.get("existing_account"):
            enqueue("send_mail", to=context["existing_account"], template="account_exists",
                    context={"signin": ctx.url("login.begin"), "reset": ctx.url("account.forgot")})
            return
        send_verification(ctx.user, now=ctx.now, config=ctx.config, url=ctx.url, transaction_id=ctx.txn.id)

    def _decoy_attempt(self, ctx: StepContext) -> Outcome:
        context = ctx.state["context"]
        attempts = int(context.get("decoy_attempts", 0)) + 1
        update(ctx.txn, context={**context, "decoy_attempts": attempts})
        sent_at = context.get("code_sent_at") or 0
        if ctx.now.timestamp() - sent_at > ctx.config["IDP_EMAIL_CODE_TTL"]:
            return Outcome(False, "This code has expired. Send a new one.")
        if attempts >= ctx.config["IDP_CODE_MAX_ATTEMPTS"]:
            return Outcome(False, "Too many wrong codes. Send a new one.")
        return Outcome(False, "That code is not right. Check the latest email and try again.")


def send_verification(user, *, now, config, url, transaction_id=None) -> None:
    """Mail a verification link (long-lived) and, inside a sign-in, a 6-digit code bound to that transaction."""
    secret = config["IDP_SECRET_KEY"]
    issued = onetime.issue(PURPOSE, user, now=now, ttl=config["IDP_VERIFY_LINK_TTL"], secret_key=secret)
    code = None
    code_minutes = config["IDP_EMAIL_CODE_TTL"] // 60
    if transaction_id is not None:
        code = onetime.issue(CODE_PURPOSE, user, now=now, ttl=config["IDP_EMAIL_CODE_TTL"],
                             secret_key=secret, link=False, code=True, transaction_id=transaction_id).code
    link = url("account.verify_email", token=onetime.sign(issued.token, PURPOSE, secret))
    enqueue("send_mail", to=user.email, template="verify_email",
            context={"name": user.name, "link": link, "code": code, "code_minutes": code_minutes})


def mark_verified(row, now, *, ip: str, user_agent: str, method: str) -> None:
    """Mark the address the token was sent to as verified and audit it (the caller has used the token)."""
    user = row.user
    if consume.email_verified(user, row.email, now):
        audit.record("email.verified", subject=user, method=method, ip=ip, user_agent=user_agent)
