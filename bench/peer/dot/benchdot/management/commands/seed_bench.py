"""Seed the DOT peer's database: the bench's users and two sets of applications.

    DOT_SEED_USERS=a@x,b@x DOT_SEED_PASSWORD=... DOT_SEED_SECRET=... python manage.py seed_bench REDIRECT_URI

Every user shares one password hash, computed once (as bench/seed.py does for idp: 1,000 argon2id hashes at 64 MiB
would take minutes). The applications, all confidential, first-party (no consent page) and RS256 for ID tokens:

    bench-dot, bench-dot-cc              DOT's default, the client secret stored hashed (argon2id, idp's cost)
    bench-dot-plain, bench-dot-plain-cc  hash_client_secret=False, the secret stored as it is

A DOT application has one grant type: the first of each pair is for the code flow (and so refresh tokens,
userinfo and introspection), the ``-cc`` one for client_credentials. All four have the same secret.
"""

import os

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand
from django.db import transaction
from oauth2_provider.models import get_application_model


class Command(BaseCommand):
    help = "Seed the bench's users and applications (see the module's docstring)."

    def add_arguments(self, parser):
        parser.add_argument("redirect_uri")

    @transaction.atomic
    def handle(self, *args, redirect_uri, **options):
        emails = [e for e in os.environ["DOT_SEED_USERS"].split(",") if e]
        shared = make_password(os.environ["DOT_SEED_PASSWORD"])
        get_user_model().objects.bulk_create(
            get_user_model()(username=email, email=email, first_name=f"Bench User {i}", password=shared)
            for i, email in enumerate(emails, 1))
        application = get_application_model()
        secret = os.environ["DOT_SEED_SECRET"]
        for prefix, hashed in (("bench-dot", True), ("bench-dot-plain", False)):
            common = {"client_type": application.CLIENT_CONFIDENTIAL, "client_secret": secret,
                      "hash_client_secret": hashed, "skip_authorization": True,
                      "algorithm": application.RS256_ALGORITHM}
            application.objects.create(client_id=prefix, name=prefix, redirect_uris=redirect_uri,
                                       authorization_grant_type=application.GRANT_AUTHORIZATION_CODE, **common)
            application.objects.create(client_id=f"{prefix}-cc", name=f"{prefix}-cc",
                                       authorization_grant_type=application.GRANT_CLIENT_CREDENTIALS, **common)
        self.stdout.write(f"{len(emails)} users, 4 applications")
