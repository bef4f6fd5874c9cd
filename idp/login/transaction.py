"""Login transactions: one sign-in in progress, stored server-side and bound to the browser that began it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from idp.extensions import db
from idp.models import LoginTransaction, TransactionState, User
from idp.security.tokens import new_token, same, token_hash
from idp.security.webauthn import new_challenge


def start(*, binding: str, state: TransactionState, now: datetime, ttl: int,
          user: User | None = None) -> LoginTransaction:
    """Store a new transaction: the reasons it exists, where to return, and what is already done; with the WebAuthn
    challenge of its first step (idp.login.webauthn.assertion_options), so that the page that offers a passkey
    writes nothing."""
    if not state.webauthn_challenge:
        state = replace(state, webauthn_challenge=new_challenge())
    txn = LoginTransaction(id=new_token(24), binding_hash=token_hash(binding), user=user, created_at=now,
                           expires_at=now + timedelta(seconds=ttl), state=state)
    db.session.add(txn)
    return txn


def load(tid: str, *, binding: str | None, now: datetime, lock: bool = False) -> LoginTransaction | None:
    """The transaction ``tid`` if it belongs to this browser, is unexpired and not yet completed.

    With ``lock``, for a request that may change it (an answer, a choice): its row is read under a lock held to the
    request's commit (SELECT ... FOR UPDATE), so that of two answers posted at once the second reads it after the
    first is done, and finds it completed if the first completed it: a sign-in starts one session and answers its
    authorization request once (tests/test_races.py)."""
    if not tid or not binding or len(tid) > 64:
        return None
    txn = db.session.get(LoginTransaction, tid, with_for_update=True if lock else None, populate_existing=lock)
    if txn is None or txn.completed_at is not None or txn.expires_at <= now:
        return None
    if not same(txn.binding_hash, token_hash(binding)):
        return None
    return txn


def update(txn: LoginTransaction, **changes: Any) -> None:
    """Change fields of the typed state (a new value is assigned, so SQLAlchemy writes it)."""
    txn.state = replace(txn.state, **changes)


def mark_done(txn: LoginTransaction, step: str, amr: Iterable[str]) -> None:
    """Record that ``step`` succeeded and which methods (RFC 8176 values) it proved; the next step gets a WebAuthn
    challenge of its own (SECURITY.md 25: one left unused by this step, say the sign-in page's passkey prompt
    when the password answered it, answers nothing after it)."""
    update(txn, done=[*txn.state.done, step], amr=list(dict.fromkeys([*txn.state.amr, *amr])),
           webauthn_challenge=new_challenge())


def load_completed(tid: str | None, *, binding: str | None, now: datetime, address: str,
                   within: int = 600) -> LoginTransaction | None:
    """A transaction this browser completed in the last ``within`` seconds and nobody has used since, coming back
    to its own return address (``address``: this request's path and query); marked used, which the caller commits
    before anything can roll it back: whatever its answer is, a refusal must not give it back for another.

    The device flow's approval page uses it to know which of its reasons the user has just answered (prompt=login,
    acr_values, consent), so that it neither asks again nor loops; so does the authorization endpoint, for a
    sign-in that was completed by a redirect back to it (an instance of a release before the one that answers at
    once, during a rolling upgrade). What it answered counts for the request it was begun for and no other
    (another client's, another request's).
    """
    if not tid or not binding or len(tid) > 64:
        return None
    txn = db.session.get(LoginTransaction, tid)
    if txn is None or txn.completed_at is None or txn.state.used:
        return None
    if (now - txn.completed_at).total_seconds() > within or not same(txn.binding_hash, token_hash(binding)):
        return None
    if not same_address(txn.state.return_to, address):
        return None
    update(txn, used=True)
    return txn


def same_address(one: str, other: str) -> bool:
    """Whether two paths with queries name the same request: the same path and the same parameters, each once
    percent-decoded (the browser may spell them otherwise than ``urlencode`` wrote them), in any order."""
    first, second = urlsplit(one), urlsplit(other)
    return first.path == second.path and sorted(parse_qsl(first.query, keep_blank_values=True)) == \
        sorted(parse_qsl(second.query, keep_blank_values=True))
