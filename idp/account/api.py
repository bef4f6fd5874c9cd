"""The account API, /api/v1: a first-party app manages its signed-in user's own account with JSON (what the REST
service idp replaces offered), on the same code as the hosted account and security pages.

Callers present a bearer access token of idp's own (RFC 6750) issued to a first-party client with the
``idp:account`` scope (the challenge endpoint, idp.oidc.challenge, or the code flow). Every change to a credential
or factor needs a recent sign-in strong enough for the user, exactly as the security page does; otherwise the answer
is 401 with an RFC 9470 challenge (``insufficient_user_authentication`` with ``acr_values`` and ``max_age``), and
the app steps up at the challenge endpoint with those values. Errors are RFC 9457 problem documents.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749.errors import OAuth2Error
from email_validator import EmailNotValidError, validate_email
from flask import Blueprint, current_app, g, jsonify, request
from flask_babel import force_locale
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from idp import audit, i18n
from idp.account import email_change, lifecycle, passwords
from idp.account import phone as profile_phone
from idp.account import signup as accounts
from idp.account.openapi import document
from idp.extensions import csrf, db, limiter
from idp.http import bearer_challenge, bearer_token, client_address, external_url, problem
from idp.jobs import enqueue
from idp.login import onetime, sessions, verification
from idp.login.assurance import ACR_MFA, ACR_PASSWORD, meets
from idp.login.codes import normalize_phone
from idp.login.context import confirmed_factors
from idp.login.enrolment import notify_change
from idp.login.factors import REGISTRY
from idp.login.factors.base import EnrolContext
from idp.login.factors.recovery_code import new_recovery_codes_for
from idp.login.factors.totp import TotpCredential, confirm_totp, start_totp, totp_display
from idp.login.factors.webauthn import add_webauthn, registration_options
from idp.models import Client, Consent, Device, Factor, LoginSession, OneTimeToken, Token, User, utcnow
from idp.models.user import normalize_email
from idp.oidc.challenge import start_signup
from idp.oidc.claims import ACCOUNT_SCOPE, SCOPE_DESCRIPTIONS
from idp.oidc.server import current_server, revoke_family, revoke_for_client
from idp.security.tokens import token_hash
from idp.security.webauthn import WebAuthnFailed, new_challenge

bp = Blueprint("account_api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # bearer tokens, never cookies


def _per_token() -> str:
    """The rate limit's key: the access token (so, per user and app), or the client address without one."""
    authorization = request.headers.get("Authorization", "")
    return "api:" + (token_hash(authorization)[:32] if authorization else client_address())


limiter.limit(lambda: current_app.config["IDP_RATELIMIT_API"], key_func=_per_token)(bp)


def first_party_origins() -> frozenset[str]:
    """The web origins of the first-party clients' redirect URIs: where their single-page apps run."""
    uris = db.session.execute(db.select(Client.redirect_uris).where(Client.first_party.is_(True))).scalars()
    origins = set()
    for listed in uris:
        for uri in listed or []:
            parts = urlsplit(uri)
            if parts.scheme in ("https", "http") and parts.netloc:
                origins.add(f"{parts.scheme}://{parts.netloc}")
    return frozenset(origins)


@bp.after_app_request
def cors(response: Response) -> Response:
    """CORS for the account API and the challenge endpoint, for first-party origins only: a single-page app of
    your own may call them from the browser, nobody else's page may read the answers. Bearer tokens, no cookies,
    so no credentials are allowed."""
    origin = request.headers.get("Origin")
    if not origin or not (request.path.startswith("/api/v1/") or request.path == "/authorize-challenge"):
        return response
    response.vary.add("Origin")
    if origin in first_party_origins():
        response.headers["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, DPoP"
            response.headers["Access-Control-Max-Age"] = "600"
        else:  # the nonce a DPoP proof must carry next, and the challenges (RFC 9449 8, 9)
            response.headers["Access-Control-Expose-Headers"] = "DPoP-Nonce, WWW-Authenticate"
    return response


def _challenge(error: str | None = None, description: str = "", **params: Any) -> dict[str, str]:
    return bearer_challenge("idp-account", error, description, **params)


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """A view for a user's token of a first-party client with the idp:account scope."""
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = bearer_token("idp-account")
        if isinstance(token, Response):
            return token
        client = db.session.execute(db.select(Client).where(Client.client_id == token.client_id)).scalar_one_or_none()
        user = db.session.get(User, token.user_id) if token.user_id is not None else None
        if (user is None or client is None or not client.first_party
                or ACCOUNT_SCOPE not in (token.scope or "").split()):
            return problem(403, "Insufficient scope", "A user's token of a first-party app with the idp:account "
                           "scope is required.", _challenge("insufficient_scope", "idp:account is required",
                                                            scope=ACCOUNT_SCOPE))
        if user.disabled or user.deleted_at is not None:
            return problem(401, "Invalid token", "The account is disabled.",
                           _challenge("invalid_token", "The account is disabled"))
        g.api_token, g.api_user = token, user
        with force_locale(i18n.first_supported(user.locale) or i18n.LANGUAGES[0]):  # notices in their language
            return view(*args, **kwargs)
    return wrapped


def recent_sign_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """A change to a credential or factor: the token's sign-in must be within IDP_STEP_UP_MAX_AGE and reach the
    level the user signs in at (MFA once they have a factor), as on the security page; otherwise RFC 9470."""
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token: Token = g.api_token
        user: User = g.api_user
        max_age = current_app.config["IDP_STEP_UP_MAX_AGE"]
        level = ACR_MFA if confirmed_factors(user) or user.mfa_required else ACR_PASSWORD
        fresh = token.auth_time is not None and utcnow() - token.auth_time <= timedelta(seconds=max_age)
        if not fresh or not meets(token.acr or "", level):
            return problem(401, "Sign in again", "This change needs a recent sign-in at the level shown in the "
                           "WWW-Authenticate challenge (RFC 9470): step up at the authorization challenge endpoint.",
                           _challenge("insufficient_user_authentication", "A more recent or stronger sign-in is "
                                      "required", acr_values=level, max_age=max_age),
                           acr_values=level, max_age=max_age)
        return view(*args, **kwargs)
    return wrapped


def user() -> User:
    return g.api_user


def _when(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def profile_json(person: User) -> dict[str, Any]:
    return {"sub": person.subject, "email": person.email, "email_verified": person.email_verified,
            "name": person.name, "phone_number": person.phone, "phone_number_verified": person.phone_verified,
            "locale": person.locale, "mfa": bool(confirmed_factors(person)), "created_at": _when(person.created_at)}


def _body() -> dict[str, Any] | Response:
    data = request.get_json(silent=True) if request.is_json else None
    if not isinstance(data, dict):
        return problem(400, "Invalid request", "Send a JSON object (Content-Type: application/json).")
    if any(isinstance(value, str) and "\x00" in value for value in (*data, *data.values())):
        return problem(400, "Invalid request", "A NUL character is refused in every field.")
    return data


def _forms_limit() -> str:
    return current_app.config["IDP_RATELIMIT_FORMS"]


def _json(body: Any, status: int, no_store: bool = False) -> Response:
    """A JSON answer with its status (202 for a code sent, 201 for a factor added); ``no_store`` for a secret."""
    response = jsonify(body)
    response.status_code = status
    if no_store:
        response.headers["Cache-Control"] = "no-store"
    return response


def _invalid(errors: dict[str, str]) -> Response:
    return problem(400, "Invalid request", "; ".join(f"{k}: {v}" for k, v in errors.items()), errors=errors)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return jsonify(document(current_app.config["IDP_ISSUER"]))


# --- the profile ------------------------------------------------------------------------------------------------

@bp.get("/me")
@signed_in
def me() -> Response:
    """The signed-in user's profile."""
    return jsonify(profile_json(user()))


@bp.patch("/me")
@signed_in
def update_me() -> Response:
    """Change the name or the language (the email and phone change through their own verified flows)."""
    data = _body()
    if isinstance(data, Response):
        return data
    errors = {name: "not a field that can be changed here" for name in data if name not in ("name", "locale")}
    name, locale = data.get("name"), data.get("locale", user().locale)
    if "name" in data and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        errors["name"] = "a name has 1 to 200 characters"
    if "locale" in data and locale is not None and locale not in i18n.LANGUAGES:
        errors["locale"] = f"one of {', '.join(i18n.LANGUAGES)}, or null"
    if errors:
        return _invalid(errors)
    person = user()
    before = {"name": person.name, "locale": person.locale}
    if isinstance(name, str):
        person.name = name.strip()
    if "locale" in data:
        person.locale = locale
    changes = {key: [before[key], getattr(person, key)] for key in before if before[key] != getattr(person, key)}
    if changes:
        audit.record("profile.updated", subject=person, changes=changes, via="api")
    db.session.commit()
    return jsonify(profile_json(person))


@bp.delete("/me")
@signed_in
@recent_sign_in
def delete_me() -> Response:
    """Delete the account: signed out everywhere at once, removed for good after the grace window unless the mailed
    link restores it."""
    lifecycle.delete(user(), via="api")
    return Response(status=204)


@bp.get("/me/export")
@signed_in
@recent_sign_in
def export_me() -> Response:
    """Everything idp holds about the user, as JSON (no secrets)."""
    return jsonify(lifecycle.export(user()))


# --- registration -----------------------------------------------------------------------------------------------

def _app_client(data: dict[str, Any]) -> Client | Response:
    """The first-party app calling before any sign-in: a confidential one authenticates (HTTP Basic), a public one
    names itself with client_id."""
    if "Authorization" in request.headers:
        server = current_server()
        try:
            client = server.authenticate_client(server.create_oauth2_request(request), ["client_secret_basic"],
                                                endpoint="account_registration")
        except OAuth2Error:
            return problem(401, "Invalid client", "Client authentication failed.", _challenge("invalid_client"))
    else:
        client_id = data.get("client_id")
        client = db.session.execute(db.select(Client).where(Client.client_id == str(client_id)[:64])
                                    ).scalar_one_or_none() if client_id else None
        if client is None or client.token_endpoint_auth_method != "none":
            return problem(401, "Invalid client", "Name a public first-party client (client_id), or authenticate.")
    if not client.first_party:
        return problem(403, "Forbidden", "Only first-party apps may register users.")
    return client


@bp.post("/register")
@limiter.limit(_forms_limit)
def register() -> Response:
    """Create an account (unverified) and mail the code that verifies it; the same 202 answer whether or not the
    address has an account (that address gets an "account exists" mail instead). The app then sends the code to
    the authorization challenge endpoint with the auth_session, and receives an authorization code."""
    data = _unsigned_body()
    if isinstance(data, Response):
        return data
    client = _app_client(data)
    if isinstance(client, Response):
        return client
    allowed = {"client_id", "email", "name", "password", "scope", "code_challenge", "code_challenge_method", "nonce"}
    errors = {name: "not a field of a registration" for name in set(data) - allowed}
    email, name, password = data.get("email", ""), data.get("name", ""), data.get("password", "")
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        errors["email"] = "a valid email address"
    if not name.strip() or len(name) > 200:
        errors["name"] = "a name has 1 to 200 characters"
    if not password:
        errors["password"] = "a password"
    if errors:
        return _invalid(errors)
    registration = accounts.register(email, name, password, via="api", client_id=client.client_id)
    if registration.problems:
        db.session.rollback()
        return _invalid({"password": " ".join(registration.problems)})
    return start_signup(client, data, registration.user, registration.existing)


@bp.post("/email/verify")
@limiter.limit(_forms_limit)
def verify_email_link() -> Response:
    """Verify an address with the token of the verification mail's link (the part after '#'); no sign-in needed
    (the mail's code is answered at the challenge endpoint instead)."""
    data = _unsigned_body()
    if isinstance(data, Response):
        return data
    if set(data) - {"token"} or not data.get("token"):
        return _invalid({"token": "the token of the mailed link"})
    now = utcnow()
    row = verification.link_row(data["token"].strip().rpartition("#")[2], now, current_app.config)
    if row is None or not verification.verify_by_link(row, now, ip=g.client_ip, user_agent=g.user_agent):
        return problem(400, "Invalid token", "The link has expired, was already used, or was replaced.")
    db.session.commit()
    return Response(status=204)


@bp.post("/email/verification")
@signed_in
@limiter.limit(_forms_limit)
def resend_verification() -> Response:
    """Mail the signed-in user a new verification link (202), unless the address is verified already (409)."""
    if user().email_verified:
        return problem(409, "Conflict", "The address is verified already.")
    verification.send_verification(user(), now=utcnow(), config=current_app.config, url=external_url)
    audit.record("email.verification_sent", subject=user(), via="api")
    db.session.commit()
    return Response(status=202)


# --- passwords --------------------------------------------------------------------------------------------------

def _password_errors(errors: dict[str, list[str]], names: dict[str, str]) -> Response:
    return _invalid({names.get(field, field): " ".join(messages) for field, messages in errors.items()})


@bp.post("/me/password")
@signed_in
@recent_sign_in
def change_password() -> Response:
    """Change the password with the current one (throttled like a sign-in); the user's other sessions end and they
    are mailed. This token's session stays."""
    data = _body()
    if isinstance(data, Response):
        return data
    current, new = data.get("current_password"), data.get("new_password")
    if set(data) - {"current_password", "new_password"} or not isinstance(current, str) or not isinstance(new, str):
        return _invalid({"body": "current_password and new_password, both strings"})
    token: Token = g.api_token
    keep = db.session.execute(db.select(LoginSession).where(LoginSession.sid == token.sid)).scalar_one_or_none() \
        if token.sid else None
    errors = passwords.change(user(), current, new, ip=g.client_ip, keep=keep, via="api")
    if errors is not None:
        return _password_errors(errors, {"current": "current_password", "password": "new_password"})
    return Response(status=204)


def _unsigned_body() -> dict[str, Any] | Response:
    """The body of a call made before any sign-in (forgot, reset): a JSON object of strings."""
    data = _body()
    if isinstance(data, Response):
        return data
    if not all(isinstance(value, str) and len(value) <= 4096 for value in data.values()):
        return _invalid({"body": "string values of at most 4096 characters"})
    return data


@bp.post("/password/forgot")
@limiter.limit(_forms_limit)
def forgot_password() -> Response:
    """Mail a reset link, as /forgot does: 202 whether or not the address has an account (no enumeration)."""
    data = _unsigned_body()
    if isinstance(data, Response):
        return data
    email = data.get("email", "")
    if set(data) - {"email"} or not email or len(email) > 320:
        return _invalid({"email": "an email address"})
    enqueue("start_password_reset", email=normalize_email(email), ip=g.client_ip, user_agent=g.user_agent)
    db.session.commit()  # sends the job (idp.jobs); the request itself wrote nothing
    return Response(status=202)


@bp.post("/password/reset")
@limiter.limit(_forms_limit)
def reset_password() -> Response:
    """Set a new password with the token of a mailed reset link (the part after '#'): used once; every session ends
    and every token is revoked; the app then signs the user in again."""
    data = _unsigned_body()
    if isinstance(data, Response):
        return data
    if set(data) - {"token", "password"} or not data.get("token") or "password" not in data:
        return _invalid({"body": "token and password"})
    row = passwords.reset_link(data["token"].strip().rpartition("#")[2])
    if row is None:
        return problem(400, "Invalid token", "The link has expired, was already used, or was replaced.")
    errors = passwords.reset(row, data["password"], via="api")
    if errors is not None:
        if "token" in errors:
            return problem(400, "Invalid token", "The link has expired, was already used, or was replaced.")
        return _password_errors(errors, {})
    return Response(status=204)


# --- the email address: the old one stays until the new one is proved by the code mailed to it ---

def _session_fields(*names: str) -> tuple[dict[str, Any], str] | Response:
    """A change bound to this token's sign-in session (a texted or mailed code): its JSON body, which must hold
    exactly ``names`` as strings, and the session's id; or the problem document that refuses the request."""
    data = _body()
    if isinstance(data, Response):
        return data
    sid = _session_channel()
    if isinstance(sid, Response):
        return sid
    if set(data) - set(names) or not all(isinstance(data.get(name), str) for name in names):
        return _invalid({"body": " and ".join(names) + ", as text"})
    return data, sid


@bp.post("/me/email")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def change_email() -> Response:
    """Mail a code (and a link) to a new address ({"email": ...}); it replaces the old one once proved by
    POST /me/email/verify. The same answer whether or not another account has it."""
    found = _session_fields("email")
    if isinstance(found, Response):
        return found
    data, sid = found
    try:
        new = email_change.request_change(user(), data["email"], sid=sid, via="api")
    except email_change.EmailRefused as refused:
        return _invalid({"email": str(refused)})
    db.session.commit()
    return _json({"email": new}, 202)


@bp.post("/me/email/verify")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def verify_email_change() -> Response:
    """Make the new address the account's with the code mailed to it ({"code": ...}); the old address is told."""
    found = _session_fields("code")
    if isinstance(found, Response):
        return found
    data, sid = found
    try:
        row = email_change.by_code(user(), data["code"], sid=sid)
        email_change.complete(row, used=True, via="api")
    except (onetime.CodeRejected, email_change.EmailRefused) as refused:
        db.session.commit()  # the wrong code counts
        return _invalid({"code": str(refused)})
    return jsonify(profile_json(user()))


# --- the profile phone number (OIDC Core 5.1 phone_number): verified by a texted code, as on /account/phone ---

def _session_channel() -> str | Response:
    """The sign-in session a texted code is bound to (this token's): another app or browser cannot use it."""
    sid = g.api_token.sid
    if not sid:
        return problem(400, "Invalid request", "This token has no sign-in session to bind the code to.")
    return sid


@bp.post("/me/phone")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def add_phone() -> Response:
    """Text a code to a number for the profile ({"phone": "+44 7700 900123"}); it is saved once the code comes
    back (POST /me/phone/verify). The SMS caps apply."""
    found = _session_fields("phone")
    if isinstance(found, Response):
        return found
    data, sid = found
    try:
        phone = profile_phone.send_code(user(), data["phone"], sid=sid, ip=g.client_ip, config=current_app.config)
    except profile_phone.PhoneRefused as refused:
        db.session.commit()  # the caps count refusals too
        return _invalid({"phone": str(refused)})
    db.session.commit()
    return _json({"phone": phone}, 202)


@bp.post("/me/phone/verify")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def verify_phone() -> Response:
    """Save the number as the verified profile phone with the code texted to it ({"phone", "code"})."""
    found = _session_fields("phone", "code")
    if isinstance(found, Response):
        return found
    data, sid = found
    try:
        profile_phone.confirm(user(), data["phone"], data["code"], sid=sid, now=utcnow(), config=current_app.config)
    except profile_phone.PhoneRefused as refused:
        db.session.commit()  # the wrong code counts
        return _invalid({"code": str(refused)})
    db.session.commit()
    return jsonify(profile_json(user()))


@bp.delete("/me/phone")
@signed_in
@recent_sign_in
def remove_phone() -> Response:
    """Take the number out of the profile (mailed)."""
    if not profile_phone.remove(user()):
        return problem(404, "Not found", "There is no phone number in the profile.")
    db.session.commit()
    return Response(status=204)


# --- factors ----------------------------------------------------------------------------------------------------

def factor_json(factor: Factor) -> dict[str, Any]:
    return {"id": factor.id, "kind": "otp" if factor.kind == "totp" else factor.kind, "name": factor.name,
            "created_at": _when(factor.created_at), "last_used_at": _when(factor.last_used_at),
            "confirmed": factor.confirmed_at is not None}


@bp.get("/me/factors")
@signed_in
def factors() -> Response:
    """The user's second factors (no secrets)."""
    return jsonify({"items": [factor_json(factor) for factor in confirmed_factors(user())]})


def _own_factor(factor_id: int) -> Factor | None:
    factor = db.session.get(Factor, factor_id) if 0 <= factor_id <= 2**31 - 1 else None
    return factor if factor is not None and factor.user_id == user().id else None


@bp.delete("/me/factors/<int:factor_id>")
@signed_in
@recent_sign_in
def remove_factor(factor_id: int) -> Response:
    """Remove a factor (mailed to the user, as on the security page)."""
    factor = _own_factor(factor_id)
    if factor is None:
        return problem(404, "Not found", "No such factor.")
    name, kind = factor.name, factor.kind
    factor_type = REGISTRY.get(kind)
    if factor_type is not None:
        factor_type.remove(factor)
    else:
        db.session.delete(factor)
    notify_change(user(), _("The sign-in method “%(name)s” was removed from your account.", name=name),
                  event="factor.removed", kind=kind, via="api")
    db.session.commit()
    return Response(status=204)


@bp.post("/me/factors/totp")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def start_otp() -> Response:
    """Begin adding an authenticator app: the key, its otpauth:// URI and a QR code (SVG); confirm with a code."""
    key = current_app.config["IDP_SECRET_KEY"]
    factor = start_totp(user(), utcnow(), key)
    shown = totp_display(factor, user(), key)
    db.session.commit()
    return _json({"id": factor.id, "secret": shown["secret"].replace(" ", ""), "otpauth_uri": shown["otpauth_uri"],
                  "qr_svg": shown["qr_svg"]}, 201, no_store=True)


@bp.post("/me/factors/totp/<int:factor_id>/confirm")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def confirm_otp(factor_id: int) -> Response:
    """Confirm a new authenticator app with its first code; the user is mailed."""
    data = _body()
    if isinstance(data, Response):
        return data
    factor = _own_factor(factor_id)
    if not isinstance(factor, TotpCredential) or factor.confirmed_at is not None:
        return problem(404, "Not found", "No authenticator app waiting for its first code.")
    code = data.get("code")
    if not isinstance(code, str) or not code.strip() or len(code) > 12:
        return _invalid({"code": "the 6-digit code from the app"})
    if not confirm_totp(factor, code.strip(), utcnow(), current_app.config["IDP_SECRET_KEY"]):
        db.session.commit()  # the spent time step stays spent
        return _invalid({"code": "that code is not right: use the newest code from the app"})
    notify_change(user(), _("An authenticator app was added to your account."), event="factor.added", kind="totp",
                  via="api")
    db.session.commit()
    return jsonify(factor_json(factor))


def _enrol_sms(stage: str, fields: dict[str, Any], pending: dict[str, Any]) -> Any:
    """One stage of the SMS factor's own enrolment (idp.login.factors.sms), as the security page runs it."""
    factor = REGISTRY.by_slug("phone")
    if factor is None or not factor.available():
        return problem(404, "Not found", "Text messages are not offered as a second factor here.")
    ec = EnrolContext(user=user(), now=utcnow(), ip=g.client_ip, user_agent=g.user_agent, config=current_app.config,
                      pending=pending)
    return factor.enrol_verify(stage, ec, fields)


@bp.post("/me/phones")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def add_sms_factor() -> Response:
    """Add a phone for sign-in codes: a code is texted to it ({"phone": ...}); POST /me/phones/verify with it."""
    found = _session_fields("phone")
    if isinstance(found, Response):
        return found
    data, sid = found
    result = _enrol_sms("new", {"phone": data["phone"]}, {"sid": sid})
    if isinstance(result, Response):
        return result
    db.session.commit()  # the caps count refusals too
    if not result.ok:
        return _invalid({"phone": result.error or "refused"})
    return _json({"phone": (result.pending or {}).get("phone")}, 202)


@bp.post("/me/phones/verify")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def verify_sms_factor() -> Response:
    """Add the phone as a second factor with the code texted to it ({"phone", "code"}); the user is mailed."""
    found = _session_fields("phone", "code")
    if isinstance(found, Response):
        return found
    data, sid = found
    phone = normalize_phone(data["phone"], current_app.config["IDP_DEFAULT_PHONE_REGION"])
    result = _enrol_sms("verify", {"code": data["code"]}, {"sid": sid, "phone": phone})
    if isinstance(result, Response):
        return result
    if not result.ok:
        db.session.commit()  # the wrong code counts
        return _invalid({"code": result.error or "refused"})
    notify_change(user(), result.notice, event=result.event, kind="sms", via="api")
    db.session.commit()
    added = db.session.execute(db.select(Factor).where(Factor.user_id == user().id, Factor.kind == "sms")
                               .order_by(Factor.id.desc()).limit(1)).scalar_one()
    return _json(factor_json(added), 201)


WEBAUTHN_PURPOSE = "webauthn_register"  # a registration challenge handed to an app, kept hashed until used
WEBAUTHN_TTL = 300


@bp.post("/me/factors/webauthn")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def start_webauthn() -> Response:
    """Options for navigator.credentials.create() (or the platform's passkey API) to add a passkey
    ({"passkey": true}, the default) or a security key; the challenge is bound to this token's session and used
    once, within five minutes."""
    data = _body() if request.get_data() else {}
    if isinstance(data, Response):
        return data
    sid = _session_channel()
    if isinstance(sid, Response):
        return sid
    if set(data) - {"passkey"} or not isinstance(data.get("passkey", True), bool):
        return _invalid({"passkey": "true or false"})
    factor = REGISTRY.get("webauthn")
    if factor is None or not factor.available():
        return problem(404, "Not found", "Passkeys need the issuer to be a host name; not offered here.")
    now = utcnow()
    challenge = new_challenge()
    db.session.add(OneTimeToken(purpose=WEBAUTHN_PURPOSE, user=user(), email=user().email, created_at=now,
                                expires_at=now + timedelta(seconds=WEBAUTHN_TTL), token_hash=token_hash(challenge),
                                transaction_id=f"webauthn:{sid}"))
    options = registration_options(user(), challenge, passkey=data.get("passkey", True))
    db.session.commit()
    return _json({"challenge": challenge, "options": json.loads(options)}, 200, no_store=True)


@bp.post("/me/factors/webauthn/verify")
@signed_in
@recent_sign_in
@limiter.limit(_forms_limit)
def verify_webauthn() -> Response:
    """Register the new credential ({"challenge", "credential": the registration response JSON, "name"?}); the
    challenge is used once, whatever the outcome; the user is mailed."""
    data = _body()
    if isinstance(data, Response):
        return data
    sid = _session_channel()
    if isinstance(sid, Response):
        return sid
    challenge, credential, name = data.get("challenge"), data.get("credential"), data.get("name", "")
    if (set(data) - {"challenge", "credential", "name"} or not isinstance(challenge, str)
            or not isinstance(credential, str | dict) or not isinstance(name, str) or len(name) > 100):
        return _invalid({"body": "challenge, credential (the registration response) and an optional name"})
    now = utcnow()
    row = db.session.execute(db.select(OneTimeToken).where(
        OneTimeToken.purpose == WEBAUTHN_PURPOSE, OneTimeToken.token_hash == token_hash(challenge),
        OneTimeToken.transaction_id == f"webauthn:{sid}", OneTimeToken.user_id == user().id)).scalar_one_or_none()
    if row is None or row.expires_at <= now or not onetime.use(row, now):
        return _invalid({"challenge": "unknown, used or expired: ask for new options"})
    payload = credential if isinstance(credential, str) else json.dumps(credential)
    try:
        factor, _verified = add_webauthn(user(), payload[:20000], challenge, now, name=name.strip())
    except WebAuthnFailed:
        db.session.commit()  # the challenge stays used
        return _invalid({"credential": "the registration could not be verified"})
    notify_change(user(), _("The security key or passkey “%(name)s” was added to your account.", name=factor.name),
                  event="factor.added", kind="webauthn", via="api")
    db.session.commit()
    return _json(factor_json(factor), 201)


@bp.post("/me/recovery-codes")
@signed_in
@recent_sign_in
def recovery_codes() -> Response:
    """Ten new recovery codes, shown in this answer only; the old ones stop working."""
    codes = new_recovery_codes_for(user(), utcnow(), current_app.config["IDP_SECRET_KEY"])
    notify_change(user(), _("New recovery codes were generated; the old ones no longer work."),
                  event="recovery_codes.generated", via="api")
    db.session.commit()
    return _json({"codes": codes}, 200, no_store=True)


# --- sessions, devices, applications, logout --------------------------------------------------------------------

@bp.get("/me/sessions")
@signed_in
def my_sessions() -> Response:
    """The user's live sessions (browsers and apps), this token's marked current."""
    current = g.api_token.sid
    return jsonify({"items": [{"sid": row.sid, "ip": row.ip, "user_agent": row.user_agent,
                               "created_at": _when(row.created_at), "last_seen_at": _when(row.last_seen_at),
                               "acr": row.acr, "amr": list(row.amr), "current": row.sid == current}
                              for row in sessions.live_sessions(user())]})


@bp.delete("/me/sessions/<sid>")
@signed_in
def end_my_session(sid: str) -> Response:
    """End one of the user's sessions (its online tokens stop working)."""
    row = db.session.execute(db.select(LoginSession).where(LoginSession.sid == sid[:64],
                                                           LoginSession.user_id == user().id,
                                                           LoginSession.ended_at.is_(None))).scalar_one_or_none()
    if row is None:
        return problem(404, "Not found", "No live session of yours with that id.")
    sessions.end(row, "ended_by_user", utcnow())
    audit.record("session.ended", subject=user(), sid=row.sid, via="api")
    db.session.commit()
    return Response(status=204)


@bp.get("/me/devices")
@signed_in
def my_devices() -> Response:
    """The browsers and apps the user signed in from, remembered or not."""
    rows = db.session.execute(db.select(Device).where(Device.user_id == user().id, Device.revoked_at.is_(None))
                              .order_by(Device.last_used_at.desc())).scalars()
    now = utcnow()
    return jsonify({"items": [{"id": row.id, "name": row.name, "ip": row.ip, "created_at": _when(row.created_at),
                               "last_used_at": _when(row.last_used_at),
                               "remembered_until": _when(row.remembered_until)
                               if row.remembered_until and row.remembered_until > now else None}
                              for row in rows]})


@bp.delete("/me/devices/<int:device_id>")
@signed_in
@recent_sign_in
def forget_my_device(device_id: int) -> Response:
    """Forget a device: it asks for the second factor again (the user is mailed)."""
    device = db.session.get(Device, device_id) if 0 <= device_id <= 2**31 - 1 else None
    if device is None or device.user_id != user().id or device.revoked_at is not None:
        return problem(404, "Not found", "No such device.")
    device.remembered_until = None
    device.revoked_at = utcnow()
    notify_change(user(), _("The device “%(name)s” is no longer remembered.", name=device.name),
                  event="device.forgotten", via="api")
    db.session.commit()
    return Response(status=204)


@bp.get("/me/apps")
@signed_in
def my_apps() -> Response:
    """The applications the user allowed, with what each may see."""
    rows = db.session.execute(db.select(Consent, Client).join(Client, Client.client_id == Consent.client_id)
                              .where(Consent.user_id == user().id, Consent.revoked_at.is_(None))).all()
    return jsonify({"items": [{"client_id": client.client_id, "name": client.name, "scopes": consent.scopes,
                               "descriptions": [str(SCOPE_DESCRIPTIONS.get(s, s)) for s in consent.scopes],
                               "granted_at": _when(consent.updated_at)} for consent, client in rows]})


@bp.delete("/me/apps/<client_id>")
@signed_in
def revoke_my_app(client_id: str) -> Response:
    """Withdraw an application's access: the consent ends and its tokens for the user are revoked."""
    consent = db.session.execute(db.select(Consent).where(Consent.user_id == user().id,
                                                          Consent.client_id == client_id[:128],
                                                          Consent.revoked_at.is_(None))).scalar_one_or_none()
    if consent is None:
        return problem(404, "Not found", "That application has no access to your account.")
    consent.revoked_at = utcnow()
    revoked = revoke_for_client(user(), consent.client_id, "consent_revoked")
    audit.record("consent.revoked", subject=user(), client_id=consent.client_id, tokens_revoked=revoked, via="api")
    db.session.commit()
    return Response(status=204)


@bp.post("/logout")
@signed_in
def logout() -> Response:
    """End the session this token came from and revoke its token family; ``{"everywhere": true}``: every session
    and token of the user."""
    everywhere = False
    if request.get_data():
        data = _body()
        if isinstance(data, Response):
            return data
        if set(data) - {"everywhere"} or not isinstance(data.get("everywhere", False), bool):
            return _invalid({"everywhere": "true or false (and nothing else)"})
        everywhere = data.get("everywhere", False)
    token: Token = g.api_token
    now = utcnow()
    if everywhere:
        ended, revoked = sessions.sign_out_everywhere(user(), "signed_out_everywhere", now)
        audit.record("sessions.signed_out_everywhere", subject=user(), sessions_ended=ended, tokens_revoked=revoked,
                     via="api")
    else:
        live = db.session.execute(db.select(LoginSession).where(LoginSession.sid == token.sid)).scalar_one_or_none() \
            if token.sid else None
        if live is not None:
            sessions.end(live, "logout", now)
        revoked = revoke_family(token.family_id, "logout")
        audit.record("logout", subject=user(), sid=token.sid, tokens_revoked=revoked, via="api")
    db.session.commit()
    return Response(status=204)

