"""Refresh tokens follow OIDC Core 11: offline use only with `offline_access` (and consent where a screen is shown);
a client registered for online sessions gets one without it, and that one ends with the sign-in session."""

from __future__ import annotations

from tests.support import (
    RP_CALLBACK,
    authorize,
    authorize_url,
    csrf_token,
    pkce_pair,
    step_name,
    walk,
)


def code_flow(client, client_id: str, secret: str, scope: str) -> dict:
    """Sign in (answering consent with allow) and redeem the code; the token response body."""
    verifier, challenge = pkce_pair()
    code = authorize(client, client_id, scope=scope, code_challenge=challenge, code_challenge_method="S256")
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": RP_CALLBACK, "code_verifier": verifier},
                           auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def refreshed(client, client_id: str, secret: str, refresh_token: str):
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                       auth=(client_id, secret))


def sign_out(client) -> None:
    page = client.get("/logout")
    assert client.post("/logout", data={"csrf_token": csrf_token(page)}).status_code in (200, 302)


def test_without_offline_access_a_code_flow_gets_no_refresh_token(client, make_user, make_client):
    make_user()
    client_id, secret = make_client(first_party=True)
    body = code_flow(client, client_id, secret, "openid")
    assert body["access_token"] and "refresh_token" not in body


def test_offline_access_gets_a_refresh_token_that_outlives_the_session(client, make_user, make_client):
    make_user()
    client_id, secret = make_client(first_party=True)
    body = code_flow(client, client_id, secret, "openid offline_access")
    assert body["refresh_token"] and "offline_access" in body["scope"].split()
    sign_out(client)
    after = refreshed(client, client_id, secret, body["refresh_token"])
    assert after.status_code == 200, after.get_json()


def test_a_third_party_client_gets_offline_access_only_through_the_consent_screen(client, make_user, make_client):
    make_user()
    client_id, secret = make_client(first_party=False)
    asked = walk(client, authorize_url(client_id, scope="openid offline_access"), stop_at="consent")
    assert asked.screens[-1] == "consent" and "Stay connected" in asked.pages[-1].get_data(as_text=True)
    body = code_flow(client, client_id, secret, "openid offline_access")  # consent allowed this time
    assert body["refresh_token"]
    denied = walk(client, authorize_url(client_id, scope="openid offline_access", prompt="consent"),
                  consent="deny")
    assert denied.params["error"] == "access_denied" and step_name(denied.pages[-1]) == "consent"


def test_an_online_session_client_gets_a_refresh_token_that_ends_with_the_session(client, make_user, make_client):
    make_user()
    client_id, secret = make_client(first_party=True, refresh_tokens_for_sessions=True)
    body = code_flow(client, client_id, secret, "openid")
    assert body["refresh_token"]
    first = refreshed(client, client_id, secret, body["refresh_token"])
    assert first.status_code == 200, first.get_json()  # rotates while the session lives
    rotated = first.get_json()["refresh_token"]
    sign_out(client)
    after = refreshed(client, client_id, secret, rotated)
    assert after.status_code == 400 and after.get_json()["error"] == "invalid_grant"
    info = client.post("/introspect", data={"token": rotated}, auth=(client_id, secret)).get_json()
    assert info["active"] is False


def test_discovery_advertises_offline_access(client):
    assert "offline_access" in client.get("/.well-known/openid-configuration").get_json()["scopes_supported"]
