"""A newcomer's walk through the hosted pages, at a desktop and a phone width, in English and in French: sign up,
verify the email with the mailed code, the account and security pages, add an authenticator app, sign out, sign in
again with the password and a code, sign out. Every page is checked on the way: no horizontal scrolling, ``<html
lang>`` is the walk's language, its heading is in that language (the catalogue's translation), and axe-core (npm,
pinned in tests/rp/package-lock.json) finds nothing serious or critical.

Then a passkey on the defaults a developer starts with: ``idp run`` in development without IDP_ISSUER.

Same requirements and skip/fail rule as tests/test_browser.py; axe-core is installed with ``npm ci`` when missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests

from idp.models import utcnow
from idp.security.otp import TOTP_PERIOD, totp_code_at
from tests.support import (
    PASSWORD,
    Inspector,
    Mailbox,
    add_virtual_authenticator,
    code_in,
    csp_violations,
    free_port,
    heading,
    make_user_in,
    open_tab,
    require_browser,
    sign_in_with_the_passkey_button,
)

require_browser()

from playwright.sync_api import expect  # noqa: E402  (only once we know it is there)

pytestmark = pytest.mark.browser

LOCALES = {"en": "en-US", "fr": "fr-FR"}
HEIGHT = 800


def _submit(page) -> None:
    """Press the main form's button (found without its words, which are in the walk's language)."""
    page.locator("main form:not(.inline):not(.passkey) button[type=submit]").first.click()


def _sign_out(page, inspect: Inspector) -> None:
    page.goto("/account")
    inspect.check("Your account")
    page.locator("header form button[type=submit]").click()  # the header's Sign out
    inspect.check("You are signed out")


def _code_after(secret: str, used_at) -> str:
    """The authenticator's code now, or its next one if ``used_at`` spent the current time step (a code is
    accepted once)."""
    now = utcnow()
    same_step = int(now.timestamp()) // TOTP_PERIOD <= int(used_at.timestamp()) // TOTP_PERIOD
    return totp_code_at(secret, now + timedelta(seconds=TOTP_PERIOD) if same_step else now)


@pytest.mark.parametrize("width", [1280, 360])
@pytest.mark.parametrize("language", ["en", "fr"])
def test_sign_up_enrol_an_authenticator_app_and_sign_in_again(chromium, live_localhost, smtp_server, axe_source,
                                                             console_errors, language, width):
    live = live_localhost
    mailbox = Mailbox(live.app, smtp_server)
    email = f"walk-{language}-{width}@example.com"
    context = chromium.new_context(base_url=live.url, locale=LOCALES[language],
                                   viewport={"width": width, "height": HEIGHT})
    context.set_default_timeout(10_000)
    page = open_tab(context, console_errors)
    inspect = Inspector(page, live.app, language, axe_source)
    try:
        page.goto("/signup")
        inspect.check("Create an account")
        page.locator("input[name=email]").fill(email)
        page.locator("input[name=name]").fill("Walker")
        page.locator("input[name=password]").fill(PASSWORD)
        _submit(page)

        expect(page.locator("input[name=code]")).to_be_visible()
        inspect.check("Verify your email")
        page.locator("input[name=code]").fill(code_in(mailbox.last(email)))
        _submit(page)
        expect(page).to_have_url(f"{live.url}/account")
        inspect.check("Your account")

        page.locator("main a[href$='/account/security']").click()
        expect(page).to_have_url(f"{live.url}/account/security")
        inspect.check("Two-step sign-in, passkeys and devices")
        page.locator("section[data-factor=totp] a.button").first.click()
        inspect.check("Add an authenticator app")
        secret = page.locator("#totp-secret").inner_text().replace(" ", "")
        enrolled_at = utcnow()
        page.locator("input[name=code]").fill(totp_code_at(secret, enrolled_at))
        _submit(page)
        expect(page.locator("li[data-kind=totp]")).to_have_count(1)
        inspect.check("Two-step sign-in, passkeys and devices")
        _sign_out(page, inspect)

        page.goto("/login")
        inspect.check("Sign in")
        page.locator("input[name=email]").fill(email)
        page.locator("input[name=password]").fill(PASSWORD)
        _submit(page)
        expect(page.locator("input[name=code]")).to_be_visible()
        inspect.check("Enter the code from your authenticator app")
        page.locator("input[name=code]").fill(_code_after(secret, enrolled_at))
        _submit(page)
        expect(page).to_have_url(f"{live.url}/account")
        inspect.check("Your account")
        expect(page.locator("#account-email")).to_have_text(email)
        page.goto("/account/security")
        inspect.check("Two-step sign-in, passkeys and devices")
        _sign_out(page, inspect)
    finally:
        context.close()
    problems = list(dict.fromkeys(inspect.problems))  # a page seen twice says so once
    assert problems == [], "\n".join([f"{language} at {width} px:", *problems])
    assert csp_violations(console_errors) == []


def test_the_axe_check_sees_a_violation(chromium, live_localhost, axe_source):
    """Guards the walk's accessibility check: a form field that loses its label is reported as critical."""
    context = chromium.new_context(base_url=live_localhost.url)
    page = context.new_page()
    try:
        page.goto("/signup")
        page.evaluate("() => document.querySelector('label[for=email]').remove()")
        found = Inspector(page, live_localhost.app, "en", axe_source).axe_violations()
    finally:
        context.close()
    assert any(" label " in v and "#email" in v for v in found), found


# --- A passkey on the development defaults ------------------------------------------------------------------------

@pytest.fixture
def idp_run(make_app, tmp_path):
    """``idp run --port N`` as a developer starts it: IDP_ENV=development and no IDP_ISSUER (in the environment or
    a .env file), so the issuer is http://localhost:N. Its database is this test's; its secret and outbox are in
    tmp (only so that the checkout's instance folder is left alone)."""
    app = make_app()  # the test's database (and an app to fill it)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDP_", "FLASK_"))}
    env.update(IDP_ENV="development", IDP_DATABASE_URL=app.config["IDP_DATABASE_URL"],
               IDP_SECRET_KEY="development-" + "x" * 40, IDP_OUTBOX_DIR=str(tmp_path / "outbox"))
    log = tmp_path / "idp-run.log"  # a file, not a pipe: a full pipe would stall the server
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, "-c", "from idp.console import main; main()", "run", "--port",
                                   str(port)], cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=2)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.1)
        url = f"http://localhost:{port}"
        assert log.read_text().splitlines()[0] == f"idp: open {url}/login", log.read_text()
        assert log.read_text().splitlines()[1] == (f"idp: the admin console is {url}/admin/ "
                                                   "(`idp demo` prints its admin account)")
        yield SimpleNamespace(url=url, app=app)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_passkey_on_the_development_defaults(chromium, idp_run, console_errors):
    meta = requests.get(f"{idp_run.url}/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == idp_run.url
    make_user_in(idp_run.app, email="dev@example.com", name="Dev")
    context = chromium.new_context(base_url=idp_run.url)
    context.set_default_timeout(10_000)
    page = open_tab(context, console_errors)
    authenticator = add_virtual_authenticator(context, page)
    try:
        page.goto("/login")
        page.get_by_label("Email", exact=True).fill("dev@example.com")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page).to_have_url(f"{idp_run.url}/account")
        page.goto("/account/security")
        page.get_by_role("link", name="Add a passkey").click()
        expect(heading(page, "Add a passkey")).to_be_visible()
        page.get_by_role("button", name="Continue").click()
        expect(page.locator("li[data-kind=webauthn]")).to_have_count(1)
        page.goto("/account")
        page.get_by_role("button", name="Sign out", exact=True).click()
        expect(heading(page, "You are signed out")).to_be_visible()

        sign_in_with_the_passkey_button(page, authenticator)
        expect(page).to_have_url(f"{idp_run.url}/account")
        expect(page.locator("#account-email")).to_have_text("dev@example.com")
    finally:
        context.close()
    assert csp_violations(console_errors) == []
