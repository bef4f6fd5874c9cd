"""The stack's floor for idp's token paths, for bench/instructions.py: a hand-written Flask app on idp's stack (Flask,
SQLAlchemy Core on psycopg2, joserfc) that does only the work the protocol requires of each request, against idp's
own database and tokens. Its instructions per request are what idp's figure for the same request compares with.

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

What it leaves out, because the measured requests do not need it: refresh tokens (introspection answers only
idp's JWT access tokens; anything else is inactive), DPoP-bound tokens (refused), signed userinfo, CORS, key
rotation (the public keys are read once, at start), rate limits, logs and metrics, security headers. Read-only
requests run in autocommit as idp's do (no BEGIN and ROLLBACK round trips), and no connection is pinged on checkout.
Nothing is cached between requests except the keys and the compiled statements.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
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


def _json(body: dict, status: int = 200, extra: dict | None = None) -> Response:
    """``body`` as idp answers it (Flask's JSON: keys sorted), never to be stored."""
    return Response(json.dumps(body, sort_keys=True), status, {**HEADERS, **(extra or {})}, mimetype="application/json")


def create_app(database_url: str, issuer: str) -> Flask:
    """The floor app on ``database_url`` (idp's database), verifying tokens issued by ``issuer``."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")  # these requests only read
    with engine.connect() as connection:
        keys = KeySet.import_key_set({"keys": [dict(row[0]) for row in connection.execute(KEYS)]})
    app = Flask(__name__)

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
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        client_id = secret = ""
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(credentials).decode().partition(":")
            except ValueError:
                pass
            client_id, secret = unquote(client_id), unquote(secret)  # RFC 6749 2.3.1
        if not client_id or len(client_id) > 64 or "\x00" in client_id:
            return _unauthorized()
        token = request.form.get("token")
        if not token:
            return _json({"error": "invalid_request"}, 400)
        with engine.connect() as connection:
            row = connection.execute(INTROSPECT, {"client_id": client_id, "jti": verified_jti(token)}).first()
        presented = hashlib.sha256(secret.encode()).hexdigest()
        if row is None or row.client_secret_hash is None or row.token_endpoint_auth_method != "client_secret_basic" \
                or not hmac.compare_digest(row.client_secret_hash.encode(), presented.encode()):
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

    return app


def _unauthorized() -> Response:
    return _json({"error": "invalid_client"}, 401, {"WWW-Authenticate": 'Basic realm="introspection"'})
