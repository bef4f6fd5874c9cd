"""What a sign-in must prove beyond the password, and which factors can prove it (the planner's input).

The required level is the strongest of: the requested `acr_values` (any one of them suffices, so the weakest
we support), the client's minimum level and MFA setting, an admin's "MFA required" on the user, and the user's
own choice (a user who enrolled a second factor is always asked for it).
"""

from __future__ import annotations

from datetime import datetime

from idp.login.assurance import ACR_MFA, ACR_PASSWORD, ACR_PHISHING_RESISTANT, acr_for, meets, strongest, weakest
from idp.login.context import EXPLICIT_REASONS, StepContext, confirmed_factors
from idp.login.factors import REGISTRY
from idp.models import Client, Device, TransactionState, User
from idp.oidc.claims import ADMIN_SCOPES
from idp.oidc.server import ClientView


def has_second_factor(user: User) -> bool:
    """Whether the user enrolled a second factor (a confirmed stored credential of any kind)."""
    return bool(confirmed_factors(user))


def client_level(client: Client | ClientView) -> str:
    """The least a client accepts: its minimum level, and MFA when its policy requires it ("" for no demand)."""
    return strongest([client.min_acr or "", ACR_MFA if client.mfa == "required" else ""])


def required_level(user: User, state: TransactionState, client: Client | ClientView | None, enrolled: bool,
                   admin_level: str = "") -> str:
    """The level this sign-in must reach (``client``: the transaction's; ``enrolled``: whether the user has a
    confirmed second factor; ``admin_level``: IDP_ADMIN_ACR, demanded when an administrator's token is to carry
    an admin scope)."""
    levels = [ACR_PASSWORD]
    if admin_level and set(state.scopes) & set(ADMIN_SCOPES) and user.is_admin:
        levels.append(admin_level)
    requested = weakest(state.acr_values)
    if requested:
        levels.append(requested)
    if client is not None:
        levels.append(client_level(client))
    if user.mfa_required or enrolled:
        levels.append(ACR_MFA)
    return strongest(levels)


def remembered_device_counts(reasons: set[str], state: TransactionState, device: Device | None, now: datetime,
                             client: Client | ClientView | None) -> bool:
    """A remembered device stands in for the second factor, unless the request is an explicit step-up."""
    if device is None or device.remembered_until is None or device.remembered_until <= now:
        return False
    if device.revoked_at is not None or reasons & EXPLICIT_REASONS:
        return False
    if state.acr_values:
        return False
    return client is None or client.allow_remembered_device


def effective_amr(amr: list[str], remembered: bool) -> list[str]:
    """The methods, plus "mfa" when a remembered device stands for the second factor it was remembered with."""
    return [*amr, "mfa"] if remembered and "pwd" in amr else list(amr)


def reached_level(amr: list[str], remembered: bool) -> str:
    """The level the methods (and a remembered device) reach now."""
    return acr_for(effective_amr(amr, remembered))


def usable_factors(user: User, required: str, confirmed: list) -> list[str]:
    """Kinds of factor this user can take for the required level, strongest first (``confirmed``: their
    confirmed stored credentials)."""
    return [factor.kind for factor in REGISTRY
            if (factor.phishing_resistant or required != ACR_PHISHING_RESISTANT) and factor.offered(user, confirmed)]


def remembered(ctx: StepContext) -> bool:
    """Whether a remembered device stands in for the second factor in this sign-in."""
    return ctx.once("remembered", lambda: remembered_device_counts(ctx.reasons, ctx.state, ctx.device(), ctx.now,
                                                                   ctx.client()))


def assess(ctx: StepContext) -> None:
    """Fill in the context's required level (once the user is known)."""
    user = ctx.user
    if user is None or ctx.required_level:
        return
    ctx.required_level = required_level(user, ctx.state, ctx.client(), bool(ctx.confirmed_factors()),
                                        ctx.config.get("IDP_ADMIN_ACR", ""))


def choices(ctx: StepContext) -> list[str]:
    """The second factors (kinds, strongest first) the user can still take for the required level: worked out once,
    and only when asked, so a sign-in that needs no second factor reads no recovery codes."""
    user = ctx.user
    if user is None:
        return []
    assess(ctx)
    done = set(ctx.state.done)
    return ctx.once("choices", lambda: [kind for kind in usable_factors(user, ctx.required_level,
                                                                        ctx.confirmed_factors())
                                        if kind not in done])


def needs_factor(ctx: StepContext) -> bool:
    """Whether a second factor (or a stronger one) must still be verified."""
    if ctx.user is None:
        return False
    assess(ctx)
    return not meets(reached_level(ctx.proven_amr, remembered(ctx)), ctx.required_level)


def chosen_factor(ctx: StepContext) -> str | None:
    """The factor to ask for: the user's pick, else the strongest usable one that is offered without a pick."""
    offered = choices(ctx)
    if ctx.state.factor in offered:
        return ctx.state.factor
    automatic = [kind for kind in offered if (factor := REGISTRY.get(kind)) is not None and factor.automatic]
    return automatic[0] if automatic else None
