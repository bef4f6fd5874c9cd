"""The one writer of the append-only audit log (SECURITY.md 29)."""

from __future__ import annotations

import logging
from typing import Any

from flask import g, has_request_context
from sqlalchemy import insert
from sqlalchemy.event import listens_for
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction

from idp.extensions import db
from idp.models import AuditEvent, User, table_of

log = logging.getLogger("idp.audit")

# Keys that must never reach an audit row (SECURITY.md 30); a caller that passes one is a bug we want loud. The
# names are those the secrets go by in idp's forms and in the protocols (RFC 6749, 7636, 7523; OIDC Core and
# RP-Initiated Logout): a value under any of them is the secret itself.
_SECRET_KEYS = {
    "password", "new_password", "current_password", "code", "otp", "recovery_code", "code_verifier", "token",
    "access_token", "refresh_token", "id_token", "id_token_hint", "client_assertion", "secret", "client_secret",
    "seed", "private_key",
}

# Rows are only ever appended, and nothing reads one back in the request that wrote it, so they are written as one
# prepared INSERT in the caller's transaction instead of through the ORM's unit of work (on the token endpoint
# that bookkeeping cost more than the statement itself). They commit or roll back with the caller's work.
_APPEND = insert(table_of(AuditEvent))


# Rows recorded with durable=True that the caller's transaction has not committed yet, kept in the session's info.
_UNCOMMITTED = "idp.audit.uncommitted"


def record(event: str, *, subject: User | None = None, actor: User | None = None, client_id: str | None = None,
           ip: str | None = None, user_agent: str | None = None, commit: bool = False, durable: bool = False,
           actor_client: str | None = None, **details: Any) -> None:
    """Append one event; who/where default to the current request's client (as resolved by idp.http).

    ``durable`` is for events that record a refusal or a failure (SECURITY.md 29): the request that refuses often
    rolls its work back, and the row must survive that. It is written in the caller's transaction like any other;
    if that transaction ends without committing, the row is written again in a transaction of its own once the
    caller's has ended (not before: on SQLite a second writer would wait on the caller's own write lock).
    """
    if actor_client:
        details["actor_client"] = actor_client
    leaked = _SECRET_KEYS.intersection(details)
    if leaked:
        raise ValueError(f"audit details may not carry secrets: {sorted(leaked)}")
    if has_request_context():
        ip = ip if ip is not None else g.get("client_ip")
        user_agent = user_agent if user_agent is not None else g.get("user_agent")
    subject_id = subject.id if subject is not None else None
    row = {  # `at` is the column's default, the time of the INSERT
        "event": event,
        # Who did it: a person, the subject themselves by default, or nobody idp knows as a user (a machine
        # client of the admin API, named in details as actor_client; an operator at the command line; idp itself).
        "actor_id": actor.id if actor is not None
        else None if actor_client or details.get("via") in ("cli", "system") else subject_id,
        "subject_id": subject_id,
        "subject_email": subject.email if subject is not None else details.pop("email", None),
        "client_id": client_id,
        "ip": ip,
        "user_agent": (user_agent or "")[:512] or None,
        "details": details,
    }
    connection = db.session.connection()
    connection.execute(_APPEND, row)
    if durable:
        db.session.info.setdefault(_UNCOMMITTED, []).append((connection.engine, row))
    if commit:
        db.session.commit()
    log.info("%s subject=%s client=%s ip=%s", event, subject_id, client_id, ip)


@listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    session.info.pop(_UNCOMMITTED, None)  # the durable rows are in, with the rest of the caller's work


@listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    """A transaction ended without commit (rolled back, or closed at the end of the request): its durable rows go in
    on their own. The caller's connection is released by now, so this waits for no lock of its own."""
    if transaction.parent is not None or transaction.nested:
        return
    pending = session.info.pop(_UNCOMMITTED, None)
    if not pending:
        return
    try:
        for engine, row in pending:
            with engine.begin() as connection:
                connection.execute(_APPEND, row)
    except SQLAlchemyError:  # the database is gone: say so loudly, but the answer to the user stands
        log.exception("could not write %d refused-request audit rows", len(pending))
