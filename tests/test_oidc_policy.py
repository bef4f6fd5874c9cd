"""Authorization policy, ID tokens, consent, key rotation, RP-initiated logout and audit (SECURITY.md 9, 12-15, 29).

Every test walks the hosted pages like a browser; the walking helpers are local to this file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.extensions import db
from idp.models import AuditEvent, LoginSession, LoginTransaction, SigningKey, User, utcnow
from idp.oidc import keys
from idp.security.keys import KeyDecryptionError, decrypt_private
from tests.conftest import SECRET
from tests.support import (
    PASSWORD,
    Walk,
    assert_in,
    begun_sign_in,
    csrf_token,
    link_in,
    open_link,
    remove_asking_first,
    screen_url,
    signed_in_email,
    step_name,
    submit_link,
    walk,
)
from tests.support import audit_events as events

RP = "https://rp.example/cb"
LOGGED_OUT = "https://rp.example/logged-out"
VERIFIER = "policy-verifier-" + "v" * 40
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
ALICE = "alice@example.com"


# --- walking helpers ----------------------------------------------------------------------------------------------

def authorize_path(client_id: str, **params) -> str:
    """An /authorize URL with sane defaults (code flow, PKCE S256, state); a None value drops a parameter."""
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": RP, "scope": "openid",
             "state": "st-1", "code_challenge": CHALLENGE, "code_challenge_method": "S256"}
    query.update(params)
    return "/authorize?" + urlencode({k: v for k, v in query.items() if v is not None})


def exchange(client, client_id: str, secret: str | None, code: str) -> dict:
    """Redeem a code at the token endpoint; returns the JSON body (asserting success)."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": RP, "code_verifier": VERIFIER}
    if secret is None:
        data["client_id"] = client_id
        response = client.post("/token", data=data)
    else:
        response = client.post("/token", data=data, auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def login_and_tokens(client, client_id, secret, **params) -> tuple[Walk, dict]:
    """Walk a full authorization (answering every screen) and redeem the code."""
    result = walk(client, authorize_path(client_id, **params))
    return result, exchange(client, client_id, secret, result.code)


def jwks_of(client) -> KeySet:
    return KeySet.import_key_set(client.get("/jwks.json").get_json())


def decode(client, token: str, algs=("RS256", "ES256")):
    """Verify a JWT of ours against the published JWKS."""
    return jwt.decode(token, jwks_of(client), algorithms=list(algs))


def unsigned_token(claims: dict) -> str:
    """A hand-built `alg: none` JWT (never to be accepted)."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def age_sessions(app, seconds: int) -> int:
    """Move every live session's auth_time ``seconds`` into the past; returns the new auth_time (epoch)."""
    with app.app_context():
        when = utcnow() - timedelta(seconds=seconds)
        for row in db.session.execute(db.select(LoginSession)).scalars():
            row.auth_time = when
        db.session.commit()
        return int(when.timestamp())


def user_row(app, email: str = ALICE) -> User:
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == email)).scalar_one()
        db.session.expunge(user)
        return user



@pytest.fixture
def first_party(make_client):
    """A first-party confidential client (no consent screen)."""
    return make_client(first_party=True, post_logout_redirect_uris=[LOGGED_OUT])


@pytest.fixture
def third_party(make_client):
    """A third-party confidential client (consent needed)."""
    return make_client(name="Photo Printer", post_logout_redirect_uris=[LOGGED_OUT])


# --- ID tokens (SECURITY.md 9) ------------------------------------------------------------------------------------

def test_id_token_rs256_by_default_with_every_claim(app, client, alice, first_party):
    client_id, secret = first_party
    result, body = login_and_tokens(client, client_id, secret, nonce="n-123")
    assert result.screens == ["password"]
    jwks = client.get("/jwks.json").get_json()
    token = decode(client, body["id_token"], algs=["RS256"])
    assert token.header["alg"] == "RS256"
    key = [k for k in jwks["keys"] if k["kid"] == token.header["kid"]]
    assert key and key[0]["kty"] == "RSA" and "d" not in key[0]
    claims = token.claims
    user = user_row(app)
    assert claims["iss"] == "http://localhost"
    assert claims["sub"] == user.subject and claims["sub"] != str(user.id)
    assert claims["aud"] in (client_id, [client_id])
    now = int(utcnow().timestamp())
    assert claims["iat"] <= now + 5 and claims["exp"] > now
    assert abs(claims["auth_time"] - now) < 60
    assert claims["nonce"] == "n-123"
    assert claims["acr"] == "urn:idp:acr:pwd" and claims["amr"] == ["pwd"]
    with app.app_context():
        live = db.session.execute(db.select(LoginSession)).scalar_one()
        assert claims["sid"] == live.sid
    digest = hashlib.sha256(body["access_token"].encode()).digest()
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def test_id_token_without_nonce_has_no_nonce_claim(client, alice, first_party):
    client_id, secret = first_party
    _, body = login_and_tokens(client, client_id, secret)
    assert "nonce" not in decode(client, body["id_token"]).claims


def test_es256_client_gets_es256_id_token(client, alice, make_client):
    client_id, secret = make_client(first_party=True, id_token_alg="ES256")
    _, body = login_and_tokens(client, client_id, secret)
    token = decode(client, body["id_token"], algs=["ES256"])
    assert token.header["alg"] == "ES256"
    key = [k for k in client.get("/jwks.json").get_json()["keys"] if k["kid"] == token.header["kid"]]
    assert key and key[0]["kty"] == "EC"


def test_alg_none_token_is_never_accepted(app, client, alice, first_party):
    client_id, secret = first_party
    _, body = login_and_tokens(client, client_id, secret)
    real = decode(client, body["id_token"]).claims
    forged = unsigned_token({k: real[k] for k in ("iss", "sub", "aud", "exp", "iat")})
    # As id_token_hint at the authorization endpoint: an error redirect, no code.
    result = walk(client, authorize_path(client_id, id_token_hint=forged))
    assert result.screens == [] and result.params.get("error") == "invalid_request"
    assert "code" not in result.params and result.params["iss"] == "http://localhost"
    # At the end-session endpoint: a 400 page, and the user stays signed in.
    response = client.get("/end-session?" + urlencode({"id_token_hint": forged, "post_logout_redirect_uri":
                                                        LOGGED_OUT, "client_id": client_id}))
    assert response.status_code == 400
    assert signed_in_email(client) == ALICE
    # As a bearer token at userinfo (both as an ID token and dressed as an access token).
    access = decode(client, body["access_token"])
    forged_at = unsigned_token(dict(access.claims))
    for token in (forged, forged_at):
        info = client.get("/userinfo", headers={"Authorization": "Bearer " + token})
        assert info.status_code == 401


# --- prompt=none (SECURITY.md 12) ---------------------------------------------------------------------------------

def test_prompt_none_without_session_is_login_required(client, alice, first_party):
    client_id, _ = first_party
    response = client.get(authorize_path(client_id, prompt="none", state="abc"))
    assert response.status_code == 302
    params = parse_qs(urlsplit(response.headers["Location"]).query)
    assert response.headers["Location"].startswith(RP)
    assert params["error"] == ["login_required"] and params["state"] == ["abc"]
    assert params["iss"] == ["http://localhost"] and "code" not in params


def test_prompt_none_with_session_but_no_consent_is_consent_required(client, alice, first_party, third_party):
    walk(client, authorize_path(first_party[0]))  # signed in through a first-party client
    result = walk(client, authorize_path(third_party[0], prompt="none"))
    assert result.screens == []
    assert result.params["error"] == "consent_required" and result.params["state"] == "st-1"
    assert result.params["iss"] == "http://localhost"


def test_prompt_none_with_unverified_email_is_interaction_required(app, client, alice, third_party):
    client_id, _ = third_party
    assert walk(client, authorize_path(client_id)).screens == ["password", "consent"]
    with app.app_context():
        db.session.execute(db.update(User).values(email_verified_at=None))
        db.session.commit()
    result = walk(client, authorize_path(client_id, prompt="none"))
    assert result.screens == [] and result.params["error"] == "interaction_required"
    assert result.params["iss"] == "http://localhost"


def test_prompt_none_with_everything_in_place_issues_a_code(client, alice, third_party):
    client_id, secret = third_party
    walk(client, authorize_path(client_id))
    result = walk(client, authorize_path(client_id, prompt="none", nonce="pn"))
    assert result.screens == [] and "error" not in result.params
    body = exchange(client, client_id, secret, result.code)
    assert decode(client, body["id_token"]).claims["nonce"] == "pn"


# --- prompt=login and max_age (SECURITY.md 12) --------------------------------------------------------------------

def test_prompt_login_asks_for_the_password_again_and_refreshes_auth_time(app, client, alice, first_party):
    client_id, secret = first_party
    walk(client, authorize_path(client_id))
    old = age_sessions(app, 3600)
    result = walk(client, authorize_path(client_id, prompt="login"))
    assert result.screens == ["password"]
    body = exchange(client, client_id, secret, result.code)
    assert decode(client, body["id_token"]).claims["auth_time"] > old + 3000
    # Without prompt=login the fresh session is reused silently.
    assert walk(client, authorize_path(client_id)).screens == []


def test_a_completed_prompt_login_answers_one_authorization_request(app, client, alice, first_party):
    """The sign-in that answered prompt=login is used up by the request it answers (at once, by the password POST
    that completed it): its return address, opened afterwards, asks for the password again instead of passing as
    a fresh sign-in."""
    client_id, _ = first_party
    walk(client, authorize_path(client_id))
    screen = client.get(authorize_path(client_id, prompt="login"))
    tid = begun_sign_in(screen).rsplit("/", 1)[1]
    assert step_name(screen) == "password"
    back = client.post(screen_url(screen), data={
        "csrf_token": csrf_token(screen), "step": "password", "email": ALICE, "password": PASSWORD})
    assert "code" in parse_qs(urlsplit(back.headers["Location"]).query)
    with app.app_context():
        return_to = db.session.get(LoginTransaction, tid).state.return_to
    assert return_to.startswith("/authorize?") and "prompt=login" in return_to and f"txn={tid}" in return_to
    again = client.get(return_to)
    begun_sign_in(again)
    assert step_name(again) == "password"


@pytest.mark.parametrize("max_age, aged", [("0", 0), ("60", 3600)])
def test_exceeded_max_age_forces_the_password_screen(app, client, alice, first_party, max_age, aged):
    client_id, secret = first_party
    walk(client, authorize_path(client_id))
    old = age_sessions(app, aged) if aged else None
    result = walk(client, authorize_path(client_id, max_age=max_age))
    assert result.screens == ["password"]
    claims = decode(client, exchange(client, client_id, secret, result.code)["id_token"]).claims
    assert "auth_time" in claims
    if old is not None:
        assert claims["auth_time"] > old + 3000


def test_max_age_not_exceeded_shows_no_screen_and_auth_time_is_in_the_id_token(app, client, alice, first_party):
    client_id, secret = first_party
    walk(client, authorize_path(client_id))
    old = age_sessions(app, 120)
    result = walk(client, authorize_path(client_id, max_age="3600"))
    assert result.screens == []
    claims = decode(client, exchange(client, client_id, secret, result.code)["id_token"]).claims
    assert claims["auth_time"] == old


def test_prompt_none_with_exceeded_max_age_is_login_required(app, client, alice, first_party):
    client_id, _ = first_party
    walk(client, authorize_path(client_id))
    age_sessions(app, 3600)
    result = walk(client, authorize_path(client_id, prompt="none", max_age="60"))
    assert result.screens == [] and result.params["error"] == "login_required"


# --- acr_values (SECURITY.md 13) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("signed_in_first", [True, False])
def test_acr_values_any_of_several_levels_completes_and_reports_the_level_reached(client, alice, first_party,
                                                                                  signed_in_first):
    client_id, secret = first_party
    if signed_in_first:
        walk(client, authorize_path(client_id))
    result = walk(client, authorize_path(client_id, acr_values="urn:idp:acr:mfa urn:idp:acr:pwd"))
    assert result.screens == ([] if signed_in_first else ["password"])  # no loop, no extra screen
    claims = decode(client, exchange(client, client_id, secret, result.code)["id_token"]).claims
    assert claims["acr"] == "urn:idp:acr:pwd" and claims["amr"] == ["pwd"]


def test_acr_values_mfa_is_never_answered_by_a_password_session(client, alice, first_party):
    client_id, _ = first_party
    walk(client, authorize_path(client_id))
    silent = walk(client, authorize_path(client_id, acr_values="urn:idp:acr:mfa", prompt="none"))
    assert silent.screens == [] and silent.params["error"] == "interaction_required"
    assert silent.params["iss"] == "http://localhost"
    # Interactively, the step-up asks for a second factor (here: to set one up) instead of issuing a code.
    result = walk(client, authorize_path(client_id, acr_values="urn:idp:acr:mfa"), stop_at="mfa_enroll")
    assert result.location is None and result.screens == ["mfa_enroll"], (result.screens, result.location)


def test_discovery_lists_acr_values_and_end_session_endpoint(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["acr_values_supported"] == ["urn:idp:acr:pwd", "urn:idp:acr:mfa", "urn:idp:acr:phr"]
    assert meta["end_session_endpoint"] == "http://localhost/end-session"
    assert "none" not in meta["id_token_signing_alg_values_supported"]


# --- consent ------------------------------------------------------------------------------------------------------

def test_consent_screen_names_the_client_and_the_scopes_in_plain_words(client, alice, third_party):
    result = walk(client, authorize_path(third_party[0], scope="openid email"), stop_at="consent")
    assert result.screens == ["password", "consent"]
    text = result.pages[-1].get_data(as_text=True)
    assert "Photo Printer" in text
    assert "Your email address" in text and "Know who you are" in text


def test_consent_deny_redirects_access_denied_with_iss(client, alice, third_party):
    result = walk(client, authorize_path(third_party[0], state="deny-1"), consent="deny")
    assert result.params["error"] == "access_denied" and result.params["state"] == "deny-1"
    assert result.params["iss"] == "http://localhost" and "code" not in result.params


def test_consent_is_remembered_but_a_new_scope_or_prompt_consent_asks_again(app, client, alice, third_party):
    client_id, _ = third_party
    assert walk(client, authorize_path(client_id, scope="openid email")).screens == ["password", "consent"]
    granted = events(app, "consent.granted")
    assert len(granted) == 1 and granted[0].client_id == client_id
    assert granted[0].subject_id == alice.id
    again = walk(client, authorize_path(client_id, scope="openid email"))
    assert again.screens == [] and again.code
    assert walk(client, authorize_path(client_id, scope="openid")).screens == []  # a subset needs nothing
    wider = walk(client, authorize_path(client_id, scope="openid email profile"), stop_at="consent")
    assert wider.screens == ["consent"]
    assert "Your name and profile" in wider.pages[-1].get_data(as_text=True)
    asked = walk(client, authorize_path(client_id, scope="openid email", prompt="consent"))
    assert asked.screens == ["consent"] and asked.code


def test_first_party_client_never_shows_consent(client, alice, first_party):
    client_id, _ = first_party
    assert walk(client, authorize_path(client_id, scope="openid email profile")).screens == ["password"]
    assert walk(client, authorize_path(client_id, scope="openid email profile phone")).screens == []


# --- login_hint, id_token_hint and harmless parameters ------------------------------------------------------------

def test_login_hint_prefills_the_email(client, alice, first_party):
    result = walk(client, authorize_path(first_party[0], login_hint="hinted@example.com"), stop_at="password")
    assert re.search(r'value="hinted@example\.com"', result.pages[-1].get_data(as_text=True))


def test_id_token_hint_for_another_user_forces_sign_in(app, make_user, alice, first_party):
    client_id, secret = first_party
    make_user(email="bob@example.com", name="Bob")
    browser_a, browser_b = app.test_client(), app.test_client()
    _, body = login_and_tokens(browser_a, client_id, secret)
    walk(browser_b, authorize_path(client_id), email="bob@example.com")
    hint = body["id_token"]
    silent = walk(browser_b, authorize_path(client_id, id_token_hint=hint, prompt="none"))
    assert silent.params["error"] == "login_required"
    result = walk(browser_b, authorize_path(client_id, id_token_hint=hint))
    assert result.screens == ["password"]
    claims = decode(browser_b, exchange(browser_b, client_id, secret, result.code)["id_token"]).claims
    assert claims["sub"] == user_row(app).subject
    # The same user's hint passes silently.
    assert walk(browser_a, authorize_path(client_id, id_token_hint=hint, prompt="none")).params.get("code")


def test_display_locales_and_unknown_parameters_cause_no_error(client, alice, first_party):
    client_id, secret = first_party
    result = walk(client, authorize_path(client_id, display="page", ui_locales="fr-CA en", claims_locales="de",
                                         foo="bar", prompt=None))
    assert result.screens == ["password"] and result.code
    exchange(client, client_id, secret, result.code)


# --- claims parameter (OIDC Core 5.5) -----------------------------------------------------------------------------

def test_claims_parameter_userinfo_email_with_openid_only(client, alice, first_party):
    client_id, secret = first_party
    _, body = login_and_tokens(client, client_id, secret, claims=json.dumps({"userinfo": {"email": None}}))
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + body["access_token"]}).get_json()
    assert info["email"] == ALICE
    assert "email" not in decode(client, body["id_token"]).claims
    # Without the claims request, scope openid releases no email.
    _, plain = login_and_tokens(client, client_id, secret)
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + plain["access_token"]}).get_json()
    assert "email" not in info


def test_claims_parameter_id_token_email_essential(client, alice, first_party):
    client_id, secret = first_party
    claims = json.dumps({"id_token": {"email": {"essential": True}}})
    _, body = login_and_tokens(client, client_id, secret, claims=claims)
    assert decode(client, body["id_token"]).claims["email"] == ALICE


# --- key rotation (SECURITY.md 14) --------------------------------------------------------------------------------

def test_key_rotation_keeps_old_keys_published_until_their_tokens_expire(app, client, alice, first_party):
    client_id, secret = first_party
    _, before = login_and_tokens(client, client_id, secret)
    old_kid = jwt.decode(before["id_token"], jwks_of(client), algorithms=["RS256"]).header["kid"]
    runner = app.test_cli_runner()
    rotated = runner.invoke(args=["keys", "rotate"])
    assert rotated.exit_code == 0, rotated.output
    assert "new signing key" in rotated.output
    _, after = login_and_tokens(client, client_id, secret)
    jwks = client.get("/jwks.json").get_json()
    kids = {k["kid"] for k in jwks["keys"]}
    new_kid = decode(client, after["id_token"]).header["kid"]
    assert new_kid != old_kid and {old_kid, new_kid} <= kids
    assert decode(client, before["id_token"]).claims["sub"] == user_row(app).subject
    listed = runner.invoke(args=["keys", "list"])
    assert listed.exit_code == 0
    assert re.search(rf"{re.escape(old_kid)}\t.*retired", listed.output)
    assert re.search(rf"{re.escape(new_kid)}\t.*active", listed.output)
    rotations = events(app, "key.rotated")
    assert len(rotations) == 1 and new_kid in rotations[0].details["kids"]
    with app.app_context():  # the old keys' tokens have all expired
        for row in db.session.execute(db.select(SigningKey).where(SigningKey.retired_at.is_not(None))).scalars():
            assert row.publish_until is not None and row.publish_until > utcnow()
            row.publish_until = utcnow() - timedelta(seconds=1)
        db.session.commit()
    kids = {k["kid"] for k in client.get("/jwks.json").get_json()["keys"]}
    assert old_kid not in kids and new_kid in kids
    assert len(kids) == 2  # one RS256 and one ES256 key


def test_jwks_publishes_a_key_rotated_by_another_worker_at_once(app, client):
    """Each worker keeps its JWK Set, and serves a rotation made anywhere with its next answer (SECURITY.md 14)."""
    before = {k["kid"] for k in client.get("/jwks.json").get_json()["keys"]}
    assert len(before) == 2
    this_worker = app.extensions["idp.keys"]
    with app.app_context():
        app.extensions["idp.keys"] = keys._KeyCache()  # another worker, with its own kept keys, rotates
        fresh = {row.kid for row in keys.rotate(max_token_lifetime=600)}
        app.extensions["idp.keys"] = this_worker
    kept = this_worker.published
    assert kept is not None and not fresh & {k["kid"] for k in kept.document["keys"]}
    after = {k["kid"] for k in client.get("/jwks.json").get_json()["keys"]}
    assert after == before | fresh


def test_key_rotation_keeps_old_keys_as_long_as_a_clients_own_longer_token_lifetime(app, client):
    """A client whose access tokens live a day keeps the retired key published for that day (SECURITY.md 14)."""
    client.get("/jwks.json")  # creates the keys
    runner = app.test_cli_runner()
    created = runner.invoke(args=["clients", "create", "--name", "Long", "--grant-type", "client_credentials",
                                  "--access-token-ttl", "86400"])
    assert created.exit_code == 0, created.output
    assert runner.invoke(args=["keys", "rotate"]).exit_code == 0
    with app.app_context():
        retired = list(db.session.execute(db.select(SigningKey).where(SigningKey.retired_at.is_not(None))).scalars())
        assert retired and all(row.publish_until >= utcnow() + timedelta(seconds=86400) for row in retired)


def test_private_keys_are_encrypted_at_rest(app, client):
    client.get("/jwks.json")  # creates the keys
    with app.app_context():
        rows = list(db.session.execute(db.select(SigningKey)).scalars())
        assert {row.alg for row in rows} == {"RS256", "ES256"}
        for row in rows:
            assert '"d"' not in row.private_jwk_encrypted and "'d'" not in row.private_jwk_encrypted
            assert decrypt_private(row.private_jwk_encrypted, SECRET)["d"]
            with pytest.raises(KeyDecryptionError):
                decrypt_private(row.private_jwk_encrypted, "another-secret-" + "y" * 40)
        public = client.get("/jwks.json").get_json()["keys"]
        assert all("d" not in key for key in public)


# --- RP-initiated logout (SECURITY.md 15) -------------------------------------------------------------------------

def _end_session(client, **params):
    return client.get("/end-session?" + urlencode(params))


@pytest.mark.parametrize("with_client_id", [True, False])
def test_end_session_with_valid_hint_signs_out_and_redirects_with_state(client, alice, first_party,
                                                                        with_client_id):
    client_id, secret = first_party
    _, body = login_and_tokens(client, client_id, secret)
    params = {"id_token_hint": body["id_token"], "post_logout_redirect_uri": LOGGED_OUT, "state": "bye-1"}
    if with_client_id:
        params["client_id"] = client_id
    response = _end_session(client, **params)
    assert response.status_code == 302
    assert response.headers["Location"] == LOGGED_OUT + "?state=bye-1"
    assert signed_in_email(client) is None
    account = client.get("/account")
    assert account.status_code == 302 and "/login" in account.headers["Location"]


def test_end_session_accepts_a_hint_signed_by_a_key_rotated_in_another_worker(app, client, alice, first_party):
    """SECURITY.md 14, 15: a worker that has not seen a rotation yet still recognises an ID token signed with the
    new key (its unknown kid reloads the keys), so logging out works right after a rotation."""
    client_id, secret = first_party
    login_and_tokens(client, client_id, secret)  # this worker loads today's keys
    this_worker = app.extensions["idp.keys"]
    app.extensions["idp.keys"] = keys._KeyCache()  # another worker rotates and signs with the new key
    with app.app_context():
        keys.rotate(max_token_lifetime=600)
    _, body = login_and_tokens(client, client_id, secret)
    app.extensions["idp.keys"] = this_worker
    kid = json.loads(base64.urlsafe_b64decode(body["id_token"].split(".")[0] + "=="))["kid"]
    assert kid not in this_worker.kids
    response = _end_session(client, id_token_hint=body["id_token"], post_logout_redirect_uri=LOGGED_OUT, state="bye")
    assert response.status_code == 302 and response.headers["Location"] == LOGGED_OUT + "?state=bye"
    assert signed_in_email(client) is None


@pytest.mark.parametrize("uri", ["https://rp.example/logged-out/", "https://rp.example/Logged-out",
                                 "https://rp.example/logged-out?x=1", "https://evil.example/logged-out"])
def test_end_session_never_redirects_to_an_unregistered_uri(client, alice, first_party, uri):
    client_id, secret = first_party
    _, body = login_and_tokens(client, client_id, secret)
    response = _end_session(client, id_token_hint=body["id_token"], post_logout_redirect_uri=uri,
                            client_id=client_id, state="s")
    assert response.status_code in (200, 400) and "Location" not in response.headers


def test_end_session_without_hint_asks_first_and_get_does_not_sign_out(client, alice, first_party):
    client_id, _ = first_party
    walk(client, authorize_path(client_id))
    page = _end_session(client, client_id=client_id, post_logout_redirect_uri=LOGGED_OUT)
    assert page.status_code == 200 and "Sign out?" in page.get_data(as_text=True)
    assert signed_in_email(client) == ALICE
    plain = client.get("/end-session")
    assert plain.status_code == 200 and signed_in_email(client) == ALICE
    # A POST without the CSRF token does not sign out either.
    forged = client.post("/end-session", data={"confirm": "yes"})
    assert forged.status_code in (200, 400)
    assert signed_in_email(client) == ALICE
    page = client.get("/end-session")
    done = client.post("/end-session", data={"csrf_token": csrf_token(page), "confirm": "yes"})
    assert done.status_code in (200, 302)
    assert signed_in_email(client) is None


def test_end_session_with_another_users_hint_asks_and_signs_out_only_what_is_confirmed(client, make_user,
                                                                                      alice, first_party):
    """RP-Initiated Logout 1.0 sections 2 and 4: a valid id_token_hint that names another user than the browser's
    cannot say which session to end, so the browser's user is asked; only a confirmed POST signs them out."""
    client_id, secret = first_party
    _, alices = login_and_tokens(client, client_id, secret)
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/logout"))})
    assert signed_in_email(client) is None
    make_user(email="bob@example.com", name="Bob")
    walk(client, authorize_path(client_id), email="bob@example.com")
    assert signed_in_email(client) == "bob@example.com"
    query = "/end-session?" + urlencode({"id_token_hint": alices["id_token"], "post_logout_redirect_uri": LOGGED_OUT,
                                         "state": "m-1"})
    page = client.get(query)
    assert page.status_code == 200 and "Sign out?" in page.get_data(as_text=True)
    assert "bob@example.com" in page.get_data(as_text=True)
    assert signed_in_email(client) == "bob@example.com"
    assert client.post(query, data={"confirm": "yes"}).status_code in (200, 400)  # no CSRF token: nothing happens
    assert signed_in_email(client) == "bob@example.com"
    done = client.post(query, data={"csrf_token": csrf_token(page), "confirm": "yes"})
    assert done.status_code == 302 and done.headers["Location"] == LOGGED_OUT + "?state=m-1"
    assert signed_in_email(client) is None


def test_end_session_with_a_hint_and_no_session_asks_nothing(client, alice, first_party):
    """A valid hint with nobody signed in here: nothing to end, so no question, and the RP gets its redirect."""
    client_id, secret = first_party
    _, body = login_and_tokens(client, client_id, secret)
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/logout"))})
    response = _end_session(client, id_token_hint=body["id_token"], post_logout_redirect_uri=LOGGED_OUT, state="n")
    assert response.status_code == 302 and response.headers["Location"] == LOGGED_OUT + "?state=n"


def test_confirmed_end_session_redirects_only_to_the_clients_registered_uri(client, alice, first_party):
    client_id, _ = first_party
    walk(client, authorize_path(client_id))
    query = "/end-session?" + urlencode({"client_id": client_id, "post_logout_redirect_uri": LOGGED_OUT,
                                         "state": "c-1"})
    page = client.get(query)
    assert page.status_code == 200 and signed_in_email(client) == ALICE
    done = client.post(query, data={"csrf_token": csrf_token(page), "confirm": "yes"})
    assert done.status_code == 302 and done.headers["Location"] == LOGGED_OUT + "?state=c-1"
    assert signed_in_email(client) is None
    # Without a client to match it against, a confirmed sign-out never redirects.
    walk(client, authorize_path(client_id))
    query = "/end-session?" + urlencode({"post_logout_redirect_uri": LOGGED_OUT})
    page = client.get(query)
    done = client.post(query, data={"csrf_token": csrf_token(page), "confirm": "yes"})
    assert done.status_code == 200 and "Location" not in done.headers
    assert signed_in_email(client) is None


@pytest.mark.parametrize("hint", ["not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"])
def test_end_session_with_invalid_hint_is_a_400_page(client, alice, first_party, hint):
    walk(client, authorize_path(first_party[0]))
    response = _end_session(client, id_token_hint=hint, post_logout_redirect_uri=LOGGED_OUT)
    assert response.status_code == 400 and "text/html" in response.content_type
    assert signed_in_email(client) == ALICE


def test_end_session_with_a_foreign_issuers_token_is_rejected(client, alice, first_party):
    client_id, _ = first_party
    walk(client, authorize_path(client_id))
    from joserfc.jwk import RSAKey

    foreign = RSAKey.generate_key(2048, parameters={"kid": "foreign", "alg": "RS256"}, private=True)
    now = int(utcnow().timestamp())
    token = jwt.encode({"alg": "RS256", "kid": "foreign"}, {"iss": "http://localhost", "sub": "x", "aud": client_id,
                                                            "iat": now, "exp": now + 60}, foreign)
    response = _end_session(client, id_token_hint=token, post_logout_redirect_uri=LOGGED_OUT)
    assert response.status_code == 400 and signed_in_email(client) == ALICE


# --- audit (SECURITY.md 29) ---------------------------------------------------------------------------------------

def test_token_lifecycle_events_are_audited_with_client_id(app, client, alice, third_party):
    client_id, secret = third_party
    result = walk(client, authorize_path(client_id, scope="openid offline_access"))
    body = exchange(client, client_id, secret, result.code)
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                            auth=(client_id, secret))
    assert refreshed.status_code == 200, refreshed.get_json()
    # Reusing the rotated refresh token and the used code are detected.
    reuse = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                        auth=(client_id, secret))
    assert reuse.status_code == 400
    again = client.post("/token", data={"grant_type": "authorization_code", "code": result.code, "redirect_uri": RP,
                                        "code_verifier": VERIFIER}, auth=(client_id, secret))
    assert again.status_code == 400
    second = walk(client, authorize_path(client_id, scope="openid offline_access"))
    fresh = exchange(client, client_id, secret, second.code)
    revoked = client.post("/revoke", data={"token": fresh["refresh_token"]}, auth=(client_id, secret))
    assert revoked.status_code == 200
    for name in ("client.created", "consent.granted", "token.issued", "token.refreshed", "refresh.reuse_detected",
                 "code.reuse_detected", "token.revoked"):
        rows = events(app, name)
        assert rows, f"no {name} event"
        assert all(row.client_id == client_id for row in rows), name
        if name != "client.created":
            assert all(row.subject_id == alice.id for row in rows), name
    assert len(events(app, "token.issued")) == 2
    with app.app_context():  # no secret lands in an audit row
        dumped = json.dumps([row.details for row in db.session.execute(db.select(AuditEvent)).scalars()])
    for secret_value in (secret, body["refresh_token"], fresh["refresh_token"], result.code, body["access_token"]):
        assert secret_value not in dumped


def test_key_rotation_is_audited(app):
    result = app.test_cli_runner().invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    rows = events(app, "key.rotated")
    assert len(rows) == 1 and len(rows[0].details["kids"]) == 2


def test_connected_applications_page_lists_and_revokes_a_consent(app, client, alice, third_party):
    """A user sees what each client was allowed, and removing it ends the client's tokens and asks again."""
    client_id, secret = third_party
    _, tokens = login_and_tokens(client, client_id, secret, scope="openid email offline_access")
    page = client.get("/account/apps")
    text = page.get_data(as_text=True)
    assert "Photo Printer" in text and "Your email address" in text
    asked, response = remove_asking_first(client, f"/account/apps/{client_id}/revoke", page,
                                          before=lambda: assert_in("Photo Printer", client.get("/account/apps")))
    assert "Remove access for Photo Printer?" in asked.get_data(as_text=True)
    assert "the tokens it holds for you stop working" in asked.get_data(as_text=True)
    assert response.status_code == 302
    assert "Photo Printer" not in client.get("/account/apps").get_data(as_text=True)
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            auth=(client_id, secret))
    assert refreshed.status_code == 400 and refreshed.get_json()["error"] == "invalid_grant"
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}).status_code == 401
    again = walk(client, authorize_path(client_id, scope="openid email"), stop_at="consent")
    assert again.screens == ["consent"]  # signed in still, but the application must ask again
    (row,) = events(app, "consent.revoked")
    assert row.client_id == client_id and row.details["tokens_revoked"] >= 1


def _refresh_status(client, client_id, secret, tokens) -> tuple[int, int]:
    """(token endpoint status for the refresh token, userinfo status for the access token)."""
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            auth=(client_id, secret))
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    return refreshed.status_code, info.status_code


def test_a_password_reset_revokes_the_users_tokens(app, client, mailbox, alice, first_party):
    """SECURITY.md 6: someone who reset the password cannot be followed by tokens issued before."""
    client_id, secret = first_party
    _, tokens = login_and_tokens(client, client_id, secret, scope="openid email offline_access")
    other = app.test_client()
    page = other.get("/forgot")
    other.post("/forgot", data={"csrf_token": csrf_token(page), "email": ALICE})
    link = link_in(mailbox.last(ALICE, "Reset"), "/reset#")
    form = open_link(other, link)
    new = "an entirely new passphrase for alice"
    assert submit_link(other, link, form, password=new, confirm=new).status_code == 302
    assert _refresh_status(client, client_id, secret, tokens) == (400, 401)


def test_disabling_a_user_revokes_their_tokens(app, client, alice, first_party):
    """SECURITY.md 6: `idp users disable` ends the refresh tokens and access tokens at once."""
    client_id, secret = first_party
    _, tokens = login_and_tokens(client, client_id, secret, scope="openid email offline_access")
    assert app.test_cli_runner().invoke(args=["users", "disable", ALICE]).exit_code == 0
    assert _refresh_status(client, client_id, secret, tokens) == (400, 401)


def test_setting_a_password_from_the_cli_revokes_the_users_tokens(app, client, alice, first_party):
    """SECURITY.md 6: `idp users set-password` is a reset too: the tokens issued before it end at once."""
    client_id, secret = first_party
    _, tokens = login_and_tokens(client, client_id, secret, scope="openid email offline_access")
    result = app.test_cli_runner().invoke(args=["users", "set-password", ALICE, "--password-stdin"],
                                          input="an entirely new passphrase for alice\n")
    assert result.exit_code == 0, result.output
    assert _refresh_status(client, client_id, secret, tokens) == (400, 401)
