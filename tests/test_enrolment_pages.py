"""The self-service enrolment pages (one view drives every factor's stages): what a stage keeps for the next one
belongs to the sign-in session that started it."""

from __future__ import annotations

import pytest

from idp.extensions import db
from idp.models import Factor
from tests.support import csrf_token, last_sms_code, signed_in_email, walk

PHONE = "+14155550123"


@pytest.fixture
def app(make_app):
    return make_app(IDP_SMS_BACKEND="outbox")


def sign_in(client, email: str) -> None:
    assert walk(client, "/login", email=email).screens == ["password"] and signed_in_email(client) == email


def test_a_phone_enrolment_started_by_one_account_cannot_be_finished_by_another_in_the_same_browser(
        app, client, make_user):
    make_user(email="alice@example.com")
    make_user(email="bob@example.com")
    sign_in(client, "alice@example.com")
    page = client.get("/account/security/phone/new")
    sent = client.post("/account/security/phone/new", data={"csrf_token": csrf_token(page), "phone": PHONE})
    assert sent.headers["Location"].endswith("/account/security/phone/verify")
    code = last_sms_code(app, PHONE)
    client.delete_cookie("idp_session")  # Alice leaves; Bob signs in in the same browser
    sign_in(client, "bob@example.com")
    verify = client.get("/account/security/phone/verify")
    assert verify.status_code == 302 and verify.headers["Location"].endswith("/account/security/phone/new")
    page = client.get("/account/security/phone/new")
    taken = client.post("/account/security/phone/verify", data={"csrf_token": csrf_token(page), "code": code})
    assert taken.status_code == 302 and taken.headers["Location"].endswith("/account/security/phone/new")
    with app.app_context():
        assert db.session.execute(db.select(Factor)).first() is None


def test_an_unknown_factor_or_stage_is_not_found(client, make_user):
    make_user(email="alice@example.com")
    sign_in(client, "alice@example.com")
    assert client.get("/account/security/nothing/new").status_code == 404
    assert client.get("/account/security/totp/nothing").status_code == 404
    assert client.get("/account/security/recovery-codes").headers["Location"].endswith("/account/security")
