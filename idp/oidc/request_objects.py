"""Request objects (RFC 9101, JWT-Secured Authorization Request; OIDC Core 6): an authorization request whose
parameters are the claims of a JWT signed by the client, sent by value (``request``) or by reference
(``request_uri``, fetched here), at /authorize and, by value, at /par (RFC 9126 3).

- Only the request object's parameters count (RFC 9101 6.3: "MUST only use the parameters in the Request Object
  even if the same parameter is provided in the query parameter"); of the query only ``client_id`` (which must equal
  the object's ``client_id``, RFC 9101 5 and 6.3) and ``request``/``request_uri`` are read. OIDC Core 6.1 merges
  instead (the object's values supersede the query's, and the query must repeat response_type, client_id and
  scope): idp follows RFC 9101, which replaced that rule, so a parameter sent beside the object is ignored, never
  used.
- Signed with RS256, ES256 or PS256 (RFC 9101 10.1) by a key of the client's registered ``jwks`` or ``jwks_uri``
  (idp.oidc.server.client_keys, as private_key_jwt uses them): a ``kid`` must name one of them, the ``alg`` must be
  the client's ``request_object_signing_alg`` when it registered one. ``alg: none`` (RFC 9101 4, OIDC Core 6.1)
  only for a client registered with ``request_object_signing_alg: none``, the explicit opt-in.
- Claims (RFC 9101 4, 10.2, 10.8): ``iss`` is the client_id, ``aud`` is (or includes) the issuer, ``exp`` is
  required and not past, ``nbf`` and ``iat`` are not in the future, and the object lives at most an hour (the
  FAPI rule: ``exp`` no more than 60 minutes after ``nbf``). A ``typ`` other than ``oauth-authz-req+jwt`` or ``JWT``
  names another kind of JWT (an ID token, a logout token, a DPoP proof...) and is refused (RFC 9101 10.8).
- By reference: only a URI the client registered in ``request_uris`` (exact match; discovery says
  ``require_request_uri_registration``, so nobody can make idp fetch an arbitrary address: RFC 9101 10.4), https
  (http to a loopback host only in development and testing), fetched with no redirect followed, at most MAX_BYTES,
  within FETCH_SECONDS, answered 200 with the media type of RFC 9101 5.2.3 (or ``application/jwt``). Any failure
  there is ``invalid_request_uri``; a bad object is ``invalid_request_object`` (OIDC Core 3.1.2.6).
- Every failure here is shown on the error page, never sent to a redirect URI: the redirect URI of the request is
  inside the object, and is not one to trust until the object has been verified (SECURITY.md 2). Once it is, the
  request is validated as any other (idp.oidc.authorization), whose errors go to that redirect URI.

Authlib 1.9 has this as an extension (authlib.oauth2.rfc9101.JWTAuthenticationRequest, with OIDC's request_uris
check in authlib.oidc.core.OpenIDJWTAuthenticationRequest), hooked into every ``get_authorization_grant``: it would
fetch a request_uri each time Authlib looks the grant up, replace the parameters by a plain dict (idp validates
repeated parameters), check neither ``iss``, ``aud`` nor a required ``exp``, and answer some faults of the object as
``invalid_request``. idp uses its error classes and its registration metadata checks (idp.oidc.registration), and
resolves the object here, once, before the one validation path.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc9101.errors import InvalidRequestObjectError, InvalidRequestUriError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact
from werkzeug.datastructures import MultiDict

from idp.models import Client
from idp.oidc import par
from idp.oidc.registration import SIGNED_REQUEST_OBJECT_ALGS, validate_request_uri
from idp.oidc.server import client_keys, issuer, outbound_public_only, query_client
from idp.security.fetch import FetchFailed, bounded_get

# RFC 9101 5.2.3 names application/oauth-authz-req+jwt; application/jwt is what many clients' servers send.
MEDIA_TYPES = ("application/oauth-authz-req+jwt", "application/jwt")
# Bounds on fetching a request_uri (RFC 9101 10.4.1: a request_uri must not let anyone tie the server up): the
# answer's size, and the time allowed for the whole fetch (each read waits at most this long too; the deadline is
# checked after each, so one fetch never takes more than twice it).
MAX_BYTES = 65536
FETCH_SECONDS = 5.0
# FAPI 1.0 Advanced 5.2.2-13 / FAPI 2.0 Message Signing: exp at most 60 minutes after nbf.
MAX_LIFETIME = 3600
# Clock skew allowed for nbf and iat in the future.
LEEWAY = 60
# The request object's own JWT claims: not authorization request parameters.
JWT_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})
# RFC 9101 4 recommends typ oauth-authz-req+jwt; a bare JWT (or none) is what OIDC Core clients send.
TYPES = frozenset({"oauth-authz-req+jwt", "application/oauth-authz-req+jwt", "jwt"})


def present(values: MultiDict) -> bool:
    """Whether an authorization request carries a request object: ``request``, or a ``request_uri`` that is not
    one /par issued (idp.oidc.par resolves those)."""
    return "request" in values or ("request_uri" in values and not par.is_reference(values.get("request_uri")))


def resolve(values: MultiDict, now: datetime, *, grace: bool = False) -> MultiDict:
    """The authorization request that the request object in ``values`` (a query, a form or a pushed body) holds:
    its parameters and the query's ``client_id``, nothing else (RFC 9101 6.3). Raises an OAuth2Error without a
    redirect URI (the error page). ``grace`` accepts an expired object: the request is the return address of a
    sign-in this browser has just completed, begun with this very object while it was valid (idp.oidc.views)."""
    for name in ("request", "request_uri", "client_id"):
        if len(values.getlist(name)) > 1:
            raise InvalidRequestError(f"Multiple '{name}' in request.")
    if "request" in values and "request_uri" in values:  # RFC 9101 5: one or the other
        raise InvalidRequestError("Send the request object by value (request) or by reference (request_uri), not "
                                  "both (RFC 9101 5).")
    client_id = values.get("client_id")
    if not client_id:  # RFC 9101 5: client_id is required beside request or request_uri
        raise InvalidRequestError("Send client_id with the request object (RFC 9101 5).")
    client = query_client(client_id)
    if client is None:
        raise InvalidClientError(description="The client does not exist on this server.")
    raw = fetch_registered(client, values["request_uri"]) if "request_uri" in values else values["request"]
    claims = verify(client, raw, now, grace=grace)
    return parameters_of(claims, client.client_id)




# --- by reference ------------------------------------------------------------------------------------------------

def fetch_registered(client: Client, request_uri: str) -> str:
    """The request object at ``request_uri``, which ``client`` must have registered (OIDC Core 6.2, discovery's
    require_request_uri_registration)."""
    if request_uri not in (client.request_uris or []):
        raise InvalidRequestUriError("The request_uri is not one this client registered (request_uris).")
    if validate_request_uri(request_uri) is not None:  # registered under development rules, used in production
        raise InvalidRequestUriError("The request_uri is not an https URL.")
    return fetch(request_uri)


def fetch(uri: str) -> str:
    """GET ``uri`` within the bounds above: no redirect (RFC 9101 10.4.2), 200, the request object media type,
    at most MAX_BYTES within FETCH_SECONDS; any failure is invalid_request_uri (OIDC Core 3.1.2.6)."""
    try:
        body = bounded_get(uri, media_types=MEDIA_TYPES, max_bytes=MAX_BYTES, seconds=FETCH_SECONDS,
                           public_only=outbound_public_only())
    except FetchFailed as failed:
        raise InvalidRequestUriError(f"The request_uri {failed} (RFC 9101 5.2.3).") from None
    try:
        return body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidRequestObjectError("The request object is not a compact JWS.") from None


# --- the object --------------------------------------------------------------------------------------------------

def allowed_algs(client: Client) -> tuple[str, ...]:
    """The algorithms ``client``'s request objects may use: its registered request_object_signing_alg (OIDC
    Registration 2: "All Request Objects from this Client MUST be rejected, if not signed with this algorithm"),
    else any of RS256, ES256 and PS256; "none" only when that is what it registered."""
    registered = client.request_object_signing_alg
    return (registered,) if registered else SIGNED_REQUEST_OBJECT_ALGS


def verify(client: Client, raw: Any, now: datetime, *, grace: bool = False) -> dict[str, Any]:
    """The claims of ``raw``, a request object of ``client``, once its signature and claims are checked (RFC 9101
    6.2, 10.2, 10.8)."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_BYTES or raw.count(".") != 2:
        raise InvalidRequestObjectError("The request object is not a compact JWS (encrypted request objects are "
                                        "not supported).")
    try:
        header = extract_compact(raw.encode("ascii")).headers()
    except (JoseError, ValueError, TypeError, KeyError, UnicodeError):
        raise InvalidRequestObjectError("The request object is not a compact JWS.") from None
    alg = header.get("alg")
    allowed = allowed_algs(client)
    if alg not in allowed:
        raise InvalidRequestObjectError(f"This client's request objects must be signed with {' or '.join(allowed)} "
                                        "(RFC 9101 10.1).")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in TYPES):
        raise InvalidRequestObjectError("The request object's typ names another kind of JWT (RFC 9101 10.8).")
    if alg == "none":
        claims = _unsigned_claims(raw)
    else:
        keys = client_keys(client)
        if keys is None:
            raise InvalidRequestObjectError("This client has no usable keys (jwks or jwks_uri) to verify its "
                                            "request objects with.")
        try:
            claims = jwt.decode(raw, keys, algorithms=[alg]).claims
        except (JoseError, ValueError, TypeError, KeyError, AttributeError):
            raise InvalidRequestObjectError("The request object's signature does not verify with a key the client "
                                            "registered (kid and alg must match one) (RFC 9101 6.2).") from None
    _check_claims(client, claims, now, grace=grace)
    return claims


def _unsigned_claims(raw: str) -> dict[str, Any]:
    """The claims of an unsecured JWS (``alg: none``, RFC 7515 A.5): nothing to verify, and no signature part."""
    _, payload, signature = raw.split(".")
    if signature:
        raise InvalidRequestObjectError("An unsigned request object has an empty signature part.")
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        raise InvalidRequestObjectError("The request object's claims are not JSON.") from None
    if not isinstance(claims, dict):
        raise InvalidRequestObjectError("The request object's claims are not a JSON object.")
    return claims


def _numeric(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        raise InvalidRequestObjectError(f"The request object's {name} is not a NumericDate.")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float (10**400) is no date either
        raise InvalidRequestObjectError(f"The request object's {name} is not a NumericDate.") from None


def _check_claims(client: Client, claims: dict[str, Any], now: datetime, *, grace: bool) -> None:
    if claims.get("iss") != client.client_id:  # RFC 9101 10.2 (and OIDC Core 6.1: iss is the client_id)
        raise InvalidRequestObjectError("The request object's iss must be the client_id.")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if issuer() not in audiences:  # RFC 9101 4 and 10.8: meant for this server, not another
        raise InvalidRequestObjectError("The request object's aud must be this server's issuer.")
    if claims.get("client_id") != client.client_id:  # RFC 9101 5 and 6.3: MUST be identical
        raise InvalidRequestObjectError("The request object's client_id must be the client_id of the request.")
    if "request" in claims or "request_uri" in claims:  # RFC 9101 4: MUST NOT be included
        raise InvalidRequestObjectError("A request object may not hold request or request_uri.")
    exp, nbf, iat = _numeric(claims, "exp"), _numeric(claims, "nbf"), _numeric(claims, "iat")
    moment = now.timestamp()
    if exp is None:
        raise InvalidRequestObjectError("The request object must say when it expires (exp).")
    if exp <= moment and not grace:
        raise InvalidRequestObjectError("The request object has expired.")
    if (nbf is not None and nbf > moment + LEEWAY) or (iat is not None and iat > moment + LEEWAY):
        raise InvalidRequestObjectError("The request object is not valid yet (nbf or iat is in the future).")
    start = nbf if nbf is not None else iat if iat is not None else moment
    if exp - start > MAX_LIFETIME:
        raise InvalidRequestObjectError("A request object may live at most 60 minutes (exp - nbf).")


def parameters_of(claims: dict[str, Any], client_id: str) -> MultiDict:
    """The authorization request in a request object's claims (RFC 9101 4: each parameter a claim, its value a
    string, or for ``claims`` the JSON object itself, OIDC Core 5.5); numbers (``max_age``) as their decimal."""
    parameters = MultiDict([("client_id", client_id)])
    for name, value in claims.items():
        if name in JWT_CLAIMS or name == "client_id":
            continue
        if name == "claims" and isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidRequestObjectError(f"The request object's {name[:64]} is not a string.")
        value = str(value)
        if "\x00" in name or "\x00" in value:  # no field takes one (PostgreSQL text cannot hold it)
            raise InvalidRequestObjectError("The request object holds a NUL character.")
        parameters.add(name, value)
    if len(parameters) > par.MAX_VALUES:
        raise InvalidRequestObjectError("The request object holds more parameters than this server accepts.")
    return parameters
