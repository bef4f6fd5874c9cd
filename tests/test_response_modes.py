"""Response modes of the code flow: query (the default), form_post (OAuth 2.0 Form Post Response Mode) for codes
and for errors once the redirect URI is verified; fragment and unknown modes are invalid_request."""

from __future__ import annotations

import html
import re

import pytest

from tests.support import RP_CALLBACK, authorize_url, csrf_token, pkce_pair, query_params, walk_authorize
from tests.test_oidc_protocol import ISSUER, assert_error_page, assert_error_redirect, redeem


def form_of(response) -> tuple[str, dict[str, str]]:
    """The action and the hidden fields of a form_post page."""
    page = response.get_data(as_text=True)
    action = re.search(r'<form id="form-post" method="post" action="([^"]*)"', page)
    assert action, page[:800]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    return html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields.items()}


def test_discovery_lists_query_and_form_post_only(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["response_modes_supported"] == ["query", "form_post"]


def test_form_post_sends_the_code_by_a_form_that_only_the_client_may_receive(client, alice, conf):
    verifier, challenge = pkce_pair()
    response = walk_authorize(client, authorize_url(conf[0], response_mode="form_post", code_challenge=challenge,
                                                    code_challenge_method="S256"))
    assert response.status_code == 200 and "Location" not in response.headers
    action, fields = form_of(response)
    assert action == RP_CALLBACK
    assert set(fields) == {"code", "state", "iss"}
    assert fields["state"] == "state-1" and fields["iss"] == ISSUER
    csp = response.headers["Content-Security-Policy"]
    assert "form-action https://rp.example;" in csp and "http:" not in csp and "'unsafe-inline'" not in csp
    assert "script-src 'self'" in csp
    assert "/static/js/form_post.js" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    script = client.get("/static/js/form_post.js")
    assert script.status_code == 200 and b"submit()" in script.get_data()
    script.close()
    # The code works as any other.
    tokens = redeem(client, *conf, fields["code"], verifier)
    assert tokens.status_code == 200 and "id_token" in tokens.get_json()


def test_the_form_post_page_is_in_the_users_language(client, alice, conf):
    page = walk_authorize(client, authorize_url(conf[0], response_mode="form_post"))
    assert "Continue" in page.get_data(as_text=True)
    french = client.get(authorize_url(conf[0], response_mode="form_post"), headers={"Accept-Language": "fr"})
    assert 'lang="fr"' in french.get_data(as_text=True) and "Continuer" in french.get_data(as_text=True)


def test_a_registered_query_stays_in_the_action_and_the_response_goes_in_the_body(client, alice, make_client):
    uri = "https://rp.example/cb?tenant=7"
    app_id, _ = make_client(name="Tenant App", first_party=True, redirect_uris=[uri])
    response = walk_authorize(client, authorize_url(app_id, redirect_uri=uri, response_mode="form_post"))
    action, fields = form_of(response)
    assert action == uri and "tenant" not in fields and fields["code"]


def test_an_error_after_the_redirect_uri_is_verified_goes_by_form_post(client, conf):
    response = client.get(authorize_url(conf[0], response_mode="form_post", scope="openid unknown-scope"))
    assert response.status_code == 200
    action, fields = form_of(response)
    assert action == RP_CALLBACK
    assert fields["error"] == "invalid_scope" and fields["state"] == "state-1" and fields["iss"] == ISSUER
    assert "code" not in fields


def test_prompt_none_without_a_session_answers_by_form_post(client, conf):
    response = client.get(authorize_url(conf[0], response_mode="form_post", prompt="none"))
    _, fields = form_of(response)
    assert fields["error"] == "login_required"


def test_an_error_before_the_redirect_uri_is_verified_is_still_the_error_page(client, conf):
    assert_error_page(client.get(authorize_url(conf[0], response_mode="form_post",
                                               redirect_uri="https://evil.example/cb")))


@pytest.mark.parametrize("mode", ["fragment", "web_message", "FORM_POST", ""])
def test_an_unsupported_response_mode_is_invalid_request_by_query(client, conf, mode):
    params = assert_error_redirect(client.get(authorize_url(conf[0], response_mode=mode)), "invalid_request")
    assert "response_mode" in params["error_description"]


def test_a_repeated_response_mode_is_invalid_request_by_query(client, conf):
    response = client.get(authorize_url(conf[0], response_mode="form_post") + "&response_mode=form_post")
    assert_error_redirect(response, "invalid_request")


def test_query_is_the_default_and_may_be_named(client, alice, conf):
    for extra in ({}, {"response_mode": "query"}):
        response = walk_authorize(client, authorize_url(conf[0], **extra))
        assert response.status_code == 302 and "code" in query_params(response.headers["Location"])
        client.get("/")  # (the session stays: the next request is answered at once)


def test_a_pushed_form_post_request_answers_by_form_post(client, alice, conf):
    pushed = client.post("/par", data={"client_id": conf[0], "response_type": "code", "redirect_uri": RP_CALLBACK,
                                       "scope": "openid", "state": "s", "response_mode": "form_post"}, auth=conf)
    assert pushed.status_code == 201, pushed.get_json()
    response = walk_authorize(client, f"/authorize?client_id={conf[0]}&request_uri={pushed.get_json()['request_uri']}")
    _, fields = form_of(response)
    assert fields["state"] == "s" and fields["code"]


def test_a_pushed_unknown_response_mode_is_refused_at_par(client, conf):
    pushed = client.post("/par", data={"client_id": conf[0], "response_type": "code", "redirect_uri": RP_CALLBACK,
                                       "scope": "openid", "response_mode": "fragment"}, auth=conf)
    assert pushed.status_code == 400 and pushed.get_json()["error"] == "invalid_request"


def test_form_post_page_carries_no_csrf_token_of_ours(client, alice, conf):
    page = walk_authorize(client, authorize_url(conf[0], response_mode="form_post"))
    with pytest.raises(AssertionError):
        csrf_token(page)  # the client's endpoint gets the response parameters only
