"""The demo user and client of `idp demo`, and the relying party built into development at /demo."""

from __future__ import annotations

from pathlib import Path

from flask import current_app

from idp.extensions import db
from idp.models import Client
from idp.oidc.registration import create_client
from idp.security.tokens import token_hash

DEMO_EMAIL = "demo@example.com"
DEMO_ADMIN_EMAIL = "admin@example.com"  # an administrator of the console, with a TOTP factor (`idp demo`)
DEMO_CLIENT_ID = "demo-client"
DEMO_REDIRECT_URI = "http://127.0.0.1:5001/callback"


def demo_client_credentials() -> tuple[str, str]:
    """The demo confidential client (created once; its secret is kept in the instance folder like the password)."""
    cred = Path(current_app.instance_path) / "demo-client-secret"
    client = db.session.execute(db.select(Client).where(Client.client_id == DEMO_CLIENT_ID)).scalar_one_or_none()
    if client is None:
        client, secret = create_client(
            name="Demo App", redirect_uris=[DEMO_REDIRECT_URI], post_logout_redirect_uris=["http://127.0.0.1:5001/"],
            public=False, grant_types=["authorization_code", "refresh_token"], scopes=[], auth_method=None,
            first_party=False, client_id=DEMO_CLIENT_ID, refresh_tokens_for_sessions=True)
        assert secret is not None  # a confidential client gets one
        cred.write_text(secret)
        cred.chmod(0o600)
        db.session.commit()
        return DEMO_CLIENT_ID, secret
    secret = cred.read_text().strip() if cred.exists() else ""
    if not secret or client.client_secret_hash != token_hash(secret):
        secret = "(changed since; run `idp clients rotate-secret demo-client`)"
    return DEMO_CLIENT_ID, secret


def demo_callback_uri(issuer: str) -> str:
    """Where the built-in relying party receives its codes."""
    return f"{issuer}/demo/callback"


def registered_for(callback: str) -> None:
    """Add the built-in relying party's callback to the demo client once (development only: the issuer follows the
    port `idp run` serves, so the callback does too)."""
    client = db.session.execute(db.select(Client).where(Client.client_id == DEMO_CLIENT_ID)).scalar_one()
    if callback not in (client.redirect_uris or []):
        client.redirect_uris = [*client.redirect_uris, callback]
        db.session.commit()
