"""The protocol endpoints: discovery, JWKS, authorization, pushed authorization requests, token, userinfo, revocation,
introspection, end session."""

from __future__ import annotations

import hashlib
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oidc.core.errors import ConsentRequiredError, InteractionRequiredError, LoginRequiredError
from flask import Blueprint, abort, current_app, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from idp import audit, i18n
from idp.extensions import csrf, db, keep_loaded
from idp.http import clear_session_cookie, external_url
from idp.login import mfa, sessions, transaction
from idp.login.assurance import LEVELS
from idp.login.browser import binding, current_session, this_address
from idp.login.forms import ConfirmForm
from idp.login.views import begin_here
from idp.models import Consent, LoginTransaction, utcnow
from idp.oidc import authorization, dpop, exchange, keys, logout, par, policy, request_objects, response_modes
from idp.oidc import claims as oidc_claims
from idp.oidc.registration import REQUEST_OBJECT_ALGS
from idp.oidc.server import ALL_AUTH_METHODS, CONFIDENTIAL_AUTH_METHODS, GRANT_TYPES, Approval, current_server, issuer
from idp.pg_connections import reads_only

bp = Blueprint("oidc", __name__)

# CORS for the endpoints a browser-based relying party calls directly; never the authorization endpoint.
CORS_ENDPOINTS = {"oidc.discovery", "oidc.oauth_metadata", "oidc.jwks", "oidc.token", "oidc.userinfo",
                  "oidc.revoke", "oidc.introspect", "oidc.pushed_authorization_request"}
TXN_PARAM = "_txn"
PROMPT_NONE_ERRORS = {"login_required": LoginRequiredError, "consent_required": ConsentRequiredError,
                      "interaction_required": InteractionRequiredError}


@bp.record_once
def register(state) -> None:
    """Token exchange (RFC 8693, idp.oidc.exchange) joins the app's authorization server's grants."""
    state.app.extensions["idp.oauth"].register_grant(exchange.TokenExchangeGrant)


@bp.after_app_request
def cors(response: Response) -> Response:
    """Allow any origin on the public, token-authenticated endpoints (no cookies are involved there)."""
    if request.endpoint in CORS_ENDPOINTS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, DPoP"
            response.headers["Access-Control-Max-Age"] = "600"
        else:  # a browser's script may read the nonce it must put in its next proof (RFC 9449 8)
            response.headers["Access-Control-Expose-Headers"] = "DPoP-Nonce, WWW-Authenticate"
    return response


def metadata() -> dict:
    """OpenID Provider Metadata (OIDC Discovery 3, RFC 8414 2): complete and truthful."""
    return {
        "issuer": issuer(),
        "authorization_endpoint": external_url("oidc.authorize"),
        "token_endpoint": external_url("oidc.token"),
        # RFC 9126 5: idp.oidc.par. A request_uri from there is usable whatever request_uri_parameter_supported says
        # (which is about request objects by reference: idp.oidc.request_objects).
        "pushed_authorization_request_endpoint": external_url("oidc.pushed_authorization_request"),
        # RFC 8628 4: idp.oidc.device (grant_types_supported names its grant type).
        "device_authorization_endpoint": external_url("device.device_authorization"),
        "require_pushed_authorization_requests": bool(current_app.config["IDP_REQUIRE_PAR"]),
        # OAuth 2.0 for First-Party Applications (draft-ietf-oauth-first-party-apps-04, 8): idp.oidc.challenge.
        "authorization_challenge_endpoint": external_url("challenge.authorize_challenge"),
        "userinfo_endpoint": external_url("oidc.userinfo"),
        "jwks_uri": external_url("oidc.jwks"),
        "revocation_endpoint": external_url("oidc.revoke"),
        "introspection_endpoint": external_url("oidc.introspect"),
        "end_session_endpoint": external_url("oidc.end_session"),
        # RFC 7591 3, RFC 8414 2: idp.oidc.dynamic, only when registration is not closed (IDP_REGISTRATION).
        **({"registration_endpoint": external_url("registration.register")}
           if current_app.config["IDP_REGISTRATION"] != "closed" else {}),
        "scopes_supported": list(oidc_claims.SCOPES),
        "claims_supported": oidc_claims.CLAIMS_SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": list(response_modes.SUPPORTED),
        "grant_types_supported": GRANT_TYPES,
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": ALL_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "revocation_endpoint_auth_methods_supported": ALL_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": CONFIDENTIAL_AUTH_METHODS,
        # RFC 8414 2: required because private_key_jwt is listed for these endpoints too.
        "revocation_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "introspection_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "acr_values_supported": list(LEVELS),
        "claims_parameter_supported": True,
        # RFC 9101 9.1, OIDC Discovery 3: request objects by value and by reference (idp.oidc.request_objects),
        # from registered request_uris only.
        "request_parameter_supported": True,
        "request_uri_parameter_supported": True,
        "require_request_uri_registration": True,
        "request_object_signing_alg_values_supported": list(REQUEST_OBJECT_ALGS),
        "authorization_response_iss_parameter_supported": True,
        "prompt_values_supported": ["none", "login", "consent"],
        "display_values_supported": ["page"],
        "claim_types_supported": ["normal"],
        "ui_locales_supported": list(i18n.LANGUAGES),
        "dpop_signing_alg_values_supported": list(dpop.ALGS),  # RFC 9449 5.1
        # Back-Channel Logout 1.0 2.1 and Front-Channel Logout 1.0 3 (idp.oidc.logout): sid is always sent.
        "frontchannel_logout_supported": True,
        "frontchannel_logout_session_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
    }


@bp.get("/.well-known/openid-configuration")
def discovery():
    """OpenID Connect Discovery 1.0 metadata."""
    return _metadata_response()


@bp.get("/.well-known/oauth-authorization-server")
def oauth_metadata():
    """RFC 8414 authorization server metadata (the same document)."""
    return _metadata_response()


def _metadata_response() -> Response:
    """The metadata document, serialised once per app: it depends on the settings alone, which do not change while
    the app runs, and building its URLs was most of a discovery request (bench/README.md, seventh pass)."""
    prepared = current_app.extensions.get("idp.metadata")
    if prepared is None:
        document = jsonify(metadata()).get_data()
        prepared = current_app.extensions["idp.metadata"] = (document, hashlib.sha256(document).hexdigest()[:32])
    document, etag = prepared
    response = current_app.response_class(document, mimetype="application/json")
    response.set_etag(etag)  # a relying party that revalidates gets a 304 (RFC 9110 13.1.2)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response.make_conditional(request) if "If-None-Match" in request.headers else response


@bp.get("/.well-known/assetlinks.json")
def assetlinks():
    """Digital Asset Links: the first-party Android apps (IDP_ANDROID_APPS) that may use this site's passkeys.
    Android's Credential Manager reads it before an app may ask for a passkey of this RP ID
    (`delegate_permission/common.get_login_creds`); the apps' `android:apk-key-hash:` origins are accepted by
    idp.login.webauthn. No apps configured: no file (404), as for any site without one."""
    apps: dict[str, list[str]] = {}
    for package, fingerprint in current_app.config["IDP_ANDROID_APPS"]:
        apps.setdefault(package, []).append(fingerprint)
    if not apps:
        abort(404)
    statements = [{"relation": ["delegate_permission/common.get_login_creds"],
                   "target": {"namespace": "android_app", "package_name": package,
                              "sha256_cert_fingerprints": fingerprints}}
                  for package, fingerprints in apps.items()]
    response = jsonify(statements)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get("/jwks.json")
def jwks():
    """The public signing keys, including retired ones whose tokens may still be valid: bytes prepared once per
    change of the keys, with an ETag, so a relying party that revalidates gets a 304 (RFC 9110 13.1.2). While no
    change to the keys was notified (idp.changes) they are served without taking a database connection."""
    body, etag = keys.kept_jwks_document() or _read_jwks_document()
    response = current_app.response_class(body, mimetype="application/json")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response.make_conditional(request) if "If-None-Match" in request.headers else response


_read_jwks_document = reads_only(keys.jwks_document)  # (an aggregate and, after a change, the rows)


def _authorize_error(error: OAuth2Error, pushed: par.Pushed | None = None, params: MultiDict | None = None):
    """Errors before the redirect URI is trusted show a page (SECURITY.md 2); later ones go back with `iss`, by
    the response mode the request asked for (``params``). An error sent to the redirect URI is the authorization
    response: a pushed request is used up by it."""
    db.session.rollback()
    if error.state is not None and len(error.state) > policy.PARAMETER_LIMITS["state"]:
        error.state = None  # refused for its length: not sent back either
    if error.redirect_uri and pushed is not None:
        if not par.use(pushed, utcnow()):
            db.session.rollback()
            return _authorize_error(_used())
        db.session.commit()
    if not error.redirect_uri:
        # The protocol's own words (RFC 6749 4.1.2.1) stay as they are, for the developer who reads them.
        return render_template("error.html", title=_("This sign-in request is not valid"),
                               message=f"{error.error}: {error.description or ''}".strip(": ")), 400
    response = current_server().handle_error_response(None, error)
    response.headers["Location"] = add_params_to_uri(response.headers["Location"], {"iss": issuer()})
    return response_modes.deliver(response, error.redirect_uri, response_modes.requested(params))


def _used() -> OAuth2Error:
    """A pushed request that another request (a second tab, a replay) used while this one was being answered."""
    return par.InvalidRequestURIError("The request_uri was used already: push the request again.")


def _return_url(pushed: par.Pushed | None, values: MultiDict) -> str:
    """Where the sign-in returns to: this request again. A pushed one returns as client_id and request_uri only, so
    its parameters never reach the browser's address bar and only the pushed ones count to the end (RFC 9126 1)."""
    if pushed is not None:
        return url_for("oidc.authorize") + "?" + urlencode({"client_id": pushed.client_id,
                                                            "request_uri": pushed.request_uri})
    params = [(k, v) for k, v in values.items(multi=True) if k != TXN_PARAM]
    return url_for("oidc.authorize") + "?" + urlencode(params)


def answer_completed(txn: LoginTransaction) -> ResponseReturnValue | None:
    """The answer to the authorization request that sign-in ``txn`` was begun for, given by the request that just
    completed it (idp.login.views): the code, or the error, goes to the client at once, without the browser's
    round trip back to this endpoint that would otherwise be its next request. Exactly what that return would
    get: the same request (its return address's parameters), the transaction used up by this answer as
    ``transaction.load_completed`` uses it, and the session the sign-in just recorded. None when the transaction
    returns anywhere else."""
    parts = urlsplit(txn.state.return_to)
    if parts.path != url_for("oidc.authorize") or txn.state.used:
        return None
    values = MultiDict(parse_qsl(parts.query, keep_blank_values=True))
    if values.getlist(TXN_PARAM) != [txn.id]:
        return None
    transaction.update(txn, used=True)
    db.session.commit()  # used up whatever the answer is: a refusal's rollback must not give it back
    return _authorization(values, txn, utcnow())


@bp.route("/authorize", methods=["GET", "POST"])
@csrf.exempt
@keep_loaded
def authorize():
    """The authorization endpoint: the request (from the query or form, or pushed earlier and named by its
    request_uri) is validated by idp.oidc.authorization, then the ordered checks of idp.oidc.policy decide."""
    now = utcnow()
    answered = transaction.load_completed(request.values.get(TXN_PARAM), binding=binding(), now=now,
                                          address=this_address())
    if answered is not None:
        db.session.commit()  # used up whatever the answer is: a refusal's rollback must not give it back
    return _authorization(request.values, answered, now)


def _authorization(values: MultiDict, answered: LoginTransaction | None, now: datetime) -> ResponseReturnValue:
    """Answer the authorization request ``values`` (the request's, or a completed sign-in's return address:
    ``answer_completed``), ``answered`` being the sign-in just completed for it, if any."""
    server = current_server()
    live = current_session()
    user = live.user if live is not None else None
    pushed = None
    params: MultiDict = values
    # The sign-in just completed for this very request (its return address: transaction.load_completed compares
    # them) may finish it after its pushed request or its request object expired, in the browser that began it.
    grace = answered is not None
    if par.is_reference(values.get("request_uri")):
        try:
            pushed = par.resolve(values, now, grace=grace)
        except OAuth2Error as error:
            return _authorize_error(error)
        params = pushed.parameters  # RFC 9126 4: only the pushed ones
    elif request_objects.present(values):
        # RFC 9101 6.3: only the request object's parameters (and the query's client_id) count.
        try:
            params = request_objects.resolve(values, now, grace=grace)
        except OAuth2Error as error:
            return _authorize_error(error)
    try:  # a plain request of a client that must push is refused there (RFC 9126 4)
        checked = authorization.validate(params, user, pushed=pushed is not None)
    except OAuth2Error as error:
        return _authorize_error(error, pushed, params)
    grant = checked.grant
    redirect_uri = grant.redirect_uri
    state = params.get("state")

    satisfied: set[str] = set()
    if answered is not None:
        satisfied = set(answered.state.reasons) | set(answered.state.satisfied)
        if answered.state.denied:
            if pushed is not None and not par.use(pushed, now):
                return _authorize_error(_used())
            db.session.commit()
            return response_modes.deliver(
                server.create_authorization_response(request=grant.request, grant=grant, grant_user=None),
                redirect_uri, response_modes.requested(params))

    client = grant.client
    scopes = (grant.request.scope or "").split()
    consent = None
    if user is not None and not client.first_party:  # first-party clients are never asked (policy)
        consent = db.session.execute(
            db.select(Consent).where(Consent.user_id == user.id, Consent.client_id == client.client_id,
                                     Consent.revoked_at.is_(None))).scalar_one_or_none()
    req = policy.Request(
        first_party=client.first_party, scopes=scopes,
        prompt=set((params.get("prompt") or "").split()), max_age=checked.max_age,
        acr_values=(params.get("acr_values") or "").split(), session=live,
        consented_scopes=set(consent.scopes) if consent else set(), hint_subject=checked.hint_subject,
        satisfied=satisfied, client_min_acr=mfa.client_level(client))
    failures = policy.evaluate(req, now)
    if failures:
        if "none" in req.prompt:  # never a screen (OIDC Core 3.1.2.6)
            error_cls = PROMPT_NONE_ERRORS[failures[0].prompt_none_error]
            return _authorize_error(error_cls(redirect_uri=redirect_uri, state=state), pushed, params)
        reasons = [f.reason for f in failures]
        keep_user = user is not None and "no_session" not in reasons
        login_hint = (params.get("login_hint") or "")[:320]
        ui_locale = i18n.first_supported(params.get("ui_locales"))
        i18n.remember_ui_locales(ui_locale)
        return begin_here(
            reasons=reasons, return_to=_return_url(pushed, values), user=user if keep_user else None,
            tid_param=TXN_PARAM,
            client_id=client.client_id, client_name=client.name, scopes=scopes,
            login_hint=login_hint or (user.email if user is not None else ""), acr_values=req.acr_values,
            ui_locale=ui_locale,
            satisfied=sorted(satisfied), session_amr=list(live.amr) if keep_user and live is not None else None)
    assert user is not None and live is not None  # check_session passed
    # The code and the use of a pushed request commit together (save_authorization_code): of two requests that
    # present the same request_uri at once, the second waits for that commit and then finds it used.
    if pushed is not None and not par.use(pushed, now):
        return _authorize_error(_used())
    return response_modes.deliver(
        server.create_authorization_response(request=grant.request, grant=grant,
                                             grant_user=Approval(user, live, checked.claims_request)),
        redirect_uri, response_modes.requested(params))


@bp.route("/par", methods=["POST", "OPTIONS"])
@csrf.exempt
def pushed_authorization_request():
    """The pushed authorization request endpoint (RFC 9126 2): the client authenticates as at the token endpoint,
    the authorization request in the body is validated as /authorize validates one, and only then stored."""
    if request.method == "OPTIONS":
        return current_app.make_default_options_response()
    server = current_server()
    if request.mimetype != "application/x-www-form-urlencoded":  # RFC 9126 2
        return par.error(400, "invalid_request", "Send the parameters form-encoded (RFC 9126 2).")
    oauth_request = server.create_oauth2_request(None)
    try:  # RFC 9126 2.1 step 1: as at the token endpoint, every method idp has there
        client = server.authenticate_client(oauth_request, ALL_AUTH_METHODS, endpoint="par")
    except OAuth2Error as error:
        error.status_code = 401  # RFC 6749 5.2: invalid_client (with the Basic challenge it names)
        return server.handle_error_response(oauth_request, error)
    try:  # RFC 9449 10.1: a proof at the PAR endpoint binds the code to its key, as dpop_jkt does
        proof = dpop.check()
    except dpop.DPoPError as error:
        return dpop.error_response(error)
    form = request.form
    if "request_uri" in form:  # RFC 9126 2.1 step 2
        return par.error(400, "invalid_request", "A pushed request may not carry a request_uri (RFC 9126 2.1).")
    if form.getlist("client_id") != [client.client_id]:  # RFC 9126 2.1: required, and the authenticated client's
        return par.error(400, "invalid_request", "client_id must be sent once, naming the authenticated client.")
    parameters = par.authorization_parameters(form)
    if "request" in form:
        # RFC 9126 3: a request object may be pushed; as at /authorize only its parameters count (RFC 9101 6.3),
        # and what is stored is the request it holds, verified now and validated below.
        try:
            parameters = request_objects.resolve(parameters, utcnow())
        except OAuth2Error as error:
            return par.error(400, error.error, error.get_error_description() or error.error)
    if proof is not None and parameters.get("dpop_jkt", proof.jkt) != proof.jkt:
        return par.error(400, "invalid_dpop_proof", "dpop_jkt names another key than the DPoP proof's (RFC 9449 "
                                                    "10.1).")
    if proof is not None and "dpop_jkt" not in parameters:
        parameters.add("dpop_jkt", proof.jkt)
    if par.too_large(parameters):
        return par.error(413, "invalid_request", "The pushed request is larger than this server accepts.")
    try:  # RFC 9126 2.1 step 3, by /authorize's own validation; a prompt=none answer is /authorize's to give
        authorization.validate(parameters, authorization.NOT_YET_KNOWN, pushed=True)
    except OAuth2Error as error:
        db.session.rollback()
        # RFC 9126 2.3: RFC 6749 4.1.2.1's codes, invalid_request where that section only forbids redirecting.
        return par.error(400, error.error, error.get_error_description() or error.error)
    request_uri, expires_in = par.push(client, parameters, utcnow())
    db.session.commit()
    response = jsonify({"request_uri": request_uri, "expires_in": expires_in})
    response.status_code = 201  # RFC 9126 2.2
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/token", methods=["POST", "OPTIONS"])
@csrf.exempt
@keep_loaded
def token():
    """The token endpoint (RFC 6749 3.2): code, refresh_token, client_credentials, device code and token exchange
    grants."""
    if request.method == "OPTIONS":
        return current_app.make_default_options_response()
    # The signing keys first: the very first ones are created and committed on first use, and that commit must
    # not come between a grant's claim of a code or refresh token and its tokens, whose row lock makes a racing
    # reuse wait and then revoke what this exchange issued (RFC 9700 4.5; tests/test_oidc_protocol.py races).
    keys.signing_keyset()
    try:  # RFC 9449 5: a proof, when sent, is checked before anything else; the grants read it (idp.oidc.server)
        dpop.keep(dpop.check())
    except dpop.DPoPError as error:
        return dpop.error_response(error)
    response = current_server().create_token_response()
    return dpop.add_nonce(response) if dpop.presented() is not None else response


def _token_from_body() -> None:
    """RFC 6750 2.2: a form-encoded `access_token` is accepted where the Authorization header is absent."""
    if "Authorization" not in request.headers and request.method == "POST" and request.form.get("access_token"):
        request.environ["HTTP_AUTHORIZATION"] = "Bearer " + request.form["access_token"]


@bp.route("/userinfo", methods=["GET", "POST", "OPTIONS"])
@csrf.exempt
@reads_only
def userinfo():
    """The UserInfo endpoint (OIDC Core 5.3): GET, or POST with the token in the header or the body."""
    if request.method == "OPTIONS":
        return current_app.make_default_options_response()
    _token_from_body()
    return current_server().create_endpoint_response("userinfo")


@bp.route("/revoke", methods=["POST", "OPTIONS"])
@csrf.exempt
def revoke():
    """Token revocation (RFC 7009)."""
    if request.method == "OPTIONS":
        return current_app.make_default_options_response()
    return current_server().create_endpoint_response("revocation")


@bp.route("/introspect", methods=["POST", "OPTIONS"])
@csrf.exempt
@reads_only
def introspect():
    """Token introspection (RFC 7662) for authenticated clients."""
    if request.method == "OPTIONS":
        return current_app.make_default_options_response()
    return current_server().create_endpoint_response("introspection")


def _logout_needs_confirmation(end_request, live) -> bool:
    """RP-Initiated Logout 1.0 sections 2, 4 and 6: without a valid id_token_hint, or with one naming another user
    than the one signed in here, the request cannot say it is this session that ends: the user is asked."""
    if end_request.needs_confirmation:
        return True
    return live is not None and end_request.id_token_claims.get("sub") != live.user.subject


@bp.route("/end-session", methods=["GET", "POST"])
@csrf.exempt  # the RP may POST here; our own confirmation form is checked below
def end_session():
    """RP-Initiated Logout 1.0: with a valid id_token_hint, sign out; otherwise ask the user first."""
    server = current_server()
    try:
        end_request = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return render_template("error.html", title=_("This sign-out request is not valid"),
                               message=error.description or error.error), 400
    live = current_session()
    if _logout_needs_confirmation(end_request, live):
        form = ConfirmForm()
        if request.method != "POST" or request.form.get("confirm") != "yes":
            return render_template("oidc/logout_confirm.html", form=form, client=end_request.client, user=live.user
                                   if live else None, action=request.full_path)
        csrf.protect()
        # Validate again: the registered post-logout URI is only legitimate once the user has confirmed.
        end_request = server.validate_endpoint_request("end_session")
    response = server.create_endpoint_response("end_session", end_request)
    if live is not None:
        sessions.end(live, "rp_logout", utcnow())
        audit.record("logout", subject=live.user, sid=live.sid,
                     client_id=end_request.client.client_id if end_request.client else None, via="end_session")
        db.session.commit()
    if response is None:
        response = current_app.make_response(render_template("account/signed_out.html"))
    elif logout.pending_frames():
        # Front-Channel Logout 1.0 3: the clients' logout URIs are framed first; the page then continues to the
        # post-logout redirect URI (a script of ours, or the user's click).
        response = current_app.make_response(render_template("account/signed_out.html",
                                                             continue_to=response.headers["Location"]))
    clear_session_cookie(response)
    return response
