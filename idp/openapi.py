"""What the OpenAPI 3.1 documents of idp's two JSON APIs share (idp.admin.openapi, idp.account.openapi): the bearer
scheme, RFC 9457 problem documents, text without NUL, and a document's frame."""

from __future__ import annotations

from typing import Any

PROBLEM = {"$ref": "#/components/responses/Problem"}
# Text anywhere in a request: no NUL character (idp refuses one everywhere, idp.http.refuse_nul).
TEXT = {"type": "string", "pattern": "^[^\\u0000]*$"}


def errors(*codes: int) -> dict[str, Any]:
    """The problem-document answers of an operation behind a bearer token (401, 403 and ``codes``)."""
    return {str(code): PROBLEM for code in (401, 403, *codes)}


def document(*, title: str, description: str, server: str, paths: dict[str, Any], schemas: dict[str, Any],
             problem_members: dict[str, Any] | None = None) -> dict[str, Any]:
    """A whole document: bearer security, the Problem response and schema (with ``problem_members`` an API adds,
    like RFC 9470's acr_values), and the API's own paths and schemas."""
    problem = {"type": "object", "required": ["type", "title", "status"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, **(problem_members or {}),
        "errors": {"type": "object", "additionalProperties": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": description},
        "servers": [{"url": server}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Problem": {"description": "An RFC 9457 problem document", "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}},
            "schemas": {"Problem": problem, **schemas},
        },
    }
