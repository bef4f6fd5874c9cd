"""Passkeys from the operator's own Android apps (issue 19): Digital Asset Links names the apps, and a WebAuthn
ceremony whose clientDataJSON carries an app's ``android:apk-key-hash:`` origin counts as this server's, through the
challenge endpoint and the account API alike. Any other app (another signing key) is refused, as a foreign web
origin is."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from idp.config import ConfigError
from idp.extensions import db
from idp.models import Factor, User, utcnow
from idp.security.webauthn import android_origin
from tests.support import PASSWORD, make_client_in, make_user_in, pkce_pair
from tests.test_login_promises import SoftAuthenticator

ALICE = "alice@example.com"
# The SHA-256 of a signing certificate, as `keytool -list` and Play Console show it.
FINGERPRINT = ":".join(f"{b:02X}" for b in hashlib.sha256(b"the app's signing certificate").digest())
OTHER = ":".join(f"{b:02X}" for b in hashlib.sha256(b"somebody else's certificate").digest())


def apk_origin(fingerprint: str) -> str:
    raw = bytes.fromhex(fingerprint.replace(":", ""))
    return "android:apk-key-hash:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def android_app(make_app):
    return make_app(IDP_ANDROID_APPS=f"com.example.wallet={FINGERPRINT}, com.example.wallet.beta={FINGERPRINT}")


def test_the_origin_is_the_base64url_of_the_fingerprint():
    assert android_origin(FINGERPRINT) == apk_origin(FINGERPRINT)
    assert android_origin(FINGERPRINT.lower()) == apk_origin(FINGERPRINT)


def test_asset_links_name_each_app_and_nothing_is_published_without_apps(android_app, app):
    statements = android_app.test_client().get("/.well-known/assetlinks.json").get_json()
    assert statements == [
        {"relation": ["delegate_permission/common.get_login_creds"],
         "target": {"namespace": "android_app", "package_name": package, "sha256_cert_fingerprints": [FINGERPRINT]}}
        for package in ("com.example.wallet", "com.example.wallet.beta")]
    assert app.test_client().get("/.well-known/assetlinks.json").status_code == 404


@pytest.mark.parametrize("value", ["com.example.wallet", "wallet=" + FINGERPRINT, "com.example.wallet=AB:CD",
                                   "com.example.wallet=" + FINGERPRINT.replace(":", "")])
def test_a_mistyped_app_refuses_to_start(make_app, value):
    with pytest.raises(ConfigError, match="IDP_ANDROID_APPS"):
        make_app(IDP_ANDROID_APPS=value)


def _passkey_user(app) -> SoftAuthenticator:
    make_user_in(app)
    authenticator = SoftAuthenticator()
    with app.app_context():
        user_id = db.session.execute(db.select(User.id).where(User.email == ALICE)).scalar_one()
        db.session.add(Factor(user_id=user_id, kind="webauthn", name="Phone", credential_id=authenticator.credential_id,
                              public_key=authenticator.cose_public_key(), sign_count=0, discoverable=True,
                              confirmed_at=utcnow()))
        db.session.commit()
    return authenticator


def _challenge(http, client_id: str):
    verifier, challenge = pkce_pair()
    first = http.post("/authorize-challenge", data={
        "client_id": client_id, "response_type": "code", "scope": "openid", "code_challenge": challenge,
        "code_challenge_method": "S256", "username": ALICE, "password": PASSWORD})
    body = first.get_json()
    assert first.status_code == 403 and body["step"] == "webauthn", body
    options = body["webauthn_options"]
    options = json.loads(options) if isinstance(options, str) else options
    return body["auth_session"], options, verifier


def _passkey_answer(app, fingerprint: str):
    """A first-party app's challenge request answered with the user's passkey, asserted from the Android app whose
    signing certificate has ``fingerprint``: (http client, answer, client_id, PKCE verifier)."""
    authenticator = _passkey_user(app)
    client_id, _secret = make_client_in(app, name="Wallet", redirect_uris=["https://app.example/cb"], public=True,
                                        first_party=True)
    http = app.test_client()
    auth_session, options, verifier = _challenge(http, client_id)
    credential = authenticator.assertion(options["challenge"], counter=1, user_verified=True,
                                         origin=apk_origin(fingerprint), rp_id=options["rpId"])
    answer = http.post("/authorize-challenge", data={"client_id": client_id, "auth_session": auth_session,
                                                     "credential": credential})
    return http, answer, client_id, verifier


@pytest.mark.parametrize("fingerprint, accepted", [(FINGERPRINT, True), (OTHER, False)])
def test_the_app_signs_in_with_its_passkey_and_another_app_cannot(android_app, fingerprint, accepted):
    http, answer, client_id, verifier = _passkey_answer(android_app, fingerprint)
    if not accepted:
        assert answer.status_code in (400, 403) and "authorization_code" not in answer.get_json()
        return
    assert answer.status_code == 200, answer.get_json()
    token = http.post("/token", data={"grant_type": "authorization_code", "client_id": client_id,
                                      "code": answer.get_json()["authorization_code"], "code_verifier": verifier})
    assert token.status_code == 200 and token.get_json()["id_token"]


def test_without_the_app_configured_its_origin_is_refused(app):
    _http, answer, _client_id, _verifier = _passkey_answer(app, FINGERPRINT)
    assert "authorization_code" not in answer.get_json()


def test_the_app_registers_a_passkey_through_the_account_api(android_app):
    from tests.test_account_api import API, _none_attestation, bearer, sign_in

    make_user_in(android_app)
    client_id, _secret = make_client_in(android_app, name="Wallet", redirect_uris=["https://app.example/cb"],
                                        public=True, first_party=True,
                                        scopes=["openid", "offline_access", "idp:account"])
    http = android_app.test_client()
    tokens, _answer = sign_in(http, client_id)
    for origin, status in ((apk_origin(OTHER), 400), (apk_origin(FINGERPRINT), 201)):
        started = http.post(f"{API}/me/factors/webauthn", headers=bearer(tokens))
        assert started.status_code == 200, started.get_json()
        body = started.get_json()
        credential, _credential_id = _none_attestation(body["options"], origin)
        done = http.post(f"{API}/me/factors/webauthn/verify", headers=bearer(tokens),
                         json={"challenge": body["challenge"], "credential": credential, "name": "Phone"})
        assert done.status_code == status, done.get_json()
