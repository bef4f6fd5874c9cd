"""How the hosted forms say what is wrong: once, at the field, marked for assistive technology, with the focus on the
first mistake; and what they refuse (email-validator's addresses, names over their limit)."""

from __future__ import annotations

import re

import pytest

from idp.extensions import db
from idp.models import User
from tests.support import csrf_token, sign_in


def _signed_in(client) -> None:
    response = sign_in(client, "alice@example.com")
    client.get(response.headers["Location"])


def _field(text: str, name: str) -> str:
    match = re.search(rf'<(?:input|select)[^>]*\bname="{name}"[^>]*>', text)
    assert match, text
    return match.group(0)


def test_a_refused_profile_form_shows_its_error_once_at_the_field(app, client, make_user):
    make_user()
    _signed_in(client)
    page = client.get("/account")
    response = client.post("/account/profile", data={"csrf_token": csrf_token(page), "name": "x" * 201})
    text = response.get_data(as_text=True)
    assert response.status_code == 400
    assert text.count("Use at most 200 characters.") == 1  # said once...
    assert 'class="notice"' not in text  # ...and not as a success notice
    field = _field(text, "name")
    assert 'aria-invalid="true"' in field and "autofocus" in field
    assert 'aria-describedby="name-errors"' in field
    assert 'aria-invalid' not in _field(text, "locale")
    with app.app_context():
        assert db.session.execute(db.select(User.name)).scalar_one() == "Alice"  # nothing saved


def test_the_first_invalid_field_takes_the_focus_and_no_other(client):
    page = client.get("/signup")
    response = client.post("/signup", data={"csrf_token": csrf_token(page), "email": "alice@example.com",
                                            "name": "", "password": ""})
    text = response.get_data(as_text=True)
    assert "autofocus" not in _field(text, "email")  # the page's usual first field gives way
    assert "autofocus" in _field(text, "name") and 'aria-invalid="true"' in _field(text, "name")
    assert "autofocus" not in _field(text, "password") and 'aria-invalid="true"' in _field(text, "password")
    assert 'role="alert"' not in text  # the field errors are not repeated in a summary


@pytest.mark.parametrize("address", ["<script>alert(1)</script>@example.com", "alice@", "@example.com",
                                     "a" * 300 + "@example.com", "alice@example..com", "alice example@example.com"])
def test_sign_up_refuses_what_is_not_an_email_address(app, client, address):
    page = client.get("/signup")
    response = client.post("/signup", data={"csrf_token": csrf_token(page), "email": address, "name": "Mallory",
                                            "password": "correct horse battery staple"})
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Enter a valid email address" in text or "cannot be longer than 320" in text
    assert "<script>alert" not in text  # shown escaped, if at all
    with app.app_context():
        assert db.session.execute(db.select(User)).first() is None


def test_the_profile_language_is_saved_used_and_released_as_the_locale_claim(app, client, make_user):
    make_user()
    _signed_in(client)
    page = client.get("/account", headers={"Accept-Language": "en"})
    saved = client.post("/account/profile", headers={"Accept-Language": "en"}, follow_redirects=True,
                        data={"csrf_token": csrf_token(page), "name": "Alice", "locale": "de"})
    text = saved.get_data(as_text=True)
    assert '<html lang="de">' in text
    assert "Profil gespeichert." in text  # the notice already in the language just chosen
    assert 'value="de" selected' in text or 'selected value="de"' in text
    with app.app_context():
        user = db.session.execute(db.select(User)).scalar_one()
        assert user.locale == "de"
        from idp.oidc.claims import all_claims
        assert all_claims(user)["locale"] == "de"
    refused = client.post("/account/profile", data={"csrf_token": csrf_token(page), "name": "Alice",
                                                    "locale": "xx"})
    assert refused.status_code == 400
