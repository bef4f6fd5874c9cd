"""Browser tests of multi-factor sign-in: TOTP enrolment read off the page, and WebAuthn (registration, second
factor, passwordless) with Chromium's virtual authenticator driven through the DevTools protocol.

WebAuthn needs a valid RP ID and an IP address is not one, so here the live server (live_localhost) is reached as
http://localhost:PORT and the app's issuer says so ("localhost" is a secure context in Chromium).
Same requirements and skip/fail rule as tests/test_browser.py.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from idp.extensions import db
from idp.models import AuditEvent, Factor, LoginSession, User, utcnow
from idp.security.otp import TOTP_PERIOD, totp_code_at
from tests.support import (
    PASSWORD,
    add_virtual_authenticator,
    authenticator_presence,
    csp_violations,
    heading,
    make_client_in,
    make_user_in,
    open_tab,
    require_browser,
    sign_in_with_the_passkey_button,
)

ENROL_SCREENSHOT = "/tmp/idp-mfa-enrol.png"
SECURITY_SCREENSHOT = "/tmp/idp-account-security.png"
RP_CALLBACK = "https://rp.example/cb"
PHR = "urn:idp:acr:phr"


require_browser()

from playwright.sync_api import expect  # noqa: E402  (only once we know it is there)

pytestmark = pytest.mark.browser


@pytest.fixture
def context(chromium, live_localhost, console_errors):
    ctx = chromium.new_context(base_url=live_localhost.url)
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context, console_errors):
    return open_tab(context, console_errors)


@pytest.fixture
def authenticator(context, page):
    return add_virtual_authenticator(context, page)


def _sign_in(page, email: str, password: str = PASSWORD) -> None:
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def _sign_out(page) -> None:
    page.goto("/account")  # its Sign out button carries the form token
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(heading(page, "You are signed out")).to_be_visible()


def _step(when) -> int:
    return int(when.timestamp()) // TOTP_PERIOD


def _claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _factors(app, email: str, kind: str) -> list[Factor]:
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == email)).scalar_one()
        found = list(db.session.execute(db.select(Factor).where(
            Factor.user_id == user.id, Factor.kind == kind, Factor.confirmed_at.is_not(None))).scalars())
        for factor in found:
            db.session.expunge(factor)
        return found


def _latest_session_amr(app, email: str) -> list[str]:
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == email)).scalar_one()
        latest = db.session.execute(db.select(LoginSession).where(LoginSession.user_id == user.id)
                                    .order_by(LoginSession.id.desc())).scalars().first()
        assert latest is not None
        return list(latest.amr)


def _register_passkey(page, live_localhost, email: str) -> None:
    """Sign in with the password, add a passkey on /account/security, sign out."""
    page.goto("/login")
    _sign_in(page, email)
    expect(page).to_have_url(f"{live_localhost.url}/account")
    page.goto("/account/security")
    page.get_by_role("link", name="Add a passkey").click()
    expect(heading(page, "Add a passkey")).to_be_visible()
    page.get_by_role("button", name="Continue").click()
    expect(heading(page, "Two-step sign-in, passkeys and devices")).to_be_visible()
    expect(page.locator("li[data-kind=webauthn]")).to_have_count(1)


# --- TOTP ----------------------------------------------------------------------------------------------------------

def test_totp_enrolment_in_the_flow_then_sign_in_with_a_code(page, live_localhost, console_errors):
    make_user_in(live_localhost.app, email="carol@example.com", name="Carol", mfa_required=True)
    page.goto("/login")
    _sign_in(page, "carol@example.com")

    expect(heading(page, "Set up a second factor")).to_be_visible()
    expect(page.locator(".qr svg")).to_be_visible()
    box = page.locator(".qr svg").bounding_box()
    assert box and box["width"] >= 100 and box["height"] >= 100, box
    page.screenshot(path=ENROL_SCREENSHOT, full_page=True)
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    enrolled_at = utcnow()
    page.get_by_label("Code from the app", exact=True).fill(totp_code_at(secret, enrolled_at))
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(f"{live_localhost.url}/account")
    assert len(_factors(live_localhost.app, "carol@example.com", "totp")) == 1
    assert set(_latest_session_amr(live_localhost.app, "carol@example.com")) >= {"pwd", "otp", "mfa"}

    _sign_out(page)
    page.goto("/login")
    _sign_in(page, "carol@example.com")
    expect(heading(page, "Enter the code from your authenticator app")).to_be_visible()
    now = utcnow()
    # A code is accepted once: if the enrolment used this time step, the authenticator's next code is due.
    when = now + timedelta(seconds=TOTP_PERIOD) if _step(now) <= _step(enrolled_at) else now
    page.get_by_label("Code", exact=True).fill(totp_code_at(secret, when))
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page).to_have_url(f"{live_localhost.url}/account")
    expect(page.locator("#account-email")).to_have_text("carol@example.com")
    assert csp_violations(console_errors) == []


# --- WebAuthn -------------------------------------------------------------------------------------------------------

def test_passkey_registration_on_the_security_page(page, live_localhost, authenticator, console_errors):
    make_user_in(live_localhost.app, email="dave@example.com", name="Dave")
    _register_passkey(page, live_localhost, "dave@example.com")
    page.screenshot(path=SECURITY_SCREENSHOT, full_page=True)
    expect(page.locator("li[data-kind=webauthn]")).to_contain_text("Passkey")
    (factor,) = _factors(live_localhost.app, "dave@example.com", "webauthn")
    assert factor.credential_id and factor.public_key
    credentials = authenticator.send("WebAuthn.getCredentials", {"authenticatorId": authenticator.authenticator_id})
    assert [c["credentialId"].rstrip("=").replace("+", "-").replace("/", "_")
            for c in credentials["credentials"]] == [factor.credential_id]
    assert csp_violations(console_errors) == []


def test_security_key_as_second_factor_reaches_phishing_resistant_acr(page, live_localhost, authenticator,
                                                                      console_errors):
    make_user_in(live_localhost.app, email="erin@example.com", name="Erin")
    client_id, secret = make_client_in(live_localhost.app, redirect_uris=[RP_CALLBACK], first_party=True)
    _register_passkey(page, live_localhost, "erin@example.com")
    _sign_out(page)

    landed = []

    def catch(route):
        landed.append(route.request.url)
        route.fulfill(status=200, content_type="text/plain", body="relying party")

    page.route("https://rp.example/**", catch)
    authenticator_presence(authenticator, False)  # or the passkey autofill on the sign-in page would answer by itself
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": RP_CALLBACK, "scope": "openid",
             "state": "s-1", "nonce": "n-1", "acr_values": PHR}
    page.goto("/authorize?" + urlencode(query))
    assert not landed, landed
    expect(heading(page, "Sign in")).to_be_visible()
    _sign_in(page, "erin@example.com")
    expect(heading(page, "Use your security key or passkey")).to_be_visible()
    authenticator_presence(authenticator, True)
    page.locator("#webauthn-go").click()
    expect(page.get_by_text("relying party")).to_be_visible()

    params = parse_qs(urlsplit(landed[-1]).query)
    assert params["state"] == ["s-1"], params
    response = requests.post(f"{live_localhost.url}/token", auth=(client_id, secret), timeout=10, data={
        "grant_type": "authorization_code", "code": params["code"][0], "redirect_uri": RP_CALLBACK})
    assert response.status_code == 200, response.text
    claims = _claims(response.json()["id_token"])
    assert claims["acr"] == PHR
    assert {"hwk", "swk"} & set(claims["amr"]) and "user" in claims["amr"], claims["amr"]
    assert "pwd" in claims["amr"] and "mfa" in claims["amr"], claims["amr"]
    assert claims["nonce"] == "n-1"
    assert csp_violations(console_errors) == []


def test_passwordless_passkey_sign_in_and_counter(page, live_localhost, authenticator, console_errors):
    from idp.security import webauthn as wa

    make_user_in(live_localhost.app, email="frank@example.com", name="Frank")
    _register_passkey(page, live_localhost, "frank@example.com")
    (registered,) = _factors(live_localhost.app, "frank@example.com", "webauthn")
    _sign_out(page)

    posted = []
    page.on("request", lambda request: posted.append(request.post_data_json)
            if request.method == "POST" and request.url.endswith("/passkey") else None)
    sign_in_with_the_passkey_button(page, authenticator)
    expect(page).to_have_url(f"{live_localhost.url}/account")
    expect(page.locator("#account-email")).to_have_text("frank@example.com")
    amr = _latest_session_amr(live_localhost.app, "frank@example.com")
    assert {"hwk", "swk"} & set(amr) and "user" in amr and "mfa" in amr, amr
    assert "pwd" not in amr
    (first,) = _factors(live_localhost.app, "frank@example.com", "webauthn")
    assert first.sign_count > registered.sign_count
    assert first.last_used_at is not None

    # Again, through the passkey autofill (conditional mediation) this time: the counter goes on growing.
    _sign_out(page)
    page.goto("/login")
    expect(page).to_have_url(f"{live_localhost.url}/account")
    expect(page.locator("#account-email")).to_have_text("frank@example.com")
    (second,) = _factors(live_localhost.app, "frank@example.com", "webauthn")
    assert second.sign_count > first.sign_count
    assert csp_violations(console_errors) == []

    # The assertion the browser sent checks out for our origin only (unit level, with its own challenge).
    assert len(posted) == 2
    credential = posted[-1]["credential"]
    client_data = json.loads(base64.urlsafe_b64decode(
        (raw := json.loads(credential)["response"]["clientDataJSON"]) + "=" * (-len(raw) % 4)))
    assert client_data["origin"] == live_localhost.url
    ours = wa.relying_party(live_localhost.url)
    checked = wa.verify_authentication(ours, credential, client_data["challenge"], public_key=registered.public_key,
                                       sign_count=first.sign_count, require_uv=True)
    assert checked.new_sign_count == second.sign_count and checked.user_verified
    for other in (wa.RelyingParty(rp_id="localhost", origin="http://localhost:1"),
                  wa.RelyingParty(rp_id="localhost", origin="https://evil.example"),
                  wa.RelyingParty(rp_id="evil.example", origin=live_localhost.url)):
        with pytest.raises(wa.WebAuthnFailed):
            wa.verify_authentication(other, credential, client_data["challenge"], public_key=registered.public_key,
                                     sign_count=first.sign_count, require_uv=True)
    with pytest.raises(wa.WebAuthnFailed):  # a replayed (or cloned) counter is refused
        wa.verify_authentication(ours, credential, client_data["challenge"], public_key=registered.public_key,
                                 sign_count=second.sign_count, require_uv=True)

    # Replayed through the sign-in itself: a new transaction has its own challenge, so the captured assertion
    # (whose challenge was used up) signs nobody in (SECURITY.md 25: single use, bound to the transaction).
    _sign_out(page)
    authenticator_presence(authenticator, False)
    page.goto("/login")
    expect(heading(page, "Sign in")).to_be_visible()
    token = page.locator("form.passkey input[name=csrf_token]").get_attribute("value")
    replay = page.request.post(page.locator("form.passkey").get_attribute("action"),
                               form={"csrf_token": token, "credential": credential}, max_redirects=0)
    assert replay.status == 302
    page.goto("/account")
    expect(heading(page, "Sign in")).to_be_visible()
    with live_localhost.app.app_context():
        assert any(e.details.get("reason") == "passkey" for e in db.session.execute(
            db.select(AuditEvent).where(AuditEvent.event == "login.failure")).scalars())
    authenticator_presence(authenticator, True)


def test_passkey_enrolment_in_the_flow_for_a_user_who_must_use_mfa(page, live_localhost, authenticator, console_errors):
    make_user_in(live_localhost.app, email="gina@example.com", name="Gina", mfa_required=True)
    page.goto("/login")
    _sign_in(page, "gina@example.com")
    expect(heading(page, "Set up a second factor")).to_be_visible()
    page.locator("#webauthn-register").click()
    expect(page).to_have_url(f"{live_localhost.url}/account")
    assert len(_factors(live_localhost.app, "gina@example.com", "webauthn")) == 1
    # The key shown on the page was never confirmed.
    assert _factors(live_localhost.app, "gina@example.com", "totp") == []
    amr = _latest_session_amr(live_localhost.app, "gina@example.com")
    assert {"pwd", "user", "mfa"} <= set(amr) and {"hwk", "swk"} & set(amr), amr
    assert csp_violations(console_errors) == []


# --- recovery codes ---------------------------------------------------------------------------------------------

def test_recovery_codes_are_downloaded_as_a_text_file_from_the_page(page, live_localhost, console_errors):
    """The codes shown once can be saved as a file made in the page (no server address serves them again)."""
    from tests.support import enrol_totp_in

    make_user_in(live_localhost.app, email="gina@example.com", name="Gina")
    secret, _factor = enrol_totp_in(live_localhost.app, "gina@example.com")
    page.goto("/account/security")
    _sign_in(page, "gina@example.com")
    page.get_by_label("Code", exact=True).fill(totp_code_at(secret, utcnow()))
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(heading(page, "Two-step sign-in, passkeys and devices")).to_be_visible()
    page.get_by_role("button", name="Generate recovery codes").click()
    expect(heading(page, "Your recovery codes")).to_be_visible()
    shown = [code.strip() for code in page.locator("#recovery-codes li").all_inner_texts()]
    assert len(shown) == 10
    expect(page.get_by_role("button", name="Copy", exact=True)).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download as a text file").click()
    assert download.value.suggested_filename == "recovery-codes.txt"
    lines = download.value.path().read_text(encoding="utf-8").splitlines()
    assert lines[0] == "Recovery codes for gina@example.com"
    assert [line for line in lines[1:] if line] == shown
    assert csp_violations(console_errors) == []
    # Let the page finish loading (its icons) before the browser closes: a transfer cut off mid-file leaves the
    # development server's file open, which the suite's warnings-as-errors reports at teardown.
    page.wait_for_load_state("networkidle")


def test_totp_enrolment_offers_a_tap_to_add_link(page, live_localhost):
    """On a phone, the otpauth:// link hands the key to the authenticator app (Key URI Format)."""
    make_user_in(live_localhost.app, email="hal@example.com", name="Hal")
    page.goto("/account/security/totp/new")
    _sign_in(page, "hal@example.com")
    expect(heading(page, "Add an authenticator app")).to_be_visible()
    href = page.locator("#totp-link").get_attribute("href")
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    parts = urlsplit(href)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parse_qs(parts.query)["secret"] == [secret]
    assert "hal%40example.com" in parts.path or "hal@example.com" in parts.path
    page.wait_for_load_state("networkidle")  # as in the test above: no transfer cut off at teardown
