"""Password hashing (argon2id) and the password rules of NIST SP 800-63B 3.1.1 / ASVS 5.0 V6.2."""

from __future__ import annotations

import gzip
import unicodedata
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 8
MIN_LENGTH_SINGLE_FACTOR = 15  # SP 800-63B-4 3.1.1.2: a password that is the only factor is at least 15 long
MAX_LENGTH = 1024  # at least 64 must be allowed; the cap only bounds hashing work

# argon2-cffi's defaults are the RFC 9106 "second recommended" argon2id parameters (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of the whole password (no truncation: argon2 takes any length)."""
    return _hasher.hash(_normalize(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; a missing or malformed hash never matches and costs the same work."""
    try:
        # bool(), not `is not None`: an empty stored hash must not match the dummy hash's own password.
        return _hasher.verify(password_hash or _dummy_hash(), _normalize(password)) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether a stored hash uses weaker parameters than today's."""
    return _hasher.check_needs_rehash(password_hash)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to verify against when there is no account, so unknown users cost the same time (ASVS V6.3.8)."""
    return _hasher.hash("idp-no-such-account-placeholder")


def _normalize(password: str) -> str:
    # SP 800-63B 3.1.1.2: Unicode passwords are normalized (NFKC) before hashing.
    return unicodedata.normalize("NFKC", password)


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The shipped list of ~20,000 common passwords (from Django's list, BSD licence), lower-cased."""
    path = Path(__file__).with_name("common-passwords.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return frozenset(line.strip().lower() for line in handle if line.strip())


def password_problems(password: str, *, single_factor: bool, context: tuple[str, ...] = ()) -> list[str]:
    """The reasons ``password`` is refused, as messages for the user; empty when it is acceptable.

    No composition rules (SP 800-63B 3.1.1.2); length, the common-password list and context words only.
    """
    problems: list[str] = []
    normalized = _normalize(password or "")
    minimum = MIN_LENGTH_SINGLE_FACTOR if single_factor else MIN_LENGTH
    if len(normalized) < minimum:
        problems.append(f"Use at least {minimum} characters.")
    elif len(normalized) > MAX_LENGTH:
        problems.append(f"Use at most {MAX_LENGTH} characters.")
    lowered = normalized.lower()
    if lowered in common_passwords():
        problems.append("This password is too common. Choose another.")
    for word in context:
        word = (word or "").strip().lower()
        if len(word) >= 4 and word in lowered and len(lowered) - len(word) < minimum:
            problems.append("Do not base the password on your name or email address.")
            break
    return problems
