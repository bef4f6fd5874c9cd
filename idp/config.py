"""Every setting of idp, with its default and one line of documentation.

Settings are read from ``IDP_*`` environment variables (and a ``.env`` file in the working directory, if
present) when ``create_app`` runs, never at import time. ``.env.example`` and the README table are generated
from ``SETTINGS`` (``idp config doc``), so this module is the single source of truth.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from idp.security import network
from idp.security.passwords import PRODUCTION_COST, Cost


class ConfigError(RuntimeError):
    """A setting is missing or unsafe; the message names it in one line."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _hex_colour(value: str) -> str:
    # Only #rgb or #rrggbb: the value is written into a stylesheet (/brand.css), so nothing else may pass.
    value = value.strip()
    if value and not re.fullmatch(r"#(?:[0-9a-fA-F]{3}){1,2}", value):
        raise ValueError(f"must be a CSS hex colour such as #0b5cad, not {value!r}")
    return value.lower()


def _android_apps(value: str) -> list[tuple[str, str]]:
    # Checked at start-up: a mistyped fingerprint would otherwise publish a Digital Asset Links file that no app
    # matches, and every passkey ceremony of the app would fail on the origin.
    apps = []
    for entry in _list(value):
        package, _sep, fingerprint = entry.partition("=")
        package, fingerprint = package.strip(), fingerprint.strip().upper()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+", package):
            raise ValueError(f"not an Android package name: {package!r}")
        if not re.fullmatch(r"[0-9A-F]{2}(:[0-9A-F]{2}){31}", fingerprint):
            raise ValueError(f"{package}: the SHA-256 fingerprint must be 32 colon-separated hex bytes")
        apps.append((package, fingerprint))
    return apps


def _log_format(value: str) -> str:
    value = value.strip().lower()
    if value not in ("json", "text"):
        raise ValueError(f"must be json or text, not {value!r}")
    return value


def _admin_acr(value: str) -> str:
    # Below MFA the console would be one stolen password away; only the two multi-factor levels are accepted.
    value = value.strip()
    if value not in ("urn:idp:acr:mfa", "urn:idp:acr:phr"):
        raise ValueError(f"must be urn:idp:acr:mfa or urn:idp:acr:phr, not {value!r}")
    return value


def _region(value: str) -> str:
    # A region phonenumbers knows (ISO 3166-1 alpha-2), so that a mistyped one fails at start-up, not at the form.
    value = value.strip().upper()
    if value and value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"must be a two-letter region such as US or GB, not {value!r}")
    return value


def _logo_url(value: str) -> str:
    # An https URL (the CSP then allows its origin for images) or a file under static/ (or the theme's static/).
    value = value.strip()
    if not value:
        return value
    if value.startswith("https://"):
        # Its origin goes into the Content-Security-Policy header: a host name and port, nothing that could end
        # the directive (;) or add a source.
        if not re.fullmatch(r"[A-Za-z0-9.-]+(?::\d+)?", urlsplit(value).netloc) or any(c in value for c in " ;,'\""):
            raise ValueError(f"not a plain https:// URL: {value!r}")
        return value
    path = value.removeprefix("/static/").lstrip("/")
    if "://" in value or value.startswith("//") or ".." in path.split("/") or "\\" in path or ":" in path:
        raise ValueError(f"must be an https:// URL or a path under static/ such as img/logo.svg, not {value!r}")
    return path


def _folder(value: str) -> str:
    value = value.strip()
    if value and not os.path.isdir(value):
        raise ValueError(f"{value!r} is not a folder")
    return os.path.abspath(value) if value else ""


def _registration(value: str) -> str:
    # Checked at start-up: a typo must not open, nor silently close, dynamic client registration.
    value = value.strip().lower()
    if value not in ("closed", "initial-token", "open"):
        raise ValueError(f"must be closed, initial-token or open, not {value!r}")
    return value


def _networks(value: str) -> list[str]:
    # Checked at start-up: a bad entry would otherwise fail every request when X-Forwarded-For is read.
    entries = _list(value)
    network.networks(entries)  # the ValueError names the entry
    return entries


@dataclass(frozen=True)
class Setting:
    """One ``IDP_*`` setting: its default (a value or a function of the environment name) and its doc."""

    name: str
    default: Any
    doc: str
    parse: Callable[[str], Any] = str
    maximum: int | None = None  # a security ceiling: a larger value is taken as this one

    def default_for(self, env: str) -> Any:
        return self.default(env) if callable(self.default) else self.default


def _by_env(development: Any, testing: Any, production: Any) -> Callable[[str], Any]:
    return lambda env: {"development": development, "testing": testing, "production": production}[env]


SETTINGS: list[Setting] = [
    Setting("IDP_ENV", "development", "development | testing | production; production refuses unsafe settings."),
    Setting("IDP_ISSUER", "http://localhost:5000", "Public base URL of this server; must be https in production "
            "(development: `idp run --port N` makes it http://localhost:N; passkeys need a host name, not an IP)."),
    Setting("IDP_SECRET_KEY", "", "Signs cookies and links, encrypts keys at rest; at least 32 bytes in production "
            "(development generates one in the instance folder)."),
    Setting("IDP_DATABASE_URL", "", "SQLAlchemy URL; PostgreSQL in production (default: SQLite in the instance "
            "folder)."),
    Setting("IDP_REDIS_URL", "", "Redis for jobs (RQ) and rate limits; required in production, empty = inline jobs "
            "and in-memory limits."),
    Setting("IDP_QUEUE_NAME", "idp", "Name of the RQ queue that mail and SMS jobs go to."),
    Setting("IDP_MAIL_BACKEND", _by_env("outbox", "outbox", "smtp"), "smtp | outbox | console: where mail goes."),
    Setting("IDP_SMTP_HOST", "localhost", "SMTP server host."),
    Setting("IDP_SMTP_PORT", 25, "SMTP server port.", int),
    Setting("IDP_SMTP_USER", "", "SMTP user name (empty = no login)."),
    Setting("IDP_SMTP_PASSWORD", "", "SMTP password."),
    Setting("IDP_SMTP_STARTTLS", False, "Upgrade the SMTP connection with STARTTLS.", _bool),
    Setting("IDP_SMTP_TIMEOUT", 10, "Seconds before an SMTP connection attempt gives up.", int),
    Setting("IDP_MAIL_FROM", "idp <no-reply@localhost>", "From address of every mail."),
    Setting("IDP_OUTBOX_DIR", "", "Folder of the dev outbox, one JSON file per message (default: instance/outbox)."),
    Setting("IDP_TRUSTED_PROXIES", [], "Comma-separated IPs/CIDRs whose X-Forwarded-For is believed.", _networks),
    Setting("IDP_METRICS_ALLOW", ["127.0.0.1", "::1"], "Comma-separated IPs/CIDRs that may read /metrics (the "
            "client address, resolved through IDP_TRUSTED_PROXIES); keep it private: everyone else gets a 404.",
            _networks),
    Setting("IDP_LOG_FORMAT", _by_env("text", "text", "json"), "json | text: one JSON object per log line (and per "
            "request) for a log shipper, or plain text for a terminal.", _log_format),
    Setting("IDP_SESSION_IDLE_TIMEOUT", 1800, "Seconds of inactivity after which a sign-in session ends.", int),
    Setting("IDP_SESSION_MAX_AGE", 43200, "Seconds after sign-in at which a session ends regardless of use.", int),
    Setting("IDP_LOGIN_TRANSACTION_TTL", 1800, "Seconds a started sign-in may take before it must start over.", int),
    Setting("IDP_EMAIL_CODE_TTL", 600, "Seconds an emailed 6-digit code stays valid (at most 600).", int,
            maximum=600),
    Setting("IDP_CODE_MAX_ATTEMPTS", 5, "Wrong answers a one-time code tolerates before it is void.", int),
    Setting("IDP_VERIFY_LINK_TTL", 86400, "Seconds an email verification link stays valid.", int),
    Setting("IDP_RESET_LINK_TTL", 3600, "Seconds a password reset or unlock link stays valid.", int),
    Setting("IDP_ADMIN_ACR", "urn:idp:acr:mfa", "Level of assurance the admin console demands (an admin without a "
            "second factor enrols one while signing in); `urn:idp:acr:phr` asks for a passkey or security key.",
            _admin_acr),
    Setting("IDP_DELETE_GRACE_DAYS", 30, "Days a user an administrator deleted can be restored before `idp users "
            "purge` removes them for good.", int),
    Setting("IDP_AUDIT_CHECKPOINT_EVERY", 1000, "Sign a checkpoint of the audit hash chain at every event whose id is "
            "a multiple of this (0 = only `idp audit checkpoint`).", int),
    Setting("IDP_AUDIT_RETENTION_DAYS", 0, "Days audit events are kept; `idp housekeeping` archives older ones to "
            "IDP_AUDIT_ARCHIVE_DIR, then deletes them (0 = keep them forever).", int),
    Setting("IDP_AUDIT_ARCHIVE_DIR", "", "Folder of the audit archives, one JSON lines file per prune (default: "
            "instance/audit-archive)."),
    Setting("IDP_HOUSEKEEPING_BATCH", 1000, "Rows `idp housekeeping` deletes per transaction.", int),
    Setting("IDP_INVITE_LINK_TTL", 7 * 86400, "Seconds the set-password link of an invitation (a user created by an "
            "administrator) stays valid.", int),
    Setting("IDP_RESEND_COOLDOWN", 60, "Seconds between two sends of a code or link to the same user.", int),
    Setting("IDP_LOCKOUT_THRESHOLD", 50, "Consecutive failed sign-ins that lock an account (at most 100).", int,
            maximum=100),
    Setting("IDP_THROTTLE_ACCOUNT", "5/minute;15/hour;40/day",
            "Failed attempts allowed per account (growing delays as each tier fills)."),
    Setting("IDP_THROTTLE_IP", "20/minute;100/hour;500/day", "Failed attempts allowed per client IP."),
    Setting("IDP_RATELIMIT_API", "300/minute;5000/hour", "Account API (/api/v1) requests allowed per access token, "
            "that is per user and app; beyond it a 429 problem document with Retry-After."),
    Setting("IDP_RATELIMIT_FORMS", "10/minute;100/hour", "Sign-up, reset and resend requests allowed per client IP."),
    Setting("IDP_JOB_RETRY_INTERVALS", [10, 60, 300, 1800],
            "Seconds between retries of a failed mail or SMS job (RQ).", lambda v: [int(x) for x in _list(v)]),
    Setting("IDP_JOB_TIMEOUT", 180, "Seconds a job may run on a worker before it is stopped; that counts as a failed "
            "attempt, retried like one.", int),
    Setting("IDP_WORKER_HEARTBEAT", 10, "Seconds between a worker's signs of life while it runs a job; a job whose "
            "worker missed three (the worker died) is retried by another worker's maintenance.", int),
    Setting("IDP_WORKER_MAINTENANCE_INTERVAL", 60, "Seconds between a worker's maintenance passes, which retry the "
            "jobs of workers that died.", int),
    Setting("IDP_AUTH_CODE_TTL", 60, "Seconds an authorization code may wait to be redeemed (at most 60).", int,
            maximum=60),
    Setting("IDP_PAR_TTL", 60, "Seconds a pushed authorization request's request_uri may wait to be used at "
            "/authorize (RFC 9126; at most 600).", int, maximum=600),
    Setting("IDP_DEVICE_CODE_TTL", 600, "Seconds a device authorization request's device and user codes live "
            "(RFC 8628 3.2 expires_in; at most 1800).", int, maximum=1800),
    Setting("IDP_REQUIRE_PAR", False, "Accept authorization requests only as pushed ones (RFC 9126 4): a plain "
            "/authorize request is refused with invalid_request.", _bool),
    Setting("IDP_REGISTRATION", "closed", "closed | initial-token | open: dynamic client registration at /register "
            "(RFC 7591); initial-token asks for an initial access token from `idp clients initial-token`.",
            _registration),
    Setting("IDP_RATELIMIT_REGISTRATION", "10/hour;50/day", "Dynamic client registrations (POST /register) allowed "
            "per client IP."),
    Setting("IDP_DPOP_LEEWAY", 60, "Seconds a DPoP proof's iat may lie before or after the server's clock (RFC 9449 "
            "11.1; at most 300).", int, maximum=300),
    Setting("IDP_DPOP_NONCE", False, "Demand a server nonce in DPoP proofs (RFC 9449 8, 9): a proof without the "
            "current one gets use_dpop_nonce and a DPoP-Nonce header.", _bool),
    Setting("IDP_ACCESS_TOKEN_TTL", 900, "Seconds a JWT access token lives (clients may set their own).", int),
    Setting("IDP_ID_TOKEN_TTL", 3600, "Seconds an ID token is valid.", int),
    Setting("IDP_REFRESH_TOKEN_TTL", 1209600, "Idle expiry of a refresh token: seconds it may go unused.", int),
    Setting("IDP_REFRESH_TOKEN_MAX_AGE", 7776000, "Absolute expiry of a refresh token family, from the sign-in.", int),
    Setting("IDP_SMS_BACKEND", _by_env("outbox", "outbox", "disabled"),
            "twilio | outbox | console | disabled: where SMS goes (disabled: no SMS factor)."),
    Setting("IDP_TWILIO_ACCOUNT_SID", "", "Twilio account SID (SMS backend twilio)."),
    Setting("IDP_TWILIO_AUTH_TOKEN", "", "Twilio auth token."),
    Setting("IDP_TWILIO_FROM", "", "Sender number (E.164) for SMS."),
    Setting("IDP_TWILIO_MESSAGING_SERVICE_SID", "", "Twilio messaging service SID (instead of IDP_TWILIO_FROM)."),
    Setting("IDP_SMS_CODE_TTL", 300, "Seconds an SMS code stays valid (at most 600).", int, maximum=600),
    Setting("IDP_SMS_CAP_NUMBER", "5/day", "SMS allowed per phone number (guards against SMS pumping)."),
    Setting("IDP_SMS_CAP_USER", "10/day", "SMS allowed per user."),
    Setting("IDP_SMS_CAP_COUNTRY", "1000/day", "SMS allowed per destination country."),
    Setting("IDP_THROTTLE_OTP", "5/minute;20/hour;60/day", "Failed code attempts (TOTP, SMS, email, recovery) "
            "allowed per account."),
    Setting("IDP_REMEMBER_DEVICE_DAYS", 30, "Days a remembered device skips the second factor (0 = never).", int),
    Setting("IDP_STEP_UP_MAX_AGE", 600, "Seconds after a sign-in during which factor and security changes "
            "need no new authentication.", int),
    Setting("IDP_WEBAUTHN_RP_ID", "", "WebAuthn relying party ID (default: the issuer's host name)."),
    Setting("IDP_ANDROID_APPS", [], "First-party Android apps allowed to use this server's passkeys, comma-separated "
            "`package.name=SHA256_FINGERPRINT` (the signing certificate's, colon-separated hex): published in "
            "/.well-known/assetlinks.json, and their `android:apk-key-hash:` origins accepted.", _android_apps),
    Setting("IDP_PASSWORD_HASH_COST", PRODUCTION_COST, "argon2id cost of new password hashes: passes, memory "
            "in KiB, lanes; production refuses less than RFC 9106's second recommendation (the default).", Cost.parse),
    Setting("IDP_BRAND_NAME", "idp", "Name of the service in page titles, the page header, mail, texts, "
            "authenticator apps and passkeys."),
    Setting("IDP_BRAND_LOGO_URL", "", "Logo shown in the page header and in mail: an https:// URL or a path under "
            "static/ (idp's or the theme's), e.g. img/logo.svg (empty = the name only).", _logo_url),
    Setting("IDP_DEFAULT_PHONE_REGION", "", "Region (ISO 3166 code such as US) of a phone number typed without "
            "its +country code; empty = the code is required.", _region),
    Setting("IDP_BRAND_COLOR", "", "Accent colour of buttons and links, a CSS hex colour such as #0b5cad "
            "(empty = idp's blue).", _hex_colour),
    Setting("IDP_THEME_DIR", "", "Folder whose templates/ and static/ override idp's files of the same name "
            "(see Branding).", _folder),
    Setting("IDP_DEMO_PASSWORD", "", "Password given to the demo user by `idp demo` (default: a random one)."),
]

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is pinned in requirements.txt
        return
    load_dotenv(Path.cwd() / ".env", override=False)


def load(environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None,
         instance_path: str = "instance") -> dict[str, Any]:
    """Resolve every setting from the environment and overrides; fill development defaults; check production."""
    if environ is None:
        _load_dotenv()
        environ = dict(os.environ)
    overrides = dict(overrides or {})
    env = str(overrides.get("IDP_ENV") or environ.get("IDP_ENV") or "development")
    if env not in {"development", "testing", "production"}:
        raise ConfigError(f"IDP_ENV must be development, testing or production, not {env!r}")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            value = overrides.pop(setting.name)
            try:  # a string override is parsed like the environment variable it stands for
                values[setting.name] = setting.parse(value) if isinstance(value, str) else value
            except ValueError as exc:
                raise ConfigError(f"{setting.name}: {exc}") from None
        elif setting.name in environ:
            try:
                values[setting.name] = setting.parse(environ[setting.name])
            except ValueError as exc:
                raise ConfigError(f"{setting.name}: {exc}") from None
        else:
            values[setting.name] = setting.default_for(env)
        if setting.maximum is not None and values[setting.name] > setting.maximum:
            values[setting.name] = setting.maximum
    values["IDP_ENV"] = env
    values.update(overrides)  # anything else (Flask or extension keys) passes through from tests
    if env == "production":
        check_production(values)
    _fill_embedded_defaults(values, instance_path)
    return values


def check_production(values: dict[str, Any]) -> None:
    """Refuse to run in production without real secrets, PostgreSQL, Redis and an https issuer."""
    secret = str(values.get("IDP_SECRET_KEY") or "")
    if len(secret.encode()) < 32:
        raise ConfigError("IDP_SECRET_KEY must be set to at least 32 bytes in production")
    if not str(values.get("IDP_ISSUER", "")).startswith("https://"):
        raise ConfigError("IDP_ISSUER must be an https:// URL in production")
    if not str(values.get("IDP_DATABASE_URL", "")).startswith(("postgresql://", "postgresql+psycopg2://",
                                                                 "postgres://")):
        raise ConfigError("IDP_DATABASE_URL must be a PostgreSQL URL in production")
    if not values.get("IDP_REDIS_URL"):
        raise ConfigError("IDP_REDIS_URL must be set in production (jobs and rate limits)")
    cost = values.get("IDP_PASSWORD_HASH_COST", PRODUCTION_COST)
    if not isinstance(cost, Cost) or not cost.at_least(PRODUCTION_COST):
        raise ConfigError(f"IDP_PASSWORD_HASH_COST must be at least {PRODUCTION_COST} in production")
    if values.get("IDP_MAIL_BACKEND") not in {"smtp", "console"}:
        raise ConfigError("IDP_MAIL_BACKEND must be smtp or console in production")
    if values.get("IDP_SMS_BACKEND") == "twilio" and not (
            values.get("IDP_TWILIO_ACCOUNT_SID") and values.get("IDP_TWILIO_AUTH_TOKEN")
            and (values.get("IDP_TWILIO_FROM") or values.get("IDP_TWILIO_MESSAGING_SERVICE_SID"))):
        raise ConfigError("IDP_SMS_BACKEND=twilio needs IDP_TWILIO_ACCOUNT_SID, IDP_TWILIO_AUTH_TOKEN and "
                          "IDP_TWILIO_FROM or IDP_TWILIO_MESSAGING_SERVICE_SID")


def _fill_embedded_defaults(values: dict[str, Any], instance_path: str) -> None:
    if not values["IDP_DATABASE_URL"]:
        values["IDP_DATABASE_URL"] = "sqlite:///" + os.path.join(instance_path, "idp.sqlite3")
    # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql:// URL; our driver is psycopg2 (the decided stack).
    for bare in ("postgres://", "postgresql://"):
        if values["IDP_DATABASE_URL"].startswith(bare):
            values["IDP_DATABASE_URL"] = "postgresql+psycopg2://" + values["IDP_DATABASE_URL"][len(bare):]
    if not values["IDP_OUTBOX_DIR"]:
        values["IDP_OUTBOX_DIR"] = os.path.join(instance_path, "outbox")
    if not values["IDP_SECRET_KEY"]:
        values["IDP_SECRET_KEY"] = _instance_secret(instance_path)
    values["IDP_ISSUER"] = str(values["IDP_ISSUER"]).rstrip("/")


def _instance_secret(instance_path: str) -> str:
    """A random development secret kept in the instance folder, so restarts keep sessions (never a fixed value)."""
    path = Path(instance_path) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def setting(name: str) -> Setting:
    """The declared setting called ``name``."""
    return _BY_NAME[name]


def _shown_default(setting: Setting) -> str:
    default = setting.default_for("development")
    if isinstance(default, list):
        return ",".join(str(x) for x in default)
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def markdown_table() -> str:
    """The README's configuration table: every setting, its development default and its doc."""
    rows = ["| Variable | Default (development) | What it does |", "| --- | --- | --- |"]
    for s in SETTINGS:
        shown = _shown_default(s)
        rows.append(f"| `{s.name}` | {f'`{shown}`' if shown else '(empty)'} | {s.doc} |")
    return "\n".join(rows) + "\n"


def env_example() -> str:
    """The text of ``.env.example``: every setting, its doc and its development default."""
    lines = ["# Every idp setting with its development default. Copy to .env and edit.", ""]
    for s in SETTINGS:
        lines.append(f"# {s.doc}")
        lines.append(f"{s.name}={_shown_default(s)}")
        lines.append("")
    return "\n".join(lines)
