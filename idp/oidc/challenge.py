"""The Authorization Challenge Endpoint of OAuth 2.0 for First-Party Applications (draft-ietf-oauth-first-party-apps-04,
"the draft" below): a first-party app signs its user in without a browser, and gets an authorization code to redeem
at /token with PKCE.

It runs the hosted pages' sign-in engine (idp.login: the same transaction, planner, steps, throttles, lockout,
audit and assurance rules); each request answers the step the plan asks for now, and the answer is JSON instead
of a page:
- the first request carries the authorization request (draft 5.1: client_id, response_type=code, scope, PKCE,
  acr_values, nonce) and, usually, ``username`` and ``password``;
- while a step is left, 403 ``insufficient_authorization`` with a new ``auth_session`` (draft 5.2.2) says which
  step and which factors the user has (``otp``, ``sms``, ``email_otp``, ``recovery_code``, ``webauthn`` with its
  request options); the app posts ``code`` (or ``credential``, or ``factor`` to pick another) with it;
- when every step has passed, 200 with ``authorization_code`` (draft 5.2.1);
- what the API cannot do (enrol a factor) is 403 ``redirect_to_web`` (draft 5.2.2.1.1) with a ``request_uri`` and
  ``expires_in`` (RFC 9126 2.2): the first request's authorization request, pushed (idp.oidc.par.for_challenge),
  which the app opens in a browser as /authorize?client_id=...&request_uri=...; the user finishes there and the
  app gets its code at its redirect URI. The first request may name that redirect URI (``redirect_uri``, one the
  client registered); otherwise it is the client's only registered one, and with none to use the answer goes
  without a ``request_uri`` (the app then starts a code flow of its own).

The ``auth_session`` (draft 5.3.1, 9.6) is the login transaction's id and a 256-bit secret whose hash, with the
client's id, is the transaction's binding: it is bound to the client, changes at every response, and expires
with the transaction; a replayed, foreign or expired one is ``invalid_session``.

DPoP (RFC 9449; the draft's DPoP section under proof of possession): when the first request carries a DPoP proof,
the ``auth_session`` is bound to that proof's key. Every later request with it, a step-up on the session it ended
in included, must carry a valid proof by the same key, or it is ``invalid_dpop_proof`` and the ``auth_session``
stays unused (whoever copied it without the key cannot use it up); the authorization code it yields is bound to the
key as a ``dpop_jkt`` binds one (RFC 9449 10), and so is the pushed request of a ``redirect_to_web`` answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from idp import audit
from idp.extensions import csrf, db, limiter
from idp.http import external_url
from idp.login import consume, devices, mfa, planner, sessions, transaction
from idp.login.assurance import LEVELS, meets
from idp.login.browser import throttle
from idp.login.context import Step, StepContext
from idp.models import Client, LoginSession, LoginTransaction, TransactionState, User, utcnow
from idp.oidc import claims as oidc_claims
from idp.oidc import dpop, par
from idp.oidc.server import client_view, current_server, store_code
from idp.security.tokens import new_token, same, token_hash

bp = Blueprint("challenge", __name__)
csrf.exempt(bp)  # a back-channel API of first-party apps: no cookies, no forms

# The names the API gives the factors (the draft leaves them to the server): TOTP is "otp", the others as idp names
# them.
API_NAMES = {"totp": "otp"}
KINDS = {name: kind for kind, name in API_NAMES.items()}
MAX_PARAMETER = 4096  # longer values are refused (a password or an assertion fits; idp.oidc.policy does likewise)


def _limit() -> str:
    return current_app.config["IDP_RATELIMIT_FORMS"]


def _error(status: int, error: str, description: str, **extra: Any) -> Response:
    """An error object (draft 5.2.2; RFC 6749 5.2): ASCII description, never cached."""
    body = {"error": error, "error_description": description, **extra}
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _binding(client: Client, secret: str) -> str:
    return f"challenge:{client.client_id}:{secret}"


def _new_session(txn: LoginTransaction, client: Client) -> str:
    """A new auth_session for the transaction; the previous one stops working."""
    secret = new_token(32)
    txn.binding_hash = token_hash(_binding(client, secret))
    return f"{txn.id}.{secret}"


def _claim(txn: LoginTransaction, client: Client, secret: str) -> bool:
    """Take the auth_session: its binding moves to a new secret by one conditional UPDATE, so of two requests that
    present it at the same moment only one goes on (the other gets invalid_session); the answer hands out the next
    one (_new_session)."""
    return consume.binding(txn, token_hash(_binding(client, secret)), token_hash(new_token(32)))


def _load(auth_session: str, client: Client, proof: dpop.Proof | None) -> LoginTransaction | Response | None:
    tid, _dot, secret = auth_session.partition(".")
    if not secret:
        return None
    txn = transaction.load(tid, binding=_binding(client, secret), now=utcnow())
    if txn is not None and not _same_key(txn, proof):  # checked before the claim: a refusal leaves it unused
        return _wrong_key()
    return txn if txn is not None and _claim(txn, client, secret) else None


def _same_key(txn: LoginTransaction, proof: dpop.Proof | None) -> bool:
    """Whether this request may go on with the transaction: it is bound to no DPoP key, or the request's proof is by
    the key it is bound to (the key of its first request)."""
    bound = (txn.state.code_request or {}).get("dpop_jkt")
    return not bound or (proof is not None and proof.jkt == bound)


def _wrong_key() -> Response:
    db.session.rollback()
    return _error(400, "invalid_dpop_proof", "This auth_session is bound to a DPoP key: send a DPoP proof by that "
                                             "key.")


def _session_client(auth_session: str) -> Client | None:
    """The public client whose auth_session this is (draft 5.1: a follow-up may name its client by the
    auth_session alone); the binding is checked afterwards. A confidential client always authenticates (4.1)."""
    tid = auth_session.partition(".")[0]
    txn = db.session.get(LoginTransaction, tid) if 0 < len(tid) <= 64 else None
    if txn is None or not txn.state.client_id:
        return None
    client = db.session.execute(db.select(Client).where(Client.client_id == txn.state.client_id)).scalar_one_or_none()
    return client if client is not None and client.token_endpoint_auth_method == "none" else None


def _client(data: Mapping[str, str]) -> Client | Response:
    """The first-party client making the request, authenticated as at the token endpoint (draft 4.1, 9.4)."""
    server = current_server()
    try:
        client = server.authenticate_client(server.create_oauth2_request(request),
                                            ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
                                            endpoint="authorization_challenge")
    except OAuth2Error as error:
        anonymous = not data.get("client_id") and "Authorization" not in request.headers
        found = _session_client(data["auth_session"]) if anonymous and data.get("auth_session") else None
        if found is None:
            return _error(401, "invalid_client", error.description or "Client authentication failed.")
        client = found
    if not client.first_party:  # draft 5, 9.1: first parties only
        return _error(400, "unauthorized_client", "This endpoint is open to first-party clients only.")
    if not client.check_grant_type("authorization_code"):
        return _error(400, "unauthorized_client", "This client may not use the authorization_code grant.")
    return client


def _parameters() -> Mapping[str, str] | Response:
    data = request.form
    if request.mimetype != "application/x-www-form-urlencoded":
        return _error(400, "invalid_request", "Send the parameters form-encoded (draft 4.1).")
    for name, value in data.items(multi=True):
        if len(value) > MAX_PARAMETER or "\x00" in value:
            return _error(400, "invalid_request", f"The parameter {name[:40]} is too long or holds a NUL.")
    if any(len(data.getlist(name)) > 1 for name in data):
        return _error(400, "invalid_request", "A parameter was sent more than once.")
    return data


def _signed_in(auth_session: str, client: Client,
               proof: dpop.Proof | None) -> tuple[LoginSession, list[str]] | Response | None:
    """The live session an earlier challenge of this client ended in, named by the auth_session its code came with
    (draft 6.1: kept "to restore the context of a previous session and prompt only for the needed step-up
    factors")."""
    tid, _dot, secret = auth_session.partition(".")
    txn = db.session.get(LoginTransaction, tid) if secret and 0 < len(tid) <= 64 else None
    if txn is None or txn.completed_at is None or not same(txn.binding_hash, token_hash(_binding(client, secret))):
        return None
    sid = (txn.state.code_request or {}).get("sid")
    if not _same_key(txn, proof):
        return _wrong_key()
    # Used once: a step-up on it gets its own auth_session when it completes, so a copied one cannot mint codes.
    if not _claim(txn, client, secret):
        return None
    live = db.session.execute(db.select(LoginSession).where(LoginSession.sid == sid)).scalar_one_or_none() \
        if sid else None
    if live is None or not _live(live):
        return None
    return live, list(txn.state.scopes)


def _live(session: LoginSession | None) -> bool:
    """Whether a session is still one to build on: not ended, not timed out, its user enabled."""
    if session is None or session.ended_at is not None or session.user.disabled or session.user.deleted_at:
        return False
    cfg = current_app.config
    return session.timed_out(utcnow(), idle_timeout=cfg["IDP_SESSION_IDLE_TIMEOUT"],
                             max_age=cfg["IDP_SESSION_MAX_AGE"]) is None


def _start(client: Client, data: Mapping[str, str], live: LoginSession | None = None,
           granted: list[str] | None = None, proof: dpop.Proof | None = None) -> LoginTransaction | Response:
    """A new transaction for the authorization request the first request carries (draft 5.1); with ``live``, a
    step-up of that session (RFC 9470: acr_values and max_age ask for more than it has)."""
    if data.get("response_type") != "code":
        return _error(400, "unsupported_response_type", "response_type must be code.")
    scopes = (data.get("scope") or "openid").split()
    allowed = set(client.scope.split())
    known = {*oidc_claims.SCOPES, *oidc_claims.ADMIN_SCOPES, oidc_claims.ACCOUNT_SCOPE}
    if not set(scopes) <= allowed or not set(scopes) <= known:
        return _error(400, "invalid_scope", "A requested scope is not allowed for this client.")
    challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
    if challenge is None:  # every client here, public or not (the code travels in a JSON answer)
        return _error(400, "invalid_request", "Send a PKCE code_challenge (S256).")
    if challenge is not None and (method != "S256" or not 43 <= len(challenge) <= 128):
        return _error(400, "invalid_request", "The code_challenge must be S256, 43 to 128 characters.")
    acr_values = (data.get("acr_values") or "").split()
    if any(value not in LEVELS for value in acr_values):
        return _error(400, "invalid_request", f"acr_values must be among {' '.join(LEVELS)}.")
    max_age = data.get("max_age")
    if max_age is not None and not (max_age.isascii() and max_age.isdigit() and len(max_age) <= 9):
        return _error(400, "invalid_request", "max_age must be a number of seconds.")
    redirect_uri = data.get("redirect_uri")  # only where a redirect_to_web answer sends the browser's code
    if redirect_uri is not None and not client.check_redirect_uri(redirect_uri):  # SECURITY.md 1
        return _error(400, "invalid_request", "redirect_uri is not one this client registered.")
    now = utcnow()
    reasons = ["no_session"]
    if live is not None:  # a step-up: only what the request asks beyond the session is asked for
        if not acr_values and max_age is None:
            return _error(400, "invalid_request", "A request on a signed-in auth_session is a step-up: send "
                                                  "acr_values or max_age (RFC 9470).")
        if not set(scopes) <= set(granted or []):
            return _error(400, "invalid_scope", "A step-up cannot ask for more scope than the sign-in it builds on.")
        reasons = ["acr"] if acr_values else []
        if max_age is not None and (now - live.auth_time).total_seconds() > int(max_age):
            reasons.append("max_age")
    state = TransactionState(
        reasons=reasons, return_to="", client_id=client.client_id, client_name=client.name, scopes=scopes,
        acr_values=acr_values, login_hint=(data.get("username") or data.get("login_hint") or "")[:320],
        session_amr=list(live.amr) if live is not None else None,
        code_request={"code_challenge": challenge, "code_challenge_method": method if challenge else None,
                      "nonce": data.get("nonce"), "previous_sid": live.sid if live is not None else None,
                      "redirect_uri": redirect_uri, "dpop_jkt": proof.jkt if proof is not None else None})
    txn = transaction.start(binding=new_token(32), state=state, now=now,
                            ttl=current_app.config["IDP_LOGIN_TRANSACTION_TTL"],
                            user=live.user if live is not None else None)
    db.session.flush()
    return txn


def start_signup(client: Client, data: Mapping[str, Any], user: User | None, existing: str | None) -> Response:
    """A sign-up made through the account API (idp.account.api): the transaction a new account signs in with once
    its address is verified by the mailed code, answered here. An address that has an account gets the same
    answer and the "account exists" mail (SECURITY.md 19)."""
    challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
    if client.token_endpoint_auth_method == "none" and (not isinstance(challenge, str) or method != "S256"
                                                        or not 43 <= len(challenge) <= 128):
        return _error(400, "invalid_request", "A public client must send a PKCE code_challenge (S256).")
    scopes = str(data.get("scope") or "openid").split()
    if not set(scopes) <= set(client.scope.split()):
        return _error(400, "invalid_scope", "A requested scope is not allowed for this client.")
    state = TransactionState(
        reasons=["signup"], return_to="", client_id=client.client_id, client_name=client.name, scopes=scopes,
        done=["password"], amr=["pwd"] if user is not None else [], existing_account=existing,
        code_request={"code_challenge": challenge, "code_challenge_method": method if challenge else None,
                      "nonce": data.get("nonce")})
    txn = transaction.start(binding=new_token(32), state=state, now=utcnow(),
                            ttl=current_app.config["IDP_LOGIN_TRANSACTION_TTL"], user=user)
    db.session.flush()
    ctx = _context(txn, {})
    step = planner.next_step(ctx)
    assert step is planner.EMAIL_VERIFICATION
    auth_session = _new_session(txn, client)
    step.begin(ctx)  # mails the code (or, for an address with an account, the "account exists" mail)
    db.session.commit()
    response = jsonify({"auth_session": auth_session, "step": "email_verification"})
    response.status_code = 202
    response.headers["Cache-Control"] = "no-store"
    return response


def _context(txn: LoginTransaction, data: Mapping[str, str]) -> StepContext:
    return StepContext(txn=txn, now=utcnow(), ip=g.client_ip, user_agent=g.user_agent, config=current_app.config,
                       throttle=throttle(), url=external_url, find_client=client_view,
                       device_token=data.get("device_token") or None)


def _answer(step: Step, data: Mapping[str, str]) -> MultiDict | None:
    """The step's form fields from the request, or None when the request does not answer this step."""
    if step is planner.PASSWORD:
        if "password" not in data:
            return None
        return MultiDict({"email": data.get("username", ""), "password": data.get("password", "")})
    if "credential" in data:
        return MultiDict({"credential": data["credential"], "remember": data.get("remember_device", "")})
    if "code" in data:
        return MultiDict({"code": data["code"], "remember": "y" if data.get("remember_device") == "true" else ""})
    return None


def _describe(ctx: StepContext, step: Step, auth_session: str, error: str = "", notice: str = "") -> Response:
    """403 insufficient_authorization (draft 5.2.2.1): what the app asks its user for next; after a wrong answer
    400 access_denied (5.2.2: "incorrect data"), the same for an unknown account as for a wrong password, with the
    step to try again and a new auth_session."""
    variables = step.begin(ctx)  # sends the text message or mail of a code step, makes a WebAuthn challenge
    body: dict[str, Any] = {"auth_session": auth_session}
    if step is planner.PASSWORD:
        body["step"] = "password"
        description = error or "Send username and password."
    elif step is planner.EMAIL_VERIFICATION:
        body["step"] = "email_verification"
        description = error or "Send the code mailed to the address (resend=true for a new one)."
    else:
        body["step"] = API_NAMES.get(step.name, step.name)
        body["factors"] = [API_NAMES.get(kind, kind) for kind in mfa.choices(ctx)]
        if step.name == "webauthn":
            body["webauthn_options"] = variables.get("options")
        description = error or f"Send the {body['step']} answer (code, or credential for webauthn)."
    if notice:
        description = notice
    if error:
        return _error(400, "access_denied", description, **body)
    return _error(403, "insufficient_authorization", description, **body)


def _redirect_to_web(ctx: StepContext, client: Client, description: str) -> Response:
    """403 redirect_to_web (draft 5.2.2.1.1), with the pushed request the app opens in a browser when there can be
    one (idp.oidc.par.for_challenge)."""
    pushed = par.for_challenge(client, ctx.txn.state, ctx.now)
    return _error(403, "redirect_to_web", description, **(pushed or {}))


def _complete(ctx: StepContext, client: Client) -> Response:
    """Every step passed: a session (no cookie: the app holds tokens), the code, and the device token."""
    txn, user = ctx.txn, ctx.txn.user
    assert user is not None
    request_data = dict(txn.state.code_request or {})
    previous_sid = request_data.get("previous_sid")
    previous = db.session.execute(db.select(LoginSession).where(LoginSession.sid == previous_sid)
                                  ).scalar_one_or_none() if previous_sid else None
    if previous_sid and not _live(previous):
        # The session a step-up builds on ended meanwhile (signed out everywhere, a password reset): the second
        # factor alone must not open a new one.
        db.session.rollback()
        return _error(400, "invalid_session", "The session this step-up builds on has ended: sign in again.")
    if txn.state.amr or previous is None:
        amr = mfa.effective_amr(txn.state.amr, mfa.remembered(ctx))
        live, _cookie = sessions.start(user, amr=amr, now=ctx.now, ip=ctx.ip, user_agent=ctx.user_agent,
                                       previous=previous, fresh_login="pwd" in txn.state.amr or previous is None)
    else:  # a step-up the session already satisfies: its code says what the session has
        live = previous
    txn.completed_at = ctx.now
    db.session.flush()
    audit.record("login.success", subject=user, amr=live.amr, acr=live.acr, sid=live.sid, client_id=client.client_id,
                 via="challenge")
    device_token = devices.seen(user, ctx, remember=txn.state.remember_device, sid=live.sid)
    # The auth_session stays with the app (draft 5.3.1, 6.1): a later step-up names this session by it.
    transaction.update(txn, code_request={**request_data, "sid": live.sid})
    auth_session = _new_session(txn, client)
    scope = " ".join(txn.state.scopes)
    if set(txn.state.scopes) & set(oidc_claims.ADMIN_SCOPES):
        scope = oidc_claims.grantable_scope(scope, user.roles_at(ctx.now),
                                            meets(live.acr, current_app.config["IDP_ADMIN_ACR"]))
    code = new_token(32)
    store_code(
        code_hash=token_hash(code), client_id=client.client_id, user_id=user.id, redirect_uri="", scope=scope,
        nonce=request_data.get("nonce"), code_challenge=request_data.get("code_challenge"),
        code_challenge_method=request_data.get("code_challenge_method"), claims=None, sid=live.sid,
        auth_time=live.auth_time, acr=live.acr, amr=list(live.amr), issued_at=ctx.now,
        dpop_jkt=request_data.get("dpop_jkt"),  # bound as a dpop_jkt binds a code (RFC 9449 10)
        expires_at=ctx.now + timedelta(seconds=current_app.config["IDP_AUTH_CODE_TTL"]))
    db.session.commit()
    body = {"authorization_code": code, "auth_session": auth_session,
            **({"device_token": device_token} if device_token else {})}
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/authorize-challenge")
@limiter.limit(_limit)
def authorize_challenge() -> Response:
    """The Authorization Challenge Endpoint (draft 4.1)."""
    data = _parameters()
    if isinstance(data, Response):
        return data
    client = _client(data)
    if isinstance(client, Response):
        return client
    if data.get("client_id") and data["client_id"] != client.client_id:  # draft 5.1
        return _error(400, "invalid_request", "client_id names another client than the one authenticated.")
    try:  # RFC 9449 4.3, before anything is used up
        proof = dpop.check()
    except dpop.DPoPError as error:
        return dpop.error_response(error)
    auth_session = data.get("auth_session")
    if auth_session:
        found = _load(auth_session, client, proof)
        if found is None and (signed := _signed_in(auth_session, client, proof)) is not None:
            if isinstance(signed, Response):
                return signed
            # A new authorization request on the app's session (step-up).
            stepping = _start(client, data, *signed, proof=proof)
            if isinstance(stepping, Response):
                return stepping
            found = stepping
        if isinstance(found, Response):
            return found
        if found is None:
            db.session.rollback()
            return _error(400, "invalid_session", "The auth_session is unknown, used, expired or another client's.")
        txn = found
    else:
        started = _start(client, data, proof=proof)
        if isinstance(started, Response):
            return started
        txn = started
    ctx = _context(txn, data)
    wanted = KINDS.get(data.get("factor", ""), data.get("factor", ""))
    if wanted:
        if wanted in mfa.choices(ctx):
            transaction.update(txn, factor=wanted)
            ctx = _context(txn, data)
    return _step(ctx, client, data)


def _step(ctx: StepContext, client: Client, data: Mapping[str, str]) -> Response:
    txn = ctx.txn
    current = planner.next_step(ctx)
    error = ""
    notice = ""
    if current is not None and data.get("resend") == "true":
        notice = _ascii(current.resend(ctx) or "")  # a new code after the cooldown, or how long to wait
    elif current is not None and current not in (planner.ENROL, planner.CONSENT):
        answer = _answer(current, data)
        if answer is not None:
            form = current.form_class(formdata=answer, meta={"csrf": False})
            if form.validate():
                outcome = current.verify(ctx, form.data)
                if outcome.ok:
                    transaction.mark_done(txn, current.name, outcome.amr)
                    ctx = _context(txn, data)
                    current = planner.next_step(ctx)
                else:
                    error = _ascii(outcome.error or "")
            else:
                error = "The answer is malformed."
    if current is None:
        return _complete(ctx, client)
    if current is planner.ENROL:
        response = _redirect_to_web(ctx, client, "The user must add a second factor first, in a browser.")
        db.session.commit()
        return response
    if current is planner.CONSENT:  # first-party clients are never asked; kept for a plan that changes
        response = _redirect_to_web(ctx, client, "The user must consent in a browser.")
        db.session.commit()
        return response
    auth_session = _new_session(txn, client)
    response = _describe(ctx, current, auth_session, error, notice)
    db.session.commit()  # attempt counters, audit rows, the new auth_session: also when the answer failed
    return response


def _ascii(text: str) -> str:
    """A step's message (in the user's language) as an error_description may carry it (RFC 6749 5.2: ASCII)."""
    return "".join(ch for ch in str(text) if 0x20 <= ord(ch) <= 0x7E and ch not in '"\\') or "The answer is wrong."
