"""Standard claims per scope (OIDC Core 5.4) and the `claims` request parameter (OIDC Core 5.5)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol

from authlib.oidc.core import UserInfo
from flask_babel import lazy_gettext as _l

# No `address` (OIDC Core 5.4): idp holds no postal address, so it neither advertises the scope nor accepts it; a
# request for it is invalid_scope, as for any scope not listed here (Authlib checks OAUTH2_SCOPES_SUPPORTED).
SCOPES = ("openid", "profile", "email", "phone", "offline_access")
# The admin REST API's scopes (idp.admin), each naming an admin role. An administrator registers the clients that
# may ask for them: a confidential machine client for client_credentials alone, or a first-party client (never
# shown a consent page) whose users' tokens carry them only for the roles the user holds, after a sign-in at
# IDP_ADMIN_ACR (grantable_scope). No user's consent can hand them out. Not advertised in discovery, which may
# leave scopes out (RFC 8414 2).
ADMIN_SCOPE_ROLES = {"idp:admin": "admin", "idp:helpdesk": "helpdesk", "idp:audit": "auditor"}
ADMIN_SCOPES = tuple(ADMIN_SCOPE_ROLES)
# The account API's scope (idp.account.api): a first-party app managing its user's own account. Only a first-party
# client may be registered for it, and no consent page ever shows it. Not advertised either.
ACCOUNT_SCOPE = "idp:account"


def grantable_scope(scope: str, roles: frozenset[str], strong_enough: bool) -> str:
    """``scope`` for a user's token: an admin scope stays only for a role the user holds, and only when the
    sign-in reached IDP_ADMIN_ACR (``strong_enough``); every other scope is kept."""
    return " ".join(s for s in scope.split()
                    if s not in ADMIN_SCOPE_ROLES or (strong_enough and ADMIN_SCOPE_ROLES[s] in roles))

SCOPE_CLAIMS = {
    "openid": ("sub",),
    "profile": ("name", "family_name", "given_name", "middle_name", "nickname", "preferred_username", "profile",
                "picture", "website", "gender", "birthdate", "zoneinfo", "locale", "updated_at"),
    "email": ("email", "email_verified"),
    "phone": ("phone_number", "phone_number_verified"),
}

SCOPE_DESCRIPTIONS = {
    "openid": _l("Know who you are (a stable identifier)"),
    "profile": _l("Your name and profile"),
    "email": _l("Your email address"),
    "phone": _l("Your phone number"),
    "offline_access": _l("Stay connected when you are not using it"),
}

CLAIMS_SUPPORTED = sorted({"sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "azp",
                           "at_hash", *[c for names in SCOPE_CLAIMS.values() for c in names]})


class ClaimsSource(Protocol):
    """What the claims are made of: a User, or the columns of one read with a token (idp.oidc.server.UserView)."""

    @property
    def subject(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def email_verified(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def locale(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def phone_verified(self) -> bool: ...
    @property
    def updated_at(self) -> datetime: ...


def all_claims(user: ClaimsSource) -> dict[str, Any]:
    """Every claim idp knows about ``user`` (unknown ones are left out, never sent empty)."""
    claims: dict[str, Any] = {
        "sub": user.subject,
        "email": user.email,
        "email_verified": user.email_verified,
        "updated_at": int(user.updated_at.timestamp()),
    }
    if user.name:
        claims["name"] = user.name
    if user.locale:
        claims["locale"] = user.locale
    # The `phone` scope releases the profile number only (the account page's "Phone number"), verified only when a
    # code texted to that very number proved it (OIDC Core 5.1). A phone enrolled as an SMS sign-in factor is not
    # used in its place when the profile has none: it was given to receive sign-in codes, not to be handed to
    # applications, and telling them where a second factor's codes go helps a SIM-swap. Users who want to share it
    # add it to the profile (the same code proves it).
    if user.phone:
        claims["phone_number"] = user.phone
        claims["phone_number_verified"] = user.phone_verified
    return claims


def user_info(user: ClaimsSource, scope: str, requested: dict[str, Any] | None = None) -> UserInfo:
    """The claims that ``scope`` (plus individually requested claims) releases about ``user``."""
    known = all_claims(user)
    names = {"sub"}
    for item in (scope or "").split():
        names.update(SCOPE_CLAIMS.get(item, ()))
    names.update((requested or {}).keys())
    return UserInfo({name: known[name] for name in names if name in known})


def parse_claims_parameter(raw: str | None) -> dict[str, dict[str, Any]] | None:
    """The `claims` request parameter as {"userinfo": {...}, "id_token": {...}}; ValueError when malformed."""
    if not raw:
        return None
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("claims must be a JSON object")
    result: dict[str, dict[str, Any]] = {}
    for target in ("userinfo", "id_token"):
        part = value.get(target) or {}
        if not isinstance(part, dict):
            raise ValueError(f"claims.{target} must be a JSON object")
        result[target] = {str(k): v for k, v in part.items()}
    return result
