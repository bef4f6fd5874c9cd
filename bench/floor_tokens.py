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

What it leaves out, because the measured requests do not need it: refresh tokens (introspection answers only
idp's JWT access tokens; anything else is inactive), DPoP-bound tokens (refused), signed userinfo, CORS, key
rotation (the public keys are read once, at start), rate limits, logs and metrics, security headers. Read-only
requests run in autocommit as idp's do (no BEGIN and ROLLBACK round trips), and no connection is pinged on checkout.
Nothing is cached between requests except the keys and the compiled statements; the audit rows are not
checkpointed (idp signs a checkpoint every IDP_AUDIT_CHECKPOINT_EVERY rows, none by default).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from urllib.parse import unquote

from flask import Flask, Response, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import create_engine, text

HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 5.1, OIDC Core 5.3.2, RFC 7662 2.2
# OIDC Core 5.4: the claims each scope releases (those idp can hold: idp.oidc.claims).
SCOPE_CLAIMS = {"openid": ("sub",), "profile": ("name", "locale", "updated_at"),
                "email": ("email", "email_verified"), "phone": ("phone_number", "phone_number_verified")}

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
APPEND_TOKEN = text("INSERT INTO tokens (jti, client_id, scope, grant_type, family_id, acr, amr, issued_at, "
                    "access_expires_at) VALUES (:jti, :client_id, :scope, :grant_type, :family_id, '', '[]', "
                    ":issued_at, :access_expires_at)")
# idp.audit: the lock that serialises appends, then the next id and the last row's hash (one round trip).
AUDIT_LINK = text("SELECT pg_advisory_xact_lock(:key); SELECT nextval(pg_get_serial_sequence('audit_events', 'id')), "
                  "(SELECT row_hash FROM audit_events ORDER BY id DESC LIMIT 1)").bindparams(key=0x1D9_A0D1)
APPEND_AUDIT = text("INSERT INTO audit_events (id, at, event, actor_id, subject_id, subject_email, client_id, ip, "
                    "user_agent, details, prev_hash, row_hash) VALUES (:id, :at, :event, :actor_id, :subject_id, "
                    ":subject_email, :client_id, :ip, :user_agent, :details, :prev_hash, :row_hash)")
AUDIT_FIELDS = ("id", "at", "event", "actor_id", "subject_id", "subject_email", "client_id", "ip", "user_agent",
                "details")


def _json(body: dict, status: int = 200, extra: dict | None = None) -> Response:
    """``body`` as idp answers it (Flask's JSON: keys sorted), never to be stored."""
    return Response(json.dumps(body, sort_keys=True), status, {**HEADERS, **(extra or {})}, mimetype="application/json")


def create_app(database_url: str, issuer: str, secret_key: str, access_token_ttl: int = 900) -> Flask:
    """The floor app on ``database_url`` (idp's database), verifying tokens issued by ``issuer`` and signing its own
    with idp's key (``secret_key``: idp's IDP_SECRET_KEY, which encrypts it)."""
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
        known = {"sub": row.subject, "email": row.email, "email_verified": row.email_verified_at is not None,
                 "updated_at": int(row.updated_at.timestamp())}
        if row.name:
            known["name"] = row.name
        if row.locale:
            known["locale"] = row.locale
        if row.phone:
            known["phone_number"] = row.phone
            known["phone_number_verified"] = row.phone_verified_at is not None
        names = {name for scope in scopes for name in SCOPE_CLAIMS.get(scope, ())}
        names.update(((row.claims or {}).get("userinfo") or {}).keys())  # OIDC Core 5.5
        return _json({name: known[name] for name in names if name in known})

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
        if request.form.get("grant_type") != "client_credentials":
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
        audit = {"at": datetime.now(UTC), "event": "token.issued", "actor_id": None, "subject_id": None,
                 "subject_email": None, "client_id": client_id, "ip": request.remote_addr,
                 "user_agent": request.user_agent.string[:512] or None,
                 "details": {"grant_type": "client_credentials", "jti": jti, "scope": scope,
                             "with_refresh_token": False, "dpop": False}}
        with writes.begin() as connection:  # committed on leaving the block
            connection.execute(APPEND_TOKEN, {"jti": jti, "client_id": client_id, "scope": scope,
                                              "grant_type": "client_credentials",
                                              "family_id": secrets.token_urlsafe(16), "issued_at": issued_at,
                                              "access_expires_at": datetime.fromtimestamp(now + expires_in, UTC)})
            audit["id"], prev = connection.execute(AUDIT_LINK).one()
            audit["prev_hash"] = prev or "0" * 64
            content = {name: audit[name] for name in AUDIT_FIELDS}
            content["at"] = audit["at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            audit["row_hash"] = hashlib.sha256((audit["prev_hash"] + canonical).encode()).hexdigest()
            connection.execute(APPEND_AUDIT, {**audit, "details": json.dumps(audit["details"])})
        return _json({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
                      "scope": scope})

    return app


def from_environment() -> Flask:
    """The floor app as bench/run.py serves it under gunicorn (``floor_tokens:from_environment()``): on the database,
    issuer and key of the idp it runs beside, from idp's own settings in the environment."""
    import os

    url = os.environ["IDP_DATABASE_URL"]  # on psycopg2, as idp runs (a bare postgresql:// would load psycopg 3)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return create_app(url, os.environ["IDP_ISSUER"], os.environ["IDP_SECRET_KEY"],
                      int(os.environ.get("IDP_ACCESS_TOKEN_TTL", "900")))


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
