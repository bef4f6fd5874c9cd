"""Multi-factor sign-in (SECURITY.md 6, 21-28): every factor and policy path through the hosted screens,
asserting what a relying party sees in the ID token (`acr`, `amr`) and what a user sees on the pages.

TOTP codes are computed for a frozen clock (``clock``) that the login engine reads, so no test depends on when a
30-second window happens to roll over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import timedelta
from urllib.parse import urlencode

import pyotp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.extensions import db
from idp.login.factors.recovery_code import new_recovery_codes_for
from idp.models import AuditEvent, Device, Factor, LoginSession, OneTimeToken, RecoveryCode, User, utcnow
from idp.security.otp import totp_code_at
from idp.security.tokens import token_hash
from tests.support import (
    Mailbox,
    Walk,
    assert_in,
    code_in,
    csrf_token,
    enrol_totp_in,
    follow,
    last_sms_code,
    make_client_in,
    make_user_in,
    outbox_sms,
    remove_asking_first,
    screen_url,
    signed_in_email,
    step_name,
    walk,
)
from tests.support import audit_events as events

RP = "https://rp.example/cb"
ALICE = "alice@example.com"
VERIFIER = "mfa-verifier-" + "v" * 40
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
MFA = "urn:idp:acr:mfa"
PWD = "urn:idp:acr:pwd"
PHONE = "+14155550123"


# --- clock, walking and token helpers ---------------------------------------------------------------------------

class Clock:
    """The time the login engine sees; each TOTP answer moves it one step on, like a real authenticator."""

    def __init__(self):
        self.base = utcnow()
        self.offset = 0

    def now(self):
        return self.base + timedelta(seconds=self.offset)

    def tick(self, seconds: int = 30) -> None:
        self.offset += seconds

    def totp(self, secret: str, skew: int = 0) -> str:
        """A fresh code: one step later than the last one, shown by an app ``skew`` seconds off."""
        self.tick()
        return totp_code_at(secret, self.now() + timedelta(seconds=skew))


@pytest.fixture
def clock(monkeypatch):
    frozen = Clock()
    monkeypatch.setattr("idp.login.browser.utcnow", frozen.now)
    return frozen


def authorize_path(client_id: str, **params) -> str:
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": RP, "scope": "openid",
             "state": "st", "code_challenge": CHALLENGE, "code_challenge_method": "S256"}
    query.update(params)
    return "/authorize?" + urlencode({k: v for k, v in query.items() if v is not None})


def others(page) -> list[str]:
    """The factors offered under "Use another method", in the order shown."""
    return re.findall(r'name="factor" value="([a-z_]+)"', page.get_data(as_text=True))


def post_step(client, result: Walk, **fields):
    """Answer the screen ``result`` stopped at with ``fields``; returns the raw response."""
    page = result.pages[-1]
    data = {"csrf_token": csrf_token(page), "step": step_name(page), **fields}
    return client.post(screen_url(page), data=data)


def tid_of(result: Walk) -> str:
    return screen_url(result.pages[-1]).rsplit("/", 1)[-1]


def choose(client, result: Walk, factor: str):
    """Pick another method on the current screen ("Use another method")."""
    page = result.pages[-1]
    return client.post(f"/login/{tid_of(result)}/choose", data={"csrf_token": csrf_token(page), "factor": factor})


def claims_of(client, client_id: str, secret: str, result: Walk) -> dict:
    """Redeem the walk's code and return the verified ID token's claims."""
    assert "code" in result.params, (result.params, result.screens)
    response = client.post("/token", data={"grant_type": "authorization_code", "code": result.params["code"],
                                           "redirect_uri": RP, "code_verifier": VERIFIER}, auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    keys = KeySet.import_key_set(client.get("/jwks.json").get_json())
    body = response.get_json()
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256", "ES256"]).claims
    claims["_tokens"] = body
    return claims


def sign_in_fully(client, email: str = ALICE) -> None:
    """Sign in on the hosted pages (password only) and land on the account page."""
    result = walk(client, "/login", email=email)
    assert result.screens == ["password"] and signed_in_email(client) == email


def sign_out(client) -> None:
    """Forget the sign-in session cookie (the device cookie stays, as when a browser session ends)."""
    client.delete_cookie("idp_session")


def user_id(app, email: str = ALICE) -> int:
    with app.app_context():
        return db.session.execute(db.select(User.id).where(User.email == email)).scalar_one()


def add_phone_in(app, email: str = ALICE, phone: str = PHONE) -> None:
    with app.app_context():
        now = utcnow()
        db.session.add(Factor(user_id=user_id(app, email), kind="sms", name="Phone", phone=phone, created_at=now,
                              confirmed_at=now))
        db.session.commit()


def recovery_codes_in(app, email: str = ALICE) -> list[str]:
    with app.app_context():
        user = db.session.get(User, user_id(app, email))
        codes = new_recovery_codes_for(user, utcnow(), app.config["IDP_SECRET_KEY"])
        db.session.commit()
        return codes


def totp_answer(clock: Clock, secret: str, **extra):
    return lambda page: {"code": clock.totp(secret), **extra}


def sms_answer(app):
    return lambda page: {"code": last_sms_code(app)}


def new_mail(mailbox: Mailbox) -> list[dict]:
    """Mail received so far, without waiting (delivery is synchronous once queued jobs ran)."""
    mailbox.drain()
    return list(mailbox.server.messages)



@pytest.fixture
def plain_client(make_client):
    """A first-party client without any MFA policy."""
    return make_client(first_party=True)


@pytest.fixture
def mfa_client(make_client):
    """A first-party client that requires multi-factor sign-in."""
    return make_client(first_party=True, mfa="required")


# --- flows: acr and amr in the ID token -------------------------------------------------------------------------

def test_mfa_required_client_asks_password_then_totp(app, client, clock, alice, mfa_client):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(mfa_client[0]), answers={"totp": totp_answer(clock, secret)})
    assert result.screens == ["password", "totp"]
    claims = claims_of(client, *mfa_client, result)
    assert {"pwd", "otp", "mfa"} <= set(claims["amr"])
    assert claims["acr"] == MFA
    assert events(app, "login.success")[-1].details["acr"] == MFA


def test_user_with_totp_is_asked_for_it_on_a_client_without_mfa_policy(app, client, clock, alice, plain_client):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(plain_client[0]), answers={"totp": totp_answer(clock, secret)})
    assert result.screens == ["password", "totp"]
    claims = claims_of(client, *plain_client, result)
    assert claims["acr"] == MFA and {"pwd", "otp", "mfa"} <= set(claims["amr"])


def test_acr_values_steps_up_a_password_session_without_asking_the_password_again(app, client, clock, alice,
                                                                                   plain_client):
    first = walk(client, authorize_path(plain_client[0]))
    assert first.screens == ["password"]
    before = claims_of(client, *plain_client, first)
    assert before["acr"] == PWD and before["amr"] == ["pwd"]
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(plain_client[0], acr_values=MFA), answers={"totp": totp_answer(clock, secret)})
    assert result.screens == ["totp"]
    claims = claims_of(client, *plain_client, result)
    assert claims["acr"] == MFA
    assert {"pwd", "otp", "mfa"} <= set(claims["amr"])
    assert claims["sub"] == before["sub"]
    # The stepped-up session answers the same request silently now.
    assert walk(client, authorize_path(plain_client[0], acr_values=MFA)).screens == []


def test_a_step_up_gives_the_session_a_new_id(app, client, clock, alice, plain_client):
    """SECURITY.md 17: the session cookie changes when the assurance level rises, and the old one is dead."""
    walk(client, authorize_path(plain_client[0]))
    before = client.get_cookie("idp_session").value
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    walk(client, authorize_path(plain_client[0], acr_values=MFA), answers={"totp": totp_answer(clock, secret)})
    after = client.get_cookie("idp_session").value
    assert after != before
    thief = app.test_client()
    thief.set_cookie("idp_session", before)
    assert thief.get("/account").status_code == 302  # sent to sign in
    assert client.get("/account").status_code == 200


def test_sms_factor_gives_sms_and_mfa(app, client, alice, mfa_client):
    add_phone_in(app)
    result = walk(client, authorize_path(mfa_client[0]), answers={"sms": sms_answer(app)})
    assert result.screens == ["password", "sms"]
    shown = result.pages[-1].get_data(as_text=True)
    assert "••• ••• 123" in shown and PHONE not in shown  # masked, never the whole number
    texts = outbox_sms(app)
    assert len(texts) == 1 and texts[0]["to"] == PHONE
    claims = claims_of(client, *mfa_client, result)
    assert {"pwd", "sms", "mfa"} <= set(claims["amr"]) and claims["acr"] == MFA


def test_recovery_code_signs_in_once_is_audited_and_mailed(app, client, clock, alice, mfa_client, mailbox):
    enrol_totp_in(app, ALICE, clock.now())
    codes = recovery_codes_in(app)
    assert len(codes) == 10 and len(set(codes)) == 10
    result = walk(client, authorize_path(mfa_client[0]), stop_at="totp")
    assert "recovery_code" in others(result.pages[-1])
    follow(client, choose(client, result, "recovery_code"), result=result, stop_at="recovery_code")
    assert result.screens[-1] == "recovery_code"
    follow(client, post_step(client, result, code=codes[0].upper().replace("-", " ")), result=result)
    claims = claims_of(client, *mfa_client, result)
    assert {"pwd", "recovery_code", "mfa"} <= set(claims["amr"]) and claims["acr"] == MFA
    used = events(app, "recovery_code.used")
    assert len(used) == 1 and used[0].details["remaining"] == 9
    assert codes[0] not in json.dumps(used[0].details)
    notice = mailbox.last(ALICE, "Security change")
    assert "recovery code was used" in notice["text"] and "9 recovery codes" in notice["text"]
    # The same code a second time (another browser) is refused.
    other = app.test_client()
    again = walk(other, authorize_path(mfa_client[0]), stop_at="totp")
    follow(other, choose(other, again, "recovery_code"), result=again, stop_at="recovery_code")
    refused = post_step(other, again, code=codes[0])
    assert refused.status_code == 200 and "not valid or was already used" in refused.get_data(as_text=True)
    assert step_name(refused) == "recovery_code"
    assert len(events(app, "recovery_code.used")) == 1


def test_email_code_never_counts_as_a_second_factor(app, client, clock, alice, mfa_client, mailbox):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(mfa_client[0]), stop_at="totp")
    assert others(result.pages[-1])[-1] == "email_otp"
    follow(client, choose(client, result, "email_otp"), result=result, stop_at="email_otp")
    assert result.screens[-1] == "email_otp"
    code = code_in(mailbox.last(ALICE, "Your sign-in code"))
    # A right email code is accepted, but another factor is still asked: email is not a second factor.
    follow(client, post_step(client, result, code=code), result=result, stop_at="totp")
    assert result.screens[-2:] == ["email_otp", "totp"]
    assert result.location is None
    follow(client, post_step(client, result, code=clock.totp(secret)), result=result)
    claims = claims_of(client, *mfa_client, result)
    assert claims["acr"] == MFA and {"pwd", "otp", "mfa"} <= set(claims["amr"])


def test_email_code_alone_never_reaches_mfa(app, client, alice, mfa_client, mailbox):
    """With only an email address, the MFA client sends the user to enrolment; the email code is no way out."""
    result = walk(client, authorize_path(mfa_client[0]), stop_at="mfa_enroll")
    assert result.screens == ["password", "mfa_enroll"]
    follow(client, choose(client, result, "email_otp"), result=result, stop_at="email_otp")
    follow(client, post_step(client, result, code=code_in(mailbox.last(ALICE, "Your sign-in code"))),
           result=result, stop_at="mfa_enroll")
    assert result.screens[-1] == "mfa_enroll" and result.location is None


def test_user_required_to_use_mfa_enrols_inside_the_flow(app, client, alice, plain_client, mailbox):
    runner = app.test_cli_runner()
    out = runner.invoke(args=["users", "require-mfa", ALICE])
    assert out.exit_code == 0, out.output
    assert events(app, "user.mfa_required")
    result = walk(client, authorize_path(plain_client[0]), stop_at="mfa_enroll")
    assert result.screens == ["password", "mfa_enroll"]
    page = result.pages[-1].get_data(as_text=True)
    shown = re.search(r'id="totp-secret">([^<]+)<', page).group(1)
    secret = shown.replace(" ", "")
    assert "<svg" in page  # the QR code, inline
    wrong = post_step(client, result, code="000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    assert wrong.status_code == 200 and "That code is not right" in wrong.get_data(as_text=True)
    follow(client, post_step(client, result, code=pyotp.TOTP(secret).now()), result=result)
    claims = claims_of(client, *plain_client, result)
    assert claims["acr"] == MFA and {"pwd", "otp", "mfa"} <= set(claims["amr"])
    assert events(app, "factor.added")[-1].details["kind"] == "totp"
    assert "authenticator app was added" in mailbox.last(ALICE, "Security change")["text"]
    with app.app_context():
        factor = db.session.execute(db.select(Factor)).scalar_one()
        assert factor.confirmed_at is not None and factor.kind == "totp"


def test_mfa_client_with_a_factorless_user_enrols_in_the_flow(app, client, alice, mfa_client):
    result = walk(client, authorize_path(mfa_client[0]),
                  answers={"mfa_enroll": lambda page: {"code": pyotp.TOTP(re.search(
                      r'id="totp-secret">([^<]+)<', page.get_data(as_text=True)).group(1).replace(" ", "")).now()}})
    assert result.screens == ["password", "mfa_enroll"]
    assert claims_of(client, *mfa_client, result)["acr"] == MFA


def test_factor_chooser_lists_the_strongest_enrolled_factor_first(app, client, clock, alice, plain_client):
    add_phone_in(app)
    recovery_codes_in(app)
    first = walk(client, authorize_path(plain_client[0]), stop_at="sms")
    assert first.screens == ["password", "sms"]  # only a phone: SMS, with recovery and email as the others
    assert others(first.pages[-1]) == ["recovery_code", "email_otp"]
    enrol_totp_in(app, ALICE, clock.now())
    other = app.test_client()
    second = walk(other, authorize_path(plain_client[0]), stop_at="totp")
    assert second.screens == ["password", "totp"]  # an authenticator app beats a text message
    assert others(second.pages[-1]) == ["sms", "recovery_code", "email_otp"]
    follow(other, choose(other, second, "sms"), result=second, stop_at="sms")
    assert second.screens[-1] == "sms"
    follow(other, post_step(other, second, code=last_sms_code(app)), result=second)
    claims = claims_of(other, *plain_client, second)
    assert claims["acr"] == MFA and "sms" in claims["amr"]


# --- TOTP (SECURITY.md 22) --------------------------------------------------------------------------------------

def test_totp_secret_is_160_bits_and_encrypted_at_rest(app, client, alice):
    sign_in_fully(client)
    page = client.get("/account/security/totp/new")
    assert page.status_code == 200
    secret = re.search(r'id="totp-secret">([^<]+)<', page.get_data(as_text=True)).group(1).replace(" ", "")
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) * 8 >= 160
    with app.app_context():
        row = db.session.execute(db.select(Factor)).scalar_one()
        stored = json.dumps({c.name: str(getattr(row, c.name)) for c in Factor.__table__.columns})
    assert secret not in stored and secret.lower() not in stored
    assert row.confirmed_at is None


def test_totp_code_is_accepted_once(app, clock, alice, plain_client):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    clock.tick()
    code = totp_code_at(secret, clock.now())
    first = app.test_client()
    done = walk(first, authorize_path(plain_client[0]), answers={"totp": lambda page: {"code": code}})
    assert claims_of(first, *plain_client, done)["acr"] == MFA
    replay = app.test_client()
    result = walk(replay, authorize_path(plain_client[0]), stop_at="totp")
    refused = post_step(replay, result, code=code)
    assert refused.status_code == 200 and "That code is not right" in refused.get_data(as_text=True)
    assert events(app, "mfa.failure")[-1].details["method"] == "totp"
    follow(replay, post_step(replay, result, code=clock.totp(secret)), result=result)
    assert claims_of(replay, *plain_client, result)["acr"] == MFA


@pytest.mark.parametrize("skew, accepted", [(30, True), (-30, True), (60, False), (-60, False)])
def test_totp_allows_one_step_of_drift(app, client, clock, alice, plain_client, skew, accepted):
    secret, _ = enrol_totp_in(app, ALICE, clock.now() - timedelta(minutes=5))
    result = walk(client, authorize_path(plain_client[0]), stop_at="totp")
    response = post_step(client, result, code=totp_code_at(secret, clock.now() + timedelta(seconds=skew)))
    if accepted:
        follow(client, response, result=result)
        assert claims_of(client, *plain_client, result)["acr"] == MFA
    else:
        assert response.status_code == 200 and "That code is not right" in response.get_data(as_text=True)


def test_unconfirmed_totp_does_not_count(app, client, alice, plain_client):
    enrol_totp_in(app, ALICE, confirm=False)
    result = walk(client, authorize_path(plain_client[0]))
    assert result.screens == ["password"]
    claims = claims_of(client, *plain_client, result)
    assert claims["acr"] == PWD and claims["amr"] == ["pwd"]


def test_totp_brute_force_is_throttled(make_app, clock):
    app = make_app(IDP_THROTTLE_OTP="3/minute")
    make_user_in(app)
    client_id, secret_ = make_client_in(app, first_party=True, mfa="required")
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    client = app.test_client()
    result = walk(client, authorize_path(client_id), stop_at="totp")
    right = clock.totp(secret)
    for wrong in ("000001", "000002", "000003"):
        response = post_step(client, result, code=wrong if wrong != right else "999999")
        assert "That code is not right" in response.get_data(as_text=True)
    refused = post_step(client, result, code=right)
    assert refused.status_code == 200 and "Try again in" in refused.get_data(as_text=True)
    assert step_name(refused) == "totp"
    assert len(events(app, "mfa.failure")) == 3


def test_recovery_code_guessing_is_throttled(make_app, clock):
    """SECURITY.md 21: wrong recovery codes count against the same per-account limit as wrong TOTP codes."""
    app = make_app(IDP_THROTTLE_OTP="3/minute")
    make_user_in(app)
    client_id, _ = make_client_in(app, first_party=True, mfa="required")
    enrol_totp_in(app, ALICE, clock.now())
    codes = recovery_codes_in(app)
    client = app.test_client()
    result = walk(client, authorize_path(client_id), stop_at="totp")
    follow(client, choose(client, result, "recovery_code"), result=result, stop_at="recovery_code")
    for wrong in ("aaaa-bbbb-cccc", "dddd-eeee-ffff", "gggg-hhhh-iiii"):
        response = post_step(client, result, code=wrong)
        assert "not valid or was already used" in response.get_data(as_text=True)
    refused = post_step(client, result, code=codes[0])
    assert refused.status_code == 200 and "Try again in" in refused.get_data(as_text=True)
    assert step_name(refused) == "recovery_code"
    assert events(app, "recovery_code.used") == []


# --- SMS and email codes (SECURITY.md 23) -----------------------------------------------------------------------

def sms_screen(app, client_id: str, browser=None) -> tuple:
    browser = browser or app.test_client()
    result = walk(browser, authorize_path(client_id), stop_at="sms")
    assert result.screens == ["password", "sms"], result.screens
    return browser, result


def test_sms_code_is_six_digits_hashed_and_bound_to_its_transaction(app, alice, mfa_client):
    add_phone_in(app)
    first, first_result = sms_screen(app, mfa_client[0])
    first_code = last_sms_code(app)
    assert re.fullmatch(r"\d{6}", first_code)
    with app.app_context():
        row = db.session.execute(db.select(OneTimeToken).where(OneTimeToken.purpose == "sms_login")).scalar_one()
        assert row.code_hash and first_code not in row.code_hash and row.transaction_id == tid_of(first_result)
    second, second_result = sms_screen(app, mfa_client[0])
    second_code = last_sms_code(app)
    assert len(outbox_sms(app)) == 2
    if first_code != second_code:  # a code sent for another sign-in does not open this one
        refused = post_step(second, second_result, code=first_code)
        assert "not right" in refused.get_data(as_text=True) and step_name(refused) == "sms"
    follow(second, post_step(second, second_result, code=second_code), result=second_result)
    assert claims_of(second, *mfa_client, second_result)["acr"] == MFA
    # Nor does this sign-in's code open the first one.
    refused = post_step(first, first_result, code=second_code)
    assert refused.status_code == 200 and step_name(refused) == "sms"


def test_sms_code_expires(app, alice, mfa_client):
    add_phone_in(app)
    browser, result = sms_screen(app, mfa_client[0])
    code = last_sms_code(app)
    with app.app_context():
        db.session.execute(db.update(OneTimeToken).values(expires_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    refused = post_step(browser, result, code=code)
    assert refused.status_code == 200 and "expired" in refused.get_data(as_text=True)


def test_sms_code_allows_five_attempts(make_app):
    app = make_app(IDP_THROTTLE_OTP="100/minute")
    make_user_in(app)
    client_id, secret = make_client_in(app, first_party=True, mfa="required")
    add_phone_in(app)
    browser, result = sms_screen(app, client_id)
    code = last_sms_code(app)
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    for attempt in range(1, 6):
        response = post_step(browser, result, code=wrong)
        assert step_name(response) == "sms"
        expected = "Too many wrong codes" if attempt == 5 else "That code is not right"
        assert expected in response.get_data(as_text=True), attempt
    refused = post_step(browser, result, code=code)
    assert "Too many wrong codes" in refused.get_data(as_text=True) or "expired" in refused.get_data(as_text=True)
    assert step_name(refused) == "sms"


def test_sms_resend_has_a_cooldown(app, alice, mfa_client):
    add_phone_in(app)
    browser, result = sms_screen(app, mfa_client[0])
    page = result.pages[-1]
    response = browser.post(f"/login/{tid_of(result)}/resend", data={"csrf_token": csrf_token(page), "step": "sms"},
                            follow_redirects=True)
    assert "Please wait" in response.get_data(as_text=True)
    assert len(outbox_sms(app)) == 1


def test_email_code_is_bound_expires_and_has_a_cooldown(app, client, clock, alice, mfa_client, mailbox):
    enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(mfa_client[0]), stop_at="totp")
    follow(client, choose(client, result, "email_otp"), result=result, stop_at="email_otp")
    code = code_in(mailbox.last(ALICE, "Your sign-in code"))
    with app.app_context():
        row = db.session.execute(db.select(OneTimeToken).where(OneTimeToken.purpose == "email_login")).scalar_one()
        assert row.transaction_id == tid_of(result) and code not in (row.code_hash or "")
    resent = client.post(f"/login/{tid_of(result)}/resend",
                         data={"csrf_token": csrf_token(result.pages[-1]), "step": "email_otp"}, follow_redirects=True)
    assert "Please wait" in resent.get_data(as_text=True)
    with app.app_context():
        db.session.execute(db.update(OneTimeToken).values(expires_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    refused = post_step(client, result, code=code)
    assert "expired" in refused.get_data(as_text=True) and step_name(refused) == "email_otp"


def test_sms_resend_after_the_cooldown_sends_a_new_code(make_app):
    app = make_app(IDP_RESEND_COOLDOWN=0)
    make_user_in(app)
    client_id, secret = make_client_in(app, first_party=True, mfa="required")
    add_phone_in(app)
    browser, result = sms_screen(app, client_id)
    old = last_sms_code(app)
    response = browser.post(f"/login/{tid_of(result)}/resend",
                            data={"csrf_token": csrf_token(result.pages[-1]), "step": "sms"}, follow_redirects=True)
    assert "We sent a new code" in response.get_data(as_text=True)
    new = last_sms_code(app)
    assert len(outbox_sms(app)) == 2
    if old != new:
        assert step_name(post_step(browser, result, code=old)) == "sms"  # the earlier code is void
    follow(browser, post_step(browser, result, code=new), result=result)
    assert claims_of(browser, client_id, secret, result)["acr"] == MFA


@pytest.mark.parametrize("setting", ["IDP_SMS_CAP_NUMBER", "IDP_SMS_CAP_USER", "IDP_SMS_CAP_COUNTRY"])
def test_sms_caps_refuse_further_texts_with_a_clear_message(make_app, setting):
    app = make_app(IDP_RESEND_COOLDOWN=0, **{setting: "2/day"})
    make_user_in(app)
    client_id, _ = make_client_in(app, first_party=True, mfa="required")
    add_phone_in(app)
    browser, result = sms_screen(app, client_id)
    data = {"csrf_token": csrf_token(result.pages[-1]), "step": "sms"}
    assert "We sent a new code" in browser.post(f"/login/{tid_of(result)}/resend", data=data,
                                                 follow_redirects=True).get_data(as_text=True)
    refused = browser.post(f"/login/{tid_of(result)}/resend", data=data, follow_redirects=True)
    assert "Too many text messages were sent" in refused.get_data(as_text=True)
    assert len(outbox_sms(app)) == 2
    assert events(app, "sms.capped")


def test_sms_country_cap_counts_across_users(make_app):
    app = make_app(IDP_SMS_CAP_COUNTRY="1/day")
    make_user_in(app)
    make_user_in(app, email="bob@example.com", name="Bob")
    client_id, _ = make_client_in(app, first_party=True, mfa="required")
    add_phone_in(app)
    add_phone_in(app, "bob@example.com", "+14155550124")
    sms_screen(app, client_id)
    bob = app.test_client()
    result = walk(bob, authorize_path(client_id), email="bob@example.com", stop_at="sms")
    assert "Too many text messages were sent" in result.pages[-1].get_data(as_text=True)
    assert [m["to"] for m in outbox_sms(app)] == [PHONE]


def test_a_phone_counts_only_after_its_code_is_confirmed(app, client, alice, plain_client, mailbox):
    sign_in_fully(client)
    page = client.get("/account/security/phone/new")
    response = client.post("/account/security/phone/new", data={"csrf_token": csrf_token(page),
                                                                "phone": "+1 415 555 0123"})
    assert response.status_code == 302 and response.headers["Location"].endswith("/account/security/phone/verify")
    code = last_sms_code(app, PHONE)
    with app.app_context():
        assert db.session.execute(db.select(Factor)).first() is None
    # Not yet verified: a sign-in does not text it.
    other = app.test_client()
    assert walk(other, authorize_path(plain_client[0])).screens == ["password"]
    verify = client.get("/account/security/phone/verify")
    wrong = client.post("/account/security/phone/verify", data={"csrf_token": csrf_token(verify),
                                                                "code": f"{(int(code) + 1) % 1000000:06d}"})
    assert wrong.status_code == 200 and "not right" in wrong.get_data(as_text=True)
    done = client.post("/account/security/phone/verify", data={"csrf_token": csrf_token(verify), "code": code})
    assert done.status_code == 302
    with app.app_context():
        factor = db.session.execute(db.select(Factor)).scalar_one()
        assert factor.kind == "sms" and factor.phone == PHONE and factor.confirmed_at is not None
    assert events(app, "factor.added")[-1].details["kind"] == "sms"
    assert "phone number" in mailbox.last(ALICE, "Security change")["text"]
    third = app.test_client()
    assert walk(third, authorize_path(plain_client[0]), stop_at="sms").screens == ["password", "sms"]


def test_an_invalid_phone_number_is_refused(app, client, alice):
    sign_in_fully(client)
    page = client.get("/account/security/phone/new")
    response = client.post("/account/security/phone/new", data={"csrf_token": csrf_token(page), "phone": "12345"})
    assert response.status_code == 200 and "valid number" in response.get_data(as_text=True)
    assert outbox_sms(app) == []


# --- remembered devices (SECURITY.md 28) ------------------------------------------------------------------------

def remembered_sign_in(client, clock, totp_secret: str, client_id: str) -> Walk:
    result = walk(client, authorize_path(client_id), answers={"totp": totp_answer(clock, totp_secret, remember="y")})
    assert result.screens == ["password", "totp"]
    assert client.get_cookie("idp_device") is not None
    return result


def test_remembered_device_skips_the_second_factor(app, client, clock, alice, plain_client):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    first = remembered_sign_in(client, clock, secret, plain_client[0])
    assert "remember" in first.pages[-1].get_data(as_text=True).lower()
    claims_of(client, *plain_client, first)
    sign_out(client)
    again = walk(client, authorize_path(plain_client[0]))
    assert again.screens == ["password"]
    claims = claims_of(client, *plain_client, again)
    assert "mfa" in claims["amr"] and "otp" not in claims["amr"] and claims["acr"] == MFA
    token = client.get_cookie("idp_device").value
    with app.app_context():
        rows = list(db.session.execute(db.select(Device)).scalars())
        assert len(rows) == 1
        dumped = json.dumps({c.name: str(getattr(rows[0], c.name)) for c in Device.__table__.columns})
        assert token not in dumped and rows[0].token_hash == token_hash(token)
        assert rows[0].remembered_until > utcnow() + timedelta(days=29)


def test_remembered_device_never_answers_acr_values_or_prompt_login(app, client, clock, alice, plain_client):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    remembered_sign_in(client, clock, secret, plain_client[0])
    answers = {"totp": totp_answer(clock, secret)}
    relogin = walk(client, authorize_path(plain_client[0], prompt="login"), answers=answers)
    assert relogin.screens == ["password", "totp"]
    assert "otp" in claims_of(client, *plain_client, relogin)["amr"]
    sign_out(client)
    stepped = walk(client, authorize_path(plain_client[0], acr_values=MFA), answers=answers)
    assert stepped.screens == ["password", "totp"]
    claims = claims_of(client, *plain_client, stepped)
    assert claims["acr"] == MFA and "otp" in claims["amr"]


def test_client_that_disallows_remembered_devices_still_asks(app, client, clock, alice, plain_client, make_client):
    strict = make_client(first_party=True, allow_remembered_device=False)
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    remembered_sign_in(client, clock, secret, plain_client[0])
    sign_out(client)
    result = walk(client, authorize_path(strict[0]), answers={"totp": totp_answer(clock, secret)})
    assert result.screens == ["password", "totp"]
    assert claims_of(client, *strict, result)["acr"] == MFA


def test_forgetting_a_device_asks_for_the_factor_again(app, client, clock, alice, plain_client, mailbox):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    remembered_sign_in(client, clock, secret, plain_client[0])
    page = client.get("/account/security")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "Remembered devices" in text
    match = re.search(r'action="(/account/security/devices/(\d+)/forget)"', text)
    assert match, text
    asked, forgot = remove_asking_first(client, match.group(1), page, before=lambda: assert_in(
        "Remembered devices", client.get("/account/security"), absent="No device is remembered"))
    assert "ask for your second factor again" in asked.get_data(as_text=True)
    assert forgot.status_code == 302
    assert "No device is remembered" in client.get("/account/security").get_data(as_text=True)
    assert events(app, "device.forgotten")
    assert "no longer remembered" in mailbox.last(ALICE, "Security change")["text"]
    sign_out(client)
    result = walk(client, authorize_path(plain_client[0]), answers={"totp": totp_answer(clock, secret)})
    assert result.screens == ["password", "totp"]


def test_first_sign_in_from_a_new_browser_is_mailed(app, clock, alice, plain_client, mailbox):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    first = app.test_client()
    remembered_sign_in(first, clock, secret, plain_client[0])
    assert not [m for m in new_mail(mailbox) if "New sign-in" in m["subject"]]
    # The same browser again: not news.
    sign_out(first)
    walk(first, authorize_path(plain_client[0]))
    assert not [m for m in new_mail(mailbox) if "New sign-in" in m["subject"]]
    second = app.test_client()
    result = walk(second, authorize_path(plain_client[0]), answers={"totp": totp_answer(clock, secret)})
    assert result.screens == ["password", "totp"]  # the other browser's memory does not carry over
    mail = mailbox.last(ALICE, "New sign-in")
    assert "browser we have not seen before" in mail["text"]


# --- self-service pages (SECURITY.md 27) ------------------------------------------------------------------------

def age_sessions(app, seconds: int) -> None:
    with app.app_context():
        db.session.execute(db.update(LoginSession).values(auth_time=utcnow() - timedelta(seconds=seconds)))
        db.session.commit()


def test_security_changes_need_a_recent_sign_in(app, client, alice):
    sign_in_fully(client)
    page = client.get("/account/security")
    assert page.status_code == 200
    age_sessions(app, app.config["IDP_STEP_UP_MAX_AGE"] + 60)
    for response in (client.get("/account/security/totp/new"),
                     client.post("/account/security/recovery-codes", data={"csrf_token": csrf_token(page)})):
        assert response.status_code == 302 and "/login/" in response.headers["Location"]
    with app.app_context():
        assert db.session.execute(db.select(RecoveryCode)).first() is None
        assert db.session.execute(db.select(Factor)).first() is None
    # Signing in again leads back to the page, which now works.
    back = client.get("/account/security/totp/new")
    result = follow(client, back)
    assert result.screens == ["password"]
    assert result.last.status_code == 200 and 'id="totp-secret"' in result.text


@pytest.mark.parametrize("method, path", [
    ("GET", "/account/security/totp/new"), ("GET", "/account/security/phone/new"),
    ("GET", "/account/security/phone/verify"), ("GET", "/account/security/webauthn/new"),
    ("POST", "/account/security/factors/1/rename"), ("POST", "/account/security/factors/1/remove"),
    ("POST", "/account/security/recovery-codes"), ("POST", "/account/security/devices/1/forget"),
])
def test_every_security_change_asks_for_a_recent_sign_in(app, client, alice, method, path):
    """SECURITY.md 27: each page that changes a factor or a device sends a stale session to sign in again first."""
    sign_in_fully(client)
    page = client.get("/account/security")
    age_sessions(app, app.config["IDP_STEP_UP_MAX_AGE"] + 60)
    response = client.open(path, method=method, data={"csrf_token": csrf_token(page)} if method == "POST" else None)
    assert response.status_code == 302 and "/login/" in response.headers["Location"], (path, response.status_code)


def test_add_rename_remove_totp_and_recovery_codes_are_audited_and_mailed(app, client, alice, mailbox):
    sign_in_fully(client)
    page = client.get("/account/security/totp/new")
    secret = re.search(r'id="totp-secret">([^<]+)<', page.get_data(as_text=True)).group(1).replace(" ", "")
    added = client.post("/account/security/totp/new", data={"csrf_token": csrf_token(page),
                                                            "code": pyotp.TOTP(secret).now()})
    assert added.status_code == 302
    listing = client.get("/account/security")
    text = listing.get_data(as_text=True)
    assert 'data-kind="totp"' in text and "Authenticator app" in text
    factor_id = re.search(r'data-remove="(\d+)"', text).group(1)
    renamed = client.post(f"/account/security/factors/{factor_id}/rename",
                          data={"csrf_token": csrf_token(listing), "name": "My phone"})
    assert renamed.status_code == 302
    assert "My phone" in client.get("/account/security").get_data(as_text=True)
    codes_page = client.post("/account/security/recovery-codes", data={"csrf_token": csrf_token(listing)})
    assert codes_page.status_code == 200 and codes_page.headers["Cache-Control"] == "no-store"
    asked, removed = remove_asking_first(
        client, f"/account/security/factors/{factor_id}/remove", listing,
        before=lambda: assert_in('data-kind="totp"', client.get("/account/security")))  # not removed unasked
    assert "Remove “My phone”?" in asked.get_data(as_text=True)
    assert "You will no longer be able to sign in with it" in asked.get_data(as_text=True)
    assert removed.status_code == 302
    assert 'data-kind="totp"' not in client.get("/account/security").get_data(as_text=True)
    for name in ("factor.added", "factor.renamed", "recovery_codes.generated", "factor.removed"):
        rows = events(app, name)
        assert len(rows) == 1 and rows[0].subject_id == alice.id, name
    notices = [m for m in mailbox.messages(ALICE) if "Security change" in m["subject"]]
    assert len(notices) == 4
    assert "renamed" in notices[1]["text"] and "My phone" in notices[1]["text"]
    with app.app_context():
        dumped = json.dumps([r.details for r in db.session.execute(db.select(AuditEvent)).scalars()])
    assert secret not in dumped


def test_recovery_codes_are_shown_once_and_regenerating_voids_the_old_ones(app, client, clock, alice, mfa_client):
    sign_in_fully(client)
    listing = client.get("/account/security")
    first = client.post("/account/security/recovery-codes", data={"csrf_token": csrf_token(listing)})
    old = re.findall(r"<li>([a-z0-9-]+)</li>", first.get_data(as_text=True))
    assert len(old) == 10 and len(set(old)) == 10
    listing = client.get("/account/security")
    assert old[0] not in listing.get_data(as_text=True) and "10 unused recovery codes" in listing.get_data(as_text=True)
    second = client.post("/account/security/recovery-codes", data={"csrf_token": csrf_token(listing)})
    new = re.findall(r"<li>([a-z0-9-]+)</li>", second.get_data(as_text=True))
    assert len(new) == 10 and not set(new) & set(old)
    with app.app_context():
        hashes = [r.code_hash for r in db.session.execute(db.select(RecoveryCode)).scalars()]
        assert len(hashes) == 10 and not set(hashes) & set(new)
    enrol_totp_in(app, ALICE, clock.now())
    browser = app.test_client()
    result = walk(browser, authorize_path(mfa_client[0]), stop_at="totp")
    follow(browser, choose(browser, result, "recovery_code"), result=result, stop_at="recovery_code")
    refused = post_step(browser, result, code=old[0])
    assert "not valid or was already used" in refused.get_data(as_text=True)
    follow(browser, post_step(browser, result, code=new[0]), result=result)
    assert "recovery_code" in claims_of(browser, *mfa_client, result)["amr"]


# --- CLI --------------------------------------------------------------------------------------------------------

def test_reset_mfa_removes_factors_ends_sessions_and_revokes_tokens(app, client, clock, alice, plain_client, mailbox):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    recovery_codes_in(app)
    result = walk(client, authorize_path(plain_client[0], scope="openid offline_access"),
                  answers={"totp": totp_answer(clock, secret)})
    tokens = claims_of(client, *plain_client, result)["_tokens"]
    assert tokens.get("refresh_token"), tokens
    assert signed_in_email(client) == ALICE
    out = app.test_cli_runner().invoke(args=["users", "reset-mfa", ALICE])
    assert out.exit_code == 0, out.output
    assert "1 factors removed" in out.output
    assert signed_in_email(client) is None
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            auth=plain_client)
    assert refreshed.status_code == 400 and refreshed.get_json()["error"] == "invalid_grant"
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert info.status_code == 401
    reset = events(app, "mfa.reset")
    assert len(reset) == 1 and reset[0].subject_id == alice.id and reset[0].details["factors_removed"] == 1
    with app.app_context():
        assert db.session.execute(db.select(Factor)).first() is None
        assert db.session.execute(db.select(RecoveryCode)).first() is None
    assert "removed your second factors" in mailbox.last(ALICE, "Security change")["text"]
    after = walk(client, authorize_path(plain_client[0]))
    assert after.screens == ["password"]


def test_clients_create_with_mfa_required_and_a_minimum_level(app, client, clock, alice):
    runner = app.test_cli_runner()
    out = runner.invoke(args=["clients", "create", "--name", "Bank", "--redirect-uri", RP, "--first-party",
                              "--mfa", "required", "--acr", MFA, "--json"])
    assert out.exit_code == 0, out.output
    created = json.loads(out.output)
    shown = runner.invoke(args=["clients", "show", created["client_id"]])
    assert shown.exit_code == 0, shown.output
    stored = json.loads(shown.output)
    assert stored["mfa"] == "required" and stored["min_acr"] == MFA
    assert "client_secret" not in stored or not stored["client_secret"]
    bad = runner.invoke(args=["clients", "create", "--name", "X", "--redirect-uri", RP, "--acr", "urn:other"])
    assert bad.exit_code != 0
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(created["client_id"]), answers={"totp": totp_answer(clock, secret)})
    assert result.screens == ["password", "totp"]
    assert claims_of(client, created["client_id"], created["client_secret"], result)["acr"] == MFA


def test_min_acr_client_alone_sends_a_factorless_user_to_enrolment(app, client, alice, make_client):
    client_id, _ = make_client(first_party=True, min_acr=MFA)
    result = walk(client, authorize_path(client_id), stop_at="mfa_enroll")
    assert result.screens == ["password", "mfa_enroll"]
    assert step_name(client.get(screen_url(result.pages[-1]))) == "mfa_enroll"
    with app.app_context():  # nothing is signed in before the factor
        assert db.session.execute(db.select(LoginSession)).first() is None
    assert signed_in_email(client) is None


@pytest.mark.parametrize("params", [{"prompt": "login"}, {"max_age": "60"}])
def test_re_authentication_asks_every_factor_again(app, client, clock, alice, plain_client, params):
    """prompt=login and an exceeded max_age re-authenticate the user: the old session's factor does not count."""
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    answers = {"totp": totp_answer(clock, secret)}
    assert walk(client, authorize_path(plain_client[0]), answers=answers).screens == ["password", "totp"]
    age_sessions(app, 3600)
    again = walk(client, authorize_path(plain_client[0], **params), answers=answers)
    assert again.screens == ["password", "totp"]
    claims = claims_of(client, *plain_client, again)
    assert claims["acr"] == MFA and {"pwd", "otp", "mfa"} <= set(claims["amr"])


# --- malformed answers on the factor screens (SECURITY.md 31) ----------------------------------------------------

def test_choosing_a_factor_before_the_password_changes_nothing(app, client, clock, alice, plain_client):
    enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(plain_client[0]), stop_at="password")
    response = choose(client, result, "totp")
    assert response.status_code == 302
    assert step_name(client.get(response.headers["Location"])) == "password"


@pytest.mark.parametrize("credential", ['{"id": "\\u0000"}', '{"id": 5}', '{"id": "\u00e9"}', '{"id": ["a"]}', "[]",
                                        "not json"])
def test_a_malformed_passkey_answer_is_a_message_on_the_sign_in_page(app, client, alice, plain_client, credential):
    result = walk(client, authorize_path(plain_client[0]), stop_at="password")
    response = client.post(f"/login/{tid_of(result)}/passkey",
                           data={"csrf_token": csrf_token(result.pages[-1]), "credential": credential})
    assert response.status_code == 302
    page = client.get(response.headers["Location"])
    assert step_name(page) == "password"
    assert "That passkey could not be verified" in page.get_data(as_text=True)


@pytest.mark.parametrize("credential", ["{}", "[]", "5", '{"id": 5}', '{"id": "AAAA", "rawId": "AAAA"}',
                                        '{"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {}}'])
def test_a_malformed_security_key_registration_is_a_form_message(app, client, alice, credential):
    sign_in_fully(client)
    page = client.get("/account/security/webauthn/new")
    response = client.post("/account/security/webauthn/new",
                           data={"csrf_token": csrf_token(page), "name": "My key", "credential": credential})
    assert response.status_code == 302 and response.headers["Location"].endswith("/account/security/webauthn/new")
    assert "could not be registered" in client.get(response.headers["Location"]).get_data(as_text=True)
    with app.app_context():
        assert db.session.execute(db.select(Factor)).first() is None


FULLWIDTH = str.maketrans("0123456789", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19")
ARABIC_INDIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


def test_a_totp_code_typed_in_fullwidth_digits_or_with_a_space_is_accepted(app, clock, alice, plain_client):
    """Some keyboards (Japanese, Chinese input methods) type fullwidth digits; NFKC makes them the code."""
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    for typed in (lambda code: code.translate(FULLWIDTH), lambda code: code[:3] + " " + code[3:]):
        client = app.test_client()
        result = walk(client, authorize_path(plain_client[0]), answers={"totp": lambda page, typed=typed: {
            "code": typed(clock.totp(secret))}})
        assert result.screens == ["password", "totp"]
        assert claims_of(client, *plain_client, result)["acr"] == MFA


@pytest.mark.parametrize("typed", [lambda code: code.translate(ARABIC_INDIC), lambda code: code[:5] + "\u00bd",
                                   lambda code: code[:5] + "\u00e9"])
def test_a_totp_code_with_other_characters_is_not_right(app, client, clock, alice, plain_client, typed):
    secret, _ = enrol_totp_in(app, ALICE, clock.now())
    result = walk(client, authorize_path(plain_client[0]), stop_at="totp")
    response = post_step(client, result, code=typed(clock.totp(secret)))
    assert response.status_code == 200 and "That code is not right" in response.get_data(as_text=True)


def test_enrolment_in_the_flow_takes_fullwidth_digits_and_refuses_other_scripts(app, client, alice, mfa_client):
    result = walk(client, authorize_path(mfa_client[0]), stop_at="mfa_enroll")
    secret = re.search(r'id="totp-secret">([^<]+)<', result.pages[-1].get_data(as_text=True)).group(1).replace(" ", "")
    refused = post_step(client, result, code=pyotp.TOTP(secret).now().translate(ARABIC_INDIC))
    assert refused.status_code == 200 and "That code is not right" in refused.get_data(as_text=True)
    follow(client, post_step(client, result, code=pyotp.TOTP(secret).now().translate(FULLWIDTH)), result=result)
    assert claims_of(client, *mfa_client, result)["acr"] == MFA


def test_an_sms_code_typed_with_a_space_or_in_fullwidth_digits_is_accepted(app, alice, mfa_client):
    add_phone_in(app)
    for typed in (lambda code: code[:3] + " " + code[3:], lambda code: code.translate(FULLWIDTH)):
        client = app.test_client()
        result = walk(client, authorize_path(mfa_client[0]), answers={"sms": lambda page, typed=typed: {
            "code": typed(last_sms_code(app))}})
        assert result.screens == ["password", "sms"]
        assert claims_of(client, *mfa_client, result)["acr"] == MFA


def test_a_user_cannot_change_someone_elses_factor_or_device(app, clock, alice, make_user):
    """The ids in the URLs are plain integers: each change checks that the row is the signed-in user's."""
    sign_in_fully(app.test_client())  # Alice's browser: a device row of hers
    _, factor_id = enrol_totp_in(app, ALICE, clock.now())
    with app.app_context():
        device = db.session.execute(db.select(Device).where(Device.user_id == user_id(app))).scalars().first()
        device.remembered_until = utcnow() + timedelta(days=30)
        db.session.commit()
        device_id = device.id
    make_user(email="bob@example.com", name="Bob")
    bob = app.test_client()
    sign_in_fully(bob, "bob@example.com")
    token = csrf_token(bob.get("/account/security"))
    assert bob.post(f"/account/security/factors/{factor_id}/rename",
                    data={"csrf_token": token, "name": "Bob was here"}).status_code == 404
    assert bob.post(f"/account/security/factors/{factor_id}/remove",
                    data={"confirm": "yes", "csrf_token": token}).status_code == 404
    bob.post(f"/account/security/devices/{device_id}/forget", data={"confirm": "yes", "csrf_token": token})
    with app.app_context():
        factor = db.session.get(Factor, factor_id)
        assert factor is not None and factor.name != "Bob was here"
        device = db.session.get(Device, device_id)
        assert device.revoked_at is None and device.remembered_until is not None
    for name in ("factor.renamed", "factor.removed", "device.forgotten"):
        assert events(app, name) == [], name
