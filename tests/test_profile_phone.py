"""The profile phone number: saved as verified only after a texted code (SECURITY.md 23, 27), and released under the
`phone` scope as `phone_number` / `phone_number_verified` that tell the truth (OIDC Core 5.1, 5.4)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.extensions import db
from idp.models import Factor, LoginSession, User, utcnow
from tests.support import (
    RP_CALLBACK,
    audit_events,
    authorize,
    csrf_token,
    last_sms_code,
    make_client_in,
    make_user_in,
    outbox_sms,
    pkce_pair,
    sign_in,
)

ALICE = "alice@example.com"
PHONE = "+14155550123"
OTHER_PHONE = "+14155550124"


@pytest.fixture
def app(make_app):
    app = make_app(IDP_SMS_BACKEND="outbox")
    make_user_in(app)
    return app


def signed_in(client) -> None:
    response = sign_in(client, ALICE)
    assert response.status_code == 302
    client.get(response.headers["Location"])


def alice(app) -> User:
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        db.session.expunge(user)
        return user


def send_code(client, phone: str = "+1 415 555 0123"):
    page = client.get("/account/phone")
    assert page.status_code == 200
    return client.post("/account/phone", data={"csrf_token": csrf_token(page), "phone": phone})


def type_code(client, code: str):
    page = client.get("/account/phone/verify")
    return client.post("/account/phone/verify", data={"csrf_token": csrf_token(page), "code": code})


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1000000:06d}"


def add_verified_phone(app, client, phone: str = PHONE) -> None:
    sent = send_code(client, phone)
    assert sent.status_code == 302, sent.get_data(as_text=True)
    assert type_code(client, last_sms_code(app, phone)).status_code == 302


def phone_claims(app, client, before_token=None, **params) -> tuple[dict, dict]:
    """(userinfo, ID token claims) for scope `openid phone`, asking for the phone claims in the ID token too
    (``before_token`` runs between the authorization and the token request)."""
    client_id, secret = make_client_in(app, first_party=True)
    verifier, challenge = pkce_pair()
    claims = {"id_token": {"phone_number": None, "phone_number_verified": None}}
    code = authorize(client, client_id, scope="openid phone", code_challenge=challenge, code_challenge_method="S256",
                     claims=json.dumps(claims), **params)
    if before_token is not None:
        before_token()
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                           "redirect_uri": RP_CALLBACK}, auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    keys = KeySet.import_key_set(client.get("/jwks.json").get_json())
    id_token = jwt.decode(body["id_token"], keys, algorithms=["RS256", "ES256"]).claims
    userinfo = client.get("/userinfo", headers={"Authorization": "Bearer " + body["access_token"]})
    assert userinfo.status_code == 200
    return userinfo.get_json(), id_token


def test_a_number_is_saved_only_when_the_code_texted_to_it_is_typed(app, client, mailbox):
    signed_in(client)
    sent = send_code(client)
    assert sent.status_code == 302 and sent.headers["Location"].endswith("/account/phone/verify")
    assert [m["to"] for m in outbox_sms(app)] == [PHONE]
    code = last_sms_code(app, PHONE)
    assert alice(app).phone is None and alice(app).phone_verified_at is None
    refused = type_code(client, wrong(code))
    assert refused.status_code == 200 and "not right" in refused.get_data(as_text=True)
    assert alice(app).phone is None and alice(app).phone_verified_at is None
    done = type_code(client, code)
    assert done.status_code == 302 and done.headers["Location"].endswith("/account")
    user = alice(app)
    assert user.phone == PHONE and user.phone_verified
    home = client.get("/account").get_data(as_text=True)
    assert f'id="account-phone">{PHONE}<' in home and "Change or remove" in home
    assert audit_events(app, "profile.phone_changed")[-1].details["phone"] == "+14 ••• ••• 123"
    assert "now in your profile" in mailbox.last(ALICE, "Security change")["text"]
    # Nothing is pending any more: the code page goes back to the form.
    assert client.get("/account/phone/verify").headers["Location"].endswith("/account/phone")


def test_a_code_proves_only_the_number_it_was_texted_to(app, client):
    signed_in(client)
    add_verified_phone(app, client)
    assert send_code(client, OTHER_PHONE).status_code == 302
    first = last_sms_code(app, OTHER_PHONE)
    assert send_code(client, "+14155550125").status_code == 302
    # The code texted to the number given first does not verify the one given later.
    refused = type_code(client, first)
    assert refused.status_code == 200
    user = alice(app)
    assert user.phone == PHONE and user.phone_verified  # the old number stays until a new one is proved
    assert type_code(client, last_sms_code(app, "+14155550125")).status_code == 302
    assert alice(app).phone == "+14155550125" and alice(app).phone_verified


def test_too_many_wrong_codes_void_the_code(app, client):
    signed_in(client)
    send_code(client)
    code = last_sms_code(app, PHONE)
    for _ in range(app.config["IDP_CODE_MAX_ATTEMPTS"] - 1):
        assert "not right" in type_code(client, wrong(code)).get_data(as_text=True)
    assert "Too many wrong codes" in type_code(client, wrong(code)).get_data(as_text=True)
    refused = type_code(client, code)
    assert refused.status_code == 200 and "Send a new one" in refused.get_data(as_text=True)
    assert alice(app).phone is None


@pytest.mark.parametrize("phone", ["12345", "not a number", "+44", "+1 555 000", "0" * 32, "\u0661\u0662\u0663",
                                   "+4477009001234567"])
def test_a_bad_number_gets_a_form_message(app, client, phone):
    signed_in(client)
    response = send_code(client, phone)
    assert response.status_code == 200
    assert "Enter a valid mobile number" in response.get_data(as_text=True)
    assert outbox_sms(app) == []


@pytest.mark.parametrize("fields", [{"phone": ""}, {"phone": "+" + "1" * 40}])
def test_an_empty_or_over_long_number_gets_a_form_message(app, client, fields):
    signed_in(client)
    page = client.get("/account/phone")
    response = client.post("/account/phone", data={"csrf_token": csrf_token(page), **fields})
    assert response.status_code == 200 and 'class="error' in response.get_data(as_text=True).replace("'", '"')
    assert outbox_sms(app) == []


@pytest.mark.parametrize("code", ["", "abcdef", "1" * 13])
def test_a_malformed_code_gets_a_form_message(app, client, code):
    signed_in(client)
    send_code(client)
    response = type_code(client, code)
    assert response.status_code == 200
    assert alice(app).phone is None


def test_the_code_page_without_a_number_sent_goes_back_to_the_form(app, client):
    signed_in(client)
    response = client.get("/account/phone/verify")
    assert response.status_code == 302 and response.headers["Location"].endswith("/account/phone")


def test_the_pumping_caps_refuse_with_a_message_and_an_audit_row(make_app):
    app = make_app(IDP_SMS_BACKEND="outbox", IDP_SMS_CAP_USER="2/day")
    make_user_in(app)
    client = app.test_client()
    signed_in(client)
    for number in (PHONE, OTHER_PHONE):
        assert send_code(client, number).status_code == 302
    refused = send_code(client, "+14155550125")
    assert refused.status_code == 200 and "Too many text messages" in refused.get_data(as_text=True)
    assert len(audit_events(app, "sms.capped")) == 1


def test_userinfo_and_id_token_release_the_verified_number(app, client):
    signed_in(client)
    add_verified_phone(app, client)
    userinfo, id_token = phone_claims(app, client)
    assert userinfo["phone_number"] == PHONE and userinfo["phone_number_verified"] is True
    assert id_token["phone_number"] == PHONE and id_token["phone_number_verified"] is True


def test_an_unverified_number_is_never_released_as_verified(app, client):
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        user.phone = PHONE  # a number no code went to (imported, or written before numbers were verified)
        db.session.commit()
    userinfo, id_token = phone_claims(app, client)
    assert userinfo["phone_number"] == PHONE and userinfo["phone_number_verified"] is False
    assert id_token["phone_number_verified"] is False


def test_writing_another_number_drops_the_proof(app):
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        user.set_verified_phone(PHONE, utcnow())
        db.session.commit()
        assert user.phone_verified
        user.phone = OTHER_PHONE  # by any path other than a typed code
        db.session.commit()
        assert user.phone_verified_at is None and not user.phone_verified


def test_a_sign_in_phone_is_not_released_as_the_profile_number(app, client):
    """The SMS factor's number receives sign-in codes; it is never handed to applications."""
    def add_sms_factor():  # after the sign-in, which would otherwise ask for a texted code
        with app.app_context():
            now = utcnow()
            db.session.add(Factor(user_id=alice(app).id, kind="sms", name="Phone", phone=PHONE, created_at=now,
                                  confirmed_at=now))
            db.session.commit()

    userinfo, id_token = phone_claims(app, client, before_token=add_sms_factor)
    assert "phone_number" not in userinfo and "phone_number_verified" not in userinfo
    assert "phone_number" not in id_token and "phone_number_verified" not in id_token


def test_removing_the_number_stops_its_release(app, client, mailbox):
    signed_in(client)
    add_verified_phone(app, client)
    page = client.get("/account/phone")
    assert 'id="remove-phone"' in page.get_data(as_text=True)
    removed = client.post("/account/phone/remove", data={"confirm": "yes", "csrf_token": csrf_token(page)})
    assert removed.status_code == 302
    user = alice(app)
    assert user.phone is None and user.phone_verified_at is None
    assert audit_events(app, "profile.phone_removed")[-1].subject_id == user.id
    assert "removed from your profile" in mailbox.last(ALICE, "Security change")["text"]
    assert "Add a phone number" in client.get("/account").get_data(as_text=True)
    userinfo, _ = phone_claims(app, client)
    assert "phone_number" not in userinfo and "phone_number_verified" not in userinfo


@pytest.mark.parametrize("method, path", [("GET", "/account/phone"), ("POST", "/account/phone"),
                                          ("GET", "/account/phone/verify"), ("POST", "/account/phone/verify"),
                                          ("POST", "/account/phone/remove")])
def test_changing_the_number_needs_a_recent_sign_in(app, client, method, path):
    """SECURITY.md 27: a stale session signs in again before it can add, prove or remove a number."""
    signed_in(client)
    add_verified_phone(app, client)
    page = client.get("/account/phone")
    send_code(client, OTHER_PHONE)
    code = last_sms_code(app, OTHER_PHONE)
    with app.app_context():
        stale = utcnow() - timedelta(seconds=app.config["IDP_STEP_UP_MAX_AGE"] + 60)
        db.session.execute(db.update(LoginSession).values(auth_time=stale))
        db.session.commit()
    data = {"csrf_token": csrf_token(page), "phone": "+14155550125", "code": code} if method == "POST" else None
    response = client.open(path, method=method, data=data)
    assert response.status_code == 302 and "/login/" in response.headers["Location"], (path, response.status_code)
    assert alice(app).phone == PHONE and alice(app).phone_verified
    assert [m["to"] for m in outbox_sms(app)] == [PHONE, OTHER_PHONE]


@pytest.mark.parametrize(("region", "typed", "saved"), [
    ("", "+44 7700 900123", "+447700900123"),  # spaces, a reserved (drama) range: possible, so accepted
    ("US", "(555) 010-4477", "+15550104477"),  # no country code: read in IDP_DEFAULT_PHONE_REGION
    ("GB", "07700 900123", "+447700900123"),
    ("US", "+1 415.555.0123", "+14155550123"),
])
def test_a_number_typed_as_people_write_it_is_saved_in_e164(make_app, region, typed, saved):
    app = make_app(IDP_SMS_BACKEND="outbox", IDP_DEFAULT_PHONE_REGION=region)
    make_user_in(app)
    client = app.test_client()
    signed_in(client)
    assert send_code(client, typed).status_code == 302
    assert outbox_sms(app)[-1]["to"] == saved
    type_code(client, last_sms_code(app))
    assert alice(app).phone == saved


@pytest.mark.parametrize("typed", ["(555) 010-4477", "12", "+44 12", "call me", "+1 415 555"])
def test_a_number_that_is_not_possible_is_refused_with_a_message(client, typed):
    signed_in(client)
    response = send_code(client, typed)
    assert response.status_code == 200  # the form again, no default region to read a national number in
    assert "Enter a valid mobile number with its country code" in response.get_data(as_text=True)
    assert 'aria-invalid="true"' in response.get_data(as_text=True)

