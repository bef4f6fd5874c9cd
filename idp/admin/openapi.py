"""The OpenAPI 3.1 document of the admin REST API (idp.admin.api), served at /admin/api/openapi.json.

Written out here rather than generated: no library in the stack derives a truthful document from Flask views, and
tests/test_admin_api.py holds the two together (every route of the blueprint is described, and schemathesis checks
the answers against this document).
"""

from __future__ import annotations

from typing import Any

from idp.openapi import TEXT
from idp.openapi import document as frame
from idp.openapi import errors as _errors

USER_ID = {"name": "user_id", "in": "path", "required": True,
           "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}



def _action(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [USER_ID],
        "responses": {"200": {"description": "The user after the action",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}}},
                      **_errors(400, 404, 409)},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {"post": operation}


FLAG = {"type": "string", "enum": ["true", "false"]}
CLIENT_ID = {"name": "client_id", "in": "path", "required": True, "schema": TEXT}
AUDIT_FILTERS = [
    {"name": "event", "in": "query", "schema": TEXT},
    {"name": "user_id", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    {"name": "client_id", "in": "query", "schema": TEXT},
    {"name": "ip", "in": "query", "schema": TEXT},
    {"name": "since", "in": "query", "schema": {**TEXT, "format": "date-time"}},
    {"name": "until", "in": "query", "schema": {**TEXT, "format": "date-time"}},
]
CURSOR = {"type": "string", "pattern": "^[0-9]{1,18}$"}
PAGE = [{"name": "cursor", "in": "query", "schema": CURSOR},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}]


LOGOUT_SETTINGS = ("backchannel_logout_uri", "backchannel_logout_session_required", "frontchannel_logout_uri",
                   "frontchannel_logout_session_required")

# A client's settings, as registration takes them (idp.oidc.registration.SETTINGS).
CLIENT_SETTINGS: dict[str, Any] = {
    "name": {"type": "string"}, "logo_uri": {"type": ["string", "null"]},
    "redirect_uris": {"type": "array", "items": {"type": "string"}},
    "post_logout_redirect_uris": {"type": "array", "items": {"type": "string"}},
    "public": {"type": "boolean"}, "grant_types": {"type": "array", "items": {"type": "string"}},
    "scopes": {"type": "array", "items": {"type": "string"}},
    "token_endpoint_auth_method": {"type": ["string", "null"]}, "first_party": {"type": "boolean"},
    "id_token_alg": {"type": "string", "enum": ["RS256", "ES256"]},
    "jwks": {"type": ["object", "null"]}, "jwks_uri": {"type": ["string", "null"]},
    "mfa": {"type": "string", "enum": ["optional", "required"]}, "min_acr": {"type": "string"},
    "allow_remembered_device": {"type": "boolean"}, "access_token_ttl": {"type": ["integer", "null"]},
    "refresh_token_ttl": {"type": ["integer", "null"]}, "refresh_tokens_for_sessions": {"type": "boolean"},
    "require_pushed_authorization_requests": {"type": "boolean"},
    **{f"{channel}_logout_uri": {"type": ["string", "null"]} for channel in ("backchannel", "frontchannel")},
    **{f"{channel}_logout_session_required": {"type": "boolean"} for channel in ("backchannel", "frontchannel")},
    "dpop_bound_access_tokens": {"type": "boolean"},
    "token_exchange_actors": {"type": "array", "items": {"type": "string"}},
    "request_uris": {"type": ["array", "null"], "items": {"type": "string"}},
    "request_object_signing_alg": {"type": ["string", "null"], "enum": ["RS256", "ES256", "PS256", "none", None]},
    "policy_uri": {"type": ["string", "null"]},
    "tos_uri": {"type": ["string", "null"]},
    "application_type": {"type": ["string", "null"], "enum": ["web", "native", None]},
}


def _list(schema: str, paged: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {"items": {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}}}
    if paged:
        properties["next_cursor"] = {"type": ["string", "null"]}
    return {"description": f"A list of {schema} objects", "content": {"application/json": {"schema": {
        "type": "object", "required": list(properties), "properties": properties}}}}


def document(issuer: str) -> dict[str, Any]:
    """The document, with the server's own address."""
    return frame(
        title="idp admin API",
        description=("Administration of idp's users. Authenticate with an access token from the "
                     "client_credentials grant of a client registered with an idp:* scope."),
        server=f"{issuer}/admin/api",
        paths={
            "/v1/users": {"post": {
                "summary": "Create a user, with a password or an invitation mail",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["email"], "additionalProperties": False, "properties": {
                        "email": {"type": "string", "format": "email", "maxLength": 320},
                        "name": {"type": "string", "maxLength": 200}, "password": {"type": "string"},
                        "email_verified": {"type": "boolean"}, "admin": {"type": "boolean"},
                        "invite": {"type": "boolean"}}}}}},
                "responses": {"201": {"description": "The new user", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/User"}}}}, **_errors(400, 409)},
            }, "get": {
                "summary": "List users (keyset pagination)",
                "parameters": [
                    {"name": "q", "in": "query", "schema": {**TEXT, "maxLength": 320},
                     "description": "Part of the email or name, or the whole subject"},
                    *({"name": name, "in": "query", "schema": FLAG}
                      for name in ("verified", "locked", "disabled", "admin", "mfa", "deleted")),
                    {"name": "cursor", "in": "query", "schema": CURSOR,
                     "description": "next_cursor of the previous page"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                ],
                "responses": {"200": {"description": "A page of users", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["items", "next_cursor"],
                    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/User"}},
                                   "next_cursor": {"type": ["string", "null"]}}}}}},
                              **_errors(400)},
            }},
            "/v1/users/{user_id}": {
                "get": {"summary": "Get a user", "parameters": [USER_ID],
                        "responses": {"200": {"description": "The user", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/User"}}}}, **_errors(404)}},
                "delete": {"summary": "Delete a user (disabled and hidden at once; restorable until purged)",
                           "parameters": [USER_ID], "responses": {"204": {"description": "Deleted"},
                                                                  **_errors(404, 409)}},
                "patch": {"summary": "Change a user's name, email, email_verified or phone", "parameters": [USER_ID],
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "additionalProperties": False,
                              "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                             "email": {"type": "string", "format": "email", "maxLength": 320},
                                             "email_verified": {"type": "boolean"},
                                             "phone": {"type": ["string", "null"], "maxLength": 64}}}}}},
                          "responses": {"200": {"description": "The changed user", "content": {"application/json": {
                              "schema": {"$ref": "#/components/schemas/User"}}}}, **_errors(400, 404, 409)}},
            },
            "/v1/users/{user_id}/restore": _action("Undo a deletion that was not purged yet"),
            "/v1/users/{user_id}/disable": _action("Disable a user (sessions end, tokens are revoked)"),
            "/v1/users/{user_id}/enable": _action("Enable a disabled user"),
            "/v1/users/{user_id}/unlock": _action("Lift the lock of repeated failed sign-ins"),
            "/v1/users/{user_id}/require-mfa": _action(
                "Require a second factor, or stop requiring it",
                {"type": "object", "required": ["required"], "additionalProperties": False,
                 "properties": {"required": {"type": "boolean"}}}),
            "/v1/users/{user_id}/reset-mfa": _action("Remove every second factor (the user is mailed)"),
            "/v1/users/{user_id}/revoke-tokens": _action("End every session and revoke every token"),
            "/v1/users/{user_id}/send-password-reset": _action("Mail the user a password reset link"),
            "/v1/users/{user_id}/send-verification": _action("Mail the user a new link to verify their address"),
            "/v1/users/{user_id}/password": _action(
                "Set the user's password (checked as at sign-up); they are signed out everywhere and mailed",
                {"type": "object", "required": ["password"], "additionalProperties": False,
                 "properties": {"password": {"type": "string", "maxLength": 1024}}}),
            "/v1/users/{user_id}/roles": {"post": {
                "summary": "Grant an admin role, for good or until a time (it then lapses by itself)",
                "parameters": [USER_ID],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["role"], "additionalProperties": False, "properties": {
                        "role": {"type": "string", "enum": ["admin", "helpdesk", "auditor"]},
                        "until": {"type": ["string", "null"], "format": "date-time"}}}}}},
                "responses": {"200": {"description": "The user with the role", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/User"}}}}, **_errors(400, 404, 409)}}},
            "/v1/users/{user_id}/roles/{role}": {"delete": {
                "summary": "Take an admin role away (never your own admin role, never the last administrator's)",
                "parameters": [USER_ID, {"name": "role", "in": "path", "required": True,
                                         "schema": {"type": "string", "enum": ["admin", "helpdesk", "auditor"]}}],
                "responses": {"200": {"description": "The user without the role", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/User"}}}}, **_errors(404, 409)}}},
            "/v1/users/{user_id}/sessions": {"get": {"summary": "A user's live sessions", "parameters": [
                USER_ID, *PAGE], "responses": {"200": _list("Session", paged=True), **_errors(400, 404)}}},
            "/v1/users/{user_id}/factors": {"get": {"summary": "A user's sign-in factors (no secrets)",
                                                    "parameters": [USER_ID],
                                                    "responses": {"200": _list("Factor"), **_errors(404)}}},
            "/v1/sessions": {"get": {"summary": "Live sessions, of everyone or of one user", "parameters": [
                {"name": "user_id", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]+$"}}, *PAGE],
                "responses": {"200": _list("Session", paged=True), **_errors(400, 404)}}},
            "/v1/sessions/{sid}": {"delete": {"summary": "End a live session", "parameters": [
                {"name": "sid", "in": "path", "required": True, "schema": TEXT}],
                "responses": {"204": {"description": "Ended"}, **_errors(404)}}},
            "/v1/clients": {
                "get": {"summary": "Every client", "responses": {"200": _list("Client"), **_errors()}},
                "post": {"summary": "Register a client (its secret is in this answer only)",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/NewClient"}}}},
                         "responses": {"201": {"description": "The client, with client_secret", "content": {
                             "application/json": {"schema": {"$ref": "#/components/schemas/Client"}}}},
                             **_errors(400)}}},
            "/v1/clients/{client_id}": {
                "get": {"summary": "A client's settings", "parameters": [CLIENT_ID], "responses": {
                    "200": {"description": "The client", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Client"}}}}, **_errors(404)}},
                "patch": {"summary": "Change some of a client's settings (checked as a whole, as at creation)",
                          "parameters": [CLIENT_ID], "requestBody": {"required": True, "content": {
                              "application/json": {"schema": {"$ref": "#/components/schemas/ClientChanges"}}}},
                          "responses": {"200": {"description": "The changed client", "content": {
                              "application/json": {"schema": {"$ref": "#/components/schemas/Client"}}}},
                              **_errors(400, 404)}},
                "delete": {"summary": "Delete a client (its tokens stop working)", "parameters": [CLIENT_ID],
                           "responses": {"204": {"description": "Deleted"}, **_errors(404)}}},
            "/v1/clients/{client_id}/rotate-secret": {"post": {
                "summary": "A new secret (in this answer only)", "parameters": [CLIENT_ID],
                "responses": {"200": {"description": "The new secret", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["client_id", "client_secret"],
                    "properties": {"client_id": {"type": "string"}, "client_secret": {"type": "string"}}}}}},
                    **_errors(404, 409)}}},
            "/v1/initial-access-tokens": {"post": {
                "summary": "An initial access token for dynamic client registration (RFC 7591 3; in this answer "
                           "only)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "expires_in": {"type": "integer", "minimum": 60, "maximum": 365 * 86400,
                                       "description": "Seconds it stays valid (default 86400)"},
                        "uses": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000,
                                 "description": "Registrations it allows (null or left out: any number)"}}}}}},
                "responses": {"201": {"description": "The token", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["initial_access_token", "expires_at", "uses"], "properties": {
                        "initial_access_token": {"type": "string"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "uses": {"type": ["integer", "null"]}}}}}},
                    **_errors(400)}}},
            "/v1/keys": {"get": {"summary": "The signing keys, newest first",
                                 "responses": {"200": _list("Key"), **_errors()}}},
            "/v1/keys/rotate": {"post": {"summary": "New signing keys (the old ones stay published a while)",
                                         "responses": {"200": _list("Key"), **_errors()}}},
            "/v1/audit-events/export": {"get": {
                "summary": "Every audit event the filters select, as CSV or JSON lines (the export is audited)",
                "parameters": [{"name": "format", "in": "query", "schema": {"type": "string",
                                                                          "enum": ["csv", "jsonl"]}},
                               *AUDIT_FILTERS],
                "responses": {"200": {"description": "The events, newest first, streamed", "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/jsonl": {"schema": {"type": "string"}}}}, **_errors(400)}}},
            "/v1/audit-events/verify": {"get": {
                "summary": "Recompute the audit hash chain and check every signed checkpoint (audited)",
                "responses": {"200": {"description": "The verdict", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["intact", "events", "checkpoints", "problem"], "properties": {
                        "intact": {"type": "boolean"}, "events": {"type": "integer"},
                        "checkpoints": {"type": "integer"}, "problem": {"type": ["string", "null"]}}}}}},
                    **_errors()}}},
            "/v1/audit-events": {"get": {"summary": "Audit events, newest first (reading is audited)", "parameters": [
                *AUDIT_FILTERS, *PAGE],
                "responses": {"200": _list("AuditEvent", paged=True), **_errors(400)}}},
        },
        schemas={
            "Session": {"type": "object", "required": ["sid", "user_id", "amr", "acr"], "properties": {
                "sid": {"type": "string"}, "user_id": {"type": "integer"}, "ip": {"type": "string"},
                "user_agent": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
                "last_seen_at": {"type": "string", "format": "date-time"},
                "auth_time": {"type": "string", "format": "date-time"},
                "amr": {"type": "array", "items": {"type": "string"}}, "acr": {"type": "string"}}},
            "Factor": {"type": "object", "required": ["id", "kind", "name"], "properties": {
                "id": {"type": "integer"}, "kind": {"type": "string"}, "name": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "last_used_at": {"type": ["string", "null"], "format": "date-time"}}},
            "Client": {"type": "object", "required": ["client_id", "name"], "properties": {
                "client_id": {"type": "string"}, "name": {"type": "string"},
                "logo_uri": {"type": ["string", "null"]}, "client_secret": {"type": ["string", "null"]},
                "redirect_uris": {"type": "array", "items": {"type": "string"}},
                "post_logout_redirect_uris": {"type": "array", "items": {"type": "string"}},
                "grant_types": {"type": "array", "items": {"type": "string"}}, "scope": {"type": "string"},
                "token_endpoint_auth_method": {"type": "string"}, "first_party": {"type": "boolean"},
                "id_token_signed_response_alg": {"type": "string"}, "mfa": {"type": "string"},
                "min_acr": {"type": "string"}, "allow_remembered_device": {"type": "boolean"},
                "access_token_ttl": {"type": ["integer", "null"]},
                "refresh_token_ttl": {"type": ["integer", "null"]},
                "refresh_tokens_for_sessions": {"type": "boolean"},
                "require_pushed_authorization_requests": {"type": "boolean"},
                **{name: CLIENT_SETTINGS[name] for name in LOGOUT_SETTINGS},
                "dpop_bound_access_tokens": {"type": "boolean"},
                "token_exchange_actors": {"type": "array", "items": {"type": "string"}},
                "request_uris": {"type": "array", "items": {"type": "string"}},
                "request_object_signing_alg": CLIENT_SETTINGS["request_object_signing_alg"],
                **{name: CLIENT_SETTINGS[name] for name in ("policy_uri", "tos_uri", "application_type")},
                "created_at": {"type": "string"}}},
            "NewClient": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                **CLIENT_SETTINGS}},
            "ClientChanges": {"type": "object", "additionalProperties": False, "properties": {
                key: value for key, value in CLIENT_SETTINGS.items() if key != "public"}},
            "Key": {"type": "object", "required": ["kid", "alg", "state"], "properties": {
                "kid": {"type": "string"}, "alg": {"type": "string"},
                "state": {"type": "string", "enum": ["signing", "retired", "expired"]},
                "created_at": {"type": "string"}, "retired_at": {"type": ["string", "null"]},
                "publish_until": {"type": ["string", "null"]}}},
            "AuditEvent": {"type": "object", "required": ["id", "at", "event"], "properties": {
                "id": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
                "event": {"type": "string"}, "actor_id": {"type": ["integer", "null"]},
                "subject_id": {"type": ["integer", "null"]}, "subject_email": {"type": ["string", "null"]},
                "client_id": {"type": ["string", "null"]}, "ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]}, "details": {"type": "object"}}},
            "User": {"type": "object", "required": ["id", "subject", "email", "name", "email_verified",
                                                    "disabled", "locked", "admin", "mfa_required", "has_mfa"],
                     "properties": {
                         "id": {"type": "integer"}, "subject": {"type": "string"},
                         "email": {"type": "string"}, "name": {"type": "string"},
                         "email_verified": {"type": "boolean"}, "phone": {"type": ["string", "null"]},
                         "phone_verified": {"type": "boolean"}, "locale": {"type": ["string", "null"]},
                         "disabled": {"type": "boolean"}, "locked": {"type": "boolean"},
                         "admin": {"type": "boolean"}, "mfa_required": {"type": "boolean"},
                         "roles": {"type": "array", "items": {"type": "object", "required": ["role"],
                                   "properties": {"role": {"type": "string"},
                                                  "until": {"type": ["string", "null"]}}}},
                         "has_mfa": {"type": "boolean"},
                         "created_at": {"type": "string", "format": "date-time"},
                         "updated_at": {"type": "string", "format": "date-time"},
                         "deleted_at": {"type": ["string", "null"], "format": "date-time"}}},
        },
    )
