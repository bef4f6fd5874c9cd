"""The admin REST API, /admin/api/v1: JSON in and out, RFC 9457 problem documents for every error, and a bearer
access token of idp's own (RFC 6750) whose scopes name the caller's roles. Every action is idp.admin.service's, the
same code the command line runs; this module only speaks HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from authlib.oauth2.rfc6749.errors import MissingAuthorizationError, OAuth2Error
from flask import Blueprint, current_app, g, jsonify, request
from flask_babel import force_locale
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from idp.admin import service
from idp.admin.openapi import document
from idp.admin.service import Actor, AdminError, Invalid, Role
from idp.extensions import csrf, db, limiter
from idp.login.mfa import has_second_factor
from idp.models import User

bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")
PROBLEM_TYPE = "about:blank"  # RFC 9457 4.2.1: the status code says it all; the title is its phrase
csrf.exempt(bp)  # bearer tokens, never cookies: nothing for a cross-site form to ride on
limiter.exempt(bp)

SCOPE_ROLES = {"idp:admin": Role.ADMIN, "idp:helpdesk": Role.HELPDESK, "idp:audit": Role.AUDITOR}


def problem(status: int, title: str, detail: str = "", headers: dict[str, str] | None = None,
            **members: Any) -> Response:
    """An RFC 9457 problem document."""
    body = {"type": PROBLEM_TYPE, "title": title, "status": status, **({"detail": detail} if detail else {}),
            **members}
    response = jsonify(body)
    response.status_code = status
    response.content_type = "application/problem+json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _challenge(error: str | None = None, description: str = "", scope: str = "") -> dict[str, str]:
    """RFC 6750 3: the WWW-Authenticate challenge of a refused bearer token."""
    parts = ['Bearer realm="idp-admin"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": ", ".join(parts)}


def authenticated(view: Callable[..., Any]) -> Callable[..., Any]:
    """A view for callers with a live access token carrying at least one admin scope (its roles)."""
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        protector = current_app.extensions["idp.resource_protector"]
        try:
            token = protector.acquire_token()
        except MissingAuthorizationError:
            return problem(401, "Authentication required", "Send an access token: Authorization: Bearer ...",
                           _challenge())
        except OAuth2Error:  # unknown, expired, revoked, or not a bearer token at all
            return problem(401, "Invalid token", "The access token is unknown, expired or revoked.",
                           _challenge("invalid_token", "The access token is not valid"))
        roles = frozenset(SCOPE_ROLES[s] for s in (token.scope or "").split() if s in SCOPE_ROLES)
        if token.user_id is not None or not roles:
            # Admin powers are a machine client's (client_credentials with an idp:* scope); a user's token is
            # never enough, whatever its scope.
            return problem(403, "Insufficient scope", "This token carries no admin scope.",
                           _challenge("insufficient_scope", "An admin scope is required",
                                      " ".join(SCOPE_ROLES)))
        g.admin_actor = Actor(roles=roles, via="api", client_id=token.client_id)
        return view(*args, **kwargs)
    return wrapped


def actor() -> Actor:
    return g.admin_actor


def user_json(user: User) -> dict[str, Any]:
    """A user as the API shows it: no secret, no hash."""
    return {
        "id": user.id, "subject": user.subject, "email": user.email, "name": user.name,
        "email_verified": user.email_verified, "phone": user.phone, "phone_verified": user.phone_verified,
        "locale": user.locale, "disabled": user.disabled, "locked": user.locked, "admin": user.is_admin,
        "mfa_required": user.mfa_required, "has_mfa": has_second_factor(user),
        "created_at": user.created_at.isoformat(), "updated_at": user.updated_at.isoformat(),
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
    return data


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
    try:
        limit = int(request.args.get("limit", "50"))
    except ValueError:
        raise Invalid({"limit": "a whole number"}) from None
    filters = {name: on for name in service.FILTERS if (on := _flag(name)) is not None}
    users, cursor = service.list_users(actor(), q=request.args.get("q", ""), filters=filters,
                                       cursor=request.args.get("cursor") or None, limit=limit)
    return jsonify({"items": [user_json(user) for user in users], "next_cursor": cursor})


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
    if not isinstance(body.get("required"), bool):
        raise Invalid({"required": "true or false"})
    return _action(user_id, lambda user: service.require_mfa(actor(), user, body["required"]))


@bp.post("/v1/users/<int:user_id>/reset-mfa")
@authenticated
def reset_mfa(user_id: int) -> Response:
    """Remove every second factor, recovery code and remembered device; the user is mailed."""
    def run(user: User) -> None:
        with force_locale(user.locale or "en"):  # the notice mail, in the user's language
            service.reset_mfa(actor(), user, what=_("An administrator removed your second factors."),
                              next_step=_("Set up a new one at your next sign-in."))
    return _action(user_id, run)


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

