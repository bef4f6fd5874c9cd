"""The OpenAPI 3.1 document of the account API (idp.account.api), served at /api/v1/openapi.json.

Written out, like the admin API's (idp.admin.openapi); tests/test_account_openapi.py holds it to the routes and
runs schemathesis against it.
"""

from __future__ import annotations

from typing import Any

from idp.openapi import PROBLEM, TEXT
from idp.openapi import document as frame
from idp.openapi import errors as _errors

ID = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
DATE = {"type": ["string", "null"], "format": "date-time"}



def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _items(schema: str) -> dict[str, Any]:
    return _json({"type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}}}}, f"{schema} list")


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


STEP_UP = "401 with an RFC 9470 challenge when the token's sign-in is too old or too weak"


def document(issuer: str) -> dict[str, Any]:
    """The document, with the server's own address."""
    ref = {"$ref": "#/components/schemas/Profile"}
    return frame(
        title="idp account API",
        description=("A first-party app manages its signed-in user's account. Authenticate with a user's "
                     "access token of a first-party client carrying the idp:account scope."),
        server=f"{issuer}/api/v1",
        paths={
            "/me": {
                "get": {"summary": "The signed-in user's profile", "responses": {"200": _json(ref, "Profile"),
                                                                                 **_errors()}},
                "patch": {"summary": "Change the name or the language",
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "additionalProperties": False, "properties": {
                                  "name": {**TEXT, "minLength": 1, "maxLength": 200},
                                  "locale": {"type": ["string", "null"], "enum": ["en", "fr", "de", None]}}}}}},
                          "responses": {"200": _json(ref, "The changed profile"), **_errors(400)}},
                "delete": {"summary": f"Delete the account (restorable from the mailed link for the grace window); "
                                      f"{STEP_UP}", "responses": {"204": {"description": "Deleted"}, **_errors()}},
            },
            "/me/export": {"get": {"summary": f"Everything idp holds about the user, no secrets; {STEP_UP}",
                                   "responses": {"200": _json({"type": "object", "required": [
                                       "profile", "factors", "devices", "sessions", "applications", "events"]},
                                       "The data"), **_errors()}}},
            "/me/password": {"post": {
                "summary": f"Change the password with the current one (other sessions end); {STEP_UP}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["current_password", "new_password"],
                    "additionalProperties": False, "properties": {"current_password": TEXT,
                                                                  "new_password": TEXT}}}}},
                "responses": {"204": {"description": "Changed"}, **_errors(400)}}},
            "/register": {"post": {
                "summary": "Create an account and mail its verification code (202 whether or not the address has an "
                           "account); the app sends the code to the challenge endpoint with the auth_session",
                "security": [], "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["email", "name", "password"], "additionalProperties": False,
                    "properties": {name: {**TEXT, "maxLength": 4096} for name in (
                        "client_id", "email", "name", "password", "scope", "code_challenge",
                        "code_challenge_method", "nonce")}}}}},
                "responses": {"202": _json({"type": "object", "required": ["auth_session", "step"], "properties": {
                    "auth_session": {"type": "string"}, "step": {"type": "string"}}}, "The sign-up's next step"),
                              "400": PROBLEM, "401": PROBLEM, "403": PROBLEM, "429": PROBLEM}}},
            "/email/verify": {"post": {
                "summary": "Verify an address with the token of the verification mail's link",
                "security": [], "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["token"], "additionalProperties": False,
                    "properties": {"token": {**TEXT, "maxLength": 4096}}}}}},
                "responses": {"204": {"description": "Verified"}, "400": PROBLEM, "429": PROBLEM}}},
            "/email/verification": {"post": {
                "summary": "Mail the signed-in user a new verification link",
                "responses": {"202": {"description": "Sent"}, **_errors(409, 429)}}},
            "/password/forgot": {"post": {
                "summary": "Mail a password reset link (202 whether or not the address has an account)",
                "security": [], "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["email"], "additionalProperties": False,
                    "properties": {"email": {**TEXT, "maxLength": 320}}}}}},
                "responses": {"202": {"description": "Accepted"}, "400": PROBLEM, "429": PROBLEM}}},
            "/password/reset": {"post": {
                "summary": "Set a new password with the token of a mailed reset link (every session ends)",
                "security": [], "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["token", "password"], "additionalProperties": False,
                    "properties": {"token": {**TEXT, "maxLength": 4096},
                                   "password": {**TEXT, "maxLength": 4096}}}}}},
                "responses": {"204": {"description": "Changed"}, "400": PROBLEM, "429": PROBLEM}}},
            "/me/email": {"post": {
                "summary": f"Mail a code to a new address (the old one stays until it is proved); {STEP_UP}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["email"], "additionalProperties": False,
                    "properties": {"email": {**TEXT, "maxLength": 320}}}}}},
                "responses": {"202": _json({"type": "object", "required": ["email"], "properties": {
                    "email": {"type": "string"}}}, "The address the code went to"), **_errors(400, 429)}}},
            "/me/email/verify": {"post": {
                "summary": f"Make the new address the account's with the mailed code; {STEP_UP}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["code"], "additionalProperties": False,
                    "properties": {"code": {**TEXT, "maxLength": 12}}}}}},
                "responses": {"200": _json(ref, "The profile with the new address"), **_errors(400, 429)}}},
            "/me/phone": {
                "post": {"summary": f"Text a code to a number for the profile; {STEP_UP}",
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["phone"], "additionalProperties": False,
                             "properties": {"phone": {**TEXT, "maxLength": 64}}}}}},
                         "responses": {"202": _json({"type": "object", "required": ["phone"], "properties": {
                             "phone": {"type": "string"}}}, "The number, in E.164, a code was texted to"),
                             **_errors(400, 429)}},
                "delete": {"summary": f"Remove the profile phone number; {STEP_UP}",
                           "responses": {"204": {"description": "Removed"}, **_errors(404)}}},
            "/me/phone/verify": {"post": {
                "summary": f"Save the number with the code texted to it; {STEP_UP}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["phone", "code"], "additionalProperties": False,
                    "properties": {"phone": {**TEXT, "maxLength": 64}, "code": {**TEXT, "maxLength": 12}}}}}},
                "responses": {"200": _json(ref, "The profile with the verified number"), **_errors(400, 429)}}},
            "/me/factors": {"get": {"summary": "Second factors (no secrets)",
                                    "responses": {"200": _items("Factor"), **_errors()}}},
            "/me/factors/{factor_id}": {"delete": {
                "summary": f"Remove a factor (the user is mailed); {STEP_UP}", "parameters": [_path("factor_id", ID)],
                "responses": {"204": {"description": "Removed"}, **_errors(404)}}},
            "/me/factors/totp": {"post": {
                "summary": f"Begin adding an authenticator app; {STEP_UP}",
                "responses": {"201": _json({"type": "object", "required": ["id", "secret", "otpauth_uri", "qr_svg"],
                                            "properties": {"id": {"type": "integer"}, "secret": {"type": "string"},
                                                           "otpauth_uri": {"type": "string"},
                                                           "qr_svg": {"type": "string"}}},
                                           "The key, its otpauth:// URI and a QR code"), **_errors(429)}}},
            "/me/factors/totp/{factor_id}/confirm": {"post": {
                "summary": f"Confirm a new authenticator app with its first code; {STEP_UP}",
                "parameters": [_path("factor_id", ID)],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["code"], "properties": {"code": {**TEXT, "maxLength": 12}}}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/Factor"}, "The confirmed factor"),
                              **_errors(400, 404, 429)}}},
            "/me/phones": {"post": {
                "summary": f"Add a phone for sign-in codes: a code is texted to it; {STEP_UP}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["phone"], "additionalProperties": False,
                    "properties": {"phone": {**TEXT, "maxLength": 64}}}}}},
                "responses": {"202": _json({"type": "object", "required": ["phone"], "properties": {
                    "phone": {"type": ["string", "null"]}}}, "The number a code was texted to"),
                    **_errors(400, 404, 429)}}},
            "/me/phones/verify": {"post": {
                "summary": f"Add the phone as a second factor with the texted code; {STEP_UP}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["phone", "code"], "additionalProperties": False,
                    "properties": {"phone": {**TEXT, "maxLength": 64}, "code": {**TEXT, "maxLength": 12}}}}}},
                "responses": {"201": _json({"$ref": "#/components/schemas/Factor"}, "The new factor"),
                              **_errors(400, 404, 429)}}},
            "/me/factors/webauthn": {"post": {
                "summary": f"Options to register a passkey or security key (a challenge for five minutes); {STEP_UP}",
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "properties": {"passkey": {"type": "boolean"}}}}}},
                "responses": {"200": _json({"type": "object", "required": ["challenge", "options"], "properties": {
                    "challenge": {"type": "string"}, "options": {"type": "object"}}}, "The creation options"),
                    **_errors(400, 404, 429)}}},
            "/me/factors/webauthn/verify": {"post": {
                "summary": f"Register the new credential from its registration response; {STEP_UP}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["challenge", "credential"], "additionalProperties": False,
                    "properties": {"challenge": {**TEXT, "maxLength": 200},
                                   "credential": {"type": ["string", "object"]},
                                   "name": {**TEXT, "maxLength": 100}}}}}},
                "responses": {"201": _json({"$ref": "#/components/schemas/Factor"}, "The new factor"),
                              **_errors(400, 429)}}},
            "/me/recovery-codes": {"post": {
                "summary": f"Ten new recovery codes, shown once; {STEP_UP}",
                "responses": {"200": _json({"type": "object", "required": ["codes"], "properties": {
                    "codes": {"type": "array", "items": {"type": "string"}}}}, "The codes"), **_errors()}}},
            "/me/sessions": {"get": {"summary": "Live sessions", "responses": {"200": _items("Session"),
                                                                              **_errors()}}},
            "/me/sessions/{sid}": {"delete": {"summary": "End a session", "parameters": [_path("sid", TEXT)],
                                              "responses": {"204": {"description": "Ended"}, **_errors(404)}}},
            "/me/devices": {"get": {"summary": "Browsers and apps signed in from",
                                    "responses": {"200": _items("Device"), **_errors()}}},
            "/me/devices/{device_id}": {"delete": {
                "summary": f"Forget a device; {STEP_UP}", "parameters": [_path("device_id", ID)],
                "responses": {"204": {"description": "Forgotten"}, **_errors(404)}}},
            "/me/apps": {"get": {"summary": "Applications allowed", "responses": {"200": _items("App"),
                                                                                 **_errors()}}},
            "/me/apps/{client_id}": {"delete": {
                "summary": "Withdraw an application's access (its tokens are revoked)",
                "parameters": [_path("client_id", TEXT)],
                "responses": {"204": {"description": "Withdrawn"}, **_errors(404)}}},
            "/logout": {"post": {
                "summary": "End this token's session and token family; everywhere: every session and token",
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"everywhere": {"type": "boolean"}}}}}},
                "responses": {"204": {"description": "Signed out"}, **_errors(400)}}},
        },
        schemas={
            "Profile": {"type": "object", "required": ["sub", "email", "email_verified", "name", "mfa"],
                        "properties": {"sub": {"type": "string"}, "email": {"type": "string"},
                                       "email_verified": {"type": "boolean"}, "name": {"type": "string"},
                                       "phone_number": {"type": ["string", "null"]},
                                       "phone_number_verified": {"type": "boolean"},
                                       "locale": {"type": ["string", "null"]}, "mfa": {"type": "boolean"},
                                       "created_at": DATE}},
            "Factor": {"type": "object", "required": ["id", "kind", "name"], "properties": {
                "id": {"type": "integer"}, "kind": {"type": "string"}, "name": {"type": "string"},
                "created_at": DATE, "last_used_at": DATE, "confirmed": {"type": "boolean"}}},
            "Session": {"type": "object", "required": ["sid", "current"], "properties": {
                "sid": {"type": "string"}, "ip": {"type": "string"}, "user_agent": {"type": "string"},
                "created_at": DATE, "last_seen_at": DATE, "acr": {"type": "string"},
                "amr": {"type": "array", "items": {"type": "string"}}, "current": {"type": "boolean"}}},
            "Device": {"type": "object", "required": ["id", "name"], "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"}, "ip": {"type": "string"},
                "created_at": DATE, "last_used_at": DATE, "remembered_until": DATE}},
            "App": {"type": "object", "required": ["client_id", "name", "scopes"], "properties": {
                "client_id": {"type": "string"}, "name": {"type": "string"},
                "scopes": {"type": "array", "items": {"type": "string"}},
                "descriptions": {"type": "array", "items": {"type": "string"}}, "granted_at": DATE}},
        },
        problem_members={"acr_values": {"type": "string"}, "max_age": {"type": "integer"}},
    )
