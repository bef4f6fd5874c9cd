"""Browser tests: the hosted pages in headless Chromium (Playwright), against the app on a live loopback server.

They need Debian's ``chromium`` at /usr/bin/chromium and the ``playwright`` package (never ``playwright install``).
Without them the module is skipped, unless IDP_TEST_REQUIRE_BROWSER=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import re

import pytest

from tests.support import PASSWORD, Mailbox, code_in, csp_violations, heading, make_user_in, open_tab, require_browser

SCREENSHOT = "/tmp/idp-signin.png"
NEW_PASSWORD = "a whole new passphrase for alice"


require_browser()

from playwright.sync_api import expect  # noqa: E402  (only once we know it is there)

pytestmark = pytest.mark.browser


@pytest.fixture
def live_mailbox(live_server, smtp_server):
    """Mail the live app sent during this test (its RQ queue is drained first when Redis is used)."""
    smtp_server.messages.clear()
    return Mailbox(live_server.app, smtp_server)


@pytest.fixture
def page(chromium, live_server, console_errors):
    """A fresh browser profile (no cookies) with one tab; closed before the live server stops."""
    context = chromium.new_context(base_url=live_server.url)
    context.set_default_timeout(10_000)
    yield open_tab(context, console_errors)
    context.close()


def _mailed_link(message: dict, marker: str, origin: str) -> str:
    """The absolute link containing ``marker`` in a mail; it must point at the live server."""
    links = [url for url in re.findall(r"https?://\S+", message["text"]) if marker in url]
    assert links, f"no {marker} link in the mail"
    assert links[0].startswith(origin + "/"), links[0]
    return links[0]


def _sign_in(page, email: str, password: str) -> None:
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_sign_up_verify_by_code_then_sign_out(page, live_server, live_mailbox, console_errors):
    page.goto("/signup")
    expect(heading(page, "Create an account")).to_be_visible()
    page.get_by_label("Email", exact=True).fill("new@example.com")
    page.get_by_label("Name", exact=True).fill("New Person")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()

    expect(heading(page, "Verify your email")).to_be_visible()
    expect(page.get_by_text("new@example.com")).to_be_visible()
    code = code_in(live_mailbox.last("new@example.com", "Verify"))
    page.get_by_label("Code", exact=True).fill(code)
    page.get_by_role("button", name="Verify", exact=True).click()

    expect(page).to_have_url(f"{live_server.url}/account")
    expect(page.locator("#account-email")).to_have_text("new@example.com")
    expect(page.get_by_text("verified", exact=True)).to_be_visible()

    # The Sign out button in the header carries the form token: it signs out at once and says so.
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(heading(page, "You are signed out")).to_be_visible()
    page.goto("/account")
    expect(heading(page, "Sign in")).to_be_visible()
    assert csp_violations(console_errors) == []


def test_forgot_password_reset_by_mailed_link_then_sign_in(page, live_server, live_mailbox, console_errors):
    make_user_in(live_server.app, email="alice@example.com")
    page.goto("/login")
    expect(heading(page, "Sign in")).to_be_visible()
    # The stylesheet is served and applied (a CSP or MIME-type mistake would leave the page unstyled).
    assert page.locator("main").evaluate("el => getComputedStyle(el).maxWidth") == "416px"
    page.screenshot(path=SCREENSHOT, full_page=True)

    page.get_by_role("link", name="Forgot your password?").click()
    expect(heading(page, "Reset your password")).to_be_visible()
    page.get_by_label("Email", exact=True).fill("Alice@Example.com")
    page.get_by_role("button", name="Send reset link").click()
    expect(heading(page, "Check your email")).to_be_visible()

    link = _mailed_link(live_mailbox.last("alice@example.com", "Reset"), "/reset#", live_server.url)
    page.goto(link)  # static/js/link.js POSTs the token from the fragment: it is in no URL the server sees
    expect(page.get_by_text("For alice@example.com.")).to_be_visible()
    assert page.url == f"{live_server.url}/reset"  # and it is gone from the address bar
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Repeat new password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set new password").click()

    expect(heading(page, "Sign in")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Your password was changed")
    _sign_in(page, "alice@example.com", PASSWORD)  # the old password no longer works
    expect(page.get_by_role("alert")).to_have_text("Incorrect email or password.")
    _sign_in(page, "alice@example.com", NEW_PASSWORD)
    expect(page).to_have_url(f"{live_server.url}/account")
    expect(page.locator("#account-email")).to_have_text("alice@example.com")

    page.goto(link)  # the link worked once
    expect(heading(page, "This link is not valid")).to_be_visible()
    assert csp_violations(console_errors) == []


def test_unverified_user_verifies_by_mailed_link_and_resumes(page, live_server, live_mailbox, console_errors):
    make_user_in(live_server.app, email="bob@example.com", name="Bob", verified=False)
    page.goto("/login")
    _sign_in(page, "bob@example.com", PASSWORD)
    expect(heading(page, "Verify your email")).to_be_visible()
    step_url = page.url

    link = _mailed_link(live_mailbox.last("bob@example.com", "Verify"), "/verify-email#", live_server.url)
    page.goto(link)  # the same browser, as if the mail was opened beside the sign-in tab
    expect(heading(page, "Verify your email")).to_be_visible()
    expect(page.get_by_text("Confirm that bob@example.com is your address.")).to_be_visible()
    page.get_by_role("button", name="Verify email").click()

    expect(page).to_have_url(f"{live_server.url}/account")
    expect(page.locator("#account-email")).to_have_text("bob@example.com")
    page.goto(step_url)  # the finished sign-in cannot be replayed
    expect(heading(page, "This sign-in has expired")).to_be_visible()

    # Reaching /logout by a link asks first; only the button signs out.
    page.goto("/logout")
    expect(page.get_by_text("Sign out bob@example.com from this browser?")).to_be_visible()
    page.goto("/account")
    expect(page.locator("#account-email")).to_have_text("bob@example.com")
    page.goto("/logout")
    page.locator("main").get_by_role("button", name="Sign out", exact=True).click()
    expect(heading(page, "You are signed out")).to_be_visible()
    assert csp_violations(console_errors) == []


def test_console_collector_sees_csp_violations(page, console_errors):
    """Guards the assertions above: an inline script on a hosted page is refused and reported to the console."""
    page.goto("/signup")
    with page.expect_console_message(lambda message: "Content Security Policy" in message.text):
        page.evaluate("""() => {
            const script = document.createElement("script");
            script.textContent = "document.title = 'injected'";
            document.head.append(script);
        }""")
    expect(page).not_to_have_title("injected")
    assert len(csp_violations(console_errors)) == 1, console_errors
