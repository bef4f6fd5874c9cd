"""Random tokens and one-time codes, and how they are stored (hashed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random token of ``nbytes`` bytes from the OS CSPRNG (256 bits by default)."""
    return secrets.token_urlsafe(nbytes)


def token_hash(token: str) -> str:
    """SHA-256 of a high-entropy token: enough to store it, since it cannot be guessed (ASVS V7.2)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_code(digits: int = 6) -> str:
    """A numeric one-time code with ``digits`` digits from the CSPRNG (SP 800-63B 3.1.3)."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def code_hash(key: str, code: str, binding: str) -> str:
    """A keyed hash of a short code bound to what it was sent for; a leaked table cannot be brute-forced offline."""
    message = f"{binding}\x00{code.strip()}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two stored digests; ``None`` never matches."""
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode(), b.encode())
