"""The admin REST API, /admin/api/v1: JSON in and out, RFC 9457 problem documents for every error, and a bearer
access token of idp's own (RFC 6750) whose scopes name the caller's roles. Every action is idp.admin.service's, the
same code the command line runs; this module only speaks HTTP.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import wraps
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request, stream_with_context
from werkzeug.wrappers import Response

from idp.admin import service
from idp.admin.bulk import csv_cell
from idp.admin.openapi import document
from idp.admin.service import Actor, AdminError, Invalid, Role
from idp.extensions import csrf, db, limiter
from idp.http import bearer_challenge, bearer_token, problem
from idp.login.assurance import meets
from idp.models import AuditEvent, LoginSession, SigningKey, User, utcnow
from idp.oidc.registration import describe

bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")
csrf.exempt(bp)  # bearer tokens, never cookies: nothing for a cross-site form to ride on
limiter.exempt(bp)

SCOPE_ROLES = {"idp:admin": Role.ADMIN, "idp:helpdesk": Role.HELPDESK, "idp:audit": Role.AUDITOR}


def _challenge(error: str | None = None, description: str = "", **params: Any) -> dict[str, str]:
    return bearer_challenge("idp-admin", error, description, **params)


def authenticated(view: Callable[..., Any]) -> Callable[..., Any]:
    """A view for callers with a live access token carrying at least one admin scope (its roles)."""
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = bearer_token("idp-admin")
        if isinstance(token, Response):
            return token
        roles = frozenset(SCOPE_ROLES[s] for s in (token.scope or "").split() if s in SCOPE_ROLES)
        person = None
        if token.user_id is not None:
            # An administrator's own token (from a first-party client): its scopes count only for the roles the
            # user holds now, and only from a sign-in as strong as the console demands.
            person = db.session.get(User, token.user_id)
            strong = meets(token.acr or "", current_app.config["IDP_ADMIN_ACR"])
            roles = roles & service.roles_of(person) if person is not None and strong else frozenset()
        if not roles:
            return problem(403, "Insufficient scope", "This token carries no admin scope that its holder may use.",
                           _challenge("insufficient_scope", "An admin scope is required",
                                      scope=" ".join(SCOPE_ROLES)))
        g.admin_actor = Actor(roles=roles, via="api", user=person, client_id=token.client_id)
        return view(*args, **kwargs)
    return wrapped


def actor() -> Actor:
    return g.admin_actor


def user_json(user: User, mfa: set[int] | None = None) -> dict[str, Any]:
    """A user as the API shows it: no secret, no hash (``mfa``: the ids with a second factor, when known)."""
    if mfa is None:
        mfa = service.with_mfa([user])
    return {
        "id": user.id, "subject": user.subject, "email": user.email, "name": user.name,
        "email_verified": user.email_verified, "phone": user.phone, "phone_verified": user.phone_verified,
        "locale": user.locale, "disabled": user.disabled, "locked": user.locked, "admin": user.is_admin,
        "roles": [{"role": grant.role, "until": grant.until.isoformat() if grant.until else None}
                  for grant in sorted(user.roles, key=lambda grant: grant.role)
                  if grant.until is None or grant.until > utcnow()],
        "mfa_required": user.mfa_required, "has_mfa": user.id in mfa,
        "created_at": user.created_at.isoformat(), "updated_at": user.updated_at.isoformat(),
        "deleted_at": user.deleted_at.isoformat() if user.deleted_at else None,
    }


def _flag(name: str) -> bool | None:
    value = request.args.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise Invalid({name: "true or false"})
    return value == "true"


def _body() -> dict[str, Any]:
    if not request.is_json:
        raise Invalid({"body": "a JSON object (Content-Type: application/json)"})
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise Invalid({"body": "a JSON object"})
    if _carries_nul(data):  # refused everywhere in idp (idp.http.refuse_nul; PostgreSQL cannot store one)
        raise Invalid({"body": "a NUL character"})
    return data


def _carries_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_carries_nul(key) or _carries_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_carries_nul(item) for item in value)
    return False


@functools.cache
def _query_parameters() -> dict[tuple[str, str], frozenset[str]]:
    """(method, path) -> the query parameters the OpenAPI document gives that operation; built once."""
    return {(method.upper(), path): frozenset(p["name"] for p in operation.get("parameters", [])
                                               if p["in"] == "query")
            for path, operations in document("")["paths"].items() for method, operation in operations.items()}


def _documented_parameters() -> frozenset[str] | None:
    """The query parameters of this request's operation (None: not a documented one)."""
    rule = request.url_rule.rule if request.url_rule is not None else ""
    path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.removeprefix(bp.url_prefix or ""))
    return _query_parameters().get((request.method, path))


@bp.before_request
def only_documented_parameters() -> Response | None:
    """A query parameter the operation does not have is a mistake (a misspelt filter would silently match
    everyone), so it is refused rather than ignored."""
    allowed = _documented_parameters()
    unknown = sorted(set(request.args) - allowed) if allowed is not None else []
    if unknown:
        return problem(400, "Invalid request", f"unknown query parameters: {', '.join(unknown)}",
                       errors={name: "not a parameter of this operation" for name in unknown})
    return None


# Other errors (404 of an unknown path, 405, 413, a malformed body) are problem documents too: the app's error
# handlers answer every path under /admin/api/ that way (idp._error_handlers).
@bp.errorhandler(AdminError)
def refused(error: AdminError) -> Response:
    titles = {400: "Invalid request", 403: "Forbidden", 404: "Not found", 409: "Conflict"}
    db.session.rollback()
    extra = {"errors": error.errors} if isinstance(error, Invalid) else {}
    return problem(error.status, titles.get(error.status, "Refused"), str(error), **extra)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return jsonify(document(current_app.config["IDP_ISSUER"]))


@bp.get("/v1/users")
@authenticated
def list_users() -> Response:
    """A page of users, filtered, with the cursor of the next page."""
    limit = _limit(50)
    filters = {name: on for name in service.FILTERS if (on := _flag(name)) is not None}
    users, cursor = service.list_users(actor(), q=request.args.get("q", ""), filters=filters,
                                       cursor=request.args.get("cursor"), limit=limit)
    mfa = service.with_mfa(users)
    return jsonify({"items": [user_json(user, mfa) for user in users], "next_cursor": cursor})


@bp.post("/v1/users")
@authenticated
def create_user() -> Response:
    """Create a user, with a password or an invitation mail (201, with the new user and its address)."""
    body = _body()
    unknown = set(body) - {"email", "name", "password", "email_verified", "admin", "invite"}
    if unknown:
        raise Invalid({name: "not a field of a new user" for name in sorted(unknown)})
    if "email" not in body:
        raise Invalid({"email": "required"})
    # The document types password as a string; the service reads None as "no password", so a JSON null must not
    # pass for an absent field.
    if "password" in body and body["password"] is None:
        raise Invalid({"password": "a string"})
    user = service.create_user(actor(), **body)
    response = jsonify(user_json(user))
    response.status_code = 201
    response.headers["Location"] = f"{request.root_path}/admin/api/v1/users/{user.id}"
    return response


@bp.get("/v1/users/<int:user_id>")
@authenticated
def get_user(user_id: int) -> Response:
    """One user."""
    return jsonify(user_json(service.get_user(actor(), user_id)))


@bp.patch("/v1/users/<int:user_id>")
@authenticated
def update_user(user_id: int) -> Response:
    """Change a user's name, email or email_verified."""
    user = service.get_user(actor(), user_id)
    return jsonify(user_json(service.update_user(actor(), user, _body())))


def _action(user_id: int, run: Callable[[User], Any]) -> Response:
    user = service.get_user(actor(), user_id)
    run(user)
    return jsonify(user_json(user))


@bp.delete("/v1/users/<int:user_id>")
@authenticated
def delete_user(user_id: int) -> Response:
    """Delete a user softly: disabled and hidden at once, restorable until purged."""
    service.delete_user(actor(), service.get_user(actor(), user_id))
    return Response(status=204)


@bp.post("/v1/users/<int:user_id>/restore")
@authenticated
def restore_user(user_id: int) -> Response:
    """Undo a deletion that was not purged yet."""
    return _action(user_id, lambda user: service.restore_user(actor(), user))


@bp.post("/v1/users/<int:user_id>/disable")
@authenticated
def disable(user_id: int) -> Response:
    """Disable a user: their sessions end and their tokens are revoked."""
    return _action(user_id, lambda user: service.disable(actor(), user))


@bp.post("/v1/users/<int:user_id>/enable")
@authenticated
def enable(user_id: int) -> Response:
    """Enable a disabled user."""
    return _action(user_id, lambda user: service.enable(actor(), user))


@bp.post("/v1/users/<int:user_id>/unlock")
@authenticated
def unlock(user_id: int) -> Response:
    """Lift the lock of repeated failed sign-ins."""
    return _action(user_id, lambda user: service.unlock(actor(), user))


@bp.post("/v1/users/<int:user_id>/require-mfa")
@authenticated
def require_mfa(user_id: int) -> Response:
    """Require a second factor ({"required": true}) or stop requiring it ({"required": false})."""
    body = _body()
    unknown = set(body) - {"required"}
    if unknown:
        raise Invalid({name: "not a field here" for name in sorted(unknown)})
    if not isinstance(body.get("required"), bool):
        raise Invalid({"required": "true or false"})
    return _action(user_id, lambda user: service.require_mfa(actor(), user, body["required"]))


@bp.post("/v1/users/<int:user_id>/reset-mfa")
@authenticated
def reset_mfa(user_id: int) -> Response:
    """Remove every second factor, recovery code and remembered device; the user is mailed."""
    return _action(user_id, lambda user: service.reset_mfa(actor(), user))


@bp.post("/v1/users/<int:user_id>/revoke-tokens")
@authenticated
def revoke_tokens(user_id: int) -> Response:
    """End every session and revoke every token of a user."""
    return _action(user_id, lambda user: service.revoke_tokens(actor(), user))


@bp.post("/v1/users/<int:user_id>/send-password-reset")
@authenticated
def send_password_reset(user_id: int) -> Response:
    """Mail the user a password reset link."""
    return _action(user_id, lambda user: service.send_password_reset(actor(), user))


@bp.post("/v1/users/<int:user_id>/password")
@authenticated
def set_password(user_id: int) -> Response:
    """Set the user's password ({"password": "..."}): they are signed out everywhere and mailed."""
    body = _body()
    unknown = set(body) - {"password"}
    if unknown:
        raise Invalid({name: "not a field here" for name in sorted(unknown)})
    return _action(user_id, lambda user: service.set_password(actor(), user, body.get("password")))


@bp.post("/v1/users/<int:user_id>/send-verification")
@authenticated
def send_verification(user_id: int) -> Response:
    """Mail the user a new link to verify their address."""
    return _action(user_id, lambda user: service.send_verification(actor(), user))


@bp.post("/v1/users/<int:user_id>/roles")
@authenticated
def grant_role(user_id: int) -> Response:
    """Grant an admin role, for good or until a time."""
    body = _body()
    unknown = set(body) - {"role", "until"}
    if unknown:
        raise Invalid({name: "not a field of a grant" for name in sorted(unknown)})
    until = body.get("until")
    if until is not None:
        until = _moment("until", until)
    return _action(user_id, lambda user: service.grant_role(actor(), user, body.get("role"), until))


@bp.delete("/v1/users/<int:user_id>/roles/<role>")
@authenticated
def revoke_role(user_id: int, role: str) -> Response:
    """Take an admin role away."""
    return _action(user_id, lambda user: service.revoke_role(actor(), user, role))


# --- sessions and factors ---------------------------------------------------------------------------------------

def session_json(row: LoginSession) -> dict[str, Any]:
    return {"sid": row.sid, "user_id": row.user_id, "ip": row.ip, "user_agent": row.user_agent,
            "created_at": row.created_at.isoformat(), "last_seen_at": row.last_seen_at.isoformat(),
            "auth_time": row.auth_time.isoformat(), "amr": list(row.amr), "acr": row.acr}


def _limit(default: int) -> int:
    try:
        return int(request.args.get("limit", str(default)))
    except ValueError:
        raise Invalid({"limit": "a whole number"}) from None


def _sessions_page(user: User | None) -> Response:
    rows, cursor = service.list_sessions(actor(), user=user, cursor=request.args.get("cursor"),
                                         limit=_limit(50))
    return jsonify({"items": [session_json(row) for row in rows], "next_cursor": cursor})


@bp.get("/v1/sessions")
@authenticated
def list_sessions() -> Response:
    """Every live sign-in session, or one user's (user_id)."""
    user_id = request.args.get("user_id")
    if user_id is not None and not (user_id.isascii() and user_id.isdigit()):  # not "¹"
        raise Invalid({"user_id": "a user id"})
    return _sessions_page(service.get_user(actor(), int(user_id)) if user_id is not None else None)


@bp.delete("/v1/sessions/<sid>")
@authenticated
def end_session(sid: str) -> Response:
    """End a live session: its browser must sign in again."""
    service.end_session(actor(), sid)
    return Response(status=204)


@bp.get("/v1/users/<int:user_id>/sessions")
@authenticated
def user_sessions(user_id: int) -> Response:
    """A user's live sessions."""
    return _sessions_page(service.get_user(actor(), user_id))


@bp.get("/v1/users/<int:user_id>/factors")
@authenticated
def user_factors(user_id: int) -> Response:
    """A user's sign-in factors: kind, name and dates, never a secret."""
    factors = service.list_factors(actor(), service.get_user(actor(), user_id))
    return jsonify({"items": [{"id": f.id, "kind": f.kind, "name": f.name, "created_at": f.created_at.isoformat(),
                               "last_used_at": f.last_used_at.isoformat() if f.last_used_at else None}
                              for f in factors]})


# --- clients and keys -------------------------------------------------------------------------------------------

# The settings a client is created with, by their JSON type (idp.oidc.registration checks the values).
CLIENT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "logo_uri": (str, type(None)), "redirect_uris": list, "post_logout_redirect_uris": list,
    "public": bool, "grant_types": list,
    "scopes": list, "token_endpoint_auth_method": (str, type(None)), "first_party": bool, "id_token_alg": str,
    "jwks": (dict, type(None)), "jwks_uri": (str, type(None)), "mfa": str, "min_acr": str,
    "allow_remembered_device": bool, "access_token_ttl": (int, type(None)), "refresh_token_ttl": (int, type(None)),
    "refresh_tokens_for_sessions": bool, "require_pushed_authorization_requests": bool,
    "backchannel_logout_uri": (str, type(None)), "backchannel_logout_session_required": bool,
    "frontchannel_logout_uri": (str, type(None)), "frontchannel_logout_session_required": bool,
    "dpop_bound_access_tokens": bool, "token_exchange_actors": list,
    "request_uris": (list, type(None)),
    "request_object_signing_alg": (str, type(None)),
    "policy_uri": (str, type(None)), "tos_uri": (str, type(None)),
    "application_type": (str, type(None)),
}
CLIENT_DEFAULTS = {"redirect_uris": [], "post_logout_redirect_uris": [], "public": False, "grant_types": [],
                   "scopes": [], "token_endpoint_auth_method": None, "first_party": False}


def _client_settings(body: dict[str, Any], creating: bool = True) -> dict[str, Any]:
    fields = CLIENT_FIELDS if creating else {k: v for k, v in CLIENT_FIELDS.items() if k != "public"}
    errors = {name: "not a client setting" for name in body if name not in fields}
    for name, value in body.items():
        kind = CLIENT_FIELDS.get(name)
        if kind is None:
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, type(None)))):
            errors[name] = "the wrong type"
        elif isinstance(value, list) and not all(isinstance(item, str) for item in value):
            errors[name] = "a list of strings"
    if "name" not in body and creating:
        errors["name"] = "required"
    if errors:
        raise Invalid(errors)
    settings = {**CLIENT_DEFAULTS, **body} if creating else dict(body)
    if "token_endpoint_auth_method" in settings:
        settings["auth_method"] = settings.pop("token_endpoint_auth_method")
    return settings


@bp.get("/v1/clients")
@authenticated
def list_clients() -> Response:
    """Every registered client (never a secret)."""
    return jsonify({"items": [describe(client) for client in service.list_clients(actor())]})


@bp.post("/v1/clients")
@authenticated
def create_client() -> Response:
    """Register a client; a confidential client's secret is in this answer only."""
    client, secret = service.create_client(actor(), **_client_settings(_body()))
    response = jsonify({**describe(client), "client_secret": secret})
    response.status_code = 201
    response.headers["Location"] = f"{request.root_path}/admin/api/v1/clients/{client.client_id}"
    return response


@bp.get("/v1/clients/<client_id>")
@authenticated
def get_client(client_id: str) -> Response:
    """One client's settings."""
    return jsonify(describe(service.get_client(actor(), client_id)))


@bp.patch("/v1/clients/<client_id>")
@authenticated
def update_client(client_id: str) -> Response:
    """Change some of a client's settings."""
    client = service.get_client(actor(), client_id)
    return jsonify(describe(service.update_client(actor(), client, _client_settings(_body(), creating=False))))


@bp.delete("/v1/clients/<client_id>")
@authenticated
def delete_client(client_id: str) -> Response:
    """Delete a client: every token it holds stops working."""
    service.delete_client(actor(), service.get_client(actor(), client_id))
    return Response(status=204)


@bp.post("/v1/clients/<client_id>/rotate-secret")
@authenticated
def rotate_secret(client_id: str) -> Response:
    """A new secret, in this answer only; the old one stops working at once."""
    secret = service.rotate_client_secret(actor(), service.get_client(actor(), client_id))
    return jsonify({"client_id": client_id, "client_secret": secret})


@bp.post("/v1/initial-access-tokens")
@authenticated
def issue_initial_access_token() -> Response:
    """An initial access token for /register (RFC 7591 3), in this answer only."""
    body = _body()
    unknown = set(body) - {"expires_in", "uses"}
    if unknown:
        raise Invalid({name: "not a field of an initial access token" for name in sorted(unknown)})
    # JSON Schema's integers include 600.0 (the OpenAPI document says integer).
    expires_in, uses = (int(value) if isinstance(value, float) and value.is_integer() else value
                        for value in (body.get("expires_in", 86400), body.get("uses")))
    token, expires_at = service.issue_initial_access_token(actor(), expires_in, uses)
    response = jsonify({"initial_access_token": token, "expires_at": expires_at.isoformat(), "uses": uses})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


def key_json(row: SigningKey) -> dict[str, Any]:
    state = "signing" if row.retired_at is None else (
        "retired" if row.publish_until and row.publish_until > utcnow() else "expired")
    return {"kid": row.kid, "alg": row.alg, "state": state, "created_at": row.created_at.isoformat(),
            "retired_at": row.retired_at.isoformat() if row.retired_at else None,
            "publish_until": row.publish_until.isoformat() if row.publish_until else None}


@bp.get("/v1/keys")
@authenticated
def list_keys() -> Response:
    """The signing keys (public parts only), newest first."""
    return jsonify({"items": [key_json(row) for row in service.list_keys(actor())]})


@bp.post("/v1/keys/rotate")
@authenticated
def rotate_keys() -> Response:
    """New signing keys; the previous ones stay published while their tokens can live."""
    return jsonify({"items": [key_json(row) for row in service.rotate_keys(actor())]})


# --- the audit log ----------------------------------------------------------------------------------------------

def _time(name: str) -> datetime | None:
    value = request.args.get(name)
    return None if value is None else _moment(name, value)


def _moment(name: str, value: Any) -> datetime:
    """An RFC 3339 date-time with its offset, or a problem naming the field."""
    if not isinstance(value, str):
        raise Invalid({name: "an RFC 3339 date and time with its offset, like 2026-12-05T10:00:00Z"})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    # RFC 3339 date-time, as the document says: a date, a time and an offset ("2026-12-05T10:00:00Z").
    if moment is None or "T" not in value.upper() or moment.tzinfo is None:
        raise Invalid({name: "an RFC 3339 date and time with its offset, like 2026-12-05T10:00:00Z"})
    return moment


def _audit_filter() -> service.AuditFilter:
    user_id = request.args.get("user_id")
    if user_id is not None and not (user_id.isascii() and user_id.isdigit()):  # not "¹"
        raise Invalid({"user_id": "a user id"})
    return service.AuditFilter(event=request.args.get("event") or None, user_id=int(user_id) if user_id else None,
                               client_id=request.args.get("client_id") or None, ip=request.args.get("ip") or None,
                               since=_time("since"), until=_time("until"))


def audit_json(row: AuditEvent) -> dict[str, Any]:
    return {"id": row.id, "at": row.at.isoformat(), "event": row.event, "actor_id": row.actor_id,
            "subject_id": row.subject_id, "subject_email": row.subject_email, "client_id": row.client_id,
            "ip": row.ip, "user_agent": row.user_agent, "details": row.details}


@bp.get("/v1/audit-events/verify")
@authenticated
def verify_audit() -> Response:
    """Recompute the audit hash chain and check every signed checkpoint."""
    report = service.verify_audit(actor())
    return jsonify({"intact": report.intact, "events": report.events, "checkpoints": report.checkpoints,
                    "problem": report.problem})


@bp.get("/v1/audit-events")
@authenticated
def audit_events() -> Response:
    """Audit events, newest first, filtered by event, user_id, client_id, ip and a time range."""
    rows, cursor = service.list_audit_events(actor(), _audit_filter(), cursor=request.args.get("cursor"),
                                             limit=_limit(100))
    return jsonify({"items": [audit_json(row) for row in rows], "next_cursor": cursor})


EXPORT_COLUMNS = ("id", "at", "event", "actor_id", "subject_id", "subject_email", "client_id", "ip", "user_agent",
                  "details")


@bp.get("/v1/audit-events/export")
@authenticated
def export_audit_events() -> Response:
    """Every event the filters select, as CSV (format=csv) or JSON lines (format=jsonl), streamed."""
    fmt = request.args.get("format", "jsonl")
    if fmt not in ("csv", "jsonl"):
        raise Invalid({"format": "csv or jsonl"})
    rows = service.export_audit_events(actor(), _audit_filter(), fmt)
    response = Response(stream_with_context(audit_lines(rows, fmt)),
                        mimetype="text/csv" if fmt == "csv" else "application/jsonl")
    response.headers["Content-Disposition"] = f'attachment; filename="audit-events.{fmt}"'
    return response


def audit_lines(rows: Iterator[AuditEvent], fmt: str) -> Iterator[str]:
    """Audit events as CSV (a header line first) or JSON lines, a line at a time (the API's and the console's
    exports)."""
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(audit_json(row), separators=(",", ":")) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        record = audit_json(row)
        record["details"] = json.dumps(record["details"], separators=(",", ":"))
        writer.writerow([csv_cell(record[column]) for column in EXPORT_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()
