"""`idp clients ...` and `idp keys ...`."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from idp.admin import service as admin_service
from idp.extensions import db
from idp.login.assurance import LEVELS
from idp.models import Client
from idp.oidc.registration import ALL_AUTH_METHODS, GRANT_TYPES, describe


def _client(client_id: str) -> Client:
    client = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none()
    if client is None:
        raise click.ClickException(f"no client with id {client_id}")
    return client


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
@click.option("--logo-uri", help="An https URL of the client's logo, shown on the consent page.")
@click.option("--require-par", is_flag=True,
              help="Authorization requests only as pushed ones (RFC 9126): a plain /authorize is refused.")
@click.option("--backchannel-logout-uri",
              help="Where a logout token is POSTed when a session it signed into ends (Back-Channel Logout 1.0).")
@click.option("--backchannel-logout-session-required", is_flag=True,
              help="The client needs the sid claim in logout tokens (idp always sends it when known).")
@click.option("--frontchannel-logout-uri",
              help="Shown in an invisible iframe on the signed-out page (Front-Channel Logout 1.0); same origin as "
                   "a redirect URI.")
@click.option("--frontchannel-logout-session-required", is_flag=True,
              help="Add iss and sid to the front-channel logout URI.")
@click.option("--dpop", is_flag=True,
              help="Every token request must carry a DPoP proof (RFC 9449 5.2 dpop_bound_access_tokens).")
@click.option("--token-exchange-actor", "token_exchange_actors", multiple=True,
              help="A client id that may exchange tokens for one addressed to this client (RFC 8693; repeatable).")
@click.option("--request-uri", "request_uris", multiple=True,
              help="An https URL the client may pass request objects by reference from (RFC 9101 5.2; repeatable).")
@click.option("--request-object-alg", type=click.Choice(["RS256", "ES256", "PS256", "none"]),
              help="The one algorithm its request objects must be signed with (default: RS256, ES256 or PS256 with "
                   "its --jwks or --jwks-uri keys); 'none' allows unsigned ones.")
@click.option("--policy-uri", help="An https URL of the client's privacy policy, linked from the consent page.")
@click.option("--tos-uri", help="An https URL of the client's terms of service, linked from the consent page.")
@click.option("--application-type", type=click.Choice(["web", "native"]),
              help="web: https redirect URIs; native: an app's own scheme too (OIDC Dynamic Registration 2).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with client_id and client_secret.")
def clients_create(name, redirect_uris, logout_uris, public, grant_types, scopes, auth_method, first_party,
                   id_token_alg, jwks_json, jwks_uri, mfa, min_acr, no_remembered_devices, access_token_ttl,
                   refresh_token_ttl, refresh_for_sessions, logo_uri, require_par, backchannel_logout_uri,
                   backchannel_logout_session_required, frontchannel_logout_uri,
                   frontchannel_logout_session_required, dpop, token_exchange_actors, request_uris,
                   request_object_alg, policy_uri, tos_uri, application_type, as_json):
    """Register a client; its secret is printed once."""
    try:
        jwks = json.loads(jwks_json) if jwks_json else None
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--jwks is not JSON: {exc}") from None
    try:
        client, secret = admin_service.create_client(
            admin_service.OPERATOR,
            name=name, redirect_uris=list(redirect_uris), post_logout_redirect_uris=list(logout_uris),
            public=public, grant_types=list(grant_types), scopes=list(scopes), auth_method=auth_method,
            first_party=first_party, id_token_alg=id_token_alg, jwks=jwks, jwks_uri=jwks_uri, mfa=mfa,
            min_acr=min_acr or "", allow_remembered_device=not no_remembered_devices,
            access_token_ttl=access_token_ttl, refresh_token_ttl=refresh_token_ttl,
            refresh_tokens_for_sessions=refresh_for_sessions, logo_uri=logo_uri,
            require_pushed_authorization_requests=require_par, backchannel_logout_uri=backchannel_logout_uri,
            backchannel_logout_session_required=backchannel_logout_session_required,
            frontchannel_logout_uri=frontchannel_logout_uri,
            frontchannel_logout_session_required=frontchannel_logout_session_required,
            dpop_bound_access_tokens=dpop, token_exchange_actors=list(token_exchange_actors),
            request_uris=list(request_uris), request_object_signing_alg=request_object_alg,
            policy_uri=policy_uri, tos_uri=tos_uri, application_type=application_type)
    except admin_service.Invalid as refused:
        raise click.ClickException(refused.errors.get("client", str(refused))) from None
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


@clients.command("update")
@click.argument("client_id")
@click.argument("changes")
def clients_update(client_id, changes):
    """Change settings, given as a JSON object under the admin API's names (e.g. '{"name": "Shop", "mfa":
    "required"}'); checked as a whole, as at creation."""
    client = _client(client_id)
    try:
        settings = json.loads(changes)
    except json.JSONDecodeError:
        raise click.ClickException("CHANGES must be a JSON object") from None
    if not isinstance(settings, dict):
        raise click.ClickException("CHANGES must be a JSON object")
    if "token_endpoint_auth_method" in settings:
        settings["auth_method"] = settings.pop("token_endpoint_auth_method")
    try:
        admin_service.update_client(admin_service.OPERATOR, client, settings)
    except admin_service.AdminError as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(json.dumps(describe(client), indent=2))


@clients.command("delete")
@click.argument("client_id")
def clients_delete(client_id):
    """Delete a client (its tokens stop working)."""
    client = _client(client_id)
    admin_service.delete_client(admin_service.OPERATOR, client)
    click.echo(f"deleted {client_id}")


@clients.command("rotate-secret")
@click.argument("client_id")
def clients_rotate_secret(client_id):
    """Issue a new secret (printed once); the old one stops working."""
    client = _client(client_id)
    try:
        secret = admin_service.rotate_client_secret(admin_service.OPERATOR, client)
    except admin_service.AdminError as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(f"client_secret: {secret}")


@clients.command("initial-token")
@click.option("--expires-in", type=int, default=86400, show_default=True, help="Seconds the token stays valid.")
@click.option("--uses", type=int, default=None, help="Registrations it allows (default: any number until it expires).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def clients_initial_token(expires_in, uses, as_json):
    """Issue an initial access token for dynamic client registration (RFC 7591 3; IDP_REGISTRATION=initial-token);
    printed once, stored hashed."""
    try:
        token, expires_at = admin_service.issue_initial_access_token(admin_service.OPERATOR, expires_in, uses)
    except admin_service.Invalid as refused:
        raise click.ClickException(refused.errors.get("initial_access_token", str(refused))) from None
    if as_json:
        click.echo(json.dumps({"initial_access_token": token, "expires_at": expires_at.isoformat(), "uses": uses}))
        return
    click.echo(f"initial_access_token: {token}")
    click.echo(f"expires_at:           {expires_at:%Y-%m-%d %H:%M:%S} UTC"
               + (f" ({uses} registration{'s' if uses != 1 else ''})" if uses is not None else ""))
    click.echo("Send it as 'Authorization: Bearer ...' to /register. It is shown only now; it is stored hashed.")


keys_group = AppGroup("keys", help="Manage the signing keys.")


@keys_group.command("list")
def keys_list():
    """List signing keys: active, or retired and still published until a date."""
    for row in admin_service.list_keys(admin_service.OPERATOR):
        status = "active" if row.retired_at is None else f"retired, published until {row.publish_until:%Y-%m-%d %H:%M}"
        click.echo(f"{row.kid}\t{row.alg}\t{row.created_at:%Y-%m-%d %H:%M}\t{status}")


@keys_group.command("rotate")
def keys_rotate():
    """Add new signing keys; the previous ones stay in JWKS until their tokens have expired."""
    fresh = admin_service.rotate_keys(admin_service.OPERATOR)
    for row in fresh:
        click.echo(f"new signing key {row.kid} ({row.alg})")
