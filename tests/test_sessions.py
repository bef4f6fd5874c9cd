"""Server-side sign-in sessions (SECURITY.md 18): idle and absolute timeouts, listing and ending, disabled users.

Time is moved by editing the session row, never by sleeping."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from idp.extensions import db
from idp.login.steps.password import GENERIC_FAILURE
from idp.models import LoginSession, User, utcnow
from tests.support import PASSWORD, audit_events, authorize, csrf_token, make_user_in, sign_in, signed_in_email


def _signed_in(app, user_agent: str | None = None):
    client = app.test_client()
    if user_agent:
        client.environ_base["HTTP_USER_AGENT"] = user_agent
    step = sign_in(client, "alice@example.com", PASSWORD)
    client.get(step.headers["Location"])
    assert signed_in_email(client) == "alice@example.com"
    return client


def _the_session(app) -> LoginSession:
    with app.app_context():
        return db.session.execute(select(LoginSession)).scalar_one()


def _age(app, *, idle: int | None = None, age: int | None = None) -> None:
    """Pretend the session was last used ``idle`` seconds ago and began ``age`` seconds ago."""
    with app.app_context():
        session = db.session.execute(select(LoginSession)).scalar_one()
        now = utcnow()
        if idle is not None:
            session.last_seen_at = now - timedelta(seconds=idle)
        if age is not None:
            session.created_at = now - timedelta(seconds=age)
            session.auth_time = now - timedelta(seconds=age)
        db.session.commit()


def test_idle_session_ends_and_is_audited(app, make_user):
    make_user()
    client = _signed_in(app)
    idle = app.config["IDP_SESSION_IDLE_TIMEOUT"]
    _age(app, idle=idle - 120)
    assert signed_in_email(client) == "alice@example.com"  # used recently enough
    _age(app, idle=idle + 5)
    response = client.get("/account")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    session = _the_session(app)
    assert session.ended_at is not None and session.end_reason == "idle_timeout"
    [event] = audit_events(app, "session.expired")
    assert event.details["reason"] == "idle_timeout" and event.details["sid"] == session.sid
    # Ended for good: making the row look fresh again does not revive the cookie.
    _age(app, idle=0)
    assert signed_in_email(client) is None


def test_session_ends_at_its_absolute_age_even_when_in_use(app, make_user):
    make_user()
    client = _signed_in(app)
    max_age = app.config["IDP_SESSION_MAX_AGE"]
    _age(app, idle=0, age=max_age - 120)
    assert signed_in_email(client) == "alice@example.com"
    _age(app, idle=0, age=max_age + 5)
    assert signed_in_email(client) is None
    assert _the_session(app).end_reason == "max_age"
    assert [e.details["reason"] for e in audit_events(app, "session.expired")] == ["max_age"]


def test_timeouts_follow_the_settings(make_app):
    app = make_app(IDP_SESSION_IDLE_TIMEOUT=300, IDP_SESSION_MAX_AGE=3600)
    make_user_in(app)
    client = _signed_in(app)
    _age(app, idle=301)
    assert signed_in_email(client) is None
    assert _the_session(app).end_reason == "idle_timeout"


def test_account_page_lists_sessions_and_ends_another_one(app, make_user):
    make_user()
    laptop = _signed_in(app, "LaptopBrowser/1.0")
    phone = _signed_in(app, "PhoneBrowser/2.0")
    page = laptop.get("/account")
    text = page.get_data(as_text=True)
    assert "LaptopBrowser/1.0" in text and "PhoneBrowser/2.0" in text
    with app.app_context():
        phone_sid = db.session.execute(
            select(LoginSession.sid).where(LoginSession.user_agent == "PhoneBrowser/2.0")).scalar_one()
    assert f"/account/sessions/{phone_sid}/end" in text
    asked = laptop.post(f"/account/sessions/{phone_sid}/end", data={"csrf_token": csrf_token(page)})
    question = asked.get_data(as_text=True)  # without confirmation: a question that says what happens, no change
    assert asked.status_code == 200 and "End the session on PhoneBrowser/2.0?" in question
    assert "That browser will be signed out" in question and 'name="confirm" value="yes"' in question
    assert signed_in_email(phone) == "alice@example.com"
    ended = laptop.post(f"/account/sessions/{phone_sid}/end",
                        data={"confirm": "yes", "csrf_token": csrf_token(asked)})
    assert ended.status_code == 302
    assert signed_in_email(phone) is None  # the other browser is signed out
    assert signed_in_email(laptop) == "alice@example.com"  # this one is not
    remaining = laptop.get("/account").get_data(as_text=True)
    assert "PhoneBrowser/2.0" not in remaining
    assert [e.details["sid"] for e in audit_events(app, "session.ended")] == [phone_sid]


def test_a_user_cannot_end_someone_elses_session(app, make_user):
    make_user()
    make_user(email="bob@example.com", name="Bob")
    alice = _signed_in(app)
    bob = app.test_client()
    bob.get(sign_in(bob, "bob@example.com").headers["Location"])
    with app.app_context():
        alice_sid = db.session.execute(
            select(LoginSession.sid).join(User).where(User.email == "alice@example.com")).scalar_one()
    page = bob.get("/account")
    assert alice_sid not in page.get_data(as_text=True)
    bob.post(f"/account/sessions/{alice_sid}/end", data={"confirm": "yes", "csrf_token": csrf_token(page)})
    assert signed_in_email(alice) == "alice@example.com"


def test_ending_this_session_from_the_list_signs_out_here(app, make_user):
    make_user()
    client = _signed_in(app)
    page = client.get("/account")
    sid = re.search(r"/account/sessions/([^/]+)/end", page.get_data(as_text=True)).group(1)
    client.post(f"/account/sessions/{sid}/end", data={"confirm": "yes", "csrf_token": csrf_token(page)})
    assert signed_in_email(client) is None
    assert _the_session(app).end_reason == "ended_by_user"


def test_disabling_a_user_ends_every_session(app, make_user):
    make_user()
    first, second = _signed_in(app), _signed_in(app)
    with app.app_context():
        user = db.session.execute(select(User)).scalar_one()
        user.disabled = True
        db.session.commit()
    assert signed_in_email(first) is None
    assert signed_in_email(second) is None
    with app.app_context():
        reasons = db.session.execute(select(LoginSession.end_reason)).scalars().all()
    assert reasons == ["user_disabled", "user_disabled"]
    # Re-enabling does not bring the old sessions back, and a disabled user cannot sign in again.
    with app.app_context():
        user = db.session.execute(select(User)).scalar_one()
        user.disabled = False
        db.session.commit()
    assert signed_in_email(first) is None
    with app.app_context():
        db.session.execute(select(User)).scalar_one().disabled = True
        db.session.commit()
    client = app.test_client()
    refused = sign_in(client, "alice@example.com")
    assert refused.status_code == 200 and str(GENERIC_FAILURE) in refused.get_data(as_text=True)
    assert signed_in_email(client) is None


def test_sign_out_everywhere_ends_every_session_and_revokes_every_token(app, make_user, make_client):
    """SECURITY.md 6: "sign out everywhere" ends this and every other session and revokes the user's tokens, so a
    relying party's refresh token and access token stop working at once; it is audited."""
    make_user()
    client_id, secret = make_client(first_party=True, grant_types=["authorization_code", "refresh_token"])
    laptop = _signed_in(app, "LaptopBrowser/1.0")
    phone = _signed_in(app, "PhoneBrowser/2.0")
    code = authorize(laptop, client_id, scope="openid offline_access")
    issued = laptop.post("/token", data={"grant_type": "authorization_code", "code": code,
                                         "redirect_uri": "https://rp.example/cb"}, auth=(client_id, secret))
    assert issued.status_code == 200, issued.get_json()
    tokens = issued.get_json()
    assert tokens.get("refresh_token")
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    assert laptop.get("/userinfo", headers=bearer).status_code == 200

    page = laptop.get("/account")
    assert 'id="sign-out-everywhere"' in page.get_data(as_text=True)
    # Without the page's CSRF token nothing happens.
    assert laptop.post("/account/sessions/end-all", data={}).status_code == 400
    assert signed_in_email(phone) == "alice@example.com"

    done = laptop.post("/account/sessions/end-all", data={"confirm": "yes", "csrf_token": csrf_token(page)})
    assert done.status_code == 200 and 'id="signed-out-everywhere"' in done.get_data(as_text=True)
    assert signed_in_email(laptop) is None
    assert signed_in_email(phone) is None
    with app.app_context():
        reasons = db.session.execute(select(LoginSession.end_reason)).scalars().all()
    assert reasons == ["signed_out_everywhere", "signed_out_everywhere"]
    assert laptop.get("/userinfo", headers=bearer).status_code == 401
    refreshed = laptop.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            auth=(client_id, secret))
    assert refreshed.status_code == 400 and refreshed.get_json()["error"] == "invalid_grant"
    [event] = audit_events(app, "sessions.signed_out_everywhere")
    assert event.details["sessions_ended"] == 2 and event.details["tokens_revoked"] >= 1


@pytest.mark.parametrize(("path", "reason"), [
    ("/account/password", "Confirm it's you to change your password."),
    ("/account/security/totp/new", "Confirm it's you to add a sign-in method."),
    ("/account/phone", "Confirm it's you to change your phone number."),
])
def test_signing_in_again_for_a_change_says_why_and_whose_account(app, make_user, path, reason):
    make_user()
    client = _signed_in(app, "LaptopBrowser/1.0")
    with app.app_context():  # the sign-in is older than IDP_STEP_UP_MAX_AGE
        for live in db.session.execute(select(LoginSession)).scalars():
            live.auth_time = live.auth_time - timedelta(seconds=app.config["IDP_STEP_UP_MAX_AGE"] + 60)
        db.session.commit()
    page = client.get(path, follow_redirects=True)
    text = html.unescape(page.get_data(as_text=True))
    assert reason in text
    assert "You are signed in as alice@example.com." in text
    # A plain sign-in says neither.
    fresh = app.test_client().get("/login", follow_redirects=True).get_data(as_text=True)
    assert "reauth-reason" not in fresh
