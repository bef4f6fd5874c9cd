"""A factor is one module plus one template: a PIN factor defined only here (and in templates/pin.html beside this
file), registered with the registry, is offered on the security page, enrolled there, offered by the chooser,
counted toward MFA with the password, reported in the ID token's `amr`, and removed, with no change to idp/."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from jinja2 import ChoiceLoader, FileSystemLoader
from joserfc import jwt
from joserfc.jwk import KeySet
from wtforms import PasswordField
from wtforms.validators import DataRequired, Length

from idp.extensions import db
from idp.login.context import Outcome, StepContext
from idp.login.factors import REGISTRY
from idp.login.factors.base import Action, EnrolContext, Enrolled, FactorType, Section
from idp.login.forms import Form
from idp.models import AuditEvent, Factor, User
from idp.security.passwords import hash_password, verify_password
from tests.support import PASSWORD, csrf_token, enrol_totp_in, follow, screen_url, signed_in_email, step_name, walk

RP = "https://rp.example/cb"
ALICE = "alice@example.com"
THE_PIN = "482913"
VERIFIER = "pin-verifier-" + "v" * 40
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


# --- the factor: everything about it in one place ---------------------------------------------------------------

class PinCredential(Factor):
    """A PIN, stored as an argon2id hash in the factor row's secret column."""

    __mapper_args__ = {"polymorphic_identity": "pin"}


class PinForm(Form):
    """One PIN field."""

    pin = PasswordField("PIN", validators=[DataRequired("Enter your PIN."), Length(max=64)])


class Pin(FactorType):
    """Test-only: a static PIN, declared (for the test) to count toward MFA with the password."""

    kind = "pin"
    amr_values = frozenset({"pin"})
    template = "pin.html"
    form_class = PinForm
    title = "PIN"
    chooser_label = "PIN"
    slug = "pin"
    enrol_stages = {"new": ("pin.html", PinForm)}

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        assert ctx.user is not None
        for credential in self.credentials(ctx.user, ctx.confirmed_factors()):
            if verify_password(credential.secret_encrypted, data.get("pin", "")):
                return Outcome(True, amr=("pin",))
        ctx.code_attempt_failed(self.kind)
        return Outcome(False, "That PIN is not right.")

    def section(self, user: User, confirmed: list[Factor], config: Mapping[str, Any]) -> Section:
        return Section("PINs", items=[(f, "a PIN") for f in self.credentials(user, confirmed)],
                       actions=[Action("Add a PIN")])

    def enrol_verify(self, stage: str, ec: EnrolContext, data: Mapping[str, Any]) -> Enrolled:
        db.session.add(PinCredential(user_id=ec.user.id, name="My PIN", secret_encrypted=hash_password(data["pin"]),
                                     created_at=ec.now, confirmed_at=ec.now))
        return Enrolled(True, notice="A PIN was added to your account.", message="PIN added.")


# --- fixtures and helpers ---------------------------------------------------------------------------------------

@pytest.fixture
def pin_app(app):
    """The app with the PIN factor registered (after the text message, before recovery codes) and its template
    found beside this file."""
    REGISTRY.register(Pin(), before="recovery_code")
    app.jinja_env.loader = ChoiceLoader([app.jinja_env.loader, FileSystemLoader(Path(__file__).parent / "templates")])
    yield app
    REGISTRY.unregister("pin")


@pytest.fixture
def alice(make_user):
    return make_user(email=ALICE)


@pytest.fixture
def rp(make_client):
    return make_client(redirect_uris=[RP], first_party=True)


def authorize_path(client_id: str) -> str:
    return "/authorize?" + urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": RP,
                                      "scope": "openid", "state": "st", "code_challenge": CHALLENGE,
                                      "code_challenge_method": "S256"})


def id_token_claims(client, client_id: str, secret: str, code: str) -> dict:
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP,
                                           "code_verifier": VERIFIER}, auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    keys = KeySet.import_key_set(client.get("/jwks.json").get_json())
    return jwt.decode(response.get_json()["id_token"], keys, algorithms=["RS256", "ES256"]).claims


def pin_rows(app) -> list[Factor]:
    with app.app_context():
        return list(db.session.execute(db.select(Factor).where(Factor.kind == "pin")).scalars())


def events(app, name: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.execute(db.select(AuditEvent).where(AuditEvent.event == name)).scalars())


def enrol_pin(client) -> None:
    """Sign in with the password and add the PIN on the security page, as a user would."""
    assert walk(client, "/login", email=ALICE).screens == ["password"] and signed_in_email(client) == ALICE
    page = client.get("/account/security")
    html = page.get_data(as_text=True)
    assert "PINs" in html
    link = re.search(r'href="([^"]+)">Add a PIN<', html)
    assert link and link.group(1) == "/account/security/pin/new"
    form = client.get(link.group(1))
    assert form.status_code == 200 and "Add a PIN" in form.get_data(as_text=True)
    done = client.post(link.group(1), data={"csrf_token": csrf_token(form), "pin": THE_PIN})
    assert done.status_code == 302 and urlsplit(done.headers["Location"]).path == "/account/security"


# --- the proof --------------------------------------------------------------------------------------------------

def test_a_factor_defined_in_a_test_is_enrolled_used_for_mfa_and_removed(pin_app, client, alice, rp, mailbox):
    enrol_pin(client)
    (row,) = pin_rows(pin_app)
    assert isinstance(row, PinCredential) and row.confirmed_at is not None and row.secret_encrypted != THE_PIN
    assert [e.details["kind"] for e in events(pin_app, "factor.added")] == ["pin"]
    assert any("A PIN was added" in m["text"] for m in mailbox.messages())
    assert "My PIN" in client.get("/account/security").get_data(as_text=True)

    # A new browser signs in: the user now has a second factor, so the PIN is asked for after the password.
    browser = pin_app.test_client()
    wrong = walk(browser, authorize_path(rp[0]), stop_at="pin")
    assert wrong.screens == ["password", "pin"]
    page = wrong.pages[-1]
    refused = browser.post(screen_url(page),
                           data={"csrf_token": csrf_token(page), "step": "pin", "pin": "000000"})
    assert refused.status_code == 200 and "That PIN is not right." in refused.get_data(as_text=True)
    result = follow(browser, browser.post(screen_url(page),
                                          data={"csrf_token": csrf_token(page), "step": "pin", "pin": THE_PIN}),
                    result=wrong)
    claims = id_token_claims(browser, *rp, result.code)
    assert "pin" in claims["amr"] and "pwd" in claims["amr"] and "mfa" in claims["amr"]
    assert claims["acr"] == "urn:idp:acr:mfa"

    # Removal on the security page.
    page = client.get("/account/security")
    removed = client.post(f"/account/security/factors/{row.id}/remove",
                          data={"confirm": "yes", "csrf_token": csrf_token(page)})
    assert removed.status_code == 302
    assert pin_rows(pin_app) == []
    assert [e.details["kind"] for e in events(pin_app, "factor.removed")] == ["pin"]


def test_the_chooser_offers_the_registered_factor_in_registry_order(pin_app, client, alice, rp):
    enrol_pin(client)
    enrol_totp_in(pin_app, ALICE)  # an authenticator app is stronger: it is asked for first
    browser = pin_app.test_client()
    result = walk(browser, authorize_path(rp[0]), stop_at="totp")
    assert result.screens == ["password", "totp"]
    page = result.pages[-1]
    offered = re.findall(r'name="factor" value="([a-z_]+)"', page.get_data(as_text=True))
    assert offered == ["pin", "email_otp"]
    tid = screen_url(page).rsplit("/", 1)[-1]
    chosen = browser.post(f"/login/{tid}/choose", data={"csrf_token": csrf_token(page), "factor": "pin"})
    result = follow(browser, chosen, result=result, answers={"pin": lambda _: {"pin": THE_PIN}})
    assert result.screens == ["password", "totp", "pin"]
    claims = id_token_claims(browser, *rp, result.code)
    assert "pin" in claims["amr"] and "otp" not in claims["amr"] and claims["acr"] == "urn:idp:acr:mfa"


def test_without_the_registration_the_factor_is_nowhere(app, client, alice):
    assert walk(client, "/login", email=ALICE).screens == ["password"]
    assert "PINs" not in client.get("/account/security").get_data(as_text=True)
    assert client.get("/account/security/pin/new").status_code == 404
    assert step_name(client.get("/account/security")) is None and PASSWORD
