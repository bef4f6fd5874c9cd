"""A backup drill with deploy/backup.sh and deploy/restore.sh: what a restored copy must still do for the people
and applications that used idp before the backup (PostgreSQL only: the scripts are pg_dump and pg_restore)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine, text

from idp import create_app
from idp.extensions import db
from tests.conftest import TEST_DATABASE_URL, base_config
from tests.support import (
    PASSWORD,
    RP_CALLBACK,
    authorize,
    make_client_in,
    make_user_in,
    pkce_pair,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TOOLS = ("pg_dump", "pg_restore", "psql")

pytestmark = [
    pytest.mark.skipif(not TEST_DATABASE_URL.startswith("postgresql"),
                       reason="needs PostgreSQL (IDP_TEST_DATABASE_URL): the backup is a pg_dump"),
    pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS),
                       reason="pg_dump, pg_restore or psql is missing (apt-get install postgresql-client)"),
]


def beside(name: str) -> str:
    """The URL of database ``name`` on the test database's server."""
    return urlunsplit(urlsplit(TEST_DATABASE_URL)._replace(path=f"/{name}"))


def maintenance():
    parts = urlsplit(TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg2://", 1))
    return create_engine(urlunsplit(parts._replace(path="/postgres")), isolation_level="AUTOCOMMIT")


def app_on(url: str, folder: Path):
    return create_app(base_config(folder, IDP_DATABASE_URL=url, IDP_MAIL_BACKEND="console"))


def code_flow(client, client_id: str, secret: str) -> dict:
    verifier, challenge = pkce_pair()
    code = authorize(client, client_id, scope="openid email offline_access", code_challenge=challenge,
                     code_challenge_method="S256")
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": RP_CALLBACK, "code_verifier": verifier},
                           auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def run(script: str, *args: str, **environ: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("IDP_", "PG"))}
    return subprocess.run([str(DEPLOY / script), *args], env={**env, **environ}, capture_output=True, text=True,
                          timeout=300)


def dumps(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_restored_backup_keeps_users_keys_and_tokens_working(tmp_path):
    run_id = uuid.uuid4().hex[:8]
    base = urlsplit(TEST_DATABASE_URL).path.lstrip("/")
    source_name, restored_name = f"{base}_backup_{run_id}", f"{base}_restored_{run_id}"
    source_url, restored_url = beside(source_name), beside(restored_name)
    apps = []
    server = maintenance()
    try:
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{source_name}"'))
        app = app_on(source_url, tmp_path / "source")
        apps.append(app)
        with app.app_context():
            from flask_migrate import upgrade

            upgrade()
        make_user_in(app, email="alice@example.com", password=PASSWORD)
        client_id, secret = make_client_in(app, first_party=True)
        browser = app.test_client()
        before = code_flow(browser, client_id, secret)
        assert before["refresh_token"]
        kids = {key["kid"] for key in browser.get("/jwks.json").get_json()["keys"]}

        backups = tmp_path / "backups"
        backups.mkdir()
        made = run("backup.sh", str(backups), source_url.replace("postgresql://", "postgresql+psycopg2://", 1))
        assert made.returncode == 0, made.stderr
        dump = Path(made.stdout.strip())
        assert dump.parent == backups and re.fullmatch(r"idp-\d{8}T\d{6}\.\d{3}Z\.dump", dump.name)
        assert dumps(backups) == [dump.name]  # the temporary file is gone
        make_user_in(app, email="after@example.com")  # after the backup: not in the copy

        restored = run("restore.sh", str(dump), restored_url)
        assert restored.returncode == 0, restored.stderr
        assert f"created database {restored_name}" in restored.stdout
        again = run("restore.sh", str(dump), restored_url)
        assert again.returncode != 0 and "is not empty" in again.stderr  # never on top of data
        onto_source = run("restore.sh", str(dump), source_url)
        assert onto_source.returncode != 0 and "is not empty" in onto_source.stderr

        copy = app_on(restored_url, tmp_path / "restored")
        apps.append(copy)
        rp = copy.test_client()
        # The same signing keys: tokens signed before the backup verify against the copy's JWKS.
        assert {key["kid"] for key in rp.get("/jwks.json").get_json()["keys"]} == kids
        info = rp.get("/userinfo", headers={"Authorization": f"Bearer {before['access_token']}"})
        assert info.status_code == 200 and info.get_json()["email"] == "alice@example.com"
        introspected = rp.post("/introspect", data={"token": before["access_token"]}, auth=(client_id, secret))
        assert introspected.get_json()["active"] is True
        refreshed = rp.post("/token", data={"grant_type": "refresh_token", "refresh_token": before["refresh_token"]},
                            auth=(client_id, secret))
        assert refreshed.status_code == 200, refreshed.get_json()
        assert refreshed.get_json()["refresh_token"] != before["refresh_token"]
        # The same password signs in, and the client's secret is the same one (a new code flow on the copy).
        after = code_flow(copy.test_client(), client_id, secret)
        assert after["access_token"]
        with copy.app_context():
            from idp.models import User

            emails = set(db.session.execute(db.select(User.email)).scalars())
        assert emails == {"alice@example.com"}

        # Rotation: the newest IDP_BACKUP_KEEP stay.
        for _ in range(3):
            assert run("backup.sh", str(backups), source_url, IDP_BACKUP_KEEP="2").returncode == 0
        kept = dumps(backups)
        assert len(kept) == 2 and all(name.startswith("idp-") for name in kept)
        assert dump.name not in kept  # the oldest went first
        refused = run("backup.sh", str(backups), source_url, IDP_BACKUP_KEEP="0")
        assert refused.returncode != 0 and dumps(backups) == kept
    finally:
        for each in apps:
            with each.app_context():
                db.session.remove()
                db.engine.dispose()
            queue = each.extensions.get("idp.queue")
            if queue is not None:  # the new-device mails the sign-ins queued
                queue.delete(delete_jobs=True)
        with server.connect() as conn:
            for name in (source_name, restored_name):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
