"""The account API against its OpenAPI document, with schemathesis: every route is described, generated requests
(valid and not) get answers the document describes, never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

from idp.account.openapi import document
from tests.support import make_client_in, make_user_in
from tests.test_account_api import bearer, sign_in

schema = schemathesis.openapi.from_dict(document("http://localhost"))


def test_the_document_describes_every_route(app, client):
    served = client.get("/api/v1/openapi.json").get_json()
    described = {(method.upper(), "/api/v1" + path) for path, ops in served["paths"].items() for method in ops}
    routes = {(method, rule.rule.replace("<int:factor_id>", "{factor_id}").replace("<int:device_id>", "{device_id}")
               .replace("<sid>", "{sid}").replace("<client_id>", "{client_id}"))
              for rule in app.url_map.iter_rules() if rule.endpoint.startswith("account_api.")
              and rule.endpoint != "account_api.openapi"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert described == routes


@pytest.fixture
def user_headers(app, client):
    make_user_in(app)
    client_id, _none = make_client_in(app, name="Mobile", redirect_uris=["https://app.example/cb"], public=True,
                                      first_party=True, scopes=["openid", "offline_access", "idp:account"])
    return bearer(sign_in(client, client_id)[0])


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_account_api_answers_as_its_document_says(case, app, user_headers):
    case.operation.schema.app = app
    headers = user_headers
    if case.meta is not None:
        header_info = case.meta.components.get(ParameterLocation.HEADER)
        if header_info is not None and header_info.mode == GenerationMode.NEGATIVE:
            headers = None
    # A schema-valid code may be the wrong one, and a name may be blank after trimming: refused, documented.
    cross_field = (case.method, case.path) in {("POST", "/me/factors/totp/{factor_id}/confirm"), ("PATCH", "/me"),
                                               ("POST", "/me/password"),  # the current password must be right
                                               ("POST", "/password/forgot"),  # an address, not any string
                                               ("POST", "/password/reset"),  # a token that a mail carried
                                               ("POST", "/register"),  # an address, a client, a strong password
                                               ("POST", "/me/phone"), ("POST", "/me/phone/verify"),  # a real number
                                               ("POST", "/me/email"), ("POST", "/me/email/verify"),  # an address
                                               ("POST", "/email/verify"),  # a token that a mail carried
                                               ("POST", "/me/phones"), ("POST", "/me/phones/verify"),
                                               ("POST", "/me/factors/webauthn/verify")}  # a real credential
    case.call_and_validate(base_url="http://localhost/api/v1", headers=headers, app=app,
                           excluded_checks=[schemathesis.checks.positive_data_acceptance] if cross_field else None)
