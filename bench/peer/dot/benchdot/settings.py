"""Settings of the django-oauth-toolkit peer (bench/run.py starts it under gunicorn; see bench/README.md).

A production configuration (DEBUG off, secure cookies, persistent database connections) with DOT's defaults except
where the bench needs a setting to match idp's: the argon2id cost, the lifetimes, OpenID Connect with RS256 and
refresh-token reuse protection. Everything that differs per run comes from the environment:

    DOT_DATABASE    PostgreSQL database on 127.0.0.1:5432 (user postgres, trust), created by bench/run.py
    DOT_ISSUER      e.g. https://localhost:8446, the issuer; its host is the Host header the bench sends
    DOT_KEY_FILE    the RS256 signing key (PEM), one for every worker
    DOT_SECRET_KEY  Django's SECRET_KEY (sessions, CSRF)
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent
ISSUER = os.environ.get("DOT_ISSUER", "https://localhost:8446")

DEBUG = False
SECRET_KEY = os.environ["DOT_SECRET_KEY"]
ALLOWED_HOSTS = [urlsplit(ISSUER).hostname]
# The bench talks plain http to 127.0.0.1 as a TLS proxy would, with X-Forwarded-Proto: https.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
    "benchdot",
]
# startproject's list without the messages framework (no app here shows messages).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benchdot.urls"
WSGI_APPLICATION = "benchdot.wsgi.application"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "OPTIONS": {}}]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("DOT_DATABASE", "dot_bench"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        # Persistent connections, one per worker, as a production deployment keeps them. With Django's default (a
        # connection per request) every request would also pay a PostgreSQL backend's start, and the bench would
        # miss that CPU: a backend that has exited is no longer in /proc.
        "CONN_MAX_AGE": None,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# idp's argon2id cost (idp/security/passwords.py PRODUCTION_COST) for passwords and, since DOT hashes client
# secrets with the default hasher, for client secrets stored hashed.
PASSWORD_HASHERS = ["benchdot.hashers.IdpArgon2PasswordHasher"]
LOGIN_URL = "/accounts/login/"

OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_ISS_ENDPOINT": ISSUER,
    "OIDC_RSA_PRIVATE_KEY": Path(os.environ["DOT_KEY_FILE"]).read_text() if "DOT_KEY_FILE" in os.environ else "",
    "OAUTH2_VALIDATOR_CLASS": "benchdot.validators.ClaimsValidator",
    "SCOPES": {"openid": "OpenID Connect", "profile": "Name", "email": "Email address"},
    "PKCE_REQUIRED": True,
    # Rotation is DOT's default; reuse protection (a rotated-out token presented again revokes its family) is what
    # idp and oidc-provider do.
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    # idp's lifetimes (IDP_ACCESS_TOKEN_TTL 900 s, refresh tokens 14 days) rather than DOT's 10 hours and forever.
    "ACCESS_TOKEN_EXPIRE_SECONDS": 900,
    "REFRESH_TOKEN_EXPIRE_SECONDS": 14 * 24 * 3600,
    "ID_TOKEN_EXPIRE_SECONDS": 3600,
    # RFC 9700's gates, which DOT 3.x leaves open and 4.0 is to close: no implicit or password grant, no plain PKCE,
    # no access token in a query string, iss in the authorization response, tokens kept as SHA-256 checksums only.
    # idp keeps these (RFC 9700 is one of its references); each is a check or a column left blank.
    **{f"COMPLIANT_BCP_RFC9700_{gate}": True for gate in (
        "IMPLICIT_GRANT", "PASSWORD_GRANT", "PKCE_METHOD", "ACCESS_TOKEN_TRANSPORT", "AUTHZ_RESPONSE_ISS",
        "TOKEN_STORAGE")},
}

# Errors to stderr (gunicorn's log in the bench's temp folder); with DEBUG off Django would only mail them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "ERROR"},
                "oauth2_provider": {"handlers": ["stderr"], "level": "WARNING"}},
}
