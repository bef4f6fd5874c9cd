"""Second factor: a security key or passkey (WebAuthn). With user verification it is phishing-resistant."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask_babel import format_date
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from idp.extensions import db
from idp.login.context import Outcome, StepContext
from idp.login.enrolment import notify_change
from idp.login.factors.base import Action, EnrolContext, Enrolled, FactorType, Section
from idp.login.forms import NameForm, WebAuthnForm
from idp.login.transaction import update
from idp.login.webauthn import (
    assertion_options,
    credentials_of,
    relying_party,
    verify_assertion,
    webauthn_available,
)
from idp.models import Factor, User
from idp.security import webauthn as wa


class WebAuthnCredential(Factor):
    """A security key or passkey: credential id, COSE public key, signature counter, whether it is synced."""

    __mapper_args__ = {"polymorphic_identity": "webauthn"}


def registration_options(user: User, challenge: str, passkey: bool) -> str:
    """Options to register a new security key or passkey for ``user``."""
    return wa.registration_options(relying_party(), user_handle=user.subject, user_name=user.email,
                                   display_name=user.name, challenge=challenge,
                                   exclude=[f.credential_id or "" for f in credentials_of(user.id)], passkey=passkey)


def add_webauthn(user: User, credential_json: str, challenge: str, now: datetime,
                 name: str = "") -> tuple[Factor, bool]:
    """Verify a registration and store the credential (raises WebAuthnFailed); returns it and whether UV ran."""
    result = wa.verify_registration(relying_party(), credential_json, challenge)
    if db.session.execute(db.select(Factor.id).where(Factor.credential_id == result.credential_id)).first():
        raise wa.WebAuthnFailed("credential already registered")
    factor = WebAuthnCredential(user_id=user.id, name=name or (_("Passkey") if result.backed_up else _("Security key")),
                                created_at=now, confirmed_at=now, credential_id=result.credential_id,
                                public_key=result.public_key, sign_count=result.sign_count,
                                backed_up=result.backed_up, discoverable=True)
    db.session.add(factor)
    db.session.flush()
    return factor, result.user_verified


class WebAuthn(FactorType):
    """Ask the browser for an assertion from one of the user's registered credentials."""

    kind = "webauthn"
    amr_values = frozenset({"hwk", "swk"})
    phishing_resistant = True
    template = "login/webauthn.html"
    form_class = WebAuthnForm
    title = _l("Security key or passkey")
    chooser_label = _l("Security key or passkey")
    enrol_in_sign_in = True
    enrol_partial = "login/_enrol_webauthn.html"
    slug = "webauthn"
    enrol_stages = {"new": ("account/webauthn_new.html", NameForm)}

    def available(self) -> bool:
        return webauthn_available()

    def _require_uv(self, ctx: StepContext) -> bool:
        return ctx.required_level == "urn:idp:acr:phr"

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        assert ctx.user is not None
        options = assertion_options(ctx.txn, user_id=ctx.user.id, require_uv=self._require_uv(ctx))
        return {"options": options, "remember_days": ctx.config["IDP_REMEMBER_DEVICE_DAYS"]}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        assert ctx.user is not None
        try:
            factor, result = verify_assertion(ctx.txn, data.get("credential", ""), user_id=ctx.user.id,
                                              require_uv=self._require_uv(ctx), now=ctx.now)
        except wa.WebAuthnFailed:
            return Outcome(False, _("That security key or passkey could not be verified. Try again."))
        update(ctx.txn, remember_device=bool(data.get("remember")))
        return Outcome(True, amr=wa.amr_for(factor.backed_up, result.user_verified))

    def section(self, user: User, confirmed: list[Factor], config: Mapping[str, Any]) -> Section:
        items = []
        for f in self.credentials(user, confirmed):
            kind = _("passkey, synced") if f.backed_up else _("security key")
            if f.last_used_at:
                line = _("%(kind)s; added %(added)s, last used %(used)s", kind=kind, added=format_date(f.created_at),
                         used=format_date(f.last_used_at))
            else:
                line = _("%(kind)s; added %(added)s", kind=kind, added=format_date(f.created_at))
            items.append((f, line))
        if not self.available():
            return Section(_("Security keys and passkeys"), items=items,
                           hint=_("Passkeys and security keys need this server to be reached by a host name; "
                                  "%(issuer)s is an IP address, which browsers refuse for them. Use "
                                  "http://localhost instead of 127.0.0.1 (or set IDP_ISSUER).",
                                  issuer=config["IDP_ISSUER"]))
        return Section(_("Security keys and passkeys"),
                       hint=_("The strongest option: phishing-resistant. A passkey also lets you sign in "
                              "without a password."), items=items,
                       actions=[Action(_("Add a passkey"), {"type": "passkey"}),
                                Action(_("Add a security key"), {"type": "key"}, primary=False)])

    def enrol_begin(self, stage: str, ec: EnrolContext) -> dict[str, Any] | None:
        challenge = wa.new_challenge()
        ec.pending["challenge"] = challenge
        passkey = ec.args.get("type", "passkey") == "passkey"
        return {"passkey": passkey, "registration": registration_options(ec.user, challenge, passkey=passkey)}

    def enrol_verify(self, stage: str, ec: EnrolContext, data: Mapping[str, Any]) -> Enrolled:
        challenge = ec.pending.pop("challenge", None)  # single use, whatever the outcome
        try:
            factor, _verified = add_webauthn(ec.user, (data.get("credential") or "")[:20000], challenge or "", ec.now,
                                     name=(data.get("name") or "").strip())
        except wa.WebAuthnFailed:
            # A new ceremony (a new challenge) is needed: start the page again.
            return Enrolled(False, _("The security key or passkey could not be registered. Try again."),
                            next_stage=stage)
        return Enrolled(True, notice=_("The security key or passkey “%(name)s” was added to your account.",
                                       name=factor.name),
                        message=_("“%(name)s” added.", name=factor.name))

    def sign_in_enrol_begin(self, ctx: StepContext, phishing_resistant: bool) -> dict[str, Any]:
        assert ctx.user is not None
        challenge = wa.new_challenge()
        update(ctx.txn, webauthn_reg_challenge=challenge)
        return {"registration": registration_options(ctx.user, challenge, passkey=True)}

    def sign_in_enrol_verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome | None:
        if not data.get("credential"):
            return None
        assert ctx.user is not None
        challenge = ctx.state.webauthn_reg_challenge
        update(ctx.txn, webauthn_reg_challenge=None)
        try:
            factor, verified = add_webauthn(ctx.user, data["credential"], challenge or "", ctx.now)
        except wa.WebAuthnFailed:
            return Outcome(False, _("The security key or passkey could not be registered. Try again."))
        notify_change(ctx.user, _("The security key or passkey “%(name)s” was added to your account.",
                                  name=factor.name), event="factor.added",
                      kind=self.kind, ip=ctx.ip, user_agent=ctx.user_agent)
        return Outcome(True, amr=wa.amr_for(factor.backed_up, verified))
