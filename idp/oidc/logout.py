"""Logout for every client a sign-in session signed into: OpenID Connect Back-Channel Logout 1.0 (a logout token
POSTed from the server, by a job) and Front-Channel Logout 1.0 (invisible iframes on the signed-out page).

Which clients: those an authorization code was issued to from the session (``session_clients``, written with the
code, whichever endpoint issued it); a client that never took part hears nothing. When: every time idp ends a
session (idp.login.sessions.end): sign-out, RP-initiated logout, the account page, the new-sign-in mail's link, an
administrator, a password reset, a disabled or deleted user, a new sign-in replacing the session. Not when a
session runs out by the clock: that is noticed only when the session is next presented, if ever, which would make
the notice arrive at an arbitrary time (clients bound their own sessions by the ID token's lifetime).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import requests
from authlib.common.urls import add_params_to_uri
from flask import Flask, current_app, g, has_request_context
from joserfc import jwt
from werkzeug.wrappers import Response

from idp import audit
from idp.extensions import db
from idp.http import CSP
from idp.jobs import enqueue
from idp.models import Client, LoginSession, SessionClient, User, utcnow
from idp.oidc import keys
from idp.oidc.registration import origin_of
from idp.oidc.server import outbound_public_only
from idp.security.fetch import check_destination
from idp.security.tokens import new_token

# Back-Channel Logout 1.0 2.4: the event that makes a JWT a logout token.
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# How long a logout token is valid: it is sent at once (a retry signs a new one), so two minutes are plenty.
LOGOUT_TOKEN_TTL = 120
# Back-Channel Logout 1.0 2.5: a short timeout; the job is retried on failure (IDP_JOB_RETRY_INTERVALS).
TIMEOUT = (3.05, 5)
# Ends by the clock (LoginSession.timed_out): not told (see the module's docstring).
CLOCK_REASONS = frozenset({"idle_timeout", "max_age"})

_FRAMES = "idp.logout.frames"  # g: the front-channel URIs of the sessions this request ended
_SHOWN = "idp.logout.frames_shown"  # g: the page rendered them (its CSP must allow their origins)


# --- who took part --------------------------------------------------------------------------------------------
# Each code issued from a session notes its client in session_clients (idp.oidc.server.store_code).

def participants(sid: str) -> list[Client]:
    """The clients that the session ``sid`` signed into (those still registered), in the order they joined."""
    return list(db.session.execute(
        db.select(Client).join(SessionClient, SessionClient.client_id == Client.client_id)
        .where(SessionClient.sid == sid).order_by(SessionClient.id)).scalars())


# --- the session ended ----------------------------------------------------------------------------------------

def session_ended(session: LoginSession, reason: str) -> None:
    """Tell the clients the session signed into (called by idp.login.sessions.end, before the caller commits):
    a back-channel job each, sent once the commit has returned; the front-channel URIs for the signed-out page."""
    if reason in CLOCK_REASONS:
        return
    for client in participants(session.sid):
        if client.backchannel_logout_uri:
            enqueue("backchannel_logout", client_id=client.client_id, sid=session.sid, sub=session.user.subject)
        if client.frontchannel_logout_uri and has_request_context():
            uri = client.frontchannel_logout_uri
            if client.frontchannel_logout_session_required:  # Front-Channel Logout 1.0 2
                uri = add_params_to_uri(uri, {"iss": current_app.config["IDP_ISSUER"], "sid": session.sid})
            frames = g.setdefault(_FRAMES, [])
            if uri not in frames:
                frames.append(uri)


def logout_token(client: Client, *, sub: str, sid: str | None, now: datetime) -> str:
    """A logout token for ``client`` (Back-Channel Logout 1.0 2.4): signed as its ID tokens are, `typ:
    logout+jwt` (2.4, as since the 2023 errata update), with `iss`, `aud`, `iat`, `exp`, `jti`, the event, `sub`
    and `sid`, and never a `nonce` (2.4: forbidden, so it cannot pass for an ID token)."""
    issued = int(now.timestamp())
    claims: dict[str, Any] = {"iss": current_app.config["IDP_ISSUER"], "aud": client.client_id, "iat": issued,
                              "exp": issued + LOGOUT_TOKEN_TTL, "jti": new_token(16), "sub": sub,
                              "events": {BACKCHANNEL_EVENT: {}}}
    if sid:
        claims["sid"] = sid
    alg = client.id_token_signed_response_alg or "RS256"
    return jwt.encode({"alg": alg, "typ": "logout+jwt"}, claims, keys.signing_keyset(), algorithms=[alg])


def deliver_backchannel(client_id: str, sid: str | None, sub: str) -> None:
    """The job: POST a logout token to the client's back-channel logout URI (Back-Channel Logout 1.0 2.5, form
    encoded, no redirects followed); anything but a 2xx answer raises, so the job is retried (inline briefly, on
    RQ by IDP_JOB_RETRY_INTERVALS) and each failure audited. A client deleted or no longer registered for it
    meanwhile is not told."""
    client = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none()
    if client is None or not client.backchannel_logout_uri:
        return
    token = logout_token(client, sub=sub, sid=sid, now=utcnow())
    # A public address only, in production (idp.security.fetch): the URI is the client's, perhaps a stranger's.
    check_destination(client.backchannel_logout_uri, public_only=outbound_public_only())
    response = requests.post(client.backchannel_logout_uri, data={"logout_token": token}, timeout=TIMEOUT,
                             allow_redirects=False, headers={"Cache-Control": "no-store"})
    response.close()
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"back-channel logout answered HTTP {response.status_code}")
    user = db.session.execute(db.select(User).where(User.subject == sub)).scalar_one_or_none()
    audit.record("logout.backchannel_sent", subject=user, client_id=client_id, sid=sid,
                 status=response.status_code)


# --- the signed-out page ----------------------------------------------------------------------------------------

def frontchannel_frames() -> list[str]:
    """The front-channel logout URIs the signed-out page frames (a template global): those of the sessions this
    request ended. Calling it lets the page's CSP frame their origins, and only theirs."""
    frames = list(g.get(_FRAMES, []))
    if frames:
        g.setdefault(_SHOWN, True)
    return frames


def pending_frames() -> bool:
    """Whether this request ended a session whose clients must be told in the browser."""
    return bool(g.get(_FRAMES))


def _frame_sources(response: Response) -> Response:
    """A page that framed front-channel logout URIs may frame their origins (CSP frame-src); every other keeps
    the default (default-src 'none')."""
    if g.get(_SHOWN) and response.mimetype == "text/html":
        origins = " ".join(dict.fromkeys(origin_of(uri) for uri in g.get(_FRAMES, [])))
        policy = current_app.extensions.get("idp.csp", CSP)
        response.headers["Content-Security-Policy"] = f"{policy}; frame-src {origins}"
    return response


def init_app(app: Flask) -> None:
    """The template global and the CSP hook of the signed-out page (runs before idp.http.security_headers, which
    keeps a policy already set)."""
    app.add_template_global(frontchannel_frames, "frontchannel_frames")
    app.after_request(_frame_sources)
