"""OIDC Core 12.2: a refresh of a grant that had `openid` answers with a new ID token that speaks of the original
sign-in (auth_time, acr, amr, sid), not of the refresh; a grant without `openid` gets none."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import pytest
from joserfc import jwt

from idp.extensions import db
from idp.models import LoginSession, Token, utcnow
from tests.test_oidc_protocol import jwks_of, refresh, tokens


def _claims(client, id_token: str) -> dict:
    decoded = jwt.decode(id_token, jwks_of(client), algorithms=["RS256", "ES256"])
    assert decoded.header.get("kid")
    return decoded.claims


def _at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def test_a_refresh_answers_a_new_id_token_about_the_original_sign_in(app, client, alice, conf):
    first = tokens(client, *conf, scope="openid email offline_access", nonce="n-0S6_WzA2Mj")
    original = _claims(client, first["id_token"])
    assert original["nonce"] == "n-0S6_WzA2Mj"
    with app.app_context():  # the sign-in happened an hour ago: the refreshed token must still say so
        earlier = utcnow().replace(microsecond=0) - timedelta(hours=1)
        db.session.execute(db.update(Token).values(auth_time=earlier, acr="urn:idp:acr:mfa", amr=["pwd", "otp"]))
        db.session.commit()
    response = refresh(client, *conf, first["refresh_token"])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    renewed = _claims(client, body["id_token"])
    for name in ("iss", "sub", "aud", "sid", "email"):
        assert renewed[name] == original[name], name
    assert renewed["auth_time"] == int(earlier.timestamp())
    assert renewed["acr"] == "urn:idp:acr:mfa" and renewed["amr"] == ["pwd", "otp"]
    assert "nonce" not in renewed  # OIDC Core 12.2 (errata set 2): a refresh is not an authentication request
    assert renewed["iat"] >= original["iat"] and renewed["exp"] > renewed["iat"]
    assert renewed["at_hash"] == _at_hash(body["access_token"]) != original["at_hash"]
    with app.app_context():
        session = db.session.execute(db.select(LoginSession).where(LoginSession.sid == renewed["sid"])).scalar_one()
        assert session.user.subject == renewed["sub"]


def test_the_refreshed_id_token_is_an_es256_one_for_an_es256_client(client, alice, make_client):
    es = make_client(name="ES App", first_party=True, id_token_alg="ES256")
    first = tokens(client, *es)
    body = refresh(client, *es, first["refresh_token"]).get_json()
    decoded = jwt.decode(body["id_token"], jwks_of(client), algorithms=["ES256"])
    assert decoded.header["alg"] == "ES256" and decoded.claims["aud"] == [es[0]]


@pytest.mark.parametrize("scope", ["offline_access", "email offline_access"])
def test_a_refresh_of_a_grant_without_openid_has_no_id_token(client, alice, conf, scope):
    first = tokens(client, *conf, scope=scope)
    assert "id_token" not in first
    body = refresh(client, *conf, first["refresh_token"]).get_json()
    assert body["access_token"] and "id_token" not in body


def test_a_refresh_narrowed_to_drop_openid_has_no_id_token(client, alice, conf):
    first = tokens(client, *conf, scope="openid email offline_access")
    body = refresh(client, *conf, first["refresh_token"], scope="email offline_access").get_json()
    assert body["scope"] == "email offline_access" and "id_token" not in body
