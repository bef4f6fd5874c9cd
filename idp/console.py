"""The `idp` console script: Flask's command line (run, db, shell) around the app, plus idp's own commands."""

from __future__ import annotations

import click
from flask.cli import FlaskGroup

from idp import create_app


@click.group(cls=FlaskGroup, create_app=create_app)
def main() -> None:
    """idp: an OAuth 2.0 / OpenID Connect identity provider."""
