"""Signing keys as JOSE objects, and their encryption at rest (SECURITY.md 14)."""

from __future__ import annotations

import json
from typing import Any

from joserfc.jwk import ECKey, KeyParameters, RSAKey

from idp.security import crypto

SUPPORTED_ALGS = ("RS256", "ES256")


def generate(alg: str, kid: str) -> RSAKey | ECKey:
    """A new private signing key for ``alg`` (RSA 2048 for RS256, P-256 for ES256)."""
    params: KeyParameters = {"kid": kid, "alg": alg, "use": "sig"}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=params, private=True)
    raise ValueError(f"unsupported signing algorithm {alg}")


def encrypt_private(jwk: dict[str, Any], secret_key: str) -> str:
    """The private JWK encrypted under a key derived from the app secret."""
    return crypto.encrypt(json.dumps(jwk).encode(), secret_key, "signing keys")


KeyDecryptionError = crypto.DecryptionError


def decrypt_private(blob: str, secret_key: str) -> dict[str, Any]:
    """The private JWK back from its encrypted form (KeyDecryptionError with the wrong secret)."""
    return json.loads(crypto.decrypt(blob, secret_key, "signing keys"))


def import_private(jwk: dict[str, Any]) -> RSAKey | ECKey:
    """A joserfc key object from a private JWK dict."""
    return (RSAKey if jwk["kty"] == "RSA" else ECKey).import_key(jwk)
