"""The relying party built into development (/demo): a newcomer's first sign-in works, and works again from a clean
browser (each visit is a fresh request: state, nonce and PKCE), and it shows the ID token, userinfo and a refresh."""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer
from tests.support import PASSWORD, make_user_in, require_browser

require_browser()

from playwright.sync_api import expect  # noqa: E402  (only once we know it is there)

pytestmark = pytest.mark.browser


@pytest.fixture
def development(make_app, tmp_path):
    """The app in development on a live loopback server named localhost, with its instance folder in tmp."""
    server = LiveServer(make_app, host="localhost", IDP_ENV="development")
    server.app.instance_path = str(tmp_path)  # the demo client's secret is written there
    server.start()
    yield server
    server.stop()


def sign_in_with_the_demo(chromium, server) -> None:
    context = chromium.new_context(base_url=server.url)  # a clean browser: no cookies
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        page.goto("/demo")
        page.get_by_role("link", name="Sign in with idp").click()
        page.get_by_label("Email", exact=True).fill("alice@example.com")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_load_state()
        if page.get_by_role("button", name="Allow").count():  # asked once; the consent is remembered after
            page.get_by_role("button", name="Allow").click()
        expect(page.get_by_role("heading", name="Signed in")).to_be_visible()
        expect(page.locator("#refresh-result")).to_contain_text("rotated")
        expect(page.locator("dl.claims").first).to_contain_text(server.url)  # iss
        assert page.url.startswith(server.url + "/demo/callback?")
    finally:
        context.close()


def test_the_demo_page_signs_in_twice_in_a_row_from_a_clean_browser(chromium, development):
    make_user_in(development.app)
    sign_in_with_the_demo(chromium, development)
    sign_in_with_the_demo(chromium, development)  # a fixed nonce would be a replay here


def test_an_answer_that_was_not_started_here_is_refused(chromium, development):
    context = chromium.new_context(base_url=development.url)
    page = context.new_page()
    try:
        response = page.goto("/demo/callback?code=forged&state=forged")
        assert response.status == 400
        expect(page.get_by_role("alert")).to_contain_text("state mismatch")
    finally:
        context.close()
