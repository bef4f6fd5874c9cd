"""One-time secrets used, and failures counted, each by ONE conditional statement (SECURITY.md 32).

Reading a row and then writing it lets two requests that arrive together both see it unused: both would succeed.
Each function here is a single ``UPDATE ... WHERE <still usable> RETURNING``: the database decides who gets the row
(on PostgreSQL the second updater waits for the first one's commit, then re-checks the WHERE on the row it left),
and the caller learns from the returned row whether it was the one. The loaded ORM objects are brought in line with
what was written, without marking them changed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, case, update
from sqlalchemy.orm.attributes import set_committed_value

from idp.extensions import db
from idp.models import Factor, LoginTransaction, OneTimeToken, PushedRequest, RecoveryCode, User, table_of

_factors = table_of(Factor)
_recovery_codes = table_of(RecoveryCode)
_tokens = table_of(OneTimeToken)
_users = table_of(User)
_transactions = table_of(LoginTransaction)
_pushed = table_of(PushedRequest)


def _claim(obj: Any, table: Table, *still_usable: ColumnElement[bool], **values: Any) -> bool:
    """The one conditional UPDATE of ``obj``'s row (by id) while ``still_usable`` holds: True for the one caller it
    matched, whose loaded ``obj`` then holds ``values`` as committed."""
    won = db.session.execute(
        update(table).where(table.c.id == obj.id, *still_usable).values(**values).returning(table.c.id)
    ).first() is not None
    if won:
        for name, value in values.items():
            set_committed_value(obj, name, value)
    return won


def totp_step(factor: Factor, step: int, now: datetime) -> bool:
    """Record ``step`` as the factor's last accepted TOTP step, unless it (or a later one) already is: a code is
    accepted once, even by sign-ins that submit it at the same instant (RFC 6238 5.2)."""
    return _claim(factor, _factors, (_factors.c.last_step.is_(None)) | (_factors.c.last_step < step),
                  last_step=step, last_used_at=now)


def recovery_code(user_id: int, code_hash: str, now: datetime) -> bool:
    """Use the user's unused recovery code with this hash; False when there is none (wrong, or already used)."""
    return db.session.execute(
        update(_recovery_codes).where(_recovery_codes.c.user_id == user_id, _recovery_codes.c.code_hash == code_hash,
                                      _recovery_codes.c.used_at.is_(None))
        .values(used_at=now).returning(_recovery_codes.c.id)
    ).first() is not None


def token(row: OneTimeToken, now: datetime) -> bool:
    """Use a one-time link or code: True for exactly one caller while it is unused and unexpired."""
    return _claim(row, _tokens, _tokens.c.used_at.is_(None), _tokens.c.expires_at > now, used_at=now)


def code_attempt(row: OneTimeToken, *, right: bool, max_attempts: int, now: datetime) -> int | None:
    """Count one attempt at a typed code, and use the code when it is ``right`` or this was its last attempt.

    Returns the attempts counted so far, or None when the code was no longer usable (used, expired, or out of
    attempts) by the time this statement ran: N parallel attempts are N counted, and a right code is taken once.
    """
    spent = _tokens.c.attempts + 1 >= max_attempts
    at = bindparam("now", now, type_=_tokens.c.used_at.type)  # typed, so SQLite gets the same UTC form
    found = db.session.execute(
        update(_tokens).where(_tokens.c.id == row.id, _tokens.c.used_at.is_(None), _tokens.c.expires_at > now,
                              _tokens.c.attempts < max_attempts)
        .values(attempts=_tokens.c.attempts + 1,
                used_at=at if right else case((spent, at), else_=None))
        .returning(_tokens.c.attempts, _tokens.c.used_at)
    ).first()
    if found is None:
        return None
    set_committed_value(row, "attempts", found.attempts)
    set_committed_value(row, "used_at", found.used_at)
    return found.attempts


def failed_login(user: User) -> int:
    """Count one wrong password for the user; returns the count including it (no lost update under concurrency)."""
    count = db.session.execute(
        update(_users).where(_users.c.id == user.id).values(failed_logins=_users.c.failed_logins + 1)
        .returning(_users.c.failed_logins)
    ).scalar_one()
    set_committed_value(user, "failed_logins", count)
    return count


def lock(user: User, now: datetime) -> bool:
    """Lock the account unless it already is; True for the one caller that locked it (it audits and mails)."""
    return _claim(user, _users, _users.c.locked_at.is_(None), locked_at=now)


def email_verified(user: User, email: str, now: datetime) -> bool:
    """Mark ``email`` verified if it is still the user's address and not verified yet; True for the one caller that
    did (the link and the code of the same mail may arrive together: the change is audited once)."""
    return _claim(user, _users, _users.c.email == email, _users.c.email_verified_at.is_(None),
                  email_verified_at=now)


def binding(txn: LoginTransaction, expected: str, new: str) -> bool:
    """Move a transaction from the binding hash ``expected`` to ``new``, unless another request moved it first: an
    auth_session (idp.oidc.challenge) presented twice at once is taken by one of the two requests only."""
    return _claim(txn, _transactions, _transactions.c.binding_hash == expected, binding_hash=new)


def pushed_request(row: PushedRequest, now: datetime) -> bool:
    """Use a pushed authorization request (RFC 9126 4: "one-time use") as its authorization response is issued: True
    for exactly one caller. The caller has judged its expiry (a sign-in that began in time may finish later:
    idp.oidc.par.resolve); this statement decides only who uses it, in the transaction that stores the code, so a
    second request that presents it meanwhile waits for that commit and then finds it used."""
    return _claim(row, _pushed, _pushed.c.used_at.is_(None), used_at=now)
