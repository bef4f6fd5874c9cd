"""Text messages through Twilio's Messages API: the real twilio client runs, with a recording HTTP client in place
of the network, and the tests assert the request it sends (SECURITY.md 23)."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest
from twilio.http import HttpClient
from twilio.http.response import Response

from idp.extensions import db
from idp.models import Factor, User, utcnow
from tests.support import audit_events, csrf_token, drain_jobs, make_user_in, sign_in, signed_in_email

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "x"
SENDER = "+15005550006"
SERVICE = "MG" + "fedcba9876543210" * 2
PHONE = "+14155550123"
ALICE = "alice@example.com"
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"


class RecordingHttpClient(HttpClient):
    """Answers like the Messages API (or with an error) and keeps every request it was asked to send."""

    def __init__(self, status: int = 201):
        super().__init__(logger=logging.getLogger("tests.twilio"), is_async=False)
        self.status = status
        self.calls: list[dict] = []

    def request(self, method, url, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        self.calls.append({"method": method, "url": url, "params": params, "data": dict(data or {}),
                           "headers": dict(headers or {}), "auth": auth})
        if self.status >= 400:
            body = {"code": 21211, "message": "The 'To' number is not a valid phone number.",
                    "more_info": "https://www.twilio.com/docs/errors/21211", "status": self.status}
        else:
            body = {"sid": "SM" + "ab" * 16, "account_sid": SID, "to": (data or {}).get("To"),
                    "from": (data or {}).get("From"), "messaging_service_sid": (data or {}).get("MessagingServiceSid"),
                    "body": (data or {}).get("Body"), "status": "queued", "num_segments": "1", "direction":
                    "outbound-api", "api_version": "2010-04-01", "uri": f"/2010-04-01/Accounts/{SID}/Messages/SM.json"}
        return Response(self.status, json.dumps(body))


def twilio_app(make_app, status: int = 201, **extra):
    settings = {"IDP_SMS_BACKEND": "twilio", "IDP_TWILIO_ACCOUNT_SID": SID, "IDP_TWILIO_AUTH_TOKEN": TOKEN,
                "IDP_TWILIO_FROM": SENDER, **extra}
    app = make_app(**settings)
    recorder = RecordingHttpClient(status)
    app.extensions["idp.twilio_http_client"] = recorder
    make_user_in(app)
    return app, recorder


def signed_in(app):
    browser = app.test_client()
    response = sign_in(browser, ALICE)
    assert response.status_code == 302
    browser.get(response.headers["Location"])
    assert signed_in_email(browser) == ALICE
    return browser


def add_phone(browser, phone: str = "+1 415 555 0123"):
    page = browser.get("/account/security/phone/new")
    return browser.post("/account/security/phone/new", data={"csrf_token": csrf_token(page), "phone": phone})


def code_from(call: dict) -> str:
    match = re.search(r"\b(\d{6})\b", call["data"]["Body"])
    assert match, call["data"]["Body"]
    return match.group(1)


def test_phone_verification_code_is_sent_through_the_messages_api(make_app):
    app, recorder = twilio_app(make_app)
    browser = signed_in(app)
    response = add_phone(browser)
    assert response.status_code == 302 and response.headers["Location"].endswith("/phone/verify")
    drain_jobs(app)
    assert len(recorder.calls) == 1
    call = recorder.calls[0]
    assert call["method"] == "POST" and call["url"] == MESSAGES_URL
    assert call["data"]["To"] == PHONE and call["data"]["From"] == SENDER
    assert "MessagingServiceSid" not in call["data"]
    assert call["auth"] == (SID, TOKEN)
    code = code_from(call)
    assert re.fullmatch(r"\d{6}", code)
    verify = browser.get("/account/security/phone/verify")
    done = browser.post("/account/security/phone/verify", data={"csrf_token": csrf_token(verify), "code": code})
    assert done.status_code == 302
    with app.app_context():
        factor = db.session.execute(db.select(Factor)).scalar_one()
        assert factor.kind == "sms" and factor.phone == PHONE
    assert not audit_events(app, "job.failed")


def test_messaging_service_replaces_the_sender_number(make_app):
    app, recorder = twilio_app(make_app, IDP_TWILIO_FROM="", IDP_TWILIO_MESSAGING_SERVICE_SID=SERVICE)
    add_phone(signed_in(app))
    drain_jobs(app)
    assert len(recorder.calls) == 1
    data = recorder.calls[0]["data"]
    assert recorder.calls[0]["url"] == MESSAGES_URL
    assert data["MessagingServiceSid"] == SERVICE and "From" not in data
    assert data["To"] == PHONE and code_from(recorder.calls[0])


def test_sign_in_code_goes_through_twilio(make_app):
    app, recorder = twilio_app(make_app)
    with app.app_context():
        user = db.session.execute(db.select(User)).scalar_one()
        now = utcnow()
        db.session.add(Factor(user_id=user.id, kind="sms", name="Phone", phone=PHONE, created_at=now,
                              confirmed_at=now))
        db.session.commit()
    browser = app.test_client()
    response = sign_in(browser, ALICE)
    page = browser.get(response.headers["Location"])
    assert 'name="step" value="sms"' in page.get_data(as_text=True)
    drain_jobs(app)
    assert len(recorder.calls) == 1 and recorder.calls[0]["data"]["To"] == PHONE
    assert "sign-in code" in recorder.calls[0]["data"]["Body"]
    done = browser.post(response.headers["Location"], data={"csrf_token": csrf_token(page), "step": "sms",
                                                            "code": code_from(recorder.calls[0])})
    browser.get(done.headers["Location"])
    assert signed_in_email(browser) == ALICE
    header = recorder.calls[0]["headers"]
    assert "User-Agent" in header and "twilio-python" in header["User-Agent"]
    assert base64.b64encode(f"{SID}:{TOKEN}".encode()).decode() not in json.dumps(
        [e.details for e in audit_events(app, "login.success")])


def test_twilio_error_is_retried_and_audited_without_a_500(make_app):
    app, recorder = twilio_app(make_app, status=400, IDP_JOB_RETRY_INTERVALS=[0])
    browser = signed_in(app)
    response = add_phone(browser)
    assert response.status_code == 302  # the user goes on to the code page; the failure is the job's
    drain_jobs(app)
    assert browser.get("/account/security/phone/verify").status_code == 200
    retries, failures = audit_events(app, "job.retry"), audit_events(app, "job.failed")
    assert retries and len(failures) == 1
    assert len(recorder.calls) == len(retries) + 1 >= 2
    assert all(e.details["job"] == "send_sms" for e in retries + failures)
    assert failures[0].details["error"] == "TwilioRestException"
    with app.app_context():  # the number was not added
        assert db.session.execute(db.select(Factor)).first() is None
    dumped = json.dumps([e.details for e in retries + failures])
    assert PHONE not in dumped and code_from(recorder.calls[0]) not in dumped


@pytest.mark.parametrize("missing", ["IDP_TWILIO_ACCOUNT_SID", "IDP_TWILIO_AUTH_TOKEN", "IDP_TWILIO_FROM"])
def test_production_refuses_a_twilio_backend_without_its_settings(missing):
    from idp.config import ConfigError, check_production

    settings = {"IDP_SECRET_KEY": "s" * 40, "IDP_ISSUER": "https://id.example", "IDP_REDIS_URL": "redis://r",
                "IDP_DATABASE_URL": "postgresql://db/idp", "IDP_MAIL_BACKEND": "smtp", "IDP_SMS_BACKEND": "twilio",
                "IDP_TWILIO_ACCOUNT_SID": SID, "IDP_TWILIO_AUTH_TOKEN": TOKEN, "IDP_TWILIO_FROM": SENDER}
    check_production(settings)
    with pytest.raises(ConfigError, match="IDP_SMS_BACKEND=twilio"):
        check_production({**settings, missing: ""})
