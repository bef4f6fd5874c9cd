"""Request-facing glue: the client's address, the security headers, and the sign-in session cookie."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749.errors import InvalidRequestError, MissingAuthorizationError, OAuth2Error
from flask import Flask, abort, current_app, g, has_request_context, jsonify, request, url_for
from flask import Request as FlaskRequest
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import BadRequest
from werkzeug.wrappers import Response

from idp.security.network import PEER_ADDR, client_ip

# SECURITY.md 16; no inline script or style anywhere, so 'self' is all the page needs (the web app manifest too:
# default-src 'none' would refuse it). idp.branding adds an https logo's origin to img-src.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; manifest-src 'self'; form-action 'self' http: https:; frame-ancestors 'none'; "
       "base-uri 'none'")


def session_cookie_name(app: Flask | None = None) -> str:
    """``__Host-`` prefixed in production, where the cookie is Secure and host-only (ASVS V3.3.1)."""
    app = app or current_app
    return "__Host-idp_session" if app.config["IDP_ENV"] == "production" else "idp_session"


class Request(FlaskRequest):
    """The app's request: a multipart body with a part that names no field is bad input (RFC 7578 4.2: every part
    has a name), refused as soon as the form is read, before the CSRF check or any view trips over a field whose
    name is None."""

    def _get_file_stream(self, *args, **kwargs):
        # werkzeug leaves the file of an upload cut short (a truncated body) open; track each to close it below.
        stream = super()._get_file_stream(*args, **kwargs)
        self.__dict__.setdefault("_idp_uploads", []).append(stream)
        return stream

    def close(self) -> None:
        """At the end of the request, close every upload file, including those of a body that failed to parse."""
        super().close()
        for stream in self.__dict__.pop("_idp_uploads", ()):
            stream.close()

    def _load_form_data(self) -> None:
        super()._load_form_data()
        if None in self.form or None in self.files:
            # Later readers (the error page included) see an empty form rather than the nameless part.
            for upload in self.files.values():
                upload.close()
            self.form = self.parameter_storage_class()  # type: ignore[assignment]  # an empty one of the same kind
            self.files = self.parameter_storage_class()  # type: ignore[assignment]
            raise BadRequest(_("Every part of a multipart form must name its field."))


def client_address() -> str:
    """The client's address for this request, resolved through IDP_TRUSTED_PROXIES (X-Forwarded-For believed only
    from them): the key of every rate limit and throttle (SECURITY.md 33). It resolves on first use whichever
    hook or limit asks first, so no limit can see the proxy's address for the client's."""
    if "client_ip" not in g:
        g.client_ip = resolve_client_address(request.environ, current_app.config["IDP_TRUSTED_PROXIES"])
    return g.client_ip


def resolve_client_address(environ: dict[str, Any], trusted_proxies: Any) -> str:
    """The client's address of a WSGI ``environ`` (X-Forwarded-For believed only from ``trusted_proxies``), left in
    REMOTE_ADDR for anything else reading the WSGI address, the connection's peer kept under PEER_ADDR (gunicorn's
    access log, the request id's trust): resolving the same environ again gives the same."""
    peer = environ.setdefault(PEER_ADDR, environ.get("REMOTE_ADDR") or "")
    environ["REMOTE_ADDR"] = address = client_ip(str(peer), environ.get("HTTP_X_FORWARDED_FOR"), trusted_proxies)
    return address


def resolve_client(app: Flask) -> None:
    """Before each request: believe X-Forwarded-For only from IDP_TRUSTED_PROXIES, everywhere at once."""
    client_address()
    g.user_agent = request.headers.get("User-Agent", "")[:512]


# The endpoints whose callers expect an OAuth error object (RFC 6749 5.2, RFC 7009 2.2.1, RFC 7662 2.3, RFC 6750 3.1).
OAUTH_ENDPOINTS = frozenset({"oidc.token", "oidc.revoke", "oidc.introspect", "oidc.userinfo",
                             "oidc.pushed_authorization_request", "challenge.authorize_challenge",
                             "device.device_authorization", "registration.register",
                             "registration.configure"})
NUL_MESSAGE = _l("The request contains a NUL character, which no field accepts.")


def refuse_nul():
    """Before each request: a NUL character in the path, a parameter or a header is bad input. No field takes one
    (RFC 9110 5.5 forbids it in headers; PostgreSQL text cannot store it), so the request is refused here with a
    400 in the caller's form (the error handlers choose it), before any of it reaches a query."""
    if _carries_nul():
        abort(400, str(NUL_MESSAGE))


def oauth_caller() -> bool:
    """Whether the request went to an endpoint whose callers expect an OAuth error object; by path, so that a 405
    or a 413 raised before the view runs counts too."""
    return request.path in {rule.rule for rule in current_app.url_map.iter_rules() if rule.endpoint in OAUTH_ENDPOINTS}


def oauth_error(status: int, message: str) -> Response:
    """An OAuth error object (RFC 6749 5.2) for a failure outside Authlib's own handling: invalid_request for the
    caller's fault, server_error for ours, with the HTTP status kept; at userinfo also the Bearer challenge (RFC
    6750 3.1). The description keeps only the characters RFC 6749 allows there."""
    description = "".join(ch for ch in message if 0x20 <= ord(ch) <= 0x7E and ch not in '"\\')
    error = InvalidRequestError(description=description, status_code=status)
    if status >= 500:
        error.error = "server_error"
    status, body, headers = error()
    response = jsonify(body)
    response.status_code = status
    for name, value in headers:
        response.headers[name] = value
    if request.path == url_for("oidc.userinfo"):
        response.headers["WWW-Authenticate"] = f'Bearer error="{body["error"]}", error_description="{description}"'
    return response


def _carries_nul() -> bool:
    if "\x00" in request.path:
        return True
    # What request.values holds (the query's parameters, and the form's for any method but GET), without building
    # the empty query of a request that has none and the combined view: a protocol call's hook runs on every request.
    sources = ([request.args] if request.query_string else []) + ([request.form] if request.method != "GET" else [])
    if any("\x00" in key or "\x00" in value for source in sources for key, value in source.items(multi=True)):
        return True
    return headers_carry_nul(request.environ)


def headers_carry_nul(environ: dict[str, Any]) -> bool:
    """Whether a header's value in a WSGI ``environ`` carries a NUL character."""
    return any("\x00" in value for name, value in environ.items()
               if name.startswith("HTTP_") and isinstance(value, str))


def security_headers(response: Response) -> Response:
    """After each request: the headers every hosted page carries (SECURITY.md 16), each unless the view set it."""
    headers = response.headers
    present = {name.lower() for name in headers.keys()}  # one pass over the headers, not one per header added
    policy = current_app.extensions.get("idp.csp", CSP)
    if origin := g.get("csp_image_origin"):  # a page showing a client's logo (its https origin, checked)
        policy = policy.replace("img-src 'self'", f"img-src 'self' {origin}", 1)
    wanted = [("X-Frame-Options", "DENY"), ("Content-Security-Policy", policy), ("Referrer-Policy", "no-referrer"),
              ("X-Content-Type-Options", "nosniff")]
    if current_app.config["IDP_ENV"] == "production":
        wanted.append(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
    if response.mimetype == "text/html":
        wanted.append(("Cache-Control", "no-store"))
    headers.extend([(name, value) for name, value in wanted if name.lower() not in present])
    return response


class FlowCookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions (the flow cookie), without building the signing serializer for a request that
    sends no such cookie (every protocol and API call): Flask builds it before it looks for the cookie, about a
    tenth of Flask's own work per request (issue 22, bench/README.md)."""

    def open_session(self, app: Flask, request: FlaskRequest) -> SecureCookieSession | None:
        if app.secret_key and ("HTTP_COOKIE" not in request.environ or
                               not request.cookies.get(self.get_cookie_name(app))):
            return self.session_class()
        return super().open_session(app, request)


def set_session_cookie(response: Response, token: str, max_age: int) -> None:
    """Send the sign-in session cookie: HttpOnly, SameSite=Lax, Secure outside development and testing."""
    response.set_cookie(session_cookie_name(), token, max_age=max_age, path="/", httponly=True, samesite="Lax",
                        secure=current_app.config["IDP_ENV"] == "production")


def set_device_cookie(response: Response, token: str) -> None:
    """The long-lived device cookie that recognises this browser (and, if asked, remembers it)."""
    production = current_app.config["IDP_ENV"] == "production"
    response.set_cookie("__Host-idp_device" if production else "idp_device", token, max_age=400 * 86400, path="/",
                        httponly=True, samesite="Lax", secure=production)


def clear_session_cookie(response: Response) -> None:
    """Remove the sign-in session cookie from the browser."""
    response.delete_cookie(session_cookie_name(), path="/", httponly=True, samesite="Lax",
                           secure=current_app.config["IDP_ENV"] == "production")


def external_url(endpoint: str, **values) -> str:
    """An absolute URL on IDP_ISSUER's origin (never the request's Host header, which a client controls)."""
    issuer = urlsplit(current_app.config["IDP_ISSUER"])
    if has_request_context():
        path = url_for(endpoint, **values)
    else:  # jobs run with an app context only
        with current_app.test_request_context(base_url=current_app.config["IDP_ISSUER"]):
            path = url_for(endpoint, **values)
    return f"{issuer.scheme}://{issuer.netloc}{path}"


PROBLEM_TYPE = "about:blank"  # RFC 9457 4.2.1: the status code says it all; the title is its phrase


def problem(status: int, title: str, detail: str = "", headers: dict[str, str] | None = None,
            **members: Any) -> Response:
    """An RFC 9457 problem document (the admin API's and the account API's errors)."""
    body = {"type": PROBLEM_TYPE, "title": title, "status": status, **({"detail": detail} if detail else {}),
            **members}
    response = jsonify(body)
    response.status_code = status
    response.content_type = "application/problem+json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def bearer_challenge(realm: str, error: str | None = None, description: str = "", **params: Any) -> dict[str, str]:
    """RFC 6750 3 (and RFC 9470 3's acr_values and max_age): the WWW-Authenticate challenge of a refused bearer
    token; text parameters are quoted, numbers are not."""
    parts = [f'Bearer realm="{realm}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    parts.extend(f'{name}="{value}"' if isinstance(value, str) else f"{name}={value}"
                 for name, value in params.items())
    return {"WWW-Authenticate": ", ".join(parts)}


def bearer_token(realm: str) -> Any:
    """The access token row this request presents (the admin and account APIs), or the 401 problem document that
    refuses it: none sent, or unknown, expired, revoked or not a bearer token at all; a DPoP-bound token without
    a valid proof by its key, or sent as a bearer token, with the DPoP challenge (RFC 9449 7)."""
    protector = current_app.extensions["idp.resource_protector"]
    try:
        return protector.acquire_token()
    except MissingAuthorizationError:
        return problem(401, "Authentication required", "Send an access token: Authorization: Bearer ...",
                       bearer_challenge(realm))
    except OAuth2Error as error:
        headers = dict(error.get_headers())
        if headers.get("WWW-Authenticate", "").startswith("DPoP "):  # RFC 9449 7.1 (idp.oidc.dpop): its challenge
            kept = {name: value for name, value in headers.items() if name in ("WWW-Authenticate", "DPoP-Nonce")}
            return problem(401, "Invalid token" if error.error == "invalid_token" else "Invalid DPoP proof",
                           error.description or error.error, kept, error=error.error)
        return problem(401, "Invalid token", "The access token is unknown, expired or revoked.",
                       bearer_challenge(realm, "invalid_token", "The access token is not valid"))
