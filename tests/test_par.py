"""Pushed Authorization Requests (RFC 9126) and the challenge endpoint's redirect_to_web request_uri
(draft-ietf-oauth-first-party-apps-04 5.2.2.1.1): each test fails if a promise breaks (SECURITY.md 2, 5, 31, 32).

Clients push with the Flask test client, browsers walk /authorize with it (tests.support.follow), codes are redeemed
at /token with PKCE and the ID token is checked; database rows are edited directly only to move time.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.datastructures import MultiDict

from idp.extensions import db
from idp.models import AuthorizationCode, Client, LoginTransaction, PushedRequest, utcnow
from idp.security.tokens import token_hash
from tests.conftest import TEST_DATABASE_URL
from tests.support import (
    PASSWORD,
    RP_CALLBACK,
    begun_sign_in,
    follow,
    make_client_in,
    make_user_in,
    pkce_pair,
    query_params,
    screen_url,
)
from tests.test_oidc_protocol import assertion as signed_assertion
from tests.test_oidc_protocol import jwt_auth

ISSUER = "http://localhost"
ALICE = "alice@example.com"
PREFIX = "urn:ietf:params:oauth:request_uri:"
OTHER_RP = "https://rp.example/other-cb"


# --- helpers ------------------------------------------------------------------------------------------------------

def push(http, client_id: str, secret: str | None, /, **params):
    """POST an authorization request to /par: Basic auth for a confidential client, client_id alone for a public
    one; ``params`` override the defaults (client_id too), a None value drops one. Returns the response."""
    data = {"response_type": "code", "client_id": client_id, "redirect_uri": RP_CALLBACK, "scope": "openid",
            "state": "pushed-state", **params}
    data = {k: v for k, v in data.items() if v is not None}
    if secret is None:
        return http.post("/par", data=data)
    return http.post("/par", data=data, auth=(client_id, secret))


def pushed_uri(http, client_id: str, secret: str | None, **params) -> str:
    response = push(http, client_id, secret, **params)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["request_uri"]


def by_reference(client_id: str, request_uri: str, **extra) -> str:
    """/authorize?client_id=...&request_uri=... (RFC 9126 4), with any ``extra`` query parameters."""
    return "/authorize?" + urlencode({"client_id": client_id, "request_uri": request_uri, **extra})


def redeem(http, client_id: str, secret: str | None, code: str, verifier: str | None,
           redirect_uri: str | None = RP_CALLBACK) -> dict:
    data = {"grant_type": "authorization_code", "code": code}
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    if verifier is not None:
        data["code_verifier"] = verifier
    if secret is None:
        response = http.post("/token", data={**data, "client_id": client_id})
    else:
        response = http.post("/token", data=data, auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def id_claims(http, body: dict) -> dict:
    keys = KeySet.import_key_set(http.get("/jwks.json").get_json())
    return jwt.decode(body["id_token"], keys, algorithms=["RS256", "ES256"]).claims


def rows(app) -> list[PushedRequest]:
    with app.app_context():
        found = list(db.session.execute(db.select(PushedRequest).order_by(PushedRequest.id)).scalars())
        for row in found:
            db.session.expunge(row)
        return found


def stored(app, request_uri: str) -> PushedRequest:
    with app.app_context():
        row = db.session.execute(db.select(PushedRequest).where(
            PushedRequest.request_uri_hash == token_hash(request_uri[len(PREFIX):]))).scalar_one()
        db.session.expunge(row)
        return row


def expire(app, request_uri: str) -> None:
    """Move the pushed request's expiry into the past (time passing, without waiting for it)."""
    with app.app_context():
        db.session.execute(db.update(PushedRequest).where(
            PushedRequest.request_uri_hash == token_hash(request_uri[len(PREFIX):]))
            .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()


def assert_error_page(response, error: str) -> None:
    """SECURITY.md 2: an HTML error page naming the error, never a redirect."""
    assert response.status_code == 400, (response.status_code, response.headers.get("Location"))
    assert "Location" not in response.headers
    assert response.mimetype == "text/html"
    assert error in response.get_data(as_text=True)


def assert_oauth_error(response, status: int, error: str) -> None:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == error, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"


def code_from(walked) -> str:
    assert walked.location and walked.location.startswith(RP_CALLBACK + "?"), (walked.location, walked.screens)
    found = query_params(walked.location)
    assert "code" in found and found["iss"] == ISSUER, found
    return found["code"]


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture
def conf(make_client):
    """A confidential first-party client with two redirect URIs: (client_id, secret)."""
    return make_client(name="Conf App", first_party=True, redirect_uris=[RP_CALLBACK, OTHER_RP])


@pytest.fixture
def public(make_client):
    """A public first-party client (PKCE required): (client_id, None)."""
    return make_client(name="Public App", public=True, first_party=True)


@pytest.fixture
def third_party(make_client):
    return make_client(name="Third App")


# --- discovery ----------------------------------------------------------------------------------------------------

def test_discovery_advertises_the_endpoint_and_whether_par_is_required(make_app):
    meta = make_app().test_client().get("/.well-known/openid-configuration").get_json()
    assert meta["pushed_authorization_request_endpoint"] == ISSUER + "/par"
    assert meta["require_pushed_authorization_requests"] is False
    # RFC 9126 5: the endpoint is enough; request_uri_parameter_supported is about request objects by reference
    # (tests/test_request_objects.py), from registered URIs only.
    assert meta["require_request_uri_registration"] is True
    strict = make_app(IDP_REQUIRE_PAR="true").test_client()
    assert strict.get("/.well-known/oauth-authorization-server").get_json()[
        "require_pushed_authorization_requests"] is True


# --- push, authorize, redeem ----------------------------------------------------------------------------------------

def test_a_confidential_client_pushes_authorizes_and_redeems(app, client, alice, conf):
    verifier, challenge = pkce_pair()
    response = push(client, *conf, nonce="n-conf", code_challenge=challenge, code_challenge_method="S256",
                    scope="openid email")
    assert response.status_code == 201, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["expires_in"] == 60 and set(body) == {"request_uri", "expires_in"}
    assert body["request_uri"].startswith(PREFIX) and len(body["request_uri"]) - len(PREFIX) >= 22  # >= 128 bits
    walked = follow(client, client.get(by_reference(conf[0], body["request_uri"])))
    assert walked.screens == ["password"]
    code = code_from(walked)
    assert query_params(walked.location)["state"] == "pushed-state"
    tokens = redeem(client, *conf, code, verifier)
    claims = id_claims(client, tokens)
    assert claims["aud"] == [conf[0]] and claims["nonce"] == "n-conf" and claims["iss"] == ISSUER
    assert claims["acr"] == "urn:idp:acr:pwd" and claims["sub"]
    assert claims["email"] == ALICE and tokens["scope"] == "openid email"


def test_a_public_client_pushes_with_its_client_id_and_pkce(app, client, alice, public):
    verifier, challenge = pkce_pair()
    request_uri = pushed_uri(client, public[0], None, code_challenge=challenge, code_challenge_method="S256",
                             nonce="n-pub")
    code = code_from(follow(client, client.get(by_reference(public[0], request_uri))))
    claims = id_claims(client, redeem(client, public[0], None, code, verifier))
    assert claims["aud"] == [public[0]] and claims["nonce"] == "n-pub"
    # The code is bound to the pushed PKCE challenge: another verifier cannot redeem the next one.
    _verifier, challenge = pkce_pair()
    request_uri = pushed_uri(client, public[0], None, code_challenge=challenge, code_challenge_method="S256")
    code = code_from(follow(client, client.get(by_reference(public[0], request_uri))))
    wrong = client.post("/token", data={"grant_type": "authorization_code", "code": code, "client_id": public[0],
                                        "redirect_uri": RP_CALLBACK, "code_verifier": pkce_pair()[0]})
    assert wrong.status_code == 400 and wrong.get_json()["error"] == "invalid_grant"


def test_client_secret_post_and_private_key_jwt_push_as_at_the_token_endpoint(app, client, alice, make_client):
    posting = make_client(name="Post", first_party=True, auth_method="client_secret_post")
    response = client.post("/par", data={"response_type": "code", "client_id": posting[0],
                                         "client_secret": posting[1], "scope": "openid"})
    assert response.status_code == 201, response.get_json()
    assert all(name != "client_secret" for name, _value in stored(app, response.get_json()["request_uri"]).parameters)
    key = RSAKey.generate_key(2048, parameters={"kid": "rp-key-1", "alg": "RS256"}, private=True)
    signer, _none = make_client(name="JWT", first_party=True, auth_method="private_key_jwt",
                                jwks={"keys": [key.as_dict(private=False)]})

    def assertion(aud: str) -> dict:
        return jwt_auth(signed_assertion(signer, key, aud=aud))

    # RFC 9126 2: the PAR endpoint's URL is an audience this server accepts.
    verifier, challenge = pkce_pair()
    pushed = client.post("/par", data={"response_type": "code", "client_id": signer, "scope": "openid",
                                       "code_challenge": challenge, "code_challenge_method": "S256",
                                       **assertion(ISSUER + "/par")})
    assert pushed.status_code == 201, pushed.get_json()
    code = code_from(follow(client, client.get(by_reference(signer, pushed.get_json()["request_uri"]))))
    tokens = client.post("/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                         **assertion(ISSUER + "/token")})
    assert tokens.status_code == 200 and id_claims(client, tokens.get_json())["aud"] == [signer]


def test_the_pushed_parameters_win_over_the_query(app, client, alice, conf):
    verifier, challenge = pkce_pair()
    request_uri = pushed_uri(client, *conf, scope="openid email", code_challenge=challenge,
                             code_challenge_method="S256", nonce="pushed-nonce")
    walked = follow(client, client.get(by_reference(
        conf[0], request_uri, redirect_uri=OTHER_RP, scope="openid phone", state="query-state", nonce="query-nonce",
        prompt="none", response_type="token", code_challenge=pkce_pair()[1])))
    code = code_from(walked)  # at the pushed redirect URI, not the query's other registered one
    assert query_params(walked.location)["state"] == "pushed-state"
    tokens = redeem(client, *conf, code, verifier)  # the pushed PKCE challenge
    assert tokens["scope"] == "openid email"
    assert id_claims(client, tokens)["nonce"] == "pushed-nonce"


def test_the_browser_never_carries_the_pushed_parameters_while_signing_in(app, client, alice, conf):
    verifier, challenge = pkce_pair()
    request_uri = pushed_uri(client, *conf, code_challenge=challenge, code_challenge_method="S256",
                             nonce="secret-looking-nonce", login_hint=ALICE)
    started = client.get(by_reference(conf[0], request_uri))
    with app.app_context():
        txn = db.session.get(LoginTransaction, begun_sign_in(started).rsplit("/", 1)[1])
        back = urlsplit(txn.state.return_to)
    assert back.path == "/authorize"
    assert set(parse_qs(back.query)) == {"client_id", "request_uri", "_txn"}
    assert parse_qs(back.query)["request_uri"] == [request_uri]
    walked = follow(client, started)
    hops = [page.request.url for page in walked.pages]
    assert not any("nonce" in url or "code_challenge" in url or "redirect_uri" in url for url in hops), hops
    redeem(client, *conf, code_from(walked), verifier)


def test_consent_denied_on_a_pushed_request_goes_back_and_uses_it_up(client, alice, third_party):
    request_uri = pushed_uri(client, *third_party)
    walked = follow(client, client.get(by_reference(third_party[0], request_uri)), consent="deny")
    assert walked.screens == ["password", "consent"]
    found = query_params(walked.location)
    assert found["error"] == "access_denied" and found["state"] == "pushed-state" and found["iss"] == ISSUER
    assert_error_page(client.get(by_reference(third_party[0], request_uri)), "invalid_request_uri")


def test_prompt_none_is_answered_at_authorize_and_uses_the_request_up(app, client, conf):
    request_uri = pushed_uri(client, *conf, prompt="none")  # no user interaction error at PAR (RFC 9126 2.3)
    response = client.get(by_reference(conf[0], request_uri))
    assert response.status_code == 302
    found = query_params(response.headers["Location"])
    assert found["error"] == "login_required" and found["iss"] == ISSUER and found["state"] == "pushed-state"
    assert stored(app, request_uri).used_at is not None


# --- refusals at /authorize ------------------------------------------------------------------------------------------

def test_unknown_foreign_used_and_expired_request_uris_get_the_error_page(app, client, alice, conf, public):
    assert_error_page(client.get(by_reference(conf[0], PREFIX + "not-one-we-issued")), "invalid_request_uri")
    request_uri = pushed_uri(client, *conf)
    assert_error_page(client.get(by_reference(public[0], request_uri)), "invalid_request_uri")  # another client's
    assert_error_page(client.get("/authorize?" + urlencode({"request_uri": request_uri})), "invalid_request")
    assert stored(app, request_uri).used_at is None  # refusals use nothing up
    code_from(follow(client, client.get(by_reference(conf[0], request_uri))))
    assert_error_page(client.get(by_reference(conf[0], request_uri)), "invalid_request_uri")  # used twice
    late = pushed_uri(client, *conf)
    expire(app, late)
    assert_error_page(client.get(by_reference(conf[0], late)), "invalid_request_uri")
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(AuthorizationCode)).scalar_one() == 1


def test_a_reload_before_the_answer_is_allowed_and_a_sign_in_begun_in_time_may_finish(app, client, alice, conf):
    verifier, challenge = pkce_pair()
    request_uri = pushed_uri(client, *conf, code_challenge=challenge, code_challenge_method="S256")
    first = client.get(by_reference(conf[0], request_uri))
    again = client.get(by_reference(conf[0], request_uri))  # RFC 9126 4: a reload, before any answer
    assert begun_sign_in(first) != begun_sign_in(again)  # a sign-in each
    expire(app, request_uri)  # the user takes longer to sign in than the request_uri lives
    code = code_from(follow(client, again))
    redeem(client, *conf, code, verifier)
    # Another browser cannot start on the expired request_uri, nor can this one begin anew.
    assert_error_page(app.test_client().get(by_reference(conf[0], request_uri)), "invalid_request_uri")


def test_a_late_request_uri_cannot_borrow_another_sign_in(app, client, alice, conf):
    """The expiry is waived only for the sign-in begun for this very request_uri, in the browser that began it."""
    begun = pushed_uri(client, *conf)
    late = pushed_uri(client, *conf)
    walked = follow(client, client.get(by_reference(conf[0], begun)), stop_at="password")
    response = client.post(screen_url(walked.pages[-1]), data={
        "csrf_token": re.search(r'name="csrf_token"[^>]*value="([^"]+)"', walked.text).group(1), "step": "password",
        "email": ALICE, "password": PASSWORD})
    # The sign-in finishes the request it was begun for, at once.
    assert "code" in parse_qs(urlsplit(response.headers["Location"]).query), response.headers["Location"]
    tid = screen_url(walked.pages[-1]).rsplit("/", 1)[1]
    with app.app_context():  # completed and not used: no request leaves one so since its answer commits the use
        txn = db.session.get(LoginTransaction, tid)  # first; forged here, as the defence behind that one
        txn.state = replace(txn.state, used=False)
        db.session.commit()
    expire(app, late)
    assert_error_page(client.get(by_reference(conf[0], late, _txn=tid)), "invalid_request_uri")


# --- refusals at /par ----------------------------------------------------------------------------------------------

def test_client_authentication_failures_are_401_invalid_client(app, client, conf, public):
    failures = [
        client.post("/par", data={"response_type": "code", "client_id": conf[0]}),  # no credentials
        client.post("/par", data={"response_type": "code", "client_id": conf[0]}, auth=(conf[0], "wrong")),
        client.post("/par", data={"response_type": "code", "client_id": conf[0], "client_secret": "wrong"}),
        client.post("/par", data={"response_type": "code", "client_id": "no-such-client"}),
        client.post("/par", data={"response_type": "code"}),
        client.post("/par", data={"response_type": "code", "client_id": "x"}, auth=("no-such-client", "secret")),
        # A Basic header that is not base64 of ASCII names nobody (it once failed the request's log line: a 500).
        client.post("/par", data={"response_type": "code"}, headers={"Authorization": "Basic \u00e9\u00e9"}),
    ]
    for response in failures:
        assert_oauth_error(response, 401, "invalid_client")
        assert "request_uri" not in response.get_json()
    assert failures[1].headers["WWW-Authenticate"].startswith("Basic ")
    assert rows(app) == []


@pytest.mark.parametrize(("params", "error"), [
    ({"redirect_uri": "https://evil.example/cb"}, "invalid_request"),
    ({"redirect_uri": RP_CALLBACK + "/"}, "invalid_request"),
    ({"redirect_uri": None}, "invalid_request"),  # two registered, none sent (SECURITY.md 3)
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"response_type": None}, "unsupported_response_type"),
    ({"scope": "openid address"}, "invalid_scope"),
    ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
    ({"nonce": "n" * 513}, "invalid_request"),
    ({"max_age": "soon"}, "invalid_request"),
    ({"claims": "[1]"}, "invalid_request"),
    ({"id_token_hint": "not.a.token"}, "invalid_request"),
    ({"prompt": "none login"}, "invalid_request"),
    ({"request": "eyJhbGciOiJub25lIn0.eyJzY29wZSI6Im9wZW5pZCJ9."}, "invalid_request_object"),  # RFC 9126 3
    ({"request_uri": PREFIX + "abc"}, "invalid_request"),  # RFC 9126 2.1
    ({"request_uri": "https://rp.example/request.jwt"}, "invalid_request"),
    ({"client_id": None}, "invalid_request"),  # required in the body too (RFC 9126 2.1)
    ({"client_id": "someone-else"}, "invalid_request"),
])
def test_a_bad_request_is_400_and_nothing_is_stored(app, client, conf, params, error):
    assert_oauth_error(push(client, *conf, **params), 400, error)
    assert rows(app) == []


def test_a_repeated_parameter_or_a_public_client_without_pkce_is_refused(app, client, conf, public):
    repeated = client.post("/par", data=MultiDict([("response_type", "code"), ("client_id", conf[0]), ("nonce", "a"),
                                                   ("nonce", "b"), ("redirect_uri", RP_CALLBACK)]), auth=conf)
    assert_oauth_error(repeated, 400, "invalid_request")
    assert_oauth_error(push(client, public[0], None), 400, "invalid_request")  # SECURITY.md 4
    assert_oauth_error(client.post("/par", json={"client_id": public[0]}), 400, "invalid_request")
    assert rows(app) == []


def test_a_wrong_method_and_an_oversized_push_are_oauth_errors(app, client, conf):
    wrong = client.get("/par")
    assert wrong.status_code == 405 and wrong.get_json()["error"] == "invalid_request" and "POST" in wrong.headers[
        "Allow"]
    many = push(client, *conf, **{f"x{i}": "v" for i in range(80)})
    assert many.status_code == 413 and many.get_json()["error"] == "invalid_request"
    assert rows(app) == []


def test_the_request_uri_is_stored_hashed_with_no_client_credentials(app, client, conf):
    request_uri = pushed_uri(client, *conf, nonce="n-1")
    row = stored(app, request_uri)
    assert row.client_id == conf[0] and row.used_at is None
    assert request_uri[len(PREFIX):] not in repr(row.parameters) and row.request_uri_hash != request_uri[len(PREFIX):]
    assert dict(map(tuple, row.parameters))["nonce"] == "n-1"
    assert timedelta(seconds=59) <= row.expires_at - row.created_at <= timedelta(seconds=61)


def test_the_lifetime_follows_the_setting_up_to_600_seconds(make_app):
    app = make_app(IDP_PAR_TTL="5000")
    client_id, secret = make_client_in(app, first_party=True)
    assert push(app.test_client(), client_id, secret).get_json()["expires_in"] == 600


def test_housekeeping_removes_pushed_requests_a_day_after_they_expired(app, client, conf):
    old, fresh = pushed_uri(client, *conf), pushed_uri(client, *conf)
    with app.app_context():
        db.session.execute(db.update(PushedRequest).where(
            PushedRequest.request_uri_hash == token_hash(old[len(PREFIX):]))
            .values(expires_at=utcnow() - timedelta(days=1, minutes=10)))  # past the day and housekeeping's grace
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["housekeeping"])
    assert result.exit_code == 0 and "1\tpushed_requests" in result.stdout.splitlines(), result.output
    assert [row.request_uri_hash for row in rows(app)] == [token_hash(fresh[len(PREFIX):])]


# --- PAR required ---------------------------------------------------------------------------------------------------

def plain(client_id: str) -> str:
    return "/authorize?" + urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": RP_CALLBACK,
                                      "scope": "openid", "state": "s-1"})


def test_par_required_globally_refuses_a_plain_request(make_app):
    app = make_app(IDP_REQUIRE_PAR="true")
    make_user_in(app)
    http = app.test_client()
    client_id, secret = make_client_in(app, first_party=True)
    refused = http.get(plain(client_id))
    assert refused.status_code == 302
    found = query_params(refused.headers["Location"])
    assert found["error"] == "invalid_request" and found["state"] == "s-1" and found["iss"] == ISSUER
    # A request_uri that /par did not issue is no pushed request either (RFC 9126 4): a request object by reference,
    # from a URI this client did not register.
    other = http.get(plain(client_id) + "&request_uri=https%3A%2F%2Frp.example%2Fr.jwt")
    assert_error_page(other, "invalid_request_uri")
    code_from(follow(http, http.get(by_reference(client_id, pushed_uri(http, client_id, secret)))))


def test_par_required_per_client_by_the_command_line_and_the_admin_api(app, client, alice, make_client):
    free = make_client(name="Free", first_party=True)
    result = app.test_cli_runner().invoke(args=["clients", "create", "--name", "Strict", "--redirect-uri",
                                                RP_CALLBACK, "--first-party", "--require-par", "--json"])
    assert result.exit_code == 0, result.output
    strict = json.loads(result.stdout)
    begun_sign_in(client.get(plain(free[0])))  # not required of everyone
    found = query_params(client.get(plain(strict["client_id"])).headers["Location"])
    assert found["error"] == "invalid_request"
    request_uri = pushed_uri(client, strict["client_id"], strict["client_secret"])
    code_from(follow(client, client.get(by_reference(strict["client_id"], request_uri))))
    shown = app.test_cli_runner().invoke(args=["clients", "show", strict["client_id"]])
    assert json.loads(shown.stdout)["require_pushed_authorization_requests"] is True
    # The admin API's PATCH sets and clears it like any other client setting.
    robot = make_client(name="Ops robot", redirect_uris=[], grant_types=["client_credentials"], scopes=["idp:admin"])
    issued = client.post("/token", data={"grant_type": "client_credentials", "scope": "idp:admin"}, auth=robot)
    admin = {"Authorization": "Bearer " + issued.get_json()["access_token"]}
    path = f"/admin/api/v1/clients/{free[0]}"
    assert client.get(path, headers=admin).get_json()["require_pushed_authorization_requests"] is False
    patched = client.patch(path, headers=admin, json={"require_pushed_authorization_requests": True})
    assert patched.status_code == 200 and patched.get_json()["require_pushed_authorization_requests"] is True
    assert query_params(client.get(plain(free[0])).headers["Location"])["error"] == "invalid_request"
    client.patch(path, headers=admin, json={"require_pushed_authorization_requests": False})
    assert "code" in query_params(client.get(plain(free[0])).headers["Location"])  # alice is signed in by now
    with app.app_context():
        assert db.session.execute(db.select(Client.require_pushed_authorization_requests).where(
            Client.client_id == free[0])).scalar_one() is False


# --- one use, even in parallel (SECURITY.md 32) --------------------------------------------------------------------

ON_POSTGRES = pytest.mark.skipif(not TEST_DATABASE_URL, reason="the race needs PostgreSQL's row locking: set "
                                                                "IDP_TEST_DATABASE_URL")
AT_ONCE = 6


@ON_POSTGRES
def test_a_request_uri_presented_six_times_at_once_gives_one_code(app, client, alice, conf):
    code_from(follow(client, client.get(by_reference(conf[0], pushed_uri(client, *conf)))))  # signed in
    request_uri = pushed_uri(client, *conf)
    cookies = {name: client.get_cookie(name).value for name in ("idp_session", "session") if client.get_cookie(name)}
    barrier = threading.Barrier(AT_ONCE, timeout=60)

    def one(_):
        http = app.test_client()
        for name, value in cookies.items():
            http.set_cookie(name, value)
        barrier.wait()
        return http.get(by_reference(conf[0], request_uri))

    with ThreadPoolExecutor(AT_ONCE) as pool:
        responses = list(pool.map(one, range(AT_ONCE)))
    codes = [r for r in responses if r.status_code == 302 and r.headers["Location"].startswith(RP_CALLBACK)]
    assert len(codes) == 1, [(r.status_code, r.headers.get("Location")) for r in responses]
    for refused in (r for r in responses if r not in codes):
        assert_error_page(refused, "invalid_request_uri")
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(AuthorizationCode)).scalar_one() == 2


# --- random bodies never give a 500 (SECURITY.md 31) ---------------------------------------------------------------

_NAMES = st.sampled_from(["client_id", "client_secret", "response_type", "redirect_uri", "scope", "state", "nonce",
                          "code_challenge", "code_challenge_method", "prompt", "max_age", "claims", "acr_values",
                          "id_token_hint", "request", "request_uri", "login_hint", "ui_locales",
                          "client_assertion", "client_assertion_type", "x"])
_VALUES = st.one_of(st.sampled_from(["code", "openid", "S256", "none", "\u00e9", "x" * 5000, "", "[]", "{}", "-1",
                                     RP_CALLBACK, PREFIX + "x", "urn:ietf:params:oauth:client-assertion-type:"
                                     "jwt-bearer", "eyJhbGciOiJub25lIn0.eyJzdWIiOjV9."]),
                    st.text(max_size=40))


def test_random_bodies_at_par_never_give_a_500(app, conf):
    http = app.test_client()

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=8), credentials=st.sampled_from(["none", "basic",
                                                                                               "body", "bad"]),
           raw=st.one_of(st.none(), st.binary(max_size=100)))
    def one(pairs, credentials, raw):
        body = list(pairs)
        headers = {}
        if credentials == "basic":
            headers = {"Authorization": "Basic " + base64.b64encode(f"{conf[0]}:{conf[1]}".encode()).decode()}
            body.append(("client_id", conf[0]))
        elif credentials == "body":
            body += [("client_id", conf[0]), ("client_secret", conf[1])]
        elif credentials == "bad":
            headers = {"Authorization": "Basic \u00e9\u00e9"}
        if raw is not None:
            response = http.post("/par", data=raw, headers=headers, content_type="application/x-www-form-urlencoded")
        else:
            response = http.post("/par", data=MultiDict(body), headers=headers)
        text = response.get_data(as_text=True)
        assert response.status_code < 500 and "Traceback" not in text, (response.status_code, text[:300])
        # Always the caller's form: a request_uri, or an OAuth error object (SECURITY.md 31).
        assert response.get_json()["request_uri" if response.status_code == 201 else "error"], text[:300]

    one()


# --- the challenge endpoint's redirect_to_web (draft 5.2.2.1.1) -----------------------------------------------------

def _challenge(http, client_id: str, **params):
    verifier, challenge = pkce_pair()
    data = {"client_id": client_id, "response_type": "code", "scope": "openid", "code_challenge": challenge,
            "code_challenge_method": "S256", "username": ALICE, "password": PASSWORD, **params}
    return http.post("/authorize-challenge", data={k: v for k, v in data.items() if v is not None}), verifier


def test_redirect_to_web_carries_a_request_uri_that_the_browser_finishes_to_a_code(app, client, alice):
    import pyotp

    app_id, _none = make_client_in(app, name="Bank", redirect_uris=["https://bank.example/cb"], public=True,
                                   first_party=True, mfa="required")
    answer, verifier = _challenge(client, app_id, nonce="n-app", acr_values="urn:idp:acr:mfa")
    body = answer.get_json()
    assert answer.status_code == 403 and body["error"] == "redirect_to_web", body
    assert body["request_uri"].startswith(PREFIX) and body["expires_in"] == 60
    browser = app.test_client()  # the app opens the system browser: no cookie of the API calls
    walked = follow(browser, browser.get(by_reference(app_id, body["request_uri"])), answers={
        "mfa_enroll": lambda page: {"code": pyotp.TOTP(re.search(r'id="totp-secret">([^<]+)<', page.get_data(
            as_text=True)).group(1).replace(" ", "")).now()}})
    assert walked.screens == ["password", "mfa_enroll"]
    assert walked.location.startswith("https://bank.example/cb?"), walked.location
    code = query_params(walked.location)["code"]
    tokens = client.post("/token", data={"grant_type": "authorization_code", "code": code, "client_id": app_id,
                                         "code_verifier": verifier})
    assert tokens.status_code == 200, tokens.get_json()
    claims = id_claims(client, tokens.get_json())
    assert claims["aud"] == [app_id] and claims["nonce"] == "n-app" and claims["acr"] == "urn:idp:acr:mfa"
    assert_error_page(browser.get(by_reference(app_id, body["request_uri"])), "invalid_request_uri")  # used


def test_redirect_to_web_uses_the_redirect_uri_the_challenge_named(app, client, alice):
    app_id, _none = make_client_in(app, name="Bank", redirect_uris=["https://bank.example/cb",
                                                                    "https://bank.example/other"],
                                   public=True, first_party=True, mfa="required")
    without, _v = _challenge(client, app_id)
    # Two registered, none named: no redirect URI to guess (SECURITY.md 3), so no request_uri.
    assert without.get_json()["error"] == "redirect_to_web" and "request_uri" not in without.get_json()
    named, _v = _challenge(client, app_id, redirect_uri="https://bank.example/other")
    pushed = stored(app, named.get_json()["request_uri"])
    assert dict(map(tuple, pushed.parameters))["redirect_uri"] == "https://bank.example/other"
    refused, _v = _challenge(client, app_id, redirect_uri="https://evil.example/cb")
    assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_request"
