"""The schema and the audit log: migrations match the models, the log is append-only, and it holds no secret
(SECURITY.md 29, 30)."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import unquote

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from idp.extensions import db
from idp.login.steps.password import GENERIC_FAILURE
from idp.models import AuditEvent, User
from idp.models.audit import AuditLogIsAppendOnly
from tests.support import PASSWORD, code_in, csrf_token, link_in, open_link, sign_in, signed_in_email, submit_link

NEW_PASSWORD = "a whole new passphrase for alice"
TYPO_PASSWORD = "correct horse battery stapel"


def test_migrations_match_the_models(app):
    """After `upgrade` (done by the database fixture), autogenerate finds nothing to add, drop or change."""
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def _some_audit_rows(app, client, make_user) -> int:
    make_user()
    sign_in(client, "alice@example.com", "not the right password")
    client.get(sign_in(client, "alice@example.com").headers["Location"])
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def _audit_snapshot(app) -> list[tuple]:
    with app.app_context():
        return [tuple(row) for row in db.session.execute(
            select(AuditEvent.id, AuditEvent.event, AuditEvent.ip, AuditEvent.details).order_by(AuditEvent.id))]


@pytest.mark.parametrize("statement", ["UPDATE audit_events SET event = 'tampered', ip = '0.0.0.0'",
                                       "DELETE FROM audit_events"])
def test_database_refuses_to_change_audit_rows(app, client, make_user, statement):
    assert _some_audit_rows(app, client, make_user) >= 2
    before = _audit_snapshot(app)
    with app.app_context(), db.engine.connect() as connection:
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(text(statement))
        connection.rollback()
        # The refusal is the audit log's own: other tables stay writable on the same connection.
        connection.execute(text("UPDATE users SET name = 'Alice B' WHERE email = 'alice@example.com'"))
        connection.commit()
    assert _audit_snapshot(app) == before
    with app.app_context():
        assert db.session.execute(select(User.name)).scalar_one() == "Alice B"


def test_orm_refuses_to_change_audit_rows(app, client, make_user):
    _some_audit_rows(app, client, make_user)
    before = _audit_snapshot(app)
    with app.app_context():
        row = db.session.execute(select(AuditEvent).order_by(AuditEvent.id).limit(1)).scalar_one()
        row.event = "tampered"
        with pytest.raises(AuditLogIsAppendOnly):
            db.session.commit()
        db.session.rollback()
        row = db.session.execute(select(AuditEvent).order_by(AuditEvent.id).limit(1)).scalar_one()
        db.session.delete(row)
        with pytest.raises(AuditLogIsAppendOnly):
            db.session.commit()
        db.session.rollback()
    assert _audit_snapshot(app) == before


def _link_token(link: str) -> str:
    return unquote(link.partition("#")[2])


def test_no_secret_reaches_an_audit_row_or_a_log_line(app, mailbox, caplog):
    caplog.set_level(logging.DEBUG)
    secrets: dict[str, str] = {"password": PASSWORD, "new password": NEW_PASSWORD, "typo": TYPO_PASSWORD}
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = "AuditCheck/1.0"
    # Sign up and verify by code; the same mail carries a link.
    page = client.get("/signup")
    started = client.post("/signup", data={"csrf_token": csrf_token(page), "email": "alice@example.com",
                                           "name": "Alice", "password": PASSWORD})
    step = client.get(started.headers["Location"])
    mail = mailbox.last("alice@example.com", "Verify")
    secrets["code"] = code_in(mail)
    verify_link = link_in(mail, "/verify-email#")
    client.post(started.headers["Location"], data={"csrf_token": csrf_token(step), "step": "email_verification",
                                                   "code": secrets["code"]})
    client.get(started.headers["Location"])
    assert signed_in_email(client) == "alice@example.com"
    secrets["session cookie 1"] = client.get_cookie("idp_session").value
    secrets["verify link"] = _link_token(verify_link)
    # Sign out, a typo, sign in again.
    page = client.get("/logout")
    client.post("/logout", data={"csrf_token": csrf_token(page)})
    assert str(GENERIC_FAILURE) in sign_in(client, "alice@example.com", TYPO_PASSWORD).get_data(as_text=True)
    client.get(sign_in(client, "alice@example.com").headers["Location"])
    secrets["session cookie 2"] = client.get_cookie("idp_session").value
    # Reset the password by link and sign in with the new one.
    page = client.get("/forgot")
    client.post("/forgot", data={"csrf_token": csrf_token(page), "email": "alice@example.com"})
    reset_link = link_in(mailbox.last("alice@example.com", "Reset"), "/reset#")
    secrets["reset link"] = _link_token(reset_link)
    form = open_link(client, reset_link)
    done = submit_link(client, reset_link, form, password=NEW_PASSWORD, confirm=NEW_PASSWORD)
    assert done.status_code == 302
    client.get(sign_in(client, "alice@example.com", NEW_PASSWORD).headers["Location"])
    assert signed_in_email(client) == "alice@example.com"
    secrets["session cookie 3"] = client.get_cookie("idp_session").value
    # The raw tokens inside the signed links.
    key = app.config["IDP_SECRET_KEY"]
    secrets["verify token"] = URLSafeTimedSerializer(key, salt="idp.verify_email").loads(secrets["verify link"])
    secrets["reset token"] = URLSafeTimedSerializer(key, salt="idp.password_reset").loads(secrets["reset link"])

    with app.app_context():
        rows = list(db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())
    events = [row.event for row in rows]
    for expected in ("user.signup", "email.verified", "login.success", "logout", "login.failure",
                     "password.reset_requested", "password.reset"):
        assert expected in events, events
    assert {row.user_agent for row in rows if row.event == "login.success"} == {"AuditCheck/1.0"}
    for row in rows:
        # Every text a row carries (its time is left out: a 6-digit code could match its microseconds).
        carried = "\n".join(str(v) for v in (row.event, row.subject_email, row.client_id, row.ip, row.user_agent,
                                             json.dumps(row.details)))
        for name, secret in secrets.items():
            if name == "code":
                assert not re.search(rf"\b{secret}\b", carried), f"{name} in audit row {row.event}"
            else:
                assert secret not in carried, f"{name} in audit row {row.event}"
    # Every log line of the run, the app's and the RQ worker's; only the test's own SMTP server (aiosmtpd's
    # "mail.log", which prints the mail it receives) is left out.
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                       if not r.name.startswith("mail.log"))
    assert "login.success" in logged
    for name, secret in secrets.items():
        assert secret not in logged, f"{name} in the log"

