"""Second factor of last resort: one of the ten single-use recovery codes (SECURITY.md 26)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idp import audit
from idp.jobs import enqueue
from idp.login import consume, mfa
from idp.login.forms import RecoveryCodeForm
from idp.login.steps import FactorStep, Outcome, Step, StepContext, register
from idp.security.otp import normalize_recovery_code
from idp.security.tokens import code_hash


def recovery_code_hash(secret_key: str, user_id: int, code: str) -> str:
    """Keyed hash of a normalized recovery code, bound to its user."""
    return code_hash(secret_key, normalize_recovery_code(code), f"recovery:{user_id}")


@register
class RecoveryCodeStep(FactorStep, Step):
    """Accept one unused recovery code; using one is audited and mailed to the user."""

    name = "recovery_code"
    template = "login/recovery_code.html"
    form_class = RecoveryCodeForm
    title = "Recovery code"
    order = 43

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        return {"others": self.others(ctx)}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        blocked = ctx.code_attempts_blocked()
        if blocked:
            return blocked
        digest = recovery_code_hash(ctx.config["IDP_SECRET_KEY"], ctx.user.id, data.get("code", ""))
        if not consume.recovery_code(ctx.user.id, digest, ctx.now):
            ctx.code_attempt_failed("recovery_code")
            return Outcome(False, "That recovery code is not valid or was already used.")
        left = mfa.unused_recovery_codes(ctx.user)
        audit.record("recovery_code.used", subject=ctx.user, remaining=left, ip=ctx.ip,
                     user_agent=ctx.user_agent)
        enqueue("send_mail", to=ctx.user.email, template="security_notice",
                context={"name": ctx.user.name, "what": "A recovery code was used to sign in to your account.",
                         "detail": f"{left} recovery codes are left."})
        return Outcome(True, amr=("recovery_code",))
