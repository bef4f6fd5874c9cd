"""Sign-in end to end with relying-party libraries we did not write, knowing only the issuer URL: Authlib's
OAuth2Session and node's openid-client (tests/rp), against the app on a live loopback server; openid-client also
with a pushed authorization request (RFC 9126) and DPoP-bound tokens (RFC 9449, tests/rp/rp-dpop.mjs).

The openid-client half needs node >= 20 and npm; without them it is skipped, unless IDP_TEST_REQUIRE_RP=1 (CI),
which turns the skip into a failure. Its packages are installed from tests/rp/package-lock.json when missing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import threading
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidClaimError
from joserfc.jwk import KeySet

from tests.conftest import LiveServer
from tests.support import NODE_PACKAGES, PASSWORD, make_client_in, make_user_in, node_package

# Nothing listens there: a flow ends when the browser is sent to one of these.
REDIRECT_URI = "http://127.0.0.1:9/callback"
LOGOUT_URI = "http://127.0.0.1:9/signed-out"
TIMEOUT = 10


@pytest.fixture
def rp_setup(live_server):
    """Alice, a confidential (not first-party) client registered for the RP, and the issuer's discovery document."""
    user = make_user_in(live_server.app)
    meta = requests.get(live_server.url + "/.well-known/openid-configuration", timeout=TIMEOUT).json()
    assert meta["issuer"] == live_server.url
    return user, meta


def _form(page: requests.Response) -> tuple[str, str, str]:
    """The step name, CSRF token and absolute action of the one form of a hosted sign-in page."""
    text = page.text
    step = re.search(r'name="step" value="([^"]+)"', text)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', text)
    action = re.search(r'<form method="post" action="([^"]+)"', text)
    assert step and token and action, text
    return step.group(1), token.group(1), urljoin(page.url, html.unescape(action.group(1)))


def walk_hosted_pages(authorization_url: str, redirect_uri: str) -> tuple[requests.Session, str, list[str]]:
    """Play the user's browser from the authorization URL: sign in as Alice and allow access, following each
    redirect by hand until one leaves for ``redirect_uri``. Returns the browser, that URL and the steps seen."""
    browser = requests.Session()
    answers = {"password": {"email": "alice@example.com", "password": PASSWORD}, "consent": {"allow": "Allow"}}
    steps: list[str] = []
    response = browser.get(authorization_url, allow_redirects=False, timeout=TIMEOUT)
    for _ in range(20):
        if response.is_redirect:
            location = urljoin(response.url, response.headers["Location"])
            if location.startswith(redirect_uri):
                return browser, location, steps
            response = browser.get(location, allow_redirects=False, timeout=TIMEOUT)
            continue
        assert response.status_code == 200, (response.status_code, response.text)
        step, token, action = _form(response)
        assert step in answers, f"unexpected step {step}"
        assert steps.count(step) == 0, f"step {step} came back: {response.text}"
        steps.append(step)
        response = browser.post(action, data={"csrf_token": token, "step": step, **answers[step]},
                                allow_redirects=False, timeout=TIMEOUT)
    raise AssertionError(f"no redirect to {redirect_uri} after steps {steps}")


def run_rp(command: list[str], meta: dict, *, first_input: str | None = None):
    """Run one of the node RP scripts (tests/rp): hand it ``first_input`` (a secret) if any, read the authorization
    URL it prints first, play the user's browser through the hosted pages, hand it the callback URL, and read its
    result. Returns (its first line, its result, the browser, the authorization URL's query)."""
    rp = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(90, rp.kill)  # a hung RP must not hang the suite on readline()
    watchdog.start()
    try:
        if first_input is not None:
            rp.stdin.write(first_input + "\n")
            rp.stdin.flush()
        first = rp.stdout.readline()
        assert first, rp.communicate(timeout=30)
        started = json.loads(first)
        authorization_url = started["authorizationUrl"]
        assert authorization_url.startswith(meta["authorization_endpoint"] + "?")
        browser, callback, steps = walk_hosted_pages(authorization_url, REDIRECT_URI)
        assert steps == ["password", "consent"]
        out, err = rp.communicate(callback + "\n", timeout=60)
    finally:
        watchdog.cancel()
        if rp.poll() is None:
            rp.kill()
            rp.communicate()
    assert rp.returncode == 0, err
    return started, json.loads(out), browser, parse_qs(urlsplit(authorization_url).query)


def signed_in(browser: requests.Session, origin: str) -> bool:
    return browser.get(origin + "/account", allow_redirects=False, timeout=TIMEOUT).status_code == 200


# --- Authlib ------------------------------------------------------------------------------------------------------

def test_authlib_client_signs_in_refreshes_revokes_and_logs_out(live_server, rp_setup):
    user, meta = rp_setup
    issuer = live_server.url
    client_id, secret = make_client_in(live_server.app, name="Authlib RP", redirect_uris=[REDIRECT_URI],
                                       post_logout_redirect_uris=[LOGOUT_URI])
    jwks = KeySet.import_key_set(requests.get(meta["jwks_uri"], timeout=TIMEOUT).json())
    with OAuth2Session(client_id, secret, scope="openid profile email offline_access", redirect_uri=REDIRECT_URI,
                       code_challenge_method="S256", token_endpoint=meta["token_endpoint"]) as rp:
        verifier, nonce = generate_token(48), generate_token(20)
        url, state = rp.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
        browser, callback, steps = walk_hosted_pages(url, REDIRECT_URI)
        assert steps == ["password", "consent"]
        assert parse_qs(urlsplit(callback).query)["iss"] == [issuer]  # RFC 9207: Authlib leaves this to us
        token = rp.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)
        assert token["token_type"].lower() == "bearer"
        assert set(token["scope"].split()) == {"openid", "profile", "email", "offline_access"}

        decoded = jwt.decode(token["id_token"], jwks, algorithms=meta["id_token_signing_alg_values_supported"])
        options = {"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "value": client_id}}
        params = {"nonce": nonce, "client_id": client_id, "access_token": token["access_token"], "max_age": None}
        claims = CodeIDToken(decoded.claims, decoded.header, options, params)
        claims.validate(leeway=5)
        assert "at_hash" in claims and claims["sub"] == user.subject
        with pytest.raises(InvalidClaimError):  # the checks above are real: a replayed nonce would be caught
            CodeIDToken(decoded.claims, decoded.header, options, {**params, "nonce": "another"}).validate()

        info = rp.get(meta["userinfo_endpoint"], timeout=TIMEOUT)
        assert info.status_code == 200
        assert info.json()["sub"] == user.subject and info.json()["email"] == "alice@example.com"

        refreshed = rp.refresh_token(meta["token_endpoint"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        assert refreshed["access_token"] != token["access_token"]
        assert rp.get(meta["userinfo_endpoint"], timeout=TIMEOUT).json()["sub"] == user.subject

        revoked = rp.revoke_token(meta["revocation_endpoint"], token=refreshed["refresh_token"],
                                  token_type_hint="refresh_token")
        assert revoked.status_code == 200
        with pytest.raises(OAuthError) as refused:
            rp.refresh_token(meta["token_endpoint"], refresh_token=refreshed["refresh_token"])
        assert refused.value.error == "invalid_grant"
        # Revoking the refresh token revoked its family, the access tokens issued with it included.
        assert rp.get(meta["userinfo_endpoint"], timeout=TIMEOUT).status_code == 401

    assert signed_in(browser, issuer)
    logout = browser.get(meta["end_session_endpoint"], allow_redirects=False, timeout=TIMEOUT, params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": LOGOUT_URI, "state": "bye"})
    assert logout.status_code == 302, logout.text
    assert logout.headers["Location"] == LOGOUT_URI + "?state=bye"
    assert not signed_in(browser, issuer)
    browser.close()


# --- openid-client (node) -----------------------------------------------------------------------------------------

def _node_problem() -> str | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are needed for the openid-client tests (Node.js >= 20)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        return f"openid-client 6 needs Node.js >= 20, found {version}"
    return None


@pytest.fixture(scope="session")
def openid_client_rp():
    """The command that runs tests/rp/rp.mjs; installs its locked packages first if node_modules is missing."""
    problem = _node_problem()
    if problem is not None:
        if os.environ.get("IDP_TEST_REQUIRE_RP") == "1":
            pytest.fail(f"IDP_TEST_REQUIRE_RP=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    node_package("openid-client")
    return ["node", str(NODE_PACKAGES / "rp.mjs")]


def test_openid_client_signs_in_refreshes_revokes_and_logs_out(live_server, rp_setup, openid_client_rp):
    user, meta = rp_setup
    client_id, secret = make_client_in(live_server.app, name="Node RP", redirect_uris=[REDIRECT_URI],
                                       post_logout_redirect_uris=[LOGOUT_URI], auth_method="client_secret_post")
    _started, result, browser, query = run_rp([*openid_client_rp, live_server.url, client_id, REDIRECT_URI,
                                               LOGOUT_URI], meta, first_input=secret)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    assert result["claims"]["sub"] == user.subject
    assert result["claims"]["iss"] == live_server.url and result["claims"]["aud"] in (client_id, [client_id])
    assert result["claims"]["nonce"] == query["nonce"][0]
    assert result["userinfo"]["sub"] == user.subject
    assert result["userinfo"]["email"] == "alice@example.com" and result["userinfo"]["email_verified"] is True
    assert result["refreshTokenChanged"] and result["accessTokenChanged"]
    assert result["refreshedUserinfoSub"] == user.subject
    assert result["revoked"] and result["refreshAfterRevocation"] == "invalid_grant"

    end_session = result["endSessionUrl"]
    assert end_session.startswith(meta["end_session_endpoint"] + "?")
    assert signed_in(browser, live_server.url)
    logout = browser.get(end_session, allow_redirects=False, timeout=TIMEOUT)
    assert logout.status_code == 302, logout.text
    assert logout.headers["Location"] == LOGOUT_URI + "?state=rp-signed-out"
    assert not signed_in(browser, live_server.url)
    browser.close()


def _rfc7638(jwk: dict) -> str:
    """The RFC 7638 thumbprint of an EC public key, by hand: the required members in lexical order."""
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("server_nonces", [False, True], ids=["no-nonce", "dpop-nonce"])
def test_openid_client_pushes_its_request_and_binds_its_tokens_with_dpop(make_app, openid_client_rp, server_nonces):
    """openid-client 6's buildAuthorizationUrlWithPAR and DPoP handle (randomDPoPKeyPair, getDPoPHandle) against a
    public client that must push its requests: the code, the access tokens and the refresh token are bound to the
    RP's key, userinfo and a refresh work with its proofs; with IDP_DPOP_NONCE the library retries on
    use_dpop_nonce (RFC 9449 8, 9) by itself."""
    server = LiveServer(make_app, IDP_DPOP_NONCE=server_nonces)
    server.start()
    try:
        user = make_user_in(server.app)
        meta = requests.get(server.url + "/.well-known/openid-configuration", timeout=TIMEOUT).json()
        client_id, _ = make_client_in(server.app, name="Node DPoP RP", redirect_uris=[REDIRECT_URI], public=True,
                                      require_pushed_authorization_requests=True)
        script = str(NODE_PACKAGES / "rp-dpop.mjs")
        started, result, browser, query = run_rp([openid_client_rp[0], script, server.url, client_id,
                                                  REDIRECT_URI], meta)
        # RFC 9126 4: only client_id and the request_uri travel through the browser.
        assert set(query) == {"client_id", "request_uri"} and query["client_id"] == [client_id]
        assert query["request_uri"][0].startswith("urn:ietf:params:oauth:request_uri:")
        jkt = _rfc7638(started["publicJwk"])
        jwks = KeySet.import_key_set(requests.get(meta["jwks_uri"], timeout=TIMEOUT).json())
        assert result["tokenType"].lower() == "dpop" and result["refreshedTokenType"].lower() == "dpop"
        for access_token in (result["accessToken"], result["refreshedAccessToken"]):
            claims = jwt.decode(access_token, jwks, algorithms=["RS256", "ES256"]).claims
            assert claims["cnf"] == {"jkt": jkt} and claims["sub"] == user.subject  # RFC 9449 6.1
            # RFC 9449 7.2: the bound token is refused as a bearer token.
            bearer = requests.get(meta["userinfo_endpoint"], headers={"Authorization": "Bearer " + access_token},
                                  timeout=TIMEOUT)
            assert bearer.status_code == 401 and bearer.headers["WWW-Authenticate"].startswith("DPoP ")
        assert result["claims"]["sub"] == user.subject and result["claims"]["aud"] in (client_id, [client_id])
        assert result["userinfo"]["email"] == "alice@example.com"
        assert result["refreshTokenChanged"] and result["refreshedUserinfoSub"] == user.subject
        assert result["refreshWithoutProof"] == "invalid_dpop_proof"  # the refresh token is bound (RFC 9449 5)
        browser.close()
    finally:
        server.stop()
