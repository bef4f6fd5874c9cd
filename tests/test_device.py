"""The device authorization grant (RFC 8628, idp.oidc.device) over HTTP: a device asks for codes, polls, its user
enters the code at /device, signs in (with the second factor the client demands), allows or denies; the device gets
tokens once, or the error that says why not."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.datastructures import MultiDict

from idp import housekeeping
from idp.extensions import db
from idp.models import DeviceCode, utcnow
from idp.oidc.device import USER_CODE_ALPHABET
from idp.security.otp import totp_code_at
from idp.security.tokens import token_hash
from tests.support import csrf_token, enrol_totp_in, follow, make_client_in, make_user_in, path_of
from tests.test_oidc_protocol import AT_ONCE, ON_POSTGRES, at_once, bearer, jwt_auth
from tests.test_oidc_protocol import assertion as signed_assertion

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
ALICE = "alice@example.com"



@pytest.fixture
def tv(make_client):
    """A confidential device client that requires multi-factor sign-in, allowed refresh tokens."""
    return make_client(name="Living Room TV", redirect_uris=[], grant_types=[DEVICE, "refresh_token"],
                       mfa="required")


@pytest.fixture
def cli_tool(make_client):
    """A public device client (a command-line tool: no secret to keep)."""
    return make_client(name="CLI Tool", redirect_uris=[], grant_types=[DEVICE], public=True)


def _auth(client_id: str, secret: str | None, data: dict) -> dict:
    return {"data": {**data, "client_id": client_id}} if secret is None else {"data": data,
                                                                              "auth": (client_id, secret)}


def ask(http, client_id: str, secret: str | None, scope: str = "openid", **extra):
    """The device's request (RFC 8628 3.1)."""
    return http.post("/device_authorization", **_auth(client_id, secret, {"scope": scope, **extra}))


def started(http, client_id: str, secret: str | None, scope: str = "openid") -> dict:
    response = ask(http, client_id, secret, scope)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    return response.get_json()


def poll(http, client_id: str, secret: str | None, device_code: str):
    """The device's token request (RFC 8628 3.4)."""
    return http.post("/token", **_auth(client_id, secret, {"grant_type": DEVICE, "device_code": device_code}))


def waited(app, device_code: str) -> None:
    """The device waits its interval before the next poll (moved back in the database: tests never sleep)."""
    row = row_of(app, device_code)
    if row.last_polled_at is not None:
        change_row(app, device_code, last_polled_at=row.last_polled_at - timedelta(seconds=row.interval))


def poll_error(http, client_id, secret, device_code) -> str:
    response = poll(http, client_id, secret, device_code)
    assert response.status_code in (400, 401), (response.status_code, response.get_json())
    return response.get_json()["error"]


def row_of(app, device_code: str) -> DeviceCode:
    with app.app_context():
        row = db.session.execute(db.select(DeviceCode).where(
            DeviceCode.device_code_hash == token_hash(device_code))).scalar_one()
        db.session.expunge(row)
        return row


def change_row(app, device_code: str, **values) -> None:
    with app.app_context():
        db.session.execute(db.update(DeviceCode).where(DeviceCode.device_code_hash == token_hash(device_code))
                           .values(**values))
        db.session.commit()


def enter(browser, user_code: str):
    """Type the code at /device; returns the answer to the POST (not followed)."""
    page = browser.get("/device")
    return browser.post("/device", data={"csrf_token": csrf_token(page), "user_code": user_code})


def sign_in_and_see(browser, entered, **follow_args):
    """Follow the code's answer through the sign-in to the page that asks to allow or deny."""
    assert entered.status_code == 302 and entered.headers["Location"] == "/device/approve", entered.status_code
    return follow(browser, entered, **follow_args)


def decide(browser, page, choice: str = "allow"):
    assert 'name="allow"' in page.get_data(as_text=True), page.get_data(as_text=True)[:500]
    return browser.post("/device/approve", data={"csrf_token": csrf_token(page), choice: choice.capitalize()})


def id_claims(http, body: dict) -> dict:
    keys = KeySet.import_key_set(http.get("/jwks.json").get_json())
    return jwt.decode(body["id_token"], keys, algorithms=["RS256", "ES256"]).claims


def approve_as_alice(app, browser, user_code: str):
    """Enter the code, sign in with the password, allow; returns the done page."""
    walked = sign_in_and_see(browser, enter(browser, user_code))
    assert walked.screens == ["password"], walked.screens
    return decide(browser, walked.last)


# --- discovery and the device request -------------------------------------------------------------------------

def test_discovery_names_the_endpoint_and_the_grant(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["device_authorization_endpoint"] == "http://localhost/device_authorization"
    assert DEVICE in meta["grant_types_supported"]


def test_the_device_gets_codes_that_are_stored_only_as_hashes(app, client, tv):
    body = started(client, *tv, scope="openid profile")
    assert set(body) == {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                         "expires_in", "interval"}
    assert len(base64.urlsafe_b64decode(body["device_code"] + "==")) >= 16  # at least 128 bits (RFC 8628 5.2)
    assert re.fullmatch(f"[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}", body["user_code"])
    assert body["verification_uri"] == "http://localhost/device"
    assert body["verification_uri_complete"] == f"http://localhost/device?user_code={body['user_code']}"
    assert body["expires_in"] == 600 and body["interval"] == 5
    row = row_of(app, body["device_code"])
    stored = " ".join(str(value) for value in vars(row).values())
    assert body["device_code"] not in stored and body["user_code"].replace("-", "") not in stored
    assert row.scope == "openid profile" and row.client_id == tv[0]


def test_the_lifetime_is_a_setting(make_app):
    app = make_app(IDP_DEVICE_CODE_TTL=120)
    client_id, secret = make_client_in(app, redirect_uris=[], grant_types=[DEVICE])
    assert started(app.test_client(), client_id, secret)["expires_in"] == 120


def test_a_client_not_registered_for_the_grant_is_refused(client, make_client, alice):
    client_id, secret = make_client(first_party=True)  # authorization_code and refresh_token
    response = ask(client, client_id, secret)
    assert response.status_code == 400 and response.get_json()["error"] == "unauthorized_client"
    refused = poll(client, client_id, secret, "anything")
    assert refused.status_code == 400 and refused.get_json()["error"] == "unauthorized_client"


def test_client_authentication_is_as_at_the_token_endpoint(client, tv, cli_tool):
    wrong = ask(client, tv[0], "wrong secret")
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"
    bare = ask(client, tv[0], None)  # a confidential client without its secret
    assert bare.status_code == 401 and bare.get_json()["error"] == "invalid_client"
    assert ask(client, "nobody", None).status_code == 401
    assert started(client, *cli_tool)["user_code"]  # a public client by its client_id


def test_a_private_key_jwt_client_asks_and_polls_with_assertions(app, client, alice, make_client):
    key = RSAKey.generate_key(2048, parameters={"kid": "tv-key", "alg": "RS256"}, private=True)
    signer, _none = make_client(name="Signed TV", redirect_uris=[], grant_types=[DEVICE],
                                auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]})

    def assertion(aud: str) -> dict:
        return jwt_auth(signed_assertion(signer, key, aud=aud))

    asked = client.post("/device_authorization", data={"scope": "openid", **assertion("http://localhost")})
    assert asked.status_code == 200, asked.get_json()
    body = asked.get_json()
    approve_as_alice(app, app.test_client(), body["user_code"])
    granted = client.post("/token", data={"grant_type": DEVICE, "device_code": body["device_code"],
                                          **assertion("http://localhost/token")})
    assert granted.status_code == 200 and id_claims(client, granted.get_json())["aud"] == [signer]


@pytest.mark.parametrize("scope", ["openid idp:admin", "openid unknown", "address"])
def test_scopes_beyond_the_openid_ones_are_refused(client, tv, scope):
    response = ask(client, *tv, scope=scope)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_scope"


# --- the whole flow ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("typed", ["lower, no hyphen", "as shown", "spaced"])
def test_the_whole_flow_with_a_second_factor_gives_tokens_once(app, client, alice, tv, typed):
    secret, _ = enrol_totp_in(app, ALICE)
    body = started(client, *tv, scope="openid email offline_access")
    assert poll_error(client, *tv, body["device_code"]) == "authorization_pending"

    browser = app.test_client()
    code = body["user_code"]
    user_code = {"lower, no hyphen": code.replace("-", "").lower(), "as shown": code,
                 "spaced": f" {code[:2]} {code[2:4].lower()}{code[5:]} "}[typed]
    prefilled = browser.get(path_of(body["verification_uri_complete"]))
    assert f'value="{code}"' in prefilled.get_data(as_text=True)  # filled in, still to be confirmed
    walked = sign_in_and_see(browser, enter(browser, user_code),
                             answers={"totp": lambda page: {"code": totp_code_at(secret, utcnow())}})
    assert walked.screens == ["password", "totp"]  # the client requires MFA
    page = walked.last.get_data(as_text=True)
    assert "Living Room TV" in page and code in page and 'data-scope="email"' in page and ALICE in page
    waited(app, body["device_code"])
    assert poll_error(client, *tv, body["device_code"]) == "authorization_pending"  # not decided yet

    done = decide(browser, walked.last)
    assert done.status_code == 200 and "Your device is connected" in done.get_data(as_text=True)
    granted = poll(client, *tv, body["device_code"])
    assert granted.status_code == 200, granted.get_json()
    tokens = granted.get_json()
    assert tokens["scope"] == "openid email offline_access" and tokens["refresh_token"]
    claims = id_claims(client, tokens)
    assert claims["aud"] == [tv[0]] and claims["email"] == ALICE and "nonce" not in claims
    assert claims["acr"] == "urn:idp:acr:mfa" and {"pwd", "otp", "mfa"} <= set(claims["amr"])
    row = row_of(app, body["device_code"])
    assert claims["sid"] == row.sid and claims["auth_time"] == int(row.auth_time.timestamp())
    assert client.get("/userinfo", headers=bearer(tokens["access_token"])).get_json()["email"] == ALICE

    apps = browser.get("/account/apps")  # a third-party client: listed, so that the user can withdraw it
    assert "Living Room TV" in apps.get_data(as_text=True)

    again = poll(client, *tv, body["device_code"])  # tokens once
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    # A user code is used once.
    reused = enter(browser, code)
    assert reused.status_code == 400 and "not valid, or it has expired" in reused.get_data(as_text=True)


def test_a_public_client_gets_tokens_by_its_client_id(app, client, alice, cli_tool):
    body = started(client, *cli_tool, scope="openid profile")
    done = approve_as_alice(app, app.test_client(), body["user_code"])
    assert done.status_code == 200
    granted = poll(client, *cli_tool, body["device_code"])
    assert granted.status_code == 200, granted.get_json()
    tokens = granted.get_json()
    assert "refresh_token" not in tokens  # not registered for refresh tokens
    assert id_claims(client, tokens)["acr"] == "urn:idp:acr:pwd"


def test_without_offline_access_a_refresh_token_follows_the_code_grant_rule(app, client, alice, make_client):
    online = make_client(redirect_uris=[], grant_types=[DEVICE, "refresh_token"], refresh_tokens_for_sessions=True)
    plain = make_client(redirect_uris=[], grant_types=[DEVICE, "refresh_token"])
    browser = app.test_client()
    results = {}
    for name, conf in (("online", online), ("plain", plain)):
        body = started(client, *conf)
        if name == "online":
            approve_as_alice(app, browser, body["user_code"])
        else:  # signed in already: straight to the question
            entered = enter(browser, body["user_code"])
            decide(browser, browser.get(entered.headers["Location"]))
        results[name] = poll(client, *conf, body["device_code"]).get_json()
    assert results["online"]["refresh_token"] and "refresh_token" not in results["plain"]


def test_deny_gives_access_denied_and_no_tokens(app, client, alice, tv):
    body = started(client, *tv)
    browser = app.test_client()
    secret, _ = enrol_totp_in(app, ALICE)
    walked = sign_in_and_see(browser, enter(browser, body["user_code"]),
                             answers={"totp": lambda page: {"code": totp_code_at(secret, utcnow())}})
    done = decide(browser, walked.last, "deny")
    assert done.status_code == 200 and "was not allowed" in done.get_data(as_text=True)
    assert poll_error(client, *tv, body["device_code"]) == "access_denied"
    assert poll_error(client, *tv, body["device_code"]) == "access_denied"  # however soon: it is decided
    assert enter(browser, body["user_code"]).status_code == 400  # decided: the code cannot be entered again


def test_polling_faster_than_the_interval_is_told_to_slow_down_and_the_interval_grows(app, client, tv):
    body = started(client, *tv)
    code = body["device_code"]
    assert poll_error(client, *tv, code) == "authorization_pending"
    assert poll_error(client, *tv, code) == "slow_down"  # at once: sooner than 5 seconds
    assert row_of(app, code).interval == 10  # RFC 8628 3.5: 5 seconds more, for this and every later poll
    change_row(app, code, last_polled_at=utcnow() - timedelta(seconds=6))
    assert poll_error(client, *tv, code) == "slow_down"  # 6 seconds is on time no longer
    assert row_of(app, code).interval == 15
    change_row(app, code, last_polled_at=utcnow() - timedelta(seconds=16))
    assert poll_error(client, *tv, code) == "authorization_pending"
    assert row_of(app, code).interval == 15


def test_an_expired_device_code_is_expired_token_and_its_user_code_is_not_accepted(app, client, alice, tv):
    body = started(client, *tv)
    change_row(app, body["device_code"], expires_at=utcnow() - timedelta(seconds=1))
    assert poll_error(client, *tv, body["device_code"]) == "expired_token"
    entered = enter(app.test_client(), body["user_code"])
    assert entered.status_code == 400 and "not valid, or it has expired" in entered.get_data(as_text=True)


def test_a_code_that_expires_while_the_user_decides_is_not_approved(app, client, alice, cli_tool):
    body = started(client, *cli_tool)
    browser = app.test_client()
    walked = sign_in_and_see(browser, enter(browser, body["user_code"]))
    change_row(app, body["device_code"], expires_at=utcnow() - timedelta(seconds=1))
    assert decide(browser, walked.last).status_code == 400
    assert poll_error(client, *cli_tool, body["device_code"]) == "expired_token"


def test_another_clients_or_an_unknown_device_code_is_invalid_grant(client, tv, cli_tool):
    body = started(client, *tv)
    assert poll_error(client, *cli_tool, body["device_code"]) == "invalid_grant"
    assert poll_error(client, *tv, "not-a-device-code") == "invalid_grant"
    missing = client.post("/token", data={"grant_type": DEVICE}, auth=tv)
    assert missing.status_code == 400 and missing.get_json()["error"] == "invalid_request"


def test_guessing_user_codes_is_throttled_per_ip(make_app):
    """RFC 8628 5.1: a wrong code counts against the IP; past the limit even the right one waits."""
    app = make_app(IDP_THROTTLE_IP="3/minute")
    make_user_in(app)
    client_id, secret = make_client_in(app, redirect_uris=[], grant_types=[DEVICE])
    http = app.test_client()
    body = started(http, client_id, secret)
    browser = app.test_client()
    for wrong in ("BCDF-GHJK", "bcdfghjl", "AAAA-AAAA"):  # unknown, unknown, not even of the alphabet
        if wrong.replace("-", "").upper() == body["user_code"].replace("-", ""):
            continue
        refused = enter(browser, wrong)
        assert refused.status_code == 400 and "not valid, or it has expired" in refused.get_data(as_text=True)
    waiting = enter(browser, body["user_code"])
    assert waiting.status_code == 429 and "Too many attempts" in waiting.get_data(as_text=True)
    assert enter(app.test_client(), body["user_code"]).status_code == 429  # a new cookie does not help
    assert poll_error(http, client_id, secret, body["device_code"]) == "authorization_pending"


def test_the_pages_need_their_csrf_token(app, client, alice, cli_tool):
    body = started(client, *cli_tool)
    browser = app.test_client()
    assert browser.post("/device", data={"user_code": body["user_code"]}).status_code == 400
    walked = sign_in_and_see(browser, enter(browser, body["user_code"]))
    forged = browser.post("/device/approve", data={"allow": "Allow"})
    assert forged.status_code == 400 or 'name="allow"' in forged.get_data(as_text=True)
    assert poll_error(client, *cli_tool, body["device_code"]) == "authorization_pending"
    assert decide(browser, walked.last).status_code == 200


def test_the_approval_page_without_an_entered_code_says_so(client):
    response = client.get("/device/approve")
    assert response.status_code == 400 and "not valid, or it has expired" in response.get_data(as_text=True)


@ON_POSTGRES
def test_six_polls_at_once_after_approval_get_tokens_once(app, client, alice, tv):
    secret, _ = enrol_totp_in(app, ALICE)
    body = started(client, *tv)
    browser = app.test_client()
    walked = sign_in_and_see(browser, enter(browser, body["user_code"]),
                             answers={"totp": lambda page: {"code": totp_code_at(secret, utcnow())}})
    decide(browser, walked.last)
    poll(client, *tv, "warm-up")  # the signing keys exist before the race (idp.oidc.views.token)
    responses = at_once(app, lambda http: poll(http, *tv, body["device_code"]))
    assert sorted(r.status_code for r in responses) == [200] + [400] * (AT_ONCE - 1)
    assert {r.get_json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}


def test_housekeeping_removes_expired_device_codes_only(app, client, tv):
    live = started(client, *tv)
    gone = started(client, *tv)
    change_row(app, gone["device_code"], expires_at=utcnow() - timedelta(hours=1))
    with app.app_context():
        done = housekeeping.run()
        assert done.counts["device_codes"] == 1
        left = db.session.execute(db.select(DeviceCode.device_code_hash)).scalars().all()
    assert left == [token_hash(live["device_code"])]


def test_the_cli_registers_a_device_client(app):
    result = app.test_cli_runner().invoke(args=["clients", "create", "--name", "TV", "--public", "--grant-type",
                                                DEVICE, "--json"])
    assert result.exit_code == 0, result.output
    import json

    client_id = json.loads(result.output)["client_id"]
    assert started(app.test_client(), client_id, None)["user_code"]


# --- random input never gives a 500 (SECURITY.md 31) -----------------------------------------------------------------

_NAMES = st.sampled_from(["client_id", "client_secret", "scope", "user_code", "device_code", "grant_type",
                          "csrf_token", "allow", "deny", "x"])
_VALUES = st.one_of(st.sampled_from(["openid", "openid profile", "\x00", "\u00e9", "x" * 5000, "", "BCDF-GHJK",
                                     "bcdf ghjk", "\u00df" * 4, DEVICE, "[]", "{}", "-1"]), st.text(max_size=40))


def test_random_bodies_at_the_device_endpoints_never_give_a_500(app, alice, cli_tool, tv):
    http = app.test_client()
    browser = app.test_client()
    page = browser.get("/device")
    token = csrf_token(page)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
           where=st.sampled_from(["/device_authorization", "/device", "/device/approve", "/token"]),
           credentials=st.sampled_from(["none", "public", "basic", "bad"]),
           raw=st.one_of(st.none(), st.binary(max_size=80)))
    def one(pairs, where, credentials, raw):
        body = list(pairs)
        headers = {}
        if credentials == "public":
            body.append(("client_id", cli_tool[0]))
        elif credentials == "basic":
            headers = {"Authorization": "Basic " + base64.b64encode(f"{tv[0]}:{tv[1]}".encode()).decode()}
        elif credentials == "bad":
            headers = {"Authorization": "Basic \u00e9\u00e9"}
        if where.startswith("/device") and where != "/device_authorization":
            body.append(("csrf_token", token))
        if where == "/token":
            body.append(("grant_type", DEVICE))
        if raw is not None:
            response = browser.post(where, data=raw, headers=headers,
                                    content_type="application/x-www-form-urlencoded")
        else:
            response = browser.post(where, data=MultiDict(body), headers=headers)
        text = response.get_data(as_text=True)
        assert response.status_code < 500 and "Traceback" not in text, (where, response.status_code, text[:300])
        if where in ("/device_authorization", "/token"):  # the caller's form: codes, or an OAuth error object
            assert response.is_json, (where, response.status_code, text[:300])
            assert response.get_json()["device_code" if response.status_code == 200 else "error"], text[:300]

    one()
    assert http.get("/device?user_code=%00").status_code == 400  # idp.http.refuse_nul, a page


def test_a_client_registered_for_dpop_must_poll_with_a_proof(app, client, make_client):
    """Review finding: the device grant skipped RFC 9449 5.2's rule that every other grant applies."""
    client_id, _secret = make_client(name="DPoP TV", redirect_uris=[], grant_types=[DEVICE], public=True,
                                     dpop_bound_access_tokens=True)
    body = started(client, client_id, None)
    answer = poll(client, client_id, None, body["device_code"])
    assert answer.status_code == 400 and answer.get_json()["error"] == "invalid_dpop_proof", answer.get_json()
