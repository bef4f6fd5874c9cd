"""What a sign-in must prove beyond the password, and which factor to ask for (STYLE.md: the planner's input).

The required level is the strongest of: the requested `acr_values` (any one of them suffices, so the weakest
we support), the client's minimum level and MFA setting, an admin's "MFA required" on the user, and the user's
own choice (a user who enrolled a second factor is always asked for it).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func

from idp.extensions import db
from idp.login.assurance import ACR_MFA, ACR_PASSWORD, ACR_PHISHING_RESISTANT, acr_for, strongest, weakest
from idp.models import Client, Device, Factor, RecoveryCode, User

# Factor steps, strongest first: the chooser shows them in this order (issue: strongest enrolled first).
FACTOR_ORDER = ("webauthn", "totp", "sms", "recovery_code", "email_otp")
# Reasons that are an explicit demand to authenticate now: a remembered device never answers them.
EXPLICIT_REASONS = frozenset({"acr", "prompt_login", "max_age", "reauth"})


def confirmed_factors(user: User) -> list[Factor]:
    """The user's confirmed factors (an unconfirmed TOTP enrolment does not count)."""
    return list(db.session.execute(
        db.select(Factor).where(Factor.user_id == user.id, Factor.confirmed_at.is_not(None)).order_by(Factor.id)
    ).scalars())


def unused_recovery_codes(user: User) -> int:
    """How many recovery codes the user has left."""
    return db.session.execute(db.select(func.count(RecoveryCode.id)).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))).scalar_one()


def has_second_factor(user: User) -> bool:
    """Whether the user enrolled a TOTP app, a phone or a WebAuthn credential."""
    return bool(confirmed_factors(user))


def client_of(context: dict) -> Client | None:
    """The client a transaction is for (None for a direct sign-in to the account pages)."""
    client_id = context.get("client_id")
    if not client_id:
        return None
    return db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none()


def client_level(client: Client) -> str:
    """The least a client accepts: its minimum level, and MFA when its policy requires it ("" for no demand)."""
    return strongest([client.min_acr or "", ACR_MFA if client.mfa == "required" else ""])


def required_level(user: User, context: dict, client: Client | None, enrolled: bool) -> str:
    """The level this sign-in must reach (``client``: the transaction's, see client_of; ``enrolled``: whether the
    user has a confirmed second factor)."""
    levels = [ACR_PASSWORD]
    requested = weakest(context.get("acr_values") or [])
    if requested:
        levels.append(requested)
    if client is not None:
        levels.append(client_level(client))
    if user.mfa_required or enrolled:
        levels.append(ACR_MFA)
    return strongest(levels)


def remembered_device_counts(reasons: set[str], context: dict, device: Device | None, now: datetime,
                             client: Client | None) -> bool:
    """A remembered device stands in for the second factor, unless the request is an explicit step-up."""
    if device is None or device.remembered_until is None or device.remembered_until <= now:
        return False
    if device.revoked_at is not None or reasons & EXPLICIT_REASONS:
        return False
    if context.get("acr_values"):
        return False
    return client is None or client.allow_remembered_device


def effective_amr(amr: list[str], remembered: bool) -> list[str]:
    """The methods, plus "mfa" when a remembered device stands for the second factor it was remembered with."""
    return [*amr, "mfa"] if remembered and "pwd" in amr else list(amr)


def reached_level(amr: list[str], remembered: bool) -> str:
    """The level the methods (and a remembered device) reach now."""
    return acr_for(effective_amr(amr, remembered))


def usable_steps(user: User, required: str, factors: list[Factor]) -> list[str]:
    """Factor steps this user can take for the required level, strongest first (``factors``: confirmed ones)."""
    available = {factor.kind for factor in factors}
    if required == ACR_PHISHING_RESISTANT:
        return ["webauthn"] if "webauthn" in available else []
    if unused_recovery_codes(user):
        available.add("recovery_code")
    if user.email_verified:
        available.add("email_otp")
    return [name for name in FACTOR_ORDER if name in available]
