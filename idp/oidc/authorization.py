"""Validating an authorization request, wherever its parameters come from: the query or form of /authorize, a
request pushed to /par (RFC 9126 2.1: validated "as it would an authorization request sent to the authorization
endpoint"), the pushed request stored behind a request_uri when it reaches /authorize (RFC 9126 4: validated again,
since the client's registration may have changed meanwhile, 7.4), and the one the challenge endpoint pushes for
its redirect_to_web answer (idp.oidc.par). One code path, so that the places cannot drift apart.

Authlib validates the protocol (client, redirect URI, response type, scope, PKCE, nonce, parameter lengths through
the grant's extensions in idp.oidc.server); the checks here add what it does not: single-valued parameters,
``max_age``, ``claims`` and ``id_token_hint``. A request object (RFC 9101) has been resolved into its parameters
before they get here (idp.oidc.request_objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError
from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError
from werkzeug.datastructures import MultiDict

from idp.oidc import claims as oidc_claims
from idp.oidc import dpop, keys, response_modes
from idp.oidc.server import current_server, issuer

# Parameters of an authorization request that may appear once (RFC 6749 3.1, OIDC Core 3.1.2.1, RFC 7636 4.3).
SINGLE_VALUED = ("nonce", "code_challenge", "code_challenge_method", "prompt", "max_age", "acr_values", "login_hint",
                 "id_token_hint", "claims", "ui_locales", "claims_locales", "display", "response_mode", "request",
                 "request_uri", "dpop_jkt")

# Authlib quotes response_type and redirect_uri in its error descriptions, and refuses to build an error whose
# description would hold a character RFC 6749 4.1.2.1 forbids there (a ValueError with this text). Such a request
# is still just an invalid one.
AUTHLIB_UNSAYABLE = "Error description contains forbidden characters"


class _NotYetKnown:
    """The grant's user while a request is pushed (RFC 9126 2.1): nobody has signed in yet, and whether someone
    must (``prompt=none`` answering login_required) is decided when the request reaches /authorize. RFC 9126 2.3:
    errors about user interaction are never returned at the PAR endpoint. Authlib asks only whether there is a
    user, so this stands for "not decided here"."""

    def __bool__(self) -> bool:
        return True


NOT_YET_KNOWN = _NotYetKnown()


@dataclass
class Validated:
    """A valid authorization request: Authlib's grant (its client, redirect URI and parameters) and what idp
    parsed from it."""

    grant: Any
    max_age: int | None
    claims_request: dict[str, Any] | None
    hint_subject: str | None

    @property
    def client(self):
        return self.grant.client

    @property
    def parameters(self) -> MultiDict:
        return self.grant.request.payload.data


def pushed_only(client) -> bool:
    """Whether ``client`` may start an authorization request only by pushing it (RFC 9126 4, 5 and 6): the global
    setting, or the client's own."""
    return bool(current_app.config["IDP_REQUIRE_PAR"] or client.require_pushed_authorization_requests)


def validate(parameters: MultiDict, end_user: Any, *, pushed: bool) -> Validated:
    """Validate an authorization request's ``parameters`` for ``end_user`` (the signed-in user, None, or
    NOT_YET_KNOWN); ``pushed`` says whether they were (or are being) pushed. Raises an OAuth2Error: with
    ``redirect_uri`` set once the client and its redirect URI are known good (the error may go back there, RFC 6749
    4.1.2.1), without it before (SECURITY.md 2)."""
    try:
        grant = current_server().get_consent_grant(request=parameters, end_user=end_user)
    except ValueError as exc:
        if not str(exc).startswith(AUTHLIB_UNSAYABLE):
            raise
        raise InvalidRequestError("A parameter holds characters that it may not contain.") from None
    try:
        if not pushed and pushed_only(grant.client):  # RFC 9126 4: "using the invalid_request error code"
            raise InvalidRequestError("This client must push its authorization requests to the "
                                      "pushed_authorization_request_endpoint (RFC 9126).")
        repeated = next((name for name in SINGLE_VALUED if len(parameters.getlist(name)) > 1), None)
        if repeated:  # RFC 6749 3.1; Authlib checks client_id, response_type, redirect_uri, scope and state
            raise InvalidRequestError(f"Multiple '{repeated}' in request.")
        response_modes.check(parameters, grant.redirect_uri)  # before anything else is sent by that mode
        # Request objects are resolved before (idp.oidc.request_objects, idp.oidc.par), and RFC 9101 4 forbids them
        # inside one: one still here came by a path that does not read them (OIDC Core 3.1.2.6).
        if parameters.get("request"):
            raise RequestNotSupportedError()
        if parameters.get("request_uri"):
            raise RequestURINotSupportedError()
        max_age = parameters.get("max_age")
        if max_age is not None and (not (max_age.isascii() and max_age.isdigit()) or len(max_age) > 10):
            raise InvalidRequestError("max_age must be a non-negative integer.")
        try:
            claims_request = oidc_claims.parse_claims_parameter(parameters.get("claims"))
        except ValueError:
            raise InvalidRequestError("claims must be a JSON object.") from None
        hint_subject = hint_subject_of(parameters.get("id_token_hint"))
        if "dpop_jkt" in parameters and not dpop.is_thumbprint(parameters.get("dpop_jkt")):  # RFC 9449 10
            raise InvalidRequestError("dpop_jkt must be a JWK SHA-256 thumbprint, base64url (RFC 9449 10).")
    except OAuth2Error as error:
        error.redirect_uri, error.state = grant.redirect_uri, parameters.get("state")
        raise
    return Validated(grant=grant, max_age=int(max_age) if max_age is not None else None,
                     claims_request=claims_request, hint_subject=hint_subject)


def hint_subject_of(raw: str | None) -> str | None:
    """The `sub` of an id_token_hint we signed (expired ones count: OIDC Core 3.1.2.1)."""
    if not raw:
        return None
    try:
        decoded = jwt.decode(raw, keys.keyset_for_token(raw), algorithms=["RS256", "ES256"])
    except (JoseError, ValueError):
        raise InvalidRequestError("id_token_hint is not a valid ID token of this issuer.") from None
    if decoded.claims.get("iss") != issuer() or not isinstance(decoded.claims.get("sub"), str):
        raise InvalidRequestError("id_token_hint is not a valid ID token of this issuer.")
    return decoded.claims["sub"]
