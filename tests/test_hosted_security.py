"""Hosted pages as an attacker sees them: headers, CSRF, cookies, enumeration, passwords, brute force, redirects
(SECURITY.md 16, 17, 19, 20, 21)."""

from __future__ import annotations

import hashlib
import html
import re
from datetime import timedelta
from urllib.parse import quote, urljoin, urlsplit

import pytest
from sqlalchemy import inspect, select

from idp import http
from idp.extensions import db
from idp.login.steps.password import GENERIC_FAILURE
from idp.models import LoginSession, LoginTransaction, OneTimeToken, User, utcnow
from idp.security import passwords
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.support import (
    PASSWORD,
    Mailbox,
    audit_events,
    code_in,
    csrf_token,
    follow,
    link_in,
    make_user_in,
    open_link,
    screen_url,
    sign_in,
    signed_in_email,
    submit_link,
)

NEEDS_POSTGRES = pytest.mark.skipif(
    not (TEST_DATABASE_URL and TEST_REDIS_URL),
    reason="a production app needs PostgreSQL and Redis: set IDP_TEST_DATABASE_URL and IDP_TEST_REDIS_URL")

NEW_PASSWORD = "a whole new passphrase for alice"


# --- helpers -------------------------------------------------------------------------------------------------------

def _complete_sign_in(client, email, password=PASSWORD, next_path=None):
    """Sign in all the way; returns the response that completes the transaction (carrying the session cookie)."""
    step = sign_in(client, email, password, next_path=next_path)
    assert step.status_code == 302, step.get_data(as_text=True)
    return step  # the password is the last step here: its answer completes the transaction


def _error(response) -> str | None:
    match = re.search(r'<p class="error" role="alert">([^<]*)</p>', response.get_data(as_text=True))
    return match.group(1) if match else None


def _sign_up(client, email="new@example.com", password=PASSWORD, name="New Person"):
    page = client.get("/signup")
    return client.post("/signup", data={"csrf_token": csrf_token(page), "email": email, "name": name,
                                        "password": password})


def _skeleton(response, *variable: str) -> str:
    """The page with what legitimately differs between two requests (tokens, ids, the typed address) blanked."""
    page = response.get_data(as_text=True)
    page = re.sub(r'name="csrf_token"[^>]*value="[^"]+"', 'name="csrf_token" value="*"', page)
    page = re.sub(r"/login/[A-Za-z0-9_-]{20,}", "/login/*", page)
    page = re.sub(r'"challenge": ?"[A-Za-z0-9_-]+"', '"challenge": "*"', page)  # a fresh WebAuthn challenge
    for value in variable:
        page = page.replace(value, "*")
    return page


def _session_cookie_header(response, name="idp_session") -> str:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            return header
    raise AssertionError(f"no {name} cookie set; got {response.headers.getlist('Set-Cookie')}")


def _users(app) -> list[str]:
    with app.app_context():
        return list(db.session.execute(select(User.email).order_by(User.id)).scalars())


def _all_values(app) -> str:
    """Every value in every table, as one string."""
    out = []
    with app.app_context():
        existing = set(inspect(db.engine).get_table_names())
        for table in db.metadata.sorted_tables:
            if table.name not in existing:  # a model whose migration is not written yet holds nothing
                continue
            for row in db.session.execute(table.select()):
                out.extend(str(value) for value in row)
    return "\n".join(out)


def _mailbox(app, smtp_server) -> Mailbox:
    smtp_server.messages.clear()
    return Mailbox(app, smtp_server)


# --- headers (SECURITY.md 16) ---------------------------------------------------------------------------------------

def _hosted_pages(client, make_user):
    make_user()
    start = client.get("/login")
    yield "/login", start  # the first screen, shown at once
    yield "/login step", client.get(screen_url(start))  # the same screen at its own URL
    yield "/signup", client.get("/signup")
    yield "/forgot", client.get("/forgot")
    yield "error page", client.post("/reset", data={"csrf_token": csrf_token(client.get("/reset")),
                                                     "token": "not-a-valid-token"})
    yield "expired sign-in", client.get("/login/no-such-transaction")
    yield "404", client.get("/no-such-page")
    _complete_sign_in(client, "alice@example.com")
    yield "/account", client.get("/account")
    yield "/account/password", client.get("/account/password")
    yield "/logout", client.get("/logout")


def test_every_hosted_page_sends_the_security_headers(client, make_user):
    seen = set()
    for name, response in _hosted_pages(client, make_user):
        seen.add(response.status_code)
        headers = response.headers
        assert headers.get("X-Frame-Options") == "DENY", name
        csp = headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp, name
        script_src = re.search(r"(?:^|;)\s*script-src([^;]*)", csp)
        assert script_src and "'unsafe-inline'" not in script_src.group(1), name
        assert "'unsafe-inline'" not in re.search(r"default-src([^;]*)", csp).group(1), name
        assert headers.get("Referrer-Policy") == "no-referrer", name
        assert headers.get("X-Content-Type-Options") == "nosniff", name
        assert "Strict-Transport-Security" not in headers, name  # not over plain http in testing
    assert {200, 400, 404} <= seen  # the walk really covered normal, error and not-found pages


def test_no_hosted_page_has_inline_script_or_style(client, make_user):
    for name, response in _hosted_pages(client, make_user):
        assert response.mimetype == "text/html", name
        page = response.get_data(as_text=True)
        assert "<html" in page, name
        # Only external scripts; a JSON data block (type="application/json") is never executed.
        assert not re.search(r'<script(?![^>]*\bsrc=)(?![^>]*type="application/json")[^>]*>', page, re.I), \
            f"inline script on {name}"
        assert not re.search(r"<[^>]+\sstyle\s*=", page, re.I), f"style attribute on {name}"
        assert not re.search(r"<style[\s>]", page, re.I), f"style element on {name}"
        assert not re.search(r"\son[a-z]+\s*=", page, re.I), f"inline event handler on {name}"


def test_hsts_is_sent_in_production_configuration(app):
    """The header function itself, with the app switched to production (runs without PostgreSQL too)."""
    app.config["IDP_ENV"] = "production"
    with app.test_request_context("/signup"):
        response = http.security_headers(app.response_class("<html></html>", mimetype="text/html"))
    hsts = response.headers.get("Strict-Transport-Security", "")
    assert re.search(r"max-age=(\d+)", hsts) and int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 31536000
    assert response.headers["X-Frame-Options"] == "DENY"


def _production_app(make_app):
    return make_app(IDP_ENV="production", IDP_ISSUER="https://idp.example", IDP_REDIS_URL=TEST_REDIS_URL)


@NEEDS_POSTGRES
def test_production_app_sends_hsts(make_app):
    client = _production_app(make_app).test_client()
    for path in ("/signup", "/forgot", "/no-such-page"):
        page = client.get(path)
        assert "max-age=" in page.headers.get("Strict-Transport-Security", ""), path
        assert page.headers["X-Frame-Options"] == "DENY", path


@NEEDS_POSTGRES
def test_production_sign_in_issues_a_host_prefixed_secure_cookie(make_app):
    app = _production_app(make_app)
    make_user_in(app)
    client = app.test_client()  # https (PREFERRED_URL_SCHEME) and, like a browser told no-referrer, no Referer
    done = _complete_sign_in(client, "alice@example.com")
    header = _session_cookie_header(done, "__Host-idp_session")
    attributes = [part.strip().lower() for part in header.split(";")[1:]]
    assert "secure" in attributes and "httponly" in attributes and "samesite=lax" in attributes
    assert "path=/" in attributes and not any(a.startswith("domain=") for a in attributes)
    assert not [h for h in done.headers.getlist("Set-Cookie") if h.startswith("idp_session=")]


def test_session_cookie_is_host_prefixed_and_secure_in_production_configuration(app):
    """set_session_cookie under a production configuration (runs without PostgreSQL too)."""
    app.config["IDP_ENV"] = "production"
    with app.test_request_context("/"):
        response = app.response_class("")
        http.set_session_cookie(response, "t" * 43, max_age=600)
    header = _session_cookie_header(response, "__Host-idp_session")
    attributes = [part.strip().lower() for part in header.split(";")[1:]]
    assert {"secure", "httponly", "samesite=lax", "path=/"} <= set(attributes)
    assert not any(a.startswith("domain=") for a in attributes)


# --- CSRF (SECURITY.md 17) ------------------------------------------------------------------------------------------

def test_signup_and_forgot_without_csrf_token_are_refused(app, client, mailbox, make_user):
    make_user()
    client.get("/signup")  # the browser has a flow cookie, only the token is missing
    refused = client.post("/signup", data={"email": "new@example.com", "name": "New", "password": PASSWORD})
    assert refused.status_code == 400
    assert _users(app) == ["alice@example.com"]
    client.get("/forgot")
    refused = client.post("/forgot", data={"email": "alice@example.com"})
    assert refused.status_code == 400
    assert "If an account exists" not in refused.get_data(as_text=True)
    with app.app_context():
        assert db.session.execute(select(OneTimeToken)).first() is None  # no reset link was issued
    # With a wrong token, the same.
    wrong = client.post("/signup", data={"csrf_token": "forged", "email": "new@example.com", "name": "New",
                                         "password": PASSWORD})
    assert wrong.status_code == 400 and _users(app) == ["alice@example.com"]


def test_login_step_and_resend_without_csrf_token_are_refused(app, client, make_user):
    make_user()
    make_user(email="bob@example.com", verified=False)
    step_url = screen_url(client.get("/login"))
    refused = client.post(step_url, data={"step": "password", "email": "alice@example.com", "password": PASSWORD})
    assert refused.status_code == 400
    assert signed_in_email(client) is None
    assert not audit_events(app, "login.success")
    # The resend button of the verification step.
    other = app.test_client()
    step = sign_in(other, "bob@example.com")
    verify_url = step.headers["Location"]
    other.get(verify_url)
    with app.app_context():
        before = db.session.execute(select(OneTimeToken.id)).scalars().all()
    refused = other.post(verify_url + "/resend", data={"step": "email_verification"})
    assert refused.status_code == 400
    with app.app_context():
        assert db.session.execute(select(OneTimeToken.id)).scalars().all() == before


def test_account_forms_without_csrf_token_are_refused(app, client, make_user):
    make_user()
    _complete_sign_in(client, "alice@example.com")
    client.get("/account")
    assert client.post("/logout", data={}).status_code == 400
    assert signed_in_email(client) == "alice@example.com"  # still signed in
    assert client.post("/account/profile", data={"name": "Mallory"}).status_code == 400
    with app.app_context():
        user = db.session.execute(select(User)).scalar_one()
        assert user.name == "Alice"
        old_hash = user.password_hash
    refused = client.post("/account/password", data={"current": PASSWORD, "password": NEW_PASSWORD,
                                                     "confirm": NEW_PASSWORD})
    assert refused.status_code == 400
    with app.app_context():
        assert db.session.execute(select(User.password_hash)).scalar_one() == old_hash
    with app.app_context():
        sid = db.session.execute(select(LoginSession.sid)).scalar_one()
    assert client.post(f"/account/sessions/{sid}/end", data={}).status_code == 400
    assert signed_in_email(client) == "alice@example.com"


# --- cookies (SECURITY.md 17) ---------------------------------------------------------------------------------------

def test_session_cookie_is_random_httponly_lax_and_stored_only_hashed(app, client, make_user):
    make_user()
    done = _complete_sign_in(client, "alice@example.com")
    header = _session_cookie_header(done)
    attributes = [part.strip().lower() for part in header.split(";")[1:]]
    assert "httponly" in attributes and "samesite=lax" in attributes
    value = client.get_cookie("idp_session").value
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", value)  # >= 128 bits of url-safe randomness
    with app.app_context():
        stored = db.session.execute(select(LoginSession.token_hash)).scalar_one()
    assert stored == hashlib.sha256(value.encode()).hexdigest()
    assert value not in _all_values(app)


def test_every_sign_in_issues_a_new_session_cookie(app, client, make_user):
    make_user()
    client.set_cookie("idp_session", "planted-by-an-attacker-000000000")  # session fixation attempt
    _complete_sign_in(client, "alice@example.com")
    first = client.get_cookie("idp_session").value
    assert first != "planted-by-an-attacker-000000000"
    page = client.get("/logout")
    client.post("/logout", data={"csrf_token": csrf_token(page)})
    _complete_sign_in(client, "alice@example.com")
    second = client.get_cookie("idp_session").value
    assert second != first
    assert signed_in_email(client) == "alice@example.com"
    client.set_cookie("idp_session", first)
    assert signed_in_email(client) is None


# --- enumeration (SECURITY.md 19) -----------------------------------------------------------------------------------

def test_sign_in_failures_look_the_same_whatever_the_account_state(app, make_user):
    make_user(email="alice@example.com")
    make_user(email="locked@example.com", locked_at=utcnow())
    make_user(email="disabled@example.com", disabled=True)
    attempts = {
        "unknown": ("nobody@example.com", PASSWORD),
        "wrong password": ("alice@example.com", "not the right password at all"),
        "locked": ("locked@example.com", PASSWORD),
        "disabled": ("disabled@example.com", PASSWORD),
    }
    results = {}
    for name, (email, password) in attempts.items():
        client = app.test_client()
        response = sign_in(client, email, password)
        results[name] = (response.status_code, _error(response), _skeleton(response, email))
        assert signed_in_email(client) is None, name
    assert results["unknown"][1] == GENERIC_FAILURE
    assert len(set(results.values())) == 1, {k: v[:2] for k, v in results.items()}
    reasons = [e.details["reason"] for e in audit_events(app, "login.failure")]
    assert sorted(reasons) == ["bad_password", "disabled", "locked", "unknown_user"]  # the log knows, not the user


def test_sign_up_with_an_existing_email_looks_like_a_new_one(app, mailbox, make_user):
    make_user(email="alice@example.com")
    new_client, old_client = app.test_client(), app.test_client()
    new = _sign_up(new_client, "fresh@example.com")
    old = _sign_up(old_client, "alice@example.com")
    assert new.status_code == old.status_code == 302
    new_page = new_client.get(new.headers["Location"])
    old_page = old_client.get(old.headers["Location"])
    assert new_page.status_code == old_page.status_code == 200
    assert "fresh@example.com" in new_page.get_data(as_text=True)
    assert "alice@example.com" in old_page.get_data(as_text=True)
    assert _skeleton(new_page, "fresh@example.com") == _skeleton(old_page, "alice@example.com")
    assert code_in(mailbox.last("fresh@example.com", "Verify"))
    owner = mailbox.last("alice@example.com")
    assert "already have an account" in owner["subject"] + owner["text"]
    assert not re.search(r"\b\d{6}\b", owner["text"])  # no code: nothing to type that would work
    assert _users(app) == ["alice@example.com", "fresh@example.com"]
    with app.app_context():
        alice = db.session.execute(select(User).where(User.email == "alice@example.com")).scalar_one()
        assert alice.name == "Alice"  # the sign-up did not touch the existing account


def test_forgot_answers_the_same_for_known_and_unknown_addresses(app, mailbox, make_user):
    make_user(email="alice@example.com")
    answers = {}
    for email in ("nobody@example.com", "alice@example.com"):
        client = app.test_client()
        page = client.get("/forgot")
        response = client.post("/forgot", data={"csrf_token": csrf_token(page), "email": email})
        answers[email] = (response.status_code, _skeleton(response, email))
    assert answers["nobody@example.com"] == answers["alice@example.com"]
    assert answers["alice@example.com"][0] == 200
    assert link_in(mailbox.last("alice@example.com", "Reset"), "/reset#")
    assert not [m for m in mailbox.server.messages if "nobody@example.com" in m["to"]]


def test_password_hash_is_verified_for_unknown_users_too(app, make_user, monkeypatch):
    make_user(email="alice@example.com")
    calls = []
    real_verify = passwords._verify

    def counting_verify(encoded, password):
        calls.append(encoded)
        return real_verify(encoded, password)

    monkeypatch.setattr(passwords, "_verify", counting_verify)
    assert _error(sign_in(app.test_client(), "nobody@example.com")) == GENERIC_FAILURE
    assert len(calls) == 1 and calls[0].startswith("$argon2id$")
    assert _error(sign_in(app.test_client(), "alice@example.com", "wrong password for alice!")) == GENERIC_FAILURE
    assert len(calls) == 2 and calls[1].startswith("$argon2id$")


# --- passwords (SECURITY.md 20) -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("password", "message"), [
    ("short pass 14c", "Use at least 15 characters."),
    ("polniypizdec0211", "This password is too common."),
])
def test_sign_up_refuses_weak_passwords_with_a_form_message(app, client, password, message):
    response = _sign_up(client, password=password)
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert _users(app) == []


@pytest.mark.parametrize("length", [64, 200])
def test_long_passwords_are_accepted_whole(app, client, mailbox, length):
    password = ("long-passphrase " * 20)[: length - 3] + "end"
    assert len(password) == length
    response = _sign_up(client, email="long@example.com", password=password)
    assert response.status_code == 302
    step = client.get(response.headers["Location"])
    code = code_in(mailbox.last("long@example.com", "Verify"))
    client.post(response.headers["Location"], data={"csrf_token": csrf_token(step), "step": "email_verification",
                                                    "code": code})
    # A fresh browser signs in with the whole password, and not with a truncated one.
    truncated = app.test_client()
    assert _error(sign_in(truncated, "long@example.com", password[:-1])) == GENERIC_FAILURE
    assert _error(sign_in(truncated, "long@example.com", password[:56])) == GENERIC_FAILURE
    fresh = app.test_client()
    _complete_sign_in(fresh, "long@example.com", password)
    assert signed_in_email(fresh) == "long@example.com"


def test_change_password_requires_the_current_one_and_ends_other_sessions(app, client, mailbox, make_user):
    make_user()
    other = app.test_client()
    _complete_sign_in(other, "alice@example.com")
    _complete_sign_in(client, "alice@example.com")
    page = client.get("/account/password")
    wrong = client.post("/account/password", data={"csrf_token": csrf_token(page), "current": "not my password!!",
                                                   "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert wrong.status_code == 200
    assert "current password is not right" in wrong.get_data(as_text=True)
    assert signed_in_email(other) == "alice@example.com"
    assert _error(sign_in(app.test_client(), "alice@example.com", NEW_PASSWORD)) == GENERIC_FAILURE
    done = client.post("/account/password", data={"csrf_token": csrf_token(page), "current": PASSWORD,
                                                  "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert done.status_code == 302
    assert signed_in_email(client) == "alice@example.com"  # this session stays
    assert signed_in_email(other) is None  # the other one ended
    assert _error(sign_in(app.test_client(), "alice@example.com", PASSWORD)) == GENERIC_FAILURE
    fresh = app.test_client()
    _complete_sign_in(fresh, "alice@example.com", NEW_PASSWORD)
    assert signed_in_email(fresh) == "alice@example.com"
    assert mailbox.last("alice@example.com", "changed")
    assert [e.details["sessions_ended"] for e in audit_events(app, "password.changed")] == [1]


def test_change_password_asks_a_stale_session_to_sign_in_again_first(app, client, make_user):
    """SECURITY.md 27: knowing the current password is not enough when the sign-in is old (a borrowed, unlocked
    browser): the change waits for a fresh sign-in, then the page comes back."""
    make_user()
    _complete_sign_in(client, "alice@example.com")
    page = client.get("/account/password")
    assert page.status_code == 200
    with app.app_context():
        db.session.execute(db.update(LoginSession).values(
            auth_time=utcnow() - timedelta(seconds=app.config["IDP_STEP_UP_MAX_AGE"] + 60)))
        db.session.commit()
    for response in (client.get("/account/password"),
                     client.post("/account/password", data={"csrf_token": csrf_token(page), "current": PASSWORD,
                                                           "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})):
        assert response.status_code == 302 and response.headers["Location"].startswith("/login/"), response.status_code
    assert audit_events(app, "password.changed") == []
    assert _error(sign_in(app.test_client(), "alice@example.com", NEW_PASSWORD)) == GENERIC_FAILURE
    # Signing in again (the password step) leads back to the form, which now works.
    again = client.post("/account/password", data={"csrf_token": csrf_token(page), "current": PASSWORD,
                                                  "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    result = follow(client, again)
    assert result.screens == ["password"]
    form = result.last
    assert form.status_code == 200 and form.request.path == "/account/password"
    done = client.post("/account/password", data={"csrf_token": csrf_token(form), "current": PASSWORD,
                                                  "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert done.status_code == 302 and len(audit_events(app, "password.changed")) == 1


# --- brute force (SECURITY.md 21) -----------------------------------------------------------------------------------

def test_account_throttle_refuses_even_the_right_password(make_app):
    app = make_app(IDP_THROTTLE_ACCOUNT="3/minute;5/hour", IDP_THROTTLE_IP="50/minute")
    make_user_in(app)
    for _ in range(3):
        assert _error(sign_in(app.test_client(), "alice@example.com", "wrong guess number x")) == GENERIC_FAILURE
    client = app.test_client()
    refused = sign_in(client, "alice@example.com", PASSWORD)
    assert refused.status_code == 200
    assert "Try again in" in _error(refused)
    assert signed_in_email(client) is None
    # An unknown account is throttled in exactly the same way.
    for _ in range(3):
        assert _error(sign_in(app.test_client(), "ghost@example.com", "wrong guess number x")) == GENERIC_FAILURE
    ghost = sign_in(app.test_client(), "ghost@example.com", PASSWORD)
    assert ghost.status_code == 200 and "Try again in" in _error(ghost)
    # Another account is not affected.
    make_user_in(app, email="bob@example.com")
    bob = app.test_client()
    _complete_sign_in(bob, "bob@example.com")
    assert signed_in_email(bob) == "bob@example.com"
    assert [e.details["reason"] for e in audit_events(app, "login.failure")].count("throttled") == 2


def test_ip_throttle_counts_failures_across_accounts(make_app):
    app = make_app(IDP_THROTTLE_ACCOUNT="100/minute", IDP_THROTTLE_IP="4/minute")
    make_user_in(app)
    for n in range(4):
        assert _error(sign_in(app.test_client(), f"user{n}@example.com", "wrong guess number x")) == GENERIC_FAILURE
    refused = sign_in(app.test_client(), "alice@example.com", PASSWORD)
    assert "Try again in" in _error(refused)
    # A different client address still gets in.
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.44"
    _complete_sign_in(elsewhere, "alice@example.com")
    assert signed_in_email(elsewhere) == "alice@example.com"


def test_ip_throttle_counts_each_client_behind_a_trusted_proxy(make_app):
    """SECURITY.md 33: the per-IP tier counts the client X-Forwarded-For names, not the proxy in front of it."""
    app = make_app(IDP_THROTTLE_ACCOUNT="100/minute", IDP_THROTTLE_IP="4/minute", IDP_TRUSTED_PROXIES=["127.0.0.1"])
    make_user_in(app)
    for n in range(4):
        guesser = app.test_client()
        guesser.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.1"
        assert _error(sign_in(guesser, f"user{n}@example.com", "wrong guess number x")) == GENERIC_FAILURE
    guesser = app.test_client()
    guesser.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.1"
    assert "Try again in" in _error(sign_in(guesser, "alice@example.com", PASSWORD))
    neighbour = app.test_client()  # behind the same proxy
    neighbour.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.2"
    _complete_sign_in(neighbour, "alice@example.com")
    assert signed_in_email(neighbour) == "alice@example.com"


def test_ip_throttle_counts_an_ipv6_client_by_its_64(make_app):
    """Review finding: per-address limits give an attacker with an IPv6 /64 2**64 allowances. Guesses spread over
    one /64 are counted together; another /64 still gets in."""
    app = make_app(IDP_THROTTLE_ACCOUNT="100/minute", IDP_THROTTLE_IP="4/minute", IDP_TRUSTED_PROXIES=["127.0.0.1"])
    make_user_in(app)
    for n in range(4):
        guesser = app.test_client()
        guesser.environ_base["HTTP_X_FORWARDED_FOR"] = f"2001:db8:1:2::{n + 1:x}"
        assert _error(sign_in(guesser, f"user{n}@example.com", "wrong guess number x")) == GENERIC_FAILURE
    same_64 = app.test_client()
    same_64.environ_base["HTTP_X_FORWARDED_FOR"] = "2001:db8:1:2:ffff::9"
    assert "Try again in" in _error(sign_in(same_64, "alice@example.com", PASSWORD))
    other_64 = app.test_client()
    other_64.environ_base["HTTP_X_FORWARDED_FOR"] = "2001:db8:1:3::1"
    _complete_sign_in(other_64, "alice@example.com")
    assert signed_in_email(other_64) == "alice@example.com"


def test_lockout_after_consecutive_failures_and_unlock_by_mailed_link(make_app, smtp_server):
    app = make_app(IDP_LOCKOUT_THRESHOLD=4, IDP_THROTTLE_ACCOUNT="100/minute")
    mailbox = _mailbox(app, smtp_server)
    make_user_in(app)
    for _ in range(4):
        assert _error(sign_in(app.test_client(), "alice@example.com", "wrong guess number x")) == GENERIC_FAILURE
    with app.app_context():
        assert db.session.execute(select(User)).scalar_one().locked
    client = app.test_client()
    refused = sign_in(client, "alice@example.com", PASSWORD)
    assert refused.status_code == 200 and _error(refused) == GENERIC_FAILURE  # no "locked" hint
    assert signed_in_email(client) is None
    mail = mailbox.last("alice@example.com", "locked")
    link = link_in(mail, "/unlock#")
    confirm = open_link(client, link)
    assert confirm.status_code == 200
    with app.app_context():
        assert db.session.execute(select(User)).scalar_one().locked  # opening alone (a mail scanner) unlocks nothing
    unlocked = submit_link(client, link, confirm, confirm="1")
    assert unlocked.status_code == 302
    _complete_sign_in(client, "alice@example.com")
    assert signed_in_email(client) == "alice@example.com"
    assert open_link(client, link).status_code == 400  # the link works once
    reasons = [e.details["reason"] for e in audit_events(app, "login.failure")]
    assert reasons == ["bad_password"] * 4 + ["locked"]
    assert len(audit_events(app, "account.locked")) == 1
    assert len(audit_events(app, "account.unlocked")) == 1


# --- X-Forwarded-For (SECURITY.md 21) -------------------------------------------------------------------------------

def test_spoofed_x_forwarded_for_is_ignored_without_trusted_proxies(app, make_user):
    make_user()
    client = app.test_client()
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "203.0.113.7"
    sign_in(client, "alice@example.com", "wrong guess number x")
    assert [e.ip for e in audit_events(app, "login.failure")] == ["127.0.0.1"]


def test_x_forwarded_for_is_believed_from_a_trusted_proxy(make_app):
    # Overrides reach the app unparsed, so the list form that IDP_TRUSTED_PROXIES=127.0.0.1 parses to is given.
    app = make_app(IDP_TRUSTED_PROXIES=["127.0.0.1"])
    make_user_in(app)
    client = app.test_client()
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.9, 203.0.113.7"
    sign_in(client, "alice@example.com", "wrong guess number x")
    assert [e.ip for e in audit_events(app, "login.failure")] == ["203.0.113.7"]  # the hop the proxy saw


# SECURITY.md 30: a mailed link carries its one-time token in the fragment, which no browser sends, so it reaches
# no access log, proxy or Referer; the page it opens POSTs it (static/js/link.js).
def test_mailed_links_carry_their_token_in_the_fragment_only(make_app, smtp_server):
    app = make_app(IDP_LOCKOUT_THRESHOLD=1, IDP_THROTTLE_ACCOUNT="100/minute")
    mailbox = _mailbox(app, smtp_server)
    make_user_in(app)
    client = app.test_client()
    client.post("/forgot", data={"csrf_token": csrf_token(client.get("/forgot")), "email": "alice@example.com"})
    client.get(_sign_up(client, email="bob@example.com").headers["Location"])  # the step that mails the link
    sign_in(app.test_client(), "alice@example.com", "wrong guess number x")
    mails = {"/reset": mailbox.last("alice@example.com", "Reset"), "/verify-email": mailbox.last("bob@example.com",
             "Verify"), "/unlock": mailbox.last("alice@example.com", "locked")}
    for path, mail in mails.items():
        found = re.findall(r"https?://[^\s\"<>]+", mail["text"] + mail["html"])
        urls = {html.unescape(url).rstrip(".") for url in found}
        links = [urlsplit(url) for url in urls if urlsplit(url).path.startswith(path)]
        assert len(links) == 1, urls  # the same link in the text and the HTML part
        assert links[0].path == path and links[0].query == "", urls
        assert len(links[0].fragment) > 40  # the signed token, there only
        assert all(not urlsplit(url).query for url in urls)


def test_an_old_link_with_the_token_in_the_path_is_not_served(client):
    for path in ("/reset/sometoken", "/verify-email/sometoken", "/unlock/sometoken"):
        assert client.get(path).status_code == 404


def test_the_link_page_works_without_script_when_the_token_is_pasted(app, client, mailbox, make_user):
    make_user()
    client.post("/forgot", data={"csrf_token": csrf_token(client.get("/forgot")), "email": "alice@example.com"})
    link = link_in(mailbox.last("alice@example.com", "Reset"), "/reset#")
    page = client.get("/reset")
    text = page.get_data(as_text=True)
    assert 'name="token"' in text and "js/link.js" in text and "<script>" not in text  # CSP: no inline script
    pasted = " http://localhost" + link + " "  # the whole link pasted, say
    form = client.post("/reset", data={"csrf_token": csrf_token(page), "token": pasted})
    assert form.status_code == 200 and "alice@example.com" in form.get_data(as_text=True)
    done = submit_link(client, link, form, password=NEW_PASSWORD, confirm=NEW_PASSWORD)
    assert done.status_code == 302 and done.headers["Location"] == "/login"


# SECURITY.md 33: the form limits (sign-up, forgot, resend) count per client, also behind a trusted proxy.
FORM_LIMITED = [("/signup", {"email": "new@example.com", "name": "New", "password": PASSWORD}),
                ("/forgot", {"email": "alice@example.com"}), ("/login/no-such-transaction/resend", {})]


def _form_post(client, path: str, fields: dict, forwarded_for: str | None = None):
    token = csrf_token(client.get("/signup"))
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post(path, data={"csrf_token": token, **fields}, headers=headers)


@pytest.mark.parametrize(("path", "fields"), FORM_LIMITED, ids=["signup", "forgot", "resend"])
def test_form_limit_counts_each_client_behind_a_trusted_proxy(make_app, path, fields):
    app = make_app(IDP_TRUSTED_PROXIES=["127.0.0.1"], IDP_RATELIMIT_FORMS="2/minute")
    make_user_in(app)
    first, second = app.test_client(), app.test_client()
    assert [_form_post(first, path, fields, "198.51.100.1").status_code != 429 for _ in range(2)] == [True, True]
    assert _form_post(first, path, fields, "198.51.100.1").status_code == 429
    assert _form_post(second, path, fields, "198.51.100.2").status_code != 429  # another client, same proxy


@pytest.mark.parametrize(("path", "fields"), FORM_LIMITED, ids=["signup", "forgot", "resend"])
def test_form_limit_ignores_x_forwarded_for_from_an_untrusted_sender(make_app, path, fields):
    app = make_app(IDP_RATELIMIT_FORMS="2/minute")  # no trusted proxy: 127.0.0.1 is the client
    make_user_in(app)
    client = app.test_client()
    for hop in ("198.51.100.1", "198.51.100.2"):
        assert _form_post(client, path, fields, hop).status_code != 429
    assert _form_post(client, path, fields, "198.51.100.3").status_code == 429


# --- open redirect --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["https://evil.example", "//evil.example", "/\\evil.example",
                                    "https:evil.example", "/%2F/evil.example",
                                    # Browsers read three or more slashes, and a backslash for a slash, as '//'
                                    "///evil.example", "////evil.example", "\\\\evil.example", "/\\/evil.example",
                                    "\\/evil.example",
                                    # ... and drop tabs and line breaks, which a Location header cannot carry anyway
                                    "/\t/evil.example", "/\r\n/evil.example", "/account\r\nSet-Cookie: a=b",
                                    "/account\n"])
def test_next_parameter_never_leaves_the_site(client, make_user, target):
    make_user()
    done = _complete_sign_in(client, "alice@example.com", next_path=quote(target, safe=""))
    assert done.status_code == 302
    location = done.headers["Location"]
    assert location.startswith("/") and not location.startswith("//") and "\\" not in location
    assert not any(ord(ch) < 0x20 for ch in location)
    assert urlsplit(urljoin("http://localhost/login", location)).netloc == "localhost"
    assert signed_in_email(client) == "alice@example.com"


def test_next_parameter_keeps_a_same_site_path(client, make_user):
    make_user()
    done = _complete_sign_in(client, "alice@example.com", next_path=quote("/account/password", safe=""))
    assert done.headers["Location"] == "/account/password"


def test_login_transactions_are_stored_server_side(app, client):
    """The flow state lives in the database, so an expired or foreign transaction id shows an error page."""
    step_url = screen_url(client.get("/login"))
    tid = step_url.rsplit("/", 1)[1]
    with app.app_context():
        assert db.session.get(LoginTransaction, tid) is not None
    stranger = app.test_client()
    assert stranger.get(step_url).status_code == 400  # bound to the browser that began it


# --- NUL characters (SECURITY.md 31) ---------------------------------------------------------------------------------

NUL_REFUSED = "NUL character"


def test_a_nul_in_a_form_field_is_a_clear_error_and_writes_nothing(app, client, make_user):
    """PostgreSQL text cannot hold a NUL: before the guard these were 500s there. The transaction survives."""
    make_user()
    page = client.get("/login")
    step_url = screen_url(page)
    before = len(audit_events(app, "login.failure"))
    response = client.post(step_url, data={"csrf_token": csrf_token(page), "step": "password",
                                           "email": "alice\x00@example.com", "password": PASSWORD})
    assert response.status_code == 400 and NUL_REFUSED in response.get_data(as_text=True)
    assert len(audit_events(app, "login.failure")) == before
    done = client.post(step_url, data={"csrf_token": csrf_token(page), "step": "password",
                                       "email": "alice@example.com", "password": PASSWORD})
    assert done.status_code == 302 and signed_in_email(client) == "alice@example.com"


def test_a_nul_in_sign_up_creates_no_account(app, client, mailbox):
    response = _sign_up(client, email="new\x00@example.com")
    assert response.status_code == 400 and NUL_REFUSED in response.get_data(as_text=True)
    response = _sign_up(client, name="New\x00Person")
    assert response.status_code == 400
    assert _users(app) == []


@pytest.mark.parametrize("path", ["/login/%00", "/login/abc%00def", "/reset/%00", "/verify-email/x%00"])
def test_a_nul_in_the_path_is_a_clear_error(client, path):
    response = client.get(path)
    assert response.status_code == 400 and NUL_REFUSED in response.get_data(as_text=True)


def test_a_nul_is_refused_as_a_json_problem_to_a_json_caller(client):
    response = client.get("/login/%00", headers={"Accept": "application/json"})
    assert response.status_code == 400 and response.is_json
    assert response.get_json()["status"] == 400 and NUL_REFUSED in response.get_json()["detail"]


def test_a_nul_in_a_header_is_a_clear_error(client):
    """RFC 9110 5.5: a field value with a NUL is invalid; the User-Agent would otherwise reach the audit log."""
    response = client.get("/login", headers={"User-Agent": "agent\x00"})
    assert response.status_code == 400 and NUL_REFUSED in response.get_data(as_text=True)


@pytest.mark.parametrize("body", [b"[1, 2]", b"5", b'{"email": 5, "name": ["x"], "password": {}}'])
def test_a_json_body_with_a_valid_csrf_token_is_no_form(app, client, body):
    """Flask-WTF would read a JSON body as the form's fields; hosted pages read form fields only."""
    page = client.get("/signup")
    response = client.post("/signup", data=body, content_type="application/json",
                           headers={"X-CSRFToken": csrf_token(page)})
    assert response.status_code in (200, 400) and "Enter your email address." in response.get_data(as_text=True)
    assert _users(app) == []
