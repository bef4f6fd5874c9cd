"""Signing keys as JOSE objects, and their encryption at rest (SECURITY.md 14)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, RSAKey

SUPPORTED_ALGS = ("RS256", "ES256")


def generate(alg: str, kid: str) -> RSAKey | ECKey:
    """A new private signing key for ``alg`` (RSA 2048 for RS256, P-256 for ES256)."""
    params = {"kid": kid, "alg": alg, "use": "sig"}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=params, private=True)
    raise ValueError(f"unsupported signing algorithm {alg}")


def _fernet(secret_key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"idp signing keys at rest").derive(
        secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt_private(jwk: dict[str, Any], secret_key: str) -> str:
    """The private JWK encrypted (AES-128-CBC + HMAC, Fernet) under a key derived from the app secret."""
    return _fernet(secret_key).encrypt(json.dumps(jwk).encode()).decode()


class KeyDecryptionError(Exception):
    """The stored key cannot be decrypted with this secret (the secret changed, or the row was altered)."""


def decrypt_private(blob: str, secret_key: str) -> dict[str, Any]:
    """The private JWK back from its encrypted form."""
    try:
        return json.loads(_fernet(secret_key).decrypt(blob.encode()))
    except InvalidToken:
        raise KeyDecryptionError("signing key cannot be decrypted with IDP_SECRET_KEY") from None


def import_private(jwk: dict[str, Any]) -> RSAKey | ECKey:
    """A joserfc key object from a private JWK dict."""
    return (RSAKey if jwk["kty"] == "RSA" else ECKey).import_key(jwk)
