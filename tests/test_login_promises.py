"""Sign-in promises checked end to end, through the hosted screens, so that breaking the code behind each one fails a
test: the login-flow binding renewed at sign-in (SECURITY.md 17), the WebAuthn signature counter and single-use
challenge on the sign-in path (SECURITY.md 25), and no open redirect through ``next=`` however the slashes are
written.

WebAuthn answers come from a software authenticator made here (an ES256 key from ``cryptography``): it signs
``authenticatorData || SHA-256(clientDataJSON)`` for the challenge the page offers (WebAuthn L3 7.2), with the
signature counter each test chooses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idp.extensions import db
from idp.models import Client, Factor, LoginTransaction, User, utcnow
from idp.oidc.registration import update_client
from tests.support import (
    PASSWORD,
    RP_CALLBACK,
    authorize_url,
    csrf_token,
    follow,
    query_params,
    screen_url,
    sign_in,
    signed_in_email,
    step_name,
)

ALICE = "alice@example.com"
FLOW_COOKIE = "idp_flow"  # Flask's signed cookie: CSRF secret, flash messages, the login-flow binding
SESSION_COOKIE = "idp_session"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SoftAuthenticator:
    """One WebAuthn credential held in software: a P-256 key that signs assertions for a page's challenge."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = b64url(secrets.token_bytes(16))

    def cose_public_key(self) -> str:
        """The public key as a COSE_Key (RFC 9053 7.1.1: EC2, ES256, P-256), base64url, as idp stores it."""
        numbers = self.key.public_key().public_numbers()
        return b64url(cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                                   -3: numbers.y.to_bytes(32, "big")}))

    def assertion(self, challenge: str, *, counter: int, user_verified: bool = False,
                  origin: str = "http://localhost", rp_id: str = "localhost") -> str:
        """The JSON a browser posts for navigator.credentials.get(): user present, ``counter`` as its sign count."""
        flags = 0x01 | (0x04 if user_verified else 0)
        auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + counter.to_bytes(4, "big")
        client_data = json.dumps({"type": "webauthn.get", "challenge": challenge, "origin": origin,
                                  "crossOrigin": False}).encode()
        signature = self.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return json.dumps({"id": self.credential_id, "rawId": self.credential_id, "type": "public-key",
                           "response": {"authenticatorData": b64url(auth_data), "clientDataJSON": b64url(client_data),
                                        "signature": b64url(signature)},
                           "clientExtensionResults": {}})


def offered_challenge(page, element_id: str) -> str:
    """The challenge of the WebAuthn options a hosted page embeds for its script."""
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>',
                      page.get_data(as_text=True), re.S)
    assert match, f"no {element_id} on the page"
    return json.loads(match.group(1))["challenge"]


def register_key(app, authenticator: SoftAuthenticator, *, sign_count: int = 0, email: str = ALICE,
                 confirmed: bool = True) -> None:
    with app.app_context():
        user_id = db.session.execute(db.select(User.id).where(User.email == email)).scalar_one()
        db.session.add(Factor(user_id=user_id, kind="webauthn", name="Soft key",
                              credential_id=authenticator.credential_id, public_key=authenticator.cose_public_key(),
                              sign_count=sign_count, discoverable=True,
                              confirmed_at=utcnow() if confirmed else None))
        db.session.commit()


def stored_counter(app, authenticator: SoftAuthenticator) -> int:
    with app.app_context():
        return db.session.execute(db.select(Factor.sign_count).where(
            Factor.credential_id == authenticator.credential_id)).scalar_one()


def set_user(app, email: str = ALICE, **fields) -> None:
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == email)).scalar_one()
        for name, value in fields.items():
            setattr(user, name, value)
        db.session.commit()


def set_key(app, authenticator: SoftAuthenticator, **fields) -> None:
    with app.app_context():
        factor = db.session.execute(db.select(Factor).where(
            Factor.credential_id == authenticator.credential_id)).scalar_one()
        for name, value in fields.items():
            setattr(factor, name, value)
        db.session.commit()


def copy_cookies(source, target) -> None:
    """Give ``target`` every cookie ``source`` holds for the IdP, as someone who copied them would."""
    for name in (FLOW_COOKIE, SESSION_COOKIE, "idp_device"):
        cookie = source.get_cookie(name)
        if cookie is not None:
            target.set_cookie(name, cookie.value)


def flow_binding(client) -> str | None:
    with client.session_transaction() as flow:
        return flow.get("bind")



@pytest.fixture
def plain_client(make_client):
    """A first-party client without any MFA policy."""
    return make_client(first_party=True)


# --- SECURITY.md 17: the login-flow binding is renewed at sign-in ------------------------------------------------

def test_signing_in_renews_the_login_flow_binding(app, client, alice):
    client.get("/login")
    before = flow_binding(client)
    response = sign_in(client, ALICE)
    assert response.status_code == 302 and signed_in_email(client) == ALICE
    after = flow_binding(client)
    assert before and after and after != before


def test_a_copy_of_the_pre_sign_in_cookies_cannot_carry_on_the_transaction(app, client, alice, plain_client):
    """Someone who copied the browser's cookies before a sign-in (here prompt=login: the session cookie too) can
    neither continue the transaction nor spend what it answered at /authorize; the browser that signed in still
    gets its code."""
    assert "code" in follow(client, client.get(authorize_url(plain_client[0]))).params
    start = client.get(authorize_url(plain_client[0], prompt="login"))
    step_url = screen_url(start)
    page = client.get(step_url)
    assert step_name(page) == "password"
    thief = app.test_client()
    copy_cookies(client, thief)
    assert thief.get(step_url).status_code == 200  # until sign-in, the copy is as good as the original

    done = client.post(step_url, data={"csrf_token": csrf_token(page), "step": "password", "email": ALICE,
                                       "password": PASSWORD})
    assert "code" in query_params(done.headers["Location"])  # the browser that signed in: its code, at once
    assert done.headers["Location"].startswith(RP_CALLBACK)
    with app.app_context():  # the return address a browser would have come back through
        back_to_authorize = db.session.get(LoginTransaction, step_url.rsplit("/", 1)[1]).state.return_to
    assert urlsplit(back_to_authorize).path == "/authorize"

    assert thief.get(step_url).status_code == 400  # the transaction cannot be continued...
    again = thief.post(step_url, data={"csrf_token": csrf_token(page), "step": "password", "email": ALICE,
                                       "password": PASSWORD})
    assert again.status_code == 400  # ...nor answered again
    stolen = thief.get(back_to_authorize)  # nor what it answered spent at /authorize
    assert not stolen.headers.get("Location", "").startswith(RP_CALLBACK)
    assert step_name(stolen) == "password"  # asked to sign in: prompt=login is not answered for it
    assert signed_in_email(thief) is None  # the session cookie it copied was replaced at sign-in


def test_a_consent_screen_left_open_does_not_sign_a_signed_out_user_back_in(client, alice, make_client):
    """SECURITY.md 17, 18: a screen begun inside a session (consent, a step-up) proves nothing by itself; once that
    session has ended (sign-out in another tab, a timeout), answering it starts no new session and issues no
    code. (Found by the sixteenth pass's review; older than it.)"""
    first_party, third_party = make_client(name="Conf", first_party=True), make_client(name="Photo Printer")
    follow(client, client.get(authorize_url(first_party[0])))
    consent = client.get(authorize_url(third_party[0]))
    assert step_name(consent) == "consent"
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/logout"))})
    assert signed_in_email(client) is None
    answer = client.post(screen_url(consent), data={"csrf_token": csrf_token(consent), "step": "consent",
                                                    "allow": "Allow"})
    assert answer.status_code == 400 and "code" not in query_params(answer.headers.get("Location", ""))
    assert signed_in_email(client) is None


def test_a_sign_in_whose_answer_was_refused_answers_no_other_request(app, client, alice, make_client):
    """A completed sign-in is used up by its answer even when the answer is a refusal (here the client's redirect
    URI changed meanwhile: the error page), and what it answered never counts for another request: another
    client's authorization request carrying its id still asks for consent. (Found by the sixteenth pass's review;
    older than it.)"""
    first_party, app_a, app_b = (make_client(name=name, first_party=name == "Conf") for name in ("Conf", "A", "B"))
    follow(client, client.get(authorize_url(first_party[0])))
    consent = client.get(authorize_url(app_a[0]))
    tid = screen_url(consent).rsplit("/", 1)[1]
    with app.app_context():
        row = db.session.execute(db.select(Client).where(Client.client_id == app_a[0])).scalar_one()
        update_client(row, {"redirect_uris": ["https://rp.example/moved"]})
        db.session.commit()
    refused = client.post(screen_url(consent), data={"csrf_token": csrf_token(consent), "step": "consent",
                                                     "allow": "Allow"})
    assert refused.status_code == 400
    with app.app_context():
        assert db.session.get(LoginTransaction, tid).state.used
    other = client.get(authorize_url(app_b[0], _txn=tid))  # B was never allowed
    assert step_name(other) == "consent", other.headers.get("Location")


def test_a_completed_sign_in_counts_only_at_its_own_return_address(app, client, alice, make_client):
    """What a completed sign-in answered (here prompt=login) counts only for the very request it was begun for:
    its id sent with any other parameters (odd bytes, other values, added ones) is not taken (it stays unused) and
    never gives a 500; its own return address takes it and gets the code."""
    client_id, _ = make_client(first_party=True)
    follow(client, client.get(authorize_url(client_id)))
    screen = client.get(authorize_url(client_id, prompt="login"))
    tid = screen_url(screen).rsplit("/", 1)[1]
    with app.app_context():  # completed and not used, as a sign-in completed by an older release leaves it
        txn = db.session.get(LoginTransaction, tid)
        return_to = txn.state.return_to
        txn.completed_at = utcnow()
        db.session.commit()
    own = dict(parse_qsl(urlsplit(return_to).query, keep_blank_values=True))

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(changes=st.dictionaries(st.sampled_from(sorted(own)), st.text(max_size=30), min_size=1, max_size=3),
           extra=st.lists(st.tuples(st.sampled_from(["scope", "_txn", "x", "nonce"]), st.text(max_size=30)),
                          max_size=2))
    def altered(changes, extra):
        params = [(name, changes.get(name, value)) for name, value in own.items()] + extra
        if sorted(params) == sorted(own.items()):
            return
        response = client.get("/authorize?" + urlencode(params))
        assert response.status_code < 500, response.get_data(as_text=True)[:300]
        with app.app_context():
            assert not db.session.get(LoginTransaction, tid).state.used, params  # it did not count there

    altered()
    answered = client.get(return_to)
    assert "code" in query_params(answered.headers["Location"])
    with app.app_context():
        assert db.session.get(LoginTransaction, tid).state.used


# --- SECURITY.md 25: the signature counter and the single-use challenge on the sign-in path ----------------------

def up_to_the_key_screen(client, plain_client):
    """Walk an authorization request through the password to the security-key screen (not answered yet)."""
    return follow(client, client.get(authorize_url(plain_client[0])), stop_at="webauthn")


def answer_key_screen(client, walked, credential: str):
    page = walked.pages[-1]
    return client.post(screen_url(page), data={"csrf_token": csrf_token(page), "step": "webauthn",
                                                              "credential": credential})


def test_a_security_key_whose_counter_went_back_is_refused_at_sign_in(app, client, alice, plain_client):
    """A counter at or below the stored one means a cloned authenticator (WebAuthn L3 6.1.1): no sign-in."""
    key = SoftAuthenticator()
    register_key(app, key, sign_count=10)
    walked = up_to_the_key_screen(client, plain_client)
    assert walked.screens == ["password", "webauthn"]
    challenge = offered_challenge(walked.pages[-1], "webauthn-options")
    response = answer_key_screen(client, walked, key.assertion(challenge, counter=7))
    assert response.status_code == 200 and step_name(response) == "webauthn"
    assert "could not be verified" in response.get_data(as_text=True)
    assert signed_in_email(client) is None
    assert stored_counter(app, key) == 10


def test_a_security_key_whose_counter_moved_on_signs_in_and_the_counter_is_stored(app, client, alice, plain_client):
    key = SoftAuthenticator()
    register_key(app, key, sign_count=10)
    walked = up_to_the_key_screen(client, plain_client)
    challenge = offered_challenge(walked.pages[-1], "webauthn-options")
    result = follow(client, answer_key_screen(client, walked, key.assertion(challenge, counter=11)))
    assert "code" in result.params and signed_in_email(client) == ALICE
    assert stored_counter(app, key) == 11


def test_a_security_key_assertion_cannot_be_posted_twice_in_one_transaction(app, client, alice, plain_client):
    """The challenge is single use: an assertion refused once (its counter was behind) stays refused once the
    stored counter would let it through."""
    key = SoftAuthenticator()
    register_key(app, key, sign_count=5)
    walked = up_to_the_key_screen(client, plain_client)
    # A counter of 0 is what authenticators without one send: then only the challenge stops a replay.
    assertion = key.assertion(offered_challenge(walked.pages[-1], "webauthn-options"), counter=0)
    assert step_name(answer_key_screen(client, walked, assertion)) == "webauthn"
    set_key(app, key, sign_count=0)
    replayed = answer_key_screen(client, walked, assertion)
    assert replayed.status_code == 200 and step_name(replayed) == "webauthn"
    assert "could not be verified" in replayed.get_data(as_text=True)
    assert signed_in_email(client) is None


def test_the_sign_in_pages_challenge_does_not_answer_the_key_screen(app, client, alice, plain_client):
    """Each step offers a challenge of its own: an assertion made for the sign-in page's passkey prompt, left
    unused when the password answered that page, does not answer the security-key screen after it."""
    key = SoftAuthenticator()
    register_key(app, key, sign_count=5)
    walked = up_to_the_key_screen(client, plain_client)
    assert walked.screens == ["password", "webauthn"]
    early = offered_challenge(walked.pages[0], "passkey-options")
    assert offered_challenge(walked.pages[-1], "webauthn-options") != early
    response = answer_key_screen(client, walked, key.assertion(early, counter=6))
    assert response.status_code == 200 and step_name(response) == "webauthn"
    assert "could not be verified" in response.get_data(as_text=True)
    assert signed_in_email(client) is None


def test_a_passkey_assertion_cannot_be_posted_twice_in_one_transaction(app, client, alice):
    """Passwordless: a passkey answer refused after its check (the account was locked) is spent, even once the
    account is unlocked."""
    key = SoftAuthenticator()
    register_key(app, key)
    step_url = screen_url(client.get("/login"))
    page = client.get(step_url)
    assertion = key.assertion(offered_challenge(page, "passkey-options"), counter=0, user_verified=True)
    set_user(app, locked_at=utcnow())
    form = {"csrf_token": csrf_token(page), "credential": assertion}
    assert client.post(f"{step_url}/passkey", data=form).status_code == 302
    assert signed_in_email(client) is None
    set_user(app, locked_at=None)
    client.post(f"{step_url}/passkey", data=form)  # no page in between: nothing issued a new challenge
    assert step_name(client.get(step_url)) == "password"
    assert signed_in_email(client) is None


def test_a_passkey_signs_in_once_through_the_sign_in_page(app, client, alice):
    """The same setup with an unlocked account signs in, so the test above fails for the replay only."""
    key = SoftAuthenticator()
    register_key(app, key)
    step_url = screen_url(client.get("/login"))
    page = client.get(step_url)
    assertion = key.assertion(offered_challenge(page, "passkey-options"), counter=0, user_verified=True)
    client.post(f"{step_url}/passkey", data={"csrf_token": csrf_token(page), "credential": assertion})
    follow(client, client.get(step_url))
    assert signed_in_email(client) == ALICE


# --- no open redirect through next= ---------------------------------------------------------------------------------

TRICKY_NEXT = ["//evil.example", "///evil.example", "////evil.example", "/\\evil.example", "\\\\evil.example",
               "/\\/evil.example", "https://evil.example/", "/%2F/evil.example"]


def assert_on_site(location: str) -> None:
    """A path on this site, as a browser reads it: '//x' and '/\\x' name another host."""
    parts = urlsplit(location)
    assert parts.scheme in ("", "http") and parts.netloc in ("", "localhost"), location
    path = location.removeprefix("http://localhost")
    assert path.startswith("/") and path[1:2] not in ("/", "\\"), location


@pytest.mark.parametrize("target", TRICKY_NEXT)
def test_signing_in_never_redirects_off_site_through_next(app, client, alice, target):
    start = client.get("/login?" + urlencode({"next": target}))
    step_url = screen_url(start)
    page = client.get(step_url)
    done = client.post(step_url, data={"csrf_token": csrf_token(page), "step": "password", "email": ALICE,
                                       "password": PASSWORD})
    assert done.status_code == 302 and signed_in_email(client) == ALICE
    assert_on_site(done.headers["Location"])
    # Already signed in, /login sends the browser straight on: the same check applies.
    again = client.get("/login?" + urlencode({"next": target}))
    assert again.status_code == 302
    assert_on_site(again.headers["Location"])


def test_a_same_site_next_is_where_sign_in_returns(app, client, alice):
    """The check above is not passing because every next= is dropped."""
    response = sign_in(client, ALICE, next_path="/account/security")
    assert urlsplit(response.headers["Location"]).path == "/account/security"
    assert query_params(response.headers["Location"]) == {}


# --- OIDC Core 3.1.2.1: a fresh sign-in answers prompt=login and max_age ----------------------------------------------

@pytest.mark.parametrize("params", [{"prompt": "login"}, {"max_age": "0"}])
def test_a_browser_without_a_session_signs_in_once_for_prompt_login_or_max_age(app, client, alice, plain_client,
                                                                               params):
    result = follow(client, client.get(authorize_url(plain_client[0], **params)))
    assert result.screens == ["password"] and "code" in result.params
