"""An administrator's day in the console, in Debian's Chromium: sign in with a second factor, find a user, disable
them (their session ends, their token stops working at userinfo), enable them again, reset their MFA, register a
client and complete an authorization code flow with it, rotate its secret, rotate the signing keys, filter the audit
log and download it as CSV. Every console page on the way, and the hosted sign-in and consent pages, is checked with
axe-core (nothing serious or critical) and for sideways scrolling, at a desktop width; the same pages at a phone's
360 px are walked by the second test.

Same requirements and skip/fail rule as tests/test_browser.py.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from idp.extensions import db
from idp.models import User, utcnow
from idp.security.otp import totp_code_at
from tests.support import (
    PASSWORD,
    Inspector,
    csp_violations,
    enrol_totp_in,
    follow,
    make_user_in,
    open_tab,
    pkce_pair,
    require_browser,
)

require_browser()

from playwright.sync_api import expect  # noqa: E402  (only once we know it is there)

pytestmark = pytest.mark.browser

ADMIN = "root@example.com"
CALLBACK = "http://127.0.0.1:9/cb"  # nothing listens: the browser's request there is caught by the test


def _user_token(app, email: str, client_id: str, secret: str) -> str:
    """An access token of ``email`` for a first-party client, from the code flow (through the test client)."""
    browser = app.test_client()
    verifier, challenge = pkce_pair()
    query = urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": "https://rp.example/cb",
                       "scope": "openid", "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"})
    result = follow(browser, browser.get(f"/authorize?{query}"), email=email)
    code = parse_qs(urlsplit(result.location).query)["code"][0]
    tokens = browser.post("/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                          "redirect_uri": "https://rp.example/cb"}, auth=(client_id, secret))
    assert tokens.status_code == 200, tokens.get_json()
    return tokens.get_json()["access_token"]


def _sign_in(page, inspect: Inspector, secret: str, path: str = "/admin/") -> None:
    page.goto(path)
    inspect.check("Sign in")
    page.locator("input[name=email]").fill(ADMIN)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("main form:not(.inline):not(.passkey) button[type=submit]").first.click()
    expect(page.locator("input[name=code]")).to_be_visible()
    inspect.check("Enter the code from your authenticator app")
    page.locator("input[name=code]").fill(totp_code_at(secret, utcnow()))
    page.locator("main form:not(.inline) button[type=submit]").first.click()


def _confirm(page, inspect: Inspector, heading: str, typed: str | None = None) -> None:
    inspect.check(heading)
    if typed is not None:
        page.locator("input[name=typed]").fill(typed)
    page.locator("#confirm-remove").click()


@pytest.fixture
def admin_setup(live_localhost, make_client):
    live = live_localhost
    make_user_in(live.app, email=ADMIN, name="Root", is_admin=True)
    secret = enrol_totp_in(live.app, ADMIN)[0]
    bob = make_user_in(live.app, email="bob@example.com", name="Bob")
    rp = make_client(redirect_uris=["https://rp.example/cb"], first_party=True)
    return live, secret, bob, rp


def test_an_administrators_day_in_the_console(chromium, admin_setup, axe_source, console_errors):
    live, secret, bob, (rp_id, rp_secret) = admin_setup
    bob_token = _user_token(live.app, "bob@example.com", rp_id, rp_secret)
    userinfo = f"{live.url}/userinfo"
    assert requests.get(userinfo, headers={"Authorization": f"Bearer {bob_token}"}, timeout=10).status_code == 200
    context = chromium.new_context(base_url=live.url, locale="en-US", viewport={"width": 1280, "height": 800},
                                   accept_downloads=True)
    context.set_default_timeout(10_000)
    page = open_tab(context, console_errors)
    inspect = Inspector(page, live.app, "en", axe_source)
    try:
        _sign_in(page, inspect, secret)
        expect(page).to_have_url(f"{live.url}/admin/")
        inspect.check("Overview")
        expect(page.locator("figure.chart svg polyline")).to_have_count(3)

        # Find Bob and disable him: his session and token end.
        page.locator("nav.admin-nav a[href='/admin/users']").click()
        inspect.check("Users")
        page.locator("#q").fill("bob")
        page.locator("form.filters button[type=submit]").first.click()
        page.locator("tr[data-user='bob@example.com'] a").click()
        inspect.check("Bob")
        page.locator("button[data-action=disable]").click()
        _confirm(page, inspect, "Disable this user?")
        expect(page.locator("p.status")).to_contain_text("disabled")
        inspect.check("Bob")
        assert requests.get(userinfo, headers={"Authorization": f"Bearer {bob_token}"}, timeout=10).status_code == 401
        page.locator("button[data-action=enable]").click()
        expect(page.locator("p.status")).not_to_contain_text("disabled")
        enrol_totp_in(live.app, "bob@example.com")
        page.reload()
        expect(page.locator("li[data-kind=totp]")).to_have_count(1)
        page.locator("button[data-action=reset-mfa]").click()
        _confirm(page, inspect, "Reset this user's MFA?")
        expect(page.locator("li[data-kind=totp]")).to_have_count(0)

        # Register a client, sign in to it, rotate its secret.
        page.goto("/admin/clients")
        inspect.check("Clients")
        page.locator("main a.button[href='/admin/clients/new']").click()
        inspect.check("New client")
        page.locator("#name").fill("Shop")
        page.locator("#redirect_uris").fill(CALLBACK)
        page.locator("main form button[type=submit]").first.click()
        inspect.check("Client registered")
        client_id = page.locator("#client-id").inner_text()
        client_secret = page.locator("#client-secret").inner_text()
        caught: list[str] = []
        page.route("http://127.0.0.1:9/**", lambda route: (caught.append(route.request.url),
                                                           route.fulfill(status=200, body="ok")))
        verifier, challenge = pkce_pair()
        page.goto("/authorize?" + urlencode({
            "response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "scope": "openid email",
            "state": "st", "code_challenge": challenge, "code_challenge_method": "S256"}))
        inspect.check("Allow Shop?")
        page.locator("input[name=allow]").click()
        page.wait_for_url(f"{CALLBACK}**")
        code = parse_qs(urlsplit(caught[-1]).query)["code"][0]
        tokens = requests.post(f"{live.url}/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": verifier},
            auth=(client_id, client_secret), timeout=10)
        assert tokens.status_code == 200, tokens.text
        refresh_form = {"grant_type": "refresh_token", "refresh_token": tokens.json().get("refresh_token", "x")}
        page.goto(f"/admin/clients/{client_id}")
        inspect.check("Edit Shop")
        page.locator("button[data-action=rotate-secret]").click()
        _confirm(page, inspect, "Rotate the secret of Shop?")
        inspect.check("New secret")
        new_secret = page.locator("#client-secret").inner_text()
        assert new_secret != client_secret
        old = requests.post(f"{live.url}/token", data=refresh_form, auth=(client_id, client_secret), timeout=10)
        assert old.status_code == 401 and old.json()["error"] == "invalid_client"

        # Rotate the signing keys, typing the word.
        page.goto("/admin/keys")
        inspect.check("Signing keys")
        before = page.locator("tr[data-state=signing]").count()
        page.locator("button[data-action=rotate-keys]").click()
        _confirm(page, inspect, "Rotate the signing keys?", typed="ROTATE")
        inspect.check("Signing keys")
        expect(page.locator("tr[data-state=retired]")).to_have_count(before)

        # The audit log, filtered, and its CSV.
        page.goto("/admin/audit")
        inspect.check("Audit log")
        page.locator("#event").fill("user.disabled")
        page.locator("form.filters button[type=submit]").click()
        expect(page.locator("tr[data-event]")).to_have_count(1)
        page.locator("tr[data-event] summary").click()
        inspect.check("Audit log")
        with page.expect_download() as download:
            page.locator("#export-csv").click()
        rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
        assert rows[0][:3] == ["id", "at", "event"] and [row[2] for row in rows[1:]] == ["user.disabled"]
        page.goto("/admin/audit/verify")
        inspect.check("Audit log integrity")
        expect(page.locator("#verdict")).to_have_attribute("data-intact", "true")
        page.goto("/admin/sessions")
        inspect.check("Sessions")
    finally:
        context.close()
    problems = list(dict.fromkeys(inspect.problems))
    assert problems == [], "\n".join(problems)
    assert csp_violations(console_errors) == []
    with live.app.app_context():
        assert db.session.get(User, bob.id).disabled is False


def test_every_console_page_on_a_phone(chromium, admin_setup, axe_source, console_errors):
    """At 360 px: no page scrolls sideways (wide tables scroll inside their box) and axe finds nothing serious."""
    live, secret, bob, _rp = admin_setup
    context = chromium.new_context(base_url=live.url, locale="en-US", viewport={"width": 360, "height": 740})
    context.set_default_timeout(10_000)
    page = open_tab(context, console_errors)
    inspect = Inspector(page, live.app, "en", axe_source)
    try:
        _sign_in(page, inspect, secret)
        inspect.check("Overview")
        for path, heading in (("/admin/users", "Users"), (f"/admin/users/{bob.id}", "Bob"),
                              ("/admin/users/new", "New user"), ("/admin/users/import", "Import users"),
                              ("/admin/sessions", "Sessions"), ("/admin/clients", "Clients"),
                              ("/admin/clients/new", "New client"), ("/admin/keys", "Signing keys"),
                              ("/admin/audit", "Audit log"), ("/admin/audit/verify", "Audit log integrity")):
            page.goto(path)
            inspect.check(heading)
    finally:
        context.close()
    problems = list(dict.fromkeys(inspect.problems))
    assert problems == [], "\n".join(problems)
    assert csp_violations(console_errors) == []
