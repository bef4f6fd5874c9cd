"""Second factor: a code sent by text message to a verified phone (a restricted factor, SP 800-63B 3.1.3.3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from idp.extensions import db
from idp.i18n import product_name
from idp.login import onetime
from idp.login.codes import (
    CodeDelivery,
    SmsRefused,
    check_phone_code,
    mask_phone,
    normalize_phone,
    send_sms_code,
)
from idp.login.context import Outcome, StepContext
from idp.login.factors.base import Action, EnrolContext, Enrolled, FactorType, Section
from idp.login.forms import CodeForm, FactorCodeForm, PhoneForm
from idp.login.transaction import update
from idp.models import Factor, User

ENROL_PURPOSE = "phone_verify"


def signin_text(code: str) -> str:
    """The text message that carries a sign-in code."""
    return _("%(code)s is your sign-in code. Do not share it.", code=code)


def enrol_text(code: str) -> str:
    """The text message that proves a phone being added as a sign-in factor."""
    return _("%(code)s is your code to add this phone to %(product)s.", code=code, product=product_name())


class PhoneCredential(Factor):
    """A phone number in E.164, verified by a code before it counts."""

    __mapper_args__ = {"polymorphic_identity": "sms"}


class Sms(CodeDelivery, FactorType):
    """Text a 6-digit code to the user's verified number."""

    kind = "sms"
    amr_values = frozenset({"sms"})
    purpose = "sms_login"
    template = "login/sms.html"
    form_class = FactorCodeForm
    title = _l("Text message")
    chooser_label = _l("Text message")
    slug = "phone"
    enrol_stages = {"new": ("account/phone_new.html", PhoneForm), "verify": ("account/phone_verify.html", CodeForm)}

    def _phone(self, ctx: StepContext) -> Factor | None:
        """The verified phone used most recently (the first one added, if none was used yet)."""
        assert ctx.user is not None
        phones = self.credentials(ctx.user, ctx.confirmed_factors())
        used = [(f.last_used_at, f) for f in phones if f.last_used_at is not None]
        return max(used, key=lambda pair: pair[0])[1] if used else min(phones, key=lambda f: f.id, default=None)

    def deliver(self, ctx: StepContext) -> None:
        factor = self._phone(ctx)
        assert ctx.user is not None and factor is not None and factor.phone
        send_sms_code(ctx.user, factor.phone, signin_text,
                      purpose=self.purpose, ttl=ctx.config["IDP_SMS_CODE_TTL"], transaction_id=ctx.txn.id, ip=ctx.ip)

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        error = self.ensure_sent(ctx)
        factor = self._phone(ctx)
        return {"phone": mask_phone(factor.phone or "") if factor else "", "send_error": error,
                "remember_days": ctx.config["IDP_REMEMBER_DEVICE_DAYS"]}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        outcome = self.check(ctx, data.get("code", ""), ("sms",))
        if outcome.ok:
            factor = self._phone(ctx)
            assert factor is not None
            factor.last_used_at = ctx.now
            update(ctx.txn, remember_device=bool(data.get("remember")))
        return outcome

    def section(self, user: User, confirmed: list[Factor], config: Mapping[str, Any]) -> Section | None:
        phones = self.credentials(user, confirmed)
        enabled = config["IDP_SMS_BACKEND"] != "disabled"
        if not enabled and not phones:
            return None
        return Section(_("Text messages"), hint=_("The weakest second factor. Keep an authenticator app or a "
                                                  "security key as well."),
                       items=[(f, mask_phone(f.phone or "")) for f in phones],
                       actions=[Action(_("Add a phone"), primary=False)] if enabled else [])

    def enrol_begin(self, stage: str, ec: EnrolContext) -> dict[str, Any] | None:
        if stage == "verify":
            phone = ec.pending.get("phone")
            return {"phone": mask_phone(phone)} if phone else None
        return {}

    def enrol_verify(self, stage: str, ec: EnrolContext, data: Mapping[str, Any]) -> Enrolled:
        cfg = ec.config
        channel = f"phone:{ec.pending['sid']}"
        if stage == "new":
            phone = normalize_phone(data.get("phone") or "", cfg["IDP_DEFAULT_PHONE_REGION"])
            if phone is None:
                return Enrolled(False, _("Enter a valid number with its country code, like +44…"))
            try:
                send_sms_code(ec.user, phone, enrol_text,
                              purpose=ENROL_PURPOSE, ttl=cfg["IDP_SMS_CODE_TTL"], transaction_id=channel, ip=ec.ip)
            except SmsRefused as refused:
                return Enrolled(False, str(refused))
            return Enrolled(True, next_stage="verify", pending={**ec.pending, "phone": phone})
        phone = ec.pending.get("phone")
        if not phone:
            return Enrolled(False, next_stage="new")
        try:
            check_phone_code(ENROL_PURPOSE, channel, ec.user, phone, data.get("code") or "", now=ec.now, config=cfg)
        except onetime.CodeRejected as rejected:
            return Enrolled(False, str(rejected))
        db.session.add(PhoneCredential(user_id=ec.user.id, name=_("Phone %(number)s", number=mask_phone(phone)),
                                       phone=phone,
                                       created_at=ec.now, confirmed_at=ec.now))
        return Enrolled(True, notice=_("The phone number %(number)s was added for sign-in codes.",
                                       number=mask_phone(phone)),
                        message=_("Phone added. Text messages are the weakest second factor: add an authenticator "
                                  "app or a security key too."))
