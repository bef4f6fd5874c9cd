"""Registering a client: the rules its settings must follow (RFC 7591 and OpenID Connect Dynamic Client Registration
metadata, checked with Authlib's claims classes, plus idp's own), shared by the command line and the admin API."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc7591 import ClientMetadataClaims as RFC7591Claims
from authlib.oidc.registration import ClientMetadataClaims as OIDCRegistrationClaims
from flask import current_app, has_app_context
from joserfc.errors import InvalidClaimError

from idp import audit
from idp.extensions import db
from idp.login.assurance import LEVELS
from idp.models import Client
from idp.oidc.claims import ACCOUNT_SCOPE, ADMIN_SCOPES, SCOPES
from idp.oidc.server import ALL_AUTH_METHODS, GRANT_TYPES, TOKEN_EXCHANGE_GRANT_TYPE, client_public_keys
from idp.security.keys import SUPPORTED_ALGS
from idp.security.tokens import new_token, token_hash

# RFC 9101 10.1: the algorithms a request object may be signed with (idp.oidc.request_objects); "none" only for a
# client registered with request_object_signing_alg "none".
SIGNED_REQUEST_OBJECT_ALGS = ("RS256", "ES256", "PS256")
REQUEST_OBJECT_ALGS = (*SIGNED_REQUEST_OBJECT_ALGS, "none")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})  # where plain http is allowed (RFC 8252 7.3)
APPLICATION_TYPES = ("web", "native")  # OpenID Connect Dynamic Client Registration 1.0 2


class RedirectURIError(ValueError):
    """A redirect URI that cannot be registered: RFC 7591 3.2.2's invalid_redirect_uri, where any other refusal is
    invalid_client_metadata (both are ValueError to the command line and the admin API)."""


def validate_redirect_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be registered (SECURITY.md 1), or None: absolute, no fragment, https or loopback http."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc and parts.scheme in {"http", "https"}:
        return f"not an absolute URI: {uri}"
    if parts.fragment or "#" in uri:
        return f"a redirect URI may not carry a fragment: {uri}"
    if parts.scheme == "http":
        host = parts.hostname or ""
        if host not in LOOPBACK_HOSTS:
            return f"http redirect URIs are only allowed for loopback addresses: {uri}"
    if parts.scheme in {"javascript", "data", "file", "vbscript"}:
        return f"scheme not allowed: {uri}"
    return None


def validate_jwks_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be where a client's keys are fetched, or None: https, or http to a loopback host while
    IDP_ENV is development or testing (in production a loopback URL would point idp at its own host's services)."""
    parts = urlsplit(uri)
    loopback = parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS and not production()
    if not parts.netloc or not (parts.scheme == "https" or loopback) or parts.fragment:
        return f"a JWKS URI is an https URL without a fragment: {uri}"
    return None


def validate_request_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be registered as a place the client's request objects are fetched from (OIDC
    Registration 2 request_uris, RFC 9101 5.2), or None: an https URL without a fragment (matched exactly, OIDC
    Core 6.2) of at most 512 characters (RFC 9101 5.2). Plain http only to a loopback host, and only while
    IDP_ENV is development or testing: a request object fetched over plain http could be swapped on the way."""
    parts = urlsplit(uri)
    loopback = parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS and not production()
    if (len(uri) > 512 or not parts.netloc or not (parts.scheme == "https" or loopback) or parts.fragment
            or "#" in uri):
        return f"a request URI is an https URL without a fragment, of at most 512 characters: {uri}"
    return None


def production() -> bool:
    """Whether the app runs as IDP_ENV=production (or outside any app: the strict rules then)."""
    return not has_app_context() or current_app.config["IDP_ENV"] not in ("development", "testing")


def validate_logout_uri(uri: str, kind: str) -> str | None:
    """Why ``uri`` cannot be a client's back- or front-channel logout URI, or None: an absolute https URL (or http
    to a loopback host, for development), no fragment (Back-Channel Logout 1.0 2.2, Front-Channel Logout 1.0 2), a
    plain host name and port (the front-channel one goes into a page's Content-Security-Policy), at most 2000
    characters. http to a loopback host only while IDP_ENV is development or testing, as for jwks_uri."""
    parts = urlsplit(uri)
    loopback = parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS and not production()
    if (len(uri) > 2000 or not (parts.scheme == "https" or loopback) or parts.fragment or "#" in uri
            or not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?", parts.netloc)):
        return (f"a {kind} logout URI is an https URL (http only to a loopback host) without a fragment, of at "
                f"most 2000 characters: {uri}")
    return None


def origin_of(uri: str) -> str:
    """The scheme, host and port of a URL (as a browser compares them)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}".lower()


# What this server supports, named as in OpenID Provider Metadata (what its discovery document publishes, and the
# admin scopes, which it does not advertise).
SUPPORTED = {
    "scopes_supported": [*SCOPES, *ADMIN_SCOPES, ACCOUNT_SCOPE], "grant_types_supported": GRANT_TYPES,
    "response_types_supported": ["code"],
    "token_endpoint_auth_methods_supported": ALL_AUTH_METHODS, "acr_values_supported": list(LEVELS),
    "id_token_signing_alg_values_supported": list(SUPPORTED_ALGS),
    "request_object_signing_alg_values_supported": list(REQUEST_OBJECT_ALGS),
}


def _refusal(claim: str, metadata: dict) -> str:
    """The one-line reason a registration metadata value is refused."""
    if claim == "scope":
        unknown = [s for s in metadata["scope"].split() if s not in SCOPES and s not in ADMIN_SCOPES
                   and s != ACCOUNT_SCOPE]
        return f"unknown scopes: {' '.join(unknown)}"
    if claim == "grant_types":
        unknown = [g for g in metadata["grant_types"] if g not in GRANT_TYPES]
        return f"unsupported grant type {' '.join(unknown)} (choose from {', '.join(GRANT_TYPES)})"
    if claim == "token_endpoint_auth_method":
        return f"unsupported token endpoint auth method {metadata[claim]}"
    if claim == "id_token_signed_response_alg":
        return f"the ID token algorithm must be {' or '.join(SUPPORTED_ALGS)}"
    if claim == "request_object_signing_alg":
        return f"the request object algorithm must be one of {', '.join(REQUEST_OBJECT_ALGS)}"
    if claim == "request_uris":
        return "invalid request_uris"
    if claim == "default_acr_values":
        return f"unknown level {metadata[claim][0]} (choose from {', '.join(LEVELS)})"
    return f"invalid {claim}"


def check_metadata(metadata: dict) -> None:
    """Validate client metadata as registration does (RFC 7591 2, OpenID Connect Dynamic Client Registration 2)
    with Authlib's ClientMetadataClaims, against what this server supports; raises ValueError in one line."""
    for claims_class in (RFC7591Claims, OIDCRegistrationClaims):
        claims = claims_class(metadata, {}, options=claims_class.get_claims_options(SUPPORTED))
        try:
            claims.validate()
        except InvalidClaimError as error:
            raise ValueError(_refusal(error.claim, metadata)) from None


def new_client_id() -> str:
    """A random client_id that never starts with "-" (the command line would read it as an option)."""
    while (client_id := new_token(16)).startswith("-"):
        pass
    return client_id


def new_client_secret() -> str:
    """A 256-bit client secret; shown once, stored as its SHA-256 (SECURITY.md 8)."""
    return new_token(32)


# Every setting of a client, by the name create_client takes it under (what the CLI, the API and the console set).
SETTINGS = ("name", "logo_uri", "redirect_uris", "post_logout_redirect_uris", "public", "grant_types", "scopes",
            "auth_method", "first_party", "id_token_alg", "jwks", "jwks_uri", "mfa", "min_acr",
            "allow_remembered_device", "access_token_ttl", "refresh_token_ttl", "refresh_tokens_for_sessions",
            "require_pushed_authorization_requests", "backchannel_logout_uri", "backchannel_logout_session_required",
            "frontchannel_logout_uri", "frontchannel_logout_session_required", "dpop_bound_access_tokens",
            "token_exchange_actors", "request_uris", "request_object_signing_alg",
            "policy_uri", "tos_uri", "application_type")

# The logout settings (OpenID Connect Back-Channel and Front-Channel Logout 1.0), stored under their own names.
LOGOUT_SETTINGS = ("backchannel_logout_uri", "backchannel_logout_session_required", "frontchannel_logout_uri",
                   "frontchannel_logout_session_required")


def _checked(*, name: str, redirect_uris: list[str], post_logout_redirect_uris: list[str], public: bool,
             grant_types: list[str], scopes: list[str], auth_method: str | None, first_party: bool,
             id_token_alg: str = "RS256", jwks: dict | None = None, jwks_uri: str | None = None,
             mfa: str = "optional", min_acr: str = "", allow_remembered_device: bool = True,
             access_token_ttl: int | None = None, refresh_token_ttl: int | None = None,
             refresh_tokens_for_sessions: bool = False, logo_uri: str | None = None,
             require_pushed_authorization_requests: bool = False, backchannel_logout_uri: str | None = None,
             backchannel_logout_session_required: bool = False, frontchannel_logout_uri: str | None = None,
             frontchannel_logout_session_required: bool = False,
             dpop_bound_access_tokens: bool = False, token_exchange_actors: list[str] | None = None,
             request_uris: list[str] | None = None, request_object_signing_alg: str | None = None,
             policy_uri: str | None = None, tos_uri: str | None = None, application_type: str | None = None) -> dict:
    """The settings as stored (column names), after checking them; raises ValueError in one line (RedirectURIError
    for a redirect URI)."""
    grant_types = grant_types or ["authorization_code", "refresh_token"]
    method = "none" if public else (auth_method or "client_secret_basic")
    for uri in redirect_uris:  # stricter than registration's own URI check
        problem = validate_redirect_uri(uri)
        if problem:
            raise RedirectURIError(problem)
    for uri in post_logout_redirect_uris:
        problem = validate_redirect_uri(uri)
        if problem:
            raise ValueError(problem)
    if application_type is not None and application_type not in APPLICATION_TYPES:
        raise ValueError(f"application_type is {' or '.join(APPLICATION_TYPES)}")
    if application_type == "web":
        # OpenID Connect Dynamic Client Registration 1.0 2: a web client's redirect URIs are its site's (https);
        # http to a loopback host stays allowed for development, as for every client (SECURITY.md 1). A custom
        # scheme is a native app's.
        for uri in redirect_uris:
            if urlsplit(uri).scheme not in ("https", "http"):
                raise RedirectURIError(f"a web application's redirect URIs are https URLs (register "
                                       f"application_type native for an app's own scheme): {uri}")
    check_metadata({"redirect_uris": list(redirect_uris), "token_endpoint_auth_method": method,
                    "grant_types": list(grant_types), "response_types": ["code"] if redirect_uris else [],
                    "client_name": name, "scope": " ".join(scopes), "id_token_signed_response_alg": id_token_alg,
                    **({"default_acr_values": [min_acr]} if min_acr else {}),
                    **({"jwks_uri": jwks_uri} if jwks_uri else {}), **({"logo_uri": logo_uri} if logo_uri else {}),
                    **({"request_uris": list(request_uris)} if request_uris else {}),
                    **({"request_object_signing_alg": request_object_signing_alg}
                       if request_object_signing_alg else {}),
                    **({"policy_uri": policy_uri} if policy_uri else {}), **({"tos_uri": tos_uri} if tos_uri else {})})
    # idp's own rules on top of the registration metadata's.
    if "authorization_code" in grant_types and not redirect_uris:
        raise RedirectURIError("a client with the authorization_code grant needs at least one --redirect-uri")
    if public and auth_method not in (None, "none"):
        raise ValueError("a public client authenticates with 'none'")
    if method == "none" and "client_credentials" in grant_types:
        raise ValueError("client_credentials needs a confidential client")
    if method == "none" and TOKEN_EXCHANGE_GRANT_TYPE in grant_types:  # a service acting for users (RFC 8693 5)
        raise ValueError("token exchange needs a confidential client")
    actors = list(token_exchange_actors or [])
    if len(actors) > 50 or len(set(actors)) != len(actors) or not all(
            isinstance(a, str) and 0 < len(a) <= 64 and a.isprintable() for a in actors):
        raise ValueError("token exchange actors are at most 50 distinct client ids")
    machine = grant_types == ["client_credentials"] and method != "none"
    # A first-party app's users may carry admin scopes for their own roles, but a client_credentials token has no
    # user: with admin scopes that grant must be the client's only one (a machine), never beside a user flow.
    people = first_party and "client_credentials" not in grant_types
    if set(scopes) & set(ADMIN_SCOPES) and not (machine or people):
        raise ValueError("the idp:* admin scopes are for a confidential client with only the client_credentials "
                         "grant (a machine), or a first-party client (its users' tokens carry them for their "
                         "own roles); no user can consent to them")
    if ACCOUNT_SCOPE in scopes and not first_party:
        raise ValueError("the idp:account scope is for first-party clients (their users manage their own account)")
    if method == "private_key_jwt" and not (jwks or jwks_uri):
        raise ValueError("private_key_jwt needs the client's --jwks or --jwks-uri")
    if jwks is not None and jwks_uri:  # RFC 7591 2: "MUST NOT both be present"
        raise ValueError("jwks and jwks_uri cannot both be registered: the keys by value or by reference")
    if jwks is not None:
        client_public_keys(jwks)  # raises ValueError with what is wrong
    problem = validate_jwks_uri(jwks_uri) if jwks_uri else None
    if problem:
        raise ValueError(problem)
    # RFC 9101 6.2: a signed request object is verified with the client's registered keys; without keys only the
    # explicit opt-in to unsigned ones leaves anything to fetch from a request_uri.
    for uri in request_uris or []:
        problem = validate_request_uri(uri)
        if problem:
            raise ValueError(problem)
    if len(request_uris or []) > 20:
        raise ValueError("a client may register at most 20 request URIs")
    if (request_uris or request_object_signing_alg in SIGNED_REQUEST_OBJECT_ALGS) and not (jwks or jwks_uri) \
            and request_object_signing_alg != "none":
        raise ValueError("request objects are verified with the client's keys: register --jwks or --jwks-uri "
                         "(or allow unsigned ones with --request-object-alg none)")
    # The logo's origin goes into the consent page's Content-Security-Policy: a plain host name (and port) only.
    if logo_uri and (len(logo_uri) > 2000 or urlsplit(logo_uri).scheme != "https"
                     or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", urlsplit(logo_uri).netloc)):
        raise ValueError("a logo URI is an https URL of at most 2000 characters")
    # RFC 7591 2: links the consent page shows the user; https only, so that what the user reads there is the
    # client's own (and not a javascript: or data: URL).
    for what, link in (("policy_uri", policy_uri), ("tos_uri", tos_uri)):
        if link and (len(link) > 2000 or urlsplit(link).scheme != "https" or not urlsplit(link).hostname
                     or "#" in link or any(ch.isspace() for ch in link)):
            raise ValueError(f"a {what} is an https URL without a fragment, of at most 2000 characters")
    for kind, logout_uri in (("back-channel", backchannel_logout_uri), ("front-channel", frontchannel_logout_uri)):
        problem = validate_logout_uri(logout_uri, kind) if logout_uri is not None else None
        if problem:
            raise ValueError(problem)
    # Front-Channel Logout 1.0 2: the URI's scheme, host and port are those of a registered redirect URI, so the
    # page frames the client's own site only.
    if frontchannel_logout_uri and origin_of(frontchannel_logout_uri) not in {origin_of(u) for u in redirect_uris}:
        raise ValueError("a front-channel logout URI has the scheme, host and port of a registered redirect URI")
    if not name.strip() or len(name) > 200:
        raise ValueError("a client name has 1 to 200 characters")
    for ttl in (access_token_ttl, refresh_token_ttl):
        if ttl is not None and not 60 <= ttl <= 365 * 86400:
            raise ValueError("token lifetimes must be between 60 seconds and a year")
    if mfa not in ("optional", "required"):
        raise ValueError("--mfa must be optional or required")
    return {"name": name, "logo_uri": logo_uri or None, "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris), "grant_types": list(grant_types),
            "scope": " ".join(scopes or SCOPES), "token_endpoint_auth_method": method, "first_party": first_party,
            "id_token_signed_response_alg": id_token_alg, "jwks": jwks, "jwks_uri": jwks_uri, "mfa": mfa,
            "min_acr": min_acr, "allow_remembered_device": allow_remembered_device,
            "access_token_ttl": access_token_ttl, "refresh_token_ttl": refresh_token_ttl,
            "refresh_tokens_for_sessions": refresh_tokens_for_sessions,
            "require_pushed_authorization_requests": require_pushed_authorization_requests,
            "backchannel_logout_uri": backchannel_logout_uri or None,
            "backchannel_logout_session_required": bool(backchannel_logout_session_required),
            "frontchannel_logout_uri": frontchannel_logout_uri or None,
            "frontchannel_logout_session_required": bool(frontchannel_logout_session_required),
            "dpop_bound_access_tokens": dpop_bound_access_tokens, "token_exchange_actors": actors,
            "request_uris": list(dict.fromkeys(request_uris or [])) or None,
            "request_object_signing_alg": request_object_signing_alg or None, "policy_uri": policy_uri or None,
            "tos_uri": tos_uri or None, "application_type": application_type}


def _unknown_actors(actors: list[str], own_id: str) -> None:
    """Every client named in token_exchange_actors is registered (or the client itself): a typo would silently
    allow nobody, and an id not yet taken would allow whoever got it later."""
    known = set(db.session.execute(db.select(Client.client_id).where(Client.client_id.in_(actors))).scalars())
    missing = [a for a in actors if a not in known and a != own_id]
    if missing:
        raise ValueError(f"no client with id {missing[0]} (token exchange actor)")


def create_client(*, client_id: str | None = None, audit_details: dict | None = None,
                  event: str = "client.created", **settings) -> tuple[Client, str | None]:
    """Register a client after checking its settings (SETTINGS); returns it and its secret (None for public
    clients and private_key_jwt). ``event`` names the audit event (client.registered at /register)."""
    columns = _checked(**settings)
    client_id = client_id or new_client_id()
    _unknown_actors(columns["token_exchange_actors"], client_id)
    method = columns["token_endpoint_auth_method"]
    secret = None if method in ("none", "private_key_jwt") else new_client_secret()
    client = Client(client_id=client_id, client_secret_hash=token_hash(secret) if secret else None,
                    **columns)
    db.session.add(client)
    db.session.flush()
    audit.record(event, client_id=client.client_id, name=client.name, auth_method=method,
                 grant_types=client.grant_types, **(audit_details or {"via": "cli"}))
    return client, secret


# The settings stored in a column of the same name, which settings_of and describe both show as they are (lists
# copied, NULL lists as empty ones).
SAME_NAMED = ("mfa", "min_acr", "allow_remembered_device", "access_token_ttl", "refresh_token_ttl",
              "refresh_tokens_for_sessions", "require_pushed_authorization_requests", *LOGOUT_SETTINGS,
              "dpop_bound_access_tokens", "request_object_signing_alg", "policy_uri", "tos_uri", "application_type")
LIST_SETTINGS = ("token_exchange_actors", "request_uris")


def _same_named(client: Client) -> dict:
    return {**{name: getattr(client, name) for name in SAME_NAMED},
            **{name: list(getattr(client, name) or []) for name in LIST_SETTINGS}}


def settings_of(client: Client) -> dict:
    """A client's settings under create_client's names."""
    public = client.token_endpoint_auth_method == "none"
    return {"name": client.name, "logo_uri": client.logo_uri, "redirect_uris": list(client.redirect_uris),
            "post_logout_redirect_uris": list(client.post_logout_redirect_uris), "public": public,
            "grant_types": list(client.grant_types), "scopes": client.scope.split(),
            "auth_method": None if public else client.token_endpoint_auth_method, "first_party": client.first_party,
            "id_token_alg": client.id_token_signed_response_alg, "jwks": client.jwks, "jwks_uri": client.jwks_uri,
            **_same_named(client)}


def update_client(client: Client, changes: dict, audit_details: dict | None = None,
                  event: str = "client.updated") -> dict:
    """Change some settings of a client, checked as a whole as at creation; returns the diff (column: [before,
    after]). Whether it has a secret cannot change (public, or private_key_jwt, against a secret): that is a new
    client, since its secret would have to appear or vanish under running software."""
    unknown = set(changes) - set(SETTINGS)
    if unknown:
        raise ValueError(f"not client settings: {', '.join(sorted(unknown))}")
    merged = {**settings_of(client), **changes}
    columns = _checked(**merged)
    if "token_exchange_actors" in changes:
        _unknown_actors(columns["token_exchange_actors"], client.client_id)
    had_secret = client.client_secret_hash is not None
    if had_secret != (columns["token_endpoint_auth_method"] not in ("none", "private_key_jwt")):
        raise ValueError("a client cannot gain or lose its secret: register a new client for that")
    diff = {}
    for column, value in columns.items():
        if getattr(client, column) != value:
            diff[column] = [getattr(client, column), value]
            setattr(client, column, value)
    if diff:
        shown = {column: pair for column, pair in diff.items() if column != "jwks"}  # keys are long; named only
        audit.record(event, client_id=client.client_id, changes=shown, jwks_changed="jwks" in diff,
                     **(audit_details or {"via": "cli"}))
    return diff


def describe(client: Client) -> dict:
    """A client's settings (never its secret)."""
    return {"client_id": client.client_id, "name": client.name, "logo_uri": client.logo_uri,
            "redirect_uris": client.redirect_uris,
            "post_logout_redirect_uris": client.post_logout_redirect_uris, "grant_types": client.grant_types,
            "scope": client.scope, "token_endpoint_auth_method": client.token_endpoint_auth_method,
            "first_party": client.first_party, "id_token_signed_response_alg": client.id_token_signed_response_alg,
            **_same_named(client),
            "created_at": client.created_at.isoformat(timespec="seconds")}


# --- client metadata by its RFC 7591 / OpenID Connect names (dynamic registration, idp.oidc.dynamic) -------------

# What a client may send to /register (RFC 7591 2; OpenID Connect Dynamic Client Registration 1.0 2; RFC 9126 6;
# RFC 9449 5.2; Back- and Front-Channel Logout 1.0), by its JSON type, and the setting each becomes.
REGISTRATION_FIELDS: dict[str, tuple[type, str]] = {
    "redirect_uris": (list, "redirect_uris"), "post_logout_redirect_uris": (list, "post_logout_redirect_uris"),
    "grant_types": (list, "grant_types"), "token_endpoint_auth_method": (str, "auth_method"),
    "client_name": (str, "name"), "logo_uri": (str, "logo_uri"), "policy_uri": (str, "policy_uri"),
    "tos_uri": (str, "tos_uri"), "jwks": (dict, "jwks"), "jwks_uri": (str, "jwks_uri"),
    "backchannel_logout_uri": (str, "backchannel_logout_uri"),
    "backchannel_logout_session_required": (bool, "backchannel_logout_session_required"),
    "frontchannel_logout_uri": (str, "frontchannel_logout_uri"),
    "frontchannel_logout_session_required": (bool, "frontchannel_logout_session_required"),
    "id_token_signed_response_alg": (str, "id_token_alg"), "scope": (str, "scopes"),
    "dpop_bound_access_tokens": (bool, "dpop_bound_access_tokens"),
    "require_pushed_authorization_requests": (bool, "require_pushed_authorization_requests"),
    "application_type": (str, "application_type"),
}
# Metadata idp understands but cannot honour: refused rather than ignored, since ignoring it would leave the client
# believing it gets what it asked for (an encrypted ID token, signed userinfo, pairwise subjects).
UNSUPPORTED_FIELDS = ("id_token_encrypted_response_alg", "id_token_encrypted_response_enc",
                      "userinfo_signed_response_alg", "userinfo_encrypted_response_alg",
                      "userinfo_encrypted_response_enc", "request_object_encryption_alg",
                      "request_object_encryption_enc", "authorization_signed_response_alg",
                      "authorization_encrypted_response_alg", "authorization_encrypted_response_enc",
                      "tls_client_certificate_bound_access_tokens")
# What an omitted field means (RFC 7591 2's defaults; RFC 7592 2.2: a PUT that leaves a field out removes it).
REGISTRATION_DEFAULTS: dict[str, Any] = {
    "logo_uri": None, "policy_uri": None, "tos_uri": None, "jwks": None, "jwks_uri": None,
    "backchannel_logout_uri": None, "backchannel_logout_session_required": False, "frontchannel_logout_uri": None,
    "frontchannel_logout_session_required": False, "id_token_alg": "RS256", "dpop_bound_access_tokens": False,
    "require_pushed_authorization_requests": False,
}
JSON_TYPES = {list: "an array", str: "a string", dict: "an object", bool: "true or false"}
MAX_LIST = 50  # redirect URIs and the like a client may register: far beyond any real client's
MAX_TEXT = 2000


def _of_type(value: Any, kind: type) -> bool:
    """isinstance, without narrowing ``value`` for mypy (``kind`` is a variable there)."""
    return isinstance(value, kind)


# Grants a stranger may not give their client (RFC 7591 5): the device grant sends the user a link with the code
# filled in, from a client that names itself (device-code phishing, RFC 8628 5.4); token exchange needs the target
# client to name the actor, which only an operator can do anyway.
OPERATOR_GRANTS = frozenset({"urn:ietf:params:oauth:grant-type:device_code", TOKEN_EXCHANGE_GRANT_TYPE})


def settings_from_metadata(metadata: Any, unnamed: str) -> dict:
    """create_client's settings from client metadata under its RFC names (RFC 7591 2, OpenID Connect Dynamic Client
    Registration 1.0 2), with RFC 7591's defaults for what is left out (a PUT of RFC 7592 2.2 replaces the whole
    registration, so an omitted field is reset, never kept). Metadata idp does not know is ignored (RFC 7591 2);
    what it knows and cannot honour is refused. Without a client_name (RFC 7591 2: optional) the client is named
    after its first redirect URI's host, else ``unnamed``. A dynamically registered client is never first-party
    and gets no idp:* scope (SECURITY.md 34). Raises ValueError (RedirectURIError for a redirect URI) in one line;
    the values are then checked by _checked, as for every client."""
    if not isinstance(metadata, dict):
        raise ValueError("the client metadata is a JSON object")
    settings: dict[str, Any] = {}
    for field, (kind, setting) in REGISTRATION_FIELDS.items():
        value: Any = metadata.get(field)
        if value is None:
            continue
        if not _of_type(value, kind) or (kind is str and len(value) > MAX_TEXT):
            raise ValueError(f"{field} must be {JSON_TYPES[kind]}" + (f" of at most {MAX_TEXT} characters"
                                                                      if kind is str else ""))
        if kind is list and (len(value) > MAX_LIST or not all(isinstance(item, str) and 0 < len(item) <= MAX_TEXT
                                                               for item in value)):
            error = RedirectURIError if field == "redirect_uris" else ValueError
            raise error(f"{field} must be a list of at most {MAX_LIST} non-empty strings of at most {MAX_TEXT} "
                        "characters")
        settings[setting] = value
    for field in UNSUPPORTED_FIELDS:
        if metadata.get(field) is not None:
            raise ValueError(f"{field} is not supported by this server")
    if metadata.get("subject_type") not in (None, "public"):
        raise ValueError("subject_type must be public (the only subject type this server supports)")
    if metadata.get("token_endpoint_auth_signing_alg") not in (None, "RS256", "ES256"):
        raise ValueError("token_endpoint_auth_signing_alg must be RS256 or ES256")
    grant_types = settings.get("grant_types") or ["authorization_code"]  # RFC 7591 2's default
    operator_only = sorted(set(grant_types) & OPERATOR_GRANTS)
    if operator_only:
        raise ValueError(f"the {operator_only[0]} grant is not open to dynamic registration: an operator registers "
                         "such clients (idp clients create)")
    response_types = metadata.get("response_types")
    if response_types is None:
        response_types = ["code"] if "authorization_code" in grant_types else []
    if not isinstance(response_types, list) or any(item != "code" for item in response_types):
        raise ValueError("response_types may only be ['code']: this server has no implicit or hybrid flow")
    # RFC 7591 2.1: the code response type goes with the authorization_code grant, and the grant with it.
    if bool(response_types) != ("authorization_code" in grant_types):
        raise ValueError("response_types ['code'] and the authorization_code grant go together (RFC 7591 2.1)")
    scopes = (settings.pop("scopes", None) or "").split()
    forbidden = [scope for scope in scopes if scope.startswith("idp:")]
    if forbidden:
        raise ValueError(f"the {' '.join(forbidden)} scope cannot be registered dynamically: the idp:* scopes are "
                         "for clients an operator registers")
    method = settings.pop("auth_method", None) or "client_secret_basic"  # RFC 7591 2's default
    name = (settings.pop("name", None) or "").strip()
    if not name:  # RFC 7591 2: optional; the consent page names the site the user would go back to
        hosts = [urlsplit(uri).hostname for uri in settings.get("redirect_uris", [])]
        name = next((host for host in hosts if host), None) or unnamed
    return {**REGISTRATION_DEFAULTS, **settings, "name": name, "grant_types": grant_types, "scopes": scopes,
            "public": method == "none", "auth_method": None if method == "none" else method,
            "application_type": settings.get("application_type") or "web",  # OIDC DCR 2's default
            "first_party": False, "redirect_uris": settings.get("redirect_uris", []),
            "post_logout_redirect_uris": settings.get("post_logout_redirect_uris", [])}


def metadata_of(client: Client) -> dict:
    """A client's registered metadata under the RFC 7591 / OpenID Connect names (RFC 7591 3.2.1, RFC 7592 3):
    what /register answers and the client configuration endpoint reads back (never a secret)."""
    metadata = {
        "client_id": client.client_id,
        "client_id_issued_at": int(client.created_at.timestamp()),
        "client_name": client.name, "redirect_uris": list(client.redirect_uris),
        "grant_types": list(client.grant_types),
        "response_types": ["code"] if "authorization_code" in client.grant_types else [],
        "token_endpoint_auth_method": client.token_endpoint_auth_method, "scope": client.scope,
        "id_token_signed_response_alg": client.id_token_signed_response_alg,
        "application_type": client.application_type or "web",
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "dpop_bound_access_tokens": client.dpop_bound_access_tokens,
        "require_pushed_authorization_requests": client.require_pushed_authorization_requests,
        "backchannel_logout_session_required": client.backchannel_logout_session_required,
        "frontchannel_logout_session_required": client.frontchannel_logout_session_required,
    }
    for name in ("logo_uri", "policy_uri", "tos_uri", "jwks", "jwks_uri", "backchannel_logout_uri",
                 "frontchannel_logout_uri"):
        if getattr(client, name) is not None:
            metadata[name] = getattr(client, name)
    if client.client_secret_hash is not None:
        metadata["client_secret_expires_at"] = 0  # RFC 7591 3.2.1: it does not expire
    return metadata
