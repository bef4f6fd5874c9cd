"""No secret in a log line (SECURITY.md 30): request lines with their query secrets redacted, no SQL parameters."""

from __future__ import annotations

import logging
import time

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from idp import logs
from idp.extensions import db

HINT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZS1zZWNyZXQifQ.c2lnbmF0dXJlLXNlY3JldA"


def test_a_request_line_is_logged_with_its_id_token_hint_redacted(live_server, caplog):
    caplog.set_level(logging.INFO, logger="werkzeug")
    requests.get(f"{live_server.url}/end-session?id_token_hint={HINT}&state=s-1", timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server thread logs the line after answering
        lines = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
        if any("/end-session" in line for line in lines):
            break
        time.sleep(0.02)
    assert any("id_token_hint=[redacted]&state=s-1" in line for line in lines), lines
    assert HINT not in caplog.text


def test_gunicorn_access_lines_are_redacted_too(app):
    """gunicorn hands its access logger a dict of atoms: the request line ('r'), the query ('q'), the path ('U')."""
    atoms = {"h": "203.0.113.7", "r": "GET /cb?state=1&code=SECRET-CODE HTTP/1.1", "q": "code=SECRET-CODE&state=1",
             "U": "/reset/SECRET-LINK-TOKEN", "s": "200"}
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, '%(h)s "%(r)s" %(s)s %(q)s %(U)s',
                               (atoms,), None)
    assert logging.getLogger("gunicorn.access").filter(record)
    message = record.getMessage()
    assert "SECRET" not in message
    assert message == ('203.0.113.7 "GET /cb?state=1&code=[redacted] HTTP/1.1" 200 code=[redacted]&state=1 '
                       "/reset/[redacted]")


def test_a_database_error_is_logged_without_its_values(app, caplog):
    value = "-".join(["SECRET", "PARAMETER"])  # not in the source lines that a traceback quotes

    @app.get("/broken-query")
    def broken_query():
        db.session.execute(text("SELECT * FROM no_such_table WHERE secret = :value"), {"value": value})

    response = app.test_client().get("/broken-query")
    assert response.status_code == 500 and "SECRET" not in response.get_data(as_text=True)
    assert "unhandled database error on GET /broken-query" in caplog.text
    assert "no_such_table" in caplog.text  # the statement, with a placeholder for the value
    assert "SECRET-PARAMETER" not in caplog.text


def test_sql_parameters_are_hidden_from_database_exceptions(app):
    with app.app_context():
        with pytest.raises(DBAPIError) as failure:
            db.session.execute(text("SELECT * FROM no_such_table WHERE secret = :value"), {"value": "SECRET"})
        db.session.rollback()
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(failure.value)
    assert "parameters: " not in str(failure.value)


def test_a_percent_encoded_parameter_name_is_redacted_as_the_server_reads_it():
    from idp.logs import redact

    line = "GET /cb?state=1&co%64e=SeCrEt1&%72efresh_token=SeCrEt2&Token=SeCrEt3&tokenish=kept HTTP/1.1"
    redacted = redact(line)
    assert "SeCrEt" not in redacted and "tokenish=kept" in redacted and "state=1" in redacted


def test_outside_a_request_only_a_request_line_passes_below_warning(app, capfd):
    """A request line written before Flask (idp.prepared) carries its request's id and is written; any other INFO
    line outside a request stays out of standard error, whatever it carries (`idp clients create --json`)."""
    logging.getLogger("idp.jobs").info("a job's detail", extra={"request_id": "smuggled"})
    logs.request_line("GET", "/jwks.json", "/jwks.json", 200, None, "192.0.2.1", None, None, "rid-outside")
    err = capfd.readouterr().err
    assert "a job's detail" not in err
    assert "rid-outside" in err and "GET /jwks.json 200" in err
