"""Pushed Authorization Requests (RFC 9126): a client posts its authorization request to /par, authenticated as at
the token endpoint, and gets a ``request_uri`` to send the browser to /authorize with instead of the parameters.

- The request is validated before it is stored (RFC 9126 2.1 step 3), by the code that validates /authorize
  (idp.oidc.authorization), and again when it reaches /authorize (RFC 9126 4, 7.4: the client's registration may
  have changed meanwhile).
- The ``request_uri`` is ``urn:ietf:params:oauth:request_uri:`` and 256 random bits (RFC 9126 2.2, 7.1). It is a
  bearer reference: whoever holds it can start the request, so only its SHA-256 is stored (SECURITY.md 32), with
  the client that pushed it (RFC 9126 2.2: "bound to the client"), an expiry (``IDP_PAR_TTL``) and when it was used.
- At /authorize only the pushed parameters count; the query's other parameters are ignored, and its ``client_id``
  must be the pushing client's (RFC 9126 4, RFC 9101 5 and 6.3). An unknown, expired, used or another client's
  ``request_uri`` gets the error page: its redirect URI is not one to trust then (SECURITY.md 2).
- One use (RFC 9126 4, 7.3): the request is used up by one atomic statement (idp.login.consume) in the transaction
  that issues the authorization response, a code or an error sent to the redirect URI. Until then the browser may
  come back to it: reloading, and the sign-in's return to /authorize (RFC 9126 4 "MAY allow for duplicate requests
  due to a user reloading/refreshing their user agent"). A sign-in begun before the expiry may finish after it,
  in the browser that began it: the completed login transaction must carry this very ``request_uri``.
- The challenge endpoint's ``redirect_to_web`` answer carries one (for_challenge).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from flask import current_app, jsonify
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from idp.extensions import db
from idp.login import consume
from idp.models import Client, PushedRequest, TransactionState
from idp.oidc import authorization
from idp.security.tokens import new_token, token_hash

PREFIX = "urn:ietf:params:oauth:request_uri:"  # RFC 9126 2.2, registered in its 10.3
# RFC 9126 2.1: the client's credentials in the body "are relied upon only for client authentication and are not
# germane to the authorization request itself". They are never stored (SECURITY.md 30).
CLIENT_AUTHENTICATION = frozenset({"client_secret", "client_assertion", "client_assertion_type"})
# Bounds on what one push may store (RFC 9126 2.3 allows 413 beyond "the upper bound that the authorization server
# allows"): far above any real request (each value also has its own limit, idp.oidc.policy.PARAMETER_LIMITS).
MAX_VALUES = 64
MAX_CHARACTERS = 32768
# How long a used or expired pushed request is kept before `idp housekeeping` removes it: it still tells a late
# visitor "used" or "expired" rather than "unknown", and a sign-in begun in time may still be finishing.
KEPT_AFTER_EXPIRY = timedelta(days=1)


class InvalidRequestURIError(OAuth2Error):
    """OIDC Core 3.1.2.6 ``invalid_request_uri``: "The request_uri in the Authorization Request returns an error or
    contains invalid data"; shown on the error page, never sent to a redirect URI."""

    error = "invalid_request_uri"


def error(status: int, code: str, description: str) -> Response:
    """An error of the PAR endpoint: RFC 6749 5.2's form, never a redirect, never cached (RFC 9126 2.3)."""
    response = jsonify({"error": code, "error_description": description})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def ttl() -> int:
    """Seconds a pushed request waits to be used (RFC 9126 2.2 expires_in: a positive integer)."""
    return max(1, int(current_app.config["IDP_PAR_TTL"]))


def is_reference(value: Any) -> bool:
    """Whether a ``request_uri`` parameter is of the form this server hands out (other values are request objects
    by reference, which idp does not support: OIDC Core 6.2)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def authorization_parameters(form: MultiDict) -> MultiDict:
    """The authorization request in a pushed body: everything but the client's credentials."""
    return MultiDict([(name, value) for name, value in form.items(multi=True) if name not in CLIENT_AUTHENTICATION])


def too_large(parameters: MultiDict) -> bool:
    pairs = list(parameters.items(multi=True))
    return len(pairs) > MAX_VALUES or sum(len(name) + len(value) for name, value in pairs) > MAX_CHARACTERS


def push(client: Client, parameters: MultiDict, now: datetime) -> tuple[str, int]:
    """Store a validated authorization request; returns its request_uri and lifetime in seconds (RFC 9126 2.2)."""
    reference = new_token(32)
    seconds = ttl()
    db.session.add(PushedRequest(request_uri_hash=token_hash(reference), client_id=client.client_id,
                                 parameters=[[name, value] for name, value in parameters.items(multi=True)],
                                 created_at=now, expires_at=now + timedelta(seconds=seconds)))
    db.session.flush()
    return PREFIX + reference, seconds


@dataclass
class Pushed:
    """A pushed request that /authorize is serving."""

    row: PushedRequest
    request_uri: str

    @property
    def client_id(self) -> str:
        return self.row.client_id

    @property
    def parameters(self) -> MultiDict:
        return MultiDict([(name, value) for name, value in self.row.parameters])


def resolve(query: MultiDict, now: datetime, *, grace: bool = False) -> Pushed:
    """The pushed request that an /authorize request's ``request_uri`` names, or an OAuth2Error without a redirect
    URI (the error page). ``grace`` accepts an expired one: the request is the return address of a sign-in this
    browser has just completed, begun for this very request_uri before it expired (idp.oidc.views)."""
    uris, client_ids = query.getlist("request_uri"), query.getlist("client_id")
    if len(uris) != 1:
        raise InvalidRequestError("Multiple 'request_uri' in request.")
    if len(client_ids) != 1:  # RFC 9126 4, RFC 9101 5: client_id is required beside request_uri
        raise InvalidRequestError("Send client_id once with the request_uri.")
    request_uri = uris[0]
    reference = request_uri[len(PREFIX):]
    row = None
    if len(reference) <= 128:  # ours are 43 characters; a longer one is nobody's
        row = db.session.execute(db.select(PushedRequest).where(
            PushedRequest.request_uri_hash == token_hash(reference))).scalar_one_or_none()
    if row is None or row.client_id != client_ids[0]:  # RFC 9126 2.2: bound to the client that pushed it
        raise InvalidRequestURIError("The request_uri is unknown or was pushed by another client.")
    if row.used_at is not None:  # RFC 9126 4, 7.3: one use
        raise InvalidRequestURIError("The request_uri was used already: push the request again.")
    if row.expires_at <= now and not grace:
        raise InvalidRequestURIError("The request_uri has expired: push the request again.")  # RFC 9126 4
    return Pushed(row=row, request_uri=request_uri)


def use(pushed: Pushed, now: datetime) -> bool:
    """Use the pushed request up as its authorization response is issued; False when another request did first."""
    return consume.pushed_request(pushed.row, now)


def for_challenge(client: Client, state: TransactionState, now: datetime) -> dict[str, Any] | None:
    """The ``request_uri`` and ``expires_in`` of a ``redirect_to_web`` answer (draft-ietf-oauth-first-party-apps-04
    5.2.2.1.1): the challenge request's authorization request (client, scope, PKCE challenge, acr_values, nonce,
    the user's name as login_hint), pushed, for the app to open as /authorize?client_id=...&request_uri=... in a
    browser, where the user finishes what the API could not do and the app gets its code the usual way. None when
    the answer must go without one (the app then starts a code flow of its own)."""
    request_data = state.code_request or {}
    challenge = request_data.get("code_challenge")
    if not challenge:  # draft 5.2.2.1.1: "MUST NOT return a request_uri" (a pushed request without PKCE)
        return None
    redirect_uri = request_data.get("redirect_uri")
    if not redirect_uri and client.get_default_redirect_uri() is None:
        # No redirect URI to send the code to: the challenge request named none and the client has several
        # registered (or none). Picking one would be guessing, which SECURITY.md 3 refuses (RFC 6749 3.1.2.3).
        return None
    parameters = MultiDict([("response_type", "code"), ("client_id", client.client_id),
                            ("scope", " ".join(state.scopes)), ("code_challenge", challenge),
                            ("code_challenge_method", "S256")])
    if redirect_uri:  # sent, so the token request must repeat it (RFC 6749 4.1.3), as after a plain /authorize
        parameters.add("redirect_uri", redirect_uri)
    for name, value in (("acr_values", " ".join(state.acr_values)), ("nonce", request_data.get("nonce")),
                        ("login_hint", state.login_hint), ("dpop_jkt", request_data.get("dpop_jkt"))):
        if value:
            parameters.add(name, value)
    try:
        authorization.validate(parameters, authorization.NOT_YET_KNOWN, pushed=True)
    except OAuth2Error:
        return None  # e.g. the nonce was used meanwhile: the app starts over in the browser on its own
    request_uri, expires_in = push(client, parameters, now)
    return {"request_uri": request_uri, "expires_in": expires_in}
