"""`idp clients ...` and `idp keys ...`."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import click
from authlib.oauth2.rfc7591 import ClientMetadataClaims as RFC7591Claims
from authlib.oidc.registration import ClientMetadataClaims as OIDCRegistrationClaims
from flask.cli import AppGroup
from joserfc.errors import InvalidClaimError

from idp import audit
from idp.extensions import db
from idp.login.assurance import LEVELS
from idp.models import Client, SigningKey
from idp.oidc import keys
from idp.oidc.claims import ADMIN_SCOPES, SCOPES
from idp.oidc.server import ALL_AUTH_METHODS, GRANT_TYPES, client_public_keys, revoke_client
from idp.security.keys import SUPPORTED_ALGS
from idp.security.tokens import new_token, token_hash

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})  # where plain http is allowed (RFC 8252 7.3)


def validate_redirect_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be registered (SECURITY.md 1), or None: absolute, no fragment, https or loopback http."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc and parts.scheme in {"http", "https"}:
        return f"not an absolute URI: {uri}"
    if parts.fragment or "#" in uri:
        return f"a redirect URI may not carry a fragment: {uri}"
    if parts.scheme == "http":
        host = parts.hostname or ""
        if host not in LOOPBACK_HOSTS:
            return f"http redirect URIs are only allowed for loopback addresses: {uri}"
    if parts.scheme in {"javascript", "data", "file", "vbscript"}:
        return f"scheme not allowed: {uri}"
    return None


def validate_jwks_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be where a client's keys are fetched, or None: https, or http to a loopback host."""
    parts = urlsplit(uri)
    loopback = parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS
    if not parts.netloc or not (parts.scheme == "https" or loopback) or parts.fragment:
        return f"a JWKS URI is an https URL without a fragment: {uri}"
    return None


# What this server supports, named as in OpenID Provider Metadata (what its discovery document publishes, and the
# admin scopes, which it does not advertise).
SUPPORTED = {
    "scopes_supported": [*SCOPES, *ADMIN_SCOPES], "grant_types_supported": GRANT_TYPES,
    "response_types_supported": ["code"],
    "token_endpoint_auth_methods_supported": ALL_AUTH_METHODS, "acr_values_supported": list(LEVELS),
    "id_token_signing_alg_values_supported": list(SUPPORTED_ALGS),
}


def _refusal(claim: str, metadata: dict) -> str:
    """The one-line reason a registration metadata value is refused."""
    if claim == "scope":
        unknown = [s for s in metadata["scope"].split() if s not in SCOPES and s not in ADMIN_SCOPES]
        return f"unknown scopes: {' '.join(unknown)}"
    if claim == "grant_types":
        unknown = [g for g in metadata["grant_types"] if g not in GRANT_TYPES]
        return f"unsupported grant type {' '.join(unknown)} (choose from {', '.join(GRANT_TYPES)})"
    if claim == "token_endpoint_auth_method":
        return f"unsupported token endpoint auth method {metadata[claim]}"
    if claim == "id_token_signed_response_alg":
        return f"the ID token algorithm must be {' or '.join(SUPPORTED_ALGS)}"
    if claim == "default_acr_values":
        return f"unknown level {metadata[claim][0]} (choose from {', '.join(LEVELS)})"
    return f"invalid {claim}"


def check_metadata(metadata: dict) -> None:
    """Validate client metadata as registration does (RFC 7591 2, OpenID Connect Dynamic Client Registration 2)
    with Authlib's ClientMetadataClaims, against what this server supports; raises ValueError in one line."""
    for claims_class in (RFC7591Claims, OIDCRegistrationClaims):
        claims = claims_class(metadata, {}, options=claims_class.get_claims_options(SUPPORTED))
        try:
            claims.validate()
        except InvalidClaimError as error:
            raise ValueError(_refusal(error.claim, metadata)) from None


def new_client_id() -> str:
    """A random client_id that never starts with "-" (the command line would read it as an option)."""
    while (client_id := new_token(16)).startswith("-"):
        pass
    return client_id


def new_client_secret() -> str:
    """A 256-bit client secret; shown once, stored as its SHA-256 (SECURITY.md 8)."""
    return new_token(32)


def create_client(*, name: str, redirect_uris: list[str], post_logout_redirect_uris: list[str], public: bool,
                  grant_types: list[str], scopes: list[str], auth_method: str | None, first_party: bool,
                  id_token_alg: str = "RS256", jwks: dict | None = None, jwks_uri: str | None = None,
                  client_id: str | None = None, mfa: str = "optional", min_acr: str = "",
                  allow_remembered_device: bool = True, access_token_ttl: int | None = None,
                  refresh_token_ttl: int | None = None,
                  refresh_tokens_for_sessions: bool = False) -> tuple[Client, str | None]:
    """Register a client after checking its settings; returns it and its secret (None for public clients)."""
    grant_types = grant_types or ["authorization_code", "refresh_token"]
    method = "none" if public else (auth_method or "client_secret_basic")
    for uri in [*redirect_uris, *post_logout_redirect_uris]:  # stricter than registration's own URI check
        problem = validate_redirect_uri(uri)
        if problem:
            raise ValueError(problem)
    check_metadata({"redirect_uris": list(redirect_uris), "token_endpoint_auth_method": method,
                    "grant_types": list(grant_types), "response_types": ["code"] if redirect_uris else [],
                    "client_name": name, "scope": " ".join(scopes), "id_token_signed_response_alg": id_token_alg,
                    **({"default_acr_values": [min_acr]} if min_acr else {}),
                    **({"jwks_uri": jwks_uri} if jwks_uri else {})})
    # idp's own rules on top of the registration metadata's.
    if "authorization_code" in grant_types and not redirect_uris:
        raise ValueError("a client with the authorization_code grant needs at least one --redirect-uri")
    if public and auth_method not in (None, "none"):
        raise ValueError("a public client authenticates with 'none'")
    if method == "none" and "client_credentials" in grant_types:
        raise ValueError("client_credentials needs a confidential client")
    if set(scopes) & set(ADMIN_SCOPES) and (grant_types != ["client_credentials"] or method == "none"):
        raise ValueError("the idp:* admin scopes are for a confidential client with only the client_credentials "
                         "grant (a machine; no user can consent to them)")
    if method == "private_key_jwt" and not (jwks or jwks_uri):
        raise ValueError("private_key_jwt needs the client's --jwks or --jwks-uri")
    if jwks is not None:
        client_public_keys(jwks)  # raises ValueError with what is wrong
    problem = validate_jwks_uri(jwks_uri) if jwks_uri else None
    if problem:
        raise ValueError(problem)
    if not name.strip() or len(name) > 200:
        raise ValueError("a client name has 1 to 200 characters")
    for ttl in (access_token_ttl, refresh_token_ttl):
        if ttl is not None and not 60 <= ttl <= 365 * 86400:
            raise ValueError("token lifetimes must be between 60 seconds and a year")
    if mfa not in ("optional", "required"):
        raise ValueError("--mfa must be optional or required")
    secret = None if method in ("none", "private_key_jwt") else new_client_secret()
    client = Client(client_id=client_id or new_client_id(), name=name, redirect_uris=list(redirect_uris),
                    post_logout_redirect_uris=list(post_logout_redirect_uris), grant_types=list(grant_types),
                    scope=" ".join(scopes or SCOPES), token_endpoint_auth_method=method, first_party=first_party,
                    id_token_signed_response_alg=id_token_alg, jwks=jwks, jwks_uri=jwks_uri,
                    client_secret_hash=token_hash(secret) if secret else None, mfa=mfa, min_acr=min_acr,
                    allow_remembered_device=allow_remembered_device, access_token_ttl=access_token_ttl,
                    refresh_token_ttl=refresh_token_ttl, refresh_tokens_for_sessions=refresh_tokens_for_sessions)
    db.session.add(client)
    db.session.flush()
    audit.record("client.created", client_id=client.client_id, name=name, auth_method=method,
                 grant_types=list(grant_types))
    return client, secret


def _client(client_id: str) -> Client:
    client = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none()
    if client is None:
        raise click.ClickException(f"no client with id {client_id}")
    return client


def describe(client: Client) -> dict:
    """A client's settings (never its secret)."""
    return {"client_id": client.client_id, "name": client.name, "redirect_uris": client.redirect_uris,
            "post_logout_redirect_uris": client.post_logout_redirect_uris, "grant_types": client.grant_types,
            "scope": client.scope, "token_endpoint_auth_method": client.token_endpoint_auth_method,
            "first_party": client.first_party, "id_token_signed_response_alg": client.id_token_signed_response_alg,
            "mfa": client.mfa, "min_acr": client.min_acr, "allow_remembered_device": client.allow_remembered_device,
            "access_token_ttl": client.access_token_ttl, "refresh_token_ttl": client.refresh_token_ttl,
            "refresh_tokens_for_sessions": client.refresh_tokens_for_sessions,
            "created_at": client.created_at.isoformat(timespec="seconds")}


# AppGroup pushes the app context for every command, also under app.test_cli_runner().
clients = AppGroup("clients", help="Manage OAuth / OpenID Connect clients.")


@clients.command("create")
@click.option("--name", required=True, help="Shown on the consent screen.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI (repeatable).")
@click.option("--post-logout-redirect-uri", "logout_uris", multiple=True, help="Exact post-logout URI (repeatable).")
@click.option("--public", is_flag=True, help="A public client (SPA, native app): no secret, PKCE required.")
@click.option("--grant-type", "grant_types", multiple=True, type=click.Choice(GRANT_TYPES),
              help="Allowed grant (repeatable; default authorization_code and refresh_token).")
@click.option("--scope", "scopes", multiple=True, help="Allowed scope (repeatable; default all).")
@click.option("--token-endpoint-auth-method", "auth_method", type=click.Choice(ALL_AUTH_METHODS))
@click.option("--first-party", is_flag=True, help="Trusted client: no consent screen.")
@click.option("--id-token-alg", default="RS256", type=click.Choice(["RS256", "ES256"]))
@click.option("--jwks", "jwks_json", help="The client's public JWK Set as JSON (private_key_jwt).")
@click.option("--jwks-uri", help="Where the client publishes its JWK Set (private_key_jwt).")
@click.option("--mfa", type=click.Choice(["optional", "required"]), default="optional",
              help="Require a second factor for every sign-in to this client.")
@click.option("--acr", "min_acr", type=click.Choice(list(LEVELS)), default=None,
              help="The lowest level of assurance this client accepts.")
@click.option("--no-remembered-devices", is_flag=True, help="A remembered device never skips the second factor.")
@click.option("--access-token-ttl", type=int, help="Seconds its access tokens live (default IDP_ACCESS_TOKEN_TTL).")
@click.option("--refresh-token-ttl", type=int, help="Idle expiry of its refresh tokens (seconds).")
@click.option("--refresh-for-sessions", "refresh_for_sessions", is_flag=True,
              help="Refresh tokens without offline_access too; they end with the user's sign-in session.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with client_id and client_secret.")
def clients_create(name, redirect_uris, logout_uris, public, grant_types, scopes, auth_method, first_party,
                   id_token_alg, jwks_json, jwks_uri, mfa, min_acr, no_remembered_devices, access_token_ttl,
                   refresh_token_ttl, refresh_for_sessions, as_json):
    """Register a client; its secret is printed once."""
    try:
        jwks = json.loads(jwks_json) if jwks_json else None
        client, secret = create_client(
            name=name, redirect_uris=list(redirect_uris), post_logout_redirect_uris=list(logout_uris),
            public=public, grant_types=list(grant_types), scopes=list(scopes), auth_method=auth_method,
            first_party=first_party, id_token_alg=id_token_alg, jwks=jwks, jwks_uri=jwks_uri, mfa=mfa,
            min_acr=min_acr or "", allow_remembered_device=not no_remembered_devices,
            access_token_ttl=access_token_ttl, refresh_token_ttl=refresh_token_ttl,
            refresh_tokens_for_sessions=refresh_for_sessions)
    except (ValueError, json.JSONDecodeError) as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    if as_json:
        click.echo(json.dumps({"client_id": client.client_id, "client_secret": secret}))
        return
    click.echo(f"client_id:     {client.client_id}")
    if secret:
        click.echo(f"client_secret: {secret}")
        click.echo("The secret is shown only now; it is stored hashed.")


@clients.command("list")
def clients_list():
    """List clients."""
    for client in db.session.execute(db.select(Client).order_by(Client.id)).scalars():
        click.echo(f"{client.client_id}\t{client.name}\t{client.token_endpoint_auth_method}\t"
                   f"{','.join(client.grant_types)}\t{' '.join(client.redirect_uris)}")


@clients.command("show")
@click.argument("client_id")
def clients_show(client_id):
    """Show one client's settings as JSON."""
    click.echo(json.dumps(describe(_client(client_id)), indent=2))


@clients.command("delete")
@click.argument("client_id")
def clients_delete(client_id):
    """Delete a client (its tokens stop working)."""
    client = _client(client_id)
    revoke_client(client.client_id, "client_deleted")
    db.session.delete(client)
    audit.record("client.deleted", client_id=client_id)
    db.session.commit()
    click.echo(f"deleted {client_id}")


@clients.command("rotate-secret")
@click.argument("client_id")
def clients_rotate_secret(client_id):
    """Issue a new secret (printed once); the old one stops working."""
    client = _client(client_id)
    if client.client_secret_hash is None:
        raise click.ClickException("this client has no secret (public or private_key_jwt)")
    secret = new_client_secret()
    client.client_secret_hash = token_hash(secret)
    audit.record("client.secret_rotated", client_id=client_id)
    db.session.commit()
    click.echo(f"client_secret: {secret}")


keys_group = AppGroup("keys", help="Manage the signing keys.")


@keys_group.command("list")
def keys_list():
    """List signing keys: active, or retired and still published until a date."""
    keys.active()
    for row in db.session.execute(db.select(SigningKey).order_by(SigningKey.created_at.desc())).scalars():
        status = "active" if row.retired_at is None else f"retired, published until {row.publish_until:%Y-%m-%d %H:%M}"
        click.echo(f"{row.kid}\t{row.alg}\t{row.created_at:%Y-%m-%d %H:%M}\t{status}")


@keys_group.command("rotate")
def keys_rotate():
    """Add new signing keys; the previous ones stay in JWKS until their tokens have expired."""
    fresh = keys.rotate(max_token_lifetime=keys.longest_token_lifetime())
    audit.record("key.rotated", kids=[row.kid for row in fresh], commit=True)
    for row in fresh:
        click.echo(f"new signing key {row.kid} ({row.alg})")
