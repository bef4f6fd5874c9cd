"""Dynamic client registration: OAuth 2.0 Dynamic Client Registration (RFC 7591), its management protocol (RFC
7592) and OpenID Connect Dynamic Client Registration 1.0.

- ``POST /register`` (RFC 7591 3): client metadata as a JSON object, under its RFC names, mapped onto the settings
  of idp.oidc.registration and checked there, where every client's settings are checked (the command line's, the
  admin API's and the console's). ``IDP_REGISTRATION`` decides who may register: ``closed`` (the default: 404, and
  discovery names no ``registration_endpoint``), ``initial-token`` (RFC 7591 3: a Bearer initial access token that
  an operator issued with ``idp clients initial-token`` or the admin API) or ``open``. Rate-limited per client IP
  (``IDP_RATELIMIT_REGISTRATION``). A dynamically registered client is never first-party and never gets an idp:*
  scope: whoever registers it is a stranger.
- Initial access tokens are 256-bit bearer secrets stored as a SHA-256, with an expiry and optionally a number of
  uses, counted down by one conditional UPDATE in the transaction that stores the client, so of two registrations
  that present the last use at once one succeeds and the other gets ``invalid_token`` (SECURITY.md 32's pattern).
  A registration refused for its metadata uses nothing up.
- The answer (RFC 7591 3.2.1) is the registered metadata with ``client_id``, ``client_id_issued_at``, a confidential
  client's ``client_secret`` (with ``client_secret_expires_at`` 0: it does not expire), and RFC 7592 3's
  ``registration_client_uri`` and ``registration_access_token`` (256 bits, stored as a SHA-256 on the client row).
- ``GET``/``PUT``/``DELETE /register/<client_id>`` (RFC 7592 2), with the registration access token as Bearer: read
  the registration; replace it (checked as at registration; the client secret is kept, the registration access
  token is rotated and the new one is in the answer); delete the client (204; its tokens are revoked). A wrong or
  unknown token, or a client that no longer exists, is 401 ``invalid_token`` (RFC 7592 3, RFC 6750 3.1).

Authlib's ClientRegistrationEndpoint and ClientConfigurationEndpoint are not used: they validate with their own
claims classes apart from idp's one validator, issue a client secret to every client (a public one too) and answer
the metadata as sent rather than as stored, and their refusals of a PUT carry no description. Their error classes
(RFC 7591 3.2.2) and claims classes (through idp.oidc.registration.check_metadata) are.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc7591 import InvalidClientMetadataError, InvalidRedirectURIError
from flask import Blueprint, abort, current_app, jsonify, request
from sqlalchemy import bindparam, or_, update
from werkzeug.wrappers import Response

from idp import audit
from idp.extensions import csrf, db, limiter
from idp.http import external_url
from idp.models import Client, InitialAccessToken, table_of, utcnow
from idp.oidc import registration
from idp.oidc.server import revoke_client
from idp.security.tokens import new_token, same, token_hash

bp = Blueprint("registration", __name__)
csrf.exempt(bp)  # bearer tokens and JSON bodies, never cookies

REALM = "idp-registration"
MAX_TOKEN_TTL = 365 * 86400
MAX_USES = 1_000_000
# RFC 7592 2.2: what a PUT must not carry (the server's, not the client's, to set).
SERVER_FIELDS = ("registration_access_token", "registration_client_uri", "client_secret_expires_at",
                 "client_id_issued_at")
# The client's settings that registration metadata does not reach: an operator's, kept by a PUT.
OPERATOR_SETTINGS = ("mfa", "min_acr", "allow_remembered_device", "access_token_ttl", "refresh_token_ttl",
                     "refresh_tokens_for_sessions")

_tokens = table_of(InitialAccessToken)
# Take one use of a live initial access token; no row back: expired, used up, or taken by a concurrent request.
_TAKE = (update(_tokens)
         .where(_tokens.c.token_hash == bindparam("hash"), _tokens.c.expires_at > bindparam("now"),
                or_(_tokens.c.uses_left.is_(None), _tokens.c.uses_left > 0))
         .values(uses_left=_tokens.c.uses_left - 1, used=_tokens.c.used + 1)
         .returning(_tokens.c.id))


def mode() -> str:
    """closed | initial-token | open (IDP_REGISTRATION)."""
    return current_app.config["IDP_REGISTRATION"]


# --- initial access tokens (RFC 7591 3) -------------------------------------------------------------------------

def issue_initial_token(expires_in: Any, uses: Any, audit_details: dict) -> tuple[str, InitialAccessToken]:
    """A new initial access token (returned once; stored as its SHA-256) valid ``expires_in`` seconds for ``uses``
    registrations (None: any number); audited. Raises ValueError in one line. The caller commits."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 60 <= expires_in <= MAX_TOKEN_TTL:
        raise ValueError(f"expires_in is a number of seconds from 60 to {MAX_TOKEN_TTL} (a year)")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES):
        raise ValueError(f"uses is a number from 1 to {MAX_USES}, or left out for any number")
    token = new_token(32)
    row = InitialAccessToken(token_hash=token_hash(token), expires_at=utcnow() + timedelta(seconds=expires_in),
                             uses_left=uses)
    db.session.add(row)
    db.session.flush()
    audit.record("client.initial_token_issued", initial_token_id=row.id,
                 expires_at=row.expires_at.isoformat(timespec="seconds"), uses=uses, **audit_details)
    return token, row


def _live_initial_token(token: str) -> InitialAccessToken | None:
    now = utcnow()
    row = db.session.execute(db.select(InitialAccessToken).where(
        InitialAccessToken.token_hash == token_hash(token))).scalar_one_or_none()
    if row is None or row.expires_at <= now or (row.uses_left is not None and row.uses_left <= 0):
        return None
    return row


# --- answers ----------------------------------------------------------------------------------------------------

def _no_store(response: Response) -> Response:
    """RFC 7591 3.2.1, RFC 7592 3: answers that carry secrets, or a client's registration, are not cached."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _ascii(text: str) -> str:
    """RFC 6749 5.2: an error_description holds printable ASCII without a double quote or a backslash (a refused
    value may be quoted in it)."""
    text = text.replace('"', "'").replace("\\", "/")
    return "".join(ch if 0x20 <= ord(ch) <= 0x7E else "?" for ch in text)


def _refusal(refused: ValueError) -> OAuth2Error:
    """RFC 7591 3.2.2: invalid_redirect_uri for a redirect URI, invalid_client_metadata for anything else."""
    error_class = (InvalidRedirectURIError if isinstance(refused, registration.RedirectURIError)
                   else InvalidClientMetadataError)
    return error_class(description=_ascii(str(refused)))


def _error(error: OAuth2Error) -> Response:
    db.session.rollback()
    body = {"error": error.error}
    if error.description:
        body["error_description"] = error.description
    response = jsonify(body)
    response.status_code = error.status_code or 400
    return _no_store(response)


def _refused_token(description: str) -> Response:
    """RFC 6750 3.1 (RFC 7591 3, RFC 7592 3): a missing, unknown, expired or used-up bearer token."""
    db.session.rollback()
    response = jsonify({"error": "invalid_token", "error_description": description})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = (f'Bearer realm="{REALM}", error="invalid_token", '
                                            f'error_description="{description}"')
    return _no_store(response)


def _bearer() -> str | None:
    """The bearer token of the Authorization header (RFC 6750 2.1), or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 512:
        return None
    return value


def _bad_text(value: Any) -> bool:
    """Whether the JSON value holds a string no column can store (a NUL, a lone surrogate); walked without
    recursion, since a JSON body may nest as deep as the parser allows."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _metadata() -> dict:
    """The request's JSON object, or InvalidClientMetadataError (RFC 7591 3.1: the metadata is a JSON document)."""
    if request.mimetype != "application/json":
        raise InvalidClientMetadataError(description="Send the client metadata as a JSON object "
                                                     "(Content-Type: application/json).")
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise InvalidClientMetadataError(description="The client metadata is a JSON object.")
    if _bad_text(body):
        raise InvalidClientMetadataError(description="The client metadata holds a NUL or an unpaired surrogate.")
    return body


def _settings(body: dict) -> dict:
    try:
        return registration.settings_from_metadata(body, unnamed="Unnamed client")
    except ValueError as refused:
        raise _refusal(refused) from None


def _answer(client: Client, status: int, **secrets: str | None) -> Response:
    """The registration as RFC 7591 3.2.1 and RFC 7592 3 answer it, with the secrets issued now, if any."""
    body = {**registration.metadata_of(client), **{name: value for name, value in secrets.items() if value},
            "registration_client_uri": external_url("registration.configure", client_id=client.client_id)}
    response = jsonify(body)
    response.status_code = status
    return _no_store(response)


# --- the endpoints ----------------------------------------------------------------------------------------------

def _limit() -> str:
    return current_app.config["IDP_RATELIMIT_REGISTRATION"]


@bp.post("/register")
@limiter.limit(_limit)
def register() -> Response:
    """The client registration endpoint (RFC 7591 3)."""
    if mode() == "closed":
        abort(404)
    initial = None
    if mode() == "initial-token":
        presented = _bearer()
        if presented is None:
            return _refused_token("Registration needs an initial access token (Authorization: Bearer).")
        initial = _live_initial_token(presented)
        if initial is None:
            return _refused_token("The initial access token is unknown, expired or used up.")
    try:
        settings = _settings(_metadata())
        client, secret = registration.create_client(
            **settings, event="client.registered",
            audit_details={"via": "registration", "initial_token_id": initial.id if initial else None})
    except (InvalidClientMetadataError, InvalidRedirectURIError) as refused:
        return _error(refused)
    except ValueError as refused:  # _checked's own rules (registration.py), by the RFC's names
        return _error(_refusal(refused))
    if initial is not None:
        taken = db.session.execute(_TAKE, {"hash": initial.token_hash, "now": utcnow()}).first()
        if taken is None:  # a concurrent registration took its last use first
            return _refused_token("The initial access token is unknown, expired or used up.")
    access_token = new_token(32)
    client.registration_access_token_hash = token_hash(access_token)
    db.session.commit()
    return _answer(client, 201, client_secret=secret, registration_access_token=access_token)


def _managed(client_id: str) -> Client | Response:
    """The client whose registration access token this request presents (RFC 7592 3), or the 401 that refuses it."""
    presented = _bearer()
    if presented is None:
        return _refused_token("Send the registration access token (Authorization: Bearer).")
    client = db.session.execute(db.select(Client).where(Client.client_id == client_id[:64])).scalar_one_or_none()
    if client is None or not same(client.registration_access_token_hash, token_hash(presented)):
        return _refused_token("The registration access token is not valid for this client.")
    return client


@bp.route("/register/<client_id>", methods=["GET", "PUT", "DELETE"])
def configure(client_id: str) -> Response:
    """The client configuration endpoint (RFC 7592 2): read, replace or delete a dynamically registered client."""
    client = _managed(client_id)
    if isinstance(client, Response):
        return client
    if request.method == "GET":
        return _answer(client, 200)
    if request.method == "DELETE":
        revoked = revoke_client(client.client_id, "client_deleted")
        db.session.delete(client)
        audit.record("client.registration_deleted", client_id=client.client_id, tokens_revoked=revoked,
                     via="registration")
        db.session.commit()
        return _no_store(Response(status=204))
    try:
        body = _metadata()
        return _replace(client, body)
    except OAuth2Error as refused:
        return _error(refused)


def _replace(client: Client, body: dict) -> Response:
    """RFC 7592 2.2: the whole registration replaced by the body, checked as at registration."""
    sent = [name for name in SERVER_FIELDS if name in body]
    if sent:
        raise InvalidRequestError(description=f"A PUT may not carry {', '.join(sent)} (RFC 7592 2.2).")
    if body.get("client_id") != client.client_id:
        raise InvalidRequestError(description="client_id must be sent, naming this client (RFC 7592 2.2).")
    if "client_secret" in body and not (isinstance(body["client_secret"], str)
                                        and client.check_client_secret(body["client_secret"])):
        raise InvalidRequestError(description="client_secret does not match the client's (RFC 7592 2.2).")
    settings = _settings(body)
    kept = registration.settings_of(client)
    settings.update({name: kept[name] for name in OPERATOR_SETTINGS})
    try:
        diff = registration.update_client(client, settings, audit_details={"via": "registration"},
                                          event="client.registration_updated")
    except ValueError as refused:
        raise _refusal(refused) from None
    if not diff:
        audit.record("client.registration_updated", client_id=client.client_id, changes={}, jwks_changed=False,
                     via="registration")
    # RFC 7592 2.2 lets the server issue a new registration access token with the answer: each change rotates it,
    # so a token that leaked stops working once its client next changes its registration.
    access_token = new_token(32)
    client.registration_access_token_hash = token_hash(access_token)
    db.session.commit()
    return _answer(client, 200, registration_access_token=access_token)
