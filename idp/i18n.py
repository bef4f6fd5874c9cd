"""The language of every page, mail and text message: Flask-Babel, with the locale chosen per request.

The choice, first match wins:
1. ``ui_locales`` of the authorization request (OIDC Core 3.1.2.1), kept on the login transaction and, for the
   pages a sign-in passes through without one (sign-up, password reset), in the browser's flow cookie until the
   sign-in completes;
2. the signed-in user's saved language (the ``locale`` claim, set on the profile page);
3. the browser's ``Accept-Language``;
4. English.

Catalogues live in ``idp/translations/<lang>/LC_MESSAGES/messages.po``; the build compiles them (setup.py), so no
``.mo`` file is committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import flask_babel
from flask import Flask, current_app, g, has_request_context, request, session
from flask_babel import Babel, force_locale, get_locale
from sqlalchemy.exc import SQLAlchemyError

from idp.extensions import db

# Every language idp's pages are complete in; the first is the fallback. Adding one: README "Adding a language".
LANGUAGES = ("en", "fr", "de")
LANGUAGE_NAMES = {"en": "English", "fr": "Français", "de": "Deutsch"}

TRANSLATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "translations")
_SESSION_KEY = "ui_locale"

__all__ = ["LANGUAGES", "LANGUAGE_NAMES", "first_supported", "force_locale", "init_app", "remember_ui_locales",
           "forget_ui_locales", "current_language"]


def first_supported(ui_locales: str | None) -> str | None:
    """The first of a space-separated list of BCP 47 tags (``ui_locales``, a saved ``locale``) that idp speaks:
    an exact language match or the tag's primary language (``fr-CA`` is served in ``fr``)."""
    for tag in (ui_locales or "").split():
        primary = tag.replace("_", "-").split("-")[0].lower()
        if primary in LANGUAGES:
            return primary
    return None


def remember_ui_locales(language: str | None) -> None:
    """Carry an authorization request's ``ui_locales`` through the sign-in pages that have no transaction."""
    if language:
        session[_SESSION_KEY] = language
    else:
        session.pop(_SESSION_KEY, None)


def forget_ui_locales() -> None:
    """The sign-in is over: later pages follow the user's own preference again."""
    session.pop(_SESSION_KEY, None)


def select_locale() -> str:
    """Flask-Babel's locale selector (the order in the module docstring)."""
    if not has_request_context():
        return LANGUAGES[0]
    if "ui_language" in g:
        return g.ui_language
    sources = current_app.extensions["idp.i18n"]
    try:
        choice = sources.transaction_language() or session.get(_SESSION_KEY)
        if choice not in LANGUAGES:
            choice = first_supported(sources.saved_language())
    except SQLAlchemyError:
        # The page may be the error page of a request the database refused (or of a database that is down): it
        # is still shown, in the browser's language.
        db.session.rollback()
        current_app.logger.warning("the page's language could not be read from the database; using the browser's")
        choice = None
    if choice not in LANGUAGES:
        # In the browser's order of preference, each tag by its primary language (RFC 4647 3.4 lookup):
        # "de-CH, fr;q=0.8" is German, which Werkzeug's best_match would give up for the exact "fr".
        choice = next((lang for tag, _quality in request.accept_languages
                       if (lang := first_supported(tag)) is not None), LANGUAGES[0])
    g.ui_language = choice
    return choice


def refresh() -> None:
    """Choose again (the user just saved another language, or the page shows a sign-in's first screen)."""
    g.pop("ui_language", None)
    flask_babel.refresh()


def product_name() -> str:
    """The name the pages, mail and texts give the service (IDP_BRAND_NAME when the operator set one)."""
    return current_app.config.get("IDP_BRAND_NAME") or "idp"


def current_language() -> str:
    """The language of the page being rendered (``<html lang>``)."""
    return str(get_locale() or LANGUAGES[0])


@dataclass(frozen=True)
class Sources:
    """Where the selector finds the request's sign-in transaction language and the signed-in user's saved one;
    handed in by the app factory, so this module (which mail and jobs import) imports nothing of the login layer."""

    transaction_language: Callable[[], str | None]
    saved_language: Callable[[], str | None]


def init_app(app: Flask, sources: Sources) -> None:
    app.extensions["idp.i18n"] = sources
    Babel(app, locale_selector=select_locale, default_translation_directories=TRANSLATIONS,
          default_domain="messages")
    app.jinja_env.globals.update(current_language=current_language, LANGUAGE_NAMES=LANGUAGE_NAMES)


def job_language() -> str:
    """The language to render a background job's message in, fixed when it is enqueued."""
    return current_language() if has_request_context() and current_app else LANGUAGES[0]
