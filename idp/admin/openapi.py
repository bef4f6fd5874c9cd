"""The OpenAPI 3.1 document of the admin REST API (idp.admin.api), served at /admin/api/openapi.json.

Written out here rather than generated: no library in the stack derives a truthful document from Flask views, and
tests/test_admin_api.py holds the two together (every route of the blueprint is described, and schemathesis checks
the answers against this document).
"""

from __future__ import annotations

from typing import Any

PROBLEM = {"$ref": "#/components/responses/Problem"}
USER_ID = {"name": "user_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): PROBLEM for code in (401, 403, *codes)}


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


def document(issuer: str) -> dict[str, Any]:
    """The document, with the server's own address."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "idp admin API", "version": "1",
                 "description": "Administration of idp's users. Authenticate with an access token from the "
                                "client_credentials grant of a client registered with an idp:* scope."},
        "servers": [{"url": f"{issuer}/admin/api"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/users": {"get": {
                "summary": "List users (keyset pagination)",
                "parameters": [
                    {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 320},
                     "description": "Part of the email or name, or the whole subject"},
                    *({"name": name, "in": "query", "schema": FLAG}
                      for name in ("verified", "locked", "disabled", "admin", "mfa")),
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
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
                "patch": {"summary": "Change a user's name, email or email_verified", "parameters": [USER_ID],
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "additionalProperties": False,
                              "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                             "email": {"type": "string", "format": "email", "maxLength": 320},
                                             "email_verified": {"type": "boolean"}}}}}},
                          "responses": {"200": {"description": "The changed user", "content": {"application/json": {
                              "schema": {"$ref": "#/components/schemas/User"}}}}, **_errors(400, 404, 409)}},
            },
            "/v1/users/{user_id}/disable": _action("Disable a user (sessions end, tokens are revoked)"),
            "/v1/users/{user_id}/enable": _action("Enable a disabled user"),
            "/v1/users/{user_id}/unlock": _action("Lift the lock of repeated failed sign-ins"),
            "/v1/users/{user_id}/require-mfa": _action(
                "Require a second factor, or stop requiring it",
                {"type": "object", "required": ["required"], "properties": {"required": {"type": "boolean"}}}),
            "/v1/users/{user_id}/reset-mfa": _action("Remove every second factor (the user is mailed)"),
            "/v1/users/{user_id}/revoke-tokens": _action("End every session and revoke every token"),
            "/v1/users/{user_id}/send-password-reset": _action("Mail the user a password reset link"),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Problem": {"description": "An RFC 9457 problem document", "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "User": {"type": "object", "required": ["id", "subject", "email", "name", "email_verified",
                                                        "disabled", "locked", "admin", "mfa_required", "has_mfa"],
                         "properties": {
                             "id": {"type": "integer"}, "subject": {"type": "string"},
                             "email": {"type": "string"}, "name": {"type": "string"},
                             "email_verified": {"type": "boolean"}, "phone": {"type": ["string", "null"]},
                             "phone_verified": {"type": "boolean"}, "locale": {"type": ["string", "null"]},
                             "disabled": {"type": "boolean"}, "locked": {"type": "boolean"},
                             "admin": {"type": "boolean"}, "mfa_required": {"type": "boolean"},
                             "has_mfa": {"type": "boolean"},
                             "created_at": {"type": "string", "format": "date-time"},
                             "updated_at": {"type": "string", "format": "date-time"}}},
            },
        },
    }
