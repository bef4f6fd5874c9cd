"""Logout for every client (OpenID Connect Back-Channel Logout 1.0, Front-Channel Logout 1.0): whenever idp ends
a sign-in session, each client that the session signed into gets a logout token at its back-channel URI (a real
loopback receiver here), and the signed-out page frames its front-channel URI; clients that took no part hear
nothing; bad logout metadata is refused at registration."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.admin import service
from idp.extensions import db
from idp.login import devices
from idp.models import LoginSession, User
from idp.oidc.logout import BACKCHANNEL_EVENT
from tests.conftest import SECRET
from tests.support import (
    audit_events,
    authorize,
    csrf_token,
    drain_jobs,
    make_client_in,
    make_user_in,
    pkce_pair,
    signed_in_email,
)

RP_FRONT = "https://rp.example/front-logout"


class Receiver:
    """A loopback HTTP server standing in for clients' back-channel logout endpoints: it records each POST
    (path and form) and answers 503 to the first ``failures`` of them, then 200."""

    def __init__(self, failures: int = 0):
        self.received: list[tuple[str, dict[str, list[str]]]] = []
        self.failures = failures
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                with outer.lock:
                    failing = outer.failures > 0
                    outer.failures -= 1 if failing else 0
                    if not failing:
                        outer.received.append((self.path, {"content_type": [self.headers["Content-Type"]],
                                                           **parse_qs(body)}))
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def tokens(self, path: str) -> list[str]:
        with self.lock:
            return [form["logout_token"][0] for got, form in self.received if got == path]


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def factory(failures: int = 0) -> Receiver:
        server = Receiver(failures)
        server.thread.start()
        made.append(server)
        return server

    yield factory
    for server in made:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=10)


@pytest.fixture
def rp(make_user, make_client, receiver):
    """Alice; client A (back- and front-channel, takes part in her session); client B (back-channel, takes no
    part); the receiver of both."""
    make_user()
    server = receiver()
    a = make_client(name="A", first_party=True, backchannel_logout_uri=server.url + "/a",
                    frontchannel_logout_uri=RP_FRONT, frontchannel_logout_session_required=True)
    b = make_client(name="B", first_party=True, backchannel_logout_uri=server.url + "/b",
                    frontchannel_logout_uri="https://rp.example/b-front")
    return {"a": a, "b": b, "server": server}


def sign_in_to(client, app_client) -> dict:
    """A code flow for ``app_client`` in the browser ``client``; the ID token's claims and the token response."""
    verifier, challenge = pkce_pair()
    code = authorize(client, app_client[0], code_challenge=challenge, code_challenge_method="S256")
    body = client.post("/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                       "redirect_uri": "https://rp.example/cb"}, auth=app_client).get_json()
    claims = jwt.decode(body["id_token"], KeySet.import_key_set(client.get("/jwks.json").get_json())).claims
    return {"claims": claims, **body}


def verified_logout_token(client, token: str, audience: str) -> dict:
    decoded = jwt.decode(token, KeySet.import_key_set(client.get("/jwks.json").get_json()),
                         algorithms=["RS256", "ES256"])
    assert decoded.header["typ"] == "logout+jwt" and decoded.header["kid"]
    claims = decoded.claims
    assert claims["iss"] == "http://localhost" and claims["aud"] == audience
    assert claims["events"] == {BACKCHANNEL_EVENT: {}}
    assert "nonce" not in claims
    assert 0 < claims["exp"] - claims["iat"] <= 120 and claims["jti"]
    return claims


# --- the triggers ----------------------------------------------------------------------------------------------

def _rp_logout(app, client, signed):
    return client.get("/end-session?id_token_hint=" + signed["id_token"])


def _account_logout(app, client, signed):
    page = client.get("/logout")
    return client.post("/logout", data={"csrf_token": csrf_token(page)})


def _end_from_the_session_list(app, client, signed):
    page = client.get("/account")
    return client.post(f"/account/sessions/{signed['claims']['sid']}/end",
                       data={"confirm": "yes", "csrf_token": csrf_token(page)})


def _sign_out_everywhere(app, client, signed):
    page = client.get("/account")
    return client.post("/account/sessions/end-all", data={"confirm": "yes", "csrf_token": csrf_token(page)})


def _admin_ends_the_sessions(app, client, signed):
    with app.app_context():
        user = db.session.execute(db.select(User)).scalar_one()
        assert service.end_sessions(service.OPERATOR, user) == 1


def _admin_disables_the_user(app, client, signed):
    with app.app_context():
        service.disable(service.OPERATOR, db.session.execute(db.select(User)).scalar_one())


def _the_mails_end_session_link(app, client, signed):
    other = app.test_client()  # the link is opened anywhere, without a sign-in
    token = devices.sign_session(signed["claims"]["sid"], SECRET)
    link_page = other.get("/account/end-session")
    page = other.post("/account/end-session", data={"token": token, "csrf_token": csrf_token(link_page)})
    return other.post("/account/end-session", data={"token": token, "confirm": "yes", "csrf_token": csrf_token(page)})


TRIGGERS = [_rp_logout, _account_logout, _end_from_the_session_list, _sign_out_everywhere, _admin_ends_the_sessions,
            _admin_disables_the_user, _the_mails_end_session_link]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda f: f.__name__.strip("_"))
def test_every_way_a_session_ends_tells_the_clients_it_signed_into_and_no_other(app, client, rp, trigger):
    signed = sign_in_to(client, rp["a"])
    sid, sub = signed["claims"]["sid"], signed["claims"]["sub"]
    assert rp["server"].received == []  # signing in tells nobody
    trigger(app, client, signed)
    drain_jobs(app)
    with app.app_context():
        assert db.session.execute(db.select(LoginSession.ended_at).where(LoginSession.sid == sid)).scalar()
    [token] = rp["server"].tokens("/a")
    claims = verified_logout_token(client, token, rp["a"][0])
    assert claims["sid"] == sid and claims["sub"] == sub
    assert rp["server"].tokens("/b") == []  # B never took part
    assert rp["server"].received[0][1]["content_type"] == ["application/x-www-form-urlencoded"]
    [sent] = audit_events(app, "logout.backchannel_sent")
    assert sent.client_id == rp["a"][0] and sent.details["sid"] == sid


def test_a_session_that_signed_into_two_clients_tells_both_once(app, client, rp):
    first = sign_in_to(client, rp["a"])
    sign_in_to(client, rp["b"])
    sign_in_to(client, rp["a"])  # a second code for A in the same session: still one participant
    _account_logout(app, client, first)
    drain_jobs(app)
    assert len(rp["server"].tokens("/a")) == 1 and len(rp["server"].tokens("/b")) == 1
    b_claims = verified_logout_token(client, rp["server"].tokens("/b")[0], rp["b"][0])
    assert b_claims["sid"] == first["claims"]["sid"]


def test_one_session_ending_speaks_of_that_session_only(app, client, rp, make_user):
    alice = sign_in_to(client, rp["a"])
    make_user(email="bob@example.com", name="Bob")
    other = app.test_client()
    verifier, challenge = pkce_pair()
    code = authorize(other, rp["a"][0], email="bob@example.com", code_challenge=challenge,
                     code_challenge_method="S256")
    assert code
    page = other.get("/logout")
    other.post("/logout", data={"csrf_token": csrf_token(page)})
    drain_jobs(app)
    [token] = rp["server"].tokens("/a")
    claims = verified_logout_token(client, token, rp["a"][0])
    assert claims["sid"] != alice["claims"]["sid"] and claims["sub"] != alice["claims"]["sub"]
    assert signed_in_email(client) == "alice@example.com"


def test_a_receiver_that_fails_first_gets_the_token_on_a_retry(make_app, receiver):
    app = make_app(IDP_JOB_RETRY_INTERVALS=[0])  # on RQ: one immediate retry; inline: the built-in backoff
    make_user_in(app)
    server = receiver(failures=1)
    a = make_client_in(app, name="A", first_party=True, backchannel_logout_uri=server.url + "/a")
    client = app.test_client()
    signed = sign_in_to(client, a)
    _account_logout(app, client, signed)
    drain_jobs(app)
    [token] = server.tokens("/a")
    assert verified_logout_token(client, token, a[0])["sid"] == signed["claims"]["sid"]
    [retry] = audit_events(app, "job.retry")
    assert retry.details["job"] == "backchannel_logout" and retry.details["error"] == "RuntimeError"
    assert len(audit_events(app, "logout.backchannel_sent")) == 1


def test_a_receiver_that_never_answers_well_is_audited_as_failed(make_app, receiver):
    app = make_app(IDP_JOB_RETRY_INTERVALS=[0])
    make_user_in(app)
    server = receiver(failures=100)
    a = make_client_in(app, name="A", first_party=True, backchannel_logout_uri=server.url + "/a")
    client = app.test_client()
    response = _account_logout(app, client, sign_in_to(client, a))
    assert response.status_code == 200  # the sign-out itself is done whatever the client answers
    drain_jobs(app)
    assert [e.details["job"] for e in audit_events(app, "job.failed")] == ["backchannel_logout"]
    assert audit_events(app, "logout.backchannel_sent") == []


def test_a_session_ending_by_the_clock_tells_nobody(make_app, receiver):
    app = make_app(IDP_SESSION_IDLE_TIMEOUT=60)
    make_user_in(app)
    server = receiver()
    a = make_client_in(app, name="A", first_party=True, backchannel_logout_uri=server.url + "/a")
    client = app.test_client()
    signed = sign_in_to(client, a)
    with app.app_context():
        row = db.session.execute(db.select(LoginSession)).scalar_one()
        row.last_seen_at = row.last_seen_at - timedelta(hours=1)
        db.session.commit()
    assert signed_in_email(client) is None  # ended as idle when presented
    drain_jobs(app)
    with app.app_context():
        assert db.session.execute(db.select(LoginSession.end_reason)).scalar() == "idle_timeout"
    assert server.received == [] and signed["claims"]["sid"]


# --- front-channel ---------------------------------------------------------------------------------------------

def test_the_signed_out_page_frames_the_front_channel_uris_of_the_clients_that_took_part(app, client, rp):
    signed = sign_in_to(client, rp["a"])
    page = _account_logout(app, client, signed)
    text = page.get_data(as_text=True)
    frames = [line for line in text.splitlines() if "<iframe" in line]
    assert len(frames) == 1, frames  # A only: B took no part
    src = frames[0].split('src="')[1].split('"')[0].replace("&amp;", "&")
    parts = urlsplit(src)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == RP_FRONT
    assert parse_qs(parts.query) == {"iss": ["http://localhost"], "sid": [signed["claims"]["sid"]]}
    assert " hidden" in frames[0]
    csp = page.headers["Content-Security-Policy"]
    assert csp.endswith("; frame-src https://rp.example") and "frame-ancestors 'none'" in csp
    # The next page frames nothing, and its CSP frames nothing either.
    again = client.get("/logout")
    assert "<iframe" not in again.get_data(as_text=True) and "frame-src" not in again.headers["Content-Security-Policy"]


def test_without_session_required_the_front_channel_uri_is_framed_as_registered(app, client, rp):
    signed = sign_in_to(client, rp["b"])
    text = _account_logout(app, client, signed).get_data(as_text=True)
    assert '<iframe class="frontchannel-logout" hidden' in text and 'src="https://rp.example/b-front"' in text


def test_rp_logout_with_a_post_logout_redirect_frames_first_then_continues(app, client, make_user, make_client):
    make_user()
    a = make_client(name="A", first_party=True, post_logout_redirect_uris=["https://rp.example/bye"],
                    frontchannel_logout_uri=RP_FRONT)
    signed = sign_in_to(client, a)
    page = client.get("/end-session?" + "&".join([f"id_token_hint={signed['id_token']}",
                                                   "post_logout_redirect_uri=https://rp.example/bye", "state=s1"]))
    assert page.status_code == 200, page.headers.get("Location")
    text = page.get_data(as_text=True)
    assert f'src="{RP_FRONT}"' in text and 'href="https://rp.example/bye?state=s1"' in text
    assert "/static/js/frontchannel.js" in text
    assert signed_in_email(client) is None


def test_rp_logout_without_front_channel_clients_still_redirects(app, client, make_user, make_client):
    make_user()
    a = make_client(name="A", first_party=True, post_logout_redirect_uris=["https://rp.example/bye"])
    signed = sign_in_to(client, a)
    response = client.get(f"/end-session?id_token_hint={signed['id_token']}"
                          "&post_logout_redirect_uri=https://rp.example/bye")
    assert response.status_code == 302 and response.headers["Location"] == "https://rp.example/bye"


# --- metadata --------------------------------------------------------------------------------------------------

def test_discovery_says_both_channels_with_sid(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    for name in ("backchannel_logout_supported", "backchannel_logout_session_supported",
                 "frontchannel_logout_supported", "frontchannel_logout_session_supported"):
        assert meta[name] is True, name


@pytest.mark.parametrize("field,uri", [
    ("backchannel_logout_uri", "javascript:alert(1)"),
    ("backchannel_logout_uri", "https://rp.example/logout#frag"),
    ("backchannel_logout_uri", "http://rp.example/logout"),
    ("backchannel_logout_uri", "rp.example/logout"),
    ("backchannel_logout_uri", ""),
    ("frontchannel_logout_uri", "javascript:alert(1)"),
    ("frontchannel_logout_uri", "data:text/html,hi"),
    ("frontchannel_logout_uri", "https://rp.example/logout#frag"),
    ("frontchannel_logout_uri", "http://rp.example/logout"),
    ("frontchannel_logout_uri", "https://other.example/logout"),  # not a redirect URI's origin
    ("frontchannel_logout_uri", "https://rp.example:8443/logout"),
    ("frontchannel_logout_uri", "https://rp.example/x" + "y" * 2000),
])
def test_bad_logout_metadata_is_refused(make_client, field, uri):
    with pytest.raises(ValueError, match="logout URI"):
        make_client(name="Bad", **{field: uri})


def test_loopback_http_logout_uris_are_accepted(make_client):
    make_client(name="Dev", redirect_uris=["http://127.0.0.1:5001/cb"],
                backchannel_logout_uri="http://127.0.0.1:5001/logout",
                frontchannel_logout_uri="http://127.0.0.1:5001/front")


def test_the_command_line_and_the_admin_api_set_and_show_the_logout_settings(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["clients", "create", "--name", "Shop", "--redirect-uri", "https://shop.example/cb",
                                 "--backchannel-logout-uri", "https://shop.example/bc",
                                 "--backchannel-logout-session-required",
                                 "--frontchannel-logout-uri", "https://shop.example/fc",
                                 "--frontchannel-logout-session-required", "--json"])
    assert result.exit_code == 0, result.output
    client_id = json.loads(result.output)["client_id"]
    shown = json.loads(runner.invoke(args=["clients", "show", client_id]).output)
    assert shown["backchannel_logout_uri"] == "https://shop.example/bc"
    assert shown["backchannel_logout_session_required"] is True
    assert shown["frontchannel_logout_uri"] == "https://shop.example/fc"
    assert shown["frontchannel_logout_session_required"] is True
    refused = runner.invoke(args=["clients", "create", "--name", "Bad", "--redirect-uri", "https://shop.example/cb",
                                  "--backchannel-logout-uri", "javascript:alert(1)"])
    assert refused.exit_code != 0 and "logout URI" in refused.output
    changed = runner.invoke(args=["clients", "update", client_id, '{"backchannel_logout_uri": null}'])
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.output)["backchannel_logout_uri"] is None
