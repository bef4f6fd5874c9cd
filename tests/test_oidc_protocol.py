"""Protocol promises of the authorization server (SECURITY.md 1-8, 10, 11, 31): each test fails if one breaks.

Flows walk the hosted pages with the Flask test client (tests.support.authorize); database rows are edited
directly only to move time (expiry) or to look at what is stored.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from authlib.oauth2 import rfc8414, rfc9207
from authlib.oidc import rpinitiated
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import text

from idp.extensions import db
from idp.models import AuthorizationCode, Client, LoginSession, Token, utcnow
from idp.oidc.registration import create_client
from idp.security.tokens import token_hash
from tests.conftest import TEST_DATABASE_URL
from tests.support import (
    RP_CALLBACK,
    audit_events,
    authorize,
    authorize_url,
    begun_sign_in,
    pkce_pair,
    query_params,
    settled,
    walk_authorize,
)

ISSUER = "http://localhost"
RP = RP_CALLBACK
OTHER_RP = "https://rp.example/other-cb"


# --- helpers ----------------------------------------------------------------------------------------------------

def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def redeem(client, client_id, secret, code, verifier=None, redirect_uri=RP, **extra):
    """POST the code to /token (Basic auth for a confidential client, client_id in the form for a public one)."""
    data = {"grant_type": "authorization_code", "code": code}
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    if verifier is not None:
        data["code_verifier"] = verifier
    data.update(extra)
    if secret is None:
        data["client_id"] = client_id
        return client.post("/token", data=data)
    return client.post("/token", data=data, auth=(client_id, secret))


def tokens(client, client_id, secret, scope="openid offline_access", **params) -> dict:
    """A full code flow with PKCE (offline_access: a refresh token, OIDC Core 11); returns the token response body."""
    verifier, challenge = pkce_pair()
    code = authorize(client, client_id, scope=scope, code_challenge=challenge, code_challenge_method="S256",
                     **params)
    response = redeem(client, client_id, secret, code, verifier)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def refresh(client, client_id, secret, refresh_token, **extra):
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
    if secret is None:
        data["client_id"] = client_id
        return client.post("/token", data=data)
    return client.post("/token", data=data, auth=(client_id, secret))


def userinfo_status(client, access_token: str) -> int:
    return client.get("/userinfo", headers=bearer(access_token)).status_code


def introspect(client, client_id, secret, token: str, **extra) -> dict:
    response = client.post("/introspect", data={"token": token, **extra}, auth=(client_id, secret))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def assert_error_page(response) -> None:
    """SECURITY.md 2: an HTML error page, never a redirect."""
    assert response.status_code == 400, (response.status_code, response.headers.get("Location"))
    assert "Location" not in response.headers
    assert response.mimetype == "text/html"


def assert_error_redirect(response, error: str, state: str | None = "state-1", target: str = RP) -> dict:
    """An error sent back to the client's redirect URI with state and iss (RFC 6749 4.1.2.1, RFC 9207)."""
    assert response.status_code == 302, (response.status_code, response.get_data(as_text=True)[:300])
    location = response.headers["Location"]
    assert location.startswith(target + "?"), location
    params = query_params(location)
    assert params.get("error") == error, params
    assert params.get("iss") == ISSUER, params
    if state is not None:
        assert params.get("state") == state, params
    assert "code" not in params
    return params


def assert_goes_to_login(response) -> None:
    """The request passed validation: the browser is shown the sign-in's first screen."""
    begun_sign_in(response)


def jwks_of(client) -> KeySet:
    return KeySet.import_key_set(client.get("/jwks.json").get_json())


def token_row(app, *, refresh_token: str | None = None, access_token: str | None = None) -> Token:
    with app.app_context():
        if refresh_token is not None:
            condition = Token.refresh_token_hash == token_hash(refresh_token)
        else:
            jti = jwt.decode(access_token, KeySet.import_key_set(_jwks(app)), algorithms=["RS256"]).claims["jti"]
            condition = Token.jti == jti
        row = db.session.execute(db.select(Token).where(condition)).scalar_one()
        db.session.expunge(row)
        return row


def _jwks(app) -> dict:
    from idp.oidc import keys

    return keys.jwks()


def set_refresh_times(app, refresh_token: str, **values) -> None:
    with app.app_context():
        db.session.execute(db.update(Token).where(Token.refresh_token_hash == token_hash(refresh_token))
                           .values(**values))
        db.session.commit()


def table_dump(app, table: str) -> str:
    with app.app_context():
        return repr(db.session.execute(text(f"SELECT * FROM {table}")).all())


def cli(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


# --- fixtures ---------------------------------------------------------------------------------------------------



@pytest.fixture
def public(make_client):
    """A public first-party client: (client_id, None)."""
    return make_client(name="Public App", public=True, first_party=True)


@pytest.fixture
def third_party(make_client):
    """A confidential client that needs consent."""
    return make_client(name="Third App")


@pytest.fixture
def machine(make_client):
    """A confidential client with the client_credentials grant only."""
    return make_client(name="Machine", redirect_uris=[], grant_types=["client_credentials"])


# --- 1. redirect_uri exact match --------------------------------------------------------------------------------

@pytest.mark.parametrize("sent", [
    RP + "/",                               # trailing slash
    "https://RP.example/cb",                # host case
    "https://rp.example/CB",                # path case
    "HTTPS://rp.example/cb",                # scheme case
    RP + "?extra=1",                        # added query
    RP + "#fragment",                       # fragment
    "https://rp.example/cb2",               # different path
    "https://rp.example:443/cb",            # explicit default port
    "https://rp.example.evil.test/cb",      # different host
    "http://rp.example/cb",                 # downgraded scheme
])
def test_redirect_uri_must_match_exactly(client, conf, sent):
    response = client.get(authorize_url(conf[0], redirect_uri=sent))
    assert_error_page(response)


def test_redirect_uri_exact_match_is_accepted(client, conf):
    assert_goes_to_login(client.get(authorize_url(conf[0])))


def test_redirect_uri_mismatch_never_redirects_even_with_a_session(client, alice, conf):
    authorize(client, conf[0])  # signed in now
    assert_error_page(client.get(authorize_url(conf[0], redirect_uri=RP + "/")))


def test_loopback_redirect_uri_may_change_only_its_port(client, make_client):
    client_id, _ = make_client(redirect_uris=["http://127.0.0.1:8765/cb", "http://[::1]:8765/cb"], public=True)
    _, challenge = pkce_pair()
    pkce = {"code_challenge": challenge, "code_challenge_method": "S256"}
    for ok in ("http://127.0.0.1:8765/cb", "http://127.0.0.1:50123/cb", "http://[::1]:4000/cb"):
        assert_goes_to_login(client.get(authorize_url(client_id, redirect_uri=ok, **pkce)))
    for bad in ("http://127.0.0.1:50123/other", "http://127.0.0.1:50123/cb/", "http://localhost:8765/cb",
                "http://127.0.0.2:8765/cb", "https://127.0.0.1:8765/cb", "http://127.0.0.1:50123/cb?x=1"):
        assert_error_page(client.get(authorize_url(client_id, redirect_uri=bad, **pkce)))


def test_loopback_port_change_still_returns_the_code_to_the_sent_uri(client, alice, make_client):
    client_id, _ = make_client(redirect_uris=["http://127.0.0.1:8765/cb"], public=True, first_party=True)
    verifier, challenge = pkce_pair()
    sent = "http://127.0.0.1:50999/cb"
    response = walk_authorize(client, authorize_url(client_id, redirect_uri=sent, code_challenge=challenge,
                                                    code_challenge_method="S256"))
    assert response.headers["Location"].startswith(sent + "?")
    code = query_params(response.headers["Location"])["code"]
    assert redeem(client, client_id, None, code, verifier, redirect_uri=sent).status_code == 200


@pytest.mark.parametrize("uri", ["https://rp.example/cb#frag", "https://rp.example/cb#", "http://rp.example/cb",
                                 "http://10.0.0.1/cb", "javascript:alert(1)", "/relative/cb"])
def test_registration_refuses_fragments_and_non_loopback_http(app, uri):
    with app.app_context():
        with pytest.raises(ValueError):
            create_client(name="Bad", redirect_uris=[uri], post_logout_redirect_uris=[], public=False,
                          grant_types=[], scopes=[], auth_method=None, first_party=False)
        db.session.rollback()
    result = cli(app, "clients", "create", "--name", "Bad", "--redirect-uri", uri)
    assert result.exit_code != 0
    with app.app_context():
        assert db.session.execute(db.select(Client).where(Client.name == "Bad")).first() is None


def test_registration_accepts_https_and_loopback_http(app):
    result = cli(app, "clients", "create", "--name", "Good", "--redirect-uri", "https://rp.example/cb",
                 "--redirect-uri", "http://127.0.0.1:9000/cb", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["client_id"]


# --- 2. unknown client ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("client_id", ["no-such-client", "", "x" * 200])
def test_unknown_client_id_shows_an_error_page(client, client_id):
    assert_error_page(client.get(authorize_url(client_id)))


def test_missing_client_id_shows_an_error_page(client):
    assert_error_page(client.get(authorize_url(None)))


# --- 3. default redirect URI only when unambiguous --------------------------------------------------------------

def test_two_registered_redirect_uris_and_none_sent_is_an_error_page(client, make_client):
    client_id, _ = make_client(redirect_uris=[RP, OTHER_RP])
    assert_error_page(client.get(authorize_url(client_id, redirect_uri=None)))


def test_one_registered_redirect_uri_and_none_sent_works(client, alice, conf):
    verifier, challenge = pkce_pair()
    code = authorize(client, conf[0], redirect_uri=None, code_challenge=challenge, code_challenge_method="S256")
    response = redeem(client, conf[0], conf[1], code, verifier, redirect_uri=None)
    assert response.status_code == 200, response.get_json()


# --- 4. PKCE ----------------------------------------------------------------------------------------------------

def test_public_client_without_code_challenge_gets_invalid_request(client, public):
    response = client.get(authorize_url(public[0], state="pkce-1"))
    assert_error_redirect(response, "invalid_request", state="pkce-1")


def test_public_client_without_code_challenge_gets_invalid_request_also_when_signed_in(client, alice, public,
                                                                                      conf):
    authorize(client, conf[0])
    assert_error_redirect(client.get(authorize_url(public[0])), "invalid_request")


@pytest.mark.parametrize("method", ["plain", None, "s256", "S512"])
def test_only_s256_is_accepted(client, public, conf, method):
    verifier, challenge = pkce_pair()
    for client_id in (public[0], conf[0]):
        response = client.get(authorize_url(client_id, code_challenge=verifier if method == "plain" else challenge,
                                            code_challenge_method=method))
        assert_error_redirect(response, "invalid_request")


def test_discovery_advertises_only_s256(client):
    assert client.get("/.well-known/openid-configuration").get_json()["code_challenge_methods_supported"] == ["S256"]


def test_challenge_sent_but_no_verifier_is_invalid_grant(client, alice, conf, public):
    for client_id, secret in (conf, public):
        _, challenge = pkce_pair()
        code = authorize(client, client_id, code_challenge=challenge, code_challenge_method="S256")
        response = redeem(client, client_id, secret, code)
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant", response.get_json()
        assert "access_token" not in response.get_json()


def test_wrong_verifier_is_invalid_grant(client, alice, conf, public):
    for client_id, secret in (conf, public):
        _, challenge = pkce_pair()
        other_verifier, _ = pkce_pair()
        code = authorize(client, client_id, code_challenge=challenge, code_challenge_method="S256")
        response = redeem(client, client_id, secret, code, other_verifier)
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant", response.get_json()


def test_a_code_that_failed_its_exchange_is_used_up(client, alice, conf):
    """A wrong verifier or redirect URI still spends the code: it cannot be retried with the right one."""
    verifier, challenge = pkce_pair()
    code = authorize(client, conf[0], code_challenge=challenge, code_challenge_method="S256")
    assert redeem(client, *conf, code, pkce_pair()[0]).status_code == 400
    response = redeem(client, *conf, code, verifier)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    code = authorize(client, conf[0], code_challenge=challenge, code_challenge_method="S256")
    assert redeem(client, *conf, code, verifier, redirect_uri=RP + "/other").status_code == 400
    assert redeem(client, *conf, code, verifier).status_code == 400


def test_verifier_for_a_code_issued_without_challenge_is_invalid_grant(client, alice, conf):
    code = authorize(client, conf[0])  # confidential: no challenge needed
    verifier, _ = pkce_pair()
    response = redeem(client, conf[0], conf[1], code, verifier)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant", response.get_json()


def test_confidential_client_without_pkce_works(client, alice, conf):
    code = authorize(client, conf[0])
    assert redeem(client, conf[0], conf[1], code).status_code == 200


# --- 5. authorization codes -------------------------------------------------------------------------------------

def test_code_has_at_least_128_bits_and_is_stored_hashed(app, client, alice, conf):
    code = authorize(client, conf[0])
    assert len(code) >= 22 and re.fullmatch(r"[A-Za-z0-9_\-.~]+", code), code  # >= 22 * 6 bits
    dump = table_dump(app, "authorization_codes")
    assert code not in dump
    with app.app_context():
        row = db.session.execute(db.select(AuthorizationCode)).scalar_one()
        assert row.code_hash == token_hash(code)
        assert (row.expires_at - row.issued_at).total_seconds() <= 60


def test_codes_are_distinct(client, alice, conf):
    assert len({authorize(client, conf[0]) for _ in range(3)}) == 3


def test_second_use_of_a_code_fails_and_revokes_what_the_first_use_issued(app, client, alice, conf):
    verifier, challenge = pkce_pair()
    code = authorize(client, conf[0], code_challenge=challenge, code_challenge_method="S256",
                     scope="openid offline_access")
    first = redeem(client, conf[0], conf[1], code, verifier)
    assert first.status_code == 200
    body = first.get_json()
    assert userinfo_status(client, body["access_token"]) == 200
    assert introspect(client, *conf, body["access_token"])["active"] is True
    second = redeem(client, conf[0], conf[1], code, verifier)
    assert second.status_code == 400 and second.get_json()["error"] == "invalid_grant"
    assert "access_token" not in second.get_json()
    assert userinfo_status(client, body["access_token"]) == 401
    assert introspect(client, *conf, body["access_token"])["active"] is False
    assert introspect(client, *conf, body["refresh_token"])["active"] is False
    again = refresh(client, *conf, body["refresh_token"])
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    assert audit_events(app, "code.reuse_detected")


def test_code_reuse_also_revokes_tokens_refreshed_from_the_first_use(client, alice, conf):
    verifier, challenge = pkce_pair()
    code = authorize(client, conf[0], code_challenge=challenge, code_challenge_method="S256",
                     scope="openid offline_access")
    body = redeem(client, conf[0], conf[1], code, verifier).get_json()
    newer = refresh(client, *conf, body["refresh_token"]).get_json()
    assert redeem(client, conf[0], conf[1], code, verifier).status_code == 400
    assert userinfo_status(client, newer["access_token"]) == 401
    assert refresh(client, *conf, newer["refresh_token"]).status_code == 400


def test_expired_code_is_invalid_grant(app, client, alice, conf):
    code = authorize(client, conf[0])
    with app.app_context():
        db.session.execute(db.update(AuthorizationCode).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    response = redeem(client, conf[0], conf[1], code)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_code_redeemed_by_another_client_is_invalid_grant(client, alice, conf, make_client):
    other = make_client(name="Other", first_party=True)
    code = authorize(client, conf[0])
    response = redeem(client, other[0], other[1], code)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    assert "access_token" not in response.get_json()


def test_code_redeemed_with_another_redirect_uri_is_invalid_grant(client, alice, make_client):
    client_id, secret = make_client(redirect_uris=[RP, OTHER_RP], first_party=True)
    code = authorize(client, client_id, redirect_uri=RP)
    response = redeem(client, client_id, secret, code, redirect_uri=OTHER_RP)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    code = authorize(client, client_id, redirect_uri=RP)
    response = redeem(client, client_id, secret, code, redirect_uri=None)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_unknown_code_is_invalid_grant(client, conf):
    response = redeem(client, conf[0], conf[1], "not-a-code")
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


# --- 6. refresh tokens ------------------------------------------------------------------------------------------

def test_refresh_token_is_stored_hashed_and_rotated(app, client, alice, conf):
    body = tokens(client, *conf)
    first = body["refresh_token"]
    assert len(first) >= 43
    assert first not in table_dump(app, "tokens")
    response = refresh(client, *conf, first)
    assert response.status_code == 200, response.get_json()
    second = response.get_json()["refresh_token"]
    assert second != first
    third = refresh(client, *conf, second).get_json()["refresh_token"]
    assert third not in (first, second)
    assert second not in table_dump(app, "tokens") and third not in table_dump(app, "tokens")


def test_reusing_a_rotated_refresh_token_revokes_the_family(app, client, alice, conf):
    body = tokens(client, *conf)
    old = body["refresh_token"]
    newer = refresh(client, *conf, old).get_json()
    assert userinfo_status(client, newer["access_token"]) == 200
    replay = refresh(client, *conf, old)
    assert replay.status_code == 400 and replay.get_json()["error"] == "invalid_grant"
    assert "access_token" not in replay.get_json()
    assert userinfo_status(client, newer["access_token"]) == 401
    assert userinfo_status(client, body["access_token"]) == 401
    newest = refresh(client, *conf, newer["refresh_token"])
    assert newest.status_code == 400 and newest.get_json()["error"] == "invalid_grant"
    assert introspect(client, *conf, newer["refresh_token"])["active"] is False
    rows = audit_events(app, "refresh.reuse_detected")
    assert len(rows) == 1 and rows[0].client_id == conf[0]


def test_reuse_does_not_touch_another_family(client, alice, conf):
    one = tokens(client, *conf)
    two = tokens(client, *conf)
    refresh(client, *conf, one["refresh_token"])
    refresh(client, *conf, one["refresh_token"])  # reuse: family one revoked
    assert userinfo_status(client, two["access_token"]) == 200
    assert refresh(client, *conf, two["refresh_token"]).status_code == 200


def test_idle_expired_refresh_token_is_invalid_grant(app, client, alice, conf):
    body = tokens(client, *conf)
    set_refresh_times(app, body["refresh_token"], refresh_expires_at=utcnow() - timedelta(seconds=1))
    response = refresh(client, *conf, body["refresh_token"])
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_absolutely_expired_refresh_family_is_invalid_grant(app, client, alice, conf):
    body = tokens(client, *conf)
    set_refresh_times(app, body["refresh_token"], family_expires_at=utcnow() - timedelta(seconds=1))
    response = refresh(client, *conf, body["refresh_token"])
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize("end", ["idle", "max_age", "ended"])
def test_an_online_refresh_token_ends_with_its_sign_in_session(app, client, alice, conf, end):
    """Without offline_access a refresh token lives only as long as the sign-in session it was issued in: a session
    that timed out (idle or absolute) or ended refuses it, even if nothing revoked the token itself."""
    with app.app_context():  # refresh tokens for the online session (without offline_access) for this client
        db.session.execute(db.update(Client).where(Client.client_id == conf[0])
                           .values(refresh_tokens_for_sessions=True))
        db.session.commit()
    online = tokens(client, *conf, scope="openid")
    offline = tokens(client, *conf)  # the same session, with offline_access
    sid = token_row(app, refresh_token=online["refresh_token"]).sid
    assert sid is not None
    past = utcnow() - timedelta(seconds=app.config["IDP_SESSION_MAX_AGE"] + 60)
    values = {"idle": {"last_seen_at": past}, "max_age": {"created_at": past}, "ended": {"ended_at": utcnow()}}[end]
    with app.app_context():
        db.session.execute(db.update(LoginSession).where(LoginSession.sid == sid).values(**values))
        db.session.commit()
    response = refresh(client, *conf, online["refresh_token"])
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    assert refresh(client, *conf, offline["refresh_token"]).status_code == 200


def test_rotation_never_extends_the_absolute_expiry(app, client, alice, conf):
    body = tokens(client, *conf)
    family_end = utcnow() + timedelta(seconds=30)
    set_refresh_times(app, body["refresh_token"], family_expires_at=family_end)
    newer = refresh(client, *conf, body["refresh_token"]).get_json()
    row = token_row(app, refresh_token=newer["refresh_token"])
    assert row.family_expires_at <= family_end + timedelta(seconds=1)
    assert row.refresh_expires_at <= family_end + timedelta(seconds=1)


def test_refresh_cannot_widen_scope_but_may_narrow_it(client, alice, conf):
    body = tokens(client, *conf, scope="openid email offline_access")
    wider = refresh(client, *conf, body["refresh_token"], scope="openid email profile")
    assert wider.status_code == 400 and wider.get_json()["error"] == "invalid_scope"
    narrower = refresh(client, *conf, body["refresh_token"], scope="openid")
    assert narrower.status_code == 200, narrower.get_json()
    assert narrower.get_json()["scope"] == "openid"
    claims = jwt.decode(narrower.get_json()["access_token"], jwks_of(client), algorithms=["RS256"]).claims
    assert claims["scope"] == "openid"


def test_client_without_refresh_grant_gets_no_refresh_token(client, alice, make_client):
    client_id, secret = make_client(grant_types=["authorization_code"], first_party=True)
    body = tokens(client, client_id, secret)
    assert "refresh_token" not in body and body["access_token"]


def test_refresh_token_of_another_client_is_invalid_grant(client, alice, conf, make_client):
    other = make_client(name="Other", first_party=True)
    body = tokens(client, *conf)
    response = refresh(client, *other, body["refresh_token"])
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_public_client_refresh_rotates_too(client, alice, public):
    body = tokens(client, *public)
    response = refresh(client, *public, body["refresh_token"])
    assert response.status_code == 200 and response.get_json()["refresh_token"] != body["refresh_token"]
    assert refresh(client, *public, body["refresh_token"]).status_code == 400


# --- 7. no password grant, no implicit or hybrid ---------------------------------------------------------------

def test_password_grant_is_refused(client, alice, conf):
    response = client.post("/token", data={"grant_type": "password", "username": "alice@example.com",
                                           "password": "correct horse battery staple"}, auth=conf)
    assert response.status_code == 400 and response.get_json()["error"] == "unsupported_grant_type"
    assert "access_token" not in response.get_json()


@pytest.mark.parametrize("response_type", ["token", "id_token", "code id_token", "id_token token",
                                           "code token", "code id_token token"])
def test_implicit_and_hybrid_response_types_are_refused(client, alice, conf, response_type):
    authorize(client, conf[0])  # signed in: a token would be issued at once if the flow existed
    response = client.get(authorize_url(conf[0], response_type=response_type, nonce="n"))
    params = assert_error_redirect(response, "unsupported_response_type")  # client and redirect URI are valid
    assert "#" not in response.headers["Location"]
    assert not {"access_token", "id_token", "code", "token_type"} & set(params)


def test_discovery_lists_neither_password_nor_implicit(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["response_types_supported"] == ["code"]
    assert "password" not in meta["grant_types_supported"] and "implicit" not in meta["grant_types_supported"]
    assert "fragment" not in meta.get("response_modes_supported", [])


# --- 8. client secrets ------------------------------------------------------------------------------------------

def test_client_secret_is_256_bits_and_stored_hashed(app, make_client):
    client_id, secret = make_client()
    assert len(secret) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", secret)
    assert secret not in table_dump(app, "clients")
    other_id, other_secret = make_client()
    assert other_secret != secret


def test_cli_prints_the_secret_once(app):
    result = cli(app, "clients", "create", "--name", "Shown", "--redirect-uri", RP, "--json")
    payload = json.loads(result.output)
    assert len(payload["client_secret"]) >= 43
    assert payload["client_secret"] not in cli(app, "clients", "show", payload["client_id"]).output
    assert payload["client_secret"] not in cli(app, "clients", "list").output
    assert payload["client_secret"] not in table_dump(app, "clients")


def test_wrong_secret_is_invalid_client_401(client, machine):
    response = client.post("/token", data={"grant_type": "client_credentials"}, auth=(machine[0], "wrong"))
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"
    response = client.post("/token", data={"grant_type": "client_credentials"},
                           auth=(machine[0], machine[1][:-1]))
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"
    assert client.post("/token", data={"grant_type": "client_credentials"}, auth=machine).status_code == 200


def test_client_secret_post_works_only_for_a_post_client(client, make_client):
    post_id, post_secret = make_client(auth_method="client_secret_post", redirect_uris=[],
                                       grant_types=["client_credentials"])
    ok = client.post("/token", data={"grant_type": "client_credentials", "client_id": post_id,
                                     "client_secret": post_secret})
    assert ok.status_code == 200, ok.get_json()
    basic = client.post("/token", data={"grant_type": "client_credentials"}, auth=(post_id, post_secret))
    assert basic.status_code in (400, 401) and basic.get_json()["error"] == "invalid_client"
    assert "access_token" not in basic.get_json()


def test_basic_client_cannot_use_client_secret_post(client, machine):
    response = client.post("/token", data={"grant_type": "client_credentials", "client_id": machine[0],
                                           "client_secret": machine[1]})
    assert response.status_code in (400, 401) and response.get_json()["error"] == "invalid_client"


def test_a_client_using_a_method_it_is_not_registered_for_is_told_the_one_it_is(client, make_client, machine):
    """RFC 6749 5.2 invalid_client, with a description that helps: the registered method, not every method the
    endpoint accepts (which would read as if any of them would do)."""
    post_id, post_secret = make_client(auth_method="client_secret_post", redirect_uris=[],
                                       grant_types=["client_credentials"])
    basic = client.post("/token", data={"grant_type": "client_credentials"}, auth=(post_id, post_secret))
    assert basic.status_code == 401 and basic.get_json()["error"] == "invalid_client"
    description = basic.get_json()["error_description"]
    assert "client_secret_post" in description and "client_secret_basic" not in description
    assert "private_key_jwt" not in description
    posted = client.post("/token", data={"grant_type": "client_credentials", "client_id": machine[0],
                                         "client_secret": machine[1]})
    assert posted.get_json()["error"] == "invalid_client"
    description = posted.get_json()["error_description"]
    assert "client_secret_basic" in description and "client_secret_post" not in description
    # A wrong secret proves nothing: the answer names no method of the client.
    wrong = client.post("/token", data={"grant_type": "client_credentials"}, auth=(post_id, "wrong"))
    assert wrong.status_code == 401 and "client_secret_post" not in wrong.get_json()["error_description"]


def test_rotate_secret_makes_the_old_one_fail(app, client, machine):
    result = cli(app, "clients", "rotate-secret", machine[0])
    assert result.exit_code == 0, result.output
    new_secret = re.search(r"client_secret:\s*(\S+)", result.output).group(1)
    assert new_secret != machine[1] and len(new_secret) >= 43
    old = client.post("/token", data={"grant_type": "client_credentials"}, auth=machine)
    assert old.status_code == 401 and old.get_json()["error"] == "invalid_client"
    new = client.post("/token", data={"grant_type": "client_credentials"}, auth=(machine[0], new_secret))
    assert new.status_code == 200


# --- 10. access tokens ------------------------------------------------------------------------------------------

def test_access_token_is_an_rfc9068_jwt(app, client, alice, conf):
    body = tokens(client, *conf, scope="openid email")
    decoded = jwt.decode(body["access_token"], jwks_of(client), algorithms=["RS256"])
    assert decoded.header["typ"] == "at+jwt" and decoded.header["alg"] == "RS256" and decoded.header["kid"]
    claims = decoded.claims
    for name in ("iss", "sub", "aud", "exp", "iat", "client_id", "scope", "jti"):
        assert name in claims, name
    assert claims["iss"] == ISSUER and claims["client_id"] == conf[0] and claims["scope"] == "openid email"
    assert claims["aud"] in (conf[0], [conf[0]])
    assert claims["exp"] > claims["iat"] >= int(time.time()) - 60
    with app.app_context():
        from idp.models import User

        user = db.session.execute(db.select(User).where(User.id == alice.id)).scalar_one()
        assert claims["sub"] == user.subject
    assert body["token_type"].lower() == "bearer" and body["expires_in"] > 0


def test_revoking_an_access_token_is_seen_by_userinfo_and_introspection(client, alice, conf):
    body = tokens(client, *conf)
    assert introspect(client, *conf, body["access_token"])["active"] is True
    response = client.post("/revoke", data={"token": body["access_token"], "token_type_hint": "access_token"},
                           auth=conf)
    assert response.status_code == 200
    assert userinfo_status(client, body["access_token"]) == 401
    assert introspect(client, *conf, body["access_token"])["active"] is False


def test_a_token_whose_client_is_gone_is_refused_at_userinfo_and_inactive(app, client, alice, conf, make_client):
    """Userinfo and introspection read the token and its client apart (idp.oidc.server.TokenView): a client deleted
    in between, or deleted without its tokens revoked (here, by SQL), leaves no token, never a 500."""
    body = tokens(client, *conf)
    other = make_client(name="Resource server")
    with app.app_context():
        db.session.execute(text("UPDATE tokens SET audience = :other WHERE client_id = :gone"),
                           {"other": other[0], "gone": conf[0]})
        db.session.execute(text("DELETE FROM clients WHERE client_id = :gone"), {"gone": conf[0]})
        db.session.commit()
    settled(app)
    response = client.get("/userinfo", headers=bearer(body["access_token"]))
    assert response.status_code == 401, response.get_data(as_text=True)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    # the client it was addressed to may introspect it, and learns it is inactive
    assert introspect(client, *other, body["access_token"]) == {"active": False}
    assert introspect(client, *other, body["refresh_token"]) == {"active": False}


def test_the_protocol_endpoints_refuse_plain_http_with_an_oauth_error(client, alice, conf):
    """RFC 6749 3.1, 3.2: TLS is required; Authlib refuses plain http while building its request, and the refusal
    is the OAuth error insecure_transport (400), not a server error."""
    body = tokens(client, *conf)
    plain = "http://idp.example.org"
    answers = [client.get("/userinfo", headers=bearer(body["access_token"]), base_url=plain),
               client.post("/introspect", data={"token": body["access_token"]}, auth=conf, base_url=plain),
               client.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                           auth=conf, base_url=plain),
               client.post("/revoke", data={"token": body["access_token"]}, auth=conf, base_url=plain)]
    for response in answers:
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["error"] == "insecure_transport"
    assert userinfo_status(client, body["access_token"]) == 200  # over https, as before


def test_the_device_authorization_endpoint_refuses_plain_http_with_an_oauth_error_too(client, make_client):
    """The refusal is handled wherever Authlib raises it, not only on the protocol blueprint (RFC 8628 3.1)."""
    device = make_client(name="TV", grant_types=["urn:ietf:params:oauth:grant-type:device_code"])
    response = client.post("/device_authorization", data={"scope": "openid"}, auth=device,
                           base_url="http://idp.example.org")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "insecure_transport"


def test_revoking_a_refresh_token_revokes_its_family(client, alice, conf):
    body = tokens(client, *conf)
    newer = refresh(client, *conf, body["refresh_token"]).get_json()
    response = client.post("/revoke", data={"token": newer["refresh_token"]}, auth=conf)
    assert response.status_code == 200
    assert userinfo_status(client, newer["access_token"]) == 401
    assert introspect(client, *conf, newer["access_token"])["active"] is False
    assert refresh(client, *conf, newer["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_public_client_may_revoke_its_token(client, alice, public):
    body = tokens(client, *public)
    response = client.post("/revoke", data={"token": body["refresh_token"], "client_id": public[0]})
    assert response.status_code == 200
    assert userinfo_status(client, body["access_token"]) == 401


def test_revoking_an_unknown_token_is_200(client, conf):
    for token in ("unknown-token", "a.b.c"):
        assert client.post("/revoke", data={"token": token}, auth=conf).status_code == 200


@pytest.mark.parametrize("hint", ["id_token", "urn:example:unknown", "Refresh_Token"])
def test_a_hint_idp_does_not_know_is_ignored_not_refused(client, alice, conf, hint):
    """RFC 7009 2.1, RFC 7662 2.1: the hint only says where to look first; the token is still found."""
    body = tokens(client, *conf)
    for kind in ("access_token", "refresh_token"):
        info = client.post("/introspect", data={"token": body[kind], "token_type_hint": hint}, auth=conf)
        assert info.status_code == 200 and info.get_json()["active"] is True, (kind, info.get_json())
    wrong_hint = client.post("/introspect", data={"token": body["refresh_token"], "token_type_hint": "access_token"},
                             auth=conf)
    assert wrong_hint.get_json()["active"] is True
    response = client.post("/revoke", data={"token": body["refresh_token"], "token_type_hint": hint}, auth=conf)
    assert response.status_code == 200
    assert introspect(client, *conf, body["refresh_token"])["active"] is False
    assert userinfo_status(client, body["access_token"]) == 401


def test_introspection_by_another_client_says_inactive(client, alice, conf, make_client):
    other = make_client(name="Other")
    body = tokens(client, *conf)
    for token in (body["access_token"], body["refresh_token"]):
        assert introspect(client, *other, token) == {"active": False}
    assert introspect(client, *conf, body["access_token"])["active"] is True


def test_introspection_needs_client_authentication(client, alice, conf, public):
    body = tokens(client, *conf)
    response = client.post("/introspect", data={"token": body["access_token"]})
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"
    response = client.post("/introspect", data={"token": body["access_token"]}, auth=(conf[0], "wrong"))
    assert response.status_code == 401
    response = client.post("/introspect", data={"token": body["access_token"], "client_id": public[0]})
    assert response.status_code == 401


def test_introspection_of_an_active_token_describes_it(client, alice, conf):
    body = tokens(client, *conf, scope="openid email")
    info = introspect(client, *conf, body["access_token"])
    assert info["active"] is True and info["client_id"] == conf[0] and info["scope"] == "openid email"
    assert info["iss"] == ISSUER and info["sub"]


# --- 11. iss on authorization responses -------------------------------------------------------------------------

def test_successful_authorization_response_carries_iss(client, alice, conf):
    response = walk_authorize(client, authorize_url(conf[0], state="ok-state"))
    params = query_params(response.headers["Location"])
    assert params["iss"] == ISSUER and params["state"] == "ok-state" and params["code"]


def test_denied_consent_redirects_access_denied_with_iss(client, alice, third_party):
    response = walk_authorize(client, authorize_url(third_party[0], state="deny-state"), consent="deny")
    assert_error_redirect(response, "access_denied", state="deny-state")


def test_prompt_none_without_session_is_login_required_with_iss(client, conf):
    assert_error_redirect(client.get(authorize_url(conf[0], prompt="none")), "login_required")


def test_discovery_advertises_iss_parameter(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["authorization_response_iss_parameter_supported"] is True


# --- client credentials ------------------------------------------------------------------------------------------

def test_client_credentials_issues_an_access_token_only(client, machine):
    response = client.post("/token", data={"grant_type": "client_credentials"}, auth=machine)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert "refresh_token" not in body and "id_token" not in body
    claims = jwt.decode(body["access_token"], jwks_of(client), algorithms=["RS256"]).claims
    assert claims["sub"] == machine[0] and claims["client_id"] == machine[0]
    assert introspect(client, *machine, body["access_token"])["active"] is True


def test_client_credentials_is_refused_for_clients_without_that_grant(client, conf):
    response = client.post("/token", data={"grant_type": "client_credentials"}, auth=conf)
    assert response.status_code == 400 and response.get_json()["error"] == "unauthorized_client"


def test_public_client_cannot_use_client_credentials(app, client, public):
    response = client.post("/token", data={"grant_type": "client_credentials", "client_id": public[0]})
    assert response.status_code in (400, 401)
    assert response.get_json()["error"] in ("invalid_client", "unauthorized_client")
    with app.app_context():
        with pytest.raises(ValueError):
            create_client(name="Pub", redirect_uris=[], post_logout_redirect_uris=[], public=True,
                          grant_types=["client_credentials"], scopes=[], auth_method=None, first_party=False)
        db.session.rollback()


# --- private_key_jwt ---------------------------------------------------------------------------------------------

@pytest.fixture
def jwt_client(make_client):
    key = RSAKey.generate_key(2048, parameters={"kid": "rp-key-1", "alg": "RS256", "use": "sig"}, private=True)
    client_id, secret = make_client(name="JWT client", redirect_uris=[], grant_types=["client_credentials"],
                                    auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]})
    assert secret is None
    return client_id, key


def assertion(client_id: str, key, *, aud: str = ISSUER + "/token", jti: str | None = None, **claims) -> str:
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 60,
            "jti": jti or uuid.uuid4().hex, **claims}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, body, key, algorithms=["RS256"])


def jwt_auth(signed: str, **data) -> dict:
    return {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed, **data}


def test_private_key_jwt_authenticates_and_refuses_a_replayed_assertion(client, jwt_client):
    client_id, key = jwt_client
    signed = assertion(client_id, key)
    first = client.post("/token", data=jwt_auth(signed, grant_type="client_credentials"))
    assert first.status_code == 200, first.get_json()
    assert jwt.decode(first.get_json()["access_token"], jwks_of(client), algorithms=["RS256"]).claims["sub"] \
        == client_id
    replay = client.post("/token", data=jwt_auth(signed, grant_type="client_credentials"))
    assert replay.status_code in (400, 401) and replay.get_json()["error"] == "invalid_client"
    assert "access_token" not in replay.get_json()


def test_private_key_jwt_refuses_a_foreign_key_wrong_audience_and_expired_assertion(client, jwt_client):
    client_id, key = jwt_client
    foreign = RSAKey.generate_key(2048, parameters={"kid": "rp-key-1"}, private=True)
    now = int(time.time())
    for signed in (assertion(client_id, foreign), assertion(client_id, key, aud="https://elsewhere.example/token"),
                   assertion(client_id, key, exp=now - 300, iat=now - 400)):
        response = client.post("/token", data=jwt_auth(signed, grant_type="client_credentials"))
        assert response.status_code in (400, 401) and response.get_json()["error"] == "invalid_client"


def test_private_key_jwt_client_cannot_use_a_secret_or_nothing(client, jwt_client):
    client_id, _ = jwt_client
    response = client.post("/token", data={"grant_type": "client_credentials", "client_id": client_id})
    assert response.status_code in (400, 401) and response.get_json()["error"] == "invalid_client"
    response = client.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, "anything"))
    assert response.status_code in (400, 401) and response.get_json()["error"] == "invalid_client"


def test_private_key_jwt_assertion_with_alg_none_is_refused(client, jwt_client):
    client_id, _ = jwt_client
    now = int(time.time())
    signed = unsigned_jwt({"iss": client_id, "sub": client_id, "aud": ISSUER + "/token", "exp": now + 60,
                           "jti": uuid.uuid4().hex})
    response = client.post("/token", data=jwt_auth(signed, grant_type="client_credentials"))
    assert response.status_code in (400, 401) and response.get_json()["error"] == "invalid_client"


# --- userinfo ----------------------------------------------------------------------------------------------------

def test_userinfo_by_get_header_post_header_and_post_body(client, alice, conf):
    body = tokens(client, *conf, scope="openid email offline_access")
    at = body["access_token"]
    for response in (client.get("/userinfo", headers=bearer(at)), client.post("/userinfo", headers=bearer(at)),
                     client.post("/userinfo", data={"access_token": at})):
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["email"] == "alice@example.com" and response.get_json()["sub"]
    assert client.get("/userinfo").status_code == 401
    assert client.get("/userinfo?access_token=" + at).status_code == 401  # never in the URL (RFC 9700 2.4)


def test_the_request_line_of_userinfo_names_the_tokens_user(client, alice, conf, caplog):
    """Userinfo reads its token as a view (no model), and its line still names whom the request was for
    (idp.logs._subject), without another query; introspection answers a client about a token, and names the
    client."""
    body = tokens(client, *conf, scope="openid email offline_access")
    subject = client.get("/userinfo", headers=bearer(body["access_token"])).get_json()["sub"]
    caplog.set_level(logging.INFO, logger="idp.request")
    caplog.clear()
    assert userinfo_status(client, body["access_token"]) == 200
    assert introspect(client, *conf, body["access_token"])["sub"] == subject
    assert client.get("/userinfo", headers=bearer("not-a-token")).status_code == 401
    lines = [record.fields for record in caplog.records if record.name == "idp.request"]
    assert [(line["route"], line["user"]) for line in lines] == [
        ("/userinfo", subject), ("/introspect", None), ("/userinfo", None)], lines
    assert lines[1]["client_id"] == conf[0]


def test_client_credentials_token_gets_no_userinfo(client, machine):
    at = client.post("/token", data={"grant_type": "client_credentials"}, auth=machine).get_json()["access_token"]
    assert userinfo_status(client, at) in (401, 403)


# --- CORS --------------------------------------------------------------------------------------------------------

def test_cors_on_rp_facing_endpoints_but_not_on_authorize(client, conf):
    for response in (client.post("/token", data={}), client.get("/userinfo"), client.get("/jwks.json"),
                     client.get("/.well-known/openid-configuration"),
                     client.post("/revoke", data={"token": "x"}, auth=conf),
                     client.options("/token", headers={"Origin": "https://spa.example",
                                                       "Access-Control-Request-Method": "POST"})):
        assert response.headers.get("Access-Control-Allow-Origin") == "*", response.request.path
    for response in (client.get(authorize_url(conf[0])), client.get(authorize_url("unknown")),
                     client.post("/authorize", data={"client_id": conf[0]})):
        assert "Access-Control-Allow-Origin" not in response.headers


# --- discovery ---------------------------------------------------------------------------------------------------

def test_discovery_validates_and_every_listed_endpoint_answers(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    OpenIDProviderMetadata(meta).validate(metadata_classes=[
        rfc8414.AuthorizationServerMetadata, rfc9207.AuthorizationServerMetadata, rpinitiated.OpenIDProviderMetadata])
    assert meta["issuer"] == ISSUER
    assert "none" not in meta["id_token_signing_alg_values_supported"]
    assert "none" not in meta["token_endpoint_auth_signing_alg_values_supported"]
    urls = {k: v for k, v in meta.items() if k.endswith("_endpoint") or k == "jwks_uri"}
    assert {"authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri", "revocation_endpoint",
            "introspection_endpoint", "end_session_endpoint"} <= set(urls)
    for name, url in urls.items():
        assert url.startswith(ISSUER + "/"), (name, url)
        path = url[len(ISSUER):]
        response = client.get(path)
        if response.status_code == 405:
            response = client.post(path, data={})
        assert response.status_code not in (404, 405) and response.status_code < 500, (name, response.status_code)
    assert client.get("/.well-known/oauth-authorization-server").get_json() == meta


def test_jwks_has_only_public_keys(client):
    for key in client.get("/jwks.json").get_json()["keys"]:
        assert key["kid"] and key["alg"] in ("RS256", "ES256")
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


# --- bad input never gives 500 (SECURITY.md 31) ------------------------------------------------------------------

def unsigned_jwt(claims: dict, header: dict | None = None) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return part(header or {"alg": "none", "typ": "at+jwt"}) + "." + part(claims) + "."


GARBAGE_AUTH = ["Basic", "Basic ", "Basic !!!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Basic " + base64.b64encode(b":").decode(),
                "Bearer", "Bearer ", "Bearer a.b.c", "Bearer ....", "Bearer " + "x" * 5000, "Digest foo=bar",
                "Negotiate", "bearer", "Bearer a b c", "Basic " + "A" * 10000]


@pytest.mark.parametrize("header", GARBAGE_AUTH)
def test_garbage_authorization_headers_never_give_500(client, header):
    for method, path, data in (("get", "/userinfo", None), ("post", "/userinfo", {}),
                               ("post", "/token", {"grant_type": "client_credentials"}),
                               ("post", "/token", {"grant_type": "authorization_code", "code": "x"}),
                               ("post", "/revoke", {"token": "x"}), ("post", "/introspect", {"token": "x"})):
        response = getattr(client, method)(path, data=data, headers={"Authorization": header})
        assert 400 <= response.status_code < 500, (path, header, response.status_code)
        assert response.is_json, (path, header)


def test_token_signed_by_a_foreign_key_is_rejected_at_userinfo(client, alice, conf):
    body = tokens(client, *conf)
    real = jwt.decode(body["access_token"], jwks_of(client), algorithms=["RS256"])
    kid = real.header["kid"]
    foreign = RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)
    forged = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": kid}, dict(real.claims), foreign,
                        algorithms=["RS256"])
    assert userinfo_status(client, forged) == 401
    assert introspect(client, *conf, forged)["active"] is False
    hs = jwt.encode({"alg": "HS256", "typ": "at+jwt", "kid": kid}, dict(real.claims),
                    __import__("joserfc.jwk", fromlist=["OctKey"]).OctKey.import_key("k" * 32),
                    algorithms=["HS256"])
    assert userinfo_status(client, hs) == 401


def test_alg_none_access_token_is_rejected_at_userinfo(client, alice, conf):
    body = tokens(client, *conf)
    real = jwt.decode(body["access_token"], jwks_of(client), algorithms=["RS256"])
    for header in ({"alg": "none", "typ": "at+jwt"}, {"alg": "None", "typ": "at+jwt"},
                   {"alg": "none", "typ": "at+jwt", "kid": real.header["kid"]}):
        forged = unsigned_jwt(dict(real.claims), header)
        assert userinfo_status(client, forged) == 401
        assert userinfo_status(client, forged + "c2ln") == 401
        assert introspect(client, *conf, forged)["active"] is False
    assert userinfo_status(client, body["access_token"]) == 200


@pytest.mark.parametrize("claims", ["{", "[]", '"text"', "1", '{"userinfo": 5}', '{"id_token": []}', "null",
                                    '{"userinfo": {"email": 7}}'])
def test_malformed_claims_parameter_is_an_error_redirect(client, conf, claims):
    response = client.get(authorize_url(conf[0], claims=claims))
    if response.status_code == 302:
        assert response.headers["Location"].startswith(RP), response.headers["Location"]
        assert_error_redirect(response, "invalid_request")
    else:  # a claims object the parser accepts (and ignores the odd member of): the request goes on
        begun_sign_in(response)


@pytest.mark.parametrize("claims", ["{", "[]", '"text"', "1"])
def test_claims_that_are_not_a_json_object_are_invalid_request(client, conf, claims):
    assert_error_redirect(client.get(authorize_url(conf[0], claims=claims)), "invalid_request")


@pytest.mark.parametrize("max_age", ["abc", "-1", "1.5", "", " 5", "1e3", "99999999999999999999", "\u00b2",
                                     "\uff11\uff12"])
def test_non_numeric_max_age_is_an_error_redirect(client, conf, max_age):
    assert_error_redirect(client.get(authorize_url(conf[0], max_age=max_age)), "invalid_request")


def test_non_numeric_max_age_with_a_session_is_an_error_redirect(client, alice, conf):
    authorize(client, conf[0])
    assert_error_redirect(client.get(authorize_url(conf[0], max_age="soon")), "invalid_request")


# Longer than each parameter may be (idp.oidc.policy.PARAMETER_LIMITS): refused before any page is shown, since
# a sign-in that ends in a code too big for its row would be lost (SECURITY.md 31, RFC 6749 4.1.2.1).
OVERLONG = {"nonce": "n" * 513, "code_challenge": "c" * 129, "login_hint": "a" * 310 + "@example.com",
            "acr_values": "mfa " * 200, "claims": '{"userinfo": {"email": {"essential": true, "x": "' + "y" * 4100
            + '"}}}', "ui_locales": "en " * 100, "id_token_hint": "e" * 8193, "prompt": "login " * 20,
            "unknown_extension": "z" * 2049}


@pytest.mark.parametrize("name", list(OVERLONG))
def test_an_overlong_parameter_is_invalid_request_before_any_page(client, conf, name):
    assert_error_redirect(client.get(authorize_url(conf[0], **{name: OVERLONG[name]})), "invalid_request")


def test_an_overlong_nonce_is_invalid_request_for_a_signed_in_user_too(client, alice, conf):
    authorize(client, conf[0])
    response = client.get(authorize_url(conf[0], nonce="n" * 600))
    assert_error_redirect(response, "invalid_request")
    with client.application.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(AuthorizationCode)) == 1  # the first one


def test_an_overlong_state_is_refused_without_being_sent_back(client, conf):
    params = assert_error_redirect(client.get(authorize_url(conf[0], state="s" * 2049)), "invalid_request",
                                   state=None)
    assert "state" not in params


def test_an_overlong_parameter_from_an_unknown_client_gets_the_error_page(client, conf):
    assert_error_page(client.get(authorize_url("no-such-client", nonce="n" * 600)))


def test_a_long_registered_redirect_uri_is_not_refused_for_its_length(client, make_client):
    long_uri = "https://rp.example/cb?" + "x" * 2100
    client_id, _ = make_client(first_party=True, redirect_uris=[long_uri])
    assert_goes_to_login(client.get(authorize_url(client_id, redirect_uri=long_uri)))


def test_parameters_at_their_limit_carry_through_to_the_id_token(client, alice, conf):
    nonce = "n" * 512
    body = tokens(client, *conf, nonce=nonce, state="s" * 2048)
    assert jwt.decode(body["id_token"], KeySet.import_key_set(client.get("/jwks.json").get_json())).claims[
        "nonce"] == nonce


def test_empty_and_odd_token_requests_never_give_500(client, conf):
    for data in ({}, {"grant_type": ""}, {"grant_type": "authorization_code"},
                 {"grant_type": "refresh_token"}, {"grant_type": "urn:x"}, {"grant_type": "client_credentials",
                                                                           "scope": "nonsense"}):
        for auth in (None, conf):
            response = client.post("/token", data=data, auth=auth)
            assert 400 <= response.status_code < 500 and response.is_json, (data, response.status_code)
    response = client.post("/token", data="{not json", content_type="application/json")
    assert 400 <= response.status_code < 500
    response = client.post("/token", data=b"\xff\xfe", content_type="application/x-www-form-urlencoded")
    assert 400 <= response.status_code < 500


def test_odd_authorize_requests_never_give_500(client, conf):
    for params in ({"response_type": None}, {"response_type": ""}, {"scope": "openid nonsense"},
                   {"scope": ""}, {"prompt": "none login"}, {"prompt": "bogus"}, {"id_token_hint": "a.b.c"},
                   {"code_challenge": "short", "code_challenge_method": "S256"}, {"acr_values": "x" * 3000},
                   {"login_hint": "\x00"}, {"state": "s" * 3000}, {"request": "a.b.c"}, {"request_uri": "x"}):
        response = client.get(authorize_url(conf[0], **params))
        assert response.status_code < 500, (params, response.status_code)



# A NUL character: no field takes one (PostgreSQL text cannot hold it, so these were 500s there); the request is
# refused with a 400 in the caller's form before any of it reaches a query.

@pytest.mark.parametrize("param", ["nonce", "state", "login_hint", "acr_values", "redirect_uri", "scope"])
def test_a_nul_in_an_authorization_request_is_an_error_page(client, conf, param):
    response = client.get(authorize_url(conf[0], **{param: "a\x00b"}))
    assert response.status_code == 400 and "Location" not in response.headers
    assert "NUL character" in response.get_data(as_text=True)


def test_a_nul_in_the_client_id_is_an_error_page(client):
    response = client.get(authorize_url("a\x00b"))
    assert response.status_code == 400 and "Location" not in response.headers


@pytest.mark.parametrize("path, data", [
    ("/token", {"grant_type": "client_credentials", "scope": "openid\x00"}),
    ("/token", {"grant_type": "authorization_code", "code": "\x00", "redirect_uri": RP}),
    ("/revoke", {"token": "a\x00b"}),
    ("/introspect", {"token": "a\x00b", "token_type_hint": "access_token"}),
])
def test_a_nul_at_the_token_endpoints_is_invalid_request(client, conf, path, data):
    response = client.post(path, data=data, auth=conf)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    assert response.headers["Cache-Control"] == "no-store"


def test_a_nul_in_a_client_id_at_the_token_endpoint_is_invalid_request(client, conf):
    response = client.post("/token", data={"grant_type": "client_credentials", "client_id": "a\x00b",
                                           "client_secret": conf[1]})
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


def test_a_nul_at_userinfo_is_invalid_request_with_a_bearer_challenge(client, alice, conf):
    access_token = tokens(client, *conf)["access_token"]
    response = client.post("/userinfo", data={"claims": "\x00"}, headers=bearer(access_token))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_request"')
    assert userinfo_status(client, access_token) == 200


@pytest.mark.parametrize("subject", [5, ["a"], "a\x00b", None])
def test_a_client_assertion_naming_no_possible_client_is_invalid_client(client, jwt_client, subject):
    """private_key_jwt: the client comes from the assertion's claims, past the check on the request's text."""
    client_id, key = jwt_client
    signed = assertion(client_id, key, iss=subject, sub=subject)
    response = client.post("/token", data=jwt_auth(signed, grant_type="client_credentials", client_id=client_id))
    assert response.status_code in (400, 401) and response.get_json()["error"] in ("invalid_client",
                                                                                 "invalid_request")



@pytest.mark.parametrize("params", [{"response_type": "c\u00f6de"}, {"response_type": "code \u00e9"},
                                    {"redirect_uri": "https://r\u00e9p.example/cb"}])
def test_non_ascii_that_authlib_would_quote_in_an_error_is_an_error_page(client, conf, params):
    """Authlib refuses to write these values into an error_description (RFC 6749 4.1.2.1): still a 400 page."""
    response = client.get(authorize_url(conf[0], **params))
    assert response.status_code == 400 and "Location" not in response.headers
    assert "invalid_request" in response.get_data(as_text=True)


@pytest.mark.parametrize("body", [b"[1, 2]", b"5", b'"text"', b'{"confirm": ["yes"]}'])
def test_a_json_body_at_end_session_is_no_form(client, body):
    response = client.post("/end-session", data=body, content_type="application/json")
    assert response.status_code == 200 and 'name="confirm"' in response.get_data(as_text=True)



@pytest.mark.parametrize("name, value", [("nonce", "n-2"), ("prompt", "login"), ("acr_values", "urn:idp:acr:mfa"),
                                         ("max_age", "5"), ("login_hint", "bob@example.com")])
def test_a_repeated_parameter_is_invalid_request(client, conf, name, value):
    """RFC 6749 3.1: a parameter must not appear twice (Authlib checks only the five core ones)."""
    path = authorize_url(conf[0], nonce="n-1") + "&" + urlencode({name: value})
    if name != "nonce":
        path += "&" + urlencode({name: value})
    params = assert_error_redirect(client.get(path), "invalid_request")
    assert name in params["error_description"]


@pytest.mark.parametrize("method, path", [("GET", "/token"), ("GET", "/revoke"), ("GET", "/introspect"),
                                          ("PUT", "/userinfo")])
def test_a_wrong_method_at_an_oauth_endpoint_is_an_oauth_error_with_allow(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 405 and response.get_json()["error"] == "invalid_request"
    assert "POST" in response.headers["Allow"] and response.headers["Cache-Control"] == "no-store"


def test_a_body_too_large_at_the_token_endpoint_is_an_oauth_error(client):
    response = client.post("/token", data="grant_type=" + "x" * (2 * 1024 * 1024),
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 413 and response.get_json()["error"] == "invalid_request"


def test_a_wrong_method_on_a_hosted_page_is_the_error_page_with_allow(client):
    response = client.put("/login")
    assert response.status_code == 405 and response.mimetype == "text/html"
    assert "GET" in response.headers["Allow"]


def test_private_key_jwt_works_at_introspection_and_revocation_as_advertised(client, jwt_client):
    client_id, key = jwt_client
    token = client.post("/token", data=jwt_auth(assertion(client_id, key), grant_type="client_credentials"))
    access_token = token.get_json()["access_token"]
    info = client.post("/introspect", data=jwt_auth(assertion(client_id, key), token=access_token))
    assert info.status_code == 200 and info.get_json()["active"] is True
    assert client.post("/revoke", data=jwt_auth(assertion(client_id, key), token=access_token)).status_code == 200
    info = client.post("/introspect", data=jwt_auth(assertion(client_id, key), token=access_token))
    assert info.get_json()["active"] is False


# --- races: single use holds when the requests arrive together (SECURITY.md 5, 6) --------------------------------

ON_POSTGRES = pytest.mark.skipif(not TEST_DATABASE_URL, reason="the race needs PostgreSQL's row locking: set "
                                                                "IDP_TEST_DATABASE_URL")
AT_ONCE = 6


def at_once(app, send) -> list:
    """``send(test_client)`` from AT_ONCE threads released together; their responses."""
    barrier = threading.Barrier(AT_ONCE)

    def one(_):
        http = app.test_client()
        barrier.wait()
        return send(http)

    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(one, range(AT_ONCE)))


@ON_POSTGRES
def test_a_code_sent_six_times_at_once_issues_tokens_once(app, client, alice, conf):
    verifier, challenge = pkce_pair()
    code = authorize(client, conf[0], code_challenge=challenge, code_challenge_method="S256",
                     scope="openid offline_access")
    responses = at_once(app, lambda http: redeem(http, *conf, code, verifier))
    assert sorted(r.status_code for r in responses) == [200] + [400] * (AT_ONCE - 1)
    assert {r.get_json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}
    # The second uses revoke what the first issued, even when they arrive while it is being issued.
    winner = next(r for r in responses if r.status_code == 200).get_json()
    assert userinfo_status(client, winner["access_token"]) == 401
    assert refresh(client, *conf, winner["refresh_token"]).status_code == 400


@ON_POSTGRES
def test_a_refresh_token_sent_six_times_at_once_rotates_once(app, client, alice, conf):
    body = tokens(client, *conf, scope="openid offline_access")
    responses = at_once(app, lambda http: refresh(http, *conf, body["refresh_token"]))
    assert sorted(r.status_code for r in responses) == [200] + [400] * (AT_ONCE - 1)
    assert {r.get_json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}
    winner = next(r for r in responses if r.status_code == 200).get_json()
    # The losers presented a rotated token: reuse, so the whole family is revoked, the winner's new token too.
    assert refresh(client, *conf, winner["refresh_token"]).status_code == 400


# A request object that is not one (tests/test_request_objects.py has the real ones): a client with no registered
# keys or request_uris gets the error page, never a redirect (SECURITY.md 2): the object's redirect URI is unverified.
@pytest.mark.parametrize(("name", "value", "error"), [
    ("request", "eyJhbGciOiJub25lIn0.eyJzY29wZSI6Im9wZW5pZCJ9.", "invalid_request_object"),
    ("request_uri", "https://rp.example/request.jwt", "invalid_request_uri"),
])
@pytest.mark.parametrize("signed_in", [False, True])
def test_a_request_object_the_client_cannot_send_gets_the_error_page(client, alice, conf, name, value, error,
                                                                     signed_in):
    if signed_in:
        authorize(client, conf[0])
    response = client.get(authorize_url(conf[0], **{name: value}))
    assert_error_page(response)
    assert error in response.get_data(as_text=True)


def test_a_request_object_from_an_unknown_client_or_redirect_uri_gets_the_error_page(client, conf):
    assert_error_page(client.get(authorize_url("no-such-client", request="a.b.")))
    assert_error_page(client.get(authorize_url(conf[0], redirect_uri="https://evil.example/cb",
                                               request_uri="https://rp.example/r")))


def test_discovery_does_not_advertise_address(client):
    """idp holds no postal address: neither the scope nor the claim is offered (OIDC Discovery 3 is truthful)."""
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert "address" not in meta["scopes_supported"]
    assert "address" not in meta["claims_supported"]


@pytest.mark.parametrize("signed_in", [False, True])
def test_the_address_scope_is_invalid_scope_like_any_unknown_scope(client, alice, conf, signed_in):
    if signed_in:
        authorize(client, conf[0])
    assert_error_redirect(client.get(authorize_url(conf[0], scope="openid address")), "invalid_scope")
    assert_error_redirect(client.get(authorize_url(conf[0], scope="openid no-such-scope")), "invalid_scope")


def test_a_nonce_the_same_client_already_used_is_refused(client, alice, conf, make_client):
    """OIDC Core 3.1.2.1, 15.5.2: a nonce is a one-time value per client; a second authorization request with a
    nonce a code was already issued for is refused (the replay check in idp.oidc.server.OpenIDCode.exists_nonce)."""
    authorize(client, conf[0], nonce="once-only-1")
    again = client.get(authorize_url(conf[0], nonce="once-only-1"))
    params = assert_error_redirect(again, "invalid_request")
    assert "code" not in params
    assert authorize(client, conf[0], nonce="once-only-2")  # a fresh nonce still works
    other_id, _ = make_client(name="Other App", first_party=True)
    assert authorize(client, other_id, nonce="once-only-1")  # the same value from another client is its own


def test_the_client_secret_is_compared_in_constant_time(app, client, machine, monkeypatch):
    """SECURITY.md 8: the presented secret's hash is compared with the stored one by hmac.compare_digest (through
    idp.security.tokens.same), never with ``==``, whose time leaks how much of it matches."""
    import hmac

    real = hmac.compare_digest
    calls: list[tuple] = []

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with app.app_context():
        stored = db.session.execute(db.select(Client.client_secret_hash).where(Client.client_id == machine[0])
                                    ).scalar_one()
    for secret, status in ((machine[1], 200), ("wrong-" + machine[1], 401)):
        calls.clear()
        response = client.post("/token", data={"grant_type": "client_credentials"}, auth=(machine[0], secret))
        assert response.status_code == status
        compared = {(bytes(a) if isinstance(a, bytes) else a.encode(), bytes(b) if isinstance(b, bytes)
                     else b.encode()) for a, b in calls}
        assert (stored.encode(), token_hash(secret).encode()) in compared, calls
