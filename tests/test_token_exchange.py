"""Token exchange (RFC 8693) over HTTP, as a client's services would use it: a web app (A) holding Alice's access
token exchanges it for one addressed to its API (B), which may exchange that again for its back end (C).

Refusals of a subject or actor token are ``invalid_request``: RFC 8693 2.2.2 says so in a MUST ("If the request
itself is not valid or if either the subject_token or actor_token are invalid for any reason, or are unacceptable
based on policy ... The value of the error parameter MUST be the invalid_request error code"), not the
``invalid_grant`` RFC 6749 uses for codes and refresh tokens."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from werkzeug.datastructures import MultiDict

from idp.extensions import db
from idp.models import Token, utcnow
from tests.support import audit_events, authorize, make_client_in, ok, pkce_pair, refused
from tests.test_dpop import TOKEN_URL, proof

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.fixture
def services(app, make_user):
    """Alice; the web app A (code flow, token exchange, client credentials), its API B (which A may exchange
    tokens for, and which may exchange them for C), the back end C, and D, which lets nobody exchange for it."""
    make_user()
    web = make_client_in(app, name="Web", grant_types=["authorization_code", "refresh_token", EXCHANGE,
                                                       "client_credentials"])
    api = make_client_in(app, name="API", grant_types=[EXCHANGE], redirect_uris=[],
                         token_exchange_actors=[web[0]])
    backend = make_client_in(app, name="Back end", grant_types=["client_credentials"], redirect_uris=[],
                             token_exchange_actors=[api[0]])
    other = make_client_in(app, name="Other", grant_types=["authorization_code", EXCHANGE])
    return {"A": web, "B": api, "C": backend, "D": other}


def user_token(http, pair, scope="openid profile email offline_access", key=None) -> dict:
    """Alice's tokens for the client ``pair`` from a code flow (DPoP-bound to ``key`` when given)."""
    verifier, challenge = pkce_pair()
    code = authorize(http, pair[0], scope=scope, code_challenge=challenge, code_challenge_method="S256")
    headers = basic(*pair)
    if key is not None:
        headers["DPoP"] = proof(key, "POST", TOKEN_URL)
    response = http.post("/token", headers=headers, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "https://rp.example/cb",
        "code_verifier": verifier})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def exchange(http, pair, subject: str | None, audience: str | list[str] | None, headers=None, **extra):
    data: dict = {"grant_type": EXCHANGE, **extra}
    if subject is not None:
        data.setdefault("subject_token", subject)
        data.setdefault("subject_token_type", ACCESS_TOKEN)
    if audience is not None:
        data["audience"] = audience
    return http.post("/token", headers={**basic(*pair), **(headers or {})}, data=data)


def claims_of(http, access_token: str) -> dict:
    keys = KeySet.import_key_set(http.get("/jwks.json").get_json())
    return jwt.decode(access_token, keys, algorithms=["RS256", "ES256"]).claims


def introspect(http, pair, token: str) -> dict:
    response = http.post("/introspect", headers=basic(*pair), data={"token": token})
    assert response.status_code == 200
    return response.get_json()


def error_of(response) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True))
    return response.get_json()["error"]


def test_discovery_and_registration_name_the_grant(client, cli, services):
    assert EXCHANGE in client.get("/.well-known/openid-configuration").get_json()["grant_types_supported"]
    created = json.loads(ok(cli("clients", "create", "--name", "Reports", "--grant-type", "client_credentials",
                                "--token-exchange-actor", services["A"][0], "--json")))
    shown = json.loads(ok(cli("clients", "show", created["client_id"])))
    assert shown["token_exchange_actors"] == [services["A"][0]]
    # A typo would silently allow nobody (or a client registered later under that id): refused.
    assert "no client with id nobody" in refused(cli("clients", "create", "--name", "Typo", "--grant-type",
                                                     "client_credentials", "--token-exchange-actor", "nobody"))
    # A public client cannot hold the grant: it acts for users at other services (RFC 8693 5).
    assert "confidential" in refused(cli("clients", "create", "--name", "SPA", "--public", "--redirect-uri",
                                         "https://spa.example/cb", "--grant-type", "authorization_code",
                                         "--grant-type", EXCHANGE))


def test_a_web_app_exchanges_alices_token_for_one_addressed_to_its_api(app, client, services):
    a, b, c = services["A"], services["B"], services["C"]
    original = user_token(client, a)
    response = exchange(client, a, original["access_token"], b[0])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["issued_token_type"] == ACCESS_TOKEN and body["token_type"] == "Bearer"
    assert "refresh_token" not in body and "id_token" not in body  # RFC 8693 2.2.1
    assert set(body["scope"].split()) == {"openid", "profile", "email", "offline_access"}
    claims = claims_of(client, body["access_token"])
    before = claims_of(client, original["access_token"])
    assert claims["aud"] == b[0] and claims["sub"] == before["sub"] and claims["client_id"] == a[0]
    assert claims["act"] == {"sub": a[0]}  # RFC 8693 4.1: the acting client
    assert claims["exp"] <= before["exp"]  # never outlives the token it came from
    assert claims["auth_time"] == before["auth_time"] and claims["sid"] == before["sid"]

    info = client.get("/userinfo", headers={"Authorization": "Bearer " + body["access_token"]})
    assert info.status_code == 200 and info.get_json()["email"] == "alice@example.com"
    # The API it is addressed to introspects it, and sees who acts; a client it is not about learns nothing.
    seen = introspect(client, b, body["access_token"])
    assert seen["active"] is True and seen["aud"] == b[0] and seen["act"] == {"sub": a[0]}
    assert seen["sub"] == before["sub"] and seen["client_id"] == a[0]
    assert introspect(client, c, body["access_token"]) == {"active": False}

    [event] = audit_events(app, "token.exchanged")
    assert event.client_id == a[0]
    assert event.details["audience"] == b[0] and event.details["act"] == {"sub": a[0]}
    assert event.details["subject_jti"] == before["jti"]

    # Narrower is allowed; the result belongs to Alice's grant: revoking its refresh token revokes it too.
    narrow = exchange(client, a, original["access_token"], b[0], scope="openid")
    assert narrow.status_code == 200 and narrow.get_json()["scope"] == "openid"
    assert client.post("/revoke", headers=basic(*a), data={"token": original["refresh_token"]}).status_code == 200
    for token in (body["access_token"], narrow.get_json()["access_token"]):
        assert client.get("/userinfo", headers={"Authorization": "Bearer " + token}).status_code == 401
    assert error_of(exchange(client, a, original["access_token"], b[0])) == "invalid_request"


def test_the_exchanged_token_never_outlives_its_subject_token(app, client, services):
    """SECURITY.md 45: the subject token expires in 30 s, the acting client's tokens live 15 minutes: the exchanged
    token's exp (what a resource server checks), its stored expiry (introspection, userinfo) and the answer's
    expires_in all end with the subject token. Authlib's generator dated it by the client's lifetime alone."""
    a, b = services["A"], services["B"]
    original = user_token(client, a)
    jti = claims_of(client, original["access_token"])["jti"]
    with app.app_context():
        row = db.session.execute(db.select(Token).where(Token.jti == jti)).scalar_one()
        row.access_expires_at = (utcnow() + timedelta(seconds=30)).replace(microsecond=0)
        cut = int(row.access_expires_at.timestamp())
        db.session.commit()
    response = exchange(client, a, original["access_token"], b[0])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    claims = claims_of(client, body["access_token"])
    assert claims["exp"] == cut and claims["iat"] <= cut
    assert body["expires_in"] == claims["exp"] - claims["iat"] <= 30
    with app.app_context():
        stored = db.session.execute(db.select(Token).where(Token.jti == claims["jti"])).scalar_one()
        assert int(stored.access_expires_at.timestamp()) == cut
    assert introspect(client, b, body["access_token"])["exp"] == cut
    # Without a nearer bound, the client's lifetime: exp - iat is the configured 15 minutes, said as expires_in.
    fresh = user_token(client, a)
    long = exchange(client, a, fresh["access_token"], b[0]).get_json()
    claims = claims_of(client, long["access_token"])
    assert claims["exp"] - claims["iat"] == long["expires_in"] <= app.config["IDP_ACCESS_TOKEN_TTL"]
    assert claims["exp"] <= claims_of(client, fresh["access_token"])["exp"]


def test_a_chain_nests_the_actors(client, services):
    a, b, c = services["A"], services["B"], services["C"]
    first = exchange(client, a, user_token(client, a)["access_token"], b[0]).get_json()["access_token"]
    second = exchange(client, b, first, c[0])
    assert second.status_code == 200, second.get_json()
    claims = claims_of(client, second.get_json()["access_token"])
    assert claims["aud"] == c[0] and claims["client_id"] == b[0]
    assert claims["act"] == {"sub": b[0], "act": {"sub": a[0]}}  # RFC 8693 4.1: the current actor outermost
    assert introspect(client, c, second.get_json()["access_token"])["act"] == claims["act"]
    # A gave its exchanged token to B: A cannot use it as a subject token, nor can B exchange A's own token.
    assert error_of(exchange(client, a, first, b[0])) == "invalid_request"
    assert error_of(exchange(client, b, user_token(client, a)["access_token"], c[0])) == "invalid_request"


def test_targets_that_do_not_allow_the_client_are_invalid_target(client, services):
    a, b, c, d = services["A"], services["B"], services["C"], services["D"]
    subject = user_token(client, a)["access_token"]
    for audience in (c[0], d[0], "no-such-client", a[0]):  # C allows only B; D and A allow nobody
        assert error_of(exchange(client, a, subject, audience)) == "invalid_target"
    assert error_of(exchange(client, a, subject, [b[0], c[0]])) == "invalid_target"
    assert error_of(exchange(client, a, subject, b[0], resource="https://api.example/")) == "invalid_target"
    assert error_of(exchange(client, a, subject, None)) == "invalid_request"
    # A target that lists the client again is served.
    assert exchange(client, a, subject, b[0]).status_code == 200


def test_revoked_expired_foreign_and_forged_subject_tokens_are_refused(app, client, services, make_user):
    a, b, d = services["A"], services["B"], services["D"]
    revoked = user_token(client, a)["access_token"]
    assert client.post("/revoke", headers=basic(*a), data={"token": revoked}).status_code == 200
    expired = user_token(client, a)["access_token"]
    with app.app_context():
        row = db.session.execute(db.select(Token).where(Token.jti == claims_of(client, expired)["jti"])).scalar_one()
        row.access_expires_at = utcnow() - timedelta(seconds=1)  # the database says expired, whatever the JWT says
        db.session.commit()
    foreign = user_token(client, d)["access_token"]  # another client's token for Alice
    header, payload, signature = user_token(client, a)["access_token"].split(".")
    forged = ".".join([header, base64.urlsafe_b64encode(json.dumps({"sub": "x"}).encode()).decode().rstrip("="),
                       signature])
    machine = client.post("/token", headers=basic(*a), data={"grant_type": "client_credentials"}).get_json()
    for subject in (revoked, expired, foreign, forged, "not-a-token", machine["access_token"]):
        response = exchange(client, a, subject, b[0])
        assert error_of(response) == "invalid_request", subject
    fresh = user_token(client, a)["access_token"]
    assert error_of(exchange(client, a, fresh, b[0], subject_token_type="urn:ietf:params:oauth:token-type:jwt")
                    ) == "invalid_request"
    assert error_of(exchange(client, a, fresh, b[0], requested_token_type="urn:ietf:params:oauth:token-type:"
                                                                          "refresh_token")) == "invalid_request"
    assert exchange(client, a, fresh, b[0]).status_code == 200  # the same request with that token is served
    assert audit_events(app, "token.exchanged")[0].details["subject_jti"] == claims_of(client, fresh)["jti"]


def test_the_scope_cannot_widen(client, services):
    a, b = services["A"], services["B"]
    subject = user_token(client, a, scope="openid email")["access_token"]
    for scope in ("openid profile", "openid email phone", "idp:account", "openid idp:admin"):
        assert error_of(exchange(client, a, subject, b[0], scope=scope)) == "invalid_scope", scope
    assert exchange(client, a, subject, b[0], scope="email").get_json()["scope"] == "email"


def test_clients_without_the_grant_or_a_secret_are_refused(client, app, services):
    a, b = services["A"], services["B"]
    subject = user_token(client, a)["access_token"]
    plain = make_client_in(app, name="Plain")  # authorization_code and refresh_token only
    assert error_of(exchange(client, plain, subject, b[0])) == "unauthorized_client"
    wrong = exchange(client, (a[0], "not-the-secret"), subject, b[0])
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"


def test_actor_tokens_must_be_the_acting_clients(client, services):
    a, b, d = services["A"], services["B"], services["D"]
    subject = user_token(client, a)["access_token"]
    own = client.post("/token", headers=basic(*a), data={"grant_type": "client_credentials"}).get_json()
    served = exchange(client, a, subject, b[0], actor_token=own["access_token"], actor_token_type=ACCESS_TOKEN)
    assert served.status_code == 200, served.get_json()
    assert claims_of(client, served.get_json()["access_token"])["act"] == {"sub": a[0]}
    others = user_token(client, d)["access_token"]
    for extra in ({"actor_token": others, "actor_token_type": ACCESS_TOKEN},
                  {"actor_token": own["access_token"]},  # RFC 8693 2.1: its type is required with it
                  {"actor_token_type": ACCESS_TOKEN},  # and only with it
                  {"actor_token": "garbage", "actor_token_type": ACCESS_TOKEN}):
        assert error_of(exchange(client, a, subject, b[0], **extra)) == "invalid_request", extra


def test_a_dpop_bound_subject_token_needs_a_proof_by_its_key(client, services):
    a, b = services["A"], services["B"]
    key, thief = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    bound = user_token(client, a, key=key)
    assert bound["token_type"] == "DPoP"
    subject = bound["access_token"]
    assert error_of(exchange(client, a, subject, b[0])) == "invalid_request"
    stolen = exchange(client, a, subject, b[0], headers={"DPoP": proof(thief, "POST", TOKEN_URL)})
    assert error_of(stolen) == "invalid_request"
    response = exchange(client, a, subject, b[0], headers={"DPoP": proof(key, "POST", TOKEN_URL)})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["token_type"] == "DPoP"  # the new token is bound to the proof's key as well
    assert claims_of(client, response.get_json()["access_token"])["cnf"] == \
        claims_of(client, subject)["cnf"]


def test_repeated_parameters_are_refused(client, services):
    a, b = services["A"], services["B"]
    subject = user_token(client, a)["access_token"]
    response = client.post("/token", headers=basic(*a), data=MultiDict([
        ("grant_type", EXCHANGE), ("subject_token", subject), ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN), ("audience", b[0])]))
    assert error_of(response) == "invalid_request"


PARAMETERS = ["grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type", "audience",
              "resource", "scope", "requested_token_type", "client_id", "client_secret"]
VALUES = st.one_of(st.text(max_size=60), st.sampled_from([EXCHANGE, ACCESS_TOKEN, "openid", "", "\x00", "%00"]),
                   st.text(alphabet="abcdefghij.-_", min_size=100, max_size=9000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.lists(st.tuples(st.sampled_from(PARAMETERS), VALUES), max_size=10), authenticate=st.booleans(),
       real_subject=st.booleans())
def test_random_exchange_bodies_never_give_a_5xx(client, services, body, authenticate, real_subject):
    a, b = services["A"], services["B"]
    data = [("grant_type", EXCHANGE), *body]
    if real_subject:  # reach the checks past the subject token too
        if a[0] not in _SUBJECT:
            _SUBJECT[a[0]] = user_token(client, a)["access_token"]
        data += [("subject_token", _SUBJECT[a[0]]),
                 ("subject_token_type", ACCESS_TOKEN), ("audience", b[0])]
    response = client.post("/token", headers=basic(*a) if authenticate else {}, data=MultiDict(data))
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.status_code in (200, 400, 401)
    if response.status_code != 200:
        assert response.get_json()["error"] in {"invalid_request", "invalid_target", "invalid_scope",
                                                "invalid_client", "unauthorized_client",
                                                "unsupported_grant_type"}


_SUBJECT: dict[str, str] = {}  # (one subject token per app: Hypothesis reuses the function-scoped fixtures)
