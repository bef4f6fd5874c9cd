"""Seed (and grow) the bench database; run by bench/run.py in a subprocess with the bench's IDP_* environment.

    python bench/seed.py seed OUT.json --users N --totp-users N   users, TOTP users, the bench client -> OUT.json
    python bench/seed.py grow --users N --tokens N                 bulk rows up to N users and N tokens (SQL)

Every seeded user shares one argon2id hash computed once with idp's own hasher (never one hash per user); the
bulk rows are written by PostgreSQL's generate_series, so a million of them cost seconds, not hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import pyotp
from sqlalchemy import text

PASSWORD = "bench correct horse battery staple"
REDIRECT_URI = "http://127.0.0.1:5001/callback"


def _app():
    from idp import create_app

    return create_app()


def seed(out: str, users: int, totp_users: int) -> None:
    from idp.extensions import db
    from idp.oidc import keys
    from idp.oidc.registration import create_client
    from idp.security import crypto
    from idp.security.passwords import hash_password

    app = _app()
    with app.app_context():
        shared_hash = hash_password(PASSWORD)
        now = datetime.now(UTC)
        params = {"hash": shared_hash, "now": now}
        # Password-only users pw-1 .. pw-N and TOTP users totp-1 .. totp-N, all verified.
        for prefix, count in (("pw", users), ("totp", totp_users)):
            db.session.execute(text(
                "INSERT INTO users (subject, email, name, password_hash, email_verified_at, disabled, "
                "mfa_required, failed_logins, password_changed_at, created_at, updated_at) "
                f"SELECT '{prefix}-sub-' || i, '{prefix}-' || i || '@bench.example', 'Bench User ' || i, :hash, "
                ":now, false, false, 0, :now, :now, :now FROM generate_series(1, :n) AS i"),
                {**params, "n": count})
        seeds = [pyotp.random_base32() for _ in range(totp_users)]
        secret = app.config["IDP_SECRET_KEY"]
        ids = dict(db.session.execute(text("SELECT email, id FROM users WHERE email LIKE 'totp-%'")).all())
        rows = [{"user_id": ids[f"totp-{i + 1}@bench.example"], "secret": crypto.encrypt(seed.encode(), secret, "totp"),
                 "now": now} for i, seed in enumerate(seeds)]
        if rows:
            db.session.execute(text(
                "INSERT INTO factors (user_id, kind, name, created_at, confirmed_at, secret_encrypted, sign_count, "
                "backed_up, discoverable, transports) VALUES (:user_id, 'totp', 'Bench app', :now, :now, :secret, "
                "0, false, false, '')"), rows)
        client, client_secret = create_client(
            name="Bench", redirect_uris=[REDIRECT_URI], post_logout_redirect_uris=[], public=False,
            grant_types=["client_credentials", "authorization_code", "refresh_token"], scopes=[], auth_method=None,
            # Refresh tokens for the refresh scenario without offline_access (OIDC Core 11): the bench's sign-ins
            # ask for openid only, as the peer's do.
            first_party=True, refresh_tokens_for_sessions=True)
        db.session.commit()
        keys.active()  # the signing keys exist before the first request (not created under load)
        db.session.commit()
        with open(out, "w") as handle:
            json.dump({"client_id": client.client_id, "client_secret": client_secret, "redirect_uri": REDIRECT_URI,
                       "password": PASSWORD, "users": users, "totp_seeds": seeds}, handle)


def grow(users: int, tokens: int) -> None:
    """Bulk rows up to ``users`` users and ``tokens`` tokens (inert: random emails, revoked-free old tokens).

    Numbered from the current count up, so growing twice never repeats a unique email or jti."""
    from idp.extensions import db

    app = _app()
    with app.app_context():
        have_users = db.session.execute(text("SELECT count(*) FROM users")).scalar_one()
        have_tokens = db.session.execute(text("SELECT count(*) FROM tokens")).scalar_one()
        shared = db.session.execute(text("SELECT password_hash FROM users WHERE email = 'pw-1@bench.example'")
                                    ).scalar_one()
        now = datetime.now(UTC)
        if users > have_users:
            db.session.execute(text(
                "INSERT INTO users (subject, email, name, password_hash, email_verified_at, disabled, "
                "mfa_required, failed_logins, password_changed_at, created_at, updated_at) "
                "SELECT 'bulk-sub-' || i, 'bulk-' || i || '@bench.example', 'Bulk User', :hash, :now, false, "
                "false, 0, :now, :now, :now FROM generate_series(:start, :end) AS i"),
                {"hash": shared, "now": now, "start": have_users + 1, "end": users})
        if tokens > have_tokens:
            first_user = db.session.execute(text("SELECT min(id) FROM users")).scalar_one()
            db.session.execute(text(
                "INSERT INTO tokens (jti, client_id, user_id, scope, grant_type, family_id, acr, amr, issued_at, "
                "access_expires_at, refresh_token_hash, refresh_expires_at, family_expires_at) "
                "SELECT 'bulk-jti-' || i, 'bulk-client', :first + (i % 1000), 'openid profile email', "
                "'authorization_code', 'bulk-family-' || i, 'urn:idp:acr:pwd', '[\"pwd\"]', :now, "
                ":now + interval '15 minutes', md5('bulk-rt-a' || i) || md5('bulk-rt-b' || i), "
                ":now + interval '14 days', :now + interval '90 days' FROM generate_series(:start, :end) AS i"),
                {"first": first_user, "now": now, "start": have_tokens + 1, "end": tokens})
        db.session.commit()
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        counts = db.session.execute(text("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM tokens)")).one()
        print(json.dumps({"users": counts[0], "tokens": counts[1]}))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p_seed = sub.add_parser("seed")
    p_seed.add_argument("out")
    p_seed.add_argument("--users", type=int, default=1000)
    p_seed.add_argument("--totp-users", type=int, default=1000)
    p_grow = sub.add_parser("grow")
    p_grow.add_argument("--users", type=int, required=True)
    p_grow.add_argument("--tokens", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "seed":
        seed(args.out, args.users, args.totp_users)
    else:
        grow(args.users, args.tokens)


if __name__ == "__main__":
    main(sys.argv[1:])
