"""A private_key_jwt client whose keys are at its jwks_uri: idp fetches them over HTTP (a loopback server here,
as the testing environment allows http to loopback), and only within bounds (idp.security.fetch): no redirect is
followed, a JWK Set larger than JWKS_MAX_BYTES or of another media type is not read. A client whose keys cannot be
fetched is invalid_client, never a 500."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from joserfc.jwk import RSAKey

from idp.oidc.server import JWKS_MAX_BYTES
from tests.test_oidc_protocol import assertion, jwt_auth


class KeyServer:
    """Serves one answer at /jwks.json: a JWK Set, a redirect, an oversize body or a wrong media type."""

    def __init__(self):
        self.body = b"{}"
        self.content_type = "application/json"
        self.status = 200
        self.location: str | None = None
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                owner.requests += 1
                self.send_response(owner.status)
                if owner.location:
                    self.send_header("Location", owner.location)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keys_served():
    with KeyServer() as server:
        yield server


@pytest.fixture
def uri_client(make_client, keys_served):
    key = RSAKey.generate_key(2048, parameters={"kid": "rp-key-1", "alg": "RS256", "use": "sig"}, private=True)
    keys_served.body = json.dumps({"keys": [key.as_dict(private=False)]}).encode()
    client_id, _secret = make_client(name="JWKS URI client", redirect_uris=[], grant_types=["client_credentials"],
                                     auth_method="private_key_jwt", jwks_uri=keys_served.url)
    return client_id, key


def _token(client, client_id, key):
    return client.post("/token", data=jwt_auth(assertion(client_id, key), grant_type="client_credentials"))


def test_keys_at_the_jwks_uri_authenticate_the_client(client, uri_client, keys_served):
    response = _token(client, *uri_client)
    assert response.status_code == 200, response.get_json()
    assert keys_served.requests >= 1


@pytest.mark.parametrize("trouble", ["redirect", "oversize", "media type", "not found"])
def test_keys_are_not_taken_from_an_answer_out_of_bounds(client, uri_client, keys_served, trouble):
    if trouble == "redirect":  # the keys are one hop away: never followed
        good = keys_served.body
        with KeyServer() as elsewhere:
            elsewhere.body = good
            keys_served.status, keys_served.location, keys_served.body = 302, elsewhere.url, b""
            response = _token(client, *uri_client)
            assert elsewhere.requests == 0
    else:
        if trouble == "oversize":
            keys = json.loads(keys_served.body)
            keys["padding"] = "x" * JWKS_MAX_BYTES
            keys_served.body = json.dumps(keys).encode()
        elif trouble == "media type":
            keys_served.content_type = "text/html"
        else:
            keys_served.status = 404
        response = _token(client, *uri_client)
    # RFC 6749 5.2: invalid_client, 401 only where the client authenticated with the Authorization header
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_client", response.get_json()


def test_in_production_a_registered_url_never_leads_idp_to_its_own_network(app, client, uri_client, keys_served):
    """SSRF (review finding): in production a client's URL is fetched only at public addresses, and http to
    loopback cannot even be registered; the key server on loopback is never contacted."""
    from idp.oidc.registration import validate_jwks_uri, validate_logout_uri
    from idp.security.fetch import FetchFailed, check_destination

    app.config["IDP_ENV"] = "production"  # the client was registered under testing rules, then the rules tighten
    response = _token(client, *uri_client)
    assert response.get_json()["error"] == "invalid_client" and keys_served.requests == 0
    for internal in ("http://127.0.0.1:6379/", "https://10.0.0.5/keys", "https://169.254.169.254/latest",
                     "https://[::1]/x", "https://192.168.1.1/"):
        with pytest.raises(FetchFailed):
            check_destination(internal, public_only=True)
    check_destination("http://127.0.0.1/", public_only=False)  # development and testing: loopback allowed
    with app.app_context():
        assert validate_jwks_uri("http://127.0.0.1:9000/jwks.json")
        assert validate_logout_uri("http://localhost:9000/logout", "back-channel")
    app.config["IDP_ENV"] = "testing"


def test_a_back_channel_logout_to_an_internal_address_is_not_sent_in_production(app, make_client, keys_served):
    from idp.oidc.logout import deliver_backchannel
    from idp.security.fetch import FetchFailed

    client_id, _secret = make_client(name="Logout RP", backchannel_logout_uri=keys_served.url)
    app.config["IDP_ENV"] = "production"
    try:
        with app.app_context(), pytest.raises(FetchFailed):
            deliver_backchannel(client_id, "sid-1", "subject-1")
    finally:
        app.config["IDP_ENV"] = "testing"
    assert keys_served.requests == 0


def test_a_jwk_set_is_fetched_once_per_request(client, uri_client, keys_served):
    _token(client, *uri_client)
    assert keys_served.requests == 1
