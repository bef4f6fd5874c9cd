"""The protocol endpoints: discovery, JWKS, authorization, token, userinfo, revocation, introspection, end session."""

from __future__ import annotations

from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import (
    ConsentRequiredError,
    InteractionRequiredError,
    LoginRequiredError,
    RequestNotSupportedError,
    RequestURINotSupportedError,
)
from flask import Blueprint, current_app, jsonify, render_template, request, url_for
from flask_babel import gettext as _
from joserfc import jwt
from joserfc.errors import JoseError
from werkzeug.wrappers import Response

from idp import audit, i18n
from idp.extensions import csrf, db, keep_loaded
from idp.http import clear_session_cookie, external_url
from idp.login import mfa, sessions, transaction
from idp.login.assurance import LEVELS
from idp.login.browser import begin_transaction, binding, current_session
from idp.login.forms import ConfirmForm
from idp.models import Consent, utcnow
from idp.oidc import claims as oidc_claims
from idp.oidc import keys, policy
from idp.oidc.server import ALL_AUTH_METHODS, CONFIDENTIAL_AUTH_METHODS, GRANT_TYPES, Approval, current_server, issuer
from idp.pg_connections import reads_only

bp = Blueprint("oidc", __name__)

# CORS for the endpoints a browser-based relying party calls directly; never the authorization endpoint.
CORS_ENDPOINTS = {"oidc.discovery", "oidc.oauth_metadata", "oidc.jwks", "oidc.token", "oidc.userinfo",
                  "oidc.revoke", "oidc.introspect"}
TXN_PARAM = "_txn"
PROMPT_NONE_ERRORS = {"login_required": LoginRequiredError, "consent_required": ConsentRequiredError,
                      "interaction_required": InteractionRequiredError}


@bp.after_app_request
def cors(response: Response) -> Response:
    """Allow any origin on the public, token-authenticated endpoints (no cookies are involved there)."""
    if request.endpoint in CORS_ENDPOINTS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, DPoP"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


def metadata() -> dict:
    """OpenID Provider Metadata (OIDC Discovery 3, RFC 8414 2): complete and truthful."""
    return {
        "issuer": issuer(),
        "authorization_endpoint": external_url("oidc.authorize"),
        "token_endpoint": external_url("oidc.token"),
        # OAuth 2.0 for First-Party Applications (draft-ietf-oauth-first-party-apps-04, 8): idp.oidc.challenge.
        "authorization_challenge_endpoint": external_url("challenge.authorize_challenge"),
        "userinfo_endpoint": external_url("oidc.userinfo"),
        "jwks_uri": external_url("oidc.jwks"),
        "revocation_endpoint": external_url("oidc.revoke"),
        "introspection_endpoint": external_url("oidc.introspect"),
        "end_session_endpoint": external_url("oidc.end_session"),
        "scopes_supported": list(oidc_claims.SCOPES),
        "claims_supported": oidc_claims.CLAIMS_SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
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
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "prompt_values_supported": ["none", "login", "consent"],
        "display_values_supported": ["page"],
        "claim_types_supported": ["normal"],
        "ui_locales_supported": list(i18n.LANGUAGES),
        "frontchannel_logout_supported": False,
        "backchannel_logout_supported": False,
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
    document = current_app.extensions.get("idp.metadata")
    if document is None:
        document = current_app.extensions["idp.metadata"] = jsonify(metadata()).get_data()
    return current_app.response_class(document, mimetype="application/json")


@bp.get("/jwks.json")
@reads_only
def jwks():
    """The public signing keys, including retired ones whose tokens may still be valid."""
    response = jsonify(keys.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# Parameters of an authorization request that may appear once (RFC 6749 3.1, OIDC Core 3.1.2.1, RFC 7636 4.3).
SINGLE_VALUED = ("nonce", "code_challenge", "code_challenge_method", "prompt", "max_age", "acr_values", "login_hint",
                 "id_token_hint", "claims", "ui_locales", "claims_locales", "display", "response_mode", "request",
                 "request_uri")

# Authlib quotes response_type and redirect_uri in its error descriptions, and refuses to build an error whose
# description would hold a character RFC 6749 4.1.2.1 forbids there (a ValueError with this text). Such a request
# is still just an invalid one.
AUTHLIB_UNSAYABLE = "Error description contains forbidden characters"


def _authorize_error(error: OAuth2Error):
    """Errors before the redirect URI is trusted show a page (SECURITY.md 2); later ones redirect with `iss`."""
    db.session.rollback()
    if error.state is not None and len(error.state) > policy.PARAMETER_LIMITS["state"]:
        error.state = None  # refused for its length: not sent back either
    if not error.redirect_uri:
        # The protocol's own words (RFC 6749 4.1.2.1) stay as they are, for the developer who reads them.
        return render_template("error.html", title=_("This sign-in request is not valid"),
                               message=f"{error.error}: {error.description or ''}".strip(": ")), 400
    response = current_server().handle_error_response(None, error)
    response.headers["Location"] = add_params_to_uri(response.headers["Location"], {"iss": issuer()})
    return response


def _hint_subject(raw: str | None) -> str | None:
    """The `sub` of an id_token_hint we signed (expired ones count: OIDC Core 3.1.2.1)."""
    if not raw:
        return None
    try:
        decoded = jwt.decode(raw, keys.keyset_for_token(raw), algorithms=["RS256", "ES256"])
    except (JoseError, ValueError):
        raise InvalidRequestError("id_token_hint is not a valid ID token of this issuer.") from None
    if decoded.claims.get("iss") != issuer() or not isinstance(decoded.claims.get("sub"), str):
        raise InvalidRequestError("id_token_hint is not a valid ID token of this issuer.")
    return decoded.claims["sub"]


def _return_url() -> str:
    params = [(k, v) for k, v in request.values.items(multi=True) if k != TXN_PARAM]
    return url_for("oidc.authorize") + "?" + urlencode(params)


@bp.route("/authorize", methods=["GET", "POST"])
@csrf.exempt
@keep_loaded
def authorize():
    """The authorization endpoint: Authlib validates the request, then the ordered checks of idp.oidc.policy decide."""
    server = current_server()
    live = current_session()
    user = live.user if live is not None else None
    try:
        grant = server.get_consent_grant(end_user=user)
    except OAuth2Error as error:
        return _authorize_error(error)
    except ValueError as exc:
        if not str(exc).startswith(AUTHLIB_UNSAYABLE):
            raise
        return _authorize_error(InvalidRequestError("A parameter holds characters that it may not contain."))
    params = request.values
    state = params.get("state")
    redirect_uri = grant.redirect_uri
    try:
        repeated = next((name for name in SINGLE_VALUED if len(params.getlist(name)) > 1), None)
        if repeated:  # RFC 6749 3.1; Authlib checks client_id, response_type, redirect_uri, scope and state
            raise InvalidRequestError(f"Multiple '{repeated}' in request.")
        if params.get("request"):  # OIDC Core 6.1, 3.1.2.6: discovery says request objects are not supported
            raise RequestNotSupportedError()
        if params.get("request_uri"):  # OIDC Core 6.2, 3.1.2.6
            raise RequestURINotSupportedError()
        max_age = params.get("max_age")
        if max_age is not None and (not (max_age.isascii() and max_age.isdigit()) or len(max_age) > 10):
            raise InvalidRequestError("max_age must be a non-negative integer.")
        try:
            claims_request = oidc_claims.parse_claims_parameter(params.get("claims"))
        except ValueError:
            raise InvalidRequestError("claims must be a JSON object.") from None
        hint_subject = _hint_subject(params.get("id_token_hint"))
    except OAuth2Error as error:
        error.redirect_uri, error.state = redirect_uri, state
        return _authorize_error(error)

    now = utcnow()
    answered = transaction.load_completed(params.get(TXN_PARAM), binding=binding(), now=now)
    satisfied: set[str] = set()
    if answered is not None:
        satisfied = set(answered.state.reasons) | set(answered.state.satisfied)
        db.session.commit()
        if answered.state.denied:
            return server.create_authorization_response(grant=grant, grant_user=None)

    client = grant.client
    scopes = (grant.request.scope or "").split()
    consent = None
    if user is not None and not client.first_party:  # first-party clients are never asked (policy)
        consent = db.session.execute(
            db.select(Consent).where(Consent.user_id == user.id, Consent.client_id == client.client_id,
                                     Consent.revoked_at.is_(None))).scalar_one_or_none()
    req = policy.Request(
        first_party=client.first_party, scopes=scopes,
        prompt=set((params.get("prompt") or "").split()), max_age=int(max_age) if max_age is not None else None,
        acr_values=(params.get("acr_values") or "").split(), session=live,
        consented_scopes=set(consent.scopes) if consent else set(), hint_subject=hint_subject, satisfied=satisfied,
        client_min_acr=mfa.client_level(client))
    failures = policy.evaluate(req, now)
    if failures:
        if "none" in req.prompt:  # never a screen (OIDC Core 3.1.2.6)
            error_cls = PROMPT_NONE_ERRORS[failures[0].prompt_none_error]
            return _authorize_error(error_cls(redirect_uri=redirect_uri, state=state))
        reasons = [f.reason for f in failures]
        keep_user = user is not None and "no_session" not in reasons
        login_hint = (params.get("login_hint") or "")[:320]
        ui_locale = i18n.first_supported(params.get("ui_locales"))
        i18n.remember_ui_locales(ui_locale)
        return begin_transaction(
            reasons=reasons, return_to=_return_url(), user=user if keep_user else None, tid_param=TXN_PARAM,
            client_id=client.client_id, client_name=client.name, scopes=scopes,
            login_hint=login_hint or (user.email if user is not None else ""), acr_values=req.acr_values,
            ui_locale=ui_locale,
            satisfied=sorted(satisfied), session_amr=list(live.amr) if keep_user and live is not None else None)
    assert user is not None and live is not None  # check_session passed
    return server.create_authorization_response(grant=grant, grant_user=Approval(user, live, claims_request))


@bp.route("/token", methods=["POST", "OPTIONS"])
@csrf.exempt
@keep_loaded
def token():
    """The token endpoint (RFC 6749 3.2): code, refresh_token and client_credentials grants."""
    if request.method == "OPTIONS":
        return current_app.make_default_options_response()
    # The signing keys first: the very first ones are created and committed on first use, and that commit must
    # not come between a grant's claim of a code or refresh token and its tokens, whose row lock makes a racing
    # reuse wait and then revoke what this exchange issued (RFC 9700 4.5; tests/test_oidc_protocol.py races).
    keys.signing_keyset()
    return current_server().create_token_response()


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
    clear_session_cookie(response)
    return response
