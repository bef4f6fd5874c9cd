"""The `idp` console script: Flask's command line (run, db, shell) around the app, plus idp's own commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from dotenv import dotenv_values
from flask.cli import FlaskGroup, run_command

from idp import create_app


class IdpGroup(FlaskGroup):
    """Flask's command group, with `run` that points a development issuer at the port it serves."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return run if cmd_name == "run" else super().get_command(ctx, cmd_name)


@click.command("run", params=run_command.params, help=run_command.help, short_help=run_command.short_help)
@click.pass_context
def run(ctx: click.Context, **options: Any) -> None:
    """Flask's development server. Without IDP_ISSUER (in the environment or .env), the issuer is
    http://localhost:PORT for the port it serves: links, redirects and tokens then name the server that is
    running, and passkeys work (a host name, not an IP address, is what browsers accept as their RP ID)."""
    dotenv = dotenv_values(Path.cwd() / ".env")
    configured = os.environ.get("IDP_ISSUER") or dotenv.get("IDP_ISSUER")
    production = (os.environ.get("IDP_ENV") or dotenv.get("IDP_ENV")) == "production"
    if not configured and not production:  # production names its issuer, or refuses to start
        os.environ["IDP_ISSUER"] = f"http://localhost:{options['port']}"
    issuer = os.environ.get("IDP_ISSUER") or configured
    click.echo(f"idp: open {issuer}/login")
    click.echo(f"idp: the admin console is {issuer}/admin/ (`idp demo` prints its admin account)")
    ctx.invoke(run_command, **options)


@click.group(cls=IdpGroup, create_app=create_app)
def main() -> None:
    """idp: an OAuth 2.0 / OpenID Connect identity provider."""
