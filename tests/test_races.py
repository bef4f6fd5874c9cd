"""One-time secrets are used once even when the requests that present them arrive together, and parallel wrong
passwords all count (RFC 6238 5.2; SECURITY.md 21, 32).

Each test releases its requests from threads at one barrier, every thread with its own test client (its own app
context and database connection), against PostgreSQL: SQLite takes one writer at a time, so it cannot show the race.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from idp.extensions import db
from idp.login.factors.recovery_code import new_recovery_codes_for
from idp.models import AuthorizationCode, Factor, LoginSession, OneTimeToken, User, utcnow
from idp.security.otp import totp_code_at
from tests.conftest import TEST_DATABASE_URL
from tests.support import (
    PASSWORD,
    Mailbox,
    audit_events,
    authorize_url,
    code_in,
    csrf_token,
    enrol_totp_in,
    last_sms_code,
    link_in,
    make_client_in,
    make_user_in,
    open_link,
    screen_url,
    step_name,
    submit_link,
    walk,
)

pytestmark = pytest.mark.skipif(not TEST_DATABASE_URL, reason="races need concurrent writers, which SQLite "
                                                              "serialises: set IDP_TEST_DATABASE_URL (PostgreSQL)")

ALICE = "alice@example.com"
PHONE = "+14155550123"
# Failures may not throttle the racers: the race is what is under test, not the throttle.
LOOSE = {"IDP_THROTTLE_OTP": "1000/minute", "IDP_THROTTLE_ACCOUNT": "1000/minute", "IDP_THROTTLE_IP": "1000/minute",
         "IDP_RATELIMIT_FORMS": "1000/minute"}


def at_once(count: int, prepare, send) -> list:
    """Run ``prepare(i)`` in each of ``count`` threads, then ``send(prepared)`` in all of them at one barrier."""
    barrier = threading.Barrier(count, timeout=60)

    def one(i):
        try:
            prepared = prepare(i)
        except BaseException:
            barrier.abort()  # the others stop waiting (BrokenBarrierError) instead of timing out
            raise
        barrier.wait()
        return send(prepared)

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(one, i) for i in range(count)]
        return [future.result(timeout=120) for future in futures]


def post_form(http, page, **fields):
    """Submit the form of ``page`` (its CSRF token and step) with ``fields``."""
    data = {"csrf_token": csrf_token(page), **fields}
    if step_name(page):
        data["step"] = step_name(page)
    return http.post(screen_url(page), data=data)


def won(responses) -> int:
    """How many of the responses moved on (a redirect) rather than showing a refusal."""
    return sum(r.status_code in (302, 303) for r in responses)


def same_browser(app, http):
    """Another test client carrying ``http``'s Flask session cookie (the login transaction's binding)."""
    name = app.config.get("SESSION_COOKIE_NAME", "session")
    cookie = http.get_cookie(name)
    clone = app.test_client()
    clone.set_cookie(name, cookie.value)
    return clone


@pytest.fixture
def racing(make_app):
    app = make_app(**LOOSE)
    make_user_in(app)
    return app


@pytest.fixture
def inbox(smtp_server):
    """``inbox(app)``: the mail the loopback SMTP server received in this test (queued jobs run first)."""
    smtp_server.messages.clear()
    return lambda app: Mailbox(app, smtp_server)


def test_a_totp_code_signs_in_once_when_six_sign_ins_submit_it_at_once(racing, monkeypatch):
    app = racing
    now = utcnow()
    monkeypatch.setattr("idp.login.browser.utcnow", lambda: now)  # one TOTP window for every racer
    secret, _ = enrol_totp_in(app, ALICE, now)
    code = totp_code_at(secret, now)
    client_id, _ = make_client_in(app, first_party=True, mfa="required")

    def prepare(_):
        http = app.test_client()
        result = walk(http, authorize_url(client_id), stop_at="totp")
        assert result.screens == ["password", "totp"], result.screens
        return http, result.pages[-1]

    responses = at_once(6, prepare, lambda prepared: post_form(*prepared, code=code))
    assert won(responses) == 1, [r.status_code for r in responses]
    assert all("That code is not right" in r.get_data(as_text=True) for r in responses if r.status_code == 200)


def test_a_recovery_code_signs_in_once_when_twenty_sign_ins_submit_it_at_once(racing):
    app = racing
    enrol_totp_in(app, ALICE)
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        code = new_recovery_codes_for(user, utcnow(), app.config["IDP_SECRET_KEY"])[0]
        db.session.commit()
    client_id, _ = make_client_in(app, first_party=True, mfa="required")

    def prepare(_):
        http = app.test_client()
        result = walk(http, authorize_url(client_id), stop_at="totp")
        tid = screen_url(result.pages[-1])
        http.post(f"{tid}/choose", data={"csrf_token": csrf_token(result.pages[-1]), "factor": "recovery_code"})
        page = http.get(tid)
        assert step_name(page) == "recovery_code"
        return http, page

    responses = at_once(20, prepare, lambda prepared: post_form(*prepared, code=code))
    assert won(responses) == 1, [r.status_code for r in responses]
    assert len(audit_events(app, "recovery_code.used")) == 1


def test_a_password_reset_link_works_once_when_posted_twenty_times_at_once(racing, inbox):
    app = racing
    mailbox = inbox(app)
    http = app.test_client()
    http.post("/forgot", data={"csrf_token": csrf_token(http.get("/forgot")), "email": ALICE})
    _sets_a_password_once(app, link_in(mailbox.last(ALICE, "Reset"), "/reset#"), 20)


def _sets_a_password_once(app, link: str, count: int) -> None:
    """``count`` browsers open a set-password ``link`` and post a new password at once: one wins, the rest get 400."""
    def prepare(i):
        browser = app.test_client()
        return browser, open_link(browser, link)

    new = f"new {PASSWORD}"
    responses = at_once(count, prepare, lambda prepared: submit_link(prepared[0], link, prepared[1], password=new,
                                                                     confirm=new))
    assert won(responses) == 1, [r.status_code for r in responses]
    assert {r.status_code for r in responses if r.status_code not in (302, 303)} == {400}
    assert len(audit_events(app, "password.reset")) == 1


def test_an_invitation_link_sets_a_password_once_when_posted_ten_times_at_once(make_app, inbox):
    from idp.admin import service

    app = make_app(**LOOSE)
    mailbox = inbox(app)
    with app.test_request_context():
        service.create_user(service.OPERATOR, email="new@example.com", name="New", invite=True)
    _sets_a_password_once(app, link_in(mailbox.last("new@example.com", "Your new account"), "/reset#"), 10)


def test_an_email_code_verifies_once_when_posted_six_times_at_once(make_app, inbox):
    app = make_app(**LOOSE)
    make_user_in(app, verified=False)
    mailbox = inbox(app)
    first = app.test_client()
    result = walk(first, "/login", stop_at="email_verification")
    code = code_in(mailbox.last(ALICE, "Verify"))
    page = result.pages[-1]

    responses = at_once(6, lambda _: same_browser(app, first), lambda http: post_form(http, page, code=code))
    assert won(responses) == 1, [r.status_code for r in responses]
    assert len(audit_events(app, "email.verified")) == 1


def at_the_sms_screen(app):
    """Alice with a verified phone, stopped at the SMS screen of an MFA client's sign-in: (browser, page, code)."""
    with app.app_context():
        user_id = db.session.execute(db.select(User.id).where(User.email == ALICE)).scalar_one()
        db.session.add(Factor(user_id=user_id, kind="sms", name="Phone", phone=PHONE, created_at=utcnow(),
                              confirmed_at=utcnow()))
        db.session.commit()
    client_id, _ = make_client_in(app, first_party=True, mfa="required")
    first = app.test_client()
    result = walk(first, authorize_url(client_id), stop_at="sms")
    return first, result.pages[-1], last_sms_code(app)


def test_an_sms_code_is_taken_once_when_posted_six_times_at_once(racing):
    app = racing
    first, page, code = at_the_sms_screen(app)

    responses = at_once(6, lambda _: same_browser(app, first), lambda http: post_form(http, page, code=code))
    assert won(responses) == 1, [r.status_code for r in responses]


def test_a_verification_link_works_once_when_posted_six_times_at_once(make_app, inbox):
    app = make_app(**LOOSE)
    make_user_in(app, verified=False)
    mailbox = inbox(app)
    walk(app.test_client(), "/login", stop_at="email_verification")
    link = link_in(mailbox.last(ALICE, "Verify"), "/verify-email#")

    def prepare(_):
        browser = app.test_client()
        return browser, open_link(browser, link)

    responses = at_once(6, prepare, lambda prepared: submit_link(prepared[0], link, prepared[1], confirm="1"))
    assert won(responses) == 1, [r.status_code for r in responses]
    assert len(audit_events(app, "email.verified")) == 1


def wrong_password_sign_in(app):
    """A sign-in stopped at the password page: (client, page)."""
    http = app.test_client()
    return http, http.get("/login")


def test_an_unlock_link_works_once_when_posted_six_times_at_once(make_app, inbox):
    app = make_app(**LOOSE, IDP_LOCKOUT_THRESHOLD=2)
    make_user_in(app)
    mailbox = inbox(app)
    for _ in range(2):
        post_form(*wrong_password_sign_in(app), email=ALICE, password="wrong password here")
    link = link_in(mailbox.last(ALICE, "locked"), "/unlock#")

    def prepare(_):
        browser = app.test_client()
        return browser, open_link(browser, link)

    responses = at_once(6, prepare, lambda prepared: submit_link(prepared[0], link, prepared[1], confirm="1"))
    assert won(responses) == 1, [r.status_code for r in responses]
    assert len(audit_events(app, "account.unlocked")) == 1


def test_parallel_wrong_passwords_all_count_and_lock_the_account_once(make_app, inbox):
    threshold, attempts = 4, 8
    app = make_app(**LOOSE, IDP_LOCKOUT_THRESHOLD=threshold)
    make_user_in(app)
    mailbox = inbox(app)

    responses = at_once(attempts, lambda _: wrong_password_sign_in(app),
                        lambda prepared: post_form(*prepared, email=ALICE, password="wrong password here"))
    assert {r.status_code for r in responses} == {200}
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == ALICE)).scalar_one()
        assert user.failed_logins == attempts and user.locked
    assert len(audit_events(app, "account.locked")) == 1
    assert len(mailbox.messages(ALICE)) == 1 and "locked" in mailbox.messages(ALICE)[0]["subject"]


def test_parallel_wrong_sms_codes_all_count_and_void_the_code(racing):
    app = racing
    first, page, code = at_the_sms_screen(app)
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    max_attempts = app.config["IDP_CODE_MAX_ATTEMPTS"]

    responses = at_once(max_attempts, lambda _: same_browser(app, first),
                        lambda http: post_form(http, page, code=wrong))
    assert won(responses) == 0
    with app.app_context():
        row = db.session.execute(db.select(OneTimeToken).where(OneTimeToken.purpose == "sms_login")).scalar_one()
        assert row.attempts == max_attempts and row.used_at is not None
    refused = post_form(first, page, code=code)  # the code is void after its last attempt, even the right one
    assert refused.status_code == 200 and step_name(refused) == "sms"


def test_the_link_and_the_code_of_one_verification_mail_at_once_verify_the_address_once(make_app, inbox):
    app = make_app(**LOOSE)
    make_user_in(app, verified=False)
    mailbox = inbox(app)
    first = app.test_client()
    result = walk(first, "/login", stop_at="email_verification")
    message = mailbox.last(ALICE, "Verify")
    code, link = code_in(message), link_in(message, "/verify-email#")
    page = result.pages[-1]

    def prepare(i):
        if i % 2:
            return same_browser(app, first), page, {}
        browser = app.test_client()
        return browser, open_link(browser, link), {"confirm": "1"}

    at_once(6, prepare, lambda prepared: (submit_link(prepared[0], link, prepared[1], **prepared[2]) if prepared[2]
                                          else post_form(prepared[0], prepared[1], code=code)))
    assert len(audit_events(app, "email.verified")) == 1


def test_two_admins_disabling_each_other_at_once_leave_one_administrator(make_app):
    """The last-admin rule holds under a race: each sees the other as an administrator until one commits."""
    from idp.admin import service

    app = make_app()
    ids = [make_user_in(app, email=f"admin{n}@example.com", is_admin=True).id for n in range(2)]

    def prepare(i):
        context = app.app_context()
        context.push()
        me, other = db.session.get(User, ids[i]), db.session.get(User, ids[1 - i])
        return context, service.person(me), other

    def send(prepared):
        context, me, other = prepared
        try:
            service.disable(me, other)
            return "done"
        except service.Conflict:
            db.session.rollback()
            return "refused"
        finally:
            context.pop()

    outcomes = at_once(2, prepare, send)
    assert sorted(outcomes) == ["done", "refused"]
    with app.app_context():
        assert [db.session.get(User, user_id).disabled for user_id in ids].count(False) == 1


def test_an_auth_session_presented_six_times_at_once_is_taken_once(make_app):
    """The challenge endpoint's auth_session is a one-time secret: of six requests that present the one returned
    with a code (each asking a step-up its session already meets, which mints a code at once), one gets a code."""
    from tests.support import pkce_pair

    app = make_app(**LOOSE)
    make_user_in(app)
    client_id, _none = make_client_in(app, name="Mobile", redirect_uris=["https://app.example/cb"], public=True,
                                      first_party=True)
    http = app.test_client()
    _verifier, challenge = pkce_pair()
    first = http.post("/authorize-challenge", data={
        "client_id": client_id, "response_type": "code", "scope": "openid", "code_challenge": challenge,
        "code_challenge_method": "S256", "username": ALICE, "password": PASSWORD}).get_json()

    def send(browser):
        return browser.post("/authorize-challenge", data={
            "auth_session": first["auth_session"], "client_id": client_id, "response_type": "code",
            "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256",
            "acr_values": "urn:idp:acr:pwd"})

    responses = at_once(6, lambda i: app.test_client(), send)
    codes = [r for r in responses if "authorization_code" in r.get_json()]
    assert len(codes) == 1, [r.get_json() for r in responses]
    assert {r.get_json()["error"] for r in responses if r not in codes} == {"invalid_session"}


def test_a_passkey_assertion_signs_in_once_when_posted_six_times_at_once(racing, monkeypatch):
    """The WebAuthn challenge is a one-time secret: of six posts of one passkey assertion at once (from an
    authenticator without a counter, so only the challenge stops a replay) in the browser whose sign-in page
    offered it, one is accepted; the others that reach the check are refused and audited."""
    from idp.login import planner
    from tests.test_login_promises import SoftAuthenticator, offered_challenge, register_key

    app = racing
    key = SoftAuthenticator()
    register_key(app, key)
    http = app.test_client()
    page = http.get("/login")
    step_url = screen_url(page)
    form = {"csrf_token": csrf_token(page),
            "credential": key.assertion(offered_challenge(page, "passkey-options"), counter=0, user_verified=True)}
    outcomes: list[bool] = []
    check = planner.PASSWORD.verify_passkey

    def counted(ctx, credential):
        outcome = check(ctx, credential)
        outcomes.append(outcome.ok)
        return outcome

    monkeypatch.setattr(planner.PASSWORD, "verify_passkey", counted)
    at_once(6, lambda i: same_browser(app, http), lambda browser: browser.post(f"{step_url}/passkey", data=form))
    assert outcomes.count(True) == 1, outcomes
    refused = [e for e in audit_events(app, "login.failure") if e.details.get("reason") == "passkey"]
    assert len(refused) == outcomes.count(False)


def test_the_last_step_of_a_sign_in_answers_its_request_once_when_posted_six_times_at_once(racing):
    """A sign-in is completed, and the authorization request it was begun for answered, once: of six posts at once
    of the password that completes it, in the browser that began it, one starts a session and gets the code; the
    others find the sign-in completed (the expired page)."""
    app = racing
    client_id, _ = make_client_in(app, first_party=True)
    http = app.test_client()
    page = http.get(authorize_url(client_id))
    assert step_name(page) == "password"
    responses = at_once(6, lambda i: same_browser(app, http),
                        lambda browser: post_form(browser, page, email=ALICE, password=PASSWORD))
    answered = [r for r in responses if "code=" in r.headers.get("Location", "")]
    assert len(answered) == 1, [(r.status_code, r.headers.get("Location")) for r in responses]
    assert {r.status_code for r in responses if r not in answered} == {400}
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(LoginSession)).scalar_one() == 1
        assert db.session.execute(db.select(db.func.count()).select_from(AuthorizationCode)).scalar_one() == 1
    assert len(audit_events(app, "login.success")) == 1
