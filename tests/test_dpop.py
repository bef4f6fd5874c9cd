"""DPoP (RFC 9449) over HTTP, as a client holding a real key would use it: proofs built with joserfc, tokens
bound to their key at /token, then presented with proofs at /userinfo and the account API; introspection tells
a bound token apart; every refusal RFC 9449 4.3 lists is tried, and a random DPoP header never gives a 5xx.

Authlib 1.9.10 has no DPoP client (its integrations.requests_client sends bearer tokens only; its own source says
"Authlib supports neither DPoP nor mTLS"), so the client side here is joserfc, and the thumbprint is checked
against RFC 7638 computed by hand."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey

from idp import housekeeping
from idp.extensions import db
from idp.models import AuthorizationCode, Client, DPoPProof, Token, utcnow
from idp.security.otp import totp_code_at
from tests.support import PASSWORD, authorize, enrol_totp_in, make_client_in, pkce_pair
from tests.test_oidc_protocol import AT_ONCE, ON_POSTGRES, at_once

ISSUER = "http://localhost"  # tests/conftest.py base_config
TOKEN_URL = ISSUER + "/token"
USERINFO_URL = ISSUER + "/userinfo"
ALGS = {"ES256": lambda: ECKey.generate_key("P-256"), "ES384": lambda: ECKey.generate_key("P-384"),
        "RS256": lambda: RSAKey.generate_key(2048), "PS256": lambda: RSAKey.generate_key(2048),
        "Ed25519": lambda: OKPKey.generate_key("Ed25519")}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def proof(key, method: str, url: str, *, alg: str = "ES256", jti: str | None = None, iat: float | None = None,
          access_token: str | None = None, ath: str | None = None, nonce: str | None = None, typ="dpop+jwt",
          jwk: dict | None = None, **extra) -> str:
    """A DPoP proof JWT (RFC 9449 4.2) signed by ``key``."""
    header = {"typ": typ, "alg": alg, "jwk": jwk if jwk is not None else key.as_dict(private=False)}
    claims = {"jti": secrets.token_urlsafe(16) if jti is None else jti, "htm": method, "htu": url,
              "iat": int(time.time()) if iat is None else iat, **extra}
    if access_token is not None:
        claims["ath"] = b64(hashlib.sha256(access_token.encode()).digest())
    if ath is not None:
        claims["ath"] = ath
    if nonce is not None:
        claims["nonce"] = nonce
    return jws.serialize_compact(header, json.dumps(claims), key, algorithms=[alg])


def rfc7638(key: ECKey) -> str:
    """The RFC 7638 thumbprint of a P-256 key, by hand: the required members in lexical order, no whitespace."""
    public = key.as_dict(private=False)
    canonical = json.dumps({name: public[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode()).digest())


def claims_of(http, access_token: str) -> dict:
    keys = KeySet.import_key_set(http.get("/jwks.json").get_json())
    return jwt.decode(access_token, keys, algorithms=["RS256", "ES256"]).claims


def auth(secret_pair) -> dict:
    client_id, secret = secret_pair
    if secret is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def token_request(http, pair, data: dict, key=None, **proof_args):
    headers = auth(pair)
    if key is not None:
        headers["DPoP"] = proof(key, "POST", TOKEN_URL, **proof_args)
    body = dict(data)
    if pair[1] is None:
        body["client_id"] = pair[0]
    return http.post("/token", data=body, headers=headers)


def resource(http, method: str, path: str, access_token: str, key=None, scheme: str = "DPoP", **proof_args):
    headers = {"Authorization": f"{scheme} {access_token}"}
    if key is not None:
        proof_args.setdefault("access_token", access_token)
        headers["DPoP"] = proof(key, method, ISSUER + path, **proof_args)
    return http.open(path, method=method, headers=headers)


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def conf(make_client):
    """A confidential first-party client with the account scope."""
    return make_client(name="Conf App", first_party=True,
                       scopes=["openid", "profile", "email", "offline_access", "idp:account"])


@pytest.fixture
def public(make_client):
    """A public first-party client (a mobile app) with the account scope."""
    return make_client(name="Public App", public=True, first_party=True,
                       scopes=["openid", "profile", "email", "offline_access", "idp:account"])


@pytest.fixture
def machine(make_client):
    return make_client(name="Machine", redirect_uris=[], grant_types=["client_credentials"])


@pytest.fixture
def key():
    return ECKey.generate_key("P-256")


@pytest.fixture
def other_key():
    return ECKey.generate_key("P-256")


def code_for(http, pair, **params) -> tuple[str, str]:
    """A code for alice (signed in through the hosted pages), and the PKCE verifier it needs."""
    verifier, challenge = pkce_pair()
    code = authorize(http, pair[0], scope="openid offline_access idp:account", code_challenge=challenge,
                     code_challenge_method="S256", **params)
    return code, verifier


def redeem(http, pair, key=None, **params):
    code, verifier = code_for(http, pair, **params)
    return token_request(http, pair, {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                      "redirect_uri": "https://rp.example/cb"}, key)


# --- discovery --------------------------------------------------------------------------------------------------

def test_discovery_lists_the_asymmetric_algorithms_accepted(client):
    document = client.get("/.well-known/openid-configuration").get_json()
    assert {"ES256", "RS256", "PS256", "Ed25519"} <= set(document["dpop_signing_alg_values_supported"])
    # Asymmetric only (RFC 9449 4.2); Edwards keys by RFC 9864's fully-specified name, not the deprecated EdDSA.
    assert not {"HS256", "none", "EdDSA"} & set(document["dpop_signing_alg_values_supported"])


# --- happy paths ------------------------------------------------------------------------------------------------

def test_a_confidential_client_gets_a_bound_token_and_uses_it(app, client, alice, conf, key, other_key):
    response = redeem(client, conf, key)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["token_type"] == "DPoP"
    assert claims_of(client, body["access_token"])["cnf"] == {"jkt": rfc7638(key)} == {"jkt": key.thumbprint()}
    access = body["access_token"]

    userinfo = resource(client, "GET", "/userinfo", access, key)
    assert userinfo.status_code == 200 and userinfo.get_json()["sub"], userinfo.get_json()
    me = resource(client, "GET", "/api/v1/me", access, key)
    assert me.status_code == 200 and me.get_json()["email"] == "alice@example.com"
    # RFC 9449 6.2: the introspecting client sends no proof and learns the binding.
    seen = client.post("/introspect", data={"token": access}, headers=auth(conf)).get_json()
    assert seen["active"] and seen["token_type"] == "DPoP" and seen["cnf"] == {"jkt": key.thumbprint()}

    # RFC 9449 5: a confidential client's refresh token is not bound; the new access token is bound to the key of
    # the proof presented then, or to none.
    plain = token_request(client, conf, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert plain.status_code == 200 and plain.get_json()["token_type"] == "Bearer", plain.get_json()
    assert "cnf" not in claims_of(client, plain.get_json()["access_token"])
    assert resource(client, "GET", "/userinfo", plain.get_json()["access_token"], scheme="Bearer").status_code == 200
    rebound = token_request(client, conf, {"grant_type": "refresh_token",
                                           "refresh_token": plain.get_json()["refresh_token"]}, other_key)
    assert rebound.status_code == 200 and rebound.get_json()["token_type"] == "DPoP"
    assert claims_of(client, rebound.get_json()["access_token"])["cnf"] == {"jkt": other_key.thumbprint()}


def test_a_public_clients_refresh_token_is_bound_to_its_key(app, client, alice, public, key, other_key):
    first = redeem(client, public, key)
    assert first.status_code == 200 and first.get_json()["token_type"] == "DPoP", first.get_json()
    refresh = first.get_json()["refresh_token"]
    with app.app_context():
        row = db.session.execute(db.select(Token).where(Token.client_id == public[0])).scalar_one()
        assert row.dpop_jkt == key.thumbprint()
    seen = client.post("/introspect", data={"token": first.get_json()["access_token"]}, headers=auth(public))
    assert seen.status_code == 401  # (public clients may not introspect at all: unchanged)

    for attempt, wrong in (("none", None), ("another key", other_key)):
        refused = token_request(client, public, {"grant_type": "refresh_token", "refresh_token": refresh}, wrong)
        assert refused.status_code == 400, attempt
        assert refused.get_json()["error"] == "invalid_dpop_proof", attempt
    # Those refusals did not use the refresh token up: its holder, with the key, still refreshes.
    again = token_request(client, public, {"grant_type": "refresh_token", "refresh_token": refresh}, key)
    assert again.status_code == 200 and again.get_json()["token_type"] == "DPoP", again.get_json()
    access = again.get_json()["access_token"]
    assert claims_of(client, access)["cnf"]["jkt"] == key.thumbprint()
    assert resource(client, "GET", "/api/v1/me", access, key).status_code == 200
    # The new refresh token is bound to the same key.
    refused = token_request(client, public, {"grant_type": "refresh_token",
                                             "refresh_token": again.get_json()["refresh_token"]}, other_key)
    assert refused.get_json()["error"] == "invalid_dpop_proof"


@pytest.mark.parametrize("alg", sorted(ALGS))
def test_every_advertised_algorithm_binds_a_client_credentials_token(client, machine, alg):
    signer = ALGS[alg]()
    response = token_request(client, machine, {"grant_type": "client_credentials"}, signer, alg=alg)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["token_type"] == "DPoP"
    assert claims_of(client, response.get_json()["access_token"])["cnf"] == {"jkt": signer.thumbprint()}


def test_an_htu_written_differently_but_equivalent_is_accepted(client, machine, key):
    # RFC 9449 4.3: syntax- and scheme-based normalisation (RFC 3986 6.2.2, 6.2.3) before comparing.
    for url in ("HTTP://LocalHost:80/token", "http://localhost/%74oken"):
        headers = {**auth(machine), "DPoP": proof(key, "POST", url)}
        response = client.post("/token", data={"grant_type": "client_credentials"}, headers=headers)
        assert response.status_code == 200, (url, response.get_json())


def test_a_token_request_without_a_proof_still_gets_a_bearer_token(client, machine):
    response = token_request(client, machine, {"grant_type": "client_credentials"})
    assert response.status_code == 200 and response.get_json()["token_type"] == "Bearer"


# --- refusals at the token endpoint (RFC 9449 4.3) ----------------------------------------------------------------

HOUR = 3600


def _bad_proofs(key):
    now = int(time.time())
    private = key.as_dict(private=True)
    symmetric = OctKey.generate_key(256)
    return {
        "wrong htm": proof(key, "GET", TOKEN_URL),
        "htu of another path": proof(key, "POST", USERINFO_URL),
        "htu of another host": proof(key, "POST", "http://attacker.example/token"),
        "htu of another scheme": proof(key, "POST", "https://localhost/token"),
        "htu of another port": proof(key, "POST", "http://localhost:8080/token"),
        "htu with its query kept": proof(key, "POST", TOKEN_URL + "?grant_type=client_credentials"),
        "htu with a fragment": proof(key, "POST", TOKEN_URL + "#x"),
        "iat an hour old": proof(key, "POST", TOKEN_URL, iat=now - HOUR),
        "iat an hour ahead": proof(key, "POST", TOKEN_URL, iat=now + HOUR),
        "iat not a number": proof(key, "POST", TOKEN_URL, iat="now"),
        "no jti": proof(key, "POST", TOKEN_URL, jti=""),
        "a private key in its jwk": proof(key, "POST", TOKEN_URL, jwk=private),
        "a symmetric alg": proof(symmetric, "POST", TOKEN_URL, alg="HS256", jwk=symmetric.as_dict()),
        "typ jwt": proof(key, "POST", TOKEN_URL, typ="JWT"),
        "the jwk of another key": proof(key, "POST", TOKEN_URL, jwk=ECKey.generate_key("P-256").as_dict(
            private=False)),
        "an RSA jwk for ES256": proof(key, "POST", TOKEN_URL, jwk=RSAKey.generate_key(2048).as_dict(private=False)),
        "alg none": b64(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": key.as_dict(private=False)}).encode())
        + "." + b64(json.dumps({"jti": "x", "htm": "POST", "htu": TOKEN_URL, "iat": now}).encode()) + ".",
        "a malformed header": "not a jwt",
        "a header of four parts": "a.b.c.d",
        "a signature cut off": proof(key, "POST", TOKEN_URL)[:-10],
        "a JSON array as header": b64(b"[1]") + ".e30.c2ln",
    }


@pytest.mark.parametrize("case", sorted(_bad_proofs(ECKey.generate_key("P-256"))))
def test_a_bad_proof_is_invalid_dpop_proof_at_the_token_endpoint(client, machine, key, case):
    bad = _bad_proofs(key)[case]
    response = client.post("/token", data={"grant_type": "client_credentials"}, headers={**auth(machine), "DPoP": bad})
    assert response.status_code == 400, (case, response.status_code, response.get_data(as_text=True)[:300])
    assert response.get_json()["error"] == "invalid_dpop_proof", case
    assert "access_token" not in response.get_json()


def test_two_dpop_headers_are_refused(client, machine, key):
    headers = [*auth(machine).items(), ("DPoP", proof(key, "POST", TOKEN_URL)),
               ("DPoP", proof(key, "POST", TOKEN_URL))]
    response = client.post("/token", data={"grant_type": "client_credentials"}, headers=headers)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_dpop_proof"


def test_a_proof_is_accepted_once(client, machine, key):
    once = proof(key, "POST", TOKEN_URL)
    first = client.post("/token", data={"grant_type": "client_credentials"}, headers={**auth(machine), "DPoP": once})
    again = client.post("/token", data={"grant_type": "client_credentials"}, headers={**auth(machine), "DPoP": once})
    assert first.status_code == 200
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_dpop_proof"
    assert "used already" in again.get_json()["error_description"]


def test_a_proof_used_on_one_instance_is_refused_by_another(make_app, key):
    """Two instances on one database and one Redis (or, without Redis, the database alone): the jti is shared."""
    first = make_app()
    second = make_app(IDP_DATABASE_URL=first.config["IDP_DATABASE_URL"],
                      RATELIMIT_KEY_PREFIX=first.config["RATELIMIT_KEY_PREFIX"])
    pair = make_client_in(first, name="Machine", redirect_uris=[], grant_types=["client_credentials"])
    once = proof(key, "POST", TOKEN_URL)
    answered = first.test_client().post("/token", data={"grant_type": "client_credentials"},
                                        headers={**auth(pair), "DPoP": once})
    assert answered.status_code == 200, answered.get_json()
    replayed = second.test_client().post("/token", data={"grant_type": "client_credentials"},
                                         headers={**auth(pair), "DPoP": once})
    assert replayed.status_code == 400 and "used already" in replayed.get_json()["error_description"]


def test_without_redis_the_jti_is_kept_in_the_database_until_housekeeping_removes_it(make_app, key):
    app = make_app(IDP_REDIS_URL="")
    pair = make_client_in(app, name="Machine", redirect_uris=[], grant_types=["client_credentials"])
    http = app.test_client()
    once = proof(key, "POST", TOKEN_URL)
    assert http.post("/token", data={"grant_type": "client_credentials"},
                     headers={**auth(pair), "DPoP": once}).status_code == 200
    assert http.post("/token", data={"grant_type": "client_credentials"},
                     headers={**auth(pair), "DPoP": once}).get_json()["error"] == "invalid_dpop_proof"
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(DPoPProof)).scalar() == 1
        housekeeping.run(now=utcnow())  # not yet expired: kept
        assert db.session.execute(db.select(db.func.count()).select_from(DPoPProof)).scalar() == 1
        from datetime import timedelta

        done = housekeeping.run(now=utcnow() + timedelta(hours=1))
        assert done.counts["dpop_proofs"] == 1
        assert db.session.execute(db.select(db.func.count()).select_from(DPoPProof)).scalar() == 0


def test_a_client_registered_for_dpop_must_send_a_proof(app, client, cli, key):
    created = cli("clients", "create", "--name", "Strict", "--grant-type", "client_credentials", "--dpop", "--json")
    assert created.exit_code == 0, created.output
    pair = (json.loads(created.output)["client_id"], json.loads(created.output)["client_secret"])
    with app.app_context():
        assert db.session.execute(db.select(Client.dpop_bound_access_tokens)
                                  .where(Client.client_id == pair[0])).scalar() is True
    refused = token_request(client, pair, {"grant_type": "client_credentials"})
    assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_dpop_proof"
    assert token_request(client, pair, {"grant_type": "client_credentials"}, key).status_code == 200
    # The setting goes back off under the admin API's name (`idp clients update`, PATCH /admin/api/clients/ID).
    assert cli("clients", "update", pair[0], '{"dpop_bound_access_tokens": false}').exit_code == 0
    assert token_request(client, pair, {"grant_type": "client_credentials"}).status_code == 200


# --- resources (RFC 9449 7) -------------------------------------------------------------------------------------

@pytest.fixture
def bound(client, machine, key):
    """A bound client_credentials access token is enough for userinfo's refusals; a user's for the account API."""
    return token_request(client, machine, {"grant_type": "client_credentials"}, key).get_json()["access_token"]


@pytest.fixture
def users_token(client, alice, conf, key):
    response = redeem(client, conf, key)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


@pytest.mark.parametrize("path", ["/userinfo", "/api/v1/me"])
def test_a_bound_token_sent_as_bearer_is_refused_with_a_dpop_challenge(client, users_token, path):
    response = resource(client, "GET", path, users_token, scheme="Bearer")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('DPoP error="invalid_token"') and 'algs="' in challenge and "ES256" in challenge


@pytest.mark.parametrize("path", ["/userinfo", "/api/v1/me"])
def test_resource_refusals(client, users_token, key, other_key, path):
    url = ISSUER + path
    cases = {
        "no proof": None,
        "no ath": proof(key, "GET", url),
        "a wrong ath": proof(key, "GET", url, ath=b64(hashlib.sha256(b"another token").digest())),
        "another key": proof(other_key, "GET", url, access_token=users_token),
        "another endpoint": proof(key, "GET", ISSUER + "/jwks.json", access_token=users_token),
        "another method": proof(key, "POST", url, access_token=users_token),
        "iat too old": proof(key, "GET", url, access_token=users_token, iat=int(time.time()) - HOUR),
        "malformed": "x.y",
    }
    for case, value in cases.items():
        headers = {"Authorization": f"DPoP {users_token}", **({"DPoP": value} if value else {})}
        response = client.get(path, headers=headers)
        assert response.status_code == 401, (case, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"'), case
        assert "sub" not in (response.get_json() or {}), case
    # And a good one works after all those refusals.
    assert resource(client, "GET", path, users_token, key).status_code == 200


def test_a_replayed_proof_at_a_resource_is_refused(client, users_token, key):
    once = proof(key, "GET", USERINFO_URL, access_token=users_token)
    headers = {"Authorization": f"DPoP {users_token}", "DPoP": once}
    assert client.get("/userinfo", headers=headers).status_code == 200
    assert client.get("/userinfo", headers=headers).status_code == 401


def test_an_unbound_token_sent_with_the_dpop_scheme_is_refused(client, machine, key):
    plain = token_request(client, machine, {"grant_type": "client_credentials"}).get_json()["access_token"]
    response = resource(client, "GET", "/userinfo", plain, key)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')


def test_introspection_of_an_unbound_token_says_bearer_and_no_cnf(client, alice, conf):
    response = redeem(client, conf)
    seen = client.post("/introspect", data={"token": response.get_json()["access_token"]}, headers=auth(conf))
    assert seen.get_json()["token_type"] == "Bearer" and "cnf" not in seen.get_json()


def test_cors_exposes_the_nonce_header(client, machine):
    response = client.post("/token", data={"grant_type": "client_credentials"},
                           headers={**auth(machine), "Origin": "https://spa.example"})
    assert "DPoP-Nonce" in response.headers["Access-Control-Expose-Headers"]
    preflight = client.options("/token", headers={"Origin": "https://spa.example",
                                                  "Access-Control-Request-Headers": "dpop"})
    assert "DPoP" in preflight.headers["Access-Control-Allow-Headers"]


# --- server nonces (RFC 9449 8, 9) ------------------------------------------------------------------------------

def test_nonces_at_the_token_endpoint_and_at_userinfo(make_app, key):
    app = make_app(IDP_DPOP_NONCE=True)
    http = app.test_client()
    pair = make_client_in(app, name="Machine", redirect_uris=[], grant_types=["client_credentials"])
    asked = token_request(http, pair, {"grant_type": "client_credentials"}, key)
    assert asked.status_code == 400 and asked.get_json()["error"] == "use_dpop_nonce"
    nonce = asked.headers["DPoP-Nonce"]
    wrong = token_request(http, pair, {"grant_type": "client_credentials"}, key, nonce="not-the-nonce")
    assert wrong.get_json()["error"] == "use_dpop_nonce"
    done = token_request(http, pair, {"grant_type": "client_credentials"}, key, nonce=nonce)
    assert done.status_code == 200 and done.get_json()["token_type"] == "DPoP", done.get_json()
    assert done.headers["DPoP-Nonce"]
    access = done.get_json()["access_token"]
    # At a resource: 401 with the challenge and the header (RFC 9449 9); this machine token has no user, so the
    # good proof ends at userinfo's own refusal of a token without a user, past the proof.
    challenged = resource(http, "GET", "/userinfo", access, key)
    assert challenged.status_code == 401
    assert challenged.headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    assert challenged.headers["DPoP-Nonce"] == nonce
    passed = resource(http, "GET", "/userinfo", access, key, nonce=nonce)
    assert "use_dpop_nonce" not in passed.headers.get("WWW-Authenticate", "")


# --- authorization code binding (RFC 9449 10) ---------------------------------------------------------------------

def test_a_code_bound_by_dpop_jkt_is_redeemed_only_with_that_key(app, client, alice, conf, key, other_key):
    code, verifier = code_for(client, conf, dpop_jkt=key.thumbprint())
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": "https://rp.example/cb"}
    for attempt, wrong in (("no proof", None), ("another key", other_key)):
        refused = token_request(client, conf, data, wrong)
        assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_dpop_proof", attempt
    with app.app_context():
        assert db.session.execute(db.select(AuthorizationCode.used_at)).scalar() is None  # not used up
    done = token_request(client, conf, data, key)
    assert done.status_code == 200 and done.get_json()["token_type"] == "DPoP", done.get_json()


def test_a_malformed_dpop_jkt_is_invalid_request(client, alice, conf):
    from tests.support import authorize_url, query_params, walk_authorize

    response = walk_authorize(client, authorize_url(conf[0], dpop_jkt="not a thumbprint"))
    assert response.status_code == 302 and query_params(response.headers["Location"])["error"] == "invalid_request"


def test_a_proof_at_the_par_endpoint_binds_the_code(client, alice, conf, key, other_key):
    verifier, challenge = pkce_pair()
    pushed = client.post("/par", data={"client_id": conf[0], "response_type": "code", "scope": "openid",
                                       "redirect_uri": "https://rp.example/cb", "code_challenge": challenge,
                                       "code_challenge_method": "S256"},
                         headers={**auth(conf), "DPoP": proof(key, "POST", ISSUER + "/par")})
    assert pushed.status_code == 201, pushed.get_json()
    from tests.support import query_params, walk_authorize

    landed = walk_authorize(client, f"/authorize?client_id={conf[0]}&request_uri={pushed.get_json()['request_uri']}")
    code = query_params(landed.headers["Location"])["code"]
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": "https://rp.example/cb"}
    assert token_request(client, conf, data, other_key).get_json()["error"] == "invalid_dpop_proof"
    assert token_request(client, conf, data, key).get_json()["token_type"] == "DPoP"
    # A dpop_jkt that names another key than the PAR proof's is refused there.
    mismatch = client.post("/par", data={"client_id": conf[0], "response_type": "code", "scope": "openid",
                                         "dpop_jkt": other_key.thumbprint()},
                           headers={**auth(conf), "DPoP": proof(key, "POST", ISSUER + "/par")})
    assert mismatch.status_code == 400 and mismatch.get_json()["error"] == "invalid_dpop_proof"


# --- the challenge endpoint's auth_session (draft-ietf-oauth-first-party-apps, DPoP) --------------------------------

CHALLENGE_URL = ISSUER + "/authorize-challenge"


def test_the_auth_session_is_bound_to_the_first_requests_key(app, client, alice, public, key, other_key):
    secret = enrol_totp_in(app, "alice@example.com")[0]
    verifier, challenge = pkce_pair()
    first = client.post("/authorize-challenge", data={
        "client_id": public[0], "response_type": "code", "scope": "openid", "code_challenge": challenge,
        "code_challenge_method": "S256", "username": "alice@example.com", "password": PASSWORD},
        headers={"DPoP": proof(key, "POST", CHALLENGE_URL)})
    assert first.status_code == 403 and first.get_json()["step"] == "otp", first.get_json()
    auth_session = first.get_json()["auth_session"]
    answer = {"auth_session": auth_session, "client_id": public[0], "code": totp_code_at(secret, utcnow())}
    for attempt, wrong in (("no proof", None), ("another key", other_key)):
        headers = {"DPoP": proof(wrong, "POST", CHALLENGE_URL)} if wrong else {}
        refused = client.post("/authorize-challenge", data=answer, headers=headers)
        assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_dpop_proof", attempt
    # The refusals did not use the auth_session up: the app with its key goes on.
    done = client.post("/authorize-challenge", data=answer, headers={"DPoP": proof(key, "POST", CHALLENGE_URL)})
    assert done.status_code == 200, done.get_json()
    code = done.get_json()["authorization_code"]
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "client_id": public[0]}
    assert client.post("/token", data=data).get_json()["error"] == "invalid_dpop_proof"  # bound like a dpop_jkt
    redeemed = client.post("/token", data=data, headers={"DPoP": proof(key, "POST", TOKEN_URL)})
    assert redeemed.status_code == 200 and redeemed.get_json()["token_type"] == "DPoP", redeemed.get_json()
    # A step-up on the session it ended in needs the same key too.
    step_up = {"auth_session": done.get_json()["auth_session"], "client_id": public[0], "response_type": "code",
               "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256", "max_age": "0"}
    stolen = client.post("/authorize-challenge", data=step_up,
                         headers={"DPoP": proof(other_key, "POST", CHALLENGE_URL)})
    assert stolen.status_code == 400 and stolen.get_json()["error"] == "invalid_dpop_proof"
    mine = client.post("/authorize-challenge", data=step_up, headers={"DPoP": proof(key, "POST", CHALLENGE_URL)})
    assert mine.status_code == 403 and mine.get_json()["step"] == "password", mine.get_json()


def test_an_auth_session_begun_without_a_proof_stays_unbound(app, client, alice, public):
    enrol_totp_in(app, "alice@example.com")
    verifier, challenge = pkce_pair()
    first = client.post("/authorize-challenge", data={
        "client_id": public[0], "response_type": "code", "scope": "openid", "code_challenge": challenge,
        "code_challenge_method": "S256", "username": "alice@example.com", "password": PASSWORD})
    assert first.status_code == 403
    with app.app_context():
        from idp.models import LoginTransaction

        txn = db.session.execute(db.select(LoginTransaction)).scalars().one()
        assert txn.state.code_request["dpop_jkt"] is None


# --- random headers never give a 5xx ------------------------------------------------------------------------------

def _segment(draw_json):
    return st.one_of(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=40),
                     draw_json.map(lambda value: b64(json.dumps(value).encode())))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
                     lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(
                         ["typ", "alg", "jwk", "kty", "crv", "x", "y", "n", "e", "d", "k", "jti", "htm", "htu", "iat",
                          "ath", "nonce"]), children, max_size=5), max_leaves=10)
_HEADERS = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80),
    st.tuples(_segment(_JSON), _segment(_JSON), _segment(_JSON)).map(".".join),
)


def test_random_dpop_headers_never_give_a_5xx(client, machine, users_token, key):
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(value=_HEADERS, where=st.sampled_from(["token", "userinfo", "account"]))
    def one(value, where):
        if where == "token":
            response = client.post("/token", data={"grant_type": "client_credentials"},
                                   headers={**auth(machine), "DPoP": value})
        else:
            path = "/userinfo" if where == "userinfo" else "/api/v1/me"
            response = client.get(path, headers={"Authorization": f"DPoP {users_token}", "DPoP": value})
        assert response.status_code < 500, (where, value, response.get_data(as_text=True)[:300])

    one()


def test_a_proof_stays_used_across_a_redis_outage(app, make_app, key):
    """Review finding: with Redis in front of the table, a proof seen by one store was accepted by the other around
    a Redis outage. The table is now the only memory, so Redis' state does not matter."""
    down = make_app(IDP_REDIS_URL="redis://127.0.0.1:1/0")  # Redis down from the start
    healthy = make_app(IDP_DATABASE_URL=down.config["IDP_DATABASE_URL"])  # the same database, Redis back
    pair = make_client_in(down, name="Machine", redirect_uris=[], grant_types=["client_credentials"])
    http = down.test_client()
    once = proof(key, "POST", TOKEN_URL)
    assert http.post("/token", data={"grant_type": "client_credentials"},
                     headers={**auth(pair), "DPoP": once}).status_code == 200
    replayed = healthy.test_client().post("/token", data={"grant_type": "client_credentials"},
                                          headers={**auth(pair), "DPoP": once})
    assert replayed.status_code == 400 and "used already" in replayed.get_json()["error_description"]


@pytest.mark.parametrize("iat", [10 ** 400, -(10 ** 400)])
def test_a_huge_integer_iat_is_an_invalid_proof_not_a_500(client, machine, key, iat):
    response = client.post("/token", data={"grant_type": "client_credentials"},
                           headers={**auth(machine), "DPoP": proof(key, "POST", TOKEN_URL, iat=iat)})
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_dpop_proof"


@ON_POSTGRES
def test_one_proof_presented_six_times_at_once_is_accepted_once(app, machine, key):
    """SECURITY.md 32: the jti is taken by one unique INSERT, also by requests that arrive together."""
    once = proof(key, "POST", TOKEN_URL)
    responses = at_once(app, lambda http: http.post("/token", data={"grant_type": "client_credentials"},
                                                      headers={**auth(machine), "DPoP": once}))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [400] * (AT_ONCE - 1), statuses
    assert all(r.get_json()["error"] == "invalid_dpop_proof" for r in responses if r.status_code == 400)
