"""Token exchange (RFC 8693) for delegation between a client's own services.

A service that received a user's access token (the *subject token*) exchanges it at the token endpoint for one
addressed to another service (the ``audience``), to call it on the user's behalf. The new token is an RFC 9068
access token whose ``sub`` is still the user and whose ``act`` claim names the client that acts (RFC 8693 4.1),
with the actors before it nested when a token that was itself exchanged is exchanged again.

What is accepted (RFC 8693 2.1), and why:

- The client authenticates as a confidential client (a secret or private_key_jwt) and is registered for the grant
  (else ``unauthorized_client``, RFC 6749 5.2).
- ``subject_token`` of type ``urn:ietf:params:oauth:token-type:access_token``: an access token idp issued for a
  user, live (signature, expiry, not revoked: the token row), the user not disabled, and addressed to the
  exchanging client (its ``aud``: the client it was issued to, or the audience it was exchanged for). Another
  client's token proves nothing about the exchanging client's right to act for that user (RFC 8693 5: "the
  authorization server MUST perform the appropriate validation procedures").
- A DPoP-bound subject (or actor) token is accepted only when the exchange request carries a DPoP proof by the key
  it is bound to (RFC 9449 7): presented by anyone else it is the stolen token DPoP guards against.
- ``actor_token`` (optional, with ``actor_token_type`` access_token): an access token of the acting client itself,
  live, checked as the subject token. Without one, the authenticated client is the actor.
- ``audience``: exactly one, the client_id of a registered client that lists the exchanging client in its
  ``token_exchange_actors`` (idp clients create --token-exchange-actor). Anything else is ``invalid_target``
  (RFC 8693 2.2.2), and so is ``resource``: idp registers no resource URIs (name the service in ``audience``).
- ``scope`` no wider than the subject token's (``invalid_scope``); without one, the subject token's. The idp:*
  scopes (idp's own account and admin APIs) never pass to another service.
- ``requested_token_type``, when sent, is access_token.

The answer is an access token with ``issued_token_type`` access_token and no refresh token (RFC 8693 2.2.1); it
lives no longer than the subject token, so no chain of exchanges outlives the user's original grant; it belongs to
the subject token's refresh family and sign-in session, so revoking the grant or ending the session revokes it too.
Every other refusal of a subject or actor token is ``invalid_request``, as RFC 8693 2.2.2 requires ("if either the
subject_token or actor_token are invalid for any reason, or are unacceptable based on policy"). Each exchange is
audited as ``token.exchanged``.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, InvalidScopeError, UnauthorizedClientError
from authlib.oauth2.rfc6749.hooks import hooked

from idp.models import Client, Token, utcnow
from idp.oidc import claims as oidc_claims
from idp.oidc import dpop
from idp.oidc.server import (
    CONFIDENTIAL_AUTH_METHODS,
    TOKEN_EXCHANGE_GRANT_TYPE,
    DPoPClients,
    SignIn,
    access_token_row,
    issued_claims,
    query_client,
)

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # RFC 8693 3
# Parameters said at most once (RFC 6749 3.2: "Request and response parameters MUST NOT be included more than
# once"); `audience` and `resource` may repeat in RFC 8693 2.1, but idp issues a token for one target only.
SINGLE = ("subject_token", "subject_token_type", "actor_token", "actor_token_type", "requested_token_type", "scope")
MAX_TOKEN = 8192  # far above any access token idp signs
MAX_CHAIN = 5  # actors nested in one act claim: a longer chain is refused rather than carried on


class InvalidTargetError(OAuth2Error):
    """RFC 8693 2.2.2: the server will not issue a token for the target named in ``audience`` or ``resource``."""

    error = "invalid_target"


def chain_length(act: Any) -> int:
    """How many actors an act claim names (itself and those nested in it)."""
    length = 0
    while isinstance(act, dict):
        length += 1
        act = act.get("act")
    return length


class TokenExchangeGrant(DPoPClients, grants.BaseGrant, grants.TokenEndpointMixin):
    """``grant_type=urn:ietf:params:oauth:grant-type:token-exchange`` at the token endpoint (RFC 8693 2)."""

    GRANT_TYPE = TOKEN_EXCHANGE_GRANT_TYPE
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS

    sign_in: SignIn
    scope: str

    def validate_token_request(self) -> None:
        client: Client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("This client is not registered for the token exchange grant.")
        self.request.client = client
        data = self.request.payload.datalist
        for name in SINGLE:
            if len(data.get(name, [])) > 1:
                raise InvalidRequestError(f"'{name}' may be sent once.")
        form = {name: values[0] for name, values in data.items() if values}

        if "resource" in data:
            raise InvalidTargetError("idp knows no resource URIs: name the target client in 'audience'.")
        audiences = data.get("audience", [])
        if not audiences:
            raise InvalidRequestError("Name the client the token is for in 'audience'.")
        if len(audiences) > 1:
            raise InvalidTargetError("A token is issued for one audience at a time.")
        target = query_client(audiences[0])
        if target is None or client.client_id not in (target.token_exchange_actors or []):
            raise InvalidTargetError("This client may not exchange tokens for that audience.")

        if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"Only an access token ({ACCESS_TOKEN_TYPE}) is issued.")
        if "subject_token" not in form or "subject_token_type" not in form:
            raise InvalidRequestError("subject_token and subject_token_type are required.")
        if form["subject_token_type"] != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"The subject_token_type must be {ACCESS_TOKEN_TYPE}.")
        now = utcnow()
        subject = self._live_token(form["subject_token"], "subject_token", now)
        user = subject.user
        if user is None:
            raise InvalidRequestError("The subject_token was issued to a client, not on a user's behalf.")
        if user.disabled:
            raise InvalidRequestError("The subject_token's user cannot sign in.")
        if (subject.audience or subject.client_id) != client.client_id:
            raise InvalidRequestError("The subject_token is not addressed to this client.")

        if "actor_token" in form:  # RFC 8693 2.1: actor_token_type is required with it, and only with it
            if form.get("actor_token_type") != ACCESS_TOKEN_TYPE:
                raise InvalidRequestError(f"The actor_token_type must be {ACCESS_TOKEN_TYPE}.")
            actor = self._live_token(form["actor_token"], "actor_token", now)
            if actor.client_id != client.client_id:
                raise InvalidRequestError("The actor_token is not the acting client's.")
        elif "actor_token_type" in form:
            raise InvalidRequestError("actor_token_type is sent only with an actor_token.")

        act: dict[str, Any] = {"sub": client.client_id}  # RFC 8693 4.1: the current actor, earlier ones nested
        if subject.act:
            act["act"] = subject.act
        if chain_length(act) > MAX_CHAIN:
            raise InvalidRequestError(f"A delegation chain is at most {MAX_CHAIN} actors long.")

        available = [s for s in subject.scope.split() if s not in oidc_claims.ADMIN_SCOPES
                     and s != oidc_claims.ACCOUNT_SCOPE]
        requested = form.get("scope")
        if requested is not None and requested.strip():
            wider = [s for s in requested.split() if s not in available]
            if wider:
                raise InvalidScopeError("The scope may not be wider than the subject_token's (and never holds the "
                                        "idp:* scopes).")
            scope = " ".join(dict.fromkeys(requested.split()))
        else:
            scope = " ".join(available)

        self.scope = scope
        # Its lifetime is the client's, cut at the subject token's expiry (idp.oidc.server.AccessTokens).
        self.sign_in = SignIn(user=user, sid=subject.sid, auth_time=subject.auth_time, acr=subject.acr,
                              amr=list(subject.amr or []), claims=subject.claims, family_id=subject.family_id,
                              audience=target.client_id, act=act, expires_at=subject.access_expires_at)
        self.request.user = self.sign_in
        self.request.exchange_details = {"subject_jti": subject.jti, "subject_client_id": subject.client_id}

    def _live_token(self, value: str, name: str, now: datetime) -> Token:
        """The live access token of ours that ``value`` is; when DPoP-bound, only with a proof by its key."""
        row = access_token_row(value) if len(value) <= MAX_TOKEN else None
        if row is None or row.revoked_at is not None or row.access_expires_at <= now:
            raise InvalidRequestError(f"The {name} is not a live access token of this server.")
        if row.dpop_jkt:  # RFC 9449 7: a bound token is used only by the holder of its key
            proof = dpop.presented()
            if proof is None or not hmac.compare_digest(proof.jkt, row.dpop_jkt):
                raise InvalidRequestError(f"The {name} is bound to a DPoP key: send a DPoP proof by that key.")
        return row

    @hooked
    def create_token_response(self):
        token = self.generate_token(user=self.sign_in, scope=self.scope, include_refresh_token=False)
        claims = issued_claims(token["access_token"])
        token["expires_in"] = max(claims["exp"] - claims["iat"], 0)  # what the token itself says (RFC 6749 5.1)
        token["issued_token_type"] = ACCESS_TOKEN_TYPE  # RFC 8693 2.2.1
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER
