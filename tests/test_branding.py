"""The operator's branding (IDP_BRAND_*, IDP_THEME_DIR), the icons, and the colours both themes are drawn in."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from idp.branding import brand_css, contrast, text_on
from tests.support import csrf_token

ROOT = Path(__file__).resolve().parent.parent


def _get(client, path: str):
    """GET ``path`` and read the whole answer (a static file's handle is closed, as a server would)."""
    response = client.get(path)
    response.get_data()
    response.close()
    return response


def _title(response) -> str:
    return re.search(r"<title>(.*?)</title>", response.get_data(as_text=True), re.S).group(1)


def _header(response) -> str:
    return re.search(r'<header class="bar">(.*?)</header>', response.get_data(as_text=True), re.S).group(1)


def test_without_branding_the_pages_say_idp(client):
    page = client.get("/signup")
    assert _title(page) == "Create an account · idp"
    assert ">idp</a>" in _header(page)
    assert "/brand.css" not in page.get_data(as_text=True)  # idp's own blue, no extra request


def test_the_brand_name_colour_and_logo_are_on_every_page(make_app):
    app = make_app(IDP_BRAND_NAME="Acme ID", IDP_BRAND_COLOR="#7A1FA2", IDP_BRAND_LOGO_URL="img/acme.svg")
    client = app.test_client()
    for path in ("/signup", "/login", "/forgot", "/no-such-page"):
        page = client.get(path, follow_redirects=True)
        text = page.get_data(as_text=True)
        assert _title(page).endswith(" · Acme ID"), path
        assert "idp" not in _title(page) and "idp" not in _header(page)
        assert '<img src="/static/img/acme.svg" alt="Acme ID">' in _header(page), path
        stylesheet = re.search(r'<link rel="stylesheet" href="(/brand\.css\?v=\w+)">', text).group(1)
    css = _get(client, stylesheet)
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert "--accent: #7a1fa2" in css.get_data(as_text=True)
    assert "max-age=86400" in css.headers["Cache-Control"]


def test_a_logo_on_another_origin_is_allowed_by_the_csp_and_nothing_else_is(make_app):
    app = make_app(IDP_BRAND_LOGO_URL="https://cdn.example.com/acme/logo.png")
    page = app.test_client().get("/signup")
    assert '<img src="https://cdn.example.com/acme/logo.png" alt="idp">' in _header(page)
    csp = page.headers["Content-Security-Policy"]
    assert re.search(r"img-src ([^;]*)", csp).group(1).split() == ["'self'", "https://cdn.example.com", "data:"]
    assert "'unsafe-inline'" not in csp and "script-src 'self';" in csp


def test_mail_carries_the_brand_name_and_an_absolute_logo(make_app, smtp_server):
    from tests.support import Mailbox, make_user_in

    app = make_app(IDP_BRAND_NAME="Acme ID", IDP_BRAND_LOGO_URL="img/acme.svg", IDP_ISSUER="https://id.acme.example")
    smtp_server.messages.clear()
    make_user_in(app)
    client = app.test_client()
    page = client.get("/forgot")
    client.post("/forgot", data={"csrf_token": csrf_token(page), "email": "alice@example.com"})
    message = Mailbox(app, smtp_server).last("alice@example.com", "Reset")
    assert '<img src="https://id.acme.example/static/img/acme.svg" alt="Acme ID"' in message["html"]
    assert "Sent by Acme ID at https://id.acme.example." in message["html"]
    assert "Sent by Acme ID at https://id.acme.example." in message["text"]  # the plain-text part too
    assert "idp" not in re.sub(r"https?://\S+", "", message["html"] + message["text"] + message["subject"])


def test_a_theme_folder_overrides_templates_and_static_files_by_name(make_app, tmp_path):
    theme = tmp_path / "theme"
    (theme / "templates").mkdir(parents=True)
    (theme / "static" / "css").mkdir(parents=True)
    (theme / "templates" / "error.html").write_text(
        '{% extends "base.html" %}{% block content %}<h1>Acme could not find that</h1>{% endblock %}')
    (theme / "static" / "css" / "idp.css").write_text("body { background: #fafafa; }\n")
    (theme / "static" / "favicon.ico").write_bytes(b"acme icon")
    client = make_app(IDP_THEME_DIR=str(theme)).test_client()

    missing = client.get("/no-such-page")
    assert missing.status_code == 404 and "<h1>Acme could not find that</h1>" in missing.get_data(as_text=True)
    assert "Create an account" in client.get("/signup").get_data(as_text=True)  # what the theme lacks is idp's
    assert _get(client, "/static/css/idp.css").get_data(as_text=True) == "body { background: #fafafa; }\n"
    assert _get(client, "/favicon.ico").data == b"acme icon"
    script = _get(client, "/static/js/link.js")
    assert script.status_code == 200 and script.data == (ROOT / "static/js/link.js").read_bytes()
    assert _get(client, "/static/../templates/error.html").status_code == 404  # nothing outside the folders


def test_icons_are_served_where_browsers_and_phones_look(client):
    icon = _get(client, "/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype in {"image/vnd.microsoft.icon", "image/x-icon"}
    assert icon.data[:4] == b"\0\0\1\0"  # an ICO file
    svg = _get(client, "/static/favicon.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    page = client.get("/login", follow_redirects=True).get_data(as_text=True)
    for href in re.findall(r'<link rel="(?:icon|apple-touch-icon|manifest)" href="([^"]+)"', page):
        assert _get(client, href).status_code == 200, href
    touch = _get(client, re.search(r'<link rel="apple-touch-icon" href="([^"]+)"', page).group(1))
    assert touch.mimetype == "image/png" and _png_size(touch.data) == (180, 180)

    manifest = client.get(re.search(r'<link rel="manifest" href="([^"]+)"', page).group(1))
    assert manifest.mimetype == "application/manifest+json"
    body = json.loads(manifest.data)
    assert body["name"] == "idp"
    sizes = {}
    for entry in body["icons"]:
        image = _get(client, entry["src"])
        assert image.status_code == 200 and image.mimetype == entry["type"] == "image/png"
        sizes[entry["sizes"]] = _png_size(image.data)
    assert sizes == {"192x192": (192, 192), "512x512": (512, 512)}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_manifest_names_the_brand(make_app):
    body = json.loads(make_app(IDP_BRAND_NAME="Acme ID", IDP_BRAND_COLOR="#7a1fa2").test_client()
                      .get("/manifest.webmanifest").data)
    assert body["name"] == "Acme ID" and body["theme_color"] == "#7a1fa2"


def test_button_text_stays_readable_on_any_brand_colour():
    for colour in ("#0b5cad", "#7a1fa2", "#000", "#ffd700", "#ffffff", "#33cc33", "#e60000", "#f90"):
        assert contrast(colour, text_on(colour)) >= 4.5, colour
    assert text_on("#0b5cad") == "#ffffff" and text_on("#ffd700") == "#1b1f24"
    # A mid grey reaches AA with neither: it gets whichever reads better (white, 4.48 against 3.7).
    assert text_on("#777777") == "#ffffff"
    # A pale brand colour keeps idp's link colour in the light theme (it would be unreadable on white) but is the
    # link colour in the dark theme, where it is readable.
    light, dark = brand_css("#ffd700").split("@media")
    assert "--link" not in light and "--link: #ffd700" in dark


def _palettes() -> tuple[dict[str, str], dict[str, str]]:
    css = (ROOT / "static/css/idp.css").read_text()
    light_block = re.search(r":root \{(.*?)\}", css, re.S).group(1)
    dark_block = re.search(r"prefers-color-scheme: dark\) \{\s*:root \{(.*?)\}", css, re.S).group(1)

    def variables(block: str) -> dict[str, str]:
        return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})", block))

    light = variables(light_block)
    return light, {**light, **variables(dark_block)}


# Text (4.5:1) and the parts of controls one must see (3:1), as the stylesheet pairs them.
TEXT_PAIRS = [("fg", "bg"), ("fg", "surface"), ("muted", "surface"), ("muted", "bg"), ("link", "surface"),
              ("on-accent", "accent"), ("on-secondary", "secondary"), ("err", "err-bg"), ("err", "surface"),
              ("ok", "ok-bg"), ("badge", "badge-bg"), ("warn", "warn-bg"), ("fg", "field")]
CONTROL_PAIRS = [("field-border", "surface"), ("link", "field")]


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_both_palettes_meet_wcag_aa(theme):
    light, dark = _palettes()
    palette = light if theme == "light" else dark
    assert palette["bg"] != light["bg"] or theme == "light"  # the dark block was found and differs
    poor = [(a, b, round(contrast(palette[a], palette[b]), 2)) for a, b in TEXT_PAIRS
            if contrast(palette[a], palette[b]) < 4.5]
    poor += [(a, b, round(contrast(palette[a], palette[b]), 2)) for a, b in CONTROL_PAIRS
             if contrast(palette[a], palette[b]) < 3]
    assert poor == []


def test_the_committed_icons_are_what_the_icon_script_draws():
    """static/ holds the script's output, so a change to the design cannot leave a stale icon behind."""
    from tests.make_icons import STATIC, icons

    for name, content in icons().items():
        assert (STATIC / name).read_bytes() == content, name
