"""Mail jobs: the dev outbox, the development-only outbox pages, retries and audit of failed deliveries, RQ."""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from idp.extensions import db
from idp.models import AuditEvent, User
from tests.conftest import TEST_REDIS_URL
from tests.support import PASSWORD, Mailbox, csrf_token, link_in, make_user_in, sign_in

NEEDS_REDIS = pytest.mark.skipif(not TEST_REDIS_URL, reason="RQ needs Redis: set IDP_TEST_REDIS_URL")


def _dead_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _outbox_app(make_app, **settings):
    app = make_app(**settings)
    # make_app pins the SMTP backend; mail settings are read at delivery time, so switching here is honest.
    app.config["IDP_MAIL_BACKEND"] = "outbox"
    return app


def _forgot(client, email="alice@example.com"):
    page = client.get("/forgot")
    return client.post("/forgot", data={"csrf_token": csrf_token(page), "email": email})


def _outbox_files(app) -> list[Path]:
    folder = Path(app.config["IDP_OUTBOX_DIR"])
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _job_events(app) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.execute(
            select(AuditEvent).where(AuditEvent.event.like("job.%")).order_by(AuditEvent.id)).scalars())


def test_outbox_backend_writes_one_json_file_per_message(make_app, smtp_server):
    app = _outbox_app(make_app)
    make_user_in(app)
    smtp_server.messages.clear()
    assert _forgot(app.test_client()).status_code == 200
    Mailbox(app, smtp_server).drain()
    [file] = _outbox_files(app)
    record = json.loads(file.read_text())
    assert {"to", "subject", "text", "html", "sent_at"} <= set(record)
    assert record["to"] == "alice@example.com"
    assert record["subject"] == "Reset your password"
    assert re.search(r"https?://\S+/reset#\S+", record["text"])
    assert "/reset#" in record["html"] and "<" in record["html"]
    assert datetime.fromisoformat(record["sent_at"]).tzinfo is not None
    assert smtp_server.messages == []  # nothing went out by SMTP


def test_dev_outbox_pages_do_not_exist_outside_development(client):
    assert client.get("/dev/outbox").status_code == 404
    assert client.get("/dev/outbox/anything").status_code == 404


def test_dev_outbox_lists_messages_and_shows_one_in_development(make_app, smtp_server):
    app = _outbox_app(make_app, IDP_ENV="development")
    make_user_in(app)
    client = app.test_client()
    assert "No messages yet" in client.get("/dev/outbox").get_data(as_text=True)
    _forgot(client)
    Mailbox(app, smtp_server).drain()
    listing = client.get("/dev/outbox")
    assert listing.status_code == 200
    text = listing.get_data(as_text=True)
    assert "alice@example.com" in text and "Reset your password" in text
    [file] = _outbox_files(app)
    assert f"/dev/outbox/{file.stem}" in text
    detail = client.get(f"/dev/outbox/{file.stem}")
    assert detail.status_code == 200
    body = detail.get_data(as_text=True)
    assert "Reset your password" in body and "/reset#" in body
    assert client.get("/dev/outbox/no-such-message").status_code == 404


def test_failed_delivery_is_retried_and_audited_and_the_request_still_answers(make_app, smtp_server):
    app = make_app(IDP_JOB_RETRY_INTERVALS=[0])  # on RQ: one immediate retry; inline: the short built-in backoff
    app.config["IDP_SMTP_PORT"] = _dead_port()
    make_user_in(app)
    response = _forgot(app.test_client())
    assert response.status_code == 200
    assert "If an account exists" in response.get_data(as_text=True)
    Mailbox(app, smtp_server).drain()
    events = _job_events(app)
    names = [e.event for e in events]
    assert names[-1] == "job.failed" and set(names[:-1]) == {"job.retry"}, names
    assert [e.details["attempt"] for e in events] == list(range(1, len(events) + 1))
    assert {e.details["job"] for e in events} == {"send_mail"}
    assert {e.details["error"] for e in events} == {"ConnectionRefusedError"}
    # The reset itself was recorded, so a later request (once mail works) follows the normal cooldown.
    with app.app_context():
        assert db.session.execute(
            select(AuditEvent).where(AuditEvent.event == "password.reset_requested")).scalar_one()


def test_failed_lock_mail_does_not_undo_the_lock(make_app, smtp_server):
    """The account.locked mail fails to go out: the account is still locked and the lock is still audited."""
    app = make_app(IDP_LOCKOUT_THRESHOLD=2, IDP_THROTTLE_ACCOUNT="100/minute")
    app.config["IDP_SMTP_PORT"] = _dead_port()
    make_user_in(app)
    for _ in range(2):
        sign_in(app.test_client(), "alice@example.com", "wrong guess number x")
    Mailbox(app, smtp_server).drain()
    with app.app_context():
        user = db.session.execute(select(User)).scalar_one()
        assert user.locked and user.failed_logins == 2
        events = db.session.execute(select(AuditEvent.event).order_by(AuditEvent.id)).scalars().all()
    assert events.count("account.locked") == 1
    assert events.count("login.failure") == 2
    assert "job.failed" in events


@NEEDS_REDIS
def test_with_redis_the_job_is_queued_then_delivered_by_a_worker(app, mailbox, make_user):
    make_user()
    queue = app.extensions["idp.queue"]
    assert queue is not None
    _forgot(app.test_client())
    assert queue.count == 1  # the request only enqueued
    assert mailbox.server.messages == []
    message = mailbox.last("alice@example.com", "Reset")  # runs a burst worker first
    assert link_in(message, "/reset#")
    assert queue.count == 0


@NEEDS_REDIS
def test_with_redis_a_sign_up_code_arrives_through_the_worker(app, mailbox):
    client = app.test_client()
    page = client.get("/signup")
    response = client.post("/signup", data={"csrf_token": csrf_token(page), "email": "new@example.com",
                                            "name": "New Person", "password": PASSWORD})
    client.get(response.headers["Location"])
    assert mailbox.server.messages == []
    assert re.search(r"\b\d{6}\b", mailbox.last("new@example.com", "Verify")["text"])
