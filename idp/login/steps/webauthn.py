"""Second factor: a security key or passkey (WebAuthn). With user verification it is phishing-resistant."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idp.login.assurance import ACR_PHISHING_RESISTANT
from idp.login.forms import WebAuthnForm
from idp.login.steps import FactorStep, Outcome, Step, StepContext, register
from idp.login.transaction import update
from idp.login.webauthn import assertion_options, verify_assertion
from idp.security.webauthn import WebAuthnFailed, amr_for


@register
class WebAuthnStep(FactorStep, Step):
    """Ask the browser for an assertion from one of the user's registered credentials."""

    name = "webauthn"
    template = "login/webauthn.html"
    form_class = WebAuthnForm
    title = "Security key or passkey"
    order = 40

    def _require_uv(self, ctx: StepContext) -> bool:
        return ctx.required_level() == ACR_PHISHING_RESISTANT

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        options = assertion_options(ctx.txn, user_id=ctx.user.id, require_uv=self._require_uv(ctx))
        return {"options": options, "others": self.others(ctx),
                "remember_days": ctx.config["IDP_REMEMBER_DEVICE_DAYS"]}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        try:
            factor, result = verify_assertion(ctx.txn, data.get("credential", ""), user_id=ctx.user.id,
                                              require_uv=self._require_uv(ctx), now=ctx.now)
        except WebAuthnFailed:
            return Outcome(False, "That security key or passkey could not be verified. Try again.")
        update(ctx.txn, remember_device=bool(data.get("remember")))
        return Outcome(True, amr=amr_for(factor.backed_up, result.user_verified))
