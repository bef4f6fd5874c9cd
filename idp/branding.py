"""The operator's branding, without editing idp's files: name, logo and accent colour (IDP_BRAND_*), a theme folder
whose templates/ and static/ override idp's (IDP_THEME_DIR), and the icons browsers and phones ask for.

The accent colour reaches the pages through a small generated stylesheet, /brand.css: the CSP allows no inline
style (idp.http.CSP), and a stylesheet served by idp is cacheable where a nonce would not be.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, has_request_context, jsonify, send_from_directory, url_for
from jinja2 import ChoiceLoader, FileSystemLoader
from werkzeug.exceptions import NotFound

from idp import http
from idp.i18n import product_name

# idp's own colours (static/css/idp.css): text on the card, and the link colour a brand colour falls back to.
LIGHT_SURFACE, DARK_SURFACE = "#ffffff", "#161b22"
WHITE, DARK_TEXT = "#ffffff", "#1b1f24"
AA = 4.5  # WCAG 2.x 1.4.3: the contrast ratio normal-size text needs

# Long enough for a browser to keep them, short enough that a new logo or colour shows within a day.
ASSET_MAX_AGE = 86400


def relative_luminance(colour: str) -> float:
    """WCAG 2.x relative luminance of a #rgb or #rrggbb colour."""
    digits = colour.lstrip("#")
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    channels = [int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG 2.x contrast ratio of two colours, from 1 to 21."""
    darker, lighter = sorted((relative_luminance(a), relative_luminance(b)))
    return (lighter + 0.05) / (darker + 0.05)


def text_on(background: str) -> str:
    """The text colour of a button in ``background``: white, idp's house style, when it reaches AA; otherwise
    whichever of white and dark text contrasts more (a yellow or light brand colour is unreadable under white)."""
    if contrast(background, WHITE) >= AA:
        return WHITE
    return WHITE if contrast(background, WHITE) >= contrast(background, DARK_TEXT) else DARK_TEXT


def brand_css(colour: str) -> str:
    """The stylesheet that makes ``colour`` the accent. Buttons always take it; links take it only where it is
    readable on the card (AA), else they keep idp's link colour of that theme, so a pale brand colour cannot make
    links illegible in the light theme, nor a dark one in the dark theme."""
    on = text_on(colour)
    light = f"--accent: {colour}; --on-accent: {on};"
    dark = light
    if contrast(colour, LIGHT_SURFACE) >= AA:
        light += f" --link: {colour};"
    if contrast(colour, DARK_SURFACE) >= AA:
        dark += f" --link: {colour};"
    return (f"/* IDP_BRAND_COLOR {colour}, from idp.branding */\n:root {{ {light} }}\n"
            f"@media (prefers-color-scheme: dark) {{ :root {{ {dark} }} }}\n")


@dataclass(frozen=True)
class Brand:
    """What the templates show: ``brand.name``, ``brand.logo`` (a URL or None), ``brand.css`` (a URL or None)."""

    name: str
    logo: str | None
    css: str | None
    colour: str | None


def current_brand(external: bool = False) -> Brand:
    """The brand of this app; ``external`` gives absolute URLs, as mail needs."""
    cfg = current_app.config
    external = external or not has_request_context()  # a mail job renders with no request to be relative to
    logo = cfg.get("IDP_BRAND_LOGO_URL") or ""
    colour = cfg.get("IDP_BRAND_COLOR") or ""
    if logo and not logo.startswith("https://"):
        logo = http.external_url("static", filename=logo) if external else url_for("static", filename=logo)
    css = None
    if colour:
        version = hashlib.sha256(colour.encode()).hexdigest()[:8]  # a new colour is a new URL: no stale cache
        css = (http.external_url if external else url_for)("branding.stylesheet", v=version)
    return Brand(name=product_name(), logo=logo or None, css=css, colour=colour or None)


def csp(app: Flask) -> str:
    """idp's CSP, with the origin of an https logo added to img-src (else the browser would refuse to show it)."""
    logo = app.config.get("IDP_BRAND_LOGO_URL") or ""
    if not logo.startswith("https://"):
        return http.CSP
    parts = urlsplit(logo)
    return http.CSP.replace("img-src 'self'", f"img-src 'self' https://{parts.netloc}", 1)


def _cacheable(response: Response) -> Response:
    response.cache_control.no_cache = None
    response.cache_control.max_age = ASSET_MAX_AGE
    response.cache_control.public = True
    return response


def init_app(app: Flask) -> None:
    """Theme folder, the brand in every template, and the routes of the generated and icon files."""
    theme = app.config.get("IDP_THEME_DIR") or ""
    theme_static = os.path.join(theme, "static") if theme else ""
    if theme:
        # The theme's templates first, by the same names; anything it does not have comes from idp.
        assert app.jinja_loader is not None
        app.jinja_loader = ChoiceLoader([FileSystemLoader(os.path.join(theme, "templates")), app.jinja_loader])
    app.extensions["idp.csp"] = csp(app)

    def static_file(filename: str) -> Response:
        """A static file: the theme's, if it has one by this name, else idp's."""
        if theme_static:
            try:
                return send_from_directory(theme_static, filename, max_age=app.get_send_file_max_age(filename))
            except NotFound:
                pass
        return app.send_static_file(filename)

    app.view_functions["static"] = static_file

    def favicon() -> Response:
        # Browsers ask for /favicon.ico whatever the page links; answer with the (themeable) icon, not a 404.
        return _cacheable(static_file("favicon.ico"))

    def stylesheet() -> Response:
        colour = app.config.get("IDP_BRAND_COLOR") or ""
        if not colour:
            raise NotFound()
        return _cacheable(Response(brand_css(colour), mimetype="text/css"))

    def manifest() -> Response:
        # What a phone's "Add to home screen" names and draws (W3C Web App Manifest).
        brand = current_brand()
        body: dict[str, Any] = {
            "name": brand.name,
            "short_name": brand.name,
            "start_url": url_for("account.index"),
            "display": "minimal-ui",
            "background_color": "#f6f8fa",
            "theme_color": brand.colour or "#0b5cad",
            "icons": [{"src": url_for("static", filename=f"icons/icon-{size}.png"), "sizes": f"{size}x{size}",
                       "type": "image/png"} for size in (192, 512)],
        }
        response = jsonify(body)
        response.mimetype = "application/manifest+json"
        return _cacheable(response)

    app.add_url_rule("/favicon.ico", "branding.favicon", favicon)
    app.add_url_rule("/brand.css", "branding.stylesheet", stylesheet)
    app.add_url_rule("/manifest.webmanifest", "branding.manifest", manifest)
    app.context_processor(lambda: {"brand": current_brand()})
