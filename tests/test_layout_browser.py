"""Layout in headless Chromium: every hosted page fits a 360 px phone, the dark theme follows the system, and the
operator's brand colour and logo reach the page (Playwright, against the app on a live loopback server)."""

from __future__ import annotations

import pytest

from idp.extensions import db
from idp.models import Consent, User
from tests.conftest import LiveServer
from tests.support import (
    PASSWORD,
    authorize_url,
    code_in,
    csp_violations,
    heading,
    make_client_in,
    make_user_in,
    open_tab,
    require_browser,
)

require_browser()

from playwright.sync_api import expect  # noqa: E402  (only once we know it is there)

pytestmark = pytest.mark.browser

PHONE = {"width": 360, "height": 740}
# Strings with no break opportunity, as long as real ones get: an address, a browser's user agent, a client id.
LONG_EMAIL = "firstname.middlename.lastname.department@subsidiary-of-a-company-with-a-long-name.example.com"
LONG_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) " + "Chromium/131.0.0.0" * 8


@pytest.fixture
def phone(chromium, live_server, console_errors):
    """A 360 px wide tab with a long user agent (the sessions table shows it)."""
    context = chromium.new_context(base_url=live_server.url, viewport=PHONE, user_agent=LONG_AGENT)
    context.set_default_timeout(10_000)
    yield open_tab(context, console_errors)
    context.close()


def _fits(page) -> None:
    """The page does not scroll sideways: nothing is wider than the window."""
    page.wait_for_load_state()
    scroll, window = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= window, f"{page.url} is {scroll} px wide in a {window} px window"


def _sign_in(page, email: str) -> None:
    page.goto("/login")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_every_hosted_page_fits_a_phone(phone, live_server, smtp_server, console_errors):
    from tests.support import Mailbox

    app = live_server.app
    mailbox = Mailbox(app, smtp_server)
    smtp_server.messages.clear()
    phone.goto("/signup")
    expect(heading(phone, "Create an account")).to_be_visible()
    _fits(phone)
    phone.get_by_label("Email", exact=True).fill(LONG_EMAIL)
    phone.get_by_label("Name", exact=True).fill("Firstname Middlename Lastname")
    phone.get_by_label("Password", exact=True).fill(PASSWORD)
    phone.get_by_role("button", name="Create account").click()

    expect(heading(phone, "Verify your email")).to_be_visible()  # a code screen, the long address on it
    _fits(phone)
    phone.get_by_label("Code", exact=True).fill(code_in(mailbox.last(LONG_EMAIL)))
    phone.get_by_role("button", name="Verify", exact=True).click()

    expect(phone.locator("#account-email")).to_have_text(LONG_EMAIL)
    expect(phone.get_by_text("Chromium/131.0.0.0Chromium")).to_be_visible()  # the sessions table, as a list
    _fits(phone)
    # Buttons are set in the page's font, not the browser's smaller default for controls.
    fonts = phone.evaluate("""() => [getComputedStyle(document.body).font,
                                     getComputedStyle(document.querySelector("#sign-out-everywhere")).font]""")
    assert fonts[0] == fonts[1]

    client_id, _ = make_client_in(app, name="A photo printing service with a rather long name")
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == LONG_EMAIL)).scalar_one()
        db.session.add(Consent(user_id=user.id, client_id=client_id, scopes=["openid", "email", "profile"]))
        db.session.commit()
    for path, title in [("/account/security", "Two-step sign-in, passkeys and devices"),
                        ("/account/apps", "Connected applications"), ("/account/password", None),
                        ("/account/phone", None)]:
        phone.goto(path)
        if title:
            expect(heading(phone, title)).to_be_visible()
        _fits(phone)
    expect(phone.locator("body")).not_to_contain_text("Page not found")

    other, _ = make_client_in(app, name="Another application")
    phone.goto(authorize_url(other, scope="openid email profile"))
    expect(phone.get_by_role("button", name="Allow")).to_be_visible()  # the consent page
    _fits(phone)

    phone.context.clear_cookies()
    phone.goto("/login")
    expect(heading(phone, "Sign in")).to_be_visible()
    _fits(phone)
    phone.goto("/forgot")
    _fits(phone)
    assert csp_violations(console_errors) == []


def test_the_dark_theme_follows_the_system(chromium, live_server):
    colours = {}
    for scheme in ("light", "dark"):
        context = chromium.new_context(base_url=live_server.url, color_scheme=scheme)
        try:
            page = context.new_page()
            page.goto("/signup")
            colours[scheme] = page.evaluate("""() => [document.body, document.querySelector("main"),
                document.querySelector("input[name=email]")].map(e => [getComputedStyle(e).backgroundColor,
                                                                       getComputedStyle(e).color])""")
        finally:
            context.close()
    (body, _), (card, text), (field, typed) = colours["dark"]
    assert body == "rgb(13, 17, 23)" and card == "rgb(22, 27, 34)" and text == "rgb(230, 237, 243)"
    assert field == "rgb(13, 17, 23)" and typed == "rgb(230, 237, 243)"  # what one types is readable too
    assert colours["light"][0][0] == "rgb(246, 248, 250)" and colours["light"][1][1] == "rgb(27, 31, 36)"


def test_the_brand_colour_and_logo_reach_the_page(chromium, make_app, tmp_path, console_errors):
    theme = tmp_path / "theme"
    (theme / "static" / "img").mkdir(parents=True)
    (theme / "static" / "img" / "acme.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="32"><rect width="120" height="32" '
        'fill="#ffd700"/></svg>')
    server = LiveServer(make_app, IDP_BRAND_NAME="Acme ID", IDP_BRAND_COLOR="#ffd700",
                        IDP_BRAND_LOGO_URL="img/acme.svg", IDP_THEME_DIR=str(theme))
    server.start()
    context = chromium.new_context(base_url=server.url, viewport=PHONE)
    try:
        page = open_tab(context, console_errors)
        make_user_in(server.app)
        page.goto("/login")
        expect(page).to_have_title("Sign in · Acme ID")
        logo = page.get_by_role("img", name="Acme ID")
        expect(logo).to_be_visible()
        assert logo.evaluate("img => img.naturalWidth") == 120  # it loaded (from the theme folder)
        button = page.get_by_role("button", name="Sign in", exact=True)
        # Gold is too light for white text: the button's text is dark (WCAG contrast, idp.branding.text_on).
        assert button.evaluate("b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).color]") == [
            "rgb(255, 215, 0)", "rgb(27, 31, 36)"]
        _fits(page)
    finally:
        context.close()
        server.stop()
    assert console_errors == []  # no CSP violation, and no failed load (the favicon included)
