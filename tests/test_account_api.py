"""The account API (/api/v1) as a native app uses it, with no browser: sign in at the challenge endpoint, manage
the account, meet the RFC 9470 step-up challenge, step up, refresh, log out."""

from __future__ import annotations

import json

import pytest

from idp.extensions import db
from idp.models import AuditEvent, Factor, utcnow
from idp.security.otp import totp_code_at
from tests.support import PASSWORD, make_client_in, make_user_in, pkce_pair
from tests.test_challenge import ALICE, CHALLENGE, redeem

API = "/api/v1"


@pytest.fixture
def mobile(app):
    return make_client_in(app, name="Mobile", redirect_uris=["https://app.example/cb"], public=True,
                          first_party=True, scopes=["openid", "profile", "email", "offline_access", "idp:account"])


def sign_in(http, client_id: str, scope: str = "openid offline_access idp:account", otp: str | None = None,
            **extra) -> tuple[dict, dict]:
    """Sign in at the challenge endpoint (answering the TOTP step with ``otp``'s code); returns (tokens, the last
    challenge answer)."""
    verifier, challenge = pkce_pair()
    answer = http.post(CHALLENGE, data={"client_id": client_id, "response_type": "code", "scope": scope,
                                        "code_challenge": challenge, "code_challenge_method": "S256",
                                        "username": ALICE, "password": PASSWORD, **extra}).get_json()
    if "authorization_code" not in answer:
        assert answer["step"] == "otp", answer
        answer = http.post(CHALLENGE, data={"auth_session": answer["auth_session"],
                                            "code": totp_code_at(otp, utcnow())}).get_json()
    tokens = http.post("/token", data={"grant_type": "authorization_code", "code": answer["authorization_code"],
                                       "client_id": client_id, "code_verifier": verifier}).get_json()
    return tokens, answer


def bearer(tokens: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def test_a_native_app_signs_in_manages_factors_steps_up_refreshes_and_logs_out(app, client, mobile):
    make_user_in(app, name="Alice")
    tokens, first = sign_in(client, mobile[0])
    me = client.get(f"{API}/me", headers=bearer(tokens))
    assert me.status_code == 200 and me.get_json()["email"] == ALICE and me.get_json()["mfa"] is False

    started = client.post(f"{API}/me/factors/totp", headers=bearer(tokens))
    assert started.status_code == 201 and started.get_json()["otpauth_uri"].startswith("otpauth://totp/")
    secret, factor_id = started.get_json()["secret"], started.get_json()["id"]
    confirmed = client.post(f"{API}/me/factors/totp/{factor_id}/confirm", headers=bearer(tokens),
                            json={"code": totp_code_at(secret, utcnow())})
    assert confirmed.status_code == 200 and confirmed.get_json()["confirmed"] is True
    assert [f["kind"] for f in client.get(f"{API}/me/factors", headers=bearer(tokens)).get_json()["items"]] == ["otp"]

    # The first token's sign-in (a password) is no longer enough for a change now that the user has a factor.
    refused = client.delete(f"{API}/me/factors/{factor_id}", headers=bearer(tokens))
    assert refused.status_code == 401
    challenge = refused.headers["WWW-Authenticate"]
    assert 'error="insufficient_user_authentication"' in challenge and 'acr_values="urn:idp:acr:mfa"' in challenge
    assert "max_age=" in challenge and refused.content_type == "application/problem+json"

    # Step up on the same session (only the factor is asked), then the change goes through.
    verifier, code_challenge = pkce_pair()
    step = client.post(CHALLENGE, data={"auth_session": first["auth_session"], "client_id": mobile[0],
                                        "response_type": "code", "scope": "openid offline_access idp:account",
                                        "code_challenge": code_challenge, "code_challenge_method": "S256",
                                        "acr_values": "urn:idp:acr:mfa"}).get_json()
    assert step["step"] == "otp"
    done = client.post(CHALLENGE, data={"auth_session": step["auth_session"],
                                        "code": totp_code_at(secret, utcnow() + __import__("datetime").timedelta(
                                            seconds=30))}).get_json()
    claims = redeem(client, mobile[0], done["authorization_code"], verifier)
    assert claims["acr"] == "urn:idp:acr:mfa"
    stronger = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                           "client_id": mobile[0]}).get_json()
    assert "access_token" in stronger  # refreshing keeps the old sign-in's level: still refused below
    assert client.delete(f"{API}/me/factors/{factor_id}", headers=bearer(stronger)).status_code == 401

    verifier, code_challenge = pkce_pair()
    step = client.post(CHALLENGE, data={"auth_session": done["auth_session"], "client_id": mobile[0],
                                        "response_type": "code", "scope": "openid offline_access idp:account",
                                        "code_challenge": code_challenge, "code_challenge_method": "S256",
                                        "acr_values": "urn:idp:acr:mfa"}).get_json()
    fresh = client.post("/token", data={"grant_type": "authorization_code", "code": step["authorization_code"],
                                        "client_id": mobile[0], "code_verifier": verifier}).get_json()
    assert client.delete(f"{API}/me/factors/{factor_id}", headers=bearer(fresh)).status_code == 204
    with app.app_context():
        assert db.session.get(Factor, factor_id) is None

    sessions = client.get(f"{API}/me/sessions", headers=bearer(fresh)).get_json()["items"]
    assert [row["current"] for row in sessions] == [True]
    assert client.post(f"{API}/logout", headers=bearer(fresh)).status_code == 204
    assert client.get(f"{API}/me", headers=bearer(fresh)).status_code == 401
    again = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"],
                                        "client_id": mobile[0]})
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_the_api_needs_a_first_party_users_token_with_the_account_scope(app, client, mobile):
    make_user_in(app)
    assert client.get(f"{API}/me").status_code == 401
    narrow, _answer = sign_in(client, mobile[0], scope="openid")
    refused = client.get(f"{API}/me", headers=bearer(narrow))
    assert refused.status_code == 403 and 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    from idp.oidc.registration import create_client
    with app.app_context(), pytest.raises(ValueError, match="idp:account"):
        create_client(name="x", redirect_uris=["https://rp.example/cb"], post_logout_redirect_uris=[], public=True,
                      grant_types=[], scopes=["openid", "idp:account"], auth_method=None, first_party=False)


def test_profile_changes_are_checked_and_audited(app, client, mobile):
    make_user_in(app, name="Alice")
    tokens, _answer = sign_in(client, mobile[0])
    changed = client.patch(f"{API}/me", headers=bearer(tokens), json={"name": "Alice L.", "locale": "fr"})
    assert changed.status_code == 200 and changed.get_json()["locale"] == "fr"
    for body in ({"email": "x@example.com"}, {"name": ""}, {"locale": "xx"}, {"name": "a\x00"}, ["list"]):
        response = client.patch(f"{API}/me", headers=bearer(tokens), json=body)
        assert response.status_code == 400 and response.content_type == "application/problem+json", body
    with app.app_context():
        row = db.session.execute(db.select(AuditEvent).where(AuditEvent.event == "profile.updated")).scalar_one()
        assert row.details["changes"]["name"] == ["Alice", "Alice L."]


def test_password_change_forgot_and_reset_through_the_api(app, client, mobile, mailbox):
    from tests.support import link_in

    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    other = app.test_client()
    other_tokens, _other = sign_in(other, mobile[0], scope="openid idp:account")  # online: ends with its session
    wrong = client.post(f"{API}/me/password", headers=bearer(tokens),
                        json={"current_password": "not it", "new_password": "a new long passphrase 1"})
    assert wrong.status_code == 400 and "current_password" in wrong.get_json()["errors"]
    changed = client.post(f"{API}/me/password", headers=bearer(tokens),
                          json={"current_password": PASSWORD, "new_password": "a new long passphrase 1"})
    assert changed.status_code == 204
    assert client.get(f"{API}/me", headers=bearer(tokens)).status_code == 200  # this session stays
    assert other.get(f"{API}/me", headers=bearer(other_tokens)).status_code == 401  # the other one ended

    for email in (ALICE, "nobody@example.com"):  # the same answer with or without an account
        assert client.post(f"{API}/password/forgot", json={"email": email}).status_code == 202
    token = link_in(mailbox.last(ALICE, "Reset"), "/reset#").rpartition("#")[2]
    weak = client.post(f"{API}/password/reset", json={"token": token, "password": "password"})
    assert weak.status_code == 400 and "password" in weak.get_json()["errors"]
    assert client.post(f"{API}/password/reset", json={"token": token, "password": "the reset passphrase 2"}
                       ).status_code == 204
    assert client.get(f"{API}/me", headers=bearer(tokens)).status_code == 401  # a reset ends every session
    again = client.post(f"{API}/password/reset", json={"token": token, "password": "another passphrase 3"})
    assert again.status_code == 400 and again.get_json()["title"] == "Invalid token"


def test_a_native_app_registers_a_user_who_verifies_the_mailed_code_and_is_signed_in(app, client, mobile, mailbox):
    from tests.support import code_in

    verifier, challenge = pkce_pair()
    body = {"client_id": mobile[0], "email": "new@example.com", "name": "New", "password": "a fine passphrase 9",
            "scope": "openid idp:account", "code_challenge": challenge, "code_challenge_method": "S256"}
    started = client.post(f"{API}/register", json=body)
    assert started.status_code == 202 and started.get_json()["step"] == "email_verification"
    code = code_in(mailbox.last("new@example.com"))
    wrong = client.post(CHALLENGE, data={"auth_session": started.get_json()["auth_session"], "code": "000000"})
    assert wrong.status_code == 400 and wrong.get_json()["step"] == "email_verification"
    done = client.post(CHALLENGE, data={"auth_session": wrong.get_json()["auth_session"], "code": code})
    assert done.status_code == 200, done.get_json()
    tokens = client.post("/token", data={"grant_type": "authorization_code", "client_id": mobile[0],
                                         "code": done.get_json()["authorization_code"],
                                         "code_verifier": verifier}).get_json()
    profile = client.get(f"{API}/me", headers=bearer(tokens)).get_json()
    assert profile["email"] == "new@example.com" and profile["email_verified"] is True


def test_registering_an_existing_address_answers_the_same_and_mails_its_owner(app, client, mobile, mailbox):
    make_user_in(app)
    _verifier, challenge = pkce_pair()
    body = {"client_id": mobile[0], "email": ALICE, "name": "Mallory", "password": "a fine passphrase 9",
            "code_challenge": challenge, "code_challenge_method": "S256"}
    taken = client.post(f"{API}/register", json=body)
    fresh = client.post(f"{API}/register", json={**body, "email": "free@example.com"})
    assert taken.status_code == fresh.status_code == 202
    assert set(taken.get_json()) == set(fresh.get_json()) and taken.get_json()["step"] == "email_verification"
    assert "already" in mailbox.last(ALICE)["text"].lower()
    for bad in ({**body, "email": "not an address"}, {**body, "password": "password"}, {**body, "client_id": "x"},
                {**body, "admin": "true"}):
        response = client.post(f"{API}/register", json=bad)
        assert response.status_code in (400, 401) and response.content_type == "application/problem+json", bad


def test_deleting_my_account_through_the_api_then_restoring_it_from_the_mail(app, client, mobile, mailbox):
    from tests.support import link_in

    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    exported = client.get(f"{API}/me/export", headers=bearer(tokens))
    data = exported.get_json()
    assert exported.status_code == 200 and data["profile"]["email"] == ALICE
    assert any(event["event"] == "login.success" for event in data["events"])
    assert "password" not in str(data).lower().replace("password_changed_at", "")
    assert client.delete(f"{API}/me", headers=bearer(tokens)).status_code == 204
    assert client.get(f"{API}/me", headers=bearer(tokens)).status_code == 401
    refused, _v = __import__("tests.test_challenge", fromlist=["start"]).start(client, mobile[0])
    assert refused.status_code == 400  # a deleted account cannot sign in
    from tests.support import open_link, submit_link

    link = link_in(mailbox.last(ALICE, "deleted"), "/account/restore#")
    restored = submit_link(client, link, open_link(client, link), confirm="1")
    assert restored.status_code == 302
    assert open_link(client, link).status_code == 400  # used once
    again, _v = __import__("tests.test_challenge", fromlist=["start"]).start(client, mobile[0])
    assert again.status_code == 200
    with app.app_context():
        events = [row.event for row in db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars()]
        assert "user.deleted" in events and "user.restored" in events and "user.exported" in events


def test_the_account_page_downloads_my_data_and_deletes_my_account(app, client):
    from tests.support import csrf_token, walk

    make_user_in(app)
    walk(client, "/login")
    home = client.get("/account")
    assert 'id="export-data"' in home.get_data(as_text=True)
    exported = client.get("/account/export")
    assert exported.status_code == 200 and exported.get_json()["profile"]["email"] == ALICE
    assert "attachment" in exported.headers["Content-Disposition"]
    asked = client.post("/account/delete", data={"csrf_token": csrf_token(home)})
    assert asked.status_code == 200 and "Delete your account?" in asked.get_data(as_text=True)
    done = client.post("/account/delete", data={"csrf_token": csrf_token(home), "confirm": "yes"})
    assert 'id="account-deleted"' in done.get_data(as_text=True)
    assert client.get("/account").status_code == 302  # signed out
    with app.app_context():
        from idp.models import User
        assert db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one().deleted_at is not None


# --- alerts -----------------------------------------------------------------------------------------------------

def test_a_new_sign_in_mail_carries_a_link_that_ends_that_session(app, client, mobile, mailbox):
    from tests.support import link_in, open_link, submit_link

    make_user_in(app)
    sign_in(client, mobile[0])  # the first device is no news
    intruder = app.test_client()
    tokens, _answer = sign_in(intruder, mobile[0], scope="openid idp:account")
    mail = mailbox.last(ALICE, "New sign-in")
    link = link_in(mail, "/account/end-session#")
    assert intruder.get(f"{API}/me", headers=bearer(tokens)).status_code == 200
    page = open_link(client, link)
    assert page.status_code == 200 and "End the session" in page.get_data(as_text=True)
    assert submit_link(client, link, page, confirm="1").status_code == 302
    assert intruder.get(f"{API}/me", headers=bearer(tokens)).status_code == 401  # its online token ended with it
    tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    assert open_link(client, tampered).status_code == 400


def test_a_refresh_token_used_twice_mails_the_user_once(app, client, mobile, mailbox):
    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": mobile[0]}
    assert client.post("/token", data=refresh).status_code == 200
    for _ in range(2):  # the stolen copy, twice
        assert client.post("/token", data=refresh).status_code == 400
    stolen = [m for m in mailbox.messages(ALICE) if "stolen" in m["subject"]]
    assert len(stolen) == 1 and "Mobile" in stolen[0]["text"]


def test_cors_answers_first_party_origins_only(app, client, mobile):
    make_user_in(app)
    spa = make_client_in(app, name="SPA", redirect_uris=["https://spa.example/callback"], public=True,
                         first_party=True)
    assert spa
    own = client.options(f"{API}/me", headers={"Origin": "https://spa.example",
                                               "Access-Control-Request-Method": "GET"})
    assert own.headers["Access-Control-Allow-Origin"] == "https://spa.example"
    assert "Authorization" in own.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in own.headers
    foreign = client.options(f"{API}/me", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in foreign.headers
    third = make_client_in(app, name="Third", redirect_uris=["https://third.example/cb"], public=True)
    assert third and "Access-Control-Allow-Origin" not in client.post(
        "/authorize-challenge", headers={"Origin": "https://third.example"}).headers
    assert client.post("/authorize-challenge", headers={"Origin": "https://spa.example"}
                       ).headers["Access-Control-Allow-Origin"] == "https://spa.example"


def test_the_api_is_rate_limited_per_token_with_a_problem_document(make_app):
    app = make_app(IDP_RATELIMIT_API="3/minute")
    http = app.test_client()
    mobile_id, _none = make_client_in(app, name="Mobile", redirect_uris=["https://app.example/cb"], public=True,
                                      first_party=True, scopes=["openid", "idp:account"])
    make_user_in(app)
    tokens, _answer = sign_in(http, mobile_id, scope="openid idp:account")
    answers = [http.get(f"{API}/me", headers=bearer(tokens)) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].content_type == "application/problem+json" and int(answers[-1].headers["Retry-After"]) > 0


def test_a_profile_phone_is_saved_once_the_texted_code_comes_back(app, client, mobile):
    from tests.support import last_sms_code

    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    sent = client.post(f"{API}/me/phone", headers=bearer(tokens), json={"phone": "+44 7700 900123"})
    assert sent.status_code == 202 and sent.get_json()["phone"] == "+447700900123"
    wrong = client.post(f"{API}/me/phone/verify", headers=bearer(tokens), json={"phone": "+447700900123",
                                                                                "code": "000000"})
    assert wrong.status_code == 400 and "code" in wrong.get_json()["errors"]
    saved = client.post(f"{API}/me/phone/verify", headers=bearer(tokens),
                        json={"phone": "+447700900123", "code": last_sms_code(app)})
    assert saved.status_code == 200 and saved.get_json()["phone_number_verified"] is True
    assert client.delete(f"{API}/me/phone", headers=bearer(tokens)).status_code == 204
    assert client.get(f"{API}/me", headers=bearer(tokens)).get_json()["phone_number"] is None
    bad = client.post(f"{API}/me/phone", headers=bearer(tokens), json={"phone": "12"})
    assert bad.status_code == 400


def test_an_email_change_keeps_the_old_address_until_the_new_one_is_proved(app, client, mobile, mailbox):
    from tests.support import code_in

    make_user_in(app)
    make_user_in(app, email="taken@example.com")
    tokens, _answer = sign_in(client, mobile[0])
    taken = client.post(f"{API}/me/email", headers=bearer(tokens), json={"email": "taken@example.com"})
    fresh = client.post(f"{API}/me/email", headers=bearer(tokens), json={"email": "New@Example.com"})
    assert taken.status_code == fresh.status_code == 202  # no telling which address has an account
    assert client.get(f"{API}/me", headers=bearer(tokens)).get_json()["email"] == ALICE  # nothing changed yet
    code = code_in(mailbox.last("new@example.com", "Confirm your new email address"))
    wrong = client.post(f"{API}/me/email/verify", headers=bearer(tokens), json={"code": "000000"})
    assert wrong.status_code == 400
    done = client.post(f"{API}/me/email/verify", headers=bearer(tokens), json={"code": code})
    assert done.status_code == 200 and done.get_json()["email"] == "new@example.com"
    assert done.get_json()["email_verified"] is True
    assert "new@example.com" in mailbox.last(ALICE, "Your email address was changed")["text"]
    assert client.post(f"{API}/me/email/verify", headers=bearer(tokens), json={"code": code}).status_code == 400


def test_the_account_page_changes_the_email_by_the_mailed_link(app, client, mailbox):
    from tests.support import csrf_token, link_in, open_link, submit_link, walk

    make_user_in(app)
    walk(client, "/login")
    page = client.get("/account/email")
    sent = client.post("/account/email", data={"csrf_token": csrf_token(page), "email": "moved@example.com"})
    assert sent.status_code == 302
    link = link_in(mailbox.last("moved@example.com"), "/account/email/confirm#")
    confirmed = submit_link(client, link, open_link(client, link), confirm="1")
    assert confirmed.status_code == 302
    with app.app_context():
        from idp.models import User
        assert db.session.execute(db.select(User).where(User.email == "moved@example.com")).scalar_one()
    assert open_link(client, link).status_code == 400  # used once


def test_an_address_is_verified_by_the_link_token_and_a_new_link_can_be_asked(app, client, mobile, mailbox):
    from tests.support import link_in

    make_user_in(app, verified=False)
    verifier, challenge = pkce_pair()
    step = client.post(CHALLENGE, data={"client_id": mobile[0], "response_type": "code",
                                        "scope": "openid idp:account", "code_challenge": challenge,
                                        "code_challenge_method": "S256", "username": ALICE,
                                        "password": PASSWORD}).get_json()
    assert step["step"] == "email_verification"
    token = link_in(mailbox.last(ALICE), "/verify-email#").rpartition("#")[2]
    assert client.post(f"{API}/email/verify", json={"token": "forged"}).status_code == 400
    assert client.post(f"{API}/email/verify", json={"token": token}).status_code == 204
    assert client.post(f"{API}/email/verify", json={"token": token}).status_code == 400  # used once
    done = client.post(CHALLENGE, data={"auth_session": step["auth_session"]}).get_json()  # verified meanwhile
    tokens = client.post("/token", data={"grant_type": "authorization_code", "client_id": mobile[0],
                                         "code": done["authorization_code"], "code_verifier": verifier}).get_json()
    assert client.post(f"{API}/email/verification", headers=bearer(tokens)).status_code == 409


def test_a_phone_for_sign_in_codes_is_added_through_the_api_and_signs_in(app, client, mobile):
    from tests.support import last_sms_code

    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    sent = client.post(f"{API}/me/phones", headers=bearer(tokens), json={"phone": "+1 415 555 0123"})
    assert sent.status_code == 202 and sent.get_json()["phone"] == "+14155550123"
    wrong = client.post(f"{API}/me/phones/verify", headers=bearer(tokens), json={"phone": "+14155550123",
                                                                                 "code": "000000"})
    assert wrong.status_code == 400
    added = client.post(f"{API}/me/phones/verify", headers=bearer(tokens),
                        json={"phone": "+14155550123", "code": last_sms_code(app)})
    assert added.status_code == 201 and added.get_json()["kind"] == "sms"
    verifier, challenge = pkce_pair()
    step = client.post(CHALLENGE, data={"client_id": mobile[0], "response_type": "code", "scope": "openid",
                                        "code_challenge": challenge, "code_challenge_method": "S256",
                                        "username": ALICE, "password": PASSWORD}).get_json()
    assert step["step"] == "sms"
    done = client.post(CHALLENGE, data={"auth_session": step["auth_session"], "code": last_sms_code(app)}).get_json()
    from tests.test_challenge import redeem as redeem_code
    assert "sms" in redeem_code(client, mobile[0], done["authorization_code"], verifier)["amr"]


def _none_attestation(options: dict, origin: str) -> tuple[str, str]:
    """A registration response from a software authenticator (an ES256 key), with "none" attestation (WebAuthn L3
    6.5, 8.7): returns (the credential JSON, the credential id)."""
    import base64
    import hashlib
    import secrets

    import cbor2
    from cryptography.hazmat.primitives.asymmetric import ec

    def b64url(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
    credential_id = secrets.token_bytes(16)
    flags = 0x01 | 0x04 | 0x40  # user present, user verified, attested credential data
    auth_data = (hashlib.sha256(options["rp"]["id"].encode()).digest() + bytes([flags]) + (0).to_bytes(4, "big")
                 + bytes(16) + len(credential_id).to_bytes(2, "big") + credential_id + cose)
    client_data = json.dumps({"type": "webauthn.create", "challenge": options["challenge"], "origin": origin,
                              "crossOrigin": False}).encode()
    attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
    return json.dumps({"id": b64url(credential_id), "rawId": b64url(credential_id), "type": "public-key",
                       "response": {"clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation)},
                       "clientExtensionResults": {}}), b64url(credential_id)


def test_a_passkey_is_registered_through_the_api_with_a_single_use_challenge(app, client, mobile):
    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    started = client.post(f"{API}/me/factors/webauthn", headers=bearer(tokens))
    assert started.status_code == 200
    body = started.get_json()
    credential, _credential_id = _none_attestation(body["options"], app.config["IDP_ISSUER"])
    forged = client.post(f"{API}/me/factors/webauthn/verify", headers=bearer(tokens),
                         json={"challenge": "not-ours", "credential": credential})
    assert forged.status_code == 400
    broken = client.post(f"{API}/me/factors/webauthn/verify", headers=bearer(tokens),
                         json={"challenge": body["challenge"], "credential": "{}"})
    assert broken.status_code == 400
    spent = client.post(f"{API}/me/factors/webauthn/verify", headers=bearer(tokens),
                        json={"challenge": body["challenge"], "credential": credential})
    assert spent.status_code == 400 and "challenge" in spent.get_json()["errors"]  # used once, whatever came of it
    body = client.post(f"{API}/me/factors/webauthn", headers=bearer(tokens)).get_json()
    credential, _credential_id = _none_attestation(body["options"], app.config["IDP_ISSUER"])
    added = client.post(f"{API}/me/factors/webauthn/verify", headers=bearer(tokens),
                        json={"challenge": body["challenge"], "credential": credential, "name": "Phone"})
    assert added.status_code == 201, added.get_json()
    assert added.get_json()["kind"] == "webauthn" and added.get_json()["name"] == "Phone"
    # The user has a second factor now: a password-only token no longer makes changes (RFC 9470).
    assert client.post(f"{API}/me/factors/webauthn", headers=bearer(tokens)).status_code == 401


def test_the_native_journey_with_a_text_message_and_a_recovery_code(app, client, mobile):
    """As the TOTP journey, with the SMS factor (added through the API) and then a recovery code."""
    from tests.support import last_sms_code

    make_user_in(app)
    tokens, first = sign_in(client, mobile[0])
    client.post(f"{API}/me/phones", headers=bearer(tokens), json={"phone": "+14155550123"})
    added = client.post(f"{API}/me/phones/verify", headers=bearer(tokens),
                        json={"phone": "+14155550123", "code": last_sms_code(app)})
    assert added.status_code == 201
    refused = client.post(f"{API}/me/recovery-codes", headers=bearer(tokens))
    assert refused.status_code == 401 and 'acr_values="urn:idp:acr:mfa"' in refused.headers["WWW-Authenticate"]

    verifier, challenge = pkce_pair()
    step = client.post(CHALLENGE, data={"auth_session": first["auth_session"], "client_id": mobile[0],
                                        "response_type": "code", "scope": "openid offline_access idp:account",
                                        "code_challenge": challenge, "code_challenge_method": "S256",
                                        "acr_values": "urn:idp:acr:mfa"}).get_json()
    assert step["step"] == "sms"
    done = client.post(CHALLENGE, data={"auth_session": step["auth_session"], "code": last_sms_code(app)}).get_json()
    stronger = client.post("/token", data={"grant_type": "authorization_code", "code": done["authorization_code"],
                                           "client_id": mobile[0], "code_verifier": verifier}).get_json()
    codes = client.post(f"{API}/me/recovery-codes", headers=bearer(stronger)).get_json()["codes"]
    assert len(codes) == 10

    other = app.test_client()
    verifier, challenge = pkce_pair()
    answer = other.post(CHALLENGE, data={"client_id": mobile[0], "response_type": "code", "scope": "openid",
                                         "code_challenge": challenge, "code_challenge_method": "S256",
                                         "username": ALICE, "password": PASSWORD}).get_json()
    picked = other.post(CHALLENGE, data={"auth_session": answer["auth_session"], "factor": "recovery_code"}).get_json()
    final = other.post(CHALLENGE, data={"auth_session": picked["auth_session"], "code": codes[0]}).get_json()
    from tests.test_challenge import redeem as redeem_code
    assert redeem_code(other, mobile[0], final["authorization_code"], verifier)["acr"] == "urn:idp:acr:mfa"
    assert client.post(f"{API}/logout", headers=bearer(stronger), json={"everywhere": True}).status_code == 204
    assert client.get(f"{API}/me", headers=bearer(stronger)).status_code == 401


def test_an_email_change_to_an_address_taken_meanwhile_is_refused(app, client, mobile, mailbox):
    from tests.support import code_in

    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    client.post(f"{API}/me/email", headers=bearer(tokens), json={"email": "late@example.com"})
    code = code_in(mailbox.last("late@example.com"))
    make_user_in(app, email="late@example.com")  # someone signs up with it before the code comes back
    refused = client.post(f"{API}/me/email/verify", headers=bearer(tokens), json={"code": code})
    assert refused.status_code == 400
    assert client.get(f"{API}/me", headers=bearer(tokens)).get_json()["email"] == ALICE


def test_a_factor_removed_through_the_api_is_mailed(app, client, mobile, mailbox):
    make_user_in(app)
    tokens, _answer = sign_in(client, mobile[0])
    started = client.post(f"{API}/me/factors/totp", headers=bearer(tokens)).get_json()
    client.post(f"{API}/me/factors/totp/{started['id']}/confirm", headers=bearer(tokens),
                json={"code": totp_code_at(started["secret"], utcnow())})
    assert "authenticator app was added" in mailbox.last(ALICE, "Security change")["text"]
