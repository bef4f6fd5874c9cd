"""Password hashes imported from the service idp replaces (a Django application), in the formats of Django's
PASSWORD_HASHERS: ``argon2`` (Argon2PasswordHasher), ``pbkdf2_sha256`` (PBKDF2PasswordHasher) and ``bcrypt_sha256``
(BCryptSHA256PasswordHasher). They are verified with the libraries that made them (argon2-cffi, hashlib, bcrypt)
and replaced by idp's argon2id at the user's next successful sign-in (idp.security.passwords.needs_rehash).

Written here rather than importing Django's hashers: those need a configured Django project at run time; the
formats are three documented strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PREFIXES = ("argon2$", "pbkdf2_sha256$", "bcrypt_sha256$")
MAX_PBKDF2_ITERATIONS = 10_000_000  # an imported file cannot make one sign-in cost minutes


def is_imported(encoded: str) -> bool:
    return encoded.startswith(PREFIXES)


def well_formed(encoded: str) -> bool:
    """Whether an import may store this hash: one of the formats, with its parts where they belong."""
    algorithm, _, rest = encoded.partition("$")
    if algorithm == "pbkdf2_sha256":
        parts = rest.split("$")
        return (len(parts) == 3 and parts[0].isdigit() and 1 <= int(parts[0]) <= MAX_PBKDF2_ITERATIONS
                and bool(parts[1]) and bool(parts[2]))
    if algorithm == "bcrypt_sha256":
        return rest.startswith(("$2a$", "$2b$", "$2y$")) and len(rest) == 60
    if algorithm == "argon2":
        return rest.startswith(("argon2id$", "argon2i$")) and rest.count("$") >= 4
    return False


def verify(encoded: str, password: str) -> bool:
    """Whether ``password`` (as the user types it: Django does not normalise) matches an imported hash."""
    algorithm, _, rest = encoded.partition("$")
    try:
        if algorithm == "pbkdf2_sha256":
            iterations, salt, expected = rest.split("$", 2)
            if not iterations.isdigit() or not 1 <= int(iterations) <= MAX_PBKDF2_ITERATIONS:
                return False
            derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
            return hmac.compare_digest(base64.b64encode(derived).decode("ascii"), expected)
        if algorithm == "bcrypt_sha256":
            # Django hashes the password with SHA-256 first (bcrypt reads 72 bytes at most), as hex.
            digest = binascii.hexlify(hashlib.sha256(password.encode()).digest())
            return bcrypt.checkpw(digest, rest.encode("ascii"))
        if algorithm == "argon2":
            return PasswordHasher().verify("$" + rest, password)
    except (ValueError, UnicodeError, VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return False
