"""The device authorization grant (RFC 8628): a device without a usable browser (a TV, a command-line tool) gets a
device code to poll the token endpoint with, and shows its user a short user code to enter at /device, where the
user signs in (the normal sign-in transaction, with the second factor the client's policy demands), sees which
client asks for which scopes, and approves or denies.

- ``POST /device_authorization`` (RFC 8628 3.1, 3.2): Authlib's DeviceAuthorizationEndpoint, the client
  authenticated as at the token endpoint (a public client by its bare client_id), only a client registered for
  this grant (else ``unauthorized_client``), and only the OpenID scopes (the idp:* ones need a sign-in as strong as
  the console's, which a device cannot show: ``invalid_scope``).
- Codes: the device code is 256 random bits (RFC 8628 5.2: it must not be guessable), the user code 8 letters of
  RFC 8628 6.1's 20 consonants (about 34.6 bits), shown and accepted as four and four letters (``WDJB-MJHT``),
  case, hyphen and spaces not mattering (6.1). Neither is stored: models.DeviceCode holds their hashes.
- /device throttles wrong user codes per IP with the failed-attempt throttle (RFC 8628 5.1: the user code's low
  entropy is defended by rate limiting), and shows the user code again next to the client and scopes so that the
  user can check it is the one on their own device (RFC 8628 5.4, remote phishing).
- Approving binds the device code to the user and the sign-in session it was approved from (sid, auth_time, acr,
  amr: the ID token's), once (``decided_at``, one conditional UPDATE: a user code is used once). A third-party
  client's approval is remembered as /authorize's consent screen remembers one, so /account/apps lists the client
  and withdrawing it there revokes the device's tokens.
- Token endpoint (RFC 8628 3.4, 3.5): Authlib's DeviceCodeGrant; ``authorization_pending`` until decided,
  ``slow_down`` for a poll sooner than the interval (which then grows by 5 seconds for that code), ``access_denied``
  after a deny, ``expired_token`` after the expiry, tokens once (``redeemed_at``, claimed by one conditional UPDATE
  in the transaction that stores the tokens: of two polls at once, one gets them), ``invalid_grant`` after that.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE, AuthorizationPendingError, ExpiredTokenError, SlowDownError
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint as _DeviceAuthorizationEndpoint
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _DeviceCodeGrant
from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import bindparam, select, update
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length

from idp import audit
from idp.extensions import csrf, db
from idp.http import client_address, external_url
from idp.login import mfa, transaction
from idp.login.browser import begin_transaction, binding, current_session, this_address, throttle
from idp.login.context import too_many_attempts
from idp.login.forms import Form
from idp.models import Client, Consent, DeviceCode, LoginSession, table_of, utcnow
from idp.oidc import claims as oidc_claims
from idp.oidc import policy
from idp.oidc.server import ALL_AUTH_METHODS, DeviceIDToken, DPoPClients, SignIn, current_server, query_client
from idp.security.tokens import code_hash, new_token, token_hash

# RFC 8628 6.1: "BCDFGHJKLMNPQRSTVWXZ" (no vowels, so no words; no digits, so no 0/O or 1/I), 8 characters.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
# RFC 8628 3.2: "If no value is provided, clients MUST use 5 as the default"; 3.5: slow_down adds 5 seconds.
INTERVAL = 5
SLOW_DOWN_STEP = 5
TXN_PARAM = "_txn"
FLOW = "device_flow"  # the Flask session's key for the device code this browser is approving

_codes = table_of(DeviceCode)
_BY_DEVICE_CODE = select(DeviceCode).where(DeviceCode.device_code_hash == bindparam("hash"))
_CLAIM = (update(_codes).where(_codes.c.id == bindparam("row_id"), _codes.c.redeemed_at.is_(None),
                               _codes.c.approved.is_(True))
          .values(redeemed_at=bindparam("now")).returning(_codes.c.id))


def ttl() -> int:
    """Seconds the codes live (RFC 8628 3.2 expires_in)."""
    return max(1, int(current_app.config["IDP_DEVICE_CODE_TTL"]))


def normalise_user_code(raw: Any) -> str | None:
    """The 8 letters of a user code as typed, or None when it cannot be one. RFC 8628 6.1: the dashes added for
    readability are stripped (typing them is optional) and the input is uppercased (lower case is the same code);
    spaces, the errant character it names, go too. Any other character makes it no code of ours: it is refused,
    and counts as a wrong code, rather than stripped."""
    if not isinstance(raw, str) or len(raw) > 64:
        return None
    letters = "".join(raw.split()).replace("-", "").upper()
    if len(letters) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in letters):
        return None
    return letters


def shown(letters: str) -> str:
    """A user code as shown: four letters, a hyphen, four letters (RFC 8628 6.1)."""
    return f"{letters[:4]}-{letters[4:]}"


def user_code_hash(letters: str) -> str:
    """A keyed hash of a user code: about 34.6 bits, which a plain hash of a leaked row would give away in
    seconds (SECURITY.md 32)."""
    return code_hash(current_app.config["IDP_SECRET_KEY"], letters, "device")


def pending_by_user_code(raw: Any, now: datetime) -> DeviceCode | None:
    """The undecided, unexpired device code whose user code this is (as typed), or None."""
    letters = normalise_user_code(raw)
    if letters is None:
        return None
    return db.session.execute(select(DeviceCode).where(
        DeviceCode.user_code_hash == user_code_hash(letters), DeviceCode.decided_at.is_(None),
        DeviceCode.expires_at > now)).scalar_one_or_none()


# --- the device authorization endpoint (RFC 8628 3.1, 3.2) ------------------------------------------------------

class DeviceAuthorization(_DeviceAuthorizationEndpoint):
    """Authlib's endpoint: authenticate the client, validate the scope, answer the codes; idp stores them hashed."""

    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS  # RFC 8628 3.1: as at the token endpoint
    INTERVAL = INTERVAL
    USER_CODE_TYPE = "string"  # RFC 8628 6.1's alphabet, shown as WDJB-MJHT (authlib.oauth2.rfc8628.endpoint)

    @property
    def EXPIRES_IN(self) -> int:  # noqa: N802  (Authlib's name, read per request)
        return ttl()

    def authenticate_client(self, request):
        """The first step of Authlib's create_endpoint_response: the client, as at the token endpoint (RFC 6749
        5.2: 401 invalid_client), then what idp refuses before any code is made: a client not registered for this
        grant, a repeated or over-long scope, and scopes beyond the OpenID ones."""
        try:
            client = super().authenticate_client(request)
        except InvalidClientError as error:
            error.status_code = 401
            raise
        if not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
            raise UnauthorizedClientError("This client is not registered for the device authorization grant.")
        scopes = request.payload.datalist.get("scope", [])
        if len(scopes) > 1:
            raise InvalidRequestError("Multiple 'scope' in request.")
        if scopes and len(scopes[0]) > policy.PARAMETER_LIMITS["scope"]:
            raise InvalidRequestError("'scope' is too long.")
        if not set((request.payload.scope or "").split()) <= set(oidc_claims.SCOPES):
            raise InvalidScopeError("The device flow grants the OpenID scopes only.")
        return client

    def get_verification_uri(self) -> str:
        return external_url("device.enter")

    def generate_device_code(self) -> str:
        return new_token(32)  # 256 bits (RFC 8628 5.2)

    def generate_user_code(self) -> str:
        """Authlib's RFC 8628 6.1 code (a CSPRNG), drawn again in the unlikely case that it is taken."""
        while True:
            code = super().generate_user_code()
            taken = db.session.execute(select(DeviceCode.id).where(
                DeviceCode.user_code_hash == user_code_hash(normalise_user_code(code) or code))).first()
            if taken is None:
                return code

    def save_device_credential(self, client_id: str, scope: str | None, data: dict[str, Any]) -> None:
        client = query_client(client_id)
        assert client is not None  # authenticated a moment ago, in this request
        now = utcnow()
        letters = normalise_user_code(data["user_code"])
        assert letters is not None  # generated here
        db.session.add(DeviceCode(
            device_code_hash=token_hash(data["device_code"]), user_code_hash=user_code_hash(letters),
            client_id=client_id, scope=client.get_allowed_scope(scope or ""), created_at=now,
            expires_at=now + timedelta(seconds=data["expires_in"]), interval=data["interval"], acr="", amr=[]))
        audit.record("device.requested", client_id=client_id)
        db.session.commit()


# --- the token endpoint's grant (RFC 8628 3.4, 3.5) -------------------------------------------------------------

class DeviceCodeGrant(DPoPClients, _DeviceCodeGrant):
    """Authlib's grant; idp finds the device code by its hash, and decides what a poll gets from the row."""

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    def authenticate_token_endpoint_client(self):
        client = super().authenticate_token_endpoint_client()
        self.request.client = client  # (Authlib sets it only once the credential is validated)
        return client

    def query_device_credential(self, device_code: str) -> DeviceCode:
        """The client's device code; another client's, or none, is invalid_grant (RFC 6749 5.2: "issued to
        another client"), rather than Authlib's invalid_request (the request itself is well formed)."""
        row = None
        if isinstance(device_code, str) and len(device_code) <= 512:
            row = db.session.execute(_BY_DEVICE_CODE, {"hash": token_hash(device_code)}).scalar_one_or_none()
        if row is None or row.client_id != self.request.client.client_id:
            raise InvalidGrantError("Unknown device_code.")
        return row

    def validate_device_credential(self, credential: DeviceCode) -> SignIn:
        """What this poll gets, in RFC 8628 3.5's terms (Authlib's order: expiry, the user's decision, the pace):
        tokens at most once, whatever number of polls arrive together."""
        row = credential
        now = utcnow()
        if row.redeemed_at is not None:
            raise InvalidGrantError("The device_code was used already.")
        if row.expires_at <= now:
            raise ExpiredTokenError()
        if row.decided_at is not None:
            if not row.approved:
                raise AccessDeniedError()
            # Claimed in the transaction that save_token commits with the tokens: a poll racing this one waits for
            # that commit (PostgreSQL's row lock), then finds the code redeemed (SECURITY.md 32).
            if db.session.execute(_CLAIM, {"row_id": row.id, "now": now}).first() is None:
                raise InvalidGrantError("The device_code was used already.")
            user = row.user
            if user is None or user.disabled:
                db.session.commit()  # redeemed all the same: a refused device code is a used one
                raise InvalidGrantError("The user who approved this device_code cannot sign in.")
            self.request.authorization_code = row  # what the ID token's auth_time, acr, amr and sid come from
            return SignIn(user=user, sid=row.sid, auth_time=row.auth_time, acr=row.acr, amr=list(row.amr or []))
        raise self._pending(row, now)

    @staticmethod
    def _pending(row: DeviceCode, now: datetime) -> AuthorizationPendingError | SlowDownError:
        """RFC 8628 3.5: a poll sooner than the interval after the last one is slow_down, and the interval grows by
        5 seconds "for this and all subsequent requests"; else authorization_pending. Only a poll that is on time
        moves the last poll's time on, by a statement that sees the row as this request read it (so of two polls at
        once, one is on time and the other too early)."""
        last = row.last_polled_at
        on_time = last is None or now >= last + timedelta(seconds=row.interval)
        if on_time:
            moved = db.session.execute(
                update(_codes).where(_codes.c.id == row.id, _codes.c.last_polled_at.is_(None) if last is None
                                     else _codes.c.last_polled_at == last)
                .values(last_polled_at=now).returning(_codes.c.id)).first() is not None
            if moved:
                db.session.commit()
                return AuthorizationPendingError()
        db.session.execute(update(_codes).where(_codes.c.id == row.id)
                           .values(interval=_codes.c.interval + SLOW_DOWN_STEP, last_polled_at=now))
        db.session.commit()
        return SlowDownError()


# --- the hosted pages ---------------------------------------------------------------------------------------------

bp = Blueprint("device", __name__)


@bp.record_once
def register(state) -> None:
    """The grant and the endpoint join the app's authorization server (idp.oidc.server.create_server, which runs
    before the blueprints are registered) with the blueprint that serves them."""
    server = state.app.extensions["idp.oauth"]
    server.register_grant(DeviceCodeGrant, [DeviceIDToken()])
    server.register_endpoint(DeviceAuthorization)


class UserCodeForm(Form):
    """The user code, as the device shows it."""

    user_code = StringField(_l("Code"), validators=[DataRequired(_l("Enter the code.")), Length(max=64)],
                            render_kw={"autocomplete": "off", "autocapitalize": "characters",
                                       "spellcheck": "false"})


class DecisionForm(Form):
    """Allow or deny."""

    allow = SubmitField(_l("Allow"))
    deny = SubmitField(_l("Deny"))


@bp.route("/device_authorization", methods=["POST"])
@csrf.exempt
def device_authorization():
    """The device authorization endpoint (RFC 8628 3.1): form-encoded, answered as JSON, never cached."""
    return current_server().create_endpoint_response(DeviceAuthorization.ENDPOINT_NAME)


@bp.route("/device", methods=["GET", "POST"])
def enter():
    """The verification URI (RFC 8628 3.3): the user types the code the device shows (or arrives with it in the
    query, from verification_uri_complete, and still confirms it). Wrong codes count against the client's IP
    (RFC 8628 5.1)."""
    form = UserCodeForm()
    if request.method == "GET":
        given = request.args.get("user_code")
        letters = normalise_user_code(given)
        if letters is not None:
            form.user_code.data = shown(letters)
        return render_template("oidc/device_enter.html", form=form)
    if not form.validate_on_submit():
        return render_template("oidc/device_enter.html", form=form), 400
    keys = {"ip": client_address()}
    guard = throttle()
    wait = guard.retry_after("device_code", keys)
    if wait:
        return render_template("oidc/device_enter.html", form=form, error=too_many_attempts(wait)), 429
    row = pending_by_user_code(form.user_code.data, utcnow())
    if row is None or query_client(row.client_id) is None:
        guard.failed("device_code", keys)
        audit.record("device.user_code_failed", durable=True)
        db.session.commit()
        return render_template("oidc/device_enter.html", form=form,
                               error=_("That code is not valid, or it has expired.")), 400
    letters = normalise_user_code(form.user_code.data)
    assert letters is not None  # it found a row
    session[FLOW] = {"id": row.id, "user_code": shown(letters), "satisfied": []}
    return redirect(url_for("device.approve"))


def _flow_row(now: datetime) -> tuple[dict[str, Any], DeviceCode, Client] | None:
    """The device code this browser entered, while it is still undecided and unexpired, and its client."""
    flow = session.get(FLOW)
    if not isinstance(flow, dict) or not isinstance(flow.get("id"), int):
        return None
    row = db.session.get(DeviceCode, flow["id"])
    if row is None or row.decided_at is not None or row.expires_at <= now:
        return None
    client = query_client(row.client_id)
    if client is None or not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
        return None
    return flow, row, client


def _policy_request(row: DeviceCode, client: Client, live: LoginSession | None, satisfied: set[str]) -> policy.Request:
    """The checks /authorize runs (idp.oidc.policy), for a request without prompt, max_age or acr_values. Consent is
    not among them: this page asks it every time, beside the user code (RFC 8628 5.4)."""
    return policy.Request(first_party=True, scopes=row.scope.split(), prompt=set(), max_age=None, acr_values=[],
                          session=live, satisfied=satisfied, client_min_acr=mfa.client_level(client))


def _remember_consent(user_id: int, client_id: str, scopes: list[str]) -> None:
    """What the consent screen of /authorize records (idp.login.steps.consent): so that the client is listed at
    /account/apps, where withdrawing the consent revokes the tokens the device got."""
    consent = db.session.execute(db.select(Consent).where(Consent.user_id == user_id,
                                                          Consent.client_id == client_id)).scalar_one_or_none()
    if consent is None:
        consent = Consent(user_id=user_id, client_id=client_id, scopes=[])
        db.session.add(consent)
    consent.scopes = scopes if consent.revoked_at is not None else list(dict.fromkeys([*consent.scopes, *scopes]))
    consent.revoked_at = None


def _invalid():
    session.pop(FLOW, None)
    return render_template("oidc/device_enter.html", form=UserCodeForm(),
                           error=_("That code is not valid, or it has expired.")), 400


@bp.route("/device/approve", methods=["GET", "POST"])
def approve():
    """Sign in as the client's policy demands (the sign-in transaction /authorize starts), then allow or deny."""
    now = utcnow()
    found = _flow_row(now)
    if found is None:
        return _invalid()
    flow, row, client = found
    live = current_session()
    satisfied = set(flow.get("satisfied") or [])
    if request.method == "GET":
        answered = transaction.load_completed(request.args.get(TXN_PARAM), binding=binding(), now=now,
                                              address=this_address())
        if answered is not None:
            satisfied |= set(answered.state.reasons) | set(answered.state.satisfied)
            db.session.commit()
            session[FLOW] = {**flow, "satisfied": sorted(satisfied)}
    failures = policy.evaluate(_policy_request(row, client, live, satisfied), now)
    if failures:
        reasons = [f.reason for f in failures]
        keep_user = live is not None and "no_session" not in reasons
        user = live.user if live is not None else None
        return begin_transaction(
            reasons=reasons, return_to=url_for("device.approve"), user=user if keep_user else None,
            tid_param=TXN_PARAM, client_id=client.client_id, client_name=client.name, scopes=row.scope.split(),
            login_hint=user.email if user is not None else "", satisfied=sorted(satisfied),
            session_amr=list(live.amr) if keep_user and live is not None else None)
    assert live is not None  # check_session passed
    form = DecisionForm()
    if request.method == "GET" or not form.validate_on_submit():
        return render_template("oidc/device_approve.html", form=form, client_name=client.name,
                               user_code=flow.get("user_code", ""), user=live.user,
                               scopes=[(s, oidc_claims.SCOPE_DESCRIPTIONS.get(s, s)) for s in row.scope.split()])
    allowed = bool(form.allow.data)
    decided = db.session.execute(
        update(_codes).where(_codes.c.id == row.id, _codes.c.decided_at.is_(None), _codes.c.expires_at > now)
        .values(decided_at=now, approved=allowed, user_id=live.user.id, sid=live.sid, auth_time=live.auth_time,
                acr=live.acr, amr=list(live.amr))
        .returning(_codes.c.id)).first()
    if decided is None:  # decided meanwhile in another tab, or expired: a user code is used once
        db.session.rollback()
        return _invalid()
    if allowed and not client.first_party:
        _remember_consent(live.user.id, client.client_id, row.scope.split())
    audit.record("device.approved" if allowed else "device.denied", subject=live.user, client_id=client.client_id,
                 sid=live.sid, scope=row.scope)
    db.session.commit()
    session.pop(FLOW, None)
    return render_template("oidc/device_done.html", allowed=allowed, client_name=client.name)
