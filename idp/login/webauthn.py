"""WebAuthn inside the login engine: challenges kept in the transaction (single use), credentials as Factors."""

from __future__ import annotations

import dataclasses

from flask import current_app

from idp import audit
from idp.extensions import db
from idp.i18n import product_name
from idp.login.transaction import update
from idp.models import Factor, LoginTransaction
from idp.security import webauthn as wa


def relying_party() -> wa.RelyingParty:
    """Our RP ID and origin, from IDP_ISSUER (or IDP_WEBAUTHN_RP_ID), the name a passkey manager lists us by, and the
    origins of the first-party Android apps (IDP_ANDROID_APPS) whose passkey ceremonies count as ours."""
    cfg = current_app.config
    rp = wa.relying_party(cfg["IDP_ISSUER"], cfg["IDP_WEBAUTHN_RP_ID"])
    apps = tuple(wa.android_origin(fingerprint) for _package, fingerprint in cfg["IDP_ANDROID_APPS"])
    return dataclasses.replace(rp, name=product_name(), app_origins=apps)


def webauthn_available() -> bool:
    """Whether passkeys and security keys can work on this server: its RP ID must be a host name (an issuer such as
    http://127.0.0.1:5000 names an IP address, which browsers refuse)."""
    return wa.usable_rp_id(relying_party())


def credentials_of(user_id: int) -> list[Factor]:
    """The user's confirmed WebAuthn credentials."""
    return list(db.session.execute(db.select(Factor).where(
        Factor.user_id == user_id, Factor.kind == "webauthn", Factor.confirmed_at.is_not(None))).scalars())


def assertion_options(txn: LoginTransaction, *, user_id: int | None, require_uv: bool) -> str:
    """Options for navigator.credentials.get(), with the transaction's pending challenge (SECURITY.md 25: single use,
    bound to the transaction and to its current step). idp.login.transaction.start draws the first with the
    transaction, so showing the sign-in page writes nothing, and mark_done one for each next step; an assertion
    consumes it, pass or fail, and the next page draws a new one."""
    challenge = txn.state.webauthn_challenge
    if not challenge:
        challenge = wa.new_challenge()
        update(txn, webauthn_challenge=challenge)
    allow = [f.credential_id for f in credentials_of(user_id) if f.credential_id] if user_id is not None else []
    return wa.authentication_options(relying_party(), challenge=challenge, allow=allow, require_uv=require_uv)


def _take_challenge(txn: LoginTransaction) -> str | None:
    """The transaction's pending challenge, taken (SECURITY.md 32). Every caller holds the transaction's row lock to
    its commit, so of two assertions presented at once the second reads the row after the first has taken the
    challenge, and finds none: the sign-in pages read it with SELECT ... FOR UPDATE (transaction.load(lock=True)),
    the challenge endpoint takes it by a conditional UPDATE of its binding (idp.oidc.challenge._claim), which no
    other request can have changed since it was read."""
    challenge = txn.state.webauthn_challenge
    update(txn, webauthn_challenge=None)
    return challenge


def verify_assertion(txn: LoginTransaction, credential_json: str, *, user_id: int | None, require_uv: bool,
                     now) -> tuple[Factor, wa.Asserted]:
    """Check an assertion against the transaction's challenge (consumed either way) and the stored key."""
    challenge = _take_challenge(txn)
    if not challenge:
        raise wa.WebAuthnFailed("no challenge pending")
    credential_id = wa.credential_id_of(credential_json)
    query = db.select(Factor).where(Factor.kind == "webauthn", Factor.credential_id == credential_id,
                                    Factor.confirmed_at.is_not(None))
    if user_id is not None:
        query = query.where(Factor.user_id == user_id)
    factor = db.session.execute(query).scalar_one_or_none()
    if factor is None:
        raise wa.WebAuthnFailed("unknown credential")
    try:
        result = wa.verify_authentication(relying_party(), credential_json, challenge, public_key=factor.public_key,
                                          sign_count=factor.sign_count, require_uv=require_uv)
    except wa.WebAuthnFailed:
        audit.record("webauthn.failure", subject=factor.user, credential=factor.name, durable=True)
        raise
    factor.sign_count = result.new_sign_count
    factor.last_used_at = now
    return factor, result
