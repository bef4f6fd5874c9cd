"""Enrolling factors, shared by the in-flow enrolment step and the self-service pages."""

from __future__ import annotations

import base64

import segno
from flask import current_app

from idp import audit
from idp.extensions import db
from idp.jobs import enqueue
from idp.login import consume
from idp.login.steps.recovery_code import recovery_code_hash
from idp.login.webauthn import credentials_of, relying_party
from idp.models import Factor, RecoveryCode, User
from idp.security import crypto
from idp.security import webauthn as wa
from idp.security.otp import new_recovery_codes, new_totp_secret, provisioning_uri, totp_step_at


def start_totp(user: User, now) -> Factor:
    """An unconfirmed TOTP factor with a fresh seed (it counts only once a code confirms it)."""
    factor = Factor(user_id=user.id, kind="totp", name="Authenticator app", created_at=now,
                    secret_encrypted=crypto.encrypt(new_totp_secret().encode(), current_app.config["IDP_SECRET_KEY"],
                                                    "totp"))
    db.session.add(factor)
    db.session.flush()
    return factor


def totp_secret(factor: Factor, secret_key: str | None = None) -> str:
    """The seed of a TOTP factor, decrypted (to show it during enrolment, or to check a code)."""
    return crypto.decrypt(factor.secret_encrypted, secret_key or current_app.config["IDP_SECRET_KEY"],
                          "totp").decode()


def accept_totp(factor: Factor, code: str, now, secret_key: str | None = None) -> bool:
    """Whether ``code`` is valid for this factor now (one step of drift) and not a replay; records its step."""
    step = totp_step_at(totp_secret(factor, secret_key), code, now, factor.last_step)
    # The step is recorded by a conditional UPDATE, not by assigning it: two sign-ins that read the same
    # last_step and submit the same code at once would otherwise both get through (RFC 6238 5.2).
    return step is not None and consume.totp_step(factor, step, now)


def totp_display(factor: Factor, user: User) -> dict:
    """What the enrolment page shows: a QR code (inline SVG, no script) and the key as text."""
    secret = totp_secret(factor)
    uri = provisioning_uri(secret, user.email, "idp")
    svg = segno.make(uri, error="m").svg_inline(scale=4, title="QR code for your authenticator app")
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return {"qr_svg": svg, "secret": grouped, "otpauth_uri": uri,
            "qr_data_uri": "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()}


def confirm_totp(factor: Factor, code: str, now) -> bool:
    """Confirm an enrolment with a valid code (SECURITY.md 22)."""
    if not accept_totp(factor, code, now):
        return False
    factor.confirmed_at = now
    return True


def registration_options(user: User, challenge: str, passkey: bool) -> str:
    """Options to register a new security key or passkey for ``user``."""
    return wa.registration_options(relying_party(), user_handle=user.subject, user_name=user.email,
                                   display_name=user.name, challenge=challenge,
                                   exclude=[f.credential_id for f in credentials_of(user.id)], passkey=passkey)


def add_webauthn(user: User, credential_json: str, challenge: str, now, name: str = "") -> tuple[Factor, bool]:
    """Verify a registration and store the credential (raises WebAuthnFailed); returns it and whether UV ran."""
    result = wa.verify_registration(relying_party(), credential_json, challenge)
    if db.session.execute(db.select(Factor.id).where(Factor.credential_id == result.credential_id)).first():
        raise wa.WebAuthnFailed("credential already registered")
    factor = Factor(user_id=user.id, kind="webauthn", name=name or ("Passkey" if result.backed_up else "Security key"),
                    created_at=now, confirmed_at=now, credential_id=result.credential_id,
                    public_key=result.public_key, sign_count=result.sign_count, backed_up=result.backed_up,
                    discoverable=True)
    db.session.add(factor)
    db.session.flush()
    return factor, result.user_verified


def new_recovery_codes_for(user: User, now) -> list[str]:
    """Replace the user's recovery codes with ten new ones; returns them (to show once)."""
    db.session.execute(db.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = new_recovery_codes()
    secret = current_app.config["IDP_SECRET_KEY"]
    for code in codes:
        db.session.add(RecoveryCode(user_id=user.id, code_hash=recovery_code_hash(secret, user.id, code),
                                    created_at=now))
    return codes


def notify_change(user: User, what: str, *, event: str, next_step: str = "", **details) -> None:
    """Audit a security change and tell the user by email (SECURITY.md 27); ``next_step`` is a line for the mail."""
    audit.record(event, subject=user, **details)
    if user.email_verified:
        enqueue("send_mail", to=user.email, template="security_notice",
                context={"name": user.name, "what": what, "detail": next_step})
