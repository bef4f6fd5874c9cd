"""The stack's floor for idp's token paths: a hand-written Flask app on idp's stack (Flask, SQLAlchemy Core on
psycopg2, joserfc) that does only the work the protocol requires of each request, against idp's own database and
tokens. Its instructions per request (bench/instructions.py) and its throughput under gunicorn beside idp and the
peers (bench/run.py) are what idp's figures for the same requests compare with.

- ``GET /userinfo`` (OIDC Core 5.3) with ``Authorization: Bearer <JWT access token>``: the JWT's signature verified
  with joserfc (RS256, idp's public keys), its ``typ``, ``iss`` and ``exp`` checked, then one SELECT of the token
  row by its ``jti`` (idp keeps its access tokens' rows by jti; the refresh token alone is stored hashed) joined
  with its user: unknown, revoked, expired or DPoP-bound, or a scope without ``openid``, is refused; else the
  claims the scope releases (and those the ``claims`` request asked for), as JSON, ``Cache-Control: no-store``.
- ``POST /introspect`` (RFC 7662) with ``client_secret_basic``: the JWT verified as above, then one SELECT of the
  client row (by client_id) with the token row (by jti) and its user. The secret is compared as idp does (SHA-256
  of the presented secret, constant-time against the stored hash) before anything of the token is answered; a
  client may introspect only its own tokens, or those addressed to it. One statement, because idp itself reads
  only the token per request (it keeps its clients in memory, invalidated by PostgreSQL notifications): two
  round trips here would make the floor dearer than idp's own path.
- ``POST /token`` with ``grant_type=client_credentials`` (RFC 6749 4.4) and ``client_secret_basic``: the client row
  read (here one autocommit SELECT: idp keeps its clients in memory, so this floor pays one round trip idp does
  not) and its secret compared as above, the grant type checked, an RFC 9068 access token signed with joserfc
  (RS256, idp's own newest key, decrypted once at start with idp's helper), then in one transaction the token row
  and its audit row, chained as idp chains them (SECURITY.md 35: the advisory lock, the next id and the last row's
  hash in one round trip, the row's hash over its canonical JSON), committed before the answer.
- ``POST /token`` with ``grant_type=refresh_token`` (RFC 6749 6) and ``client_secret_basic``, rotated as idp
  rotates (RFC 9700 4.14.2): one autocommit SELECT of the token row found by the SHA-256 of the refresh token, its
  user and the sign-in session it lives with, joined with the client row (idp reads the token, user and session in
  one round trip and keeps its clients: the same number of round trips).
  The secret is compared, a client registered for DPoP-bound tokens refused (it must send a proof, and none is
  verified here), the grant type checked; the token is refused, as idp refuses it, when it is another client's,
  rotated already, revoked, past its idle or its family's absolute expiry, its user disabled, or, online (no
  ``offline_access``), when its session has ended or timed out (idp's IDP_SESSION_IDLE_TIMEOUT and
  IDP_SESSION_MAX_AGE); a ``scope`` may narrow the granted one, never widen it. The new scope is the granted one
  less what the client is no longer registered for. Then an RS256 access token with the family's sign-in
  (``auth_time``, ``acr``, ``amr``, ``sid``), a new random refresh token, and when the scope has ``openid`` an
  RS256 ID token (OIDC Core 12.2: ``at_hash``, the original sign-in's claims, no ``nonce``, the scope's claims);
  then in one transaction the old token claimed (``UPDATE ... WHERE rotated_at IS NULL``: of two concurrent uses
  one goes on), the new row (the family's sign-in copied from the old row in the INSERT, its refresh token
  stored hashed, its idle expiry capped by the family's) and its ``token.refreshed`` audit row chained as above,
  committed before the answer: idp's JSON, ``Cache-Control: no-store``.

What it leaves out, because the measured requests do not need it: introspection of refresh tokens (it answers only
idp's JWT access tokens; anything else is inactive), DPoP-bound tokens (refused), the revocation of a family whose
rotated refresh token is presented again (idp revokes every token of the family and mails the user; the floor
refuses the token and revokes nothing: the bench never presents one twice), ID tokens signed otherwise than RS256 (a
client registered for another algorithm is refused), client authentication other than ``client_secret_basic``,
signed userinfo, CORS, key rotation (the public keys are read once, at start), rate limits, logs and metrics,
security headers. Read-only requests run in autocommit as idp's do (no BEGIN and ROLLBACK round trips), and no
connection is pinged on checkout. Nothing is cached between requests except the keys and the compiled statements;
the audit rows are not checkpointed (idp signs a checkpoint every IDP_AUDIT_CHECKPOINT_EVERY rows, none by default).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import unquote

from flask import Flask, Response, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import create_engine, text

from idp.oidc.claims import user_info  # the claims a scope releases, as idp releases them

HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 5.1, OIDC Core 5.3.2, RFC 7662 2.2

KEYS = text("SELECT public_jwk FROM signing_keys WHERE publish_until IS NULL OR publish_until > now()")
USERINFO = text("SELECT t.scope, t.claims, t.revoked_at, t.access_expires_at, t.dpop_jkt, u.subject, u.email, "
                "u.email_verified_at, u.name, u.locale, u.phone, u.phone_verified_at, u.updated_at "
                "FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.jti = :jti")
INTROSPECT = text("SELECT c.client_secret_hash, c.token_endpoint_auth_method, t.client_id, t.audience, t.scope, "
                  "t.issued_at, t.access_expires_at, t.revoked_at, t.jti, t.act, t.dpop_jkt, u.subject, u.email "
                  "FROM clients c LEFT JOIN tokens t ON t.jti = :jti LEFT JOIN users u ON u.id = t.user_id "
                  "WHERE c.client_id = :client_id")
CLIENT = text("SELECT client_secret_hash, token_endpoint_auth_method, grant_types, access_token_ttl FROM clients "
              "WHERE client_id = :client_id")
SIGNING_KEY = text("SELECT private_jwk_encrypted FROM signing_keys WHERE alg = 'RS256' AND retired_at IS NULL "
                   "ORDER BY created_at DESC, id DESC LIMIT 1")
# The JSON columns idp leaves empty hold JSON null, as SQLAlchemy's JSON type writes None; RETURNING id as idp's
# INSERT has it: the same row and the same statement's work.
APPEND_TOKEN = text("INSERT INTO tokens (jti, client_id, scope, grant_type, family_id, acr, amr, claims, act, "
                    "issued_at, access_expires_at) VALUES (:jti, :client_id, :scope, :grant_type, :family_id, '', "
                    "'[]', 'null', 'null', :issued_at, :access_expires_at) RETURNING id")
# idp.audit: the lock that serialises appends, then the next id and the last row's hash (one round trip).
AUDIT_LINK = text("SELECT pg_advisory_xact_lock(:key); SELECT nextval(pg_get_serial_sequence('audit_events', 'id')), "
                  "(SELECT row_hash FROM audit_events ORDER BY id DESC LIMIT 1)").bindparams(key=0x1D9_A0D1)
APPEND_AUDIT = text("INSERT INTO audit_events (id, at, event, actor_id, subject_id, subject_email, client_id, ip, "
                    "user_agent, details, prev_hash, row_hash) VALUES (:id, :at, :event, :actor_id, :subject_id, "
                    ":subject_email, :client_id, :ip, :user_agent, :details, :prev_hash, :row_hash)")
# The refresh grant's read: the client, the token found by its refresh token's hash, its user and the sign-in session
# it lives with, in one round trip (idp reads the token, user and session in one; its clients it keeps).
REFRESH = text("SELECT c.client_secret_hash, c.token_endpoint_auth_method, c.grant_types, c.scope AS client_scope, "
               "c.access_token_ttl, c.refresh_token_ttl, c.id_token_signed_response_alg, c.dpop_bound_access_tokens, "
               "t.id, t.client_id, t.scope, t.sid, t.auth_time, t.acr, t.amr, t.claims, t.refresh_expires_at, "
               "t.family_expires_at, t.rotated_at, t.revoked_at, u.id AS user_id, u.disabled, u.subject, u.email, "
               "u.email_verified_at, u.name, u.locale, u.phone, u.phone_verified_at, u.updated_at, "
               "s.id AS session_id, s.ended_at, s.last_seen_at, s.created_at AS session_created_at "
               "FROM clients c LEFT JOIN tokens t ON t.refresh_token_hash = :hash "
               "LEFT JOIN users u ON u.id = t.user_id LEFT JOIN login_sessions s ON s.sid = t.sid "
               "WHERE c.client_id = :client_id")
# RFC 9700 4.14.2: of two uses of one refresh token, only the one whose UPDATE changes the row goes on.
CLAIM_REFRESH = text("UPDATE tokens SET rotated_at = :now WHERE id = :id AND rotated_at IS NULL")
# The rotated token's row: the family's sign-in (family, code, sid, auth_time, acr, amr, claims) copied from the row
# it replaces, as idp copies it, without sending it back and forth through Python.
APPEND_REFRESHED = text(
    "INSERT INTO tokens (jti, client_id, user_id, scope, grant_type, family_id, authorization_code_id, sid, "
    "auth_time, acr, amr, claims, issued_at, access_expires_at, refresh_token_hash, refresh_expires_at, "
    "family_expires_at, act) SELECT :jti, client_id, user_id, :scope, 'refresh_token', family_id, "
    "authorization_code_id, sid, auth_time, acr, amr, claims, :issued_at, :access_expires_at, :refresh_token_hash, "
    ":refresh_expires_at, :family_expires_at, 'null' FROM tokens WHERE id = :id RETURNING id")
# create_app's arguments that are idp's settings of the same name (IDP_ + the name in capitals).
LIFETIMES = ("access_token_ttl", "id_token_ttl", "refresh_token_ttl", "refresh_token_max_age", "session_idle_timeout",
             "session_max_age")
AUDIT_FIELDS = ("id", "at", "event", "actor_id", "subject_id", "subject_email", "client_id", "ip", "user_agent",
                "details")


def _json(body: dict, status: int = 200, extra: dict | None = None) -> Response:
    """``body`` as idp answers it (Flask's JSON: keys sorted), never to be stored."""
    return Response(json.dumps(body, sort_keys=True), status, {**HEADERS, **(extra or {})}, mimetype="application/json")


def _released(user, scopes: list[str], requested: dict | None) -> dict:
    """The claims ``scopes`` release about ``user`` (a row with the users columns), with those the ``claims``
    request parameter asked for (OIDC Core 5.4, 5.5): idp's own idp.oidc.claims.user_info, over the row."""
    source = SimpleNamespace(subject=user.subject, email=user.email, email_verified=user.email_verified_at is not None,
                             name=user.name, locale=user.locale, phone=user.phone,
                             phone_verified=user.phone_verified_at is not None, updated_at=user.updated_at)
    return user_info(source, " ".join(scopes), requested)


def create_app(database_url: str, issuer: str, secret_key: str, access_token_ttl: int = 900, id_token_ttl: int = 3600,
               refresh_token_ttl: int = 1209600, refresh_token_max_age: int = 7776000,
               session_idle_timeout: int = 1800, session_max_age: int = 43200) -> Flask:
    """The floor app on ``database_url`` (idp's database), verifying tokens issued by ``issuer`` and signing its own
    with idp's key (``secret_key``: idp's IDP_SECRET_KEY, which encrypts it). The lifetimes are idp's settings of
    the same names (IDP_ACCESS_TOKEN_TTL...), their defaults idp's (idp.config)."""
    from idp.security.keys import decrypt_private, import_private  # at start only: the key as idp stores it

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")  # for the requests that only read
    writes = create_engine(database_url)  # a transaction per request, committed by it
    with engine.connect() as connection:
        keys = KeySet.import_key_set({"keys": [dict(row[0]) for row in connection.execute(KEYS)]})
        signing_key = import_private(decrypt_private(connection.execute(SIGNING_KEY).scalar_one(), secret_key))
    app = Flask(__name__)

    def client_of(client_id: str, secret: str, row) -> bool:
        """Whether ``row`` is a client_secret_basic client whose stored hash is the presented secret's."""
        presented = hashlib.sha256(secret.encode()).hexdigest()
        return row is not None and row.client_secret_hash is not None and \
            row.token_endpoint_auth_method == "client_secret_basic" and \
            hmac.compare_digest(row.client_secret_hash.encode(), presented.encode())

    def verified_jti(token: str) -> str | None:
        """The jti of an access token of ours that is signed by one of our keys, typed at+jwt and not expired."""
        if token.count(".") != 2:
            return None
        try:
            decoded = jwt.decode(token, keys, algorithms=["RS256"])
        except (JoseError, ValueError):
            return None
        claims = decoded.claims
        if decoded.header.get("typ") != "at+jwt" or claims.get("iss") != issuer:
            return None
        if int(claims.get("exp", 0)) <= int(datetime.now(UTC).timestamp()):
            return None
        jti = claims.get("jti")
        return jti if isinstance(jti, str) else None

    @app.get("/userinfo")
    def userinfo() -> Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        jti = verified_jti(token) if scheme.lower() == "bearer" else None
        row = None
        if jti is not None:
            with engine.connect() as connection:
                row = connection.execute(USERINFO, {"jti": jti}).first()
        if row is None or row.revoked_at is not None or row.access_expires_at <= datetime.now(UTC) or row.dpop_jkt:
            return _json({"error": "invalid_token"}, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        scopes = row.scope.split()
        if "openid" not in scopes:
            return _json({"error": "insufficient_scope"}, 403,
                         {"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
        return _json(_released(row, scopes, (row.claims or {}).get("userinfo")))

    @app.post("/introspect")
    def introspect() -> Response:
        client_id, secret = _basic()
        if not client_id:
            return _unauthorized()
        token = request.form.get("token")
        if not token:
            return _json({"error": "invalid_request"}, 400)
        with engine.connect() as connection:
            row = connection.execute(INTROSPECT, {"client_id": client_id, "jti": verified_jti(token)}).first()
        if not client_of(client_id, secret, row):
            return _unauthorized()
        if row.jti is None or row.revoked_at is not None or row.access_expires_at <= datetime.now(UTC) or \
                client_id not in (row.client_id, row.audience):
            return _json({"active": False})
        result = {"active": True, "client_id": row.client_id, "scope": row.scope, "iss": issuer,
                  "aud": row.audience or row.client_id, "iat": int(row.issued_at.timestamp()),
                  "exp": int(row.access_expires_at.timestamp()), "token_type": "Bearer", "jti": row.jti}
        if row.act:
            result["act"] = row.act
        if row.dpop_jkt:
            result["token_type"] = "DPoP"
            result["cnf"] = {"jkt": row.dpop_jkt}
        if row.subject is not None:
            result["sub"] = row.subject
            result["username"] = row.email
        return _json(result)

    @app.post("/token")
    def token() -> Response:
        client_id, secret = _basic()
        if not client_id:
            return _unauthorized()
        grant_type = request.form.get("grant_type")
        if grant_type == "refresh_token":
            return refresh(client_id, secret)
        if grant_type != "client_credentials":
            return _json({"error": "unsupported_grant_type"}, 400)
        with engine.connect() as connection:
            client = connection.execute(CLIENT, {"client_id": client_id}).first()
        if not client_of(client_id, secret, client):
            return _unauthorized()
        if "client_credentials" not in (client.grant_types or []):
            return _json({"error": "unauthorized_client"}, 400)
        scope = ""  # no scope asked for (the bench's request): none granted
        now = int(time.time())
        expires_in = client.access_token_ttl or access_token_ttl
        jti = secrets.token_urlsafe(12)
        claims = {"iss": issuer, "exp": now + expires_in, "client_id": client_id, "iat": now, "jti": jti,
                  "scope": scope, "sub": client_id, "aud": client_id}
        access_token = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": signing_key.kid}, claims, signing_key)
        issued_at = datetime.fromtimestamp(now, UTC)
        with writes.begin() as connection:  # committed on leaving the block
            connection.execute(APPEND_TOKEN, {"jti": jti, "client_id": client_id, "scope": scope,
                                              "grant_type": "client_credentials",
                                              "family_id": secrets.token_urlsafe(16), "issued_at": issued_at,
                                              "access_expires_at": datetime.fromtimestamp(now + expires_in, UTC)})
            _append_audit(connection, "token.issued", None, None, client_id,
                          {"grant_type": "client_credentials", "jti": jti, "scope": scope,
                           "with_refresh_token": False, "dpop": False})
        return _json({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
                      "scope": scope})

    def refresh(client_id: str, secret: str) -> Response:
        """RFC 6749 6 with rotation (RFC 9700 4.14.2), as idp's RefreshTokenGrant and save_token do it."""
        presented = request.form.get("refresh_token")
        digest = hashlib.sha256(presented.encode()).hexdigest() if presented and len(presented) <= 512 else None
        with engine.connect() as connection:
            row = connection.execute(REFRESH, {"client_id": client_id, "hash": digest}).first()
        if not client_of(client_id, secret, row):
            return _unauthorized()
        if row.dpop_bound_access_tokens:  # RFC 9449 5.2: it must send a proof, and the floor verifies none
            return _json({"error": "invalid_dpop_proof"}, 400)
        if "refresh_token" not in (row.grant_types or []):
            return _json({"error": "unauthorized_client"}, 400)
        if presented is None:
            return _json({"error": "invalid_request"}, 400)
        now = datetime.now(UTC)
        if not usable(row, client_id, now):
            return _json({"error": "invalid_grant"}, 400)
        requested = request.form.get("scope")  # RFC 6749 6: at most the scope granted; if omitted, all of it
        if requested and not set(requested.split()) <= set(row.scope.split()):
            return _json({"error": "invalid_scope"}, 400)
        allowed = (row.client_scope or "").split()  # what the client is registered for now (ClientAccessors)
        scope = " ".join(s for s in dict.fromkeys((requested or row.scope).split()) if s in allowed)
        openid = "openid" in scope.split()  # OIDC Core 12.2: then a new ID token too
        if openid and (row.id_token_signed_response_alg or "RS256") != "RS256":  # the floor signs RS256 only
            return _json({"error": "unauthorized_client"}, 400)
        iat = int(now.timestamp())
        expires_in = row.access_token_ttl or access_token_ttl
        jti = secrets.token_urlsafe(12)
        # RFC 9068 claims as idp's AccessTokens make them: the family's sign-in, not now's.
        claims = {"iss": issuer, "exp": iat + expires_in, "client_id": client_id, "iat": iat, "jti": jti,
                  "scope": scope, "sub": row.subject, "aud": client_id, **_sign_in_claims(row)}
        access_token = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": signing_key.kid}, claims, signing_key)
        refresh_token = secrets.token_urlsafe(32)
        answer = {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
                  "refresh_token": refresh_token, "scope": scope}
        if openid:
            answer["id_token"] = id_token(row, scope, iat, access_token)
        issued_at = datetime.fromtimestamp(iat, UTC)
        family_expires_at = row.family_expires_at or issued_at + timedelta(seconds=refresh_token_max_age)
        idle = row.refresh_token_ttl or refresh_token_ttl
        with writes.begin() as connection:  # committed on leaving the block, before the answer
            if connection.execute(CLAIM_REFRESH, {"id": row.id, "now": now}).rowcount != 1:
                # Used by a concurrent request since it was read (idp revokes the family then: not the floor's).
                return _json({"error": "invalid_grant"}, 400)
            connection.execute(APPEND_REFRESHED, {
                "id": row.id, "jti": jti, "scope": scope, "issued_at": issued_at,
                "access_expires_at": datetime.fromtimestamp(iat + expires_in, UTC),
                "refresh_token_hash": hashlib.sha256(refresh_token.encode()).hexdigest(),
                "refresh_expires_at": min(issued_at + timedelta(seconds=idle), family_expires_at),
                "family_expires_at": family_expires_at})
            _append_audit(connection, "token.refreshed", row.user_id, row.email, client_id,
                          {"grant_type": "refresh_token", "jti": jti, "scope": scope, "with_refresh_token": True,
                           "dpop": False})
        return _json(answer)

    def usable(row, client_id: str, now: datetime) -> bool:
        """Whether ``row`` (REFRESH's) is a live refresh token of this client's, as idp's
        RefreshTokenGrant.authenticate_refresh_token decides it."""
        if row.id is None or row.client_id != client_id:
            return False
        if row.rotated_at is not None:  # presented again: idp also revokes its family, the floor only refuses
            return False
        if row.revoked_at is not None or row.refresh_expires_at is None or row.refresh_expires_at <= now:
            return False
        if row.family_expires_at is not None and row.family_expires_at <= now:  # the family's absolute expiry
            return False
        if row.user_id is None or row.disabled:
            return False
        if "offline_access" in row.scope.split():  # OIDC Core 11: it outlives the sign-in session
            return True
        # An online token ends with its session: ended, idle too long or too old (LoginSession.timed_out).
        return row.session_id is not None and row.ended_at is None and \
            (now - row.last_seen_at).total_seconds() <= session_idle_timeout and \
            (now - row.session_created_at).total_seconds() <= session_max_age

    def id_token(row, scope: str, iat: int, access_token: str) -> str:
        """OIDC Core 12.2: a refreshed ID token, as idp's RefreshIDToken makes it: the same iss, sub and aud, a new
        iat and exp, at_hash of the new access token, the family's sign-in (no nonce: no authentication request),
        and the claims the scope releases (with those the claims request parameter asked for in the ID token)."""
        at_hash = base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()[:16]).rstrip(b"=")
        claims = {"iss": issuer, "aud": [row.client_id], "iat": iat, "exp": iat + id_token_ttl,
                  **_sign_in_claims(row), "at_hash": at_hash.decode(),
                  **_released(row, scope.split(), (row.claims or {}).get("id_token"))}
        return jwt.encode({"alg": "RS256", "kid": signing_key.kid}, claims, signing_key)

    return app


def _sign_in_claims(row) -> dict:
    """auth_time, acr, amr and sid of the sign-in a refresh token's family carries, those it has (OIDC Core 2)."""
    claims: dict = {}
    if row.auth_time is not None:
        claims["auth_time"] = int(row.auth_time.timestamp())
    if row.acr:
        claims["acr"] = row.acr
    if row.amr:
        claims["amr"] = list(row.amr)
    if row.sid:
        claims["sid"] = row.sid
    return claims


def _append_audit(connection, event: str, user_id: int | None, email: str | None, client_id: str,
                  details: dict) -> None:
    """The request's audit row, chained as idp chains them (SECURITY.md 35: the advisory lock, the next id and the
    last row's hash in one round trip, the row's hash over its canonical JSON), in the caller's transaction."""
    audit = {"at": datetime.now(UTC), "event": event, "actor_id": user_id, "subject_id": user_id,
             "subject_email": email, "client_id": client_id, "ip": request.remote_addr,
             "user_agent": request.user_agent.string[:512] or None, "details": details}
    audit["id"], prev = connection.execute(AUDIT_LINK).one()
    audit["prev_hash"] = prev or "0" * 64
    content = {name: audit[name] for name in AUDIT_FIELDS}
    content["at"] = audit["at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    audit["row_hash"] = hashlib.sha256((audit["prev_hash"] + canonical).encode()).hexdigest()
    connection.execute(APPEND_AUDIT, {**audit, "details": json.dumps(audit["details"])})


def from_environment() -> Flask:
    """The floor app as bench/run.py serves it under gunicorn (``floor_tokens:from_environment()``)."""
    return app_from_environment(create_app, LIFETIMES)


def app_from_environment(create: Callable[..., Flask], lifetimes: tuple[str, ...]) -> Flask:
    """A floor app made by ``create`` on the database, issuer and key of the idp it runs beside, from idp's own
    settings in the environment (bench/floor_signin.py's too)."""
    import os

    url = os.environ["IDP_DATABASE_URL"]  # on psycopg2, as idp runs (a bare postgresql:// would load psycopg 3)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    # The lifetimes idp's environment sets (IDP_ACCESS_TOKEN_TTL...); ``create`` has idp's defaults for the others.
    settings = {name: int(os.environ[f"IDP_{name.upper()}"]) for name in lifetimes
                if f"IDP_{name.upper()}" in os.environ}
    return create(url, os.environ["IDP_ISSUER"], os.environ["IDP_SECRET_KEY"], **settings)


def _basic() -> tuple[str, str]:
    """client_secret_basic's client_id and secret (RFC 6749 2.3.1), or empty ones."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        client_id, _, secret = base64.b64decode(credentials).decode().partition(":")
    except ValueError:
        return "", ""
    client_id, secret = unquote(client_id), unquote(secret)
    if len(client_id) > 64 or "\x00" in client_id:
        return "", ""
    return client_id, secret


def _unauthorized() -> Response:
    return _json({"error": "invalid_client"}, 401, {"WWW-Authenticate": 'Basic realm="introspection"'})
