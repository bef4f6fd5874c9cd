"""The stack's floor for idp's complete password sign-in: a hand-written Flask app on idp's stack (Flask and its
signed cookie session, Jinja2, SQLAlchemy Core on psycopg2, joserfc, argon2-cffi) that does only the work the
protocol and the sign-in's security require of each request of one authorization code flow, against idp's own
database, user rows, client row and keys. Its instructions per sign-in besides the argon2id verification
(bench/instructions.py, ``floor_signin``) and its sign-ins per second under gunicorn beside idp and the peers
(bench/run.py, the signin rounds) are what idp's figures for the same sign-ins compare with. The three requests, as
bench/driver.py's ``sign_in`` sends them, unchanged (the same shape as idp's since its sixteenth pass: the sign-in
page is the authorization request's answer, and the password's answer is the code):

- ``GET /authorize`` (RFC 6749 4.1.1, OIDC Core 3.1.2.1): one autocommit SELECT of the client row by client_id,
  with the sign-in session row named by the session cookie (by the SHA-256 of its token, as idp stores it) and its
  user, and whether a code of this client already carried the request's nonce (idp refuses a nonce used before,
  through Authlib's ``exists_nonce``). The request is validated as idp validates it: client_id, the redirect_uri
  matched exactly (only a loopback http URI's port may differ, RFC 8252 7.3), response_type ``code`` for a client
  registered for the code grant, the scope's values among idp's and ``openid`` in it, the parameters that may be
  sent once sent once, idp's length limits (idp.oidc.policy.oversized_parameter), PKCE (S256 only; required of a
  public client, RFC 9700 2.1.1). Before the redirect URI is trusted an error is a page (400), after it a
  redirect with ``error``, ``state`` and ``iss`` (RFC 9207), as idp answers. Without a live session (none, ended,
  idle or too old by idp's IDP_SESSION_IDLE_TIMEOUT and IDP_SESSION_MAX_AGE, or its user disabled) the request is
  remembered, validated, in Flask's signed cookie session (the "flow" cookie, ``__Host-`` prefixed, HttpOnly,
  SameSite=Lax), with a fresh random CSRF token, and the sign-in page is the answer (200, as idp): a Jinja2
  template compiled once and rendered with autoescaping (fields ``email``, ``password``, the hidden CSRF token),
  posting to ``/login``. With one, the code is
  issued: one autocommit statement writes the authorization code row as idp writes it (the code stored as its
  SHA-256; client, user, redirect_uri, scope, nonce, PKCE challenge and method, the session's sid, auth_time, acr
  and amr, expiry after IDP_AUTH_CODE_TTL) and, in the same statement, the ``session_clients`` row that the
  session's logout notifications are sent by (Back-Channel and Front-Channel Logout, which idp advertises); then
  a 302 to the redirect URI with ``code``, ``state`` and ``iss``. The session's last_seen_at is written when it is
  a minute old, as idp's. The bench's client is first-party: no consent, as at idp (a third-party client is
  refused with ``consent_required``).
- ``POST /login`` (``GET /login`` shows the page again, without the database; without a remembered request,
  idp's expired page, 400): the CSRF token compared, constant-time, with the flow cookie's (the cookie is signed and
  HttpOnly and the page same-origin, so a cross-site form cannot know it: the synchronizer token pattern, without
  Flask-WTF's second, timed signature); the email trimmed and lower-cased as idp's ``normalize_email``; one
  autocommit SELECT of the user by email with whether they have a confirmed second factor; the password verified
  against idp's stored argon2id hash by idp's own ``verify_password`` (argon2-cffi's core binding, the 4 lanes on
  one thread: the very computation idp's sign-in and the bench's argon2id limit make; argon2-cffi's PasswordHasher
  would compute the lanes on 4 threads, which costs more CPU, bench/README.md fourth pass, and would make the floor
  dearer than idp for a reason outside the question), an unknown user against a dummy hash of the same cost, as
  idp. Refused as idp refuses (one message for an unknown user, a wrong password, a disabled or a locked account;
  the form again, 200): each failure is a chained ``login.failure`` audit row as idp writes it, a wrong password
  also counted in the user's ``failed_logins``. Then in one transaction a non-zero ``failed_logins`` reset (idp
  writes it only when it changes), the sign-in session row (a new random sid, the SHA-256 of a new random 256-bit
  cookie token, amr ``["pwd"]``, acr ``urn:idp:acr:pwd``, auth_time, ip, user agent) and its chained
  ``login.success`` audit row, and the remembered request's code with its ``session_clients`` row (as above),
  committed together before the answer: the session cookie (``__Host-``, HttpOnly, SameSite Lax, Max-Age
  IDP_SESSION_MAX_AGE), the flow cookie's request and CSRF token dropped (a flow is used once), and the 302 to the
  redirect URI with ``code``, ``state`` and ``iss``.
- ``POST /token`` with ``grant_type=authorization_code`` (RFC 6749 4.1.3) and ``client_secret_basic``: one
  autocommit SELECT of the client row with the code found by its SHA-256 (for this client only) and its user. The
  secret is compared as idp does (SHA-256 of the presented secret, constant-time against the stored hash), the
  grant type checked, a client registered for DPoP-bound tokens refused (no proof is verified here); the code is
  refused, ``invalid_grant`` as idp's, when unknown, used, expired, sent with another redirect_uri than its
  request's, or with a code_verifier that does not match its S256 challenge (or one without a challenge, RFC 9700
  4.8), or when its user is now disabled. As at idp a code refused after it was found is used up all the same.
  Then an RFC 9068 access token and an OIDC Core ID token (``nonce``, ``at_hash``, ``auth_time``, ``acr``,
  ``amr``, ``sid``, the scope's claims) signed RS256 with idp's newest key, a random refresh token (the bench's
  client is registered for refresh tokens with its sessions, as at idp), then in one transaction the code claimed
  (``UPDATE ... WHERE used_at IS NULL``: of two concurrent redemptions one goes on), the token row as idp's
  save_token writes it (the sign-in copied from the code row in the INSERT, the refresh token stored hashed) and its
  chained ``token.issued`` audit row, committed before the answer: idp's JSON keys, ``Cache-Control: no-store``.

The audit rows are chained as idp chains them (bench/floor_tokens.py's ``_append_audit``, SECURITY.md 35), so
``idp audit verify`` holds across idp's and the floor's sign-ins interleaved.

What it leaves out, and why. Rows idp writes that the protocol does not ask for: idp's login transaction (a row
written by the first authorization request and updated by the password's answer, twice; here the request waits
in the signed flow cookie, bound to the browser by the cookie itself), the known-device row, its
``device.new`` audit row and the "new sign-in" mail queued for a known user (SECURITY.md 28: every sign-in of
the bench is by a fresh browser), the passkey challenge stored with the transaction for conditional UI. Checks and
features the bench's sign-in does not reach: the failed-attempt throttle and every rate limit (Redis), the
account lock at IDP_LOCKOUT_THRESHOLD failures (counted, not acted on), a second factor, email verification and a
client's MFA policy (a user or client that needs one is refused: the floor signs in with a password only),
passkeys, consent, ``prompt``, ``max_age``, ``acr_values``, ``claims``, ``id_token_hint``, request objects, PAR,
response modes (a request with one of these is refused with ``invalid_request``), the rehash of a password stored
at an older cost, the revocation of what a code's first use issued when it comes back (idp revokes the family and
mails the user; the floor refuses the code), ending a session whose user was disabled (refused, not ended), ending
a session the browser had before it signs in again, ID tokens signed otherwise than RS256, client authentication
other than ``client_secret_basic`` at the token endpoint, idp's API scopes (admin, account), logs, metrics,
security headers, i18n. Statements are compiled once; nothing is cached between requests but them, the keys, the
sign-in page's template and the dummy hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, request, session
from floor_tokens import _append_audit, _basic, _json, _released, _unauthorized, app_from_environment
from joserfc import jwt
from sqlalchemy import create_engine, text

# idp's own rules where the floor must answer as idp does (the claims, the scopes, the limits, the redirect URI's
# match): the same code, so the floor cannot drift from them.
from idp.login.assurance import ACR_PASSWORD
from idp.login.sessions import TOUCH_INTERVAL
from idp.models.oauth import redirect_uri_registered
from idp.oidc import claims
from idp.oidc.policy import oversized_parameter

SIGNING_KEY = text("SELECT private_jwk_encrypted FROM signing_keys WHERE alg = 'RS256' AND retired_at IS NULL "
                   "ORDER BY created_at DESC, id DESC LIMIT 1")
# The authorization request's read: the client, the session the cookie names (by its token's hash) with its user,
# and whether a code of this client carried the nonce already (idp: OpenIDCode.exists_nonce), in one round trip.
AUTHORIZE = text("SELECT c.client_id, c.redirect_uris, c.grant_types, c.token_endpoint_auth_method, c.mfa, "
                 "c.min_acr, c.require_pushed_authorization_requests, c.first_party, s.sid, s.auth_time, s.acr, "
                 "s.amr, s.ended_at, s.last_seen_at, s.created_at AS session_created_at, u.id AS user_id, "
                 "u.disabled, u.email_verified_at, "
                 "EXISTS (SELECT 1 FROM authorization_codes a WHERE a.client_id = c.client_id "
                 "AND a.nonce = :nonce) AS nonce_used "
                 "FROM clients c LEFT JOIN login_sessions s ON s.token_hash = :session_hash "
                 "LEFT JOIN users u ON u.id = s.user_id WHERE c.client_id = :client_id")
TOUCH_SESSION = text("UPDATE login_sessions SET last_seen_at = :now WHERE sid = :sid")
# The code and the client it signs the session into (idp.oidc.logout's session_clients), one atomic statement.
ISSUE_CODE = text(
    "WITH code AS (INSERT INTO authorization_codes (code_hash, client_id, user_id, redirect_uri, scope, nonce, "
    "code_challenge, code_challenge_method, claims, sid, auth_time, acr, amr, issued_at, expires_at) VALUES "
    "(:code_hash, :client_id, :user_id, :redirect_uri, :scope, :nonce, :code_challenge, :code_challenge_method, "
    "'null', :sid, :auth_time, :acr, :amr, :issued_at, :expires_at) RETURNING sid, client_id) "
    "INSERT INTO session_clients (sid, client_id, created_at) SELECT sid, client_id, :issued_at FROM code "
    "ON CONFLICT DO NOTHING")
# The password step's read: the user by (normalised) email, and whether they confirmed a second factor.
USER = text("SELECT u.id, u.email, u.password_hash, u.disabled, u.locked_at, u.failed_logins, u.mfa_required, "
            "u.email_verified_at, EXISTS (SELECT 1 FROM factors f WHERE f.user_id = u.id "
            "AND f.confirmed_at IS NOT NULL) AS enrolled FROM users u WHERE u.email = :email")
RESET_FAILURES = text("UPDATE users SET failed_logins = 0 WHERE id = :id")
COUNT_FAILURE = text("UPDATE users SET failed_logins = failed_logins + 1 WHERE id = :id")
START_SESSION = text("INSERT INTO login_sessions (sid, token_hash, user_id, created_at, last_seen_at, auth_time, "
                     "amr, acr, ip, user_agent) VALUES (:sid, :token_hash, :user_id, :now, :now, :now, :amr, :acr, "
                     ":ip, :user_agent) RETURNING id")
# The code grant's read: the client, the code by its hash (this client's only) and the code's user, one round trip.
CODE = text("SELECT c.client_secret_hash, c.token_endpoint_auth_method, c.grant_types, c.scope AS client_scope, "
            "c.access_token_ttl, c.refresh_token_ttl, c.id_token_signed_response_alg, c.dpop_bound_access_tokens, "
            "c.refresh_tokens_for_sessions, a.id, a.redirect_uri, a.scope, a.nonce, a.code_challenge, "
            "a.code_challenge_method, a.claims, a.sid, a.auth_time, a.acr, a.amr, a.expires_at, a.used_at, "
            "a.dpop_jkt, u.id AS user_id, u.disabled, u.subject, u.email, u.email_verified_at, u.name, u.locale, "
            "u.phone, u.phone_verified_at, u.updated_at "
            "FROM clients c LEFT JOIN authorization_codes a ON a.code_hash = :hash AND a.client_id = c.client_id "
            "LEFT JOIN users u ON u.id = a.user_id WHERE c.client_id = :client_id")
# RFC 6749 4.1.2: of two redemptions of one code, only the one whose UPDATE changes the row goes on.
CLAIM_CODE = text("UPDATE authorization_codes SET used_at = :now WHERE id = :id AND used_at IS NULL")
# The token row as idp's save_token writes it, the sign-in (user, code, sid, auth_time, acr, amr, claims) copied
# from the code row it redeems.
APPEND_TOKEN = text(
    "INSERT INTO tokens (jti, client_id, user_id, scope, grant_type, family_id, authorization_code_id, sid, "
    "auth_time, acr, amr, claims, issued_at, access_expires_at, refresh_token_hash, refresh_expires_at, "
    "family_expires_at, act) SELECT :jti, client_id, user_id, :scope, 'authorization_code', :family_id, id, sid, "
    "auth_time, acr, amr, claims, :issued_at, :access_expires_at, :refresh_token_hash, :refresh_expires_at, "
    ":family_expires_at, 'null' FROM authorization_codes WHERE id = :id RETURNING id")

# create_app's arguments that are idp's settings of the same name (IDP_ + the name in capitals).
LIFETIMES = ("access_token_ttl", "id_token_ttl", "refresh_token_ttl", "refresh_token_max_age", "session_idle_timeout",
             "session_max_age", "auth_code_ttl")
# idp's scopes (its OAUTH2_SCOPES_SUPPORTED), and those of its own APIs, which the floor does not issue.
SCOPES = frozenset({*claims.SCOPES, *claims.ADMIN_SCOPES, claims.ACCOUNT_SCOPE})
API_SCOPES = frozenset({*claims.ADMIN_SCOPES, claims.ACCOUNT_SCOPE})
SINGLE_VALUED = ("client_id", "response_type", "redirect_uri", "scope", "state", "nonce", "code_challenge",
                 "code_challenge_method")
# What the floor does not implement: a request with one of these is refused rather than answered as if it were not.
UNSUPPORTED = ("prompt", "max_age", "acr_values", "claims", "id_token_hint", "request", "request_uri",
               "response_mode", "dpop_jkt")
PKCE = re.compile(r"^[a-zA-Z0-9\-._~]{43,128}$")  # RFC 7636 4.1 (verifier), 4.2 (an S256 challenge's alphabet)
AMR, ACR = ["pwd"], ACR_PASSWORD  # a password sign-in
GENERIC_FAILURE = "Incorrect email or password."  # idp's one message (ASVS V6.3.8, SECURITY.md 19/21)
SESSION_COOKIE = "__Host-floor_session"
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body><main>
<h1>Sign in</h1>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="/login" novalidate>
<input type="hidden" name="csrf_token" value="{{ csrf_token }}">
<label for="email">Email</label>
<input type="email" id="email" name="email" value="{{ email }}" autocomplete="username" required>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
</main></body></html>
"""
ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title></head>
<body><main><h1>{{ title }}</h1><p>{{ message }}</p></main></body></html>
"""


class Refused(Exception):
    """An authorization request refused: ``error`` (RFC 6749 4.1.2.1), sent back to the redirect URI once that is
    known good, else shown on a page."""

    def __init__(self, error: str, description: str, redirect_uri: str | None = None):
        super().__init__(description)
        self.error, self.description, self.redirect_uri = error, description, redirect_uri


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def create_app(database_url: str, issuer: str, secret_key: str, access_token_ttl: int = 900, id_token_ttl: int = 3600,
               refresh_token_ttl: int = 1209600, refresh_token_max_age: int = 7776000,
               session_idle_timeout: int = 1800, session_max_age: int = 43200, auth_code_ttl: int = 60) -> Flask:
    """The floor app on ``database_url`` (idp's database), signing with idp's key (``secret_key``: idp's
    IDP_SECRET_KEY, which encrypts it and, through a derived key, signs the floor's flow cookie). The lifetimes are
    idp's settings of the same names (IDP_ACCESS_TOKEN_TTL...), their defaults idp's (idp.config)."""
    from idp.security.keys import decrypt_private, import_private  # at start only: the key as idp stores it
    from idp.security.passwords import verify_password  # the hash as idp and the bench's limit compute it

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")  # single statements
    writes = create_engine(database_url)  # a transaction per request, committed by it
    with engine.connect() as connection:
        signing_key = import_private(decrypt_private(connection.execute(SIGNING_KEY).scalar_one(), secret_key))
    app = Flask(__name__)
    # The flow cookie's signing key: derived from idp's secret, never idp's own cookies' key.
    app.secret_key = hmac.new(secret_key.encode(), b"bench floor_signin flow cookie", hashlib.sha256).hexdigest()
    app.config.update(SESSION_COOKIE_NAME="__Host-floor_flow", SESSION_COOKIE_SECURE=True,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/")
    page, error_page = app.jinja_env.from_string(PAGE), app.jinja_env.from_string(ERROR_PAGE)
    verify_password(None, "")  # the unknown user's dummy hash, made once at start as idp makes it on first use

    def html(template, status: int = 200, **values) -> Response:
        return Response(template.render(**values), status, mimetype="text/html")

    def authorization_request(params, row) -> dict:
        """The request's parameters once valid for the client ``row`` (AUTHORIZE's), else Refused."""
        if any(len(params.getlist(name)) > 1 for name in SINGLE_VALUED):
            raise Refused("invalid_request", "A parameter is repeated.")
        if row is None:
            raise Refused("invalid_client", "Unknown client.")
        registered = list(row.redirect_uris or [])
        redirect_uri = params.get("redirect_uri") or (registered[0] if len(registered) == 1 else None)
        if not redirect_uri or not redirect_uri_registered(redirect_uri, registered):
            raise Refused("invalid_request", "Redirect URI is not registered.")
        if params.get("response_type") != "code" or "authorization_code" not in (row.grant_types or []):
            raise Refused("unsupported_response_type", "response_type must be code.", redirect_uri)
        if row.require_pushed_authorization_requests:
            raise Refused("invalid_request", "This client must push its authorization requests.", redirect_uri)
        oversized = oversized_parameter(dict(params.lists()))
        if oversized:
            raise Refused("invalid_request", f"'{oversized}' is too long.", redirect_uri)
        scopes = (params.get("scope") or "").split()
        if not set(scopes) <= SCOPES:
            raise Refused("invalid_scope", "A scope is not supported.", redirect_uri)
        if "openid" not in scopes or set(scopes) & API_SCOPES:  # an OpenID Connect sign-in; not idp's API scopes
            raise Refused("invalid_scope", "This floor answers openid requests without idp's API scopes.",
                          redirect_uri)
        unsupported = next((name for name in UNSUPPORTED if name in params), None)
        if unsupported:
            raise Refused("invalid_request", f"'{unsupported}' is not supported by the floor.", redirect_uri)
        challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
        if row.token_endpoint_auth_method == "none" and not challenge:  # RFC 9700 2.1.1: public clients use PKCE
            raise Refused("invalid_request", "Public clients must send a PKCE code_challenge (S256).", redirect_uri)
        if (challenge or method) and (method != "S256" or not challenge or not PKCE.match(challenge)):
            raise Refused("invalid_request", "code_challenge_method must be S256.", redirect_uri)
        if params.get("nonce") and row.nonce_used:
            raise Refused("invalid_request", "Replay attack", redirect_uri)
        if row.mfa == "required" or (row.min_acr and row.min_acr != ACR):
            raise Refused("interaction_required", "This floor signs in with a password only.", redirect_uri)
        if not row.first_party:  # idp asks a third-party client's user for consent: the floor has no consent screen
            raise Refused("consent_required", "This floor answers first-party clients only.", redirect_uri)
        return {"client_id": row.client_id, "redirect_uri": redirect_uri, "redirect_param": params.get("redirect_uri"),
                "scope": " ".join(scopes), "state": params.get("state"), "nonce": params.get("nonce"),
                "code_challenge": challenge, "code_challenge_method": method}

    def issue_code(connection, checked: dict, user_id: int, sid: str, auth_time: datetime, acr: str, amr: list,
                   now: datetime) -> Response:
        """Write the code of the request ``checked`` (authorization_request's) for the session ``sid``, with its
        ``session_clients`` row (ISSUE_CODE), and answer with the redirect that carries it."""
        code = secrets.token_urlsafe(36)
        connection.execute(ISSUE_CODE, {
            "code_hash": _sha256(code), "client_id": checked["client_id"], "user_id": user_id,
            "redirect_uri": checked["redirect_param"] or "", "scope": checked["scope"], "nonce": checked["nonce"],
            "code_challenge": checked["code_challenge"], "code_challenge_method": checked["code_challenge_method"],
            "sid": sid, "auth_time": auth_time, "acr": acr, "amr": json.dumps(amr), "issued_at": now,
            "expires_at": now + timedelta(seconds=auth_code_ttl)})
        answer = {"code": code, **({"state": checked["state"]} if checked["state"] is not None else {}), "iss": issuer}
        return _back(checked["redirect_uri"], answer)

    def refused(error: Refused, state: str | None) -> Response:
        """Before the redirect URI is trusted a page (SECURITY.md 2), after it the error back there with iss."""
        if error.redirect_uri is None:
            return html(error_page, 400, title="This sign-in request is not valid",
                        message=f"{error.error}: {error.description}")
        return _back(error.redirect_uri, {"error": error.error, "error_description": error.description,
                                          **({"state": state} if state is not None else {}), "iss": issuer})

    def live(row, now: datetime) -> bool:
        """Whether AUTHORIZE's session is live (idp: sessions.load, LoginSession.timed_out)."""
        return row.sid is not None and row.ended_at is None and not row.disabled and \
            (now - row.last_seen_at).total_seconds() <= session_idle_timeout and \
            (now - row.session_created_at).total_seconds() <= session_max_age

    @app.get("/authorize")
    def authorize() -> Response:
        params = request.args
        cookie = request.cookies.get(SESSION_COOKIE)
        client_id = params.get("client_id", "")
        if not client_id or len(client_id) > 64 or "\x00" in client_id:
            return refused(Refused("invalid_client", "Unknown client."), None)
        with engine.connect() as connection:
            row = connection.execute(AUTHORIZE, {"client_id": client_id, "nonce": params.get("nonce"),
                                                 "session_hash": _sha256(cookie) if cookie else None}).first()
        try:
            checked = authorization_request(params, row)
        except Refused as error:
            return refused(error, params.get("state"))
        now = datetime.now(UTC)
        if not live(row, now):  # remember the request, and show the sign-in page at once (as idp does)
            session["request"] = checked
            session["csrf"] = secrets.token_urlsafe(24)
            return html(page, csrf_token=session["csrf"], email="", error=None)
        if row.email_verified_at is None:  # idp would ask to verify the address: not the floor's
            return refused(Refused("interaction_required", "Email address unverified.", checked["redirect_uri"]),
                           checked["state"])
        with engine.connect() as connection:  # one statement, committed on its own (autocommit)
            if now - row.last_seen_at > TOUCH_INTERVAL:
                connection.execute(TOUCH_SESSION, {"now": now, "sid": row.sid})
            return issue_code(connection, checked, row.user_id, row.sid, row.auth_time, row.acr, row.amr, now)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response:
        if "request" not in session or "csrf" not in session:
            return html(error_page, 400, title="This sign-in has expired",
                        message="It took too long, was already completed, or was started in another browser.")
        if request.method == "GET":
            return html(page, csrf_token=session["csrf"], email="", error=None)
        if not hmac.compare_digest(request.form.get("csrf_token", "").encode(), session["csrf"].encode()):
            return html(error_page, 400, title="Bad Request", message="The CSRF token is missing or invalid.")
        email = request.form.get("email", "").strip().lower()
        password = request.form.get("password", "")
        if not email or "\x00" in email or len(email) > 320 or not password or len(password) > 4096:
            return html(page, csrf_token=session["csrf"], email=email, error=GENERIC_FAILURE)
        with engine.connect() as connection:
            user = connection.execute(USER, {"email": email}).first()
        matches = verify_password(user.password_hash if user else None, password)  # unknown: a dummy, same cost
        reason = "unknown_user" if user is None else "bad_password" if not matches else \
            "disabled" if user.disabled else "locked" if user.locked_at is not None else None
        if reason is not None:
            with writes.begin() as connection:  # the failure stays (audited, counted): committed before the answer
                if reason == "bad_password":
                    connection.execute(COUNT_FAILURE, {"id": user.id})
                # as idp.audit.record writes it: an unknown user's address as the row's subject_email
                _append_audit(connection, "login.failure", user.id if user else None, user.email if user else email,
                              None, {"reason": reason, "email": None} if user else {"reason": reason})
            return html(page, csrf_token=session["csrf"], email=email, error=GENERIC_FAILURE)
        if user.mfa_required or user.enrolled or user.email_verified_at is None:
            # idp would go on to a second factor or the address's verification: not the floor's
            return html(error_page, 403, title="Not for the floor",
                        message="This floor signs in verified users with a password only.")
        token, sid = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        now = datetime.now(UTC)
        checked = session.pop("request")  # the authorization request, validated when it came (GET /authorize)
        session.pop("csrf")
        with writes.begin() as connection:  # committed on leaving the block, before the answer
            if user.failed_logins:
                connection.execute(RESET_FAILURES, {"id": user.id})
            connection.execute(START_SESSION, {"sid": sid, "token_hash": _sha256(token), "user_id": user.id,
                                               "now": now, "amr": json.dumps(AMR), "acr": ACR,
                                               "ip": request.remote_addr,
                                               "user_agent": request.user_agent.string[:512]})
            _append_audit(connection, "login.success", user.id, user.email, checked["client_id"],
                          {"amr": AMR, "acr": ACR, "sid": sid})
            response = issue_code(connection, checked, user.id, sid, now, ACR, AMR, now)  # answered at once, as idp
        response.set_cookie(SESSION_COOKIE, token, max_age=session_max_age, secure=True, httponly=True,
                            samesite="Lax", path="/")
        return response

    @app.post("/token")
    def token() -> Response:
        client_id, secret = _basic()
        if not client_id:
            return _unauthorized()
        if request.form.get("grant_type") != "authorization_code":
            return _json({"error": "unsupported_grant_type"}, 400)
        code = request.form.get("code")
        with engine.connect() as connection:
            row = connection.execute(CODE, {"client_id": client_id,
                                            "hash": _sha256(code) if code and len(code) <= 512 else None}).first()
        presented = hashlib.sha256(secret.encode()).hexdigest()
        if row is None or row.client_secret_hash is None or row.token_endpoint_auth_method != "client_secret_basic" \
                or not hmac.compare_digest(row.client_secret_hash.encode(), presented.encode()):
            return _unauthorized()
        if row.dpop_bound_access_tokens:  # RFC 9449 5.2: it must send a proof, and the floor verifies none
            return _json({"error": "invalid_dpop_proof"}, 400)
        if "authorization_code" not in (row.grant_types or []):
            return _json({"error": "unauthorized_client"}, 400)
        if not code:
            return _json({"error": "invalid_request", "error_description": "Missing 'code' in request."}, 400)
        if row.id is None or row.used_at is not None or row.dpop_jkt:  # (a code used once is refused again)
            return _json({"error": "invalid_grant", "error_description": "Invalid 'code' in request."}, 400)
        now = datetime.now(UTC)
        failure = redemption_failure(row, now)
        if failure is not None:  # found and refused: used up all the same, as at idp
            with engine.connect() as connection:
                connection.execute(CLAIM_CODE, {"id": row.id, "now": now})
            return _json({"error": "invalid_grant", "error_description": failure}, 400)
        allowed = (row.client_scope or "").split()  # what the client is registered for (ClientAccessors)
        scope = " ".join(s for s in dict.fromkeys(row.scope.split()) if s in allowed)
        if (row.id_token_signed_response_alg or "RS256") != "RS256":  # the floor signs RS256 only
            return _json({"error": "unauthorized_client"}, 400)
        iat = int(now.timestamp())
        expires_in = row.access_token_ttl or access_token_ttl
        jti = secrets.token_urlsafe(12)
        sign_in = {"auth_time": int(row.auth_time.timestamp()), **({"acr": row.acr} if row.acr else {}),
                   **({"amr": list(row.amr)} if row.amr else {}), **({"sid": row.sid} if row.sid else {})}
        claims = {"iss": issuer, "exp": iat + expires_in, "client_id": client_id, "iat": iat, "jti": jti,
                  "scope": scope, "sub": row.subject, "aud": client_id, **sign_in}
        access_token = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": signing_key.kid}, claims, signing_key)
        at_hash = base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()[:16]).rstrip(b"=")
        id_claims = {"iss": issuer, "aud": [client_id], "iat": iat, "exp": iat + id_token_ttl, **sign_in,
                     **({"nonce": row.nonce} if row.nonce else {}), "at_hash": at_hash.decode(),
                     **_released(row, scope.split(), (row.claims or {}).get("id_token"))}
        id_token = jwt.encode({"alg": "RS256", "kid": signing_key.kid}, id_claims, signing_key)
        # OIDC Core 11: offline_access, or a client registered for refresh tokens with its sessions
        refresh = "refresh_token" in (row.grant_types or []) and \
            ("offline_access" in scope.split() or row.refresh_tokens_for_sessions)
        refresh_token = secrets.token_urlsafe(32) if refresh else None
        answer = {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in, "scope": scope,
                  "id_token": id_token, **({"refresh_token": refresh_token} if refresh_token else {})}
        issued_at = datetime.fromtimestamp(iat, UTC)
        family_expires_at = issued_at + timedelta(seconds=refresh_token_max_age)
        idle = row.refresh_token_ttl or refresh_token_ttl
        with writes.begin() as connection:  # committed on leaving the block, before the answer
            if connection.execute(CLAIM_CODE, {"id": row.id, "now": now}).rowcount != 1:
                # Used by a concurrent request since it was read (idp revokes what that one issued: not the floor's).
                return _json({"error": "invalid_grant", "error_description": "Invalid 'code' in request."}, 400)
            connection.execute(APPEND_TOKEN, {
                "id": row.id, "jti": jti, "scope": scope, "family_id": secrets.token_urlsafe(16),
                "issued_at": issued_at, "access_expires_at": datetime.fromtimestamp(iat + expires_in, UTC),
                "refresh_token_hash": _sha256(refresh_token) if refresh_token else None,
                "refresh_expires_at": min(issued_at + timedelta(seconds=idle), family_expires_at)
                if refresh_token else None,
                "family_expires_at": family_expires_at if refresh_token else None})
            _append_audit(connection, "token.issued", row.user_id, row.email, client_id,
                          {"grant_type": "authorization_code", "jti": jti, "scope": scope,
                           "with_refresh_token": refresh_token is not None, "dpop": False})
        return _json(answer)

    def redemption_failure(row, now: datetime) -> str | None:
        """Why a found, unused code of this client cannot be redeemed by this request (Authlib's
        AuthorizationCodeGrant and CodeChallenge, as idp runs them), or None."""
        if row.expires_at <= now:
            return "Invalid 'code' in request."
        if row.redirect_uri and request.form.get("redirect_uri") != row.redirect_uri:
            return "Invalid 'redirect_uri' in request."
        verifier = request.form.get("code_verifier")
        if not row.code_challenge and verifier:  # RFC 9700 4.8: no challenge in the request, no verifier now
            return "The authorization request had no 'code_challenge', but a 'code_verifier' was provided."
        if row.code_challenge:  # RFC 7636 4.6
            if not verifier:
                return "Missing 'code_verifier'"
            if not PKCE.match(verifier):
                return "Invalid 'code_verifier'"
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=")
            if not hmac.compare_digest(digest.decode(), row.code_challenge):
                return "Code challenge failed."
        if row.user_id is None or row.disabled:
            return "Invalid user."
        return None

    return app


def _back(redirect_uri: str, params: dict) -> Response:
    """A 302 to the client's redirect URI with ``params`` added to its query (RFC 6749 4.1.2)."""
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return Response(status=302, headers={"Location": redirect_uri + separator + urlencode(params)})


def from_environment() -> Flask:
    """The floor app as bench/run.py serves it under gunicorn (``floor_signin:from_environment()``)."""
    return app_from_environment(create_app, LIFETIMES)
