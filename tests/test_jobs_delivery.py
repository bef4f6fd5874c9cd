"""When a job goes out (idp.jobs): once the transaction that asked for it commits, never for work that rolled back;
with Redis down, from the request itself; and a worker killed mid-job loses no mail (idp.jobs.rq_worker)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from flask import Blueprint
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from idp.extensions import csrf, db
from idp.jobs import enqueue
from idp.jobs.mail import read_outbox
from idp.models import Factor, User, utcnow
from tests.conftest import SECRET, TEST_REDIS_URL
from tests.support import (
    PASSWORD,
    Mailbox,
    _Handler,
    audit_events,
    code_in,
    csrf_token,
    free_port,
    link_in,
    make_user_in,
    sign_in,
    signed_in_email,
)

NEEDS_REDIS = pytest.mark.skipif(not TEST_REDIS_URL, reason="RQ needs Redis: set IDP_TEST_REDIS_URL")
ROOT = Path(__file__).resolve().parent.parent
CLOSED_PORT = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every connection is refused at once


@pytest.fixture(params=["inline", pytest.param("rq", marks=NEEDS_REDIS)])
def jobs_app(request, make_app):
    """The app with jobs run inline (no Redis) or on RQ."""
    return make_app(IDP_REDIS_URL="" if request.param == "inline" else TEST_REDIS_URL)


def _asks_for_a_mail(app) -> None:
    """A page that creates a user and asks for a mail to them; it fails after asking when told to."""
    pages = Blueprint("tests_jobs", __name__)

    @pages.post("/tests/bob/<outcome>")
    @csrf.exempt
    def bob(outcome: str) -> str:
        db.session.add(User(email="bob@example.com", name="Bob"))
        enqueue("send_mail", to="bob@example.com", template="password_changed", context={"name": "Bob"})
        if outcome == "fails":
            raise RuntimeError("the request fails after asking for the mail")
        db.session.commit()
        return "saved"

    app.register_blueprint(pages)


def _bobs(app) -> int:
    with app.app_context():
        return len(db.session.execute(db.select(User.id).where(User.email == "bob@example.com")).all())


def test_a_request_that_fails_after_asking_for_a_mail_sends_none(jobs_app, smtp_server, caplog):
    app = jobs_app
    _asks_for_a_mail(app)
    mailbox = Mailbox(app, smtp_server)
    smtp_server.messages.clear()
    client = app.test_client()
    with caplog.at_level(logging.INFO, "idp.jobs"):
        assert client.post("/tests/bob/fails").status_code == 500
    assert _bobs(app) == 0
    queue = app.extensions["idp.queue"]
    if queue is not None:
        assert queue.count == 0  # nothing reached the queue
    assert mailbox.messages("bob@example.com") == []
    assert "job send_mail dropped: the transaction that asked for it did not commit" in caplog.messages

    assert client.post("/tests/bob/commits").status_code == 200
    assert _bobs(app) == 1
    if queue is not None:
        assert queue.count == 1 and smtp_server.messages == []  # queued by the commit, for the worker
    assert [m["subject"] for m in mailbox.messages("bob@example.com")] == ["Your password was changed"]


def test_a_job_asked_for_inside_a_savepoint_that_rolls_back_goes_with_it(jobs_app, smtp_server):
    """Jobs follow the transaction they were asked for in, down to SAVEPOINTs: the outer one's still go out."""
    app = jobs_app
    smtp_server.messages.clear()

    def mail(to: str) -> None:
        enqueue("send_mail", to=to, template="password_changed", context={"name": "Someone"})

    with app.app_context():
        mail("outer@example.com")
        with pytest.raises(RuntimeError), db.session.begin_nested():
            mail("rolled-back@example.com")
            raise RuntimeError("the savepoint rolls back")
        with db.session.begin_nested():
            mail("released@example.com")
        db.session.commit()
    assert sorted(m["to"] for m in Mailbox(app, smtp_server).messages()) == \
        ["outer@example.com", "released@example.com"]


def test_a_replayed_refresh_token_mails_its_owner_once(app, client, make_user, make_client, mailbox):
    """The stolen-token mail goes out with the revocation that found the replay (one commit); a later replay,
    which revokes nothing more, sends no other."""
    from tests.test_oidc_protocol import refresh, tokens

    make_user()
    conf = make_client(name="Conf App", first_party=True)
    old = tokens(client, *conf)["refresh_token"]
    assert refresh(client, *conf, old).status_code == 200
    for _replay in range(2):
        assert refresh(client, *conf, old).status_code == 400
    [mail] = [m for m in mailbox.messages("alice@example.com") if "stolen" in m["subject"]]
    assert "Conf App" in mail["text"]


# --- Redis down -------------------------------------------------------------------------------------------------

def _queue_down(app) -> None:
    """Point the app's job queue at a Redis that refuses every connection, as init_app binds it (the rate limits
    keep their own storage: this is about jobs)."""
    app.extensions["idp.queue"] = Queue(app.config["IDP_QUEUE_NAME"], connection=Redis.from_url(CLOSED_PORT))


def _inline_events(app) -> list[tuple[str, str]]:
    return [(row.details["job"], row.details["reason"]) for row in audit_events(app, "job.inline")]


def test_with_redis_down_the_sign_up_mail_goes_out_from_the_request(make_app, smtp_server, caplog):
    app = make_app()
    _queue_down(app)
    smtp_server.messages.clear()
    client = app.test_client()
    page = client.get("/signup")
    with caplog.at_level(logging.WARNING, "idp.jobs"):
        response = client.post("/signup", data={"csrf_token": csrf_token(page), "email": "new@example.com",
                                                "name": "New Person", "password": PASSWORD})
        assert response.status_code == 302
        step = client.get(response.headers["Location"])
    assert step.status_code == 200
    [message] = [m for m in smtp_server.messages if m["to"] == "new@example.com"]
    assert message["subject"] == "Verify your email address"
    code = code_in(message)
    assert "job queued inline: redis unavailable (job send_mail, ConnectionError)" in caplog.messages
    assert _inline_events(app) == [("send_mail", "redis unavailable")]
    done = client.post(response.headers["Location"], data={"csrf_token": csrf_token(step),
                                                            "step": "email_verification", "code": code})
    assert done.status_code == 302


def test_with_redis_down_a_forgotten_password_mail_goes_out(make_app, smtp_server):
    app = make_app()
    make_user_in(app)
    _queue_down(app)
    smtp_server.messages.clear()
    client = app.test_client()
    page = client.get("/forgot")
    answer = client.post("/forgot", data={"csrf_token": csrf_token(page), "email": "alice@example.com"})
    assert answer.status_code == 200 and "If an account exists" in answer.get_data(as_text=True)
    [message] = smtp_server.messages
    assert message["to"] == "alice@example.com" and message["subject"] == "Reset your password"
    assert link_in(message, "/reset#")
    # The request ran the reset job, and the job the mail it asked for in turn (Redis still down for it).
    assert _inline_events(app) == [("start_password_reset", "redis unavailable"), ("send_mail", "redis unavailable")]
    assert len(audit_events(app, "password.reset_requested")) == 1


def test_with_redis_down_a_sign_in_code_is_texted_and_the_sign_in_completes(make_app):
    app = make_app(IDP_SMS_BACKEND="outbox")
    user = make_user_in(app)
    with app.app_context():
        now = utcnow()
        db.session.add(Factor(user_id=user.id, kind="sms", name="Phone", phone="+14155550123", created_at=now,
                              confirmed_at=now))
        db.session.commit()
    _queue_down(app)
    browser = app.test_client()
    response = sign_in(browser, "alice@example.com")
    page = browser.get(response.headers["Location"])
    assert 'name="step" value="sms"' in page.get_data(as_text=True)
    [text] = [m for m in read_outbox(app.config["IDP_OUTBOX_DIR"]) if m.get("channel") == "sms"]
    assert text["to"] == "+14155550123"
    code = re.search(r"\b(\d{6})\b", text["text"])
    assert code
    done = browser.post(response.headers["Location"], data={"csrf_token": csrf_token(page), "step": "sms",
                                                            "code": code.group(1)})
    browser.get(done.headers["Location"])
    assert signed_in_email(browser) == "alice@example.com"
    assert _inline_events(app) == [("send_sms", "redis unavailable")]


# --- a worker killed mid-job ------------------------------------------------------------------------------------

class StallingSMTP:
    """An SMTP server on loopback whose first session stalls: the client's EHLO gets no answer until the test
    releases it, so that session never hands a message over. Every later session delivers."""

    def __init__(self):
        self.messages: list[dict] = []
        self.stalled = threading.Event()  # the first session is waiting for its EHLO's answer
        self.released = threading.Event()
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._delivery = _Handler(self.messages)
        self._first = True

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname  # what aiosmtpd does itself when no handler takes EHLO over
        if self._first:
            self._first = False
            self.stalled.set()
            while not self.released.is_set():
                await asyncio.sleep(0.05)
        return responses

    async def handle_DATA(self, server, session, envelope):
        return await self._delivery.handle_DATA(server, session, envelope)

    def __enter__(self):
        self._controller.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self._controller.stop()


class WorkerProcess:
    """`idp worker` in a process of its own (and a session of its own), configured like the test's app, with
    one-second heartbeats and maintenance passes. Its output goes to a file, shown when a test fails."""

    def __init__(self, app, tmp_path: Path, smtp_port: int, name: str):
        cfg = app.config
        env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
        env.update(PYTHONPATH=str(ROOT), IDP_ENV="testing", IDP_SECRET_KEY=SECRET, IDP_ISSUER=cfg["IDP_ISSUER"],
                   IDP_DATABASE_URL=cfg["IDP_DATABASE_URL"], IDP_REDIS_URL=cfg["IDP_REDIS_URL"],
                   IDP_QUEUE_NAME=cfg["IDP_QUEUE_NAME"], IDP_MAIL_BACKEND="smtp", IDP_SMTP_HOST="127.0.0.1",
                   IDP_SMTP_PORT=str(smtp_port), IDP_SMTP_TIMEOUT="60",
                   IDP_JOB_RETRY_INTERVALS=",".join(str(s) for s in cfg["IDP_JOB_RETRY_INTERVALS"]),
                   IDP_WORKER_HEARTBEAT="1", IDP_WORKER_MAINTENANCE_INTERVAL="1")
        self.log = tmp_path / f"{name}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-c", "from idp.console import main; main()", "worker"],
                                            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def children(self) -> list[int]:
        """Its child processes: the work horse running a job (in a process group of its own) and the scheduler."""
        pid = self.process.pid
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def kill(self) -> None:
        """SIGKILL the worker and every process it started, as when its machine or container goes."""
        children = self.children()
        os.killpg(self.process.pid, signal.SIGKILL)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # a warm shutdown: the worker and its scheduler
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _wait_for(condition, what: str, workers: list[WorkerProcess], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s; workers said:\n"
                                 + "\n".join(worker.output() for worker in workers))
        time.sleep(0.1)


def _mail_alice(app) -> None:
    with app.app_context():
        enqueue("send_mail", to="alice@example.com", template="password_changed", context={"name": "Alice"})
        db.session.commit()


def _started(queue) -> list[str]:
    """The jobs in the queue's StartedJobRegistry, as they are: counting it as RQ does by default would run its
    cleanup here, in the test, instead of in the worker under test."""
    return StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)


def _job_audit(app) -> list[tuple[str, int, str]]:
    rows = [*audit_events(app, "job.retry"), *audit_events(app, "job.failed")]
    return [(row.event, row.details["attempt"], row.details["error"]) for row in sorted(rows, key=lambda r: r.id)]


@NEEDS_REDIS
@pytest.mark.parametrize("retries", [[0], []], ids=["one-retry-left", "no-retry-left"])
def test_a_job_whose_worker_is_killed_is_retried_by_the_next_worker(make_app, tmp_path, retries):
    """The worker and its work horse are SIGKILLed while the horse waits on the SMTP server. A new worker's
    maintenance pass finds the job abandoned once the dead worker's heartbeats stop: it delivers the mail once,
    with the retry audited; without a retry left, the job fails, audited, and nothing is sent."""
    app = make_app(IDP_JOB_RETRY_INTERVALS=retries)
    queue = app.extensions["idp.queue"]
    workers: list[WorkerProcess] = []
    with StallingSMTP() as smtp:
        try:
            _mail_alice(app)
            workers.append(WorkerProcess(app, tmp_path, smtp.port, "first"))
            _wait_for(smtp.stalled.is_set, "the first worker's SMTP session", workers)
            workers[0].kill()
            assert _started(queue) != []  # the job is left there, started

            workers.append(WorkerProcess(app, tmp_path, smtp.port, "second"))
            _wait_for(lambda: _job_audit(app), "the audit of the abandoned job", workers)
            if retries:
                _wait_for(lambda: smtp.messages, "the mail", workers)
                _wait_for(lambda: not _started(queue), "the job's end", workers)
            workers[1].stop()
        finally:
            for worker in workers:
                worker.stop()
        smtp.released.set()
        if retries:
            assert [(m["to"], m["subject"]) for m in smtp.messages] == [("alice@example.com",
                                                                         "Your password was changed")]
            assert _job_audit(app) == [("job.retry", 1, "AbandonedJobError")]
            assert FailedJobRegistry(queue=queue).get_job_ids(cleanup=False) == []
        else:
            assert smtp.messages == []
            assert _job_audit(app) == [("job.failed", 1, "AbandonedJobError")]
            assert len(FailedJobRegistry(queue=queue).get_job_ids(cleanup=False)) == 1
        assert queue.count == 0


@NEEDS_REDIS
def test_a_job_whose_work_horse_is_killed_is_retried_by_its_worker(make_app, tmp_path):
    """Only the work horse dies (the kernel's OOM killer, say): the worker that forked it retries the job itself,
    and audits the attempt."""
    app = make_app(IDP_JOB_RETRY_INTERVALS=[0])
    workers: list[WorkerProcess] = []
    with StallingSMTP() as smtp:
        try:
            _mail_alice(app)
            workers.append(WorkerProcess(app, tmp_path, smtp.port, "worker"))
            _wait_for(smtp.stalled.is_set, "the worker's SMTP session", workers)
            # The horse is the child whose process group is its own (the scheduler shares the worker's).
            [horse] = [pid for pid in workers[0].children() if os.getpgid(pid) == pid]
            os.kill(horse, signal.SIGKILL)
            _wait_for(lambda: smtp.messages, "the mail", workers)
            assert workers[0].process.poll() is None  # the worker lives on
        finally:
            for worker in workers:
                worker.stop()
    assert [m["to"] for m in smtp.messages] == ["alice@example.com"]
    assert _job_audit(app) == [("job.retry", 1, "WorkHorseKilled")]
