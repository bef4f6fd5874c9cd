"""Encryption at rest of secrets the server must read back (signing keys, TOTP seeds)."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class DecryptionError(Exception):
    """The stored value cannot be decrypted with this secret (the secret changed, or the row was altered)."""


def _fernet(secret_key: str, purpose: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"idp {purpose} at rest".encode()).derive(
        secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(plaintext: bytes, secret_key: str, purpose: str) -> str:
    """Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from the app secret for this purpose."""
    return _fernet(secret_key, purpose).encrypt(plaintext).decode()


def decrypt(blob: str, secret_key: str, purpose: str) -> bytes:
    """The plaintext back; DecryptionError when the key or the data is wrong."""
    try:
        return _fernet(secret_key, purpose).decrypt(blob.encode())
    except InvalidToken:
        raise DecryptionError(f"{purpose} cannot be decrypted with IDP_SECRET_KEY") from None
