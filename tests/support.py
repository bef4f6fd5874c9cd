"""Helpers shared by the tests: form tokens, the loopback SMTP server, mail reading, sign-up and sign-in."""

from __future__ import annotations

import fcntl
import html
import re
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aiosmtpd.controller import Controller
from flask_babel import force_locale, gettext
from sqlalchemy import event

from idp.extensions import db
from idp.models import AdminRole, User, utcnow
from idp.security.passwords import hash_password

PASSWORD = "correct horse battery staple"


def csrf_token(response) -> str:
    """The CSRF token in a rendered form."""
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', response.get_data(as_text=True))
    assert match, "no CSRF token in the page"
    return match.group(1)


def path_of(url: str) -> str:
    """The path (and query) of an absolute URL, for the test client."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class _Handler:
    def __init__(self, messages: list):
        self.messages = messages

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        self.messages.append({
            "to": ", ".join(envelope.rcpt_tos),
            "subject": str(msg["Subject"]),
            "text": text.get_content() if text else "",
            "html": html.get_content() if html else "",
        })
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SMTPServer:
    """aiosmtpd on a free loopback port, collecting what it receives."""

    def __init__(self):
        self.messages: list[dict] = []
        self.port = free_port()
        self.controller = Controller(_Handler(self.messages), hostname="127.0.0.1", port=self.port)

    def start(self):
        self.controller.start()

    def stop(self):
        self.controller.stop()


class Mailbox:
    """Read mail sent during a test; drains the RQ queue first when jobs go through Redis."""

    def __init__(self, app, server: SMTPServer):
        self.app = app
        self.server = server

    def drain(self) -> None:
        queue = self.app.extensions.get("idp.queue")
        if queue is None:
            return
        from rq import SimpleWorker

        with self.app.app_context():
            SimpleWorker([queue], connection=queue.connection).work(burst=True)

    def messages(self, to: str | None = None) -> list[dict]:
        self.drain()
        deadline = time.time() + 5
        while True:  # SMTP delivery is synchronous, but the server thread may still be handing it over
            found = [m for m in self.server.messages if to is None or to in m["to"]]
            if found or time.time() > deadline:
                return found
            time.sleep(0.02)

    def last(self, to: str | None = None, subject: str | None = None) -> dict:
        found = [m for m in self.messages(to) if subject is None or subject in m["subject"]]
        assert found, f"no mail to {to} with subject {subject!r}; got {[m['subject'] for m in self.server.messages]}"
        return found[-1]


def code_in(message: dict) -> str:
    """The 6-digit code in a mail."""
    match = re.search(r"\b(\d{6})\b", message["text"])
    assert match, "no code in the mail"
    return match.group(1)


def link_in(message: dict, marker: str) -> str:
    """The first link in a mail whose URL contains ``marker``, as a path (with its #fragment) for the test client."""
    for url in re.findall(r"https?://\S+", message["text"]):
        if marker in url:
            fragment = urlsplit(url).fragment
            return path_of(url) + (f"#{fragment}" if fragment else "")
    raise AssertionError(f"no {marker} link in the mail")


def open_link(client, link: str):
    """What a browser does with a mailed link: load its page, whose script POSTs the token from the #fragment
    (static/js/link.js). Returns the answer to that POST (the form the link leads to, or an error page)."""
    path, _, token = link.partition("#")
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    return client.post(path, data={"csrf_token": csrf_token(page), "token": unquote(token)})


def submit_link(client, link: str, page, **fields):
    """Submit the form that ``open_link`` answered with (it carries the link's token in a hidden field)."""
    path, _, _ = link.partition("#")
    token = re.search(r'name="token" value="([^"]*)"', page.get_data(as_text=True)).group(1)
    return client.post(path, data={"csrf_token": csrf_token(page), "token": html.unescape(token), **fields})


def make_user_in(app, *, email="alice@example.com", password=PASSWORD, name="Alice", verified=True,
                 is_admin=False, roles=(), **fields) -> User:
    """Insert a user and return it (detached, with its id and email); ``is_admin`` grants the admin role,
    ``roles`` any roles (admin, helpdesk, auditor)."""
    with app.app_context():
        user = User(email=email, name=name, password_hash=hash_password(password),
                    email_verified_at=utcnow() if verified else None, **fields)
        user.roles = [AdminRole(role=role) for role in (*roles, *(["admin"] if is_admin else []))]
        db.session.add(user)
        db.session.commit()
        db.session.refresh(user)
        db.session.expunge(user)
        return user


def sign_in(client, email: str, password: str = PASSWORD, next_path: str | None = None):
    """Walk /login -> password step; returns the response to the password POST (not followed)."""
    page = client.get("/login" + (f"?next={next_path}" if next_path else ""))
    assert page.status_code == 200, page.status_code  # the sign-in page at once (idp.login.views.begin_here)
    response = client.post(screen_url(page), data={"csrf_token": csrf_token(page), "step": "password", "email": email,
                                                 "password": password})
    return response


def begun_sign_in(response) -> str:
    """The URL of the sign-in screen ``response`` shows at once (the authorization endpoint and the sign-in page
    answer a GET that begins a sign-in with its first screen); asserts that it shows one."""
    assert response.status_code == 200, (response.status_code, response.headers.get("Location"))
    assert step_name(response) is not None, response.get_data(as_text=True)[:500]
    return screen_url(response)


def screen_url(page) -> str:
    """Where a sign-in screen's answer is posted: /login/<tid>, whether the screen was shown there or at the URL
    that began the sign-in (the sign-in page, the authorization endpoint)."""
    return screen_action(page.get_data(as_text=True))


def screen_action(html: str) -> str:
    """``screen_url`` of a page's HTML."""
    match = re.search(r'<form method="post" action="(/login/[A-Za-z0-9_-]+)"', html)
    assert match, html[:500]
    return match.group(1)


def assert_in(text: str, response, absent: str | None = None) -> None:
    """``text`` is on the page (and ``absent`` is not)."""
    body = response.get_data(as_text=True)
    assert text in body, body[:500]
    assert absent is None or absent not in body


def remove_asking_first(client, path: str, page, *, before=None):
    """Post a removal form as the page has it: it answers with a question (returned first) and changes nothing
    until posted again with confirm=yes (the second response). ``before`` runs between the two, to check that
    nothing changed yet."""
    asked = client.post(path, data={"csrf_token": csrf_token(page)})
    assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.get_data(as_text=True)
    if before is not None:
        before()
    return asked, client.post(path, data={"confirm": "yes", "csrf_token": csrf_token(asked)})


def signed_in_email(client) -> str | None:
    """The email the account page shows, or None when it redirects to sign in."""
    response = client.get("/account")
    if response.status_code != 200:
        return None
    match = re.search(r'id="account-email">([^<]+)<', response.get_data(as_text=True))
    return match.group(1) if match else None


def make_client_in(app, **kwargs):
    """Register a client through the same code as `idp clients create`; returns (client_id, secret)."""
    from idp.oidc.registration import create_client

    defaults = {"name": "Test App", "redirect_uris": ["https://rp.example/cb"], "post_logout_redirect_uris": [],
                "public": False, "grant_types": [], "scopes": [], "auth_method": None, "first_party": False}
    defaults.update(kwargs)
    with app.app_context():
        client, secret = create_client(**defaults)
        db.session.commit()
        return client.client_id, secret


# --- OAuth / OIDC walking helpers (tests/test_oidc_protocol.py) ------------------------------------------------------

RP_CALLBACK = "https://rp.example/cb"


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE (verifier, S256 challenge) pair (RFC 7636 4.1, 4.2)."""
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(client_id: str, **params) -> str:
    """An /authorize path: code flow, scope openid, state, redirect_uri RP_CALLBACK; a None value drops a param."""
    from urllib.parse import urlencode

    query = {"response_type": "code", "client_id": client_id, "redirect_uri": RP_CALLBACK, "scope": "openid",
             "state": "state-1"}
    query.update(params)
    return "/authorize?" + urlencode({k: v for k, v in query.items() if v is not None})


def step_name(page) -> str | None:
    """The login step a hosted page shows (from its hidden "step" field), or None."""
    match = re.search(r'name="step" value="([a-z_]+)"', page.get_data(as_text=True))
    return match.group(1) if match else None


class Walk:
    """The result of walking from /authorize: the screens shown, the final redirect to the RP, the last page."""

    def __init__(self):
        self.screens: list[str] = []
        self.pages: list = []
        self.location: str | None = None
        self.last = None

    @property
    def params(self) -> dict[str, str]:
        assert self.location and self.location.startswith(RP_CALLBACK), (self.location, self.screens)
        return query_params(self.location)

    @property
    def code(self) -> str:
        assert "code" in self.params, self.params
        return self.params["code"]

    @property
    def text(self) -> str:
        return self.last.get_data(as_text=True)


def follow(client, response, *, email: str = "alice@example.com", password: str = PASSWORD, consent: str = "allow",
           answers: dict | None = None, stop_at: str | None = None, result: Walk | None = None,
           max_hops: int = 30) -> Walk:
    """Follow redirects like a browser and answer screens: password, consent ("allow"/"deny"), and
    ``answers[name](page) -> form fields`` for any other; ``stop_at`` names a screen to stop at unanswered."""
    result = result or Walk()
    answers = answers or {}
    for _ in range(max_hops):
        result.last = response
        if response.status_code in (301, 302, 303):
            location = response.headers["Location"]
            if not location.startswith("/") and not location.startswith("http://localhost"):
                result.location = location
                return result
            response = client.get(location)
            continue
        name = step_name(response) if response.status_code == 200 else None
        if name is None:
            return result
        result.screens.append(name)
        result.pages.append(response)
        if name == stop_at:
            return result
        data = {"csrf_token": csrf_token(response), "step": name}
        if name == "password":
            data.update(email=email, password=password)
        elif name == "consent":
            data[consent] = consent.capitalize()
        elif name in answers:
            data.update(answers[name](response))
        else:
            raise AssertionError(f"unexpected screen {name} after {result.screens}")
        response = client.post(screen_url(response), data=data)
    raise AssertionError(f"redirect loop: screens {result.screens}")


def walk(client, path: str, **kwargs) -> Walk:
    """Start at ``path`` (an /authorize URL) and follow it through the hosted screens."""
    return follow(client, client.get(path), **kwargs)


def walk_authorize(client, path: str, *, email: str = "alice@example.com", password: str = PASSWORD,
                   consent: str = "allow"):
    """The first response that leaves the IdP (a redirect to the RP), or the page the walk ended on."""
    return walk(client, path, email=email, password=password, consent=consent).last


def query_params(location: str) -> dict[str, str]:
    """The query parameters of a redirect URI (first value of each)."""
    from urllib.parse import parse_qs

    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorize(client, client_id: str, *, consent: str = "allow", email: str = "alice@example.com",
              password: str = PASSWORD, **params) -> str:
    """Walk sign-in and consent for an authorization request; returns the code (asserts a code came back).

    ``params`` override authorize_url's defaults (pass code_challenge=..., redirect_uri=None, ...).
    """
    response = walk_authorize(client, authorize_url(client_id, **params), email=email, password=password,
                              consent=consent)
    assert response.status_code == 302, (response.status_code, response.get_data(as_text=True)[:500])
    found = query_params(response.headers["Location"])
    assert "code" in found, response.headers["Location"]
    return found["code"]


# --- MFA helpers (tests/test_mfa.py, tests/test_sms.py) -------------------------------------------------------------

# How long a test waits for the change listener (idp.changes) to connect, or for a notification to arrive: both
# take milliseconds; the bound is for a loaded machine, and a wait that reaches it is a failure.
NOTIFY_WAIT_SECONDS = 5.0


def listening(app, timeout: float = NOTIFY_WAIT_SECONDS) -> bool:
    """On PostgreSQL, start the app's change listener (idp.changes) and wait until it is trusted: True. On SQLite,
    which has none, False (every request reads the tables)."""
    from idp import changes

    with app.test_request_context():
        listener = changes.listener()
    if listener is None:
        return False
    deadline = time.monotonic() + timeout
    while not listener.trusted():
        assert time.monotonic() < deadline, f"the change listener was not listening after {timeout} s"
        time.sleep(0.01)
    return True


def settled(app, timeout: float = NOTIFY_WAIT_SECONDS) -> None:
    """Wait until the app's change listener has taken every notification committed so far, its own commits' too
    (each voids what the worker kept once more: the next request looks again). PostgreSQL delivers notifications in
    commit order, so a marker sent now arrives after all of them. Nothing to wait for on SQLite."""
    import psycopg2

    from idp import changes

    with app.test_request_context():
        listener = changes.listener()
    if listener is None:
        return
    marker = f"settled-{uuid.uuid4().hex}"
    connection = psycopg2.connect(**listener.connect_args)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (changes.CHANNEL, marker))
    finally:
        connection.close()
    deadline = time.monotonic() + timeout
    while marker not in listener.marks:
        assert time.monotonic() < deadline, f"no notification reached the change listener within {timeout} s"
        time.sleep(0.005)


def drain_jobs(app) -> None:
    """Run every queued RQ job now (a no-op when jobs run inline, without Redis)."""
    queue = app.extensions.get("idp.queue")
    if queue is None:
        return
    from rq import SimpleWorker

    with app.app_context():
        SimpleWorker([queue], connection=queue.connection).work(burst=True)


def outbox_sms(app) -> list[dict]:
    """Text messages the outbox SMS backend wrote (oldest first), after running queued jobs."""
    from idp.jobs.mail import read_outbox

    drain_jobs(app)
    return [m for m in reversed(read_outbox(app.config["IDP_OUTBOX_DIR"])) if m.get("channel") == "sms"]


def last_sms_code(app, to: str | None = None) -> str:
    """The 6-digit code in the newest text message (to ``to`` when given)."""
    texts = [m for m in outbox_sms(app) if to is None or m["to"] == to]
    assert texts, "no text message in the outbox"
    match = re.search(r"\b(\d{6})\b", texts[-1]["text"])
    assert match, texts[-1]["text"]
    return match.group(1)


def enrol_totp_in(app, email: str, now=None, *, confirm: bool = True) -> tuple[str, int]:
    """Give a user an authenticator app (confirmed with the previous step's code); returns (secret, factor id)."""
    from datetime import timedelta

    from idp.login.factors.totp import confirm_totp, start_totp, totp_secret
    from idp.security.otp import totp_code_at

    now = now or utcnow()
    with app.app_context():
        key = app.config["IDP_SECRET_KEY"]
        user = db.session.execute(db.select(User).where(User.email == email)).scalar_one()
        factor = start_totp(user, now, key)
        secret = totp_secret(factor, key)
        if confirm:  # the previous step's code, so that the current one is still unused
            assert confirm_totp(factor, totp_code_at(secret, now - timedelta(seconds=30)), now, key)
        db.session.commit()
        return secret, factor.id


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # localhost must reach the IPv4 loopback the live servers listen on, whatever /etc/hosts says.
                 "--host-resolver-rules=MAP localhost 127.0.0.1"]


def require_browser() -> None:
    """Skip a browser test module when Chromium or Playwright is missing; fail under IDP_TEST_REQUIRE_BROWSER=1."""
    import importlib.util
    import os

    import pytest

    reason = None
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "the playwright package is missing (pip install playwright)"
    if reason is not None:
        if os.environ.get("IDP_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"IDP_TEST_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


NODE_PACKAGES = Path(__file__).parent / "rp"


def node_package(name: str) -> Path:
    """``tests/rp/node_modules/<name>``, installed first from tests/rp/package-lock.json (``npm ci``) when missing.

    The pytest-xdist workers take turns (a lock file), so two of them never install into the same folder at once.
    """
    path = NODE_PACKAGES / "node_modules" / name
    with open(Path(tempfile.gettempdir()) / "idp-tests-npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_dir():
            install = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_PACKAGES,
                                     capture_output=True, text=True, timeout=300)
            assert install.returncode == 0, install.stdout + install.stderr
    return path


def ok(result) -> str:
    """The standard output of a CLI command that must have succeeded."""
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def refused(result) -> str:
    """The one error line of a CLI command that must have failed (and printed nothing else)."""
    assert result.exit_code != 0, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ")
    return lines[0]


def audit_events(app, name: str) -> list:
    """The audit rows of one event, oldest first (detached, so they can be read after the app context)."""
    from idp.models import AuditEvent

    with app.app_context():
        rows = list(db.session.execute(db.select(AuditEvent).where(AuditEvent.event == name)
                                       .order_by(AuditEvent.id)).scalars())
        for row in rows:
            db.session.expunge(row)
        return rows


def open_tab(context, console_errors: list[str]):
    """A new tab in a browser context whose console errors (CSP violations among them) and uncaught exceptions are
    collected in ``console_errors``."""
    tab = context.new_page()
    tab.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: console_errors.append(str(error)))
    return tab


def add_virtual_authenticator(context, page):
    """A virtual platform authenticator (CTAP2, resident keys, user verification) attached to the tab, through the
    DevTools protocol; returns the CDP session, with the authenticator's id as ``authenticator_id``."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    made = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})
    cdp.authenticator_id = made["authenticatorId"]
    return cdp


def authenticator_presence(authenticator, on: bool) -> None:
    """Whether the virtual authenticator answers by itself (a user touching it / picking the passkey).

    With it on, even the conditional (autofill) request the sign-in page makes on load is answered at once.
    """
    authenticator.send("WebAuthn.setAutomaticPresenceSimulation",
                       {"authenticatorId": authenticator.authenticator_id, "enabled": on})


def sign_in_with_the_passkey_button(page, authenticator) -> None:
    """On the sign-in page, sign in with a passkey by its button (the autofill request waits unanswered)."""
    from playwright.sync_api import expect

    authenticator_presence(authenticator, False)
    page.goto("/login")
    expect(heading(page, "Sign in")).to_be_visible()
    authenticator_presence(authenticator, True)
    page.locator("#passkey-signin").click()


def csp_violations(errors: list[str]) -> list[str]:
    """The CSP violations among a page's console errors; the only other errors allowed are failed loads (favicon,
    400s)."""
    unexpected = [e for e in errors if not e.startswith("Failed to load resource")]
    assert unexpected == [] or all("Content Security Policy" in e for e in unexpected), unexpected
    return [e for e in errors if "Content Security Policy" in e]


def heading(page, name: str):
    """A page's level-1 heading with this name (Playwright locator)."""
    return page.get_by_role("heading", name=name, level=1)


# What axe-core reports that fails a browser walk (it also has "moderate" and "minor").
BLOCKING = ("serious", "critical")


class Inspector:
    """Checks each page the walk reaches and keeps every problem, so that one failure names all of them."""

    def __init__(self, page, app, language: str, axe: str):
        self.page, self.app, self.language, self.axe = page, app, language, axe
        self.problems: list[str] = []
        self.seen: list[str] = []

    def expected_heading(self, english: str) -> str:
        """The heading in the walk's language: the catalogue's translation of the English one."""
        if self.language == "en":
            return english
        with self.app.test_request_context(), force_locale(self.language):
            translated = gettext(english)
        if translated == english:
            self.problems.append(f"{english!r}: no {self.language} translation in the catalogue")
        return translated

    def check(self, english_heading: str) -> None:
        page = self.page
        page.wait_for_load_state()
        expected = self.expected_heading(english_heading)
        where = f"{page.url} ({english_heading})"
        self.seen.append(where)
        shown = page.locator("h1").first.inner_text().strip()
        if shown != expected:
            self.problems.append(f"{where}: heading {shown!r}, expected {expected!r}")
        lang = page.locator("html").get_attribute("lang")
        if lang != self.language:
            self.problems.append(f"{where}: <html lang={lang!r}>, expected {self.language!r}")
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        if width[0] > width[1]:
            self.problems.append(f"{where}: scrolls sideways, {width[0]} px wide in a {width[1]} px window "
                                 f"({width[0] - width[1]} px too wide; overflowing: {', '.join(self.overflowing())})")
        for violation in self.axe_violations():
            self.problems.append(f"{where}: axe {violation}")

    def overflowing(self) -> list[str]:
        """The outermost elements that reach past the window's right edge (what to fix)."""
        return self.page.evaluate("""() => {
            const over = e => e && e.getBoundingClientRect().right > window.innerWidth + 0.5;
            return [...document.querySelectorAll("body *")].filter(e => over(e) && !over(e.parentElement))
                .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
                                      + [...e.classList].map(c => "." + c).join(""));
        }""")

    def axe_violations(self) -> list[str]:
        if not self.page.evaluate("() => typeof window.axe === 'object'"):
            self.page.evaluate(self.axe)
        results = self.page.evaluate("""async () => {
            const found = await axe.run(document, {resultTypes: ["violations"]});
            return found.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                               nodes: v.nodes.map(n => n.target.join(" "))}));
        }""")
        return [f"{v['impact']} {v['id']} ({v['help']}) at {', '.join(v['nodes'])}"
                for v in results if v["impact"] in BLOCKING]


@contextmanager
def recorded(app, describe: Callable = lambda conn, statement: " ".join(statement.split())) -> Iterator[list]:
    """``describe(connection, statement)`` of each statement the app sends to the database inside the block, in
    order (by default the statement itself, on one line)."""
    seen: list = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(describe(conn, statement))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
