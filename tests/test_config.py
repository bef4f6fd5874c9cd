"""Settings: production refuses unsafe configuration in one clear line; development fills safe local defaults."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from dotenv import dotenv_values

from idp import ROOT, config, create_app
from idp.config import SETTINGS, ConfigError, env_example
from tests.conftest import base_config

GOOD_SECRET = "s" * 32
SECRETLESS_TEST_COST = "t=1,m=64,p=1"  # what tests/conftest.py sets
PRODUCTION = {
    "IDP_ENV": "production",
    "IDP_SECRET_KEY": GOOD_SECRET,
    "IDP_ISSUER": "https://id.example.com/",
    "IDP_DATABASE_URL": "postgresql://idp@db.example.com/idp",
    "IDP_REDIS_URL": "redis://cache.example.com:6379/0",
}


def _refusal(tmp_path, **changes) -> str:
    """The one-line message of the ConfigError a production environment with ``changes`` raises."""
    environ = {k: v for k, v in {**PRODUCTION, **changes}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        config.load(environ=environ, instance_path=str(tmp_path))
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_complete_production_config_loads(tmp_path):
    values = config.load(environ=dict(PRODUCTION), instance_path=str(tmp_path))
    assert values["IDP_ENV"] == "production"
    assert values["IDP_SECRET_KEY"] == GOOD_SECRET
    assert values["IDP_ISSUER"] == "https://id.example.com"  # trailing slash trimmed
    assert values["IDP_DATABASE_URL"] == "postgresql+psycopg2://idp@db.example.com/idp"
    assert values["IDP_MAIL_BACKEND"] == "smtp"
    assert not (tmp_path / "secret_key").exists()  # a configured secret is never replaced by a generated one


@pytest.mark.parametrize(("changes", "named"), [
    ({"IDP_SECRET_KEY": None}, "IDP_SECRET_KEY"),
    ({"IDP_SECRET_KEY": "s" * 31}, "IDP_SECRET_KEY"),
    ({"IDP_ISSUER": "http://id.example.com"}, "IDP_ISSUER"),
    ({"IDP_ISSUER": None}, "IDP_ISSUER"),
    ({"IDP_DATABASE_URL": "sqlite:////var/lib/idp/idp.sqlite3"}, "IDP_DATABASE_URL"),
    ({"IDP_DATABASE_URL": None}, "IDP_DATABASE_URL"),
    ({"IDP_REDIS_URL": None}, "IDP_REDIS_URL"),
    ({"IDP_REDIS_URL": ""}, "IDP_REDIS_URL"),
    ({"IDP_MAIL_BACKEND": "outbox"}, "IDP_MAIL_BACKEND"),
], ids=["no-secret", "short-secret", "http-issuer", "default-issuer", "sqlite", "default-database", "no-redis",
        "empty-redis", "outbox-mail"])
def test_production_refuses_to_start_naming_what_is_wrong(tmp_path, changes, named):
    message = _refusal(tmp_path, **changes)
    assert message.startswith(named)
    assert "production" in message
    assert not (tmp_path / "secret_key").exists()


def test_secret_length_is_counted_in_bytes(tmp_path):
    values = config.load(environ={**PRODUCTION, "IDP_SECRET_KEY": "\u00e9" * 16}, instance_path=str(tmp_path))
    assert len(values["IDP_SECRET_KEY"]) == 16  # 16 characters, 32 bytes of UTF-8: accepted


def test_other_postgres_spellings_are_accepted_and_use_psycopg2(tmp_path):
    for url in ("postgres://idp@db/idp", "postgresql+psycopg2://idp@db/idp"):
        values = config.load(environ={**PRODUCTION, "IDP_DATABASE_URL": url}, instance_path=str(tmp_path))
        assert values["IDP_DATABASE_URL"] == "postgresql+psycopg2://idp@db/idp"


def test_create_app_in_production_with_a_bad_config_raises(tmp_path):
    with pytest.raises(ConfigError, match="^IDP_ISSUER"):
        create_app({**PRODUCTION, "IDP_ISSUER": "http://id.example.com"})
    with pytest.raises(ConfigError, match="^IDP_REDIS_URL"):
        create_app({**PRODUCTION, "IDP_REDIS_URL": ""})


def test_create_app_reads_the_environment_and_refuses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .env here
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    for name, value in {**PRODUCTION, "IDP_SECRET_KEY": "too-short"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="^IDP_SECRET_KEY must be set to at least 32 bytes"):
        create_app()


def test_dotenv_file_is_read_but_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("IDP_ISSUER=https://from-dotenv.example\nIDP_QUEUE_NAME=from-dotenv\n")
    for setting in SETTINGS:
        monkeypatch.setenv(setting.name, "placeholder")  # recorded, so whatever load_dotenv sets is undone
        monkeypatch.delenv(setting.name)
    monkeypatch.setenv("IDP_QUEUE_NAME", "from-environment")
    values = config.load(instance_path=str(tmp_path / "instance"))
    assert values["IDP_ISSUER"] == "https://from-dotenv.example"
    assert values["IDP_QUEUE_NAME"] == "from-environment"


def test_development_defaults_live_in_the_instance_folder(tmp_path):
    instance = tmp_path / "instance"
    values = config.load(environ={}, instance_path=str(instance))
    assert values["IDP_ENV"] == "development"
    assert values["IDP_DATABASE_URL"] == "sqlite:///" + str(instance / "idp.sqlite3")
    assert values["IDP_OUTBOX_DIR"] == str(instance / "outbox")
    assert values["IDP_MAIL_BACKEND"] == "outbox"
    assert values["IDP_REDIS_URL"] == ""
    assert values["IDP_ISSUER"] == "http://localhost:5000"  # a host name: passkeys need one
    secret_file = instance / "secret_key"
    assert values["IDP_SECRET_KEY"] == secret_file.read_text()
    assert len(values["IDP_SECRET_KEY"].encode()) >= 32
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600  # readable by its owner only


def test_instance_secret_is_random_per_folder_and_kept_across_restarts(tmp_path):
    first = config.load(environ={}, instance_path=str(tmp_path / "one"))["IDP_SECRET_KEY"]
    again = config.load(environ={}, instance_path=str(tmp_path / "one"))["IDP_SECRET_KEY"]
    other = config.load(environ={}, instance_path=str(tmp_path / "two"))["IDP_SECRET_KEY"]
    assert first == again
    assert first != other
    for name in ("one", "two"):  # a configured secret wins over the file
        values = config.load(environ={"IDP_SECRET_KEY": GOOD_SECRET}, instance_path=str(tmp_path / name))
        assert values["IDP_SECRET_KEY"] == GOOD_SECRET


def test_environment_values_are_parsed_and_overrides_win(tmp_path):
    environ = {"IDP_SMTP_PORT": "587", "IDP_SMTP_STARTTLS": "yes", "IDP_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1",
               "IDP_JOB_RETRY_INTERVALS": "5, 30", "IDP_QUEUE_NAME": "from-env"}
    values = config.load(environ=environ, overrides={"IDP_QUEUE_NAME": "override"}, instance_path=str(tmp_path))
    assert values["IDP_SMTP_PORT"] == 587
    assert values["IDP_SMTP_STARTTLS"] is True
    assert values["IDP_TRUSTED_PROXIES"] == ["10.0.0.0/8", "192.0.2.1"]
    assert values["IDP_JOB_RETRY_INTERVALS"] == [5, 30]
    assert values["IDP_QUEUE_NAME"] == "override"


@pytest.mark.parametrize(("name", "value"), [
    ("IDP_SMTP_PORT", "twenty-five"),
    ("IDP_SMTP_STARTTLS", "maybe"),
    ("IDP_SESSION_IDLE_TIMEOUT", "30m"),
    ("IDP_TRUSTED_PROXIES", "10.0.0.0/8, proxy.example.com"),
    ("IDP_JOB_RETRY_INTERVALS", "10,soon"),
    ("IDP_DEFAULT_PHONE_REGION", "XX"),
    # Branding: the colour is written into a stylesheet and the logo's origin into the CSP header.
    ("IDP_BRAND_COLOR", "red"),
    ("IDP_BRAND_COLOR", "#12345"),
    ("IDP_BRAND_COLOR", "#0b5cad; } body { display: none"),
    ("IDP_BRAND_LOGO_URL", "http://cdn.example.com/logo.png"),
    ("IDP_BRAND_LOGO_URL", "javascript:alert(1)"),
    ("IDP_BRAND_LOGO_URL", "https://cdn.example.com;script-src 'unsafe-inline'/logo.png"),
    ("IDP_BRAND_LOGO_URL", "https://user@cdn.example.com/logo.png"),
    ("IDP_BRAND_LOGO_URL", "../secret_key"),
    ("IDP_THEME_DIR", "/no/such/folder"),
])
def test_unparseable_values_are_refused_in_one_line_naming_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError) as info:
        config.load(environ={name: value}, instance_path=str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    with pytest.raises(ConfigError, match=f"^{name}: "):  # the app refuses to start on it
        create_app(base_config(tmp_path, **{name: value}))


def test_unknown_environment_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="^IDP_ENV must be development, testing or production"):
        config.load(environ={"IDP_ENV": "prod"}, instance_path=str(tmp_path))


def test_env_example_lists_every_setting_once_with_its_doc():
    text = env_example()
    assigned = [line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert assigned == [s.name for s in SETTINGS]
    for s in SETTINGS:
        assert f"# {s.doc}\n{s.name}=" in text


def test_env_example_copied_to_dotenv_gives_the_development_defaults(tmp_path):
    example = tmp_path / ".env.example"
    example.write_text(env_example())
    from_example = config.load(environ=dotenv_values(example), instance_path=str(tmp_path))
    assert from_example == config.load(environ={}, instance_path=str(tmp_path))


def test_committed_env_example_is_the_generated_one():
    committed = Path(ROOT) / ".env.example"
    assert committed.read_text() == env_example(), "regenerate it: idp config-doc > .env.example"


def test_readme_configuration_table_is_the_generated_one():
    """The README's table is `idp config-doc --markdown`, so a new setting cannot go undocumented."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert config.markdown_table() in readme


@pytest.mark.parametrize("name, ceiling", [("IDP_EMAIL_CODE_TTL", 600), ("IDP_SMS_CODE_TTL", 600),
                                           ("IDP_AUTH_CODE_TTL", 60), ("IDP_LOCKOUT_THRESHOLD", 100)])
def test_security_ceilings_hold_whatever_the_setting_says(tmp_path, name, ceiling):
    """SECURITY.md 5, 21, 23: codes live at most 10 minutes (authorization codes 60 s), an account locks after at
    most 100 failures; a larger value is taken as the ceiling, for every reader of the setting."""
    values = config.load(environ={name: str(ceiling * 10)}, instance_path=str(tmp_path))
    assert values[name] == ceiling
    assert config.load(environ={name: str(ceiling - 1)}, instance_path=str(tmp_path))[name] == ceiling - 1


def test_production_hashes_passwords_at_the_rfc_9106_cost_and_refuses_less(tmp_path):
    from idp.security import passwords

    assert passwords.PRODUCTION_COST == passwords.Cost(time=3, memory=65536, lanes=4)  # RFC 9106 4, 2nd option
    create_app(dict(PRODUCTION))  # builds without reaching its database or Redis
    try:
        assert passwords.current_cost() == passwords.PRODUCTION_COST
        assert passwords.hash_password("a production password").startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    finally:
        passwords.use_cost(passwords.Cost.parse(SECRETLESS_TEST_COST))
    assert _refusal(tmp_path, IDP_PASSWORD_HASH_COST="t=2,m=65536,p=4").startswith(
        "IDP_PASSWORD_HASH_COST must be at least t=3,m=65536,p=4 in production")
    assert _refusal(tmp_path, IDP_PASSWORD_HASH_COST="t=3,m=19456,p=4").startswith("IDP_PASSWORD_HASH_COST")
    stronger = config.load(environ={**PRODUCTION, "IDP_PASSWORD_HASH_COST": "t=4,m=131072,p=4"},
                           instance_path=str(tmp_path))
    assert stronger["IDP_PASSWORD_HASH_COST"] == passwords.Cost(4, 131072, 4)


def test_tests_hash_cheaply_and_the_development_default_is_the_production_cost(app, tmp_path):
    from idp.security import passwords

    assert passwords.current_cost() == passwords.Cost.parse(SECRETLESS_TEST_COST)
    development = config.load(environ={"IDP_ENV": "development"}, instance_path=str(tmp_path))
    assert development["IDP_PASSWORD_HASH_COST"] == passwords.PRODUCTION_COST


@pytest.mark.parametrize("value", ["t=3,m=65536", "t=0,m=64,p=1", "t=1,m=7,p=1", "t=1,m=64,p=1;rm"])
def test_a_malformed_hash_cost_is_refused_in_one_line(tmp_path, value):
    with pytest.raises(ConfigError, match="^IDP_PASSWORD_HASH_COST: "):
        config.load(environ={"IDP_ENV": "development", "IDP_PASSWORD_HASH_COST": value}, instance_path=str(tmp_path))
