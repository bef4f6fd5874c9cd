"""How an authorization response reaches the client (OAuth 2.0 Multiple Response Type Encoding Practices 2.1, OAuth
2.0 Form Post Response Mode): ``query`` (the default of the code flow), or ``form_post``, a page whose form the
browser submits to the redirect URI, so that the code never sits in an address bar, a history or a Referer.

``fragment`` is refused: for ``response_type=code`` it only moves the code where a script must read it, which is
what the code flow exists to avoid, and Authlib's code grant does not encode it (discovery leaves it out).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from flask import current_app, render_template
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from idp.http import CSP

SUPPORTED = ("query", "form_post")  # response_modes_supported


def check(parameters: MultiDict, redirect_uri: str) -> None:
    """Refuse a response mode idp does not send by, or form_post to a redirect URI a browser cannot POST a form to
    (a native app's private-use scheme); raises invalid_request (OIDC Core 3.1.2.6, the Form Post spec 2)."""
    mode = parameters.get("response_mode")
    if mode is None or mode == "query":
        return
    if mode not in SUPPORTED:
        raise InvalidRequestError(f"Unsupported response_mode (use {' or '.join(SUPPORTED)}).")
    if urlsplit(redirect_uri or "").scheme not in ("http", "https"):
        raise InvalidRequestError("response_mode=form_post needs an http or https redirect URI.")


def requested(parameters: MultiDict | None) -> str:
    """The mode a response to these (validated) parameters goes by: form_post when asked for, else query. A
    response that refuses the mode itself is sent by query (check() refused it, so nothing else is possible)."""
    if parameters is not None and parameters.getlist("response_mode") == ["form_post"]:
        return "form_post"
    return "query"


def deliver(response: Response, redirect_uri: str | None, mode: str) -> Response:
    """The authorization response (Authlib's redirect to ``redirect_uri`` with the parameters in its query) sent by
    ``mode``: as is for query; for form_post, a page that POSTs those parameters to the redirect URI as it is
    registered (its own query included), from a script file of ours or, without scripts, a button."""
    if mode != "form_post" or response.status_code != 302 or not redirect_uri:
        return response
    target = urlsplit(redirect_uri)
    if target.scheme not in ("http", "https"):
        return response
    location = response.headers["Location"]
    own = parse_qsl(target.query, keep_blank_values=True)
    pairs = parse_qsl(urlsplit(location).query, keep_blank_values=True)
    if not location.startswith(redirect_uri) or pairs[:len(own)] != own:  # not a response to this redirect URI
        return response
    # Authlib appends the response parameters to the redirect URI's own query (add_params_to_uri).
    page = current_app.make_response(render_template("oidc/form_post.html", action=redirect_uri,
                                                      fields=pairs[len(own):]))
    origin = f"{target.scheme}://{target.netloc}"
    policy = current_app.extensions.get("idp.csp", CSP)
    # The form may go to the client's origin only (and nowhere else): the page's one purpose.
    policy = policy.replace("form-action 'self' http: https:", f"form-action {origin}", 1)
    page.headers["Content-Security-Policy"] = policy
    page.headers["Cache-Control"] = "no-store"
    return page
