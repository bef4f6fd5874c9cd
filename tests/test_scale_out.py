"""Two idp instances on one PostgreSQL and one Redis behave as one server (issue 20, README "Scaling out").

Each instance is `gunicorn wsgi:app` in a process group of its own, with two sync workers, so state that a worker
kept to itself would show up here as an answer that depends on which process served it. Both take every setting
from the environment and share IDP_SECRET_KEY (the flow cookie, CSRF tokens and signed links of one are read by the
other) and IDP_ISSUER: the issuer is the public name of the service, what a load balancer answers to, so it names
neither backend. It is in every token's `iss` and the `iss` of authorization responses, and an instance refuses an
access token whose `iss` is not its own, so two instances with different issuers would refuse each other's tokens.
The browser here is that load balancer's client: one cookie jar, the public host in the Host header, and each
request sent to the instance the test names; a redirect that named a backend's own address would fail the walk.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.models import utcnow
from idp.security.otp import totp_code_at
from tests.conftest import SECRET, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.instances import (
    RP,
    Browser,
    Instance,
    Screen,
    answer,
    authorize_path,
    csrf_token,
    follow,
    kid_of,
    redeem,
    refresh,
    run_cli,
    running,
    sign_in_for_tokens,
    userinfo,
)
from tests.support import PASSWORD, audit_events, enrol_totp_in, make_client_in, make_user_in, pkce_pair, query_params

pytestmark = pytest.mark.skipif(
    not TEST_DATABASE_URL.startswith("postgresql") or not TEST_REDIS_URL,
    reason="several instances share PostgreSQL and Redis: set IDP_TEST_DATABASE_URL and IDP_TEST_REDIS_URL")

ISSUER = "https://idp.scale.test"  # behind TLS, as in production; the Browser says so as nginx does
MFA = "urn:idp:acr:mfa"
THROTTLE = 3  # failed passwords per account and minute
LOCKOUT = 2  # consecutive failed passwords that lock an account (below THROTTLE, so that both can be reached)
GENERIC_FAILURE = "Incorrect email or password."
THROTTLED = "Too many attempts."


@dataclass
class Pair:
    a: Instance
    b: Instance
    env: dict[str, str]  # their settings, for `idp` commands run beside them


@pytest.fixture(scope="module")
def pair(database, tmp_path_factory):
    """Instances A and B, started once for the module. Each test makes its own users and clients, and the `app`
    fixture empties the tables after it while the instances run on, as a database restore would."""
    folder = tmp_path_factory.mktemp("scale-out")
    queue = f"idp-scale-{uuid.uuid4().hex[:12]}"
    env = {
        "IDP_ENV": "testing", "IDP_ISSUER": ISSUER, "IDP_SECRET_KEY": SECRET, "IDP_DATABASE_URL": database,
        "IDP_REDIS_URL": TEST_REDIS_URL, "IDP_QUEUE_NAME": queue, "IDP_MAIL_BACKEND": "outbox",
        "IDP_OUTBOX_DIR": str(folder / "outbox"), "IDP_PASSWORD_HASH_COST": "t=1,m=64,p=1",
        "IDP_THROTTLE_ACCOUNT": f"{THROTTLE}/minute;100/hour;1000/day",
        # Every request of the suite comes from 127.0.0.1: the per-IP counters must not be what stops a test.
        "IDP_THROTTLE_IP": "10000/minute", "IDP_LOCKOUT_THRESHOLD": str(LOCKOUT),
    }
    a, b = Instance("A", env, folder / "A"), Instance("B", env, folder / "B")
    try:
        with running(a, b):
            yield Pair(a, b, env)
    finally:
        from redis import Redis
        from rq import Queue

        with Redis.from_url(TEST_REDIS_URL) as connection:  # the lock-out mails no worker sent
            Queue(queue, connection=connection).delete(delete_jobs=True)


@pytest.fixture
def instances(pair, app):
    """The pair, for one test; their log lines written during the test are printed (shown when it fails)."""
    offsets = {instance: len(instance.log()) for instance in (pair.a, pair.b)}
    yield pair
    for instance, offset in offsets.items():
        print(f"--- {instance.name} ({instance.url}) log during the test ---\n{instance.log_since(offset)}")


@pytest.fixture
def browser():
    made: list[Browser] = []

    def factory() -> Browser:
        made.append(Browser(ISSUER))
        return made[-1]

    yield factory
    for one in made:
        one.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


def id_claims(browser: Browser, via: Instance, id_token: str) -> dict:
    """The ID token's claims, verified with the JWKS of instance ``via``."""
    keys = KeySet.import_key_set(browser.get(via, "/jwks.json").json())
    return jwt.decode(id_token, keys, algorithms=["RS256", "ES256"]).claims


def password_screen(browser: Browser, via: Instance) -> Screen:
    screen = follow(browser, via, browser.get(via, "/login"))
    assert isinstance(screen, Screen) and screen.step == "password"
    return screen


def test_a_sign_in_whose_steps_alternate_between_instances_reaches_mfa(instances, app, browser):
    """Password on A, the authenticator code on B, consent and code at B, the code redeemed at A (PKCE): one
    sign-in, whose ID token says a second factor was used; its tokens answer at either instance."""
    a, b = instances.a, instances.b
    email = unique("alice")
    make_user_in(app, email=email)
    totp_secret, _ = enrol_totp_in(app, email)
    client = make_client_in(app, redirect_uris=[RP])  # a third-party client: the consent screen comes too
    verifier, challenge = pkce_pair()
    user = browser()

    screen = follow(user, a, user.get(a, authorize_path(client[0], challenge, nonce="n-1")))
    assert isinstance(screen, Screen) and screen.step == "password"
    screen = follow(user, b, answer(user, a, screen, email=email, password=PASSWORD))
    assert isinstance(screen, Screen) and screen.step == "totp", "B did not carry on the sign-in A started"
    screen = follow(user, a, answer(user, b, screen, code=totp_code_at(totp_secret, utcnow())))
    assert isinstance(screen, Screen) and screen.step == "consent"
    left = follow(user, b, answer(user, b, screen, allow="Allow"))
    assert isinstance(left, str) and left.startswith(RP + "?"), left
    params = query_params(left)
    assert params["state"] == "st-1" and params["iss"] == ISSUER  # RFC 9207: the shared issuer, from B

    tokens = redeem(user, a, client, params["code"], verifier)
    claims = id_claims(user, b, tokens["id_token"])  # signed at A, verified with B's JWKS
    assert claims["iss"] == ISSUER and claims["aud"] in (client[0], [client[0]]) and claims["nonce"] == "n-1"
    assert claims["acr"] == MFA and {"pwd", "otp", "mfa"} <= set(claims["amr"])
    for via in (a, b):  # the access token A issued is B's as much as A's
        info = userinfo(user, via, tokens["access_token"])
        assert info.status_code == 200 and info.json()["sub"] == claims["sub"], (via.name, info.text)
    # One sign-in session, whichever instance is asked.
    for via in (a, b):
        assert user.get(via, "/account").status_code == 200, via.name


def test_failed_passwords_are_throttled_at_the_configured_count_across_instances(instances, app, browser):
    """SECURITY.md 21: the per-account delay counts failures wherever they were made; spreading the guesses over
    two instances buys no more of them (the counters live in Redis, not in a process)."""
    a, b = instances.a, instances.b
    email = unique("carol")
    make_user_in(app, email=email)
    attacker = browser()
    screen = password_screen(attacker, a)
    for number, via in enumerate([a, b, a][:THROTTLE], start=1):
        page = answer(attacker, via, screen, email=email, password=f"guess number {number}")
        assert page.status_code == 200 and GENERIC_FAILURE in page.text and THROTTLED not in page.text, number
        screen = Screen(page)
    # A per-process count would stand at one failure on B: the right password would be checked there.
    refused = answer(attacker, b, screen, email=email, password=PASSWORD)
    assert refused.status_code == 200 and THROTTLED in refused.text
    assert "idp_session" not in attacker.session.cookies
    assert [e.details.get("reason") for e in audit_events(app, "login.failure")][-1] == "throttled"


def test_the_lockout_counts_failures_made_at_either_instance(instances, app, browser):
    """The consecutive-failure lock (IDP_LOCKOUT_THRESHOLD) is reached by failures split over the instances, and
    then refuses the right password at any of them."""
    from idp.extensions import db
    from idp.models import User

    def state() -> tuple[int, bool]:
        with app.app_context():
            user = db.session.execute(db.select(User).where(User.email == email)).scalar_one()
            return user.failed_logins, user.locked_at is not None

    a, b = instances.a, instances.b
    email = unique("bob")
    make_user_in(app, email=email)
    attacker = browser()
    screen = password_screen(attacker, a)
    for number, via in enumerate([a, b][:LOCKOUT], start=1):
        page = answer(attacker, via, screen, email=email, password=f"guess number {number}")
        assert page.status_code == 200 and GENERIC_FAILURE in page.text
        assert state() == (number, number >= LOCKOUT), number
        screen = Screen(page)
    locked = audit_events(app, "account.locked")
    assert len(locked) == 1 and locked[0].details["failures"] == LOCKOUT
    owner = answer(attacker, a, screen, email=email, password=PASSWORD)
    assert owner.status_code == 200 and GENERIC_FAILURE in owner.text and THROTTLED not in owner.text
    assert "idp_session" not in attacker.session.cookies
    assert audit_events(app, "login.failure")[-1].details.get("reason") == "locked"


def _publishes_in_a_row(user, via, kids: set[str], answers: int = 8, seconds: float = 5.0) -> bool:
    """Whether ``via``'s JWK Set lists ``kids`` in ``answers`` answers in a row (each may come from either of its
    workers) within ``seconds``."""
    deadline = time.monotonic() + seconds
    streak = 0
    while streak < answers:
        if time.monotonic() > deadline:
            return False
        published = {k["kid"] for k in user.get(via, "/jwks.json").json()["keys"]}
        streak = streak + 1 if kids <= published else 0
        if streak == 0:
            time.sleep(0.02)
    return True


def test_a_key_rotated_by_the_cli_signs_and_verifies_everywhere_at_once(instances, app, browser, tmp_path):
    """SECURITY.md 14 with several processes: after `idp keys rotate` (a third process), both instances sign with
    the new key from their next token on, verify tokens signed with it, and publish it in their JWKS. Two workers
    per instance: each request may land on a worker that kept the old keys."""
    a, b = instances.a, instances.b
    email = unique("dora")
    make_user_in(app, email=email)
    client = make_client_in(app, redirect_uris=[RP], first_party=True, refresh_tokens_for_sessions=True)
    user = browser()
    tokens = sign_in_for_tokens(user, a, client, email)
    old_kid = kid_of(tokens["access_token"])
    for via in (a, b, a, b):  # every worker that answers loads (and keeps) today's keys
        assert userinfo(user, via, tokens["access_token"]).status_code == 200
        assert old_kid in {k["kid"] for k in user.get(via, "/jwks.json").json()["keys"]}

    rotated = run_cli(["keys", "rotate"], instances.env, tmp_path / "cli")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new_kids = {line.split()[3]: line.split()[4].strip("()") for line in rotated.stdout.splitlines()
                if line.startswith("new signing key ")}
    assert set(new_kids.values()) == {"RS256", "ES256"}, rotated.stdout
    new_rs256 = next(kid for kid, alg in new_kids.items() if alg == "RS256")
    # Each worker learns of the rotation from PostgreSQL's notification, delivered when the CLI's transaction
    # commits (idp.changes, SECURITY.md 14): milliseconds, more on a loaded box. Only that arrival is waited for,
    # bounded, on both workers of each instance (several answers in a row), and then everything must hold.
    for via in (a, b):
        assert _publishes_in_a_row(user, via, set(new_kids) | {old_kid}), f"{via.name} never published the new keys"

    refresh_token = tokens["refresh_token"]
    for issuer_side, other in ((a, b), (b, a), (a, b), (b, a)):
        fresh = refresh(user, issuer_side, client, refresh_token)
        refresh_token = fresh["refresh_token"]
        assert kid_of(fresh["access_token"]) == new_rs256, f"{issuer_side.name} signed with a retired key"
        info = userinfo(user, other, fresh["access_token"])
        assert info.status_code == 200, f"{other.name} refused a token signed with the new key: {info.text}"
        inspected = user.post(other, "/introspect", auth=client, data={"token": fresh["access_token"]}).json()
        assert inspected["active"] is True, other.name
        published = {k["kid"] for k in user.get(other, "/jwks.json").json()["keys"]}
        assert set(new_kids) | {old_kid} <= published, f"{other.name}'s JWKS: {published}"
    # The token signed before the rotation still verifies: its key stays published until it expires.
    assert userinfo(user, b, tokens["access_token"]).status_code == 200


def test_a_session_ended_on_one_instance_is_refused_by_the_other_at_once(instances, app, browser):
    """Ending a session (from the account page of another browser, or by signing out) takes effect on every
    instance with the next request: sessions live in the database, not in a worker."""
    a, b = instances.a, instances.b
    email = unique("erin")
    make_user_in(app, email=email)
    client = make_client_in(app, redirect_uris=[RP], first_party=True)
    laptop, phone = browser(), browser()
    tokens = sign_in_for_tokens(laptop, a, client, email)
    sid = id_claims(laptop, a, tokens["id_token"])["sid"]
    screen = password_screen(phone, b)
    assert answer(phone, b, screen, email=email, password=PASSWORD).status_code == 302  # signed in
    for via in (a, b):
        assert laptop.get(via, "/account").status_code == 200 and phone.get(via, "/account").status_code == 200

    # The phone ends the laptop's session on B's account page (the page asks first).
    page = phone.get(b, "/account")
    assert sid in page.text
    asked = phone.post(b, f"/account/sessions/{sid}/end", data={"csrf_token": csrf_token(page.text)})
    assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
    done = phone.post(b, f"/account/sessions/{sid}/end", data={"csrf_token": csrf_token(asked.text), "confirm": "yes"})
    assert done.status_code == 302
    for via in (a, b):
        gone = laptop.get(via, "/account")
        assert gone.status_code == 302 and "/login" in gone.headers["Location"], via.name
        # Its tokens were bound to that session (no offline_access): revoked with it.
        assert userinfo(laptop, via, tokens["access_token"]).status_code == 401, via.name
    assert phone.get(a, "/account").status_code == 200

    # The phone signs out on A. Its cookie, kept by a stale tab (or a thief), opens nothing on B either.
    stale = browser()
    stale.session.cookies.set("idp_session", phone.session.cookies["idp_session"])
    assert stale.get(b, "/account").status_code == 200  # the copy works while the session lives
    confirm = phone.get(a, "/logout")
    assert confirm.status_code == 200
    assert phone.post(a, "/logout", data={"csrf_token": csrf_token(confirm.text)}).status_code == 200
    for via in (b, a):
        gone = stale.get(via, "/account")
        assert gone.status_code == 302 and "/login" in gone.headers["Location"], via.name
