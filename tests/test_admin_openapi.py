"""The admin API against its own OpenAPI document, with schemathesis (PyPI): generated requests for every
operation, valid and not, must get answers that the document describes (status, content type, body schema), never a
5xx, and a request without the token must be refused."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

from idp.admin.openapi import document
from tests.test_admin_api import bearer, machine_token

# The document as the server publishes it (tests/test_admin_api.py checks that it is the one served).
schema = schemathesis.openapi.from_dict(document("http://localhost"))


@pytest.fixture
def admin_headers(app, client, make_user):
    make_user()
    return bearer(machine_token(app, client, "idp:admin"))


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_admin_api_answers_as_its_document_says(case, app, admin_headers):
    case.operation.schema.app = app  # this test's app (the schema is built once, before any app exists)
    # Some rules are beyond JSON Schema: a client's settings across fields (the authorization_code grant needs a
    # redirect URI...), an email address as email-validator reads it, an end time in the future; so a
    # schema-valid request there may be refused, with a problem document.
    cross_field = (case.method, case.path) in {("POST", "/v1/clients"), ("PATCH", "/v1/clients/{client_id}"),
                                               ("PATCH", "/v1/users/{user_id}"), ("POST", "/v1/users/{user_id}/roles"),
                                               ("POST", "/v1/users/{user_id}/password"),  # a strong one
                                               ("POST", "/v1/users")}  # a password or an invitation, not both
    # A case made to break the headers (the Authorization header the document requires among them) is sent as
    # generated: adding the token back would turn it into a valid request.
    headers = admin_headers
    if case.meta is not None:
        header_info = case.meta.components.get(ParameterLocation.HEADER)
        if header_info is not None and header_info.mode == GenerationMode.NEGATIVE:
            headers = None
    case.call_and_validate(base_url="http://localhost/admin/api", headers=headers, app=app,
                           excluded_checks=[schemathesis.checks.positive_data_acceptance] if cross_field else None)
