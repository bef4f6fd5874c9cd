"""End-to-end flows through the hosted pages, with mail read from a real SMTP server on loopback."""

from idp.extensions import db
from idp.models import AuditEvent, LoginSession, User
from tests.support import PASSWORD, code_in, csrf_token, link_in, open_link, sign_in, signed_in_email, submit_link

NEW_PASSWORD = "a whole new passphrase for alice"


def _sign_up(client, email="new@example.com", password=PASSWORD, name="New Person"):
    page = client.get("/signup")
    return client.post("/signup", data={"csrf_token": csrf_token(page), "email": email, "name": name,
                                        "password": password})


def test_sign_up_verify_with_code_then_signed_in(app, client, mailbox):
    response = _sign_up(client)
    assert response.status_code == 302
    step = client.get(response.headers["Location"])
    assert "Verify your email" in step.get_data(as_text=True)
    mail = mailbox.last("new@example.com", "Verify")
    done = client.post(response.headers["Location"], data={"csrf_token": csrf_token(step), "step":
                                                           "email_verification", "code": code_in(mail)})
    # The last step's answer completes the sign-in and returns where it began.
    assert done.status_code == 302 and done.headers["Location"] == "/account"
    assert signed_in_email(client) == "new@example.com"
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == "new@example.com")).scalar_one()
        assert user.email_verified
        session = db.session.execute(db.select(LoginSession)).scalar_one()
        assert session.amr == ["pwd"]
        events = [e.event for e in db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars()]
        assert events == ["user.signup", "email.verified", "login.success", "device.new"]


def test_unverified_user_is_stopped_at_verification_and_resumes_by_link(app, client, mailbox, make_user):
    make_user(email="bob@example.com", verified=False)
    response = sign_in(client, "bob@example.com")
    assert response.status_code == 302
    step_url = response.headers["Location"]
    page = client.get(step_url)
    assert "Verify your email" in page.get_data(as_text=True)
    assert signed_in_email(client) is None  # cannot finish signing in yet
    link = link_in(mailbox.last("bob@example.com", "Verify"), "/verify-email#")
    confirm = open_link(client, link)
    assert confirm.status_code == 200
    resumed = submit_link(client, link, confirm, confirm="1")
    assert resumed.status_code == 302 and resumed.headers["Location"] == step_url
    final = client.get(step_url)
    assert final.headers["Location"] == "/account"
    assert signed_in_email(client) == "bob@example.com"


def test_sign_out_ends_the_session_server_side(app, client, make_user):
    make_user()
    step = sign_in(client, "alice@example.com")
    client.get(step.headers["Location"])
    assert signed_in_email(client) == "alice@example.com"
    cookie = client.get_cookie("idp_session").value
    page = client.get("/logout")
    response = client.post("/logout", data={"csrf_token": csrf_token(page)})
    assert "signed out" in response.get_data(as_text=True)
    assert signed_in_email(client) is None
    # Replaying the old cookie does not bring the session back.
    client.set_cookie("idp_session", cookie)
    assert signed_in_email(client) is None


def test_password_reset_by_link_ends_every_session(app, client, mailbox, make_user):
    make_user()
    other = app.test_client()
    other.get(sign_in(other, "alice@example.com").headers["Location"])
    assert signed_in_email(other) == "alice@example.com"
    page = client.get("/forgot")
    sent = client.post("/forgot", data={"csrf_token": csrf_token(page), "email": "Alice@Example.com"})
    assert "If an account exists" in sent.get_data(as_text=True)
    link = link_in(mailbox.last("alice@example.com", "Reset"), "/reset#")
    form = open_link(client, link)
    done = submit_link(client, link, form, password=NEW_PASSWORD, confirm=NEW_PASSWORD)
    assert done.status_code == 302 and done.headers["Location"] == "/login"
    assert signed_in_email(other) is None  # every session ended
    assert open_link(client, link).status_code == 400  # single use
    assert sign_in(client, "alice@example.com", PASSWORD).status_code == 200  # old password refused
    ok = sign_in(client, "alice@example.com", NEW_PASSWORD)
    client.get(ok.headers["Location"])
    assert signed_in_email(client) == "alice@example.com"
    assert "password of your account was just changed" in mailbox.last("alice@example.com", "changed")["text"]
