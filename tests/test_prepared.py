"""The discovery document and the JWK Set answered before Flask (idp.prepared, issue 22): Flask's own answer, with
a request id, a request line and a count of their own, never a JWK Set older than the keys, and every request that
is not a plain GET left to Flask."""

from __future__ import annotations

import json
import logging
import re

import pytest
from flask import request
from prometheus_client import REGISTRY

from idp import metrics
from idp.extensions import db
from idp.oidc import keys
from idp.security.network import PEER_ADDR
from tests.conftest import TEST_DATABASE_URL
from tests.support import settled

DISCOVERY = "/.well-known/openid-configuration"
POSTGRESQL = TEST_DATABASE_URL.startswith("postgresql")


@pytest.fixture
def watched(make_app):
    """An app and the paths of the requests Flask itself handled (a hook registered before any request)."""

    def build(**settings):
        app = make_app(**settings)
        seen: list[str] = []
        app.before_request(lambda: seen.append(request.path))
        return app, seen

    return build


def _without_id(headers) -> list[tuple[str, str]]:
    return sorted((name, value) for name, value in headers.items() if name != "X-Request-ID")


@pytest.mark.parametrize("path", [DISCOVERY, "/.well-known/oauth-authorization-server"])
def test_a_plain_get_of_the_metadata_gets_flasks_answer_without_flask(watched, path):
    app, seen = watched()
    client = app.test_client()
    first, second, third = (client.get(path) for _ in range(3))
    assert seen == [path, path]  # the view prepares the document, the second answer is kept, the third given here
    assert third.status_code == 200 and third.get_data() == second.get_data() == first.get_data()
    assert _without_id(third.headers) == _without_id(second.headers)
    # What the hooks put on every answer is on this one (SECURITY.md 16), and CORS and caching as the view sets them.
    assert third.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in \
        third.headers["Content-Security-Policy"] and third.headers["X-Content-Type-Options"] == "nosniff"
    assert third.headers["Access-Control-Allow-Origin"] == "*"
    assert third.headers["ETag"] and third.headers["Cache-Control"] == "public, max-age=3600"
    ids = {answer.headers["X-Request-ID"] for answer in (first, second, third)}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)
    assert json.loads(third.get_data())["issuer"] == app.config["IDP_ISSUER"]


def _samples(path: str) -> float:
    return REGISTRY.get_sample_value("idp_http_requests_total",
                                     {"method": "GET", "route": path, "status": "200"}) or 0.0


def test_an_answer_given_here_is_logged_and_counted_like_any_request(watched, caplog):
    app, seen = watched(IDP_TRUSTED_PROXIES=["127.0.0.1/32"])
    client = app.test_client()
    client.get(DISCOVERY)
    client.get(DISCOVERY)
    before = _samples(DISCOVERY)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="idp.request"):
        answer = client.get(DISCOVERY, headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "proxy-id-17"})
    assert len(seen) == 2  # given here
    assert answer.headers["X-Request-ID"] == "proxy-id-17"  # the trusted proxy's id, as Flask's hook keeps it
    lines = [record for record in caplog.records if record.name == "idp.request"]
    assert len(lines) == 1
    line = lines[0]
    assert line.request_id == "proxy-id-17"
    assert line.fields["route"] == DISCOVERY and line.fields["status"] == 200
    assert line.fields["ip"] == "203.0.113.9"  # resolved through IDP_TRUSTED_PROXIES (SECURITY.md 33)
    assert line.fields["duration_ms"] is not None
    assert _samples(DISCOVERY) == before + 1


def test_an_id_from_an_untrusted_peer_is_replaced_here_too(watched):
    app, seen = watched()  # no trusted proxies
    client = app.test_client()
    answers = [client.get(DISCOVERY, headers={"X-Request-ID": "not an id"}) for _ in range(3)]
    assert len(seen) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-ID"]) for answer in answers)


@pytest.mark.parametrize("variant", ["query", "conditional", "head", "authorization", "nul", "post"])
def test_what_is_not_a_plain_get_goes_through_flask(watched, variant):
    app, seen = watched()
    client = app.test_client()
    etag = [client.get(DISCOVERY) for _ in range(3)][-1].headers["ETag"]
    assert len(seen) == 2
    if variant == "query":
        answer = client.get(DISCOVERY + "?x=1")
        assert answer.status_code == 200
    elif variant == "conditional":
        answer = client.get(DISCOVERY, headers={"If-None-Match": etag})
        assert answer.status_code == 304
    elif variant == "head":
        answer = client.head(DISCOVERY)
        assert answer.status_code == 200 and answer.get_data() == b""
    elif variant == "authorization":
        answer = client.get(DISCOVERY, headers={"Authorization": "Basic Y2xpZW50OnNlY3JldA=="})
        assert answer.status_code == 200
    elif variant == "nul":
        answer = client.get(DISCOVERY, headers={"X-Anything": "a\x00b"})
        # SECURITY.md 31: refused in the caller's form by Flask's first hooks (before the test's own: no count)
        assert answer.status_code == 400
        return
    else:
        answer = client.post(DISCOVERY)
        assert answer.status_code == 405
    assert len(seen) == 3


@pytest.mark.skipif(POSTGRESQL, reason="on SQLite there is no change listener")
def test_without_a_change_listener_every_jwks_request_reads_the_keys_through_flask(watched):
    app, seen = watched()
    client = app.test_client()
    for _ in range(4):
        assert client.get("/jwks.json").status_code == 200
    assert seen == ["/jwks.json"] * 4


def _kids(answer) -> set[str]:
    return {key["kid"] for key in json.loads(answer.get_data())["keys"]}


@pytest.mark.skipif(not POSTGRESQL, reason="the kept JWK Set needs PostgreSQL's LISTEN/NOTIFY")
def test_the_jwks_given_here_is_never_older_than_the_keys(watched):
    app, seen = watched()
    client = app.test_client()
    answers = [client.get("/jwks.json") for _ in range(4)]
    settled(app)
    answers += [client.get("/jwks.json") for _ in range(2)]
    assert len(seen) < len(answers)  # once the listener trusts what was kept, answers are given here
    assert len({answer.get_data() for answer in answers}) == 1
    before = _kids(answers[-1])
    with app.app_context():
        new = {row.kid for row in keys.rotate(max_token_lifetime=keys.longest_token_lifetime())}
        db.session.commit()
    flask_before = len(seen)
    after = client.get("/jwks.json")
    assert new <= _kids(after) and before <= _kids(after)  # the new key at once; the old one still published
    assert len(seen) == flask_before + 1  # the change sent this request through Flask
    settled(app)
    again = [client.get("/jwks.json") for _ in range(3)]
    assert all(_kids(answer) == _kids(after) for answer in again)


def test_an_answer_given_here_leaves_the_client_address_for_the_access_log(watched):
    app, seen = watched(IDP_TRUSTED_PROXIES=["127.0.0.1/32"])
    environs: list[dict] = []
    inner = app.wsgi_app

    def server(environ, start_response):  # what gunicorn's access log sees: the environ the app was given
        environs.append(environ)
        return inner(environ, start_response)

    app.wsgi_app = server
    client = app.test_client()
    for _ in range(3):
        client.get(DISCOVERY, headers={"X-Forwarded-For": "203.0.113.9"})
    assert len(seen) == 2
    # deploy/gunicorn.conf.py's access line reads these, as it does after Flask's idp.http.client_address.
    assert environs[2]["REMOTE_ADDR"] == "203.0.113.9" and environs[2][PEER_ADDR] == "127.0.0.1"


def test_when_counting_fails_flask_answers_with_its_error_page(watched, monkeypatch):
    app, seen = watched()
    client = app.test_client()
    for _ in range(2):
        client.get(DISCOVERY)

    def broken(*args, **kwargs):
        raise OSError("the metrics' folder is gone")

    monkeypatch.setattr(metrics, "count_request", broken)
    answer = client.get(DISCOVERY)
    assert len(seen) == 3  # not given here: Flask's path, whose error handler answers
    assert answer.status_code == 500 and answer.headers["X-Frame-Options"] == "DENY"
