"""Emailed one-time links and codes: issued, stored hashed, expiring, single use, bound to what they are for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask_babel import gettext as _
from itsdangerous import BadSignature, URLSafeTimedSerializer

from idp.extensions import db
from idp.login import consume
from idp.models import OneTimeToken, User
from idp.security.otp import typed_code
from idp.security.tokens import code_hash, new_code, new_token, same, token_hash


@dataclass
class Issued:
    """A freshly issued token row with the secrets that go into the mail (and nowhere else)."""

    row: OneTimeToken
    token: str | None
    code: str | None


def issue(purpose: str, user: User, *, now: datetime, ttl: int, secret_key: str, link: bool = True,
          code: bool = False, transaction_id: str | None = None) -> Issued:
    """Void the user's earlier unused tokens for ``purpose`` and issue a new link token and/or code."""
    for old in _unused(purpose, user.id):
        old.used_at = now
    raw_token = new_token(32) if link else None
    raw_code = new_code(6) if code else None
    row = OneTimeToken(
        purpose=purpose, user=user, email=user.email, created_at=now, expires_at=now + timedelta(seconds=ttl),
        token_hash=token_hash(raw_token) if raw_token else None, transaction_id=transaction_id,
        code_hash=code_hash(secret_key, raw_code, f"{purpose}:{transaction_id}") if raw_code else None,
    )
    db.session.add(row)
    return Issued(row, raw_token, raw_code)


def _unused(purpose: str, user_id: int) -> list[OneTimeToken]:
    return list(db.session.execute(
        db.select(OneTimeToken).where(OneTimeToken.purpose == purpose, OneTimeToken.user_id == user_id,
                                      OneTimeToken.used_at.is_(None))
    ).scalars())


def latest(purpose: str, user_id: int) -> OneTimeToken | None:
    """The most recently issued token of ``purpose`` for the user, used or not (for resend cooldowns)."""
    return db.session.execute(
        db.select(OneTimeToken).where(OneTimeToken.purpose == purpose, OneTimeToken.user_id == user_id)
        .order_by(OneTimeToken.created_at.desc(), OneTimeToken.id.desc()).limit(1)
    ).scalar_one_or_none()


def sign(token: str, purpose: str, secret_key: str) -> str:
    """The token as it appears in a link: signed and timestamped, so tampered links fail before any lookup."""
    return URLSafeTimedSerializer(secret_key, salt=f"idp.{purpose}").dumps(token)


def use(row: OneTimeToken, now: datetime) -> bool:
    """Use a link's token (one conditional UPDATE): True for exactly one of the requests that present it."""
    return consume.token(row, now)


def find_by_link(purpose: str, signed: str, *, now: datetime, secret_key: str, ttl: int,
                 proves_new_address: bool = False) -> OneTimeToken | None:
    """The live token behind a signed link, or None if tampered, expired, used or superseded. A token is for the
    address it was mailed to, so one for an address the user no longer has is dead, unless it ``proves_new_address``
    (an email change: the address it was mailed to is the one it proves)."""
    try:
        token = URLSafeTimedSerializer(secret_key, salt=f"idp.{purpose}").loads(signed, max_age=ttl)
    except BadSignature:
        return None
    if not isinstance(token, str):
        return None
    row = db.session.execute(
        db.select(OneTimeToken).where(OneTimeToken.token_hash == token_hash(token), OneTimeToken.purpose == purpose)
    ).scalar_one_or_none()
    if row is None or row.used_at is not None or row.expires_at <= now:
        return None
    if row.email != row.user.email and not proves_new_address:
        return None
    return row


class CodeRejected(Exception):
    """A typed code was not accepted; the message is what the user sees."""


def check_code(purpose: str, transaction_id: str, code: str, *, now: datetime, secret_key: str,
               max_attempts: int) -> OneTimeToken:
    """The token whose code was typed for this transaction; counts the attempt; raises CodeRejected otherwise."""
    row = db.session.execute(
        db.select(OneTimeToken).where(OneTimeToken.purpose == purpose, OneTimeToken.transaction_id == transaction_id,
                                      OneTimeToken.used_at.is_(None), OneTimeToken.code_hash.is_not(None))
        .order_by(OneTimeToken.created_at.desc()).limit(1)
    ).scalar_one_or_none()
    if row is None or row.expires_at <= now:
        raise CodeRejected(_("This code has expired. Send a new one."))
    if row.attempts >= max_attempts:
        raise CodeRejected(_("Too many wrong codes. Send a new one."))
    right = same(row.code_hash, code_hash(secret_key, typed_code(code), f"{purpose}:{transaction_id}"))
    # One statement counts the attempt and, if the code is right, uses it: of parallel submissions of the right
    # code exactly one gets it (SECURITY.md 32), and no attempt is lost from the count.
    attempts = consume.code_attempt(row, right=right, max_attempts=max_attempts, now=now)
    if attempts is None:  # used, expired or exhausted by another request in the meantime
        raise CodeRejected(_("This code has expired. Send a new one."))
    if right:
        return row
    if attempts >= max_attempts:
        raise CodeRejected(_("Too many wrong codes. Send a new one."))
    raise CodeRejected(_("That code is not right. Check the latest email and try again."))
