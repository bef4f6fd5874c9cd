"""Django's argon2 hasher at idp's cost: argon2id, t=3, m=64 MiB, p=4 (idp/security/passwords.py PRODUCTION_COST;
Django's own defaults are t=2, m=100 MiB, p=8). Verification stays Django's: argon2-cffi, the lanes on 4 threads."""

from django.contrib.auth.hashers import Argon2PasswordHasher


class IdpArgon2PasswordHasher(Argon2PasswordHasher):
    time_cost = 3
    memory_cost = 65536  # KiB
    parallelism = 4
