"""Authlib binding: the authorization server, its grants and endpoints. Only persistence hooks live here.

Sources: RFC 6749 (grants), RFC 7636 (PKCE, S256 only), RFC 7009 (revocation), RFC 7662 (introspection),
RFC 7523 (private_key_jwt), RFC 9068 (JWT access tokens), RFC 9207 (`iss`), RFC 9700 (BCP), OIDC Core 1.0,
OIDC RP-Initiated Logout 1.0.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Request
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Payload, TokenValidator, grants
from authlib.oauth2.rfc6749.authenticate_client import (
    authenticate_client_secret_basic,
    authenticate_client_secret_post,
    authenticate_none,
)
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InsufficientScopeError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import OpenIDCode as _OpenIDCode
from authlib.oidc.core import OpenIDToken, UserInfoEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import Flask, current_app, g, has_request_context, request
from flask_wtf.csrf import validate_csrf
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import JSON, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import joinedload, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from werkzeug.datastructures import MultiDict
from wtforms import ValidationError

from idp import audit, changes
from idp.changes import Stamp
from idp.extensions import db, limiter, per_app
from idp.jobs import enqueue
from idp.login.assurance import meets
from idp.models import AuthorizationCode, Client, LoginSession, SessionClient, Token, User, table_of, utcnow
from idp.models.oauth import ClientAccessors, TokenAccessors
from idp.models.user import VerifiedAccessors
from idp.oidc import claims as oidc_claims
from idp.oidc import dpop, keys
from idp.oidc.policy import oversized_parameter
from idp.security.fetch import FetchFailed, bounded_get
from idp.security.tokens import new_token, token_hash

ALL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
# RFC 8693 2.1: token exchange (idp.oidc.exchange).
TOKEN_EXCHANGE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials", DEVICE_CODE_GRANT_TYPE,
               TOKEN_EXCHANGE_GRANT_TYPE]
# The grants whose tokens come from a user's sign-in at one of our pages (a code, or a device code the user approved):
# they get a refresh token on the same terms (OIDC Core 11, AccessTokens._refresh_token).
SIGN_IN_GRANTS = ("authorization_code", DEVICE_CODE_GRANT_TYPE)


@dataclass
class Approval:
    """What the authorization endpoint hands Authlib as the grant's user once every policy check passed: the user,
    the sign-in session the code is issued from, and the `claims` parameter (OIDC Core 5.5)."""

    user: User
    session: LoginSession
    claims_request: dict[str, Any] | None = None


def _rowcount(result: Any) -> int:
    """How many rows an UPDATE changed (SQLAlchemy returns a CursorResult for DML)."""
    return int(result.rowcount)


def issuer() -> str:
    """The issuer identifier (OIDC Discovery 4.3: exactly as in discovery and every token)."""
    return current_app.config["IDP_ISSUER"]


def query_client(client_id: str) -> Client | None:
    """The registered client with this id (read once per request, and kept by the worker while no change to the
    clients is notified: _KeptClients), or None for an id no client can have (``_possible_client_id``)."""
    if not _possible_client_id(client_id):
        return None
    return _once_per_request("idp.clients", client_id, lambda: _kept_clients().get(client_id))


def _possible_client_id(client_id: Any) -> bool:
    """Whether a client could have this id: a string, not empty, at most 64 characters (the column), without a NUL,
    which PostgreSQL text cannot hold (a private_key_jwt assertion's ``sub`` or a decoded Basic header can carry
    one past the request's own check)."""
    return isinstance(client_id, str) and 0 < len(client_id) <= 64 and "\x00" not in client_id


def client_view(client_id: str) -> Client | ClientView | None:
    """The registered client with this id, for a request that only reads it (a token's client at userinfo and
    introspection; the client authenticating at the token and introspection endpoints): the worker's kept view of
    it, shared and unchangeable, as fresh as ``query_client``'s (the same change stamp), without copying it into the
    request's session. Where none is kept (SQLite, no listener, not read yet, or changed since), the row itself."""
    if not _possible_client_id(client_id):
        return None
    # Once per request, so a request sees one kind of client throughout (the model on a worker's first read).
    return _once_per_request("idp.client_views", client_id,
                             lambda: _kept_clients().view(client_id) or query_client(client_id))


class ClientView(ClientAccessors):
    """A client's columns as a worker keeps them, handed to the requests that only read a client (``client_view``):
    merging a kept copy into each request's session cost a twelfth of a userinfo request (bench/README.md, twelfth
    pass). Read-only and shared by the worker's requests: no attribute can be set, its JSON lists are tuples, and
    its JWK Set (the one JSON object) is a copy of its own at each read."""

    __slots__ = tuple("_jwks" if attr.key == "jwks" else attr.key for attr in Client.__mapper__.column_attrs)
    _jwks: dict[str, Any] | None

    if TYPE_CHECKING:  # the client's columns, set from __slots__ at run time: a type checker sees them as Any
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, row: Client) -> None:
        for name in self.__slots__:
            value = getattr(row, name.lstrip("_"))
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else _own(value))

    @property
    def jwks(self) -> dict[str, Any] | None:  # type: ignore[override]  # (a column on the model)
        return _own(self._jwks)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a kept client is read-only ({name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a kept client is read-only ({name})")


class _KeptClients:
    """The clients one worker has read (per app: tests build many), each with the change stamp taken before it was
    read (idp.changes): a deleted client, a rotated secret or any changed setting is read again from the first
    request after its notification, and while the listener cannot be trusted (SQLite; not connected) every request
    reads the row, as before. Each request gets its own copy, in its own session (``merge`` without a query), so
    no request sees another's changes to it, and it lazy-loads nothing. A client_id that is no client is not kept
    (a stranger could fill the memory with them); at most LIMIT clients are."""

    LIMIT = 10000

    def __init__(self) -> None:
        # client_id -> (stamp, detached copy, identity key, read-only view)
        self.rows: dict[str, tuple[Stamp, Client, Any, ClientView]] = {}

    def get(self, client_id: str) -> Client | None:
        stamp = changes.stamp(CLIENTS)
        if stamp is not None:
            kept = self.rows.get(client_id)
            if kept is not None and kept[0] == stamp:
                return _attached(kept[1], kept[2])
        session = db.session()
        # A client the session already held is returned as the session holds it, which may predate the stamp: it is
        # used for this request but not kept (review finding).
        held = {key for key in session.identity_map.keys() if key[0] is Client} if stamp is not None else set()
        row = session.execute(_CLIENT, {"client_id": client_id}).scalar_one_or_none()
        # Only what is committed is kept: not a row this request changed (flushed or not).
        if stamp is None or row is None or changes.uncommitted(session, CLIENTS) or row in session.dirty or \
                identity_key(Client, row.id) in held:
            self.rows.pop(client_id, None)
            return row
        if len(self.rows) >= self.LIMIT:
            self.rows = {key: kept for key, kept in self.rows.items() if kept[0] == stamp}
            if len(self.rows) >= self.LIMIT:
                self.rows.clear()
        copy = Client(**{name: _own(getattr(row, name)) for name in _CLIENT_COLUMNS})
        make_transient_to_detached(copy)
        self.rows[client_id] = (stamp, copy, identity_key(Client, row.id), ClientView(row))
        return row

    def view(self, client_id: str) -> ClientView | None:
        """The kept view of this client if it is as fresh as ``get`` would take it, else None: also when the
        request's session holds the client (loaded, and maybe changed, in this request), which ``get`` returns."""
        stamp = changes.stamp(CLIENTS)
        kept = self.rows.get(client_id) if stamp is not None else None
        if kept is None or kept[0] != stamp or kept[2] in db.session().identity_map:
            return None
        return kept[3]


CLIENTS = "clients"  # the table's name, as its change notifications carry it (idp.changes)
_CLIENT_COLUMNS = tuple(attr.key for attr in Client.__mapper__.column_attrs)
_JSON_COLUMNS = tuple(attr.key for attr in Client.__mapper__.column_attrs
                      if any(isinstance(column.type, JSON) for column in attr.columns))


def _own(value: Any) -> Any:
    """A copy of a JSON column's value that shares no list or dict with the original."""
    if isinstance(value, list):
        return [_own(item) for item in value]
    if isinstance(value, dict):
        return {key: _own(item) for key, item in value.items()}
    return value


def _attached(copy: Client, key: Any) -> Client:
    """A kept client as this request's: the one its session already holds, else a copy merged in (no query)."""
    session = db.session()
    held = session.identity_map.get(key)
    if held is not None:
        return held
    client = session.merge(copy, load=False)
    for name in _JSON_COLUMNS:  # the merged copy's lists are the kept one's: its own, in case it changes them
        set_committed_value(client, name, _own(getattr(copy, name)))
    return client


def _kept_clients() -> _KeptClients:
    return per_app("idp.kept_clients", _KeptClients)


def _once_per_request(kind: str, key, compute):
    """``compute()`` once per request and key (Authlib validates an authorization request twice); outside a
    request, every time."""
    if not has_request_context():
        return compute()
    known = request.environ.setdefault(kind, {})
    if key not in known:
        known[key] = compute()
    return known[key]


# The statements of the token, userinfo and introspection paths, built once: building and keying a statement on
# every request cost more Python than running it (bench/README.md, seventh pass). Values go in as bound parameters.
_CLIENT = select(Client).where(Client.client_id == bindparam("client_id"))
_APPEND_TOKEN = insert(table_of(Token))
_APPEND_CODE = insert(table_of(AuthorizationCode))
_TOOK_PART = {name: dialect.insert(table_of(SessionClient)).on_conflict_do_nothing()
              for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))}


def store_code(**values: Any) -> None:
    """Store an authorization code (its hash, and what it was issued for) in the caller's transaction, and note that
    its client took part in its sign-in session (once per session and client, also when two codes are issued at
    the same moment): idp.oidc.logout tells exactly those clients when the session ends. Prepared INSERTs rather
    than an ORM object: nothing reads the row back in the request that issues it."""
    connection = db.session.connection()
    connection.execute(_APPEND_CODE, values)
    if values.get("sid"):
        connection.execute(_TOOK_PART[connection.dialect.name],
                           {"sid": values["sid"], "client_id": values["client_id"], "created_at": utcnow()})
_TOKEN_BY_JTI = select(Token).where(Token.jti == bindparam("jti")).options(joinedload(Token.user),
                                                                          joinedload(Token.client))
_TOKEN_BY_REFRESH = select(Token).where(Token.refresh_token_hash == bindparam("hash")).options(joinedload(Token.user))
# The refresh grant also needs the sign-in session an online token lives with: read with the token, one round trip.
_REFRESH_WITH_SESSION = (select(Token, LoginSession).outerjoin(LoginSession, LoginSession.sid == Token.sid)
                         .where(Token.refresh_token_hash == bindparam("hash")).options(joinedload(Token.user)))
_CLAIM_REFRESH = (update(Token).where(Token.id == bindparam("row_id"), Token.rotated_at.is_(None))
                  .values(rotated_at=bindparam("now")).execution_options(synchronize_session=False))
_CODE = (select(AuthorizationCode).where(AuthorizationCode.code_hash == bindparam("hash"),
                                         AuthorizationCode.client_id == bindparam("client_id"))
         .options(joinedload(AuthorizationCode.user)))
_CLAIM_CODE = (update(AuthorizationCode).where(AuthorizationCode.id == bindparam("row_id"),
                                               AuthorizationCode.used_at.is_(None))
               .values(used_at=bindparam("now")).execution_options(synchronize_session=False))
_NONCE_USED = select(AuthorizationCode.id).where(AuthorizationCode.client_id == bindparam("client_id"),
                                                 AuthorizationCode.nonce == bindparam("nonce")).limit(1)


# --- tokens ------------------------------------------------------------------------------------------------------

@dataclass
class SignIn:
    """The sign-in a grant redeems, handed to Authlib as the grant's user: who, and how and when they signed in
    (carried by the authorization code, then by each refresh token of its family)."""

    user: User
    sid: str | None = None
    auth_time: datetime | None = None
    acr: str = ""
    amr: list[str] = field(default_factory=list)
    claims: dict[str, Any] | None = None  # the `claims` request parameter (OIDC Core 5.5)
    code_id: int | None = None
    family_id: str = field(default_factory=lambda: new_token(16))
    family_expires_at: datetime | None = None
    # An exchanged token's (idp.oidc.exchange): the client it is addressed to and its act claim (RFC 8693 4.1).
    audience: str | None = None
    act: dict[str, Any] | None = None
    # The latest its access token may live: an exchanged token's subject token's expiry (SECURITY.md 45).
    expires_at: datetime | None = None

    def get_user_id(self) -> str:
        """The `sub` of the access token (Authlib's UserMixin)."""
        return self.user.subject

    @classmethod
    def from_code(cls, code: AuthorizationCode) -> SignIn:
        return cls(user=code.user, sid=code.sid, auth_time=code.auth_time, acr=code.acr, amr=list(code.amr),
                   claims=code.claims, code_id=code.id)

    @classmethod
    def from_refresh(cls, row: Token) -> SignIn:
        assert row.user is not None  # a refresh token is always a user's
        return cls(user=row.user, sid=row.sid, auth_time=row.auth_time, acr=row.acr, amr=list(row.amr),
                   claims=row.claims, code_id=row.authorization_code_id, family_id=row.family_id,
                   family_expires_at=row.family_expires_at)


class AccessTokens(JWTBearerTokenGenerator):
    """RFC 9068 JWT access tokens (Authlib's generator: typ at+jwt, client_id, scope, jti) signed by our newest key,
    with the sign-in's auth_time, acr, amr and sid; and, where allowed, an opaque rotating refresh token."""

    def __init__(self, issuer_id: str):
        super().__init__(issuer=issuer_id, alg="RS256", refresh_token_generator=self._refresh_token,
                         expires_generator=self._expires_in)

    def get_jwks(self) -> KeySet:
        return keys.signing_keyset()

    def get_auth_time(self, user: SignIn | None) -> int | None:
        return int(user.auth_time.timestamp()) if user is not None and user.auth_time is not None else None

    def get_acr(self, user: SignIn | None) -> str | None:
        return user.acr or None if user is not None else None

    def get_amr(self, user: SignIn | None) -> list[str] | None:
        return list(user.amr) or None if user is not None else None

    def get_extra_claims(self, client: Client, grant_type: str, user: SignIn | None, scope: str) -> dict[str, Any]:
        extra: dict[str, Any] = {"sid": user.sid} if user is not None and user.sid else {}
        if user is not None and user.audience is not None:  # RFC 8693 2.1, 4.1: an exchanged token
            extra["aud"] = user.audience
            extra["act"] = user.act
        if user is not None and user.expires_at is not None:
            # Authlib's generator dates the token now + the client's lifetime whatever expires_in the grant passes
            # (that only goes into the answer): here its iat and exp are set as a pair, exp never after the bound.
            now = int(time.time())
            extra["iat"] = now
            extra["exp"] = min(now + self._expires_in(client, grant_type), int(user.expires_at.timestamp()))
        proof = dpop.presented()
        if proof is not None:  # RFC 9449 6.1: bound to the key of the token request's proof
            extra["cnf"] = {"jkt": proof.jkt}
        return extra

    @staticmethod
    def _expires_in(client: Client, grant_type: str) -> int:
        return client.access_token_ttl or current_app.config["IDP_ACCESS_TOKEN_TTL"]

    @staticmethod
    def _refresh_token(client: Client, grant_type: str, user: SignIn | None, scope: str) -> str | None:
        """A refresh token for offline use only when offline_access was granted (OIDC Core 11); for the online
        session only to a client registered for that; and a new one at every rotation (RFC 9700 4.14.2)."""
        if user is None or not client.check_grant_type("refresh_token") or user.audience is not None:
            return None  # (RFC 8693 2.2.1: an exchanged token comes without one)
        if grant_type in SIGN_IN_GRANTS and not (offline(scope) or client.refresh_tokens_for_sessions):
            return None
        return new_token(32)

    def generate(self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):
        token = super().generate(grant_type, client, user, scope, expires_in, include_refresh_token)
        if token.get("refresh_token") is None:
            token.pop("refresh_token", None)
        if dpop.presented() is not None:
            token["token_type"] = "DPoP"  # RFC 9449 5: a DPoP-bound access token
        token.setdefault("scope", "")  # always said, even when empty
        return token


def offline(scope: str | None) -> bool:
    """Whether a grant's scope includes offline_access: its refresh tokens outlive the sign-in session."""
    return "offline_access" in (scope or "").split()


def revoke_online(sid: str, reason: str) -> int:
    """Revoke the tokens of one sign-in session that were not granted offline_access (the session ended)."""
    return _revoke_where((Token.sid == sid) & ~Token.scope.contains("offline_access"), reason)


def issued_claims(access_token: str) -> dict[str, Any]:
    """The claims of an access token this request has just signed (read back, not verified: it is ours, made a
    moment ago in this process, and never came from outside)."""
    payload = access_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def save_token(token: dict[str, Any], request) -> None:
    """Persist what was issued: the jti, the refresh token's hash, and the sign-in it came from."""
    cfg = current_app.config
    claims = issued_claims(token["access_token"])
    sign_in: SignIn | None = request.user
    client = request.client
    now = datetime.fromtimestamp(claims["iat"], UTC)
    refresh = token.get("refresh_token")
    family_expires = (sign_in.family_expires_at if sign_in is not None else None) or \
        now + timedelta(seconds=cfg["IDP_REFRESH_TOKEN_MAX_AGE"])
    idle = client.refresh_token_ttl or cfg["IDP_REFRESH_TOKEN_TTL"]
    scope = token.get("scope", "")
    user = sign_in.user if sign_in is not None else None
    proof = dpop.presented()  # RFC 9449 6: the key its access token (and a public client's refresh token) is bound to
    # One prepared INSERT rather than an ORM object: nothing reads the row back in this request.
    db.session.connection().execute(_APPEND_TOKEN, {
        "jti": claims["jti"], "client_id": client.client_id, "user_id": user.id if user is not None else None,
        "scope": scope, "grant_type": request.payload.grant_type,
        "family_id": sign_in.family_id if sign_in is not None else new_token(16),
        "authorization_code_id": sign_in.code_id if sign_in is not None else None,
        "sid": sign_in.sid if sign_in is not None else None,
        "auth_time": sign_in.auth_time if sign_in is not None else None,
        "acr": sign_in.acr if sign_in is not None else "", "amr": sign_in.amr if sign_in is not None else [],
        "claims": sign_in.claims if sign_in is not None else None,
        "issued_at": now, "access_expires_at": datetime.fromtimestamp(claims["exp"], UTC),
        "refresh_token_hash": token_hash(refresh) if refresh else None,
        "refresh_expires_at": min(now + timedelta(seconds=idle), family_expires) if refresh else None,
        "family_expires_at": family_expires if refresh else None,
        "dpop_jkt": proof.jkt if proof is not None else None,
        "audience": sign_in.audience if sign_in is not None else None,
        "act": sign_in.act if sign_in is not None else None,
    })
    grant_type = request.payload.grant_type
    if grant_type == TOKEN_EXCHANGE_GRANT_TYPE:
        assert sign_in is not None  # an exchange is always on a user's behalf (idp.oidc.exchange)
        audit.record("token.exchanged", subject=user, client_id=client.client_id, audience=sign_in.audience,
                     act=sign_in.act, jti=claims["jti"], scope=scope, dpop=proof is not None,
                     **getattr(request, "exchange_details", {}))
    else:
        event = "token.refreshed" if grant_type == "refresh_token" else "token.issued"
        audit.record(event, subject=user, client_id=client.client_id, grant_type=grant_type,
                     jti=claims["jti"], scope=scope, with_refresh_token=bool(refresh), dpop=proof is not None)
    db.session.commit()


def _revoke_where(condition, reason: str) -> int:
    now = utcnow()
    count = 0
    for row in db.session.execute(db.select(Token).where(condition, Token.revoked_at.is_(None))).scalars():
        row.revoked_at = now
        row.revoked_reason = reason
        count += 1
    return count


def revoke_family(family_id: str, reason: str) -> int:
    """Revoke every token of one grant (all rotations of a refresh token and their access tokens)."""
    return _revoke_where(Token.family_id == family_id, reason)


def revoke_for_client(user, client_id: str, reason: str) -> int:
    """Revoke every live token a client holds for a user (the user withdrew consent)."""
    return _revoke_where((Token.user_id == user.id) & (Token.client_id == client_id), reason)


def revoke_client(client_id: str, reason: str) -> int:
    """Revoke every live token of a client, for every user (the client is deleted)."""
    return _revoke_where(Token.client_id == client_id, reason)


def _reuse_detected(event: str, reason: str, user, client_id: str, family_id: str | None) -> None:
    """A code or refresh token was presented again: revoke what its first use issued, audit, commit (RFC 9700)."""
    count = revoke_family(family_id, reason) if family_id is not None else 0
    audit.record(event, subject=user, client_id=client_id, tokens_revoked=count)
    if count and user is not None and user.email_verified:  # the first detection (later ones revoke nothing)
        client = db.session.execute(db.select(Client.name).where(Client.client_id == client_id)).scalar()
        enqueue("send_mail", to=user.email, template="token_stolen", context={"name": user.name,
                                                                            "client": client or client_id},
                **({"language": user.locale} if user.locale else {}))
    db.session.commit()  # the revocation, its audit row and the mail (sent once this has committed)


def revoke_for_user(user, reason: str) -> int:
    """Revoke every live token of a user (sign-out everywhere, password reset, disable, factor reset)."""
    return _revoke_where(Token.user_id == user.id, reason)


def _verified_jti(token_string: str) -> str | None:
    """The jti of a JWT access token of ours (signature, typ, iss and exp checked), else None."""
    if not token_string or token_string.count(".") != 2:
        return None
    try:
        decoded = jwt.decode(token_string, keys.keyset_for_token(token_string), algorithms=["RS256", "ES256"])
    except (JoseError, ValueError):
        return None
    if decoded.header.get("typ") != "at+jwt" or decoded.claims.get("iss") != issuer():
        return None
    if int(decoded.claims.get("exp", 0)) <= int(utcnow().timestamp()):
        return None
    jti = decoded.claims.get("jti")
    return jti if isinstance(jti, str) else None


def access_token_row(token_string: str) -> Token | None:
    """The stored token behind a JWT access token of ours, as a model to act on (revocation, the admin and
    account APIs, token exchange), else None."""
    jti = _verified_jti(token_string)
    return db.session.execute(_TOKEN_BY_JTI, {"jti": jti}).scalar_one_or_none() if jti is not None else None


@dataclass(frozen=True, slots=True)
class UserView(VerifiedAccessors):
    """The columns of a user that its claims are made of (idp.oidc.claims), read with a token."""

    subject: str
    email: str
    email_verified_at: datetime | None
    name: str
    locale: str | None
    phone: str | None
    phone_verified_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TokenView(TokenAccessors):
    """A token row and its user's claim columns, read by one Core statement for the endpoints that only answer
    about a token (userinfo, introspection): loading them as models (identity map, instance state, the joined
    client) cost more than the statement itself, an eighth of a userinfo request and a sixth of an introspection
    (bench/README.md, eleventh pass).
    Authlib's TokenMixin, as the model has it (TokenAccessors); the client comes from the worker's kept clients."""

    user: UserView | None
    jti: str
    client_id: str
    scope: str
    claims: dict[str, Any] | None
    issued_at: datetime
    access_expires_at: datetime
    refresh_expires_at: datetime | None
    rotated_at: datetime | None
    revoked_at: datetime | None
    dpop_jkt: str | None
    audience: str | None
    act: dict[str, Any] | None

    @property
    def client(self) -> Client | ClientView | None:
        return client_view(self.client_id)


_TOKEN_VIEW_COLUMNS = [f.name for f in fields(TokenView) if f.name != "user"]
_USER_VIEW_COLUMNS = [f.name for f in fields(UserView)]
_tokens, _users = table_of(Token), table_of(User)
_TOKEN_VIEW = (select(*(_tokens.c[name] for name in _TOKEN_VIEW_COLUMNS),
                      *(_users.c[name] for name in _USER_VIEW_COLUMNS))
               .select_from(_tokens.outerjoin(_users, _users.c.id == _tokens.c.user_id)))
_TOKEN_VIEW_BY_JTI = _TOKEN_VIEW.where(_tokens.c.jti == bindparam("jti"))
_TOKEN_VIEW_BY_REFRESH = _TOKEN_VIEW.where(_tokens.c.refresh_token_hash == bindparam("hash"))


def _token_view(statement, parameters: dict[str, str]) -> TokenView | None:
    row = db.session.connection().execute(statement, parameters).one_or_none()
    if row is None:
        return None
    split = len(_TOKEN_VIEW_COLUMNS)
    user = UserView(*row[split:]) if row[split] is not None else None
    view = TokenView(user, *row[:split])
    # No token outlives its client: one deleted since the token was read (its tokens revoked in the same
    # transaction, read here in another snapshot) or deleted without its tokens revoked leaves no token.
    return view if view.client is not None else None


def access_token_view(token_string: str) -> TokenView | None:
    """The stored token behind a JWT access token of ours, read only (userinfo, introspection), else None."""
    jti = _verified_jti(token_string)
    return _token_view(_TOKEN_VIEW_BY_JTI, {"jti": jti}) if jti is not None else None


def refresh_token_view(token_string: str) -> TokenView | None:
    """The stored token whose refresh token this is, read only (introspection), else None."""
    key = _refresh_key(token_string)
    return _token_view(_TOKEN_VIEW_BY_REFRESH, key) if key is not None else None


def _refresh_key(token_string: str) -> dict[str, str] | None:
    """The parameters that find a refresh token's row (its hash), or None for a string that cannot be ours."""
    if not token_string or len(token_string) > 512:
        return None
    return {"hash": token_hash(token_string)}


def _by_refresh_token(statement, token_string: str) -> Any:
    """The row ``statement`` finds for this refresh token, or None."""
    key = _refresh_key(token_string)
    return db.session.execute(statement, key).one_or_none() if key is not None else None


def refresh_token_row(token_string: str) -> Token | None:
    """The stored token whose refresh token this is."""
    found = _by_refresh_token(_TOKEN_BY_REFRESH, token_string)
    return found[0] if found is not None else None


def _refresh_token_and_session(token_string: str) -> tuple[Token | None, LoginSession | None]:
    """The stored token whose refresh token this is, and the sign-in session it was issued in (None: none, or
    ended and deleted)."""
    found = _by_refresh_token(_REFRESH_WITH_SESSION, token_string)
    return (found[0], found[1]) if found is not None else (None, None)


# --- grants ------------------------------------------------------------------------------------------------------

class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only; required for public clients (RFC 9700 2.1.1, SECURITY.md 4)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if grant.request.client.public and not data.get("code_challenge"):
            raise InvalidRequestError("Public clients must send a PKCE code_challenge (S256).",
                                      redirect_uri=redirect_uri, state=grant.request.payload.state)
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.", redirect_uri=redirect_uri,
                                      state=grant.request.payload.state)
        return super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant, result):
        """A missing, malformed or unexpected verifier means the code cannot be redeemed: invalid_grant."""
        try:
            return super().validate_code_verifier(grant, result)
        except InvalidRequestError as error:
            raise InvalidGrantError(error.description) from None


class ParameterLimits:
    """Refuse an over-long authorization request parameter with invalid_request, once the client and redirect URI
    are known good (so it is a redirect, RFC 6749 4.1.2.1) and before the request is acted on (the limits and why:
    idp.oidc.policy.PARAMETER_LIMITS)."""

    def __call__(self, grant) -> None:
        grant.register_hook("before_validate_authorization_request_payload", self.validate)

    def validate(self, grant, redirect_uri) -> None:
        name = oversized_parameter(grant.request.payload.datalist)
        if name is not None:
            raise InvalidRequestError(f"'{name}' is too long.", redirect_uri=redirect_uri)


class DPoPClients:
    """A grant's client authentication, then RFC 9449 5.2: a client registered with dpop_bound_access_tokens must
    send a proof with every token request."""

    def authenticate_token_endpoint_client(self):
        client = super().authenticate_token_endpoint_client()  # type: ignore[misc]
        if client.dpop_bound_access_tokens and dpop.presented() is None:
            raise dpop.DPoPError("This client must send a DPoP proof with every token request (RFC 9449 5.2).")
        return client


class AuthorizationCodeGrant(DPoPClients, grants.AuthorizationCodeGrant):
    """The code grant: codes stored hashed, single use, short-lived; reuse revokes what the first use issued."""

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    def save_authorization_code(self, code: str, request) -> None:
        approval: Approval = request.user  # what the authorization endpoint handed over as the grant's user
        live = approval.session
        now = utcnow()
        data = request.payload.data
        # Admin scopes (first-party clients only, idp.oidc.registration) for the roles the user holds, after a
        # sign-in as strong as the console's.
        scope = request.scope or ""
        if set(scope.split()) & set(oidc_claims.ADMIN_SCOPES):  # (the roles are read only then)
            scope = oidc_claims.grantable_scope(scope, approval.user.roles_at(now),
                                                meets(live.acr, current_app.config["IDP_ADMIN_ACR"]))
        store_code(
            code_hash=token_hash(code), client_id=request.client.client_id, user_id=approval.user.id,
            redirect_uri=request.payload.redirect_uri or "", scope=scope, nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"), code_challenge_method=data.get("code_challenge_method"),
            claims=approval.claims_request, sid=live.sid, auth_time=live.auth_time, acr=live.acr,
            amr=list(live.amr), issued_at=now, dpop_jkt=data.get("dpop_jkt"),  # RFC 9449 10
            expires_at=now + timedelta(seconds=current_app.config["IDP_AUTH_CODE_TTL"]),
        )
        db.session.commit()

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        row = db.session.execute(_CODE, {"hash": token_hash(code or ""), "client_id": client.client_id}
                                 ).scalar_one_or_none()
        if row is None:
            return None
        _bound_key_proved(row.dpop_jkt, "The code is bound to a DPoP key (dpop_jkt): send a proof by that key.")
        now = utcnow()
        # Claim the code atomically: of concurrent redemptions only one wins (RFC 6749 4.1.2). The claim commits
        # with the tokens it issues (save_token), so the row stays locked until they exist: a redemption racing
        # this one waits here, finds the code used and the tokens committed, and revokes them. When the exchange
        # fails after the claim, the token view commits the claim alone: a failed code is still a used one.
        claimed = _rowcount(db.session.execute(_CLAIM_CODE, {"row_id": row.id, "now": now}))
        if claimed != 1:
            # RFC 6749 4.1.2 / RFC 9700 4.5: a second use revokes every token issued from the first.
            family = db.session.execute(
                db.select(Token.family_id).where(Token.authorization_code_id == row.id).limit(1)).scalar()
            _reuse_detected("code.reuse_detected", "code_reuse", row.user, client.client_id, family)
            return None
        self.claimed_code = True
        if row.expires_at <= now:
            return None
        return row

    claimed_code = False  # this request's grant claimed a code (set by query_authorization_code)

    def validate_token_request(self) -> None:
        with self._claim_kept_on_failure():
            super().validate_token_request()

    def create_token_response(self):
        with self._claim_kept_on_failure():
            return super().create_token_response()

    @contextmanager
    def _claim_kept_on_failure(self) -> Iterator[None]:
        """A code claimed by an exchange that then fails (redirect_uri, PKCE, a disabled user) is a used code all
        the same (RFC 6749 4.1.2): the claim is committed before the error answers."""
        try:
            yield
        except OAuth2Error:
            if self.claimed_code:
                db.session.commit()
            raise

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: the code was marked used when it was claimed (kept to detect reuse)."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> SignIn | None:
        """The sign-in the code carries (the tokens and the ID token are made from it)."""
        user = authorization_code.user
        if user is None or user.disabled:
            return None
        return SignIn.from_code(authorization_code)


class _IDTokens:
    """How idp signs an ID token, whichever grant issues it: our newest key for the client's algorithm (`kid` in
    the header), `iss`, `aud` and a fresh `iat`/`exp`, the scope's claims, and the sign-in's `auth_time`, `acr`,
    `amr` and `sid` of what the grant redeems (an authorization code, a device code the user approved:
    idp.oidc.device, or a refresh family's sign-in), read as ``request.authorization_code`` (Authlib's OpenIDToken
    does the encoding and `at_hash`)."""

    def resolve_client_private_key(self, client: Client) -> KeySet:
        return keys.signing_keyset()

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(utcnow().timestamp())
        return {"iss": issuer(), "aud": [client.client_id], "iat": now,
                "exp": now + current_app.config["IDP_ID_TOKEN_TTL"]}

    def get_client_algorithm(self, client: Client) -> str:
        return client.id_token_signed_response_alg or "RS256"

    def generate_user_info(self, user: SignIn, scope: str):
        requested = user.claims or {}
        return oidc_claims.user_info(user.user, scope, requested.get("id_token"))

    def get_authorization_code_claims(self, authorization_code) -> dict[str, Any]:
        result = super().get_authorization_code_claims(authorization_code)  # type: ignore[misc]
        result["auth_time"] = authorization_code.get_auth_time()  # always present (SECURITY.md 12)
        if authorization_code.sid:
            result["sid"] = authorization_code.sid
        return result


class OpenIDCode(_IDTokens, _OpenIDCode):
    """ID tokens (OIDC Core 3.1.3.6) of the code grant, and its nonce replay check."""

    def exists_nonce(self, nonce: str, request) -> bool:
        return _once_per_request("idp.nonces", (request.payload.client_id, nonce), lambda: db.session.execute(
            _NONCE_USED, {"client_id": request.payload.client_id, "nonce": nonce}).first() is not None)


@dataclass
class _OriginalSignIn:
    """A refresh token family's sign-in, read as Authlib reads an authorization code's claims: the original
    `auth_time`, `acr`, `amr` and `sid`, and no `nonce` (a refresh is not an authentication request; OIDC Core
    12.2 as amended by errata set 2 after issue 1025: the nonce SHOULD NOT be in a refreshed ID token)."""

    sign_in: SignIn

    @property
    def sid(self) -> str | None:
        return self.sign_in.sid

    def get_nonce(self) -> None:
        return None

    def get_auth_time(self) -> int | None:
        auth_time = self.sign_in.auth_time
        return int(auth_time.timestamp()) if auth_time is not None else None

    def get_acr(self) -> str | None:
        return self.sign_in.acr or None

    def get_amr(self) -> list[str] | None:
        return list(self.sign_in.amr) or None


class RefreshIDToken(_IDTokens, OpenIDToken):
    """OIDC Core 12.2: a refresh of a grant that had `openid` answers with a new ID token: the same `iss`, `sub`
    and `aud`, a new `iat` and `exp`, `at_hash` of the new access token, and `auth_time`, `acr`, `amr` and `sid` of
    the family's sign-in (not of now: the user did not authenticate again)."""

    def encode_id_token(self, token, request):
        request.authorization_code = _OriginalSignIn(request.user)
        return super().encode_id_token(token, request)

    def get_authorization_code_claims(self, authorization_code) -> dict[str, Any]:
        result = super().get_authorization_code_claims(authorization_code)
        if result.get("auth_time") is None:  # no sign-in time known: none said, rather than "now"
            result.pop("auth_time", None)
        return result

    def get_compatible_claims(self, request) -> dict[str, Any]:
        claims = super().get_compatible_claims(request)
        claims.pop("auth_time", None)  # Authlib's default is "now": only the original one may be said
        return claims


class DeviceIDToken(_IDTokens, OpenIDToken):
    """ID tokens of the device grant (idp.oidc.device), when the approved scope holds openid."""


def _session_live(session: LoginSession | None, now: datetime) -> bool:
    """Whether a sign-in session is still live (not ended, within its idle and absolute timeouts)."""
    if session is None or session.ended_at is not None:
        return False
    cfg = current_app.config
    return session.timed_out(now, idle_timeout=cfg["IDP_SESSION_IDLE_TIMEOUT"],
                             max_age=cfg["IDP_SESSION_MAX_AGE"]) is None


def _bound_key_proved(jkt: str | None, description: str) -> None:
    """Before a code or refresh token is claimed: when it is bound to a DPoP key, this request's proof must be by
    that key (RFC 9449 5 and 10), or it is refused and stays unused (a thief without the key cannot use it up)."""
    if jkt is None:
        return
    proof = dpop.presented()
    if proof is None or not hmac.compare_digest(proof.jkt, jkt):
        raise dpop.DPoPError(description)


class RefreshTokenGrant(DPoPClients, grants.RefreshTokenGrant):
    """Rotation on every use; presenting a rotated token revokes the whole family (RFC 9700 4.14.2)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        row, session = _refresh_token_and_session(refresh_token)
        client = self.request.client
        if row is None or row.client_id != client.client_id:
            return None
        now = utcnow()
        if row.rotated_at is not None:
            _reuse_detected("refresh.reuse_detected", "refresh_reuse", row.user, row.client_id, row.family_id)
            return None
        if row.revoked_at is not None or row.refresh_expires_at is None or row.refresh_expires_at <= now:
            return None
        if row.family_expires_at is not None and row.family_expires_at <= now:  # absolute expiry
            return None
        if row.user is None or row.user.disabled:
            return None
        if not offline(row.scope) and not _session_live(session, now):  # an online token ends with its session
            return None
        if client.public:  # RFC 9449 5: a public client's refresh token is bound to its key, not a confidential's
            _bound_key_proved(row.dpop_jkt, "The refresh token is bound to a DPoP key: send a proof by that key.")
        # Claim the token for this rotation atomically, in the transaction that save_token commits: of two
        # concurrent uses one wins and the other is reuse (PostgreSQL holds the row lock until the commit).
        claimed = _rowcount(db.session.execute(_CLAIM_REFRESH, {"row_id": row.id, "now": now}))
        if claimed != 1:
            _reuse_detected("refresh.reuse_detected", "refresh_reuse", row.user, row.client_id, row.family_id)
            return None
        return row

    def authenticate_user(self, refresh_token: Token) -> SignIn:
        """The sign-in the refresh token's family carries."""
        return SignIn.from_refresh(refresh_token)

    def revoke_old_credential(self, refresh_token: Token) -> None:
        """Nothing left to do: the token was marked rotated when it was claimed, and save_token committed it."""


class ClientCredentialsGrant(DPoPClients, grants.ClientCredentialsGrant):
    """Machine-to-machine tokens for confidential clients."""

    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS


# --- client authentication ---------------------------------------------------------------------------------------

def client_secret_basic(query_client, request):
    """Authlib's client_secret_basic, but a malformed Authorization header is no credentials, not a 500."""
    try:
        return authenticate_client_secret_basic(query_client, request)
    except ValueError:  # "Basic " with nothing after it, or credentials that are not UTF-8
        return None


class PrivateKeyJWT(JWTBearerClientAssertion):
    """private_key_jwt (OIDC Core 9, RFC 7523 2.2): an assertion signed with a key from the client's JWKS."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def get_audiences(self):
        # RFC 9126 2: the issuer, the token endpoint and the PAR endpoint all name this server as an audience.
        return [issuer(), issuer() + "/token", issuer() + "/par"]

    def validate_jti(self, claims, jti) -> bool:
        """One use per assertion (RFC 7523 3): its jti is remembered in the rate-limit store until it expires."""
        prefix = current_app.config.get("RATELIMIT_KEY_PREFIX", "idp")
        lifetime = max(int(claims.get("exp", 0)) - int(utcnow().timestamp()), 0) + 120
        key = f"{prefix}:assertion-jti:{token_hash(str(claims.get('sub')) + ':' + str(jti))}"
        return limiter.storage.incr(key, lifetime) == 1

    def authenticate_client(self, client):
        """The client whose assertion proved valid: whether it is registered for this method is checked after each
        method by Authlib's ClientAuthentication, like every method's, and a refusal then names the method it is
        registered for (Server.authenticate_client); refused in here, it would name none."""
        return client

    def resolve_client_public_key(self, client: Client):
        """The client's keys; none (so invalid_client) when the registered set or the one fetched is not usable."""
        return client_keys(client)


def client_keys(client: Client) -> KeySet | None:
    """The client's registered keys (its ``jwks``, or the set at its ``jwks_uri``), as private_key_jwt and request
    objects (idp.oidc.request_objects) verify with them; None when it has none, or they are not usable."""
    try:
        if client.jwks:
            return client_public_keys(client.jwks)
        if client.jwks_uri:
            return _fetch_jwks(client.jwks_uri)
    except ValueError:
        pass
    return None


def client_public_keys(value: Any) -> KeySet:
    """A client's JWK Set for private_key_jwt: RSA or EC public keys only. Raises ValueError saying what is wrong
    (not a JWK Set, a symmetric key, which would turn the assertion into a shared secret, or a private key)."""
    try:
        keyset = KeySet.import_key_set(value)
    except (JoseError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a usable JWK Set ({exc})") from None
    for key in keyset.keys:
        if key.key_type not in ("RSA", "EC"):
            raise ValueError(f"the JWK Set may hold RSA and EC public keys only, not {key.key_type}")
        if key.is_private:
            raise ValueError("the JWK Set holds a private key: register the public keys only")
    return keyset


# A client's JWK Set: a few keys are a few kilobytes (idp.security.fetch bounds the fetch; no redirect followed).
JWKS_MAX_BYTES = 65536
JWKS_FETCH_SECONDS = 5.0


def outbound_public_only() -> bool:
    """Whether a client's URL may be fetched only at public addresses (production; idp.security.fetch)."""
    return current_app.config["IDP_ENV"] == "production"


def _fetch_jwks(uri: str) -> KeySet:
    """The JWK Set at ``uri``, fetched at most once per request (Authlib may ask twice while it authenticates the
    client: a fetch per ask would double what a registered URL can make idp send)."""
    fetched = g.setdefault("idp.jwks_fetched", {}) if has_request_context() else {}
    if uri not in fetched:
        try:
            body = bounded_get(uri, media_types=("application/json", "application/jwk-set+json"),
                               max_bytes=JWKS_MAX_BYTES, seconds=JWKS_FETCH_SECONDS,
                               public_only=outbound_public_only())
            fetched[uri] = client_public_keys(json.loads(body))
        except (FetchFailed, ValueError) as exc:
            fetched[uri] = ValueError(f"could not fetch {uri}: {exc}")
    result = fetched[uri]
    if isinstance(result, ValueError):
        raise result
    return result


# --- endpoints ---------------------------------------------------------------------------------------------------

_Row = TypeVar("_Row", Token, TokenView)


class _Presented(Generic[_Row]):
    """A token as presented to revocation or introspection: which of the row's two tokens it was (the row: a model
    for revocation, which changes it; a TokenView for introspection)."""

    def __init__(self, row: _Row, kind: str):
        self.row: _Row = row
        self.kind = kind

    def check_client(self, client) -> bool:
        return self.row.check_client(client)

    def get_scope(self) -> str:
        return self.row.scope

    def is_revoked(self) -> bool:
        return self.row.revoked_at is not None or (self.kind == "refresh_token" and self.row.rotated_at is not None)

    @property
    def expires_at(self) -> datetime | None:
        return self.row.refresh_expires_at if self.kind == "refresh_token" else self.row.access_expires_at

    def is_expired(self) -> bool:
        return self.expires_at is None or self.expires_at <= utcnow()


def _find_presented(token_string: str, hint: str | None,
                    finders: dict[str, Callable[[str], _Row | None]]) -> _Presented[_Row] | None:
    """The token, looked up first where the hint says, with ``finders`` (kind: function of the token string)."""
    order = ("refresh_token", "access_token") if hint == "refresh_token" else ("access_token", "refresh_token")
    for kind in order:
        row: _Row | None = finders[kind](token_string)
        if row is not None:
            return _Presented(row, kind)
    return None


class _HintIsAHint:
    """RFC 7009 2.1 and RFC 7662 2.1: ``token_type_hint`` only says where to look first, and the server may ignore
    it. idp can find both of its token types from the token alone, so a hint it does not know costs nothing and
    is not an error (Authlib's 401 unsupported_token_type would read to a client as a failed authentication)."""

    def check_params(self, request, client):
        if "token" not in request.form:
            raise InvalidRequestError()


class Revocation(_HintIsAHint, RevocationEndpoint):
    """RFC 7009: revoking a refresh token revokes its whole family; an access token is revoked by its jti."""

    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):
        return _find_presented(token_string, token_type_hint,
                               {"access_token": access_token_row, "refresh_token": refresh_token_row})

    def revoke_token(self, token: _Presented[Token], request) -> None:
        row = token.row
        if token.kind == "refresh_token":
            count = revoke_family(row.family_id, "revoked")
        else:
            row.revoked_at = row.revoked_at or utcnow()
            row.revoked_reason = row.revoked_reason or "revoked"
            count = 1
        audit.record("token.revoked", subject=row.user, client_id=row.client_id, token_type=token.kind,
                     tokens_revoked=count)
        db.session.commit()


class Introspection(_HintIsAHint, IntrospectionEndpoint):
    """RFC 7662 for authenticated clients: a client may introspect only its own tokens."""

    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):
        return _find_presented(token_string, token_type_hint,
                               {"access_token": access_token_view, "refresh_token": refresh_token_view})

    def check_permission(self, token: _Presented[TokenView], client, request) -> bool:
        # Also the client an exchanged token is addressed to: the resource server it was made for (RFC 8693 1.1).
        return client.client_id in (token.row.client_id, token.row.audience)

    def introspect_token(self, token: _Presented[TokenView]) -> dict[str, Any]:
        row = token.row
        expires_at = token.expires_at
        assert expires_at is not None  # an active token (Authlib checked is_expired, which refuses None)
        result = {"active": True, "client_id": row.client_id, "scope": row.scope, "iss": issuer(),
                  "aud": row.audience or row.client_id, "iat": int(row.issued_at.timestamp()),
                  "exp": int(expires_at.timestamp()),
                  "token_type": "Bearer" if token.kind == "access_token" else "refresh_token"}
        if token.kind == "access_token":
            result["jti"] = row.jti
            if row.act:  # RFC 8693 4.1, 2.2: who acts on the subject's behalf
                result["act"] = row.act
            if row.dpop_jkt:  # RFC 9449 6.2
                result["token_type"] = "DPoP"
                result["cnf"] = {"jkt": row.dpop_jkt}
        elif row.dpop_jkt and row.client is not None and row.client.public:  # a bound refresh token (RFC 9449 5)
            result["cnf"] = {"jkt": row.dpop_jkt}
        if row.user is not None:
            result["sub"] = row.user.subject
            result["username"] = row.user.email
        return result


class AccessTokenValidator(BearerTokenValidator):
    """Bearer JWT access tokens of ours, live in the database (revocation and introspection agree). A DPoP-bound
    one is refused as a bearer token (RFC 9449 7.2): its holder must prove the key. ``find`` reads the row: as a
    model for the APIs that act on the user, as a TokenView for userinfo."""

    def __init__(self, find=access_token_row):
        super().__init__()
        self.find = find

    def authenticate_token(self, token_string: str) -> Token | TokenView | None:
        return self.find(token_string)

    def validate_token(self, token, scopes, request) -> None:
        if token is not None and token.dpop_jkt:
            raise dpop.DPoPError("This access token is bound to a DPoP key: send it as Authorization: DPoP with a "
                                 "proof (RFC 9449 7.2).", resource=True, error="invalid_token")
        super().validate_token(token, scopes, request)


class DPoPAccessTokenValidator(TokenValidator):
    """``Authorization: DPoP <token>`` (RFC 9449 7.1): a bound access token of ours, live in the database, with a
    proof by its key for this request and this token (``ath``). Every refusal carries the DPoP challenge."""

    TOKEN_TYPE = "dpop"

    def __init__(self, find=access_token_row):
        super().__init__()
        self.find = find

    def authenticate_token(self, token_string: str) -> Token | TokenView:
        row = self.find(token_string)
        if row is None or row.is_expired() or row.is_revoked():
            raise dpop.DPoPError("The access token is unknown, expired or revoked.", resource=True,
                                 error="invalid_token")
        if not row.dpop_jkt:
            raise dpop.DPoPError("This access token is not bound to a DPoP key: send it as a Bearer token.",
                                 resource=True, error="invalid_token")
        proof = dpop.check(access_token=token_string, resource=True)
        if proof is None:
            raise dpop.DPoPError("A DPoP-bound access token needs a DPoP proof.", resource=True)
        if not hmac.compare_digest(proof.jkt, row.dpop_jkt):  # RFC 9449 7.1, 4.3 step 12
            raise dpop.DPoPError("The DPoP proof is not by the key the access token is bound to.", resource=True)
        return row

    def validate_token(self, token, scopes, request) -> None:
        if self.scope_insufficient(token.get_scope(), scopes):
            raise InsufficientScopeError()


class UserInfo(UserInfoEndpoint):
    """OIDC Core 5.3: the claims the token's scope (and its claims request) release."""

    def generate_user_info(self, user, scope):
        token = current_token  # the Token row this request presented (Authlib's, set by the resource protector)
        requested = (token.claims or {}).get("userinfo") if token else None
        return oidc_claims.user_info(user, scope, requested)

    def get_issuer(self):
        return issuer()

    def resolve_private_key(self):
        return keys.signing_keyset()


class EndSession(EndSessionEndpoint):
    """RP-Initiated Logout 1.0; the view ends the browser's session (and asks first without a valid hint)."""

    def get_server_jwks(self):
        # An id_token_hint signed by a key this worker has not loaded yet (rotated in another process) reloads them.
        hint = request.values.get("id_token_hint")
        return keys.keyset_for_token(hint) if hint else keys.verification_keyset()

    def end_session(self, end_session_request) -> None:
        """Nothing here: the view ends the browser's session once the request is validated."""

    def resolve_client_from_id_token_claims(self, id_token_claims):
        # Our ID tokens carry `aud` as a one-element list; Authlib's default resolves only a string `aud`.
        aud = id_token_claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud or [])
        return self.server.query_client(audiences[0]) if len(audiences) == 1 else None

    def is_post_logout_redirect_uri_legitimate(self, request, post_logout_redirect_uri, client, logout_hint):
        """Without an id_token_hint naming them, the user confirmed on our page: a POSTed "yes" carrying a valid
        CSRF token (RP-Initiated Logout 1.0 3). The URI was still matched exactly against the registered ones."""
        data = request.payload.data
        if client is None or request.method != "POST" or data.get("confirm") != "yes":
            return False
        try:
            validate_csrf(data.get("csrf_token"))
        except ValidationError:
            return False
        return True


# How each token endpoint auth method identifies a client: Authlib's own, and idp's client_secret_basic (no 500 on a
# malformed header) and private_key_jwt.
CLIENT_AUTH_METHODS = {
    "none": authenticate_none, "client_secret_post": authenticate_client_secret_post,
    "client_secret_basic": client_secret_basic, "private_key_jwt": PrivateKeyJWT(),
}


class Issuer(IssuerParameter):
    """RFC 9207: `iss` on every authorization response."""

    def get_issuer(self) -> str:
        return issuer()


class _Parameters(OAuth2Payload):
    """An authorization request's parameters given as a MultiDict rather than read from the HTTP request."""

    def __init__(self, parameters: MultiDict):
        self._parameters = parameters

    @property
    def data(self) -> MultiDict:
        return self._parameters

    @cached_property
    def datalist(self) -> dict[str, list[str]]:
        return {name: self._parameters.getlist(name) for name in self._parameters}


class ParametersRequest(FlaskOAuth2Request):
    """This HTTP request, carrying the authorization request ``parameters``: those of its query or form, or those a
    client pushed earlier (RFC 9126 4: only the pushed ones count), or those pushed now (RFC 9126 2.1)."""

    def __init__(self, parameters: MultiDict):
        super().__init__(request)
        self.payload = _Parameters(parameters)


class Server(AuthorizationServer):
    """Authlib's authorization server for Flask. A client that identified itself by a method it is not registered
    for is told the method it is registered for (RFC 6749 5.2 invalid_client), not every method the endpoint
    accepts, which reads as if any of them would do. Only a method that identified the client counts (a right
    secret, a valid assertion, or a bare client_id for `none`): a wrong secret proves nothing and names no method.

    An authorization request may be validated from given parameters (``get_consent_grant(request=MultiDict)``):
    the same validation whether they came in the URL or were pushed (idp.oidc.authorization)."""

    def create_oauth2_request(self, request):
        if isinstance(request, MultiDict):
            return ParametersRequest(request)
        return super().create_oauth2_request(request)

    def authenticate_client(self, request, methods, endpoint="token"):
        try:
            return super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as error:
            identified = getattr(request, IDENTIFIED, None)
            registered = identified.token_endpoint_auth_method if identified else None
            if registered is None:
                # One answer whether or not the client_id is registered (Authlib words an unknown one apart, and
                # answers it with another status than a wrong secret), its status set by what the caller sent:
                # 401 where it tried the Authorization header (RFC 6749 5.2) or sent no credentials at all (with
                # the Basic challenge), 400 for credentials in the body.
                error.description = "Client authentication failed."
                in_body = any(request.form.get(name) for name in _CLIENT_CREDENTIALS)
                error.status_code = 401 if "Authorization" in request.headers or not in_body else 400
            elif registered in methods:
                error.description = f"This client is registered to authenticate with {registered}."
            else:
                error.description = (f"This client is registered to authenticate with {registered}, which this "
                                     "endpoint refuses.")
            raise


_CLIENT_CREDENTIALS = ("client_secret", "client_assertion")  # a client's credentials in a form body
IDENTIFIED = "identified_client"  # the OAuth2Request's attribute: the client a method identified (``_noting``)


def _noting(authenticate):
    """A client authentication method that also notes on the request the client it identified (a right secret, a
    valid assertion, a bare client_id for `none`), so that a refusal can name the method the client is registered
    for: running the methods again to find out would spend a private_key_jwt assertion's jti twice."""

    def noting(query_client, request):
        client = authenticate(query_client, request)
        if client:
            setattr(request, IDENTIFIED, client)
        return client

    return noting


def _protector(find) -> ResourceProtector:
    """Bearer and DPoP-bound access tokens of ours, their rows read by ``find``."""
    protector = ResourceProtector()
    protector.register_token_validator(AccessTokenValidator(find))
    protector.register_token_validator(DPoPAccessTokenValidator(find))
    return protector


def create_server(app: Flask) -> AuthorizationServer:
    """One authorization server per app, bound to its settings."""
    server = Server()
    app.config.setdefault("OAUTH2_SCOPES_SUPPORTED", [*oidc_claims.SCOPES, *oidc_claims.ADMIN_SCOPES,
                                                      oidc_claims.ACCOUNT_SCOPE])
    # Every client Authlib reads, to authenticate it or to validate a request of it, is only read: the worker's kept
    # view of it (``client_view``), not a copy merged into the request's session.
    server.init_app(app, query_client=client_view, save_token=save_token)
    server.register_token_generator("default", AccessTokens(app.config["IDP_ISSUER"]))
    for method, authenticate in CLIENT_AUTH_METHODS.items():  # (Authlib's own none and client_secret_post too)
        server.register_client_auth_method(method, _noting(authenticate))
    server.register_grant(AuthorizationCodeGrant, [OpenIDCode(require_nonce=False), S256CodeChallenge(required=True),
                                                    ParameterLimits()])
    server.register_grant(RefreshTokenGrant, [RefreshIDToken()])
    server.register_grant(ClientCredentialsGrant)  # (the device grant: idp.oidc.device, which builds on this module)
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)
    server.register_endpoint(UserInfo(resource_protector=_protector(access_token_view)))
    # The admin and account APIs' bearer tokens (idp.http.bearer_token): rows as models, their users to act on.
    app.extensions["idp.resource_protector"] = _protector(access_token_row)
    server.register_endpoint(EndSession)
    server.register_extension(Issuer())
    app.extensions["idp.oauth"] = server
    return server


def current_server() -> AuthorizationServer:
    """The app's authorization server."""
    return current_app.extensions["idp.oauth"]
