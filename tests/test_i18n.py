"""Every page, mail and text in the user's language (idp.i18n): what is marked for translation, what the catalogues
hold, and how a request's language is chosen (OIDC Core 3.1.2.1 ui_locales, the saved locale, Accept-Language)."""

from __future__ import annotations

import ast
import html.parser
import re
from pathlib import Path

import flask_babel
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from wtforms.fields.core import UnboundField

from idp.extensions import db
from idp.i18n import LANGUAGES, TRANSLATIONS
from idp.models import User
from tests.support import authorize_url, csrf_token, make_client_in, screen_url, sign_in

ROOT = Path(__file__).resolve().parent.parent
# Development-only pages (the dev outbox, the built-in demo client) speak English only; babel.cfg leaves them out.
UNTRANSLATED_TEMPLATES = ("dev/",)


# --- what is marked ---------------------------------------------------------------------------------------------

class _Text(html.parser.HTMLParser):
    """The words a person reads in an HTML fragment: text, and the attributes that are read out or shown."""

    SHOWN = ("placeholder", "title", "aria-label", "alt", "content")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.words: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if value and (name in self.SHOWN and not (tag == "meta" and name == "content")
                          or name.startswith("data-") and re.search(r"[a-z] [a-z]", value)):
                self.words.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.words.append(data)


def _unmarked_words(source: str) -> list[str]:
    """Text of a template that no gettext call or trans block covers."""
    source = re.sub(r"{%-?\s*trans\b.*?{%-?\s*endtrans\s*-?%}", " ", source, flags=re.S)
    source = re.sub(r"{%-?\s*block main_class\s*%}.*?{%-?\s*endblock\s*%}", " ", source)  # a CSS class
    source = re.sub(r"{#.*?#}|{{.*?}}|{%.*?%}", " ", source, flags=re.S)
    parser = _Text()
    parser.feed(source)
    found = []
    for text in parser.words:
        if re.search(r"[A-Za-z]{2,}", re.sub(r"\S*/\S*", "", text)):  # paths and addresses are not words
            found.append(" ".join(text.split()))
    return found


def _templates() -> list[Path]:
    folder = ROOT / "templates"
    return [path for path in sorted(folder.rglob("*")) if path.suffix in (".html", ".txt")
            and not str(path.relative_to(folder)).startswith(UNTRANSLATED_TEMPLATES)]


def test_every_template_string_is_marked_for_translation():
    unmarked = {str(path.relative_to(ROOT)): words for path in _templates()
                if (words := _unmarked_words(path.read_text()))}
    assert not unmarked, f"text outside _() or a trans block: {unmarked}"


def test_the_template_check_notices_an_unmarked_string():
    """The check above would catch a forgotten string, in text and in a read-out attribute."""
    assert _unmarked_words('<p>{{ _("Hello") }}</p><p>Goodbye</p>') == ["Goodbye"]
    assert _unmarked_words('<input placeholder="Your name">') == ["Your name"]
    assert _unmarked_words('<p>{% trans %}Hi <b>{{ x }}</b>{% endtrans %}</p>') == []


# Python strings a person never reads, or must read in English, with the reason.
NOT_FOR_PEOPLE = {
    "idp/cli.py": "the command line speaks English",
    "idp/oidc/cli.py": "the command line speaks English",
    "idp/config.py": "settings and their documentation, for operators",
    "idp/console.py": "the command line",
    "idp/metrics.py": "Prometheus metric descriptions, for operators",
    "idp/ops.py": "health, readiness and metrics for operators' tools",
    "idp/logs.py": "log lines, for operators",
    "idp/dev.py": "development-only pages (English only)",
    "idp/demo.py": "development-only demo client",
    # OAuth error_description is "human-readable ASCII ... to assist the client developer" (RFC 6749 5.2): a
    # translation would be read by nobody it is meant for and may not even be ASCII.
    "idp/oidc/server.py": "OAuth error descriptions (RFC 6749 5.2: ASCII, for the client developer)",
    "idp/admin/api.py": "the admin API's problem documents, read by the developers of scripts, like the above",
    "idp/admin/openapi.py": "the admin API's OpenAPI document, for developers",
    "idp/account/api.py": "the account API's problem documents, for the developers of first-party apps",
    "idp/account/openapi.py": "the account API's OpenAPI document, for developers",
    "idp/openapi.py": "what the two OpenAPI documents share, for developers",
    "idp/oidc/challenge.py": "OAuth error descriptions of the challenge endpoint (RFC 6749 5.2, as above)",
    "idp/oidc/dpop.py": "DPoP error descriptions (RFC 9449 5 and 7.1: RFC 6749 5.2's ASCII, for the developer)",
    "idp/oidc/dynamic.py": "dynamic registration's error descriptions (RFC 7591 3.2.2: RFC 6749 5.2's, as above)",
}
GETTEXT = {"_", "_l", "gettext", "lazy_gettext", "ngettext", "lazy_ngettext"}
# Calls whose string arguments are for developers, logs or the audit trail, or are protocol text.
DEVELOPER_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "record", "RuntimeError",
                   "ValueError", "KeyError", "TypeError", "AssertionError", "SystemExit", "InvalidRequestError",
                   "InvalidClientError", "InvalidGrantError", "OAuth2Error", "echo", "secho",
                   # RFC 9457 problem documents and RFC 6750 challenges of the APIs, read by developers
                   "problem", "bearer_challenge"}
SENTENCE = re.compile(r"^[A-Z][a-z]+[ ,][^\n]*[a-z]")
# Text that is not language: a header's scheme, names of things.
NOT_WORDS = {"Bearer ", "Mac OS", "Authorization, Content-Type, DPoP"}


def _unmarked_python(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and SENTENCE.match(node.value)):
            continue
        if node.value in NOT_WORDS or node.value.startswith(("Bearer ", "Error description")):
            continue
        parent, excused = parents.get(node), False
        while parent is not None and not excused:
            if isinstance(parent, ast.Expr) and isinstance(parent.value, ast.Constant):
                excused = True  # a docstring
            elif isinstance(parent, ast.Call):
                func = parent.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                excused = name in GETTEXT or name in DEVELOPER_CALLS or name.endswith("Error")
            parent = parents.get(parent)
        if not excused:
            found.append((node.lineno, node.value))
    return found


def test_every_sentence_in_python_is_marked_for_translation():
    unmarked = {}
    for path in sorted((ROOT / "idp").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        if name in NOT_FOR_PEOPLE:
            continue
        if found := _unmarked_python(path):
            unmarked[name] = found
    assert not unmarked, f"sentences outside gettext: {unmarked}"


def test_the_python_check_notices_an_unmarked_sentence(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Doc string here."""\nflash("Your profile was saved.")\nflash(_("Your profile was saved."))\n'
                      'log.info("Started the worker now")\n')
    assert _unmarked_python(module) == [(2, "Your profile was saved.")]


def _form_classes():
    from flask_wtf import FlaskForm

    import idp.account.views  # noqa: F401  (loads every form class)
    import idp.login.forms  # noqa: F401

    seen, todo = [], list(FlaskForm.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("idp.") and cls not in seen:
            seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


def test_every_form_label_and_message_is_marked_for_translation():
    """WTForms labels and validator messages are made at import, so they must be lazy strings."""
    plain = []
    for cls in _form_classes():
        for name in dir(cls):
            field = getattr(cls, name, None)
            if not isinstance(field, UnboundField):
                continue
            label = field.args[0] if field.args else field.kwargs.get("label")
            if isinstance(label, str):
                plain.append(f"{cls.__name__}.{name} label {label!r}")
            validators = field.kwargs.get("validators") or (field.args[1] if len(field.args) > 1 else [])
            for validator in validators:
                message = getattr(validator, "message", None)
                if isinstance(message, str):
                    plain.append(f"{cls.__name__}.{name} message {message!r}")
            for choice in field.kwargs.get("choices") or []:
                # A language names itself, and so does an identifier shown as it is (RS256, client_secret_basic).
                if isinstance(choice.label, str) and choice.value not in LANGUAGES and choice.label != choice.value:
                    plain.append(f"{cls.__name__}.{name} choice {choice.label!r}")
    assert not plain, plain


# --- what the catalogues hold -----------------------------------------------------------------------------------

def _extracted() -> set[str | tuple[str, str]]:
    """Every message babel.cfg's extraction finds, as `pybabel extract` would."""
    method_map, options_map = [], {}
    section = None
    for line in (ROOT / "babel.cfg").read_text().splitlines():
        match = re.match(r"\[(\w+): (.+)\]", line.strip())
        if match:
            section = (match.group(2), match.group(1))
            method_map.append(section)
            options_map[section[0]] = {}
    found: set[str | tuple[str, str]] = set()
    keywords = {"_": None, "_l": None, "gettext": None, "lazy_gettext": None, "ngettext": (1, 2),
                "lazy_ngettext": (1, 2)}
    for _filename, _lineno, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=keywords):
        found.add(message if isinstance(message, str) else tuple(message))
    return found


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_each_catalogue_translates_every_message(language):
    with open(Path(TRANSLATIONS) / language / "LC_MESSAGES" / "messages.po", "rb") as f:
        catalogue = read_po(f, locale=language)
    missing, fuzzy, empty = [], [], []
    for message_id in _extracted():
        key = message_id[0] if isinstance(message_id, tuple) else message_id
        entry = catalogue.get(key)
        if entry is None:
            missing.append(key)
        elif entry.fuzzy:
            fuzzy.append(key)
        elif not (all(entry.string) if isinstance(entry.string, (list, tuple)) else entry.string):
            empty.append(key)
    assert not (missing or fuzzy or empty), {"missing": missing, "fuzzy": fuzzy, "untranslated": empty}
    problems = [(entry.id, [str(e) for e in errors]) for entry, errors in catalogue.check()]
    assert not problems, problems  # placeholders (%(name)s) kept as they are


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_the_build_compiled_each_catalogue(language):
    """setup.py compiles the catalogues when the package is installed; none is committed."""
    folder = Path(TRANSLATIONS) / language / "LC_MESSAGES"
    compiled, source = folder / "messages.mo", folder / "messages.po"
    assert compiled.exists(), "run `pip install -e .` (or `pybabel compile -d idp/translations`)"
    assert compiled.stat().st_mtime >= source.stat().st_mtime, "messages.po changed since it was compiled"


# --- how the language is chosen ---------------------------------------------------------------------------------

def _lang(response) -> str:
    match = re.search(r'<html lang="([^"]+)"', response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)[:300]
    return match.group(1)


def _translated(app, language: str, text: str) -> str:
    with app.test_request_context(), flask_babel.force_locale(language):
        return flask_babel.gettext(text)


def _h1(response) -> str:
    match = re.search(r"<h1>(.*?)</h1>", response.get_data(as_text=True), re.S)
    assert match
    return " ".join(match.group(1).split())


def test_accept_language_chooses_the_page_language(app, client):
    page = client.get("/login", headers={"Accept-Language": "de-CH, fr;q=0.8"}, follow_redirects=True)
    assert _lang(page) == "de"
    assert _h1(page) == _translated(app, "de", "Sign in") != "Sign in"
    page = client.get("/login", headers={"Accept-Language": "ja, fr-CA;q=0.5"}, follow_redirects=True)
    assert _lang(page) == "fr"
    page = client.get("/login", headers={"Accept-Language": "ja"}, follow_redirects=True)
    assert _lang(page) == "en"
    assert _h1(page) == "Sign in"


def test_ui_locales_is_carried_through_the_whole_sign_in(app, client, make_user):
    make_user()
    client_id, _ = make_client_in(app)
    french_browser = {"Accept-Language": "fr"}
    step = client.get(authorize_url(client_id, ui_locales="ja de-AT en"), headers=french_browser)
    assert step.status_code == 200 and _lang(step) == "de"  # the first screen, shown at the authorization endpoint
    assert _lang(client.get(screen_url(step), headers=french_browser)) == "de"  # and at its own URL
    # A detour without the transaction in its address (sign-up, forgotten password) keeps the language too.
    assert _lang(client.get("/signup", headers=french_browser)) == "de"
    assert _lang(client.get("/forgot", headers=french_browser)) == "de"
    response = client.post(screen_url(step), headers=french_browser,
                           data={"csrf_token": csrf_token(step), "step": "password", "email": "alice@example.com",
                                 "password": "correct horse battery staple"})
    consent = client.get(response.headers["Location"], headers=french_browser, follow_redirects=True)
    assert _lang(consent) == "de"
    assert _translated(app, "de", "Allow access") in consent.get_data(as_text=True)


def test_a_saved_language_beats_the_browser_and_ui_locales_beats_both(app, client, make_user):
    user = make_user()
    with app.app_context():
        db.session.get(User, user.id).locale = "fr"
        db.session.commit()
    sign_in(client, "alice@example.com")
    assert _lang(client.get("/account", headers={"Accept-Language": "de"})) == "fr"
    client_id, _ = make_client_in(app)
    start = client.get(authorize_url(client_id, ui_locales="de", prompt="login"), headers={"Accept-Language": "en"})
    assert start.status_code == 200 and _lang(start) == "de"
    assert _lang(client.get(screen_url(start), headers={"Accept-Language": "en"})) == "de"


def test_discovery_lists_the_languages_and_the_locale_claim(client):
    metadata = client.get("/.well-known/openid-configuration").get_json()
    assert metadata["ui_locales_supported"] == list(LANGUAGES)
    assert "locale" in metadata["claims_supported"]


def test_mail_is_written_in_the_language_of_the_page_that_sent_it(app, client, make_user, mailbox):
    make_user()
    page = client.get("/forgot", headers={"Accept-Language": "fr"})
    client.post("/forgot", headers={"Accept-Language": "fr"},
                data={"csrf_token": csrf_token(page), "email": "alice@example.com"})
    message = mailbox.last("alice@example.com")
    assert message["subject"] == _translated(app, "fr", "Reset your password") != "Reset your password"
    assert _translated(app, "fr", "If you did not ask for this, ignore this message; your password has not "
                                  "changed.") in message["text"]


def _eager_gettext(path: Path) -> list[int]:
    """Lines where gettext runs at import (module or class level): its text would stay in the language of no one."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if (not inside and isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                    and child.func.id in ("_", "gettext", "ngettext")):
                found.append(child.lineno)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def test_no_text_is_translated_at_import_time():
    eager = {str(path.relative_to(ROOT)): lines for path in sorted((ROOT / "idp").rglob("*.py"))
             if (lines := _eager_gettext(path))}
    assert not eager, f"use lazy_gettext (_l) outside functions: {eager}"


def test_the_import_time_check_notices_an_eager_gettext(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('A = _("x")\nB = _l("y")\n\ndef f():\n    return _("z")\n')
    assert _eager_gettext(module) == [1]
