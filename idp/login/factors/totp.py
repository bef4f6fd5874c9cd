"""Second factor: a code from an authenticator app (TOTP, RFC 6238)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import segno
from flask_babel import format_date
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from idp.extensions import db
from idp.i18n import product_name
from idp.login import consume
from idp.login.context import Outcome, StepContext
from idp.login.enrolment import notify_change
from idp.login.factors.base import Action, EnrolContext, Enrolled, FactorType, Section
from idp.login.forms import FactorCodeForm, TotpEnrolForm
from idp.login.transaction import update
from idp.models import Factor, User
from idp.security import crypto
from idp.security.otp import new_totp_secret, provisioning_uri, totp_step_at


class TotpCredential(Factor):
    """An authenticator app: its seed encrypted at rest, and the last time step accepted (replay protection)."""

    __mapper_args__ = {"polymorphic_identity": "totp"}


def start_totp(user: User, now: datetime, secret_key: str) -> TotpCredential:
    """An unconfirmed TOTP factor with a fresh seed (it counts only once a code confirms it)."""
    factor = TotpCredential(user_id=user.id, name=_("Authenticator app"), created_at=now,
                            secret_encrypted=crypto.encrypt(new_totp_secret().encode(), secret_key, "totp"))
    db.session.add(factor)
    db.session.flush()
    return factor


def totp_secret(factor: Factor, secret_key: str) -> str:
    """The seed of a TOTP factor, decrypted (to show it during enrolment, or to check a code)."""
    assert factor.secret_encrypted is not None
    return crypto.decrypt(factor.secret_encrypted, secret_key, "totp").decode()


def accept_totp(factor: Factor, code: str, now: datetime, secret_key: str) -> bool:
    """Whether ``code`` is valid for this factor now (one step of drift) and not a replay; records its step."""
    step = totp_step_at(totp_secret(factor, secret_key), code, now, factor.last_step)
    # The step is recorded by a conditional UPDATE, not by assigning it: two sign-ins that read the same
    # last_step and submit the same code at once would otherwise both get through (RFC 6238 5.2).
    return step is not None and consume.totp_step(factor, step, now)


def confirm_totp(factor: Factor, code: str, now: datetime, secret_key: str) -> bool:
    """Confirm an enrolment with a valid code (SECURITY.md 22)."""
    if not accept_totp(factor, code, now, secret_key):
        return False
    factor.confirmed_at = now
    return True


def totp_display(factor: Factor, user: User, secret_key: str) -> dict[str, Any]:
    """What an enrolment page shows: a QR code (inline SVG, no script) and the key as text."""
    secret = totp_secret(factor, secret_key)
    uri = provisioning_uri(secret, user.email, product_name())  # the name the authenticator app lists
    svg = segno.make(uri, error="m").svg_inline(scale=4, title=_("QR code for your authenticator app"))
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return {"qr_svg": svg, "secret": grouped, "otpauth_uri": uri,
            "qr_data_uri": "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()}


def _pending(user: User, now: datetime, secret_key: str, factor_id: int | None) -> TotpCredential:
    """The unconfirmed enrolment started earlier, or a new one."""
    factor = db.session.get(Factor, factor_id) if factor_id else None
    if not isinstance(factor, TotpCredential) or factor.user_id != user.id or factor.confirmed_at is not None:
        factor = start_totp(user, now, secret_key)
    return factor


class Totp(FactorType):
    """Ask for the current code of any of the user's authenticator apps."""

    kind = "totp"
    amr_values = frozenset({"otp"})
    template = "login/totp.html"
    form_class = FactorCodeForm
    title = _l("Authenticator app")
    chooser_label = _l("Authenticator app")
    enrol_in_sign_in = True
    enrol_partial = "login/_enrol_totp.html"
    slug = "totp"
    enrol_stages = {"new": ("account/totp_new.html", TotpEnrolForm)}

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        return {"remember_days": ctx.config["IDP_REMEMBER_DEVICE_DAYS"]}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        blocked = ctx.code_attempts_blocked()
        if blocked:
            return blocked
        assert ctx.user is not None
        for factor in self.credentials(ctx.user, ctx.confirmed_factors()):
            if accept_totp(factor, data.get("code", ""), ctx.now,
                                                        ctx.config["IDP_SECRET_KEY"]):
                update(ctx.txn, remember_device=bool(data.get("remember")))
                return Outcome(True, amr=("otp",))
        ctx.code_attempt_failed(self.kind)
        return Outcome(False, _("That code is not right. Use the newest code from your app."))

    def section(self, user: User, confirmed: list[Factor], config: Mapping[str, Any]) -> Section:
        return Section(_("Authenticator apps"),
                       items=[(f, _("added %(date)s", date=format_date(f.created_at)))
                              for f in self.credentials(user, confirmed)],
                       actions=[Action(_("Add an authenticator app"))])

    def enrol_begin(self, stage: str, ec: EnrolContext) -> dict[str, Any] | None:
        secret_key = ec.config["IDP_SECRET_KEY"]
        factor = _pending(ec.user, ec.now, secret_key, ec.pending.get("factor_id"))
        ec.pending["factor_id"] = factor.id
        return totp_display(factor, ec.user, secret_key)

    def enrol_verify(self, stage: str, ec: EnrolContext, data: Mapping[str, Any]) -> Enrolled:
        factor = _pending(ec.user, ec.now, ec.config["IDP_SECRET_KEY"], ec.pending.get("factor_id"))
        ec.pending["factor_id"] = factor.id
        if not confirm_totp(factor, data.get("code") or "", ec.now, ec.config["IDP_SECRET_KEY"]):
            return Enrolled(False, _("That code is not right. Try the newest code from the app."))
        return Enrolled(True, notice=_("An authenticator app was added to your account."),
                        message=_("Authenticator app added."))

    def sign_in_enrol_begin(self, ctx: StepContext, phishing_resistant: bool) -> dict[str, Any]:
        if phishing_resistant:
            return {}
        assert ctx.user is not None
        secret_key = ctx.config["IDP_SECRET_KEY"]
        factor = _pending(ctx.user, ctx.now, secret_key, ctx.state.enrol_factor_id)
        update(ctx.txn, enrol_factor_id=factor.id)
        return totp_display(factor, ctx.user, secret_key)

    def sign_in_enrol_verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome | None:
        if not data.get("code"):
            return None
        assert ctx.user is not None
        secret_key = ctx.config["IDP_SECRET_KEY"]
        factor = _pending(ctx.user, ctx.now, secret_key, ctx.state.enrol_factor_id)
        update(ctx.txn, enrol_factor_id=factor.id)
        if not confirm_totp(factor, data["code"], ctx.now, secret_key):
            return Outcome(False, _("That code is not right. Check the time on your phone and try the newest code."))
        notify_change(ctx.user, _("An authenticator app was added to your account."), event="factor.added",
                      kind=self.kind, ip=ctx.ip, user_agent=ctx.user_agent)
        return Outcome(True, amr=("otp",))
