"""Development only: the outbox (mail and texts that would have been sent) and a relying party built in (/demo)."""

import base64
import hashlib
from urllib.parse import urlencode

import requests
from flask import Blueprint, abort, current_app, redirect, render_template, request, session, url_for
from joserfc import jwt
from joserfc.errors import JoseError

from idp import demo
from idp.jobs.mail import read_outbox
from idp.oidc import keys
from idp.security.tokens import new_token

bp = Blueprint("dev", __name__, url_prefix="/dev")


@bp.get("/outbox")
def outbox():
    """List the messages in the dev outbox, newest first."""
    return render_template("dev/outbox.html", messages=read_outbox(current_app.config["IDP_OUTBOX_DIR"]))


@bp.get("/outbox/<message_id>")
def message(message_id: str):
    """Show one message of the dev outbox."""
    for record in read_outbox(current_app.config["IDP_OUTBOX_DIR"]):
        if record["id"] == message_id:
            return render_template("dev/message.html", message=record)
    abort(404)


# --- the relying party built into development: /demo ------------------------------------------------------------

demo_bp = Blueprint("demo", __name__, url_prefix="/demo")


@demo_bp.get("")
def demo_home():
    """A "Sign in with idp" page: the demo client as an application would use idp."""
    return render_template("dev/demo.html", issuer=current_app.config["IDP_ISSUER"], result=None, error=None)


@demo_bp.get("/start")
def demo_start():
    """Start a fresh authorization request (random state, nonce and PKCE verifier, kept in this browser)."""
    issuer = current_app.config["IDP_ISSUER"]
    demo.demo_client_credentials()
    callback = demo.demo_callback_uri(issuer)
    demo.registered_for(callback)
    verifier = new_token(48)
    pending = {"state": new_token(16), "nonce": new_token(16), "verifier": verifier}
    session["demo"] = pending
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode({"response_type": "code", "client_id": demo.DEMO_CLIENT_ID, "redirect_uri": callback,
                       "scope": "openid profile email offline_access", "state": pending["state"],
                       "nonce": pending["nonce"], "code_challenge": challenge, "code_challenge_method": "S256"})
    return redirect(f"{url_for('oidc.authorize')}?{query}")


@demo_bp.get("/callback")
def demo_callback():
    """Redeem the code over HTTP as a client would, check the ID token, call userinfo and refresh once."""
    issuer = current_app.config["IDP_ISSUER"]
    pending = session.pop("demo", None) or {}
    error = request.args.get("error")
    if error or not pending or request.args.get("state") != pending.get("state"):
        message = request.args.get("error_description") or error or "This answer does not belong to a sign-in " \
            "started from this page (state mismatch). Start again."
        return render_template("dev/demo.html", issuer=issuer, result=None, error=message), 400
    client_id, secret = demo.demo_client_credentials()
    auth = (client_id, secret)
    try:
        tokens = requests.post(f"{issuer}/token", auth=auth, timeout=10, data={
            "grant_type": "authorization_code", "code": request.args.get("code", ""),
            "redirect_uri": demo.demo_callback_uri(issuer), "code_verifier": pending["verifier"]}).json()
        if "id_token" not in tokens:
            raise ValueError(tokens.get("error_description") or tokens.get("error") or "no ID token")
        claims = jwt.decode(tokens["id_token"], keys.verification_keyset(), algorithms=["RS256", "ES256"]).claims
        if claims.get("nonce") != pending["nonce"] or claims.get("iss") != issuer or claims.get("aud") not in (
                client_id, [client_id]):
            raise ValueError("the ID token is not for this request")
        userinfo = requests.get(f"{issuer}/userinfo", timeout=10,
                                headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
        refreshed = requests.post(f"{issuer}/token", auth=auth, timeout=10, data={
            "grant_type": "refresh_token", "refresh_token": tokens.get("refresh_token", "")}).json()
    except (requests.RequestException, ValueError, JoseError) as exc:
        return render_template("dev/demo.html", issuer=issuer, result=None, error=str(exc)), 502
    rotated = "access_token" in refreshed and refreshed.get("refresh_token") != tokens.get("refresh_token")
    result = {"claims": claims, "userinfo": userinfo, "scope": tokens.get("scope"), "refreshed": rotated,
              "refresh_error": refreshed.get("error")}
    return render_template("dev/demo.html", issuer=issuer, result=result, error=None)
