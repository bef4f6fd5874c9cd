"""First run on the embedded defaults: the issuer names the server that runs (a host name, so passkeys work), and
where the issuer is an IP address the passkey options are hidden and explained instead of failing in the browser."""

from __future__ import annotations

import click
from click.testing import CliRunner

from idp import console
from tests.support import signed_in_email, walk


def test_idp_run_points_the_development_issuer_at_the_port_it_serves(monkeypatch, tmp_path):
    seen = {}

    @click.command("run", params=console.run_command.params)
    def fake_run(**options):
        import os

        seen["issuer"], seen["port"] = os.environ.get("IDP_ISSUER"), options["port"]

    monkeypatch.setattr(console, "run_command", fake_run)
    for name in ("IDP_ISSUER", "IDP_ENV"):  # set, then removed: the test leaves them as they were
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env here
    result = CliRunner().invoke(console.main, ["run", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert seen == {"issuer": "http://localhost:8123", "port": 8123}
    assert "http://localhost:8123/login" in result.output


def test_a_configured_issuer_is_kept_by_idp_run(monkeypatch, tmp_path):
    seen = {}

    @click.command("run", params=console.run_command.params)
    def fake_run(**options):
        import os

        seen["issuer"] = os.environ.get("IDP_ISSUER")

    monkeypatch.setattr(console, "run_command", fake_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("IDP_ISSUER=https://id.example.com\n")
    monkeypatch.setenv("IDP_ISSUER", "x")
    monkeypatch.delenv("IDP_ISSUER")
    assert CliRunner().invoke(console.main, ["run", "--port", "8124"]).exit_code == 0
    assert seen["issuer"] == "https://id.example.com"  # the .env file's, not one made up from the port


def test_an_ip_address_issuer_hides_passkeys_and_says_why(make_app, make_user):
    app = make_app(IDP_ISSUER="http://127.0.0.1:5000")
    make_user()
    client = app.test_client()
    result = walk(client, "/login")
    assert signed_in_email(client) == "alice@example.com"
    assert "passkey-options" not in result.pages[0].get_data(as_text=True)
    page = client.get("/account/security").get_data(as_text=True)
    assert "Add a passkey" not in page and "is an IP address" in page
    assert client.get("/account/security/webauthn/new").status_code == 404


def test_a_host_name_issuer_offers_passkeys(make_app, make_user):
    app = make_app(IDP_ISSUER="http://localhost:5000")
    make_user()
    client = app.test_client()
    result = walk(client, "/login")
    assert "passkey-options" in result.pages[0].get_data(as_text=True)
    page = client.get("/account/security").get_data(as_text=True)
    assert "Add a passkey" in page and "is an IP address" not in page
    assert client.get("/account/security/webauthn/new").status_code == 200
