"""The audit log: no secret reaches a row (SECURITY.md 30), and a refusal is recorded even when the request that
refuses rolls its work back (SECURITY.md 29)."""

from __future__ import annotations

import pytest

from idp import audit
from idp.extensions import db
from idp.models import AuditEvent
from tests.support import audit_events, csrf_token, make_user_in, outbox_sms, signed_in_email, walk

# Every name a secret goes by in idp's forms and in the protocols it speaks; listed here, not read from idp.audit,
# so that shrinking or deleting the guard fails this test.
SECRET_NAMES = ["password", "new_password", "current_password", "code", "otp", "recovery_code", "code_verifier",
                "token", "access_token", "refresh_token", "id_token", "id_token_hint", "client_assertion", "secret",
                "client_secret", "seed", "private_key"]


def rows(app) -> int:
    with app.app_context():
        return db.session.execute(db.select(db.func.count()).select_from(AuditEvent)).scalar_one()


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_secret_named_detail_is_refused_and_nothing_is_written(app, name):
    with app.test_request_context():
        with pytest.raises(ValueError, match=name):
            audit.record("test.event", **{name: "s3cr3t-value"})
        db.session.commit()
    assert rows(app) == 0


def test_details_with_other_names_are_recorded(app):
    with app.test_request_context():
        audit.record("test.event", token_type="refresh_token", with_refresh_token=True, commit=True)
    assert audit_events(app, "test.event")[0].details == {"token_type": "refresh_token", "with_refresh_token": True}


def test_a_durable_row_survives_the_rollback_of_its_transaction_and_is_written_once(app):
    with app.test_request_context():
        audit.record("test.refused", reason="kept", durable=True)
        audit.record("test.ordinary", reason="rolled back")
        db.session.rollback()
        audit.record("test.refused", reason="committed", durable=True)
        db.session.commit()
        audit.record("test.refused", reason="closed", durable=True)
        db.session.close()  # the end of a request that neither commits nor rolls back
    assert [e.details["reason"] for e in audit_events(app, "test.refused")] == ["kept", "committed", "closed"]
    assert audit_events(app, "test.ordinary") == []


def test_an_sms_refused_by_the_caps_during_enrolment_is_audited_once(make_app):
    """The phone page renders the refusal without committing: the sms.capped row must stay all the same."""
    app = make_app(IDP_SMS_CAP_NUMBER="1/day")
    make_user_in(app)
    client = app.test_client()
    walk(client, "/login")
    assert signed_in_email(client) == "alice@example.com"
    for _ in range(2):
        page = client.get("/account/security/phone/new")
        response = client.post("/account/security/phone/new", data={"csrf_token": csrf_token(page),
                                                                    "phone": "+1 415 555 0123"})
    assert response.status_code == 200 and "Too many text messages" in response.get_data(as_text=True)
    assert len(outbox_sms(app)) == 1
    capped = audit_events(app, "sms.capped")
    assert len(capped) == 1 and capped[0].subject_email == "alice@example.com"
