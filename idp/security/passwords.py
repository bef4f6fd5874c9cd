"""Password hashing (argon2id) and the password rules of NIST SP 800-63B 3.1.1 / ASVS 5.0 V6.2."""

from __future__ import annotations

import binascii
import gzip
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask_babel import gettext as _

from idp.security import imported_hashes
from idp.security.argon2_lanes import verify_argon2id

MIN_LENGTH = 8
MIN_LENGTH_SINGLE_FACTOR = 15  # SP 800-63B-4 3.1.1.2: a password that is the only factor is at least 15 long
MAX_LENGTH = 1024  # at least 64 must be allowed; the cap only bounds hashing work


@dataclass(frozen=True)
class Cost:
    """argon2id's cost: passes over memory, memory in KiB, and lanes."""

    time: int
    memory: int
    lanes: int

    @classmethod
    def parse(cls, text: str) -> Cost:
        """``t=3,m=65536,p=4`` (the PHC string's spelling) -> Cost; raises ValueError."""
        match = re.fullmatch(r"\s*t=(\d{1,3}),\s*m=(\d{1,8}),\s*p=(\d{1,2})\s*", text or "")
        if match is None:
            raise ValueError(f"not an argon2id cost like t=3,m=65536,p=4: {text!r}")
        cost = cls(*(int(group) for group in match.groups()))
        if cost.time < 1 or cost.lanes < 1 or cost.memory < 8 * cost.lanes:
            raise ValueError(f"out of argon2's range: {text!r}")
        return cost

    def at_least(self, other: Cost) -> bool:
        """Whether every part of this cost is at least ``other``'s."""
        return self.time >= other.time and self.memory >= other.memory and self.lanes >= other.lanes

    def __str__(self) -> str:
        return f"t={self.time},m={self.memory},p={self.lanes}"


# RFC 9106 4's second recommended option (argon2-cffi's defaults): what production hashes with at least. Tests
# hash with a cheap cost (IDP_PASSWORD_HASH_COST), except those about the cost itself.
PRODUCTION_COST = Cost(time=3, memory=65536, lanes=4)

_hasher = PasswordHasher(time_cost=PRODUCTION_COST.time, memory_cost=PRODUCTION_COST.memory,
                         parallelism=PRODUCTION_COST.lanes)


def use_cost(cost: Cost) -> None:
    """Hash new passwords (and the unknown-user dummy) at ``cost``; create_app calls it with the app's setting."""
    global _hasher
    if (_hasher.time_cost, _hasher.memory_cost, _hasher.parallelism) != (cost.time, cost.memory, cost.lanes):
        _hasher = PasswordHasher(time_cost=cost.time, memory_cost=cost.memory, parallelism=cost.lanes)


def current_cost() -> Cost:
    """The cost new hashes are made with."""
    return Cost(_hasher.time_cost, _hasher.memory_cost, _hasher.parallelism)


def hash_password(password: str) -> str:
    """An argon2id hash of the whole password (no truncation: argon2 takes any length)."""
    return _hasher.hash(_normalize(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; a missing or malformed hash never matches and costs the same work."""
    if password_hash and imported_hashes.is_imported(password_hash):  # until the next sign-in re-hashes it
        return imported_hashes.verify(password_hash, password)
    # bool(), not `is not None`: an empty stored hash must not match the dummy hash's own password.
    return _verify(password_hash or _dummy_hash(current_cost()), _normalize(password)) and bool(password_hash)


def _verify(encoded: str, password: str) -> bool:
    """argon2id through idp.security.argon2_lanes (lanes on one thread); any other encoded hash through argon2-cffi.

    Unknown users go through here too, with the dummy hash, so both cost the same (ASVS V6.3.8).
    """
    try:
        matched = verify_argon2id(encoded, password.encode())
        return _hasher.verify(encoded, password) if matched is None else matched
    except (VerifyMismatchError, VerificationError, InvalidHashError, binascii.Error, OverflowError, UnicodeError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether a stored hash uses weaker parameters than today's (an imported one always does)."""
    return imported_hashes.is_imported(password_hash) or _hasher.check_needs_rehash(password_hash)


@lru_cache(maxsize=4)
def _dummy_hash(cost: Cost) -> str:
    """A hash to verify against when there is no account, at the cost real hashes have, so unknown users cost the
    same time (ASVS V6.3.8)."""
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
        problems.append(_("Use at least %(num)d characters.", num=minimum))
    elif len(normalized) > MAX_LENGTH:
        problems.append(_("Use at most %(num)d characters.", num=MAX_LENGTH))
    lowered = normalized.lower()
    if lowered in common_passwords():
        problems.append(_("This password is too common. Choose another."))
    for word in context:
        word = (word or "").strip().lower()
        if len(word) >= 4 and word in lowered and len(lowered) - len(word) < minimum:
            problems.append(_("Do not base the password on your name or email address."))
            break
    return problems
