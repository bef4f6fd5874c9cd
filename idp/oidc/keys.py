"""Signing keys in the database: created on first use, rotated without downtime (SECURITY.md 14).

The newest active key of each algorithm signs; retired keys stay in JWKS until every token they signed has
expired (``publish_until``), like MultiFernet: the first key signs, every listed key verifies.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from joserfc.jwk import KeySet

from idp.extensions import db
from idp.models import SigningKey, utcnow
from idp.security import keys as jose_keys
from idp.security.tokens import new_token, token_hash


def _create(alg: str, now: datetime) -> SigningKey:
    kid = f"{alg.lower()}-{now.strftime('%Y%m%d')}-{new_token(6)}"
    key = jose_keys.generate(alg, kid)
    row = SigningKey(kid=kid, alg=alg, public_jwk=key.as_dict(private=False), created_at=now,
                     private_jwk_encrypted=jose_keys.encrypt_private(key.as_dict(private=True),
                                                                     current_app.config["IDP_SECRET_KEY"]))
    db.session.add(row)
    return row


def active(now: datetime | None = None) -> list[SigningKey]:
    """The signing key of each algorithm (the newest unretired one), creating missing ones."""
    now = now or utcnow()
    rows = list(db.session.execute(
        db.select(SigningKey).where(SigningKey.retired_at.is_(None)).order_by(SigningKey.created_at.desc(),
                                                                               SigningKey.id.desc())
    ).scalars())
    by_alg: dict[str, SigningKey] = {}
    for row in rows:
        by_alg.setdefault(row.alg, row)
    created = False
    for alg in jose_keys.SUPPORTED_ALGS:
        if alg not in by_alg:
            by_alg[alg] = _create(alg, now)
            created = True
    if created:
        db.session.commit()
    return [by_alg[alg] for alg in jose_keys.SUPPORTED_ALGS]


# Decrypting and parsing a private key costs far more than the query that tells whether the keys changed, so
# each worker keeps the parsed key sets, keyed by exactly which keys are current (rotation is seen at once).
_PARSED: dict[tuple, KeySet] = {}


def signing_keyset(now: datetime | None = None) -> KeySet:
    """The private keys that sign now (one per algorithm)."""
    secret = current_app.config["IDP_SECRET_KEY"]
    rows = active(now)
    cache_key = ("sign", token_hash(secret), tuple(row.kid for row in rows))
    keyset = _PARSED.get(cache_key)
    if keyset is None:
        keyset = KeySet([jose_keys.import_private(jose_keys.decrypt_private(row.private_jwk_encrypted, secret))
                         for row in rows])
        if len(_PARSED) > 32:
            _PARSED.clear()
        _PARSED[cache_key] = keyset
    return keyset


def published(now: datetime | None = None) -> list[SigningKey]:
    """Every key whose signatures may still be valid: the active ones and retired ones not yet past publish_until."""
    now = now or utcnow()
    active(now)
    return list(db.session.execute(
        db.select(SigningKey).where((SigningKey.publish_until.is_(None)) | (SigningKey.publish_until > now))
        .order_by(SigningKey.created_at.desc(), SigningKey.id.desc())
    ).scalars())


def jwks(now: datetime | None = None) -> dict:
    """The public JWK Set served at jwks_uri."""
    return {"keys": [dict(row.public_jwk) for row in published(now)]}


def verification_keyset(now: datetime | None = None) -> KeySet:
    """The public keys that verify our own tokens (id_token_hint, access tokens)."""
    rows = published(now)
    cache_key = ("verify", tuple(row.kid for row in rows))
    keyset = _PARSED.get(cache_key)
    if keyset is None:
        keyset = KeySet.import_key_set({"keys": [dict(row.public_jwk) for row in rows]})
        if len(_PARSED) > 32:
            _PARSED.clear()
        _PARSED[cache_key] = keyset
    return keyset


def rotate(now: datetime | None = None, *, max_token_lifetime: int) -> list[SigningKey]:
    """Add a new key per algorithm; the previous ones retire but stay published while their tokens can live."""
    now = now or utcnow()
    previous = active(now)
    for row in previous:
        row.retired_at = now
        row.publish_until = now + timedelta(seconds=max_token_lifetime)
    fresh = [_create(alg, now) for alg in jose_keys.SUPPORTED_ALGS]
    db.session.commit()
    return fresh
