"""Password hashing (argon2id) and the password rules of NIST SP 800-63B 3.1.1 / ASVS 5.0 V6.2."""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import Type, core, ffi, lib

MIN_LENGTH = 8
MIN_LENGTH_SINGLE_FACTOR = 15  # SP 800-63B-4 3.1.1.2: a password that is the only factor is at least 15 long
MAX_LENGTH = 1024  # at least 64 must be allowed; the cap only bounds hashing work

# argon2-cffi's defaults are the RFC 9106 "second recommended" argon2id parameters (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of the whole password (no truncation: argon2 takes any length)."""
    return _hasher.hash(_normalize(password))


# The encoded form argon2 writes (PHC string format): variant, version, cost, then salt and digest in unpadded
# standard base64. Only the canonical spelling is verified below (ASCII digits without leading zeros, base64 that
# encodes back to itself); any other spelling never matches, as with argon2-cffi, whose C decoder refuses it too.
_NUMBER = r"(?:0|[1-9][0-9]{0,9})"
_ARGON2ID = re.compile(rf"\$argon2id\$v=(?P<v>{_NUMBER})\$m=(?P<m>{_NUMBER}),t=(?P<t>{_NUMBER}),p=(?P<p>{_NUMBER})"
                       r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<digest>[A-Za-z0-9+/]+)")
# How many threads compute the lanes of a hash. The thread count is not an input of argon2 (RFC 9106 3.1: p is how
# many lanes *can* run in parallel), so any count gives the same digest. argon2-cffi starts one thread per lane,
# and the threads wait for each other at the 12 synchronisation points of a t=3 hash. gunicorn already runs one
# worker per core: under load those waits left cores idle and cost CPU. One thread per hash gave about 9% more
# sign-ins per second on the bench's 2-core box. A lone hash is slower this way (135 ms instead of 90 ms there).
VERIFY_THREADS = 1


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; a missing or malformed hash never matches and costs the same work."""
    # bool(), not `is not None`: an empty stored hash must not match the dummy hash's own password.
    return _verify(password_hash or _dummy_hash(), _normalize(password)) and bool(password_hash)


def _verify(encoded: str, password: str) -> bool:
    """argon2id verification with the lanes on VERIFY_THREADS threads; any other encoded hash goes to argon2-cffi.

    Unknown users go through here too, with the dummy hash, so both cost the same (ASVS V6.3.8).
    """
    match = _ARGON2ID.fullmatch(encoded)
    try:
        if match is None:
            return _hasher.verify(encoded, password)
        return _verify_argon2id(match, password.encode())
    except (VerifyMismatchError, VerificationError, InvalidHashError, binascii.Error, OverflowError, UnicodeError):
        return False


def _verify_argon2id(match: re.Match, secret: bytes) -> bool:
    """argon2's own argon2_ctx on the encoded hash's parameters, then a constant-time comparison of the digests."""
    salt, digest = _b64(match["salt"]), _b64(match["digest"])
    out = ffi.new("uint8_t[]", len(digest))
    pwd, salt_buf = ffi.new("uint8_t[]", secret), ffi.new("uint8_t[]", salt)
    context = ffi.new("argon2_context *", {  # a field out of its C type's range raises OverflowError
        "out": out, "outlen": len(digest), "pwd": pwd, "pwdlen": len(secret), "salt": salt_buf,
        "saltlen": len(salt), "secret": ffi.NULL, "secretlen": 0, "ad": ffi.NULL, "adlen": 0,
        "t_cost": int(match["t"]), "m_cost": int(match["m"]), "lanes": int(match["p"]), "threads": VERIFY_THREADS,
        "version": int(match["v"]), "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL,
        "flags": lib.ARGON2_DEFAULT_FLAGS,
    })
    if core(context, Type.ID.value) != lib.ARGON2_OK:  # parameters out of argon2's range, or no memory
        return False
    return hmac.compare_digest(bytes(ffi.buffer(out, len(digest))), digest)


def _b64(value: str) -> bytes:
    raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    if base64.b64encode(raw).rstrip(b"=").decode() != value:  # unused low bits set: not what argon2 writes
        raise binascii.Error("not canonical base64")
    return raw


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
