"""The device flow's hosted pages in headless Chromium, at a phone width, in English and in French: the device asks
for codes, the user opens verification_uri_complete, confirms the code, signs in, allows; the device's poll gets
tokens. Every page is checked as tests/test_browser_walk.py checks its pages (heading in the walk's language,
``<html lang>``, no sideways scrolling, nothing serious or critical for axe-core).

Same requirements and skip/fail rule as tests/test_browser.py.
"""

from __future__ import annotations

import pytest
import requests

from tests.support import PASSWORD, Inspector, csp_violations, make_client_in, make_user_in, open_tab, require_browser

require_browser()

from playwright.sync_api import expect  # noqa: E402  (only once we know it is there)

pytestmark = pytest.mark.browser

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
LOCALES = {"en": "en-US", "fr": "fr-FR"}


class _Inspector(Inspector):
    """An Inspector whose expected heading may have placeholders (the approval page names the client)."""

    params: dict[str, str] = {}

    def expected_heading(self, english: str) -> str:
        return super().expected_heading(english) % self.params if self.params else super().expected_heading(english)


@pytest.mark.parametrize("language", ["en", "fr"])
def test_a_device_is_connected_through_the_hosted_pages(chromium, live_server, axe_source, console_errors, language):
    live = live_server
    email = f"device-{language}@example.com"
    make_user_in(live.app, email=email)
    client_id, secret = make_client_in(live.app, name="Living Room TV", redirect_uris=[], grant_types=[DEVICE])
    asked = requests.post(f"{live.url}/device_authorization", data={"scope": "openid profile"},
                          auth=(client_id, secret), timeout=10)
    assert asked.status_code == 200, asked.text
    codes = asked.json()

    context = chromium.new_context(base_url=live.url, locale=LOCALES[language], viewport={"width": 360,
                                                                                          "height": 740})
    context.set_default_timeout(10_000)
    page = open_tab(context, console_errors)
    inspect = _Inspector(page, live.app, language, axe_source)
    try:
        page.goto(codes["verification_uri_complete"])
        inspect.check("Connect a device")
        expect(page.locator("input[name=user_code]")).to_have_value(codes["user_code"])
        page.locator("main form button[type=submit]").click()

        expect(page.locator("input[name=password]")).to_be_visible()
        inspect.check("Sign in")
        page.locator("input[name=email]").fill(email)
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("main form:not(.inline):not(.passkey) button[type=submit]").first.click()

        expect(page.locator("[name=allow]")).to_be_visible()
        inspect.params = {"client": "Living Room TV"}
        inspect.check("Allow %(client)s?")
        inspect.params = {}
        expect(page.locator(".user-code")).to_have_text(codes["user_code"])
        page.locator("[name=allow]").click()
        expect(page.locator("[role=status]")).to_be_visible()
        inspect.check("Your device is connected")
    finally:
        context.close()
    tokens = requests.post(f"{live.url}/token", data={"grant_type": DEVICE, "device_code": codes["device_code"]},
                           auth=(client_id, secret), timeout=10)
    assert tokens.status_code == 200 and tokens.json()["id_token"], tokens.text
    problems = list(dict.fromkeys(inspect.problems))
    assert problems == [], "\n".join([f"{language}:", *problems])
    assert csp_violations(console_errors) == []
