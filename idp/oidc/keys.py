"""Signing keys in the database: created on first use, rotated without downtime (SECURITY.md 14).

The newest active key of each algorithm signs; retired keys stay in JWKS until every token they signed has
expired (``publish_until``), like MultiFernet: the first key signs, every listed key verifies.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app, has_request_context, request
from joserfc.jwk import KeySet
from sqlalchemy import Connection, func, select

from idp import changes
from idp.changes import Stamp
from idp.extensions import db, per_app
from idp.models import Client, SigningKey, utcnow
from idp.security import keys as jose_keys
from idp.security.tokens import new_token


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


# Each worker keeps the parsed keys: decrypting and importing a private key costs far more than signing. What it
# kept follows the keys table, so that a key created or rotated by any process (another worker, another instance,
# `idp keys rotate`) is used at once everywhere (SECURITY.md 14; README "Scaling out"):
# - on PostgreSQL, a trigger notifies every worker of each change to the table (idp.changes, migration 0020): while
#   the worker's listener is trusted and no change was notified since the keys were loaded, signing and the JWK Set
#   use what was kept without a query;
# - otherwise (SQLite; the listener not connected yet, or its connection lost), signing and the JWK Set read a
#   summary of the table (_TABLE_STATE: one aggregate over a handful of rows) once per request, and reload when it
#   changed; so does a notified change, whose summary may still be the same (the kept keys stay then);
# - verification looks only for a token whose `kid` the worker does not know: a known key is never withdrawn
#   before its tokens have expired, so it needs no look, and a `kid` that is in no row (a forged header) costs at
#   most that one aggregate, never a reload;
# - everything kept is reloaded when a retired key in it reaches its ``publish_until``, notified or not.
# The change stamp (idp.changes.stamp) is taken before the summary is read, and both before the rows: a change
# in between voids what was kept, at the next look.


class _KeyCache:
    """The parsed key sets of one app (tests build many apps; production has one per worker)."""

    def __init__(self):
        self.state: tuple | None = None  # the table's summary the key sets were loaded at (None: not loaded yet)
        self.stamp: Stamp | None = None  # the change stamp they are known current at (None: look at the table)
        self.until: datetime | None = None  # when the first retired key in them stops being published
        self.signing = KeySet([])  # both loaded by fresh() before first use (state is None)
        self.verifying = KeySet([])
        self.kids: set[str] = set()
        self.published: _Published | None = None  # the JWK Set as last built (None: not yet)

    def load(self, now: datetime) -> None:
        secret = current_app.config["IDP_SECRET_KEY"]
        # The rows are read between two reads of the summary, the change stamp taken before the first, and kept only
        # if both reads agree: a change committed in between (a rotation elsewhere) is read again at once rather
        # than kept under a summary or stamp that says it is current (review finding: the summary read once, after
        # the signing rows, let a rotation landing between the two keep the retired key signing). The first keys,
        # which active() creates and commits, change the summary too: the second pass reads them.
        for _ in range(3):
            state, stamp = _state(again=True)
            signing_rows = active(now)
            rows = published(now)
            if _state(again=True)[0] == state:
                break
        self.signing = KeySet([jose_keys.import_private(jose_keys.decrypt_private(row.private_jwk_encrypted,
                                                                                  secret))
                               for row in signing_rows])
        self.verifying = KeySet.import_key_set({"keys": [dict(row.public_jwk) for row in rows]})
        self.kids = {row.kid for row in rows}
        self.until = min((row.publish_until for row in rows if row.publish_until is not None), default=None)
        self.state = state
        self.stamp = _committed(stamp)

    def fresh(self, now: datetime | None) -> _KeyCache:
        """These key sets, reloaded first if the keys table changed since or a retired key's time is up."""
        now = now or utcnow()
        if self.state is None or (self.until is not None and now >= self.until):
            self.load(now)
        elif not changes.unchanged(SIGNING_KEYS, self.stamp):  # (unchanged: no query at all)
            state, stamp = _state()
            if state != self.state:
                self.load(now)
            else:  # the same keys: current as of the stamp taken before that summary was read
                self.stamp = _committed(stamp)
        return self


def _cache() -> _KeyCache:
    return per_app("idp.keys", _KeyCache)


# A summary of the keys table that changes whenever a key is created, retired or re-dated, also when the table is
# emptied and refilled (its ids may start again; its creation times do not repeat). Built once: it is asked on
# every request that signs or serves the JWK Set.
_TABLE_STATE = select(
    func.count(SigningKey.id), func.max(SigningKey.id), func.max(SigningKey.created_at),
    func.count(SigningKey.retired_at), func.max(SigningKey.retired_at), func.min(SigningKey.publish_until),
    func.max(SigningKey.publish_until))
_STATE_OF_REQUEST = "idp.keys_state"
SIGNING_KEYS = "signing_keys"  # the table's name, as its change notifications carry it (idp.changes)


def _state(again: bool = False) -> tuple[tuple, Stamp | None]:
    """The keys table's summary, read once per request (the token endpoint signs two tokens; ``again`` reads it
    anew, after this process changed the table), with the change stamp taken just before it was read; outside a
    request, read at every call (and no stamp)."""
    if not has_request_context():
        return tuple(db.session.execute(_TABLE_STATE).one()), None
    if again or _STATE_OF_REQUEST not in request.environ:
        stamp = changes.stamp(SIGNING_KEYS)
        request.environ[_STATE_OF_REQUEST] = tuple(db.session.execute(_TABLE_STATE).one()), stamp
    return request.environ[_STATE_OF_REQUEST]


def _committed(stamp: Stamp | None) -> Stamp | None:
    """``stamp``, or None when this request has written to the keys table: only what is committed is kept."""
    return None if changes.uncommitted(db.session(), SIGNING_KEYS) else stamp


def table_state(again: bool = False) -> tuple:
    """The keys table's summary (read once per request, like ``_state``)."""
    return _state(again)[0]


def signing_keyset(now: datetime | None = None) -> KeySet:
    """The private keys that sign now (one per algorithm, the newest in the database)."""
    return _cache().fresh(now).signing


def verification_keyset(now: datetime | None = None, kid: str | None = None) -> KeySet:
    """The public keys that verify our own tokens; a ``kid`` not among them makes the keys table be looked at."""
    cache = _cache()
    if cache.state is None or kid is not None and kid not in cache.kids or (
            cache.until is not None and (now or utcnow()) >= cache.until):
        cache.fresh(now)
    return cache.verifying


def current_private_key(connection: Connection, alg: str) -> tuple[str, Any] | None:
    """The active key of ``alg`` as (kid, private key), read on ``connection`` (for signing inside a transaction
    that is not the session's, or that must not commit); None while no such key exists. It creates none."""
    row = connection.execute(
        select(SigningKey.kid, SigningKey.private_jwk_encrypted)
        .where(SigningKey.alg == alg, SigningKey.retired_at.is_(None))
        .order_by(SigningKey.created_at.desc(), SigningKey.id.desc()).limit(1)).one_or_none()
    if row is None:
        return None
    for key in _cache().signing.keys:  # parsed already (the key is the row's: its kid is unique)
        if key.kid == row.kid:
            return row.kid, key
    return row.kid, jose_keys.import_private(jose_keys.decrypt_private(row.private_jwk_encrypted,
                                                                       current_app.config["IDP_SECRET_KEY"]))


def published(now: datetime | None = None) -> list[SigningKey]:
    """Every key whose signatures may still be valid: the active ones and retired ones not yet past publish_until."""
    now = now or utcnow()
    active(now)
    return list(db.session.execute(
        db.select(SigningKey).where((SigningKey.publish_until.is_(None)) | (SigningKey.publish_until > now))
        .order_by(SigningKey.created_at.desc(), SigningKey.id.desc())
    ).scalars())


@dataclass(frozen=True)
class _Published:
    """The JWK Set as built once: the document, its bytes as served and their entity tag (issue 22: prepared once
    per change), the state of the keys table it was built from, when its first retired key stops being published
    (None: no retired key in it), and the change stamp it is known current at. One object, replaced whole: a
    reader (a request, idp.prepared) never sees the bytes of one build with the stamp of another."""

    document: dict
    body: bytes
    etag: str
    state: tuple
    until: datetime | None
    stamp: Stamp | None


def jwks(now: datetime | None = None) -> dict:
    """The public JWK Set served at jwks_uri.

    Each worker keeps the document, so a key created or rotated by any process is published at once: it is
    current while no change to the keys table was notified since it was built (idp.changes; no query), or, when
    that cannot be trusted, while one aggregate query finds the table's summary unchanged. It is also rebuilt when
    a retired key reaches its ``publish_until``.
    """
    return _published(now).document


def _published(now: datetime | None = None) -> _Published:
    now = now or utcnow()
    cache = _cache()
    kept = cache.published
    if kept is not None and _jwks_current(kept, now):
        return kept
    state, stamp = _state()  # before the rows: a change in between rebuilds next time
    if kept is None or state != kept.state or (kept.until is not None and now >= kept.until):
        rows = published(now)
        document = {"keys": [dict(row.public_jwk) for row in rows]}
        body = json.dumps(document, separators=(",", ":")).encode()
        kept = _Published(document, body, hashlib.sha256(body).hexdigest()[:32], state,
                          min((row.publish_until for row in rows if row.publish_until is not None), default=None),
                          _committed(stamp))
    else:  # the same keys: current as of the stamp taken before that summary was read
        kept = replace(kept, stamp=_committed(stamp))
    cache.published = kept
    return kept


def _jwks_current(kept: _Published, now: datetime, app: Flask | None = None) -> bool:
    """Whether the kept JWK Set is current without a query: no key's time up, no change notified since."""
    return not (kept.until is not None and now >= kept.until) and changes.unchanged(SIGNING_KEYS, kept.stamp, app)


def kept_jwks_document(now: datetime | None = None, app: Flask | None = None) -> tuple[bytes, str] | None:
    """The JWK Set as served and its entity tag when what this worker kept is current without a query (the view
    then needs no database connection at all), else None. With ``app``: asked outside a request (idp.prepared)."""
    cache = _cache() if app is None else app.extensions.get("idp.keys")
    kept = cache.published if cache is not None else None
    if kept is None or not _jwks_current(kept, now or utcnow(), app):
        return None
    return kept.body, kept.etag


def jwks_document(now: datetime | None = None) -> tuple[bytes, str]:
    """The JWK Set as served (bytes prepared once per change of the keys, like jwks()) and its entity tag."""
    kept = _published(now)
    return kept.body, kept.etag


def keyset_for_token(token: str, now: datetime | None = None) -> KeySet:
    """The verification keys for a compact JWT, reloading them if its header names a kid we do not know yet."""
    kid = None
    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".", 1)[0] + "==="))
        kid = header.get("kid") if isinstance(header, dict) else None
    except (ValueError, UnicodeDecodeError):
        pass
    return verification_keyset(now, kid=kid if isinstance(kid, str) else None)


def longest_token_lifetime() -> int:
    """How long a token signed now may stay valid: the longest access-token lifetime (the default or any client's
    own) or the ID token's, plus five minutes of clock skew."""
    cfg = current_app.config
    longest_client = db.session.execute(db.select(func.max(Client.access_token_ttl))).scalar() or 0
    return max(cfg["IDP_ACCESS_TOKEN_TTL"], cfg["IDP_ID_TOKEN_TTL"], longest_client) + 300


def rotate(now: datetime | None = None, *, max_token_lifetime: int) -> list[SigningKey]:
    """Add a new key per algorithm; the previous ones retire but stay published while their tokens can live."""
    now = now or utcnow()
    previous = active(now)
    for row in previous:
        row.retired_at = now
        row.publish_until = now + timedelta(seconds=max_token_lifetime)
    fresh = [_create(alg, now) for alg in jose_keys.SUPPORTED_ALGS]
    db.session.commit()
    if has_request_context():  # the summary this request read is out of date (the next use reads it again)
        request.environ.pop(_STATE_OF_REQUEST, None)
    return fresh
