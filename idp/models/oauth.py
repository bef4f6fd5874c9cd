"""OAuth 2.0 / OpenID Connect state: clients, authorization codes, tokens, consents and signing keys."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idp.extensions import Model
from idp.models.types import UTCDateTime, utcnow
from idp.models.user import User
from idp.security.tokens import same, token_hash


def _loopback_http(uri: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme != "http" or not parts.hostname:
        return False
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _without_port(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redirect_uri_registered(redirect_uri: str, registered: Sequence[str]) -> bool:
    """Whether ``redirect_uri`` is one of ``registered``: an exact string match; only the port of a loopback http URI
    may differ (RFC 8252 7.3, RFC 9700 2.1)."""
    if redirect_uri in registered:
        return True
    if _loopback_http(redirect_uri):
        bare = _without_port(redirect_uri)
        return any(_loopback_http(uri) and _without_port(uri) == bare for uri in registered)
    return False


class ClientAccessors:
    """Authlib's ClientMixin over a client's columns, for the model below and for the read-only view of one that a
    worker keeps (idp.oidc.server.ClientView): what a client may do is decided here, once."""

    __slots__ = ()
    if TYPE_CHECKING:
        client_id: str
        client_secret_hash: str | None
        name: str
        redirect_uris: Sequence[str]
        post_logout_redirect_uris: Sequence[str]
        grant_types: Sequence[str]
        scope: str
        token_endpoint_auth_method: str
        id_token_signed_response_alg: str
        jwks: dict[str, Any] | None
        jwks_uri: str | None

    @property
    def public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"id_token_signed_response_alg": self.id_token_signed_response_alg,
                "post_logout_redirect_uris": list(self.post_logout_redirect_uris or []),
                "jwks": self.jwks, "jwks_uri": self.jwks_uri, "client_name": self.name}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        """Only an unambiguous default: with two or more registered URIs the request must name one."""
        uris = self.redirect_uris or []
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        if not scope:
            return ""
        allowed = set((self.scope or "").split())
        return " ".join(s for s in dict.fromkeys(scope.split()) if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri_registered(redirect_uri, self.redirect_uris or [])

    def check_client_secret(self, client_secret: str) -> bool:
        return same(self.client_secret_hash, token_hash(client_secret or ""))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in (self.grant_types or [])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.grant_types or [])


class Client(ClientAccessors, Model):
    """A relying party. The secret is stored as a SHA-256 of a 256-bit random value (SECURITY.md 8)."""

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_secret_hash: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    logo_uri: Mapped[str | None] = mapped_column(String(2000))  # shown on the consent page (RFC 7591 2)
    # RFC 7591 2: links to the client's privacy policy and terms of service, shown on the consent page.
    policy_uri: Mapped[str | None] = mapped_column(String(2000))
    tos_uri: Mapped[str | None] = mapped_column(String(2000))
    # OpenID Connect Dynamic Client Registration 1.0 2: web | native (None: registered before it was asked).
    application_type: Mapped[str | None] = mapped_column(String(16))
    # RFC 7592 3: the SHA-256 of the registration access token of a dynamically registered client (None: a client
    # registered by an operator, which no registration access token manages).
    registration_access_token_hash: Mapped[str | None] = mapped_column(String(64))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    scope: Mapped[str] = mapped_column(Text, default="")
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(32), default="client_secret_basic")
    first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    id_token_signed_response_alg: Mapped[str] = mapped_column(String(16), default="RS256")
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    mfa: Mapped[str] = mapped_column(String(16), default="optional")  # optional | required
    min_acr: Mapped[str] = mapped_column(String(64), default="")  # lowest level of assurance it accepts
    allow_remembered_device: Mapped[bool] = mapped_column(Boolean, default=True)
    # OIDC Core 11: a code flow without offline_access gets a refresh token only if the client is registered for
    # online sessions, and that token ends with the sign-in session it came from.
    refresh_tokens_for_sessions: Mapped[bool] = mapped_column(Boolean, default=False)
    # RFC 9126 6: the client may start an authorization request only by pushing it (idp.oidc.par).
    require_pushed_authorization_requests: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # RFC 9449 5.2 dpop_bound_access_tokens: every token request of this client must carry a DPoP proof.
    dpop_bound_access_tokens: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # RFC 8693 (idp.oidc.exchange): the clients that may exchange a token for one addressed to this client (its
    # `audience`); NULL or empty, none may.
    token_exchange_actors: Mapped[list[str] | None] = mapped_column(JSON)
    # RFC 9101 (idp.oidc.request_objects): where the client's request objects may be fetched from (OIDC
    # Registration 2 request_uris, exact match; NULL from before 0018 reads as none), and the one algorithm they
    # must be signed with (OIDC Registration 2 request_object_signing_alg; NULL: RS256, ES256 or PS256; "none"
    # is the explicit opt-in to unsigned ones).
    request_uris: Mapped[list[str] | None] = mapped_column(JSON)
    request_object_signing_alg: Mapped[str | None] = mapped_column(String(16))
    access_token_ttl: Mapped[int | None] = mapped_column(Integer)
    refresh_token_ttl: Mapped[int | None] = mapped_column(Integer)
    # OpenID Connect Back-Channel Logout 1.0 2.2 and Front-Channel Logout 1.0 2 (idp.oidc.logout).
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2000))
    backchannel_logout_session_required: Mapped[bool] = mapped_column(Boolean, default=False,
                                                                      server_default=false())
    frontchannel_logout_uri: Mapped[str | None] = mapped_column(String(2000))
    frontchannel_logout_session_required: Mapped[bool] = mapped_column(Boolean, default=False,
                                                                       server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuthorizationCode(Model):
    """An issued code: stored hashed, single use, bound to client, redirect URI, PKCE challenge and nonce."""

    __tablename__ = "authorization_codes"
    # OIDC nonce replay check (every authorization request with a nonce): by client and nonce, not a scan.
    __table_args__ = (Index("ix_authorization_codes_client_id_nonce", "client_id", "nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str] = mapped_column(Text, default="")
    scope: Mapped[str] = mapped_column(Text, default="")
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(16))
    claims: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sid: Mapped[str | None] = mapped_column(String(64))
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime())
    acr: Mapped[str] = mapped_column(String(64), default="")
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # RFC 9449 10: the JWK thumbprint of the key the code may only be redeemed with (dpop_jkt, or the challenge
    # endpoint's auth_session key).
    dpop_jkt: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship()

    # --- authlib AuthorizationCodeMixin ----------------------------------------------------------------------
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> str | None:
        return self.acr or None

    def get_amr(self) -> list[str] | None:
        return list(self.amr) or None


class SessionClient(Model):
    """A client that a sign-in session signed into (an authorization code was issued to it from the session): the
    clients told when the session ends (idp.oidc.logout). Kept apart from codes and tokens, which housekeeping
    removes while the session, and the client's own session built on it, may still live. Goes with its session."""

    __tablename__ = "session_clients"
    __table_args__ = (UniqueConstraint("sid", "client_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sid: Mapped[str] = mapped_column(ForeignKey("login_sessions.sid", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PushedRequest(Model):
    """An authorization request pushed to /par (RFC 9126): its parameters, as validated, behind a request_uri that
    is a bearer reference (whoever has it can start the request), so only its hash is stored; bound to the client
    that pushed it, single use (``used_at``, set by one atomic statement when the authorization response is
    issued: idp.login.consume), and short-lived."""

    __tablename__ = "pushed_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_uri_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    # [name, value] pairs, in the order sent (a parameter may repeat where the protocol allows it).
    parameters: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeviceCode(Model):
    """A device authorization request (RFC 8628): the client's device polls with the device code while its user
    enters the user code at /device, signs in and approves or denies (idp.oidc.device).

    Both codes are bearer secrets, so neither is stored: the device code (256 bits) as a SHA-256, the short user
    code (RFC 8628 6.1: 8 letters, about 34.6 bits) as a keyed hash, so that a leaked table cannot be searched
    offline for the live ones. Approving records the sign-in the tokens are made from (the ID token's sid,
    auth_time, acr, amr); ``decided_at`` is set once (a user code is used once), ``redeemed_at`` once (tokens are
    issued once), each by one conditional UPDATE (SECURITY.md 32)."""

    __tablename__ = "device_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # RFC 8628 3.5: the polling interval, 5 seconds more after each slow_down.
    interval: Mapped[int] = mapped_column(Integer, default=5)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    approved: Mapped[bool | None] = mapped_column(Boolean)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    sid: Mapped[str | None] = mapped_column(String(64))
    auth_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acr: Mapped[str] = mapped_column(String(64), default="")
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User | None] = relationship()

    # --- authlib DeviceCredentialMixin, and what the ID token reads from an "authorization code" -----------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return self.expires_at <= utcnow()

    def get_nonce(self) -> None:
        return None  # the device flow has no nonce (RFC 8628 3.1 has no such parameter)

    def get_auth_time(self) -> int | None:
        return int(self.auth_time.timestamp()) if self.auth_time is not None else None

    def get_acr(self) -> str | None:
        return self.acr or None

    def get_amr(self) -> list[str] | None:
        return list(self.amr or []) or None


class TokenAccessors:
    """Authlib's TokenMixin over a token's columns, for the model below and for the read-only view of one
    (idp.oidc.server.TokenView): whether a token is revoked or expired is decided here, once."""

    __slots__ = ()
    if TYPE_CHECKING:
        client_id: str
        scope: str
        revoked_at: datetime | None
        access_expires_at: datetime

        @property
        def user(self) -> Any: ...
        @property
        def client(self) -> ClientAccessors | None: ...

    def check_client(self, client) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self) -> bool:
        return self.access_expires_at <= utcnow()

    def get_user(self) -> Any:
        return self.user

    def get_client(self) -> ClientAccessors | None:
        return self.client


class Token(TokenAccessors, Model):
    """One issued access token (a JWT, known by its jti) and its opaque refresh token (stored hashed)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    grant_type: Mapped[str] = mapped_column(String(64))
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    authorization_code_id: Mapped[int | None] = mapped_column(Integer, index=True)
    sid: Mapped[str | None] = mapped_column(String(64), index=True)
    auth_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acr: Mapped[str] = mapped_column(String(64), default="")
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)
    claims: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    access_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    refresh_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    refresh_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    family_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    # RFC 9449 6: the JWK thumbprint of the DPoP key its access token is bound to (its cnf.jkt); a public client's
    # refresh token is bound to it too (RFC 9449 5), a confidential client's is not.
    dpop_jkt: Mapped[str | None] = mapped_column(String(64))
    # RFC 8693 (idp.oidc.exchange): the client an exchanged access token is addressed to (its `aud`; NULL: the
    # client it was issued to), and its `act` claim naming the acting client and, nested, those before it (4.1).
    audience: Mapped[str | None] = mapped_column(String(64))
    act: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    user: Mapped[User | None] = relationship()
    # By client_id (no foreign key: a deleted client's token rows stay for the audit trail, revoked).
    client: Mapped[Client | None] = relationship(primaryjoin="foreign(Token.client_id) == Client.client_id",
                                                 viewonly=True)

    # --- authlib TokenMixin (the rest: TokenAccessors) ---------------------------------------------------------
    def get_expires_in(self) -> int:
        return int((self.access_expires_at - self.issued_at).total_seconds())


class DPoPProof(Model):
    """The jti of a DPoP proof already accepted (RFC 9449 11.1), kept until the proof is too old to be accepted
    again; the replay cache without Redis (idp.oidc.dpop). Only a hash is kept: the jti is the client's."""

    __tablename__ = "dpop_proofs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    jti_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class InitialAccessToken(Model):
    """An initial access token (RFC 7591 3): what an operator hands a developer so that /register accepts their
    client when IDP_REGISTRATION is initial-token. A bearer secret, so only its SHA-256 is stored; it expires, and
    may be limited to a number of registrations (``uses_left``, counted down by one conditional UPDATE, so two
    registrations at once cannot both take the last use: idp.oidc.dynamic)."""

    __tablename__ = "initial_access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    uses_left: Mapped[int | None] = mapped_column(Integer)  # None: any number until it expires
    used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Consent(Model):
    """The scopes a user granted a client; a later page lets the user revoke it."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SigningKey(Model):
    """A JOSE signing key: public JWK in clear, private JWK encrypted with a key derived from IDP_SECRET_KEY."""

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    private_jwk_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # After this, no token it signed can still be valid, so JWKS stops publishing it.
    publish_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
