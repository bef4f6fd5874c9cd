"""The Authorization Challenge Endpoint (draft-ietf-oauth-first-party-apps-04), driven as a native app would:
plain HTTP, no browser, no cookies. Each sign-in redeems its code at /token with PKCE and checks the ID token's
acr/amr; the attacks the draft's security considerations name are tried too."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.extensions import db
from idp.login.factors.recovery_code import new_recovery_codes_for
from idp.models import Factor, User, utcnow
from idp.security.otp import totp_code_at
from tests.support import PASSWORD, enrol_totp_in, last_sms_code, make_client_in, make_user_in, pkce_pair

ALICE = "alice@example.com"
CHALLENGE = "/authorize-challenge"


@pytest.fixture
def app_client(app):
    """A first-party public client (a mobile app): (client_id, None)."""
    return make_client_in(app, name="Mobile", redirect_uris=["https://app.example/cb"], public=True,
                          first_party=True, scopes=["openid", "profile", "email", "offline_access"])


def start(http, client_id: str, **params):
    """The first request: the authorization request with the user's credentials; returns (response, verifier)."""
    verifier, challenge = pkce_pair()
    data = {"client_id": client_id, "response_type": "code", "scope": "openid", "code_challenge": challenge,
            "code_challenge_method": "S256", "username": ALICE, "password": PASSWORD, **params}
    return http.post(CHALLENGE, data={k: v for k, v in data.items() if v is not None}), verifier


def redeem(http, client_id: str, code: str, verifier: str) -> dict:
    """The code at /token (no redirect_uri: none was sent, draft 6) and the verified ID token's claims."""
    response = http.post("/token", data={"grant_type": "authorization_code", "code": code, "client_id": client_id,
                                         "code_verifier": verifier})
    assert response.status_code == 200, response.get_json()
    keys = KeySet.import_key_set(http.get("/jwks.json").get_json())
    return jwt.decode(response.get_json()["id_token"], keys, algorithms=["RS256", "ES256"]).claims


def test_discovery_advertises_the_endpoint(app, client):
    assert client.get("/.well-known/openid-configuration").get_json()["authorization_challenge_endpoint"] == \
        f"{app.config['IDP_ISSUER']}/authorize-challenge"


def test_a_password_only_user_gets_a_code_at_once(app, client, app_client):
    make_user_in(app)
    response, verifier = start(client, app_client[0])
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store" and "device_token" in response.get_json()
    claims = redeem(client, app_client[0], response.get_json()["authorization_code"], verifier)
    assert claims["acr"] == "urn:idp:acr:pwd" and claims["amr"] == ["pwd"] and claims["sid"]


def test_a_totp_user_answers_the_challenge_with_a_code(app, client, app_client):
    make_user_in(app)
    secret = enrol_totp_in(app, ALICE)[0]
    first, verifier = start(client, app_client[0])
    body = first.get_json()
    assert first.status_code == 403 and body["error"] == "insufficient_authorization"
    assert body["step"] == "otp" and "otp" in body["factors"] and body["auth_session"]
    done = client.post(CHALLENGE, data={"auth_session": body["auth_session"], "client_id": app_client[0],
                                        "code": totp_code_at(secret, utcnow())})
    assert done.status_code == 200, done.get_json()
    claims = redeem(client, app_client[0], done.get_json()["authorization_code"], verifier)
    assert claims["acr"] == "urn:idp:acr:mfa" and {"pwd", "otp", "mfa"} <= set(claims["amr"])


def test_an_sms_user_gets_the_text_and_answers_it(app, client, app_client):
    make_user_in(app)
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        db.session.add(Factor(user_id=user.id, kind="sms", name="Phone", phone="+14155550123",
                              confirmed_at=utcnow()))
        db.session.commit()
    first, verifier = start(client, app_client[0])
    body = first.get_json()
    assert body["step"] == "sms"
    done = client.post(CHALLENGE, data={"auth_session": body["auth_session"], "code": last_sms_code(app)})
    claims = redeem(client, app_client[0], done.get_json()["authorization_code"], verifier)
    assert "sms" in claims["amr"] and claims["acr"] == "urn:idp:acr:mfa"


def test_a_recovery_code_can_be_picked_instead(app, client, app_client):
    make_user_in(app)
    enrol_totp_in(app, ALICE)
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        codes = new_recovery_codes_for(user, utcnow(), app.config["IDP_SECRET_KEY"])
        db.session.commit()
    first, verifier = start(client, app_client[0])
    picked = client.post(CHALLENGE, data={"auth_session": first.get_json()["auth_session"],
                                          "factor": "recovery_code"}).get_json()
    assert picked["step"] == "recovery_code"
    done = client.post(CHALLENGE, data={"auth_session": picked["auth_session"], "code": codes[0]})
    assert done.status_code == 200, done.get_json()
    assert redeem(client, app_client[0], done.get_json()["authorization_code"], verifier)["acr"] == \
        "urn:idp:acr:mfa"


def test_unknown_and_known_accounts_get_the_same_refusal(app, client, app_client):
    make_user_in(app)
    wrong, _v = start(client, app_client[0], password="not the password")
    unknown, _v = start(client, app_client[0], username="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 400 and wrong.get_json()["error"] == "access_denied"
    strip = lambda body: {k: v for k, v in body.items() if k != "auth_session"}  # noqa: E731
    assert strip(wrong.get_json()) == strip(unknown.get_json())
    assert wrong.get_json()["step"] == "password"


def test_the_auth_session_changes_at_every_step_and_a_replayed_one_is_refused(app, client, app_client):
    make_user_in(app)
    secret = enrol_totp_in(app, ALICE)[0]
    first, _v = start(client, app_client[0])
    old = first.get_json()["auth_session"]
    wrong = client.post(CHALLENGE, data={"auth_session": old, "client_id": app_client[0], "code": "000000"})
    new = wrong.get_json()["auth_session"]
    assert wrong.status_code == 400 and new != old
    replayed = client.post(CHALLENGE, data={"auth_session": old, "client_id": app_client[0],
                                            "code": totp_code_at(secret, utcnow())})
    assert replayed.status_code == 400 and replayed.get_json()["error"] == "invalid_session"


def test_another_clients_auth_session_is_refused(app, client, app_client):
    make_user_in(app)
    enrol_totp_in(app, ALICE)
    other = make_client_in(app, name="Other app", redirect_uris=["https://o.example/cb"], public=True,
                           first_party=True)
    first, _v = start(client, app_client[0])
    stolen = client.post(CHALLENGE, data={"auth_session": first.get_json()["auth_session"], "client_id": other[0],
                                          "code": "123456"})
    assert stolen.status_code == 400 and stolen.get_json()["error"] == "invalid_session"


def test_a_third_party_client_is_refused(app, client):
    make_user_in(app)
    third, _secret = make_client_in(app, redirect_uris=["https://rp.example/cb"], public=True)
    response, _v = start(client, third)
    assert response.status_code == 400 and response.get_json()["error"] == "unauthorized_client"


def test_wrong_codes_are_throttled_like_the_hosted_pages(make_app):
    app = make_app(IDP_THROTTLE_OTP="5/15minutes")
    http = app.test_client()
    client_id, _none = make_client_in(app, name="Mobile", redirect_uris=["https://app.example/cb"], public=True,
                                      first_party=True)
    make_user_in(app)
    secret = enrol_totp_in(app, ALICE)[0]
    body = start(http, client_id)[0].get_json()
    for _ in range(5):
        body = http.post(CHALLENGE, data={"auth_session": body["auth_session"], "code": "000000"}).get_json()
    refused = http.post(CHALLENGE, data={"auth_session": body["auth_session"], "code": totp_code_at(secret, utcnow())})
    assert refused.status_code == 400 and "authorization_code" not in refused.get_json()
    assert "Too many" in refused.get_json()["error_description"]


def test_an_unverified_address_is_verified_with_the_mailed_code(app, client, app_client, mailbox):
    from tests.support import code_in

    make_user_in(app, verified=False)
    response, verifier = start(client, app_client[0])
    body = response.get_json()
    assert response.status_code == 403 and body["step"] == "email_verification"
    done = client.post(CHALLENGE, data={"auth_session": body["auth_session"], "code": code_in(mailbox.last(ALICE))})
    assert done.status_code == 200, done.get_json()
    assert redeem(client, app_client[0], done.get_json()["authorization_code"], verifier)["amr"] == ["pwd"]
    with app.app_context():
        assert db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one().email_verified


def test_a_factor_the_policy_demands_and_the_user_lacks_is_added_in_a_browser(app, client):
    make_user_in(app)
    strict = make_client_in(app, name="Bank", redirect_uris=["https://bank.example/cb"], public=True,
                            first_party=True, mfa="required")
    response, _v = start(client, strict[0])
    assert response.status_code == 403 and response.get_json()["error"] == "redirect_to_web"


def test_a_public_client_must_send_pkce_and_bad_input_is_an_oauth_error(app, client, app_client):
    make_user_in(app)
    no_pkce = client.post(CHALLENGE, data={"client_id": app_client[0], "response_type": "code", "username": ALICE,
                                           "password": PASSWORD})
    assert no_pkce.status_code == 400 and no_pkce.get_json()["error"] == "invalid_request"
    for data in ({"client_id": app_client[0], "response_type": "token"}, {"client_id": "nobody"},
                 {"client_id": app_client[0], "response_type": "code", "scope": "openid admin"},
                 {"client_id": app_client[0], "auth_session": "x.y"}, {"client_id": app_client[0], "code": "a\x00"}):
        response = client.post(CHALLENGE, data=data)
        assert 400 <= response.status_code < 500 and response.get_json()["error"], (data, response.get_json())
    assert client.get(CHALLENGE).status_code == 405


def test_a_step_up_asks_only_for_the_missing_factor_on_the_same_session(app, client, app_client):
    """RFC 9470 through the challenge endpoint (draft 6.1, 7): the auth_session that came with the first code
    names the app's session; acr_values asks for a factor only, max_age for the password again."""
    make_user_in(app)
    first, verifier = start(client, app_client[0])
    signed_in = first.get_json()
    before = redeem(client, app_client[0], signed_in["authorization_code"], verifier)
    assert before["acr"] == "urn:idp:acr:pwd"
    secret = enrol_totp_in(app, ALICE)[0]  # the user adds an authenticator app meanwhile
    verifier, challenge = pkce_pair()
    step = client.post(CHALLENGE, data={
        "auth_session": signed_in["auth_session"], "client_id": app_client[0], "response_type": "code",
        "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256",
        "acr_values": "urn:idp:acr:mfa"}).get_json()
    assert step["error"] == "insufficient_authorization" and step["step"] == "otp"  # no password asked
    done = client.post(CHALLENGE, data={"auth_session": step["auth_session"], "code": totp_code_at(secret, utcnow())})
    after = redeem(client, app_client[0], done.get_json()["authorization_code"], verifier)
    assert after["acr"] == "urn:idp:acr:mfa" and after["sid"] == before["sid"]
    assert {"pwd", "otp"} <= set(after["amr"])

    verifier, challenge = pkce_pair()
    again = client.post(CHALLENGE, data={
        "auth_session": done.get_json()["auth_session"], "client_id": app_client[0], "response_type": "code",
        "code_challenge": challenge, "code_challenge_method": "S256", "max_age": "0"}).get_json()
    assert again["step"] == "password"  # max_age: the password again, then the factor


def test_a_used_auth_session_of_an_ended_session_is_refused(app, client, app_client):
    from idp.models import LoginSession

    make_user_in(app)
    signed_in = start(client, app_client[0])[0].get_json()
    with app.app_context():
        for row in db.session.execute(db.select(LoginSession)).scalars():
            row.ended_at = utcnow()
        db.session.commit()
    verifier, challenge = pkce_pair()
    refused = client.post(CHALLENGE, data={"auth_session": signed_in["auth_session"], "client_id": app_client[0],
                                           "response_type": "code", "code_challenge": challenge,
                                           "code_challenge_method": "S256"})
    assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_session"


def _signed_in_with_session(client, client_id: str) -> dict:
    return start(client, client_id)[0].get_json()


def _step_up(client, client_id: str, auth_session: str, **params) -> dict:
    _verifier, challenge = pkce_pair()
    return client.post(CHALLENGE, data={"auth_session": auth_session, "client_id": client_id, "response_type": "code",
                                        "code_challenge": challenge, "code_challenge_method": "S256",
                                        **params}).get_json()


def test_a_signed_in_auth_session_is_used_once_and_only_for_a_real_step_up(app, client, app_client):
    """An auth_session that came with a code cannot mint further codes: without acr_values or max_age it asks for
    nothing new (refused), it never widens the scope, and it works once."""
    make_user_in(app)
    signed_in = _signed_in_with_session(client, app_client[0])
    assert _step_up(client, app_client[0], signed_in["auth_session"])["error"] == "invalid_request"
    signed_in = _signed_in_with_session(client, app_client[0])
    wider = _step_up(client, app_client[0], signed_in["auth_session"], scope="openid offline_access",
                     acr_values="urn:idp:acr:pwd")
    assert wider["error"] == "invalid_scope"
    signed_in = _signed_in_with_session(client, app_client[0])
    first = _step_up(client, app_client[0], signed_in["auth_session"], acr_values="urn:idp:acr:pwd")
    assert "authorization_code" in first  # the session already reaches that level: no step
    replay = _step_up(client, app_client[0], signed_in["auth_session"], acr_values="urn:idp:acr:pwd")
    assert replay["error"] == "invalid_session"


def test_a_step_up_in_progress_dies_with_its_session(app, client, app_client):
    from idp.login import sessions

    make_user_in(app)
    signed_in = _signed_in_with_session(client, app_client[0])
    secret = enrol_totp_in(app, ALICE)[0]
    step = _step_up(client, app_client[0], signed_in["auth_session"], acr_values="urn:idp:acr:mfa")
    assert step["step"] == "otp"
    with app.app_context():  # the user signs out everywhere meanwhile
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        sessions.sign_out_everywhere(user, "signed_out_everywhere", utcnow())
        db.session.commit()
    late = client.post(CHALLENGE, data={"auth_session": step["auth_session"], "code": totp_code_at(secret, utcnow())})
    assert late.status_code == 400 and late.get_json()["error"] == "invalid_session"


def test_signing_in_again_for_max_age_must_be_the_same_person(app, client, app_client):
    make_user_in(app)
    make_user_in(app, email="bob@example.com")
    signed_in = _signed_in_with_session(client, app_client[0])
    step = _step_up(client, app_client[0], signed_in["auth_session"], max_age="0")
    assert step["step"] == "password"
    other = client.post(CHALLENGE, data={"auth_session": step["auth_session"], "username": "bob@example.com",
                                         "password": PASSWORD})
    assert other.status_code == 400 and "authorization_code" not in other.get_json()
