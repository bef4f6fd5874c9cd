"""Request objects (RFC 9101, OIDC Core 6) at /authorize and /par: a signed request by value and by reference (a
loopback HTTP server stands in for the client's request_uri host) completes the code flow with the object's scope,
nonce, state and PKCE challenge while the query's other parameters are ignored; every fault of the object, its
signature or its fetch is refused on the error page (SECURITY.md 2), never sent to a redirect URI.

Request objects are signed with joserfc, the JOSE library Authlib itself uses (Authlib has no client-side helper for
request objects: its rfc9101 module is the server's side).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from urllib.parse import urlencode

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey
from werkzeug.datastructures import MultiDict

from idp.extensions import db
from idp.models import PushedRequest
from idp.oidc import registration, request_objects
from tests.support import RP_CALLBACK, begun_sign_in, follow, ok, pkce_pair, query_params, refused

ISSUER = "http://localhost"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"}, private=True)
STRANGER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)  # same kid, another key
JWKS = {"keys": [RSA.as_dict(private=False), EC.as_dict(private=False)]}


def sign(claims: dict, key=RSA, alg: str = "RS256", **header) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, **header}, claims, key, algorithms=[alg])


def unsigned(claims: dict) -> str:
    import base64

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}."


def request_claims(sender: str, challenge: str, /, **changes) -> dict:
    """An authorization request as a request object's claims (RFC 9101 4); a None value drops a claim."""
    now = int(time.time())
    claims = {"iss": sender, "aud": ISSUER, "client_id": sender, "exp": now + 300, "iat": now, "nbf": now,
              "jti": uuid.uuid4().hex, "response_type": "code", "redirect_uri": RP_CALLBACK,
              "scope": "openid profile", "state": "object-state", "nonce": "object-nonce",
              "code_challenge": challenge, "code_challenge_method": "S256", **changes}
    return {k: v for k, v in claims.items() if v is not None}


def authorize_path(client_id: str, **params) -> str:
    return "/authorize?" + urlencode({"client_id": client_id, **params})


def assert_error_page(response, error: str) -> None:
    """SECURITY.md 2: the error page naming the error, never a redirect."""
    assert response.status_code == 400, (response.status_code, response.headers.get("Location"))
    assert "Location" not in response.headers and response.mimetype == "text/html"
    assert error in response.get_data(as_text=True), response.get_data(as_text=True)[:500]


def redeem(http, client_id: str, secret: str, code: str, verifier: str) -> dict:
    response = http.post("/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP_CALLBACK,
                                         "code_verifier": verifier}, auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def id_claims(http, body: dict) -> dict:
    keys = KeySet.import_key_set(http.get("/jwks.json").get_json())
    return jwt.decode(body["id_token"], keys, algorithms=["RS256", "ES256"]).claims


class RequestHost(http.server.ThreadingHTTPServer):
    """A loopback HTTP server standing in for where a client publishes its request objects: each path answers as
    ``routes[path]`` says (status, content type, body, seconds to wait first, extra headers); it counts requests."""

    daemon_threads = True

    def __init__(self):
        self.routes: dict[str, tuple] = {}
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                status, content_type, body, wait, headers = outer.routes.get(
                    self.path, (404, "text/plain", b"", 0, {}))
                time.sleep(wait)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # idp gave up waiting and closed the connection
                    pass

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_port}"

    def serve(self, path: str, body: str | bytes, *, status: int = 200,
              content_type: str = "application/oauth-authz-req+jwt", wait: float = 0, headers=None) -> str:
        self.routes[path] = (status, content_type, body.encode() if isinstance(body, str) else body, wait,
                             headers or {})
        return self.url + path


@pytest.fixture
def host():
    server = RequestHost()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)



@pytest.fixture
def rp(make_client, host):
    """A confidential first-party client with its public keys and two registered request_uris on the host."""
    return make_client(name="JAR App", first_party=True, jwks=JWKS,
                       request_uris=[host.url + "/request.jwt", host.url + "/other.jwt"])


@pytest.fixture
def pkce():
    return pkce_pair()


def code_of(walked) -> str:
    assert walked.location and walked.location.startswith(RP_CALLBACK + "?"), (walked.location, walked.screens)
    found = query_params(walked.location)
    assert found["iss"] == ISSUER and found["state"] == "object-state", found
    return found["code"]


# --- the flow ---------------------------------------------------------------------------------------------------

def test_a_signed_request_by_value_completes_the_code_flow_with_the_objects_parameters(app, client, alice, rp,
                                                                                      pkce):
    verifier, challenge = pkce
    request = sign(request_claims(rp[0], challenge))
    # RFC 9101 6.3: the query's own scope, state, nonce and redirect URI are ignored, not merged.
    walked = follow(client, client.get(authorize_path(
        rp[0], request=request, scope="openid email phone", state="query-state", nonce="query-nonce",
        redirect_uri="https://evil.example/cb", response_type="code")))
    tokens = redeem(client, *rp, code_of(walked), verifier)
    assert tokens["scope"].split() == ["openid", "profile"]
    claims = id_claims(client, tokens)
    assert claims["nonce"] == "object-nonce" and claims["aud"] == [rp[0]]
    info = client.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}).get_json()
    assert "email" not in info and info["name"] == "Alice"


def test_the_pkce_challenge_of_the_object_binds_the_code(client, alice, rp, pkce):
    verifier, challenge = pkce
    other_verifier, _ = pkce_pair()
    walked = follow(client, client.get(authorize_path(rp[0], request=sign(request_claims(rp[0], challenge)),
                                                      code_challenge=pkce_pair()[1], code_challenge_method="S256")))
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code_of(walked),
                                           "redirect_uri": RP_CALLBACK, "code_verifier": other_verifier},
                           auth=rp)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize(("key", "alg"), [(RSA, "PS256"), (EC, "ES256")])
def test_ps256_and_es256_objects_verify_with_the_registered_keys(client, alice, rp, pkce, key, alg):
    verifier, challenge = pkce
    walked = follow(client, client.get(authorize_path(rp[0], request=sign(request_claims(rp[0], challenge),
                                                                          key=key, alg=alg))))
    assert id_claims(client, redeem(client, *rp, code_of(walked), verifier))["nonce"] == "object-nonce"


def test_a_request_by_reference_is_fetched_from_its_registered_uri(client, alice, rp, host, pkce):
    verifier, challenge = pkce
    uri = host.serve("/request.jwt", sign(request_claims(rp[0], challenge, nonce="by-reference")),
                     content_type="application/oauth-authz-req+jwt; charset=ascii")
    walked = follow(client, client.get(authorize_path(rp[0], request_uri=uri, scope="openid email")))
    assert id_claims(client, redeem(client, *rp, code_of(walked), verifier))["nonce"] == "by-reference"
    assert "/request.jwt" in host.hits
    # application/jwt is accepted too
    uri = host.serve("/other.jwt", sign(request_claims(rp[0], challenge)), content_type="application/jwt")
    assert code_of(follow(client, client.get(authorize_path(rp[0], request_uri=uri))))


def test_an_error_once_the_object_is_verified_goes_to_its_redirect_uri(client, alice, rp, pkce):
    request = sign(request_claims(rp[0], pkce[1], scope="openid address"))
    response = client.get(authorize_path(rp[0], request=request, scope="openid"))
    assert response.status_code == 302
    found = query_params(response.headers["Location"])
    assert response.headers["Location"].startswith(RP_CALLBACK + "?")
    assert found["error"] == "invalid_scope" and found["state"] == "object-state" and found["iss"] == ISSUER


def test_an_unsigned_object_only_for_a_client_that_opted_in(client, alice, make_client, pkce):
    verifier, challenge = pkce
    opted = make_client(name="Plain App", first_party=True, request_object_signing_alg="none")
    walked = follow(client, client.get(authorize_path(opted[0], request=unsigned(request_claims(opted[0],
                                                                                                challenge)))))
    assert id_claims(client, redeem(client, *opted, code_of(walked), verifier))["nonce"] == "object-nonce"
    # the opted-in client is held to "none": a signature is not what it registered (OIDC Registration 2)
    signed = sign(request_claims(opted[0], challenge))
    assert_error_page(client.get(authorize_path(opted[0], request=signed)), "invalid_request_object")


# --- refusals on the error page ---------------------------------------------------------------------------------

def _bad_objects(client_id: str, challenge: str) -> dict[str, str]:
    now = int(time.time())
    return {
        "wrong key": sign(request_claims(client_id, challenge), key=STRANGER),
        "unknown kid": sign(request_claims(client_id, challenge), kid="nobody"),
        "alg none without opt-in": unsigned(request_claims(client_id, challenge)),
        "HS256": jwt.encode({"alg": "HS256"}, request_claims(client_id, challenge), OctKey.import_key("x" * 32)),
        "alg and key type differ": sign(request_claims(client_id, challenge), key=EC, alg="ES256", kid="rsa-1"),
        "expired": sign(request_claims(client_id, challenge, exp=now - 5, iat=now - 300, nbf=now - 300)),
        "no exp": sign(request_claims(client_id, challenge, exp=None)),
        "not valid yet": sign(request_claims(client_id, challenge, nbf=now + 600, exp=now + 900)),
        "lives over an hour": sign(request_claims(client_id, challenge, exp=now + 3700)),
        "wrong aud": sign(request_claims(client_id, challenge, aud="https://other-idp.example")),
        "wrong iss": sign(request_claims(client_id, challenge, iss="someone-else")),
        "client_id mismatch": sign(request_claims(client_id, challenge, client_id="someone-else")),
        "no client_id inside": sign(request_claims(client_id, challenge, client_id=None)),
        "another kind of JWT": sign(request_claims(client_id, challenge), typ="logout+jwt"),
        "a request inside": sign(request_claims(client_id, challenge, request="a.b.c")),
        "a list value": sign(request_claims(client_id, challenge, scope=["openid"])),
        "a NUL inside": sign(request_claims(client_id, challenge, nonce="a\x00b")),
        "not a JWS": "not-a-jwt",
        "garbage": "e30.e30.e30",
    }


def test_bad_request_objects_get_the_error_page_and_no_code(client, alice, rp, pkce):
    for name, request in _bad_objects(rp[0], pkce[1]).items():
        response = client.get(authorize_path(rp[0], request=request, redirect_uri=RP_CALLBACK, state="query"))
        assert response.status_code == 400 and "Location" not in response.headers, name
        assert "invalid_request_object" in response.get_data(as_text=True), name


def test_a_request_object_needs_its_client_id_in_the_query_too(client, rp, pkce):
    request = sign(request_claims(rp[0], pkce[1]))
    assert_error_page(client.get("/authorize?" + urlencode({"request": request})), "invalid_request")
    assert_error_page(client.get(authorize_path("no-such-client", request=request)), "invalid_client")
    other = authorize_path(rp[0], request=request, request_uri="https://rp.example/r.jwt")
    assert_error_page(client.get(other), "invalid_request")


def test_an_unregistered_request_uri_is_never_fetched(client, rp, host, pkce):
    uri = host.serve("/unregistered.jwt", sign(request_claims(rp[0], pkce[1])))
    assert_error_page(client.get(authorize_path(rp[0], request_uri=uri)), "invalid_request_uri")
    assert host.hits == []


def test_failing_request_uris_get_the_error_page(client, alice, rp, host, pkce, monkeypatch):
    good = sign(request_claims(rp[0], pkce[1]))
    uri = host.url + "/request.jwt"
    cases = {
        "oversize": dict(body=good + "." * (request_objects.MAX_BYTES + 1)),
        "redirecting": dict(body="", status=302, headers={"Location": host.url + "/other.jwt"}),
        "not found": dict(body="", status=404),
        "wrong media type": dict(body=good, content_type="text/html"),
        "slow": dict(body=good, wait=1.5),
    }
    host.serve("/other.jwt", good)  # where the redirect points: never followed
    monkeypatch.setattr(request_objects, "FETCH_SECONDS", 0.5)
    for name, answer in cases.items():
        host.serve("/request.jwt", **answer)
        response = client.get(authorize_path(rp[0], request_uri=uri))
        assert response.status_code == 400 and "Location" not in response.headers, name
        assert "invalid_request_uri" in response.get_data(as_text=True), name
    assert "/other.jwt" not in host.hits
    # fetched, but what came is no request object
    host.serve("/request.jwt", "not a jwt")
    assert_error_page(client.get(authorize_path(rp[0], request_uri=uri)), "invalid_request_object")


def test_an_expired_object_still_finishes_the_sign_in_it_began(app, client, alice, rp, pkce, monkeypatch):
    """A sign-in that began while the object was valid may finish after its exp, in the browser that began it."""
    verifier, challenge = pkce
    now = time.time()
    request = sign(request_claims(rp[0], challenge, exp=int(now) + 120))
    started = client.get(authorize_path(rp[0], request=request))
    begun_sign_in(started)
    real = request_objects.verify

    def later(client_row, raw, when, *, grace=False):  # the clock moves past exp while the user signs in
        from datetime import timedelta
        return real(client_row, raw, when + timedelta(seconds=300), grace=grace)

    monkeypatch.setattr(request_objects, "verify", later)
    assert id_claims(client, redeem(client, *rp, code_of(follow(client, started)), verifier))["nonce"]
    # a fresh request with that object now is refused
    fresh = app.test_client()
    assert_error_page(fresh.get(authorize_path(rp[0], request=request)), "invalid_request_object")


# --- at /par ----------------------------------------------------------------------------------------------------

def test_a_request_object_pushed_to_par_is_what_authorize_serves(app, client, alice, rp, pkce):
    verifier, challenge = pkce
    pushed = client.post("/par", data={"client_id": rp[0], "request": sign(request_claims(rp[0], challenge)),
                                       "scope": "openid email", "state": "form-state"}, auth=rp)
    assert pushed.status_code == 201, pushed.get_json()
    with app.app_context():
        stored = dict(db.session.execute(db.select(PushedRequest)).scalar_one().parameters)
    assert stored["scope"] == "openid profile" and "request" not in stored and stored["state"] == "object-state"
    walked = follow(client, client.get(authorize_path(rp[0], request_uri=pushed.get_json()["request_uri"])))
    tokens = redeem(client, *rp, code_of(walked), verifier)
    assert tokens["scope"].split() == ["openid", "profile"]
    assert id_claims(client, tokens)["nonce"] == "object-nonce"


def test_a_bad_request_object_at_par_is_400_and_nothing_is_stored(app, client, rp, pkce):
    for name, request in _bad_objects(rp[0], pkce[1]).items():
        response = client.post("/par", data={"client_id": rp[0], "request": request}, auth=rp)
        assert response.status_code == 400, name
        assert response.get_json()["error"] == "invalid_request_object", (name, response.get_json())
    with app.app_context():
        assert db.session.execute(db.select(PushedRequest)).first() is None


# --- discovery and registration ---------------------------------------------------------------------------------

def test_discovery_says_request_objects_are_supported_from_registered_uris(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["request_parameter_supported"] is True and meta["request_uri_parameter_supported"] is True
    assert meta["require_request_uri_registration"] is True
    assert meta["request_object_signing_alg_values_supported"] == ["RS256", "ES256", "PS256", "none"]


def test_the_cli_registers_request_uris_and_the_algorithm(cli, app):
    created = json.loads(ok(cli("clients", "create", "--name", "JAR", "--redirect-uri", RP_CALLBACK, "--jwks",
                                json.dumps(JWKS), "--request-uri", "https://rp.example/r1.jwt", "--request-uri",
                                "https://rp.example/r2.jwt", "--request-object-alg", "PS256", "--json")))
    shown = json.loads(ok(cli("clients", "show", created["client_id"])))
    assert shown["request_uris"] == ["https://rp.example/r1.jwt", "https://rp.example/r2.jwt"]
    assert shown["request_object_signing_alg"] == "PS256"
    changed = json.loads(ok(cli("clients", "update", created["client_id"], '{"request_uris": []}')))
    assert changed["request_uris"] == []
    assert "request objects are verified with the client's keys" in refused(cli(
        "clients", "create", "--name", "No keys", "--redirect-uri", RP_CALLBACK, "--request-uri",
        "https://rp.example/r.jwt"))
    assert "request URI is an https URL" in refused(cli(
        "clients", "create", "--name", "Fragment", "--redirect-uri", RP_CALLBACK, "--jwks", json.dumps(JWKS),
        "--request-uri", "https://rp.example/r.jwt#hash"))


def test_plain_http_request_uris_only_to_loopback_and_never_in_production(app):
    with app.app_context():
        assert registration.validate_request_uri("http://127.0.0.1:8080/r.jwt") is None
        assert registration.validate_request_uri("http://rp.example/r.jwt") is not None
        app.config["IDP_ENV"] = "production"
        try:
            assert registration.validate_request_uri("http://127.0.0.1:8080/r.jwt") is not None
            assert registration.validate_request_uri("https://rp.example/r.jwt") is None
        finally:
            app.config["IDP_ENV"] = "testing"


def test_parameters_of_keeps_the_claims_object_and_numbers(app):
    parameters = request_objects.parameters_of({"iss": "c", "claims": {"userinfo": {"email": None}},
                                                "max_age": 300, "scope": "openid"}, "c")
    assert parameters == MultiDict([("client_id", "c"), ("claims", '{"userinfo": {"email": null}}'),
                                    ("max_age", "300"), ("scope", "openid")])


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_huge_integer_date_is_an_invalid_object_not_a_500(client, rp, pkce, claim):
    """Review finding: float(10**400) raised OverflowError (a 500) at /authorize and /par."""
    client_id, secret = rp
    obj = sign(request_claims(client_id, pkce[1], **{claim: 10 ** 400}))
    assert_error_page(client.get(authorize_path(client_id, request=obj)), "invalid_request_object")
    pushed = client.post("/par", data={"client_id": client_id, "request": obj}, auth=(client_id, secret))
    assert pushed.status_code == 400 and pushed.get_json()["error"] == "invalid_request_object"
