"""Dynamic client registration (RFC 7591, RFC 7592, OpenID Connect Dynamic Client Registration 1.0; idp.oidc.dynamic):
the three IDP_REGISTRATION modes, initial access tokens, the metadata refused, the RFC 7592 lifecycle, and a
registered client signing a user in."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idp.extensions import db
from idp.models import Client, InitialAccessToken, Token, utcnow
from tests.support import RP_CALLBACK, audit_events, authorize_url, pkce_pair, walk
from tests.test_oidc_protocol import AT_ONCE, ON_POSTGRES, at_once

GOOD = {"redirect_uris": [RP_CALLBACK], "client_name": "Shop", "policy_uri": "https://rp.example/privacy",
        "tos_uri": "https://rp.example/terms", "logo_uri": "https://rp.example/logo.png",
        "grant_types": ["authorization_code", "refresh_token"], "scope": "openid profile email offline_access"}


@pytest.fixture
def open_app(make_app):
    return make_app(IDP_REGISTRATION="open")


@pytest.fixture
def token_app(make_app):
    return make_app(IDP_REGISTRATION="initial-token")


def register(client, metadata=None, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/register", data=json.dumps(GOOD if metadata is None else metadata), headers=headers,
                       content_type="application/json", **kwargs)


def initial_token(cli, *args):
    result = cli("clients", "initial-token", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["initial_access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def managed(body: dict) -> str:
    """The path of a client's registration_client_uri (the test client speaks paths)."""
    return body["registration_client_uri"].removeprefix("http://localhost")


def stored_client(app, client_id: str) -> Client | None:
    with app.app_context():
        row = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none()
        if row is not None:
            db.session.expunge(row)
        return row


# --- the three modes ---------------------------------------------------------------------------------------------

def test_closed_by_default_registration_is_not_found_and_not_advertised(app, client):
    assert app.config["IDP_REGISTRATION"] == "closed"
    assert "registration_endpoint" not in client.get("/.well-known/openid-configuration").get_json()
    assert "registration_endpoint" not in client.get("/.well-known/oauth-authorization-server").get_json()
    response = register(client)
    assert response.status_code == 404
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Client)).scalar() == 0


def test_open_registration_is_advertised_and_registers_a_confidential_client(open_app):
    client = open_app.test_client()
    assert (client.get("/.well-known/openid-configuration").get_json()["registration_endpoint"]
            == "http://localhost/register")
    response = register(client)
    assert response.status_code == 201, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["client_secret"] and body["client_secret_expires_at"] == 0
    assert body["client_id_issued_at"] <= int(utcnow().timestamp())
    assert body["registration_access_token"]
    assert body["registration_client_uri"] == f"http://localhost/register/{body['client_id']}"
    for field in ("redirect_uris", "client_name", "policy_uri", "tos_uri", "logo_uri", "grant_types", "scope"):
        assert body[field] == GOOD[field], field
    assert body["response_types"] == ["code"] and body["token_endpoint_auth_method"] == "client_secret_basic"
    row = stored_client(open_app, body["client_id"])
    assert row is not None and not row.first_party
    # Secrets are stored hashed only (SECURITY.md 8).
    assert body["client_secret"] not in (row.client_secret_hash or "")
    assert row.registration_access_token_hash and body["registration_access_token"] not in row.__dict__.values()
    [event] = audit_events(open_app, "client.registered")
    assert event.client_id == body["client_id"] and event.details["via"] == "registration"
    details = json.dumps(event.details)
    assert body["client_secret"] not in details and body["registration_access_token"] not in details


def test_a_public_client_gets_no_secret_and_rfc7591_defaults(open_app):
    response = register(open_app.test_client(), {"redirect_uris": ["http://127.0.0.1/cb"],
                                                  "token_endpoint_auth_method": "none"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert "client_secret" not in body and "client_secret_expires_at" not in body
    assert body["grant_types"] == ["authorization_code"] and body["response_types"] == ["code"]
    assert body["client_name"] == "127.0.0.1" and body["application_type"] == "web"
    assert "idp:" not in body["scope"] and "openid" in body["scope"].split()


def test_initial_token_mode_needs_a_live_token(token_app, cli):
    client = token_app.test_client()
    assert "registration_endpoint" in client.get("/.well-known/openid-configuration").get_json()
    missing = register(client)
    assert missing.status_code == 401 and missing.get_json()["error"] == "invalid_token"
    assert missing.headers["WWW-Authenticate"].startswith('Bearer realm="idp-registration", error="invalid_token"')
    assert register(client, token="not-a-token").status_code == 401
    token = initial_token(cli)
    assert register(client, token=token).status_code == 201
    assert register(client, token=token).status_code == 201  # no --uses: any number until it expires
    with token_app.app_context():
        row = db.session.execute(db.select(InitialAccessToken)).scalar_one()
        assert token not in (row.token_hash,) and row.used == 2 and row.uses_left is None
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    expired = register(client, token=token)
    assert expired.status_code == 401 and "expired" in expired.get_json()["error_description"]
    [issued] = audit_events(token_app, "client.initial_token_issued")
    assert issued.details["via"] == "cli" and issued.details["uses"] is None


def test_a_one_use_token_registers_once_and_refused_metadata_uses_nothing(token_app, cli):
    client = token_app.test_client()
    token = initial_token(cli, "--uses", "1", "--expires-in", "600")
    refused = register(client, {**GOOD, "redirect_uris": ["javascript:alert(1)"]}, token=token)
    assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_redirect_uri"
    first = register(client, token=token)
    assert first.status_code == 201
    used_up = register(client, token=token)
    assert used_up.status_code == 401 and used_up.get_json()["error"] == "invalid_token"
    [event] = audit_events(token_app, "client.registered")
    with token_app.app_context():
        row = db.session.execute(db.select(InitialAccessToken)).scalar_one()
        assert event.details["initial_token_id"] == row.id and row.uses_left == 0


@pytest.mark.parametrize("args, message", [(["--uses", "0"], "uses is a number"),
                                           (["--expires-in", "5"], "expires_in is a number of seconds")])
def test_the_cli_refuses_a_useless_initial_token(cli, args, message):
    result = cli("clients", "initial-token", *args)
    assert result.exit_code != 0 and message in result.output


def test_the_admin_api_issues_initial_tokens_to_admins_only(token_app):
    from tests.test_admin_api import machine_token

    http = token_app.test_client()
    admin = bearer(machine_token(token_app, http, "idp:admin"))
    helpdesk = bearer(machine_token(token_app, http, "idp:helpdesk"))
    refused = http.post("/admin/api/v1/initial-access-tokens", json={"uses": 1}, headers=helpdesk)
    assert refused.status_code == 403
    bad = http.post("/admin/api/v1/initial-access-tokens", json={"uses": 0}, headers=admin)
    assert bad.status_code == 400 and "initial_access_token" in bad.get_json()["errors"]
    unknown = http.post("/admin/api/v1/initial-access-tokens", json={"scope": "x"}, headers=admin)
    assert unknown.status_code == 400
    issued = http.post("/admin/api/v1/initial-access-tokens", json={"uses": 1, "expires_in": 3600}, headers=admin)
    assert issued.status_code == 201 and issued.headers["Cache-Control"] == "no-store"
    body = issued.get_json()
    assert body["uses"] == 1 and body["expires_at"]
    assert register(http, token=body["initial_access_token"]).status_code == 201
    assert register(http, token=body["initial_access_token"]).status_code == 401
    [event] = audit_events(token_app, "client.initial_token_issued")
    assert event.details["via"] == "api"


# --- metadata refused (RFC 7591 3.2.2) -------------------------------------------------------------------------------

JWKS = {"keys": [{"kty": "EC", "crv": "P-256", "x": "DuzTQV5duE0JQNcPdznlsALFgBY2OLNJlgysEdUIgbs",
                  "y": "L94xgN04rVJU-3WvKhSVu2FZZmWJ8yxNOWRFdeTE2KE"}]}


@pytest.mark.parametrize("change, error, words", [
    ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri", "scheme not allowed"),
    ({"redirect_uris": ["https://rp.example/cb#frag"]}, "invalid_redirect_uri", "fragment"),
    ({"redirect_uris": ["http://rp.example/cb"]}, "invalid_redirect_uri", "loopback"),
    ({"redirect_uris": ["com.example.app://cb"]}, "invalid_redirect_uri", "web application"),
    ({"redirect_uris": []}, "invalid_redirect_uri", "redirect"),
    ({"redirect_uris": "https://rp.example/cb"}, "invalid_client_metadata", "redirect_uris must be an array"),
    ({"redirect_uris": [5]}, "invalid_redirect_uri", "list of at most"),
    ({"logo_uri": "http://rp.example/logo.png"}, "invalid_client_metadata", "logo"),
    ({"policy_uri": "http://rp.example/privacy"}, "invalid_client_metadata", "policy_uri"),
    ({"policy_uri": "javascript:alert(1)"}, "invalid_client_metadata", "policy_uri"),
    ({"tos_uri": "http://rp.example/terms"}, "invalid_client_metadata", "tos_uri"),
    ({"grant_types": ["authorization_code", "password"]}, "invalid_client_metadata", "unsupported grant type"),
    ({"grant_types": ["implicit"], "response_types": ["token"]}, "invalid_client_metadata", "response_types"),
    ({"response_types": ["code id_token"]}, "invalid_client_metadata", "response_types"),
    ({"response_types": ["token"]}, "invalid_client_metadata", "response_types"),
    ({"grant_types": ["client_credentials"], "response_types": ["code"]}, "invalid_client_metadata", "go together"),
    ({"jwks": JWKS, "jwks_uri": "https://rp.example/jwks.json", "token_endpoint_auth_method": "private_key_jwt"},
     "invalid_client_metadata", "both"),
    ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata", "private_key_jwt needs"),
    ({"token_endpoint_auth_method": "client_secret_jwt"}, "invalid_client_metadata", "auth method"),
    ({"scope": "openid idp:admin"}, "invalid_client_metadata", "idp:admin"),
    ({"scope": "openid idp:account"}, "invalid_client_metadata", "idp:account"),
    ({"scope": "openid launch_missiles"}, "invalid_client_metadata", "unknown scopes"),
    ({"id_token_signed_response_alg": "none"}, "invalid_client_metadata", "ID token algorithm"),
    ({"id_token_encrypted_response_alg": "RSA-OAEP"}, "invalid_client_metadata", "not supported"),
    ({"subject_type": "pairwise"}, "invalid_client_metadata", "subject_type"),
    ({"application_type": "desktop"}, "invalid_client_metadata", "application_type"),
    ({"client_name": "x" * 201}, "invalid_client_metadata", "client name"),
    ({"dpop_bound_access_tokens": "yes"}, "invalid_client_metadata", "true or false"),
    ({"backchannel_logout_uri": "https://rp.example/logout#x"}, "invalid_client_metadata", "logout URI"),
    ({"frontchannel_logout_uri": "https://elsewhere.example/logout"}, "invalid_client_metadata", "front-channel"),
    ({"post_logout_redirect_uris": ["http://rp.example/bye"]}, "invalid_client_metadata", "loopback"),
    # Operator-only grants (review finding: device-code phishing by a stranger's client, RFC 8628 5.4)
    ({"grant_types": ["urn:ietf:params:oauth:grant-type:device_code"], "response_types": []},
     "invalid_client_metadata", "not open to dynamic registration"),
    ({"grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"], "response_types": []},
     "invalid_client_metadata", "not open to dynamic registration"),
])
def test_invalid_metadata_is_refused_with_a_description(open_app, change, error, words):
    response = register(open_app.test_client(), {**GOOD, **change})
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["error"] == error and words in body["error_description"], body
    with open_app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Client)).scalar() == 0


@pytest.mark.parametrize("data, content_type", [
    ("not json", "application/json"), ("[1, 2]", "application/json"), ('"text"', "application/json"),
    (json.dumps(GOOD), "application/x-www-form-urlencoded"), ('{"client_name": "a\\u0000b"}', "application/json"),
    ('{"client_name": "\\ud800"}', "application/json"), ("[" * 100000 + "]" * 100000, "application/json"),
])
def test_a_body_that_is_not_a_json_object_is_invalid_metadata(open_app, data, content_type):
    response = open_app.test_client().post("/register", data=data, content_type=content_type)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_client_metadata"


def test_a_native_app_may_register_its_own_scheme_and_unknown_metadata_is_ignored(open_app):
    response = register(open_app.test_client(), {
        "redirect_uris": ["com.example.app://callback", "http://127.0.0.1/cb"], "application_type": "native",
        "token_endpoint_auth_method": "none", "client_name": "App", "contacts": ["ops@example.com"],
        "software_statement": "eyJhbGciOiJub25lIn0.e30.", "client_name#fr": "Appli"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["application_type"] == "native" and "contacts" not in body and "software_statement" not in body


def test_private_key_jwt_clients_register_their_keys_and_get_no_secret(open_app):
    response = register(open_app.test_client(), {**GOOD, "token_endpoint_auth_method": "private_key_jwt",
                                                  "jwks": JWKS, "dpop_bound_access_tokens": True,
                                                  "require_pushed_authorization_requests": True})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert "client_secret" not in body and body["jwks"] == JWKS
    assert body["dpop_bound_access_tokens"] is True and body["require_pushed_authorization_requests"] is True


def test_registration_is_rate_limited_per_ip(make_app):
    app = make_app(IDP_REGISTRATION="open", IDP_RATELIMIT_REGISTRATION="2/minute")
    client = app.test_client()
    assert [register(client).status_code for _ in range(2)] == [201, 201]
    limited = register(client)
    assert limited.status_code == 429 and limited.get_json()["error"] == "invalid_request"
    assert int(limited.headers["Retry-After"]) <= 60
    other = register(client, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 201


# --- RFC 7592: read, replace, delete ---------------------------------------------------------------------------------

def test_the_registration_lifecycle_read_replace_delete(open_app):
    http = open_app.test_client()
    body = register(http).get_json()
    path, token, secret = managed(body), body["registration_access_token"], body["client_secret"]
    other = register(http).get_json()

    assert http.get(path).status_code == 401
    assert http.get(path, headers=bearer(other["registration_access_token"])).status_code == 401
    read = http.get(path, headers=bearer(token))
    assert read.status_code == 200 and read.headers["Cache-Control"] == "no-store"
    assert read.get_json()["client_name"] == "Shop" and "client_secret" not in read.get_json()
    assert "registration_access_token" not in read.get_json()

    # A PUT replaces the registration: omitted fields are removed (RFC 7592 2.2); it is checked as at registration.
    new = {"client_id": body["client_id"], "client_secret": secret, "redirect_uris": ["https://rp.example/cb2"],
           "client_name": "Shop 2", "tos_uri": "https://rp.example/terms2"}
    for refused, error in [({**new, "client_id": other["client_id"]}, "invalid_request"),
                           ({k: v for k, v in new.items() if k != "client_id"}, "invalid_request"),
                           ({**new, "client_secret": "wrong"}, "invalid_request"),
                           ({**new, "registration_access_token": token}, "invalid_request"),
                           ({**new, "redirect_uris": ["https://rp.example/#x"]}, "invalid_redirect_uri"),
                           ({**new, "token_endpoint_auth_method": "none"}, "invalid_client_metadata")]:
        answer = http.put(path, json=refused, headers=bearer(token))
        assert answer.status_code == 400 and answer.get_json()["error"] == error, (refused, answer.get_json())
    assert http.get(path, headers=bearer(token)).get_json()["client_name"] == "Shop"  # nothing changed

    replaced = http.put(path, json=new, headers=bearer(token))
    assert replaced.status_code == 200, replaced.get_json()
    updated = replaced.get_json()
    assert updated["client_name"] == "Shop 2" and updated["redirect_uris"] == ["https://rp.example/cb2"]
    assert updated["tos_uri"] == "https://rp.example/terms2" and "policy_uri" not in updated
    assert "logo_uri" not in updated and updated["grant_types"] == ["authorization_code"]
    # The registration access token is rotated by a PUT; the client secret is kept.
    assert updated["registration_access_token"] != token and "client_secret" not in updated
    assert http.get(path, headers=bearer(token)).status_code == 401
    token = updated["registration_access_token"]
    issued = http.post("/token", data={"grant_type": "client_credentials"}, auth=(body["client_id"], secret))
    assert issued.get_json()["error"] == "unauthorized_client"  # the secret still authenticates the client

    with open_app.app_context():  # a token of the client's, revoked with it
        db.session.add(Token(jti="j-1", client_id=body["client_id"], grant_type="authorization_code",
                             family_id="f-1", access_expires_at=utcnow() + timedelta(minutes=5)))
        db.session.commit()
    deleted = http.delete(path, headers=bearer(token))
    assert deleted.status_code == 204
    assert stored_client(open_app, body["client_id"]) is None
    with open_app.app_context():
        row = db.session.execute(db.select(Token).where(Token.jti == "j-1")).scalar_one()
        assert row.revoked_at is not None
    assert http.get(path, headers=bearer(token)).status_code == 401
    assert http.get(managed(other), headers=bearer(other["registration_access_token"])).status_code == 200
    assert [e.details["changes"]["name"] for e in audit_events(open_app, "client.registration_updated")] == [
        ["Shop", "Shop 2"]]
    [gone] = audit_events(open_app, "client.registration_deleted")
    assert gone.client_id == body["client_id"] and gone.details["tokens_revoked"] == 1


def test_an_operators_client_has_no_registration_access_token(open_app, make_client):
    client_id, _ = make_client()
    assert open_app.test_client().get(f"/register/{client_id}", headers=bearer("x")).status_code == 401


# --- a registered client signs a user in ---------------------------------------------------------------------------

def test_a_registered_client_signs_a_user_in_and_the_consent_page_links_its_policy_and_terms(open_app, make_user):
    make_user()
    http = open_app.test_client()
    body = register(http).get_json()
    verifier, challenge = pkce_pair()
    walked = walk(http, authorize_url(body["client_id"], code_challenge=challenge, code_challenge_method="S256",
                                      scope="openid profile"))
    assert "consent" in walked.screens  # never first-party: the user is asked
    page = walked.pages[walked.screens.index("consent")].get_data(as_text=True)
    assert 'href="https://rp.example/privacy"' in page and "Shop's privacy policy" in page
    assert 'href="https://rp.example/terms"' in page and "Shop's terms of service" in page
    code = walked.code
    tokens = http.post("/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP_CALLBACK,
                                       "code_verifier": verifier}, auth=(body["client_id"], body["client_secret"]))
    assert tokens.status_code == 200, tokens.get_json()
    assert tokens.get_json()["id_token"] and "refresh_token" not in tokens.get_json()


def test_the_consent_page_links_are_translated(open_app, make_user):
    make_user()
    http = open_app.test_client()
    body = register(http).get_json()
    walked = walk(http, authorize_url(body["client_id"], ui_locales="fr"), stop_at="consent")
    page = walked.pages[-1].get_data(as_text=True)
    assert "Politique de confidentialité de Shop" in page and "Conditions d'utilisation de Shop" in page


def test_authlib_clients_use_a_registered_client(make_app):
    """Authlib has no client-side registration helper (authlib.integrations and authlib.oauth2.client only use
    credentials registered beforehand): the registration is plain JSON over HTTP, and Authlib's OAuth2Session then
    authenticates with what it returned."""
    import requests
    from authlib.integrations.requests_client import OAuth2Session

    from tests.conftest import LiveServer

    server = LiveServer(make_app, IDP_REGISTRATION="open")
    server.start()
    try:
        discovery = requests.get(f"{server.url}/.well-known/openid-configuration", timeout=10).json()
        answer = requests.post(discovery["registration_endpoint"], timeout=10, json={
            "client_name": "Robot", "grant_types": ["client_credentials"], "scope": "openid"})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        session = OAuth2Session(body["client_id"], body["client_secret"], scope="openid",
                                token_endpoint_auth_method=body["token_endpoint_auth_method"])
        token = session.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
        assert token["access_token"] and token["token_type"] == "Bearer"
        read = requests.get(body["registration_client_uri"], timeout=10,
                            headers=bearer(body["registration_access_token"]))
        assert read.status_code == 200 and read.json()["client_id"] == body["client_id"]
    finally:
        server.stop()


# --- races and random input ----------------------------------------------------------------------------------------

@ON_POSTGRES
def test_a_one_use_token_presented_at_once_registers_one_client(token_app, cli):
    token = initial_token(cli, "--uses", "1")
    responses = at_once(token_app, lambda http: register(http, token=token))
    assert sorted(r.status_code for r in responses) == [201] + [401] * (AT_ONCE - 1)
    with token_app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Client)).scalar() == 1


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4), max_leaves=12)
_FIELDS = st.sampled_from(["redirect_uris", "grant_types", "response_types", "token_endpoint_auth_method",
                           "client_name", "logo_uri", "policy_uri", "tos_uri", "jwks", "jwks_uri", "scope",
                           "post_logout_redirect_uris", "backchannel_logout_uri", "frontchannel_logout_uri",
                           "id_token_signed_response_alg", "application_type", "dpop_bound_access_tokens",
                           "require_pushed_authorization_requests", "subject_type", "client_id", "client_secret"])
_VALUES = st.one_of(_JSON, st.sampled_from([[RP_CALLBACK], ["javascript:alert(1)"], "none", "private_key_jwt",
                                            ["authorization_code"], ["code"], "https://rp.example/x", "\x00",
                                            {"keys": [{"kty": "EC"}]}, "openid idp:admin", "\ud800"]))


def test_random_json_bodies_at_register_never_give_a_500(make_app):
    http = make_app(IDP_REGISTRATION="open", IDP_RATELIMIT_REGISTRATION="10000/minute").test_client()
    sent = []

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=st.one_of(st.dictionaries(_FIELDS, _VALUES, max_size=8), _JSON))
    def one(body):
        data = json.dumps(body)
        response = http.post("/register", data=data, content_type="application/json")
        assert response.status_code in (201, 400), (data[:300], response.status_code, response.get_data()[:300])
        sent.append(response.status_code)
        if response.status_code == 201:  # what was registered reads back and is replaced by the same body
            answer = response.get_json()
            again = http.put(managed(answer), data=json.dumps({**body, "client_id": answer["client_id"]}),
                             content_type="application/json", headers=bearer(answer["registration_access_token"]))
            assert again.status_code in (200, 400), again.get_data()[:300]

    one()
    assert 400 in sent
