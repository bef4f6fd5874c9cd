"""Users moved from the Django service idp replaces: their password hashes, made here by Django's own hashers (the
library that made them there), sign in and are re-hashed to argon2id at that first sign-in; their TOTP seeds keep
working; a malformed hash is refused line by line."""

from __future__ import annotations

import json

import pyotp
import pytest
from django.conf import settings

from idp.extensions import db
from idp.models import Factor, User, utcnow
from idp.security import imported_hashes
from idp.security.otp import totp_code_at
from tests.support import make_client_in
from tests.test_challenge import CHALLENGE, redeem

if not settings.configured:
    settings.configure(PASSWORD_HASHERS=["django.contrib.auth.hashers.Argon2PasswordHasher",
                                         "django.contrib.auth.hashers.PBKDF2PasswordHasher",
                                         "django.contrib.auth.hashers.BCryptSHA256PasswordHasher"])

from django.contrib.auth.hashers import make_password  # noqa: E402  (after settings.configure)

PASSWORD = "the old service's password 1"


@pytest.mark.parametrize("hasher", ["argon2", "pbkdf2_sha256", "bcrypt_sha256"])
def test_each_django_format_verifies_and_refuses_a_wrong_password(hasher):
    encoded = make_password(PASSWORD, hasher=hasher)
    assert encoded.startswith(hasher + "$") and imported_hashes.well_formed(encoded)
    assert imported_hashes.verify(encoded, PASSWORD)
    assert not imported_hashes.verify(encoded, PASSWORD + "x")


def test_malformed_imported_hashes_never_match_nor_raise():
    for encoded in ("pbkdf2_sha256$", "pbkdf2_sha256$abc$salt$x", "pbkdf2_sha256$99999999999$s$h", "bcrypt_sha256$x",
                    "argon2$argon2id$broken", "argon2$", "bcrypt_sha256$$2b$12$" + "a" * 53):
        assert not imported_hashes.verify(encoded, PASSWORD)


def test_migrated_users_sign_in_with_their_old_passwords_and_totp(app, client, tmp_path):
    seed = pyotp.random_base32()
    lines = [{"email": f"{hasher}@example.com", "name": hasher, "email_verified": True,
              "password_hash": make_password(PASSWORD, hasher=hasher)}
             for hasher in ("argon2", "pbkdf2_sha256", "bcrypt_sha256")]
    lines.append({"email": "totp@example.com", "email_verified": True, "phone": "+14155550123",
                  "phone_verified": True, "password_hash": make_password(PASSWORD, hasher="pbkdf2_sha256"),
                  "totp_secret": seed})
    lines.append({"email": "bad@example.com", "password_hash": "md5$salt$abc"})
    source = tmp_path / "users.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines))
    out = app.test_cli_runner().invoke(args=["users", "import", str(source)])
    assert out.exit_code == 0, out.output
    assert "created 4 of 5" in out.output and "password_hash is not one of" in out.output

    client_id, _none = make_client_in(app, name="Mobile", redirect_uris=["https://app.example/cb"], public=True,
                                      first_party=True)
    from tests.support import pkce_pair
    for hasher in ("argon2", "pbkdf2_sha256", "bcrypt_sha256"):
        verifier, challenge = pkce_pair()
        answer = client.post(CHALLENGE, data={"client_id": client_id, "response_type": "code", "scope": "openid",
                                              "code_challenge": challenge, "code_challenge_method": "S256",
                                              "username": f"{hasher}@example.com", "password": PASSWORD})
        assert answer.status_code == 200, (hasher, answer.get_json())
        assert redeem(client, client_id, answer.get_json()["authorization_code"], verifier)["acr"] == "urn:idp:acr:pwd"
        with app.app_context():  # re-hashed to idp's argon2id at this first sign-in
            stored = db.session.execute(db.select(User.password_hash).where(User.email == f"{hasher}@example.com")
                                        ).scalar_one()
            assert stored.startswith("$argon2id$")

    verifier, challenge = pkce_pair()
    first = client.post(CHALLENGE, data={"client_id": client_id, "response_type": "code", "scope": "openid",
                                         "code_challenge": challenge, "code_challenge_method": "S256",
                                         "username": "totp@example.com", "password": PASSWORD}).get_json()
    assert first["step"] == "otp"
    done = client.post(CHALLENGE, data={"auth_session": first["auth_session"], "code": totp_code_at(seed, utcnow())})
    assert redeem(client, client_id, done.get_json()["authorization_code"], verifier)["acr"] == "urn:idp:acr:mfa"
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == "totp@example.com")).scalar_one()
        assert user.phone_verified and db.session.execute(db.select(Factor).where(Factor.user_id == user.id)).first()
