"""The `idp` console script: Flask's command line (run, db, shell) around the app, plus idp's own commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from dotenv import dotenv_values
from flask.cli import FlaskGroup, ScriptInfo, run_command

from idp import create_app
from idp.cli import COMMANDS
from idp.config import ConfigError

# The exit status of a refused configuration (issue 20): an init system or a deploy script sees it as "fix the
# settings", apart from a crash (1) and a usage error (click's 2 is also "the operator must change something").
CONFIG_EXIT = 2


class IdpGroup(FlaskGroup):
    """Flask's command group, with `run` that points a development issuer at the port it serves, and settings
    refused in one line (exit status 2) instead of a traceback."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return run if cmd_name == "run" else super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        # Help needs no settings: idp's own commands are on the group itself; Flask's attempt to load the app for
        # plugin commands would print a traceback for a refused configuration, so it is said in one line instead.
        info = ctx.ensure_object(ScriptInfo)
        try:
            info.load_app()
        except ConfigError as exc:
            click.echo(f"idp: note: the app cannot start with these settings: {exc}", err=True)
            return sorted(click.Group.list_commands(self, ctx))
        return super().list_commands(ctx)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"idp: configuration error: {exc}", err=True)
            sys.exit(CONFIG_EXIT)


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


for _command in COMMANDS:
    main.add_command(_command)
