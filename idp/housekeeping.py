"""Housekeeping (`idp housekeeping`, daily): delete what has expired, so that the tables a sign-in writes to stop
growing, and archive audit events past IDP_AUDIT_RETENTION_DAYS.

Nothing still usable goes: each rule below says why what it deletes can no longer be used nor matter. Rows go in
batches of IDP_HOUSEKEEPING_BATCH, each one short transaction of its own (``DELETE ... WHERE id IN (SELECT id
... ORDER BY id LIMIT n)``, committed before the next), so that no hot table is locked for long; on PostgreSQL
the inner SELECT takes ``FOR UPDATE SKIP LOCKED``, so a batch passes over a row a request holds instead of waiting
for it (the next run takes it). Batches walk the table in id order from where the last one stopped, so a run reads
each row about once however many batches it takes.

Everything is measured from ``now`` minus GRACE: a request that read a row an instant before it expired, or a host
whose clock runs a little ahead, never finds it gone while it is still at work on it.

No foreign key points at any of these tables (only from them to ``users``, ON DELETE CASCADE), so no delete can
fail on one nor leave a row behind; what refers to them by value (``tokens.authorization_code_id``,
``tokens.sid``, ``one_time_tokens.transaction_id``) is dealt with by the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from flask import current_app
from sqlalchemy import ColumnElement, CursorResult, Table, and_, delete, exists, or_, select
from sqlalchemy.orm import aliased

from idp import audit
from idp.admin import service
from idp.extensions import db
from idp.models import (
    AdminJob,
    AuthorizationCode,
    Device,
    DeviceCode,
    DPoPProof,
    LoginSession,
    LoginTransaction,
    OneTimeToken,
    PushedRequest,
    Token,
    table_of,
    utcnow,
)
from idp.oidc import par

GRACE = timedelta(minutes=5)
# load_completed's window (idp.login.transaction): the page a sign-in returns to reads its transaction back.
READ_BACK = 600
# A finished bulk job's page (the console) lists each user's result; after a month the audit log, which has each
# action on its own, is where to look.
FINISHED_JOBS_KEPT = timedelta(days=30)


def _codes(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Authorization codes, used or not, once they can no longer be redeemed nor protect anything:
    - expired more than IDP_ID_TOKEN_TTL ago: the nonce replay check (idp.oidc.server.OpenIDCode.exists_nonce,
      OIDC Core 15.5.2) finds a nonce by its code, so a nonce stays refused as long as an ID token carrying it
      may still be accepted; the client's own single-use check of its nonce covers what comes after;
    - and no token issued from it is left: presenting a used code again revokes what it issued (RFC 6749 4.1.2,
      SECURITY.md 5), so it stays as long as those tokens do (they go with their family, see _tokens)."""
    codes = table_of(AuthorizationCode)
    tokens = table_of(Token)
    return and_(codes.c.expires_at <= cutoff - timedelta(seconds=cfg["IDP_ID_TOKEN_TTL"]),
                ~exists().where(tokens.c.authorization_code_id == codes.c.id))


def _token_matters(row: Any, cutoff: datetime) -> ColumnElement[bool]:
    """Whether a token row can still be used or still guards its family: its access token has not expired (even
    revoked: it is refused by its row until it expires), or its refresh token is neither revoked nor past its idle
    or absolute expiry. A rotated refresh token counts too: presenting it again revokes the family (RFC 9700
    4.14.2), which matters as long as the family lives."""
    return or_(row.c.access_expires_at > cutoff,
               and_(row.c.refresh_token_hash.is_not(None), row.c.revoked_at.is_(None),
                    row.c.refresh_expires_at > cutoff,
                    or_(row.c.family_expires_at.is_(None), row.c.family_expires_at > cutoff)))


def _tokens(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Token rows of families of which no row matters any more (_token_matters), all of them together: a live
    family stays whole, rotated rows included, so that a reused refresh token is still detected and revokes it.
    Nothing joins a dead family (only a usable refresh token of it could add a row), so a family split over two
    batches is as dead in the second."""
    tokens = table_of(Token)
    sibling = aliased(tokens)
    return and_(~_token_matters(tokens, cutoff),  # (the row's own test first: cheap, and true of most)
                ~exists().where(sibling.c.family_id == tokens.c.family_id, _token_matters(sibling, cutoff)))


def _transactions(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Login transactions (and the WebAuthn challenges, codes sent and progress in their JSON state):
    - unfinished and expired: no step of it can be taken any more (idp.login.transaction.load);
    - completed longer ago than IDP_SESSION_MAX_AGE (at least READ_BACK): the page it returned to reads it back
      within READ_BACK, and a first-party app names the session it ended in by its auth_session, for a step-up,
      only while that session lives, which is never past IDP_SESSION_MAX_AGE after the sign-in."""
    txns = table_of(LoginTransaction)
    kept = timedelta(seconds=max(cfg["IDP_SESSION_MAX_AGE"], READ_BACK))
    return or_(and_(txns.c.completed_at.is_(None), txns.c.expires_at <= cutoff), txns.c.completed_at <= cutoff - kept)


def _sessions(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Login sessions begun longer ago than IDP_SESSION_MAX_AGE: every one of them is over by then (ended, or by
    the clock). An ended or idle one stays until then, no new setting needed: the "end that session" link of a
    new-sign-in mail is signed for IDP_SESSION_MAX_AGE and answers "that session is ended" while the row is there
    (an error page after); the user's session list and the admin console list only live sessions; the data export
    lists the rows there are, and the audit log keeps every sign-in and sign-out for good. A token or code that
    names a deleted session by its sid reads it as ended, which it is."""
    sessions = table_of(LoginSession)
    return sessions.c.created_at <= cutoff - timedelta(seconds=cfg["IDP_SESSION_MAX_AGE"])


def _one_time_tokens(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Emailed and texted codes and links, the account API's WebAuthn challenges, used or not, once expired (no
    finder accepts an expired one) and older than IDP_RESEND_COOLDOWN (the latest one of a purpose times the next
    send: idp.login.onetime.latest)."""
    otts = table_of(OneTimeToken)
    return and_(otts.c.expires_at <= cutoff,
                otts.c.created_at <= cutoff - timedelta(seconds=cfg["IDP_RESEND_COOLDOWN"]))


def _devices(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Forgotten devices (revoked: no longer listed, and a browser presenting one is treated as new), when the
    user has a newer device row. Not any other: a device past its remembered_until is still a known browser
    (its next sign-in sends no new-sign-in mail: idp.login.devices.seen), and the user's newest row stays even
    forgotten, since a user without any device row gets no such mail for their next browser (that is how a new
    account's first browser is told apart)."""
    devices = table_of(Device)
    newer = aliased(devices)
    return and_(devices.c.revoked_at.is_not(None),
                exists().where(newer.c.user_id == devices.c.user_id, newer.c.id > devices.c.id))


def _admin_jobs(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Bulk admin jobs finished more than FINISHED_JOBS_KEPT ago (each user's action is in the audit log)."""
    jobs = table_of(AdminJob)
    return jobs.c.finished_at <= cutoff - FINISHED_JOBS_KEPT


def _pushed_requests(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Pushed authorization requests (RFC 9126) that expired more than a day ago: a sign-in begun before its
    request_uri expired may still finish with it meanwhile (idp.oidc.par)."""
    pushed = table_of(PushedRequest)
    return pushed.c.expires_at <= cutoff - par.KEPT_AFTER_EXPIRY


def _dpop_proofs(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """The jti values of DPoP proofs (RFC 9449 11.1; idp.oidc.dpop) once expired: a proof is refused for its iat
    long before then, so its jti guards nothing any more."""
    proofs = table_of(DPoPProof)
    return proofs.c.expires_at <= cutoff


def _device_codes(cutoff: datetime, cfg: Mapping[str, Any]) -> ColumnElement[bool]:
    """Device codes (RFC 8628) once expired, decided and redeemed or not: a poll with an expired one is answered
    expired_token and with an unknown one invalid_grant, both telling the device to start again; /device finds only
    unexpired ones; no token refers to the row (the sign-in it carried is copied into the tokens)."""
    codes = table_of(DeviceCode)
    return codes.c.expires_at <= cutoff


@dataclass(frozen=True)
class Rule:
    """A table, and the condition that dooms a row of it at a cutoff (given the settings)."""

    table: Table
    doomed: Callable[[datetime, Mapping[str, Any]], ColumnElement[bool]]


# Tokens before codes: a used code goes only once the tokens it issued are gone.
RULES = [Rule(table_of(Token), _tokens), Rule(table_of(AuthorizationCode), _codes),
         Rule(table_of(LoginTransaction), _transactions), Rule(table_of(LoginSession), _sessions),
         Rule(table_of(OneTimeToken), _one_time_tokens), Rule(table_of(Device), _devices),
         Rule(table_of(AdminJob), _admin_jobs), Rule(table_of(PushedRequest), _pushed_requests),
         Rule(table_of(DPoPProof), _dpop_proofs), Rule(table_of(DeviceCode), _device_codes)]


def delete_expired(rule: Rule, cutoff: datetime, cfg: Mapping[str, Any], batch: int) -> int:
    """Delete what ``rule`` dooms, in batches of ``batch`` rows, each committed; returns how many rows went."""
    table = rule.table
    key = table.c.id
    doomed = rule.doomed(cutoff, cfg)
    total, after = 0, None
    while True:
        # Its own FROM (correlate(None)): the inner SELECT reads the table the DELETE deletes from.
        chosen = select(key).where(doomed).correlate(None)
        if after is not None:
            chosen = chosen.where(key > after)
        chosen = chosen.order_by(key).limit(batch).with_for_update(skip_locked=True)  # no-op on SQLite
        result = cast(CursorResult, db.session.execute(delete(table).where(key.in_(chosen.scalar_subquery()))
                                                       .returning(key)))
        ids = result.scalars().all()
        db.session.commit()
        total += len(ids)
        if len(ids) < batch:
            return total
        # The next batch starts after this one. (For the text ids of login_transactions Python's order may differ
        # from the database's collation; this one is still in the batch, so no row is passed over.)
        after = max(ids)


@dataclass
class Done:
    """What a run did: rows deleted per table (and the other chores' counts), and what it refused to do."""

    counts: dict[str, int] = field(default_factory=dict)
    archive: Path | None = None
    problems: list[str] = field(default_factory=list)


def run(now: datetime | None = None) -> Done:
    """Every chore once: lapsed admin roles, purged users, expired rows, audit retention."""
    cfg = current_app.config
    now = now or utcnow()
    done = Done()
    done.counts["admin roles lapsed"] = service.lapse_roles(now)
    done.counts["users purged"] = service.purge_deleted(service.OPERATOR, now=now)
    batch = max(1, int(cfg["IDP_HOUSEKEEPING_BATCH"]))
    for rule in RULES:
        done.counts[rule.table.name] = delete_expired(rule, now - GRACE, cfg, batch)
    days = int(cfg["IDP_AUDIT_RETENTION_DAYS"])
    if days > 0:
        folder = cfg["IDP_AUDIT_ARCHIVE_DIR"] or str(Path(current_app.instance_path) / "audit-archive")
        try:
            pruned = audit.prune(before=now - timedelta(days=days), archive_dir=folder, batch=batch, now=now)
        except audit.PruneRefused as refused:
            done.problems.append(str(refused))
        else:
            done.counts["audit_events"] = pruned.deleted
            done.archive = pruned.archive
            if pruned.deleted:  # the log says when it was cut, how far, and where the rows went
                audit.record("audit.pruned", via="system", events=pruned.archived, deleted=pruned.deleted,
                             through=pruned.through, archive=pruned.archive.name if pruned.archive else None,
                             commit=True)
    return done
