"""A first complete authorization code flow with PKCE, through the hosted pages (consent included)."""

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support import walk


def test_code_flow_with_consent_userinfo_refresh(app, client, make_user, make_client):
    make_user()
    client_id, secret = make_client()
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = (f"/authorize?response_type=code&client_id={client_id}&redirect_uri=https://rp.example/cb"
             f"&scope=openid%20email%20profile&state=s1&nonce=n1&code_challenge={challenge}"
             f"&code_challenge_method=S256")
    result = walk(client, query)  # the hosted screens: password, then consent (allowed)
    assert result.screens == ["password", "consent"]
    assert "Allow Test App" in result.pages[-1].get_data(as_text=True)
    location = result.location
    assert location.startswith("https://rp.example/cb?"), location
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == ["s1"] and params["iss"] == ["http://localhost"]
    code = params["code"][0]
    tok = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                      "redirect_uri": "https://rp.example/cb", "code_verifier": verifier},
                      auth=(client_id, secret))
    assert tok.status_code == 200, tok.get_json()
    body = tok.get_json()
    jwks = KeySet.import_key_set(client.get("/jwks.json").get_json())
    id_token = jwt.decode(body["id_token"], jwks, algorithms=["RS256"])
    assert id_token.header["kid"]
    for claim in ("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "at_hash"):
        assert claim in id_token.claims, claim
    assert id_token.claims["amr"] == ["pwd"]
    at = jwt.decode(body["access_token"], jwks, algorithms=["RS256"])
    assert at.header["typ"] == "at+jwt"
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + body["access_token"]})
    assert info.status_code == 200 and info.get_json()["email"] == "alice@example.com"
    again = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                        "redirect_uri": "https://rp.example/cb", "code_verifier": verifier},
                        auth=(client_id, secret))
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + body["access_token"]})
    assert info.status_code == 401
