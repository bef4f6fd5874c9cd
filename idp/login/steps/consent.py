"""Ask the user to let a third-party client have the requested scopes; remembered per user, client and scopes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import g
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from wtforms import SubmitField

from idp import audit
from idp.extensions import db
from idp.login.context import Outcome, Step, StepContext
from idp.login.forms import Form
from idp.login.transaction import update
from idp.models import Consent
from idp.oidc.claims import SCOPE_DESCRIPTIONS


class ConsentForm(Form):
    """Allow or deny."""

    allow = SubmitField(_l("Allow"))
    deny = SubmitField(_l("Deny"))


class ConsentStep(Step):
    """The last screen before a code is issued to a client that is not first-party."""

    name = "consent"
    template = "login/consent.html"
    form_class = ConsentForm
    title = _l("Allow access")

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        client = ctx.client()
        logo = client.logo_uri if client is not None else None
        if logo:  # registered as an https URL (idp.oidc.registration); the page's CSP allows its origin only
            parts = urlsplit(logo)
            g.csp_image_origin = f"https://{parts.netloc}"
        # RFC 7591 2: the client's privacy policy and terms of service, for the user to read before allowing
        # (https URLs, checked at registration).
        return {"client_name": ctx.state.client_name or _("An application"), "client_logo": logo,
                "policy_uri": client.policy_uri if client is not None else None,
                "tos_uri": client.tos_uri if client is not None else None,
                "scopes": [(s, SCOPE_DESCRIPTIONS.get(s, s)) for s in ctx.state.scopes]}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        user = ctx.user
        client_id = ctx.state.client_id
        assert user is not None and client_id is not None
        if not data.get("allow"):
            update(ctx.txn, denied=True)
            audit.record("consent.denied", subject=user, client_id=client_id, ip=ctx.ip,
                         user_agent=ctx.user_agent)
            return Outcome(True)
        scopes = list(ctx.state.scopes)
        consent = db.session.execute(
            db.select(Consent).where(Consent.user_id == user.id, Consent.client_id == client_id)
        ).scalar_one_or_none()
        if consent is None:
            consent = Consent(user_id=user.id, client_id=client_id, scopes=[])
            db.session.add(consent)
        granted = scopes if consent.revoked_at is not None else list(dict.fromkeys([*consent.scopes, *scopes]))
        consent.scopes = granted
        consent.revoked_at = None
        audit.record("consent.granted", subject=user, client_id=client_id, scopes=granted, ip=ctx.ip,
                     user_agent=ctx.user_agent)
        return Outcome(True)
