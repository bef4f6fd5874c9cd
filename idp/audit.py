"""The one writer of the append-only audit log (SECURITY.md 29)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from flask import current_app, g, has_app_context, has_request_context
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry
from sqlalchemy import Connection, CursorResult, bindparam, delete, func, insert, select, text
from sqlalchemy.event import listens_for
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction

from idp import metrics
from idp.extensions import db
from idp.models import AuditAnchor, AuditCheckpoint, AuditEvent, SigningKey, User, table_of, utcnow
from idp.models.audit import PRUNE_OPTION

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
_EVENTS = table_of(AuditEvent)
_APPEND = insert(_EVENTS)
_CHECKPOINTS = table_of(AuditCheckpoint)
_ANCHORS = table_of(AuditAnchor)


# --- The hash chain (SECURITY.md 35) --------------------------------------------------------------------------------
#
# Each row carries prev_hash, the row_hash of the row before it (GENESIS for the first), and
# row_hash = sha256(prev_hash + canonical JSON of its content), content being every column but the two hashes.
#
# Concurrency: two transactions appending at once must not both link to the same predecessor, and the order of
# the chain must be the order of the ids. So the rows a transaction records are kept in the session and appended
# when it commits (before_commit, after the ORM's flush): there the transaction takes a lock that serialises
# appends and is held until it ends, and only then reads the last row and takes the next id. Taking that lock
# last matters: a transaction that took it at its first record and then waited for a row another transaction
# holds (a refresh token both try to rotate) while that one waited for the lock to audit was a deadlock,
# which PostgreSQL broke by failing one of them. Holding it only while appending, a transaction waits for no
# row while it holds the lock. The lock:
# - PostgreSQL: pg_advisory_xact_lock, released by COMMIT or ROLLBACK. It must be a statement of its own before
#   the read: under READ COMMITTED (idp's level) each statement sees what was committed when it started, so the
#   read that follows the wait sees the row the previous holder committed. The id comes from the table's own
#   sequence, drawn under the lock, so ids grow in chain order; a transaction that rolls back leaves a gap in
#   the ids, never in the chain (the next append links to the last committed row).
# - SQLite: a writer holds the database's write lock until it ends, but the driver opens the transaction only at
#   the first write, so a no-op UPDATE goes first to take it before the read. The id is the one SQLite would
#   give (the largest plus one), taken explicitly because the hash covers it.
# Cost: a committing transaction with rows pays two small statements more (the lock, then one indexed read of the
# last row with the ids of all its rows), and its rows go in as one INSERT. On PostgreSQL the two go in one round
# trip: psycopg2 sends a string of several statements as one simple-protocol
# Query, and the server still runs them as separate statements, each with a snapshot of its own taken when it
# starts (READ COMMITTED), so the read still follows the wait (issue 22: one round trip fewer per audited
# commit; tests/test_audit_chain.py's concurrent appends on PostgreSQL would break if it did not). Commits that
# append wait for one another only for their appends and the COMMIT itself.
GENESIS = "0" * 64
_FIELDS = ("id", "at", "event", "actor_id", "subject_id", "subject_email", "client_id", "ip", "user_agent", "details")
_LOCK_KEY = 0x1D9_A0D1  # any constant that no other advisory lock of this database uses
# The ids of the n rows to append, drawn in one statement (sorted: the chain's order is the ids' order).
_LOCK_THEN_IDS_PG = text(
    "SELECT pg_advisory_xact_lock(:key); "
    "SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('audit_events', 'id')) FROM generate_series(1, :n) "
    "ORDER BY 1), (SELECT row_hash FROM audit_events ORDER BY id DESC LIMIT 1)").bindparams(key=_LOCK_KEY)
_LOCK_SQLITE = text("UPDATE audit_events SET id = id WHERE 0")
_LAST_SQLITE = select(_EVENTS.c.id, _EVENTS.c.row_hash).order_by(_EVENTS.c.id.desc()).limit(1)


def rfc3339(at: datetime) -> str:
    """A time as the chain hashes it: UTC, microseconds, Z."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(prev_hash: str, row: Mapping[Any, Any]) -> str:
    """sha256 (hex) of the previous row's hash followed by the canonical JSON of this row's content."""
    content = {name: row[name] for name in _FIELDS}
    content["at"] = rfc3339(content["at"])
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _append(connection: Connection, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert rows chained to the last, in order, under the chain's lock (above): the lock, the ids and the last
    row's hash in one round trip, the rows in one more, however many the transaction recorded. Returns the rows."""
    if connection.dialect.name == "postgresql":
        dbapi: Any = connection.connection.dbapi_connection
        if getattr(dbapi, "autocommit", False):
            # A reads_only view (idp.pg_connections) that audits after all: without a transaction the lock
            # would end with its own statement. Nothing is in progress on it, so this starts one here.
            dbapi.autocommit = False
        ids, prev = connection.execute(_LOCK_THEN_IDS_PG, {"n": len(contents)}).one()  # the lock, then the read
    else:
        connection.execute(_LOCK_SQLITE)
        last = connection.execute(_LAST_SQLITE).one_or_none()
        first, prev = (last[0] + 1, last[1]) if last else (1, None)
        ids = range(first, first + len(contents))
    prev = prev or GENESIS
    rows = []
    for content, next_id in zip(contents, ids, strict=True):
        row = {**content, "id": next_id, "prev_hash": prev}
        row["row_hash"] = prev = row_hash(prev, row)
        rows.append(row)
    connection.execute(_APPEND, rows)
    every = current_app.config.get("IDP_AUDIT_CHECKPOINT_EVERY", 0) if has_app_context() else 0
    for row in rows:
        if every > 0 and row["id"] % every == 0:
            _checkpoint(connection, row["id"], row["row_hash"])
    return rows


def _signing_key(connection: Connection) -> tuple[str, Any] | None:
    """The active ES256 signing key (kid, private key), read on ``connection``; None before keys exist. It does
    not create one (idp.oidc.keys.active would commit the caller's transaction to do so)."""
    from idp.oidc.keys import current_private_key

    return current_private_key(connection, "ES256")


def _checkpoint(connection: Connection, last_event_id: int, last_hash: str) -> dict[str, Any] | None:
    """Sign and store a checkpoint of the chain ending at ``last_event_id`` (None without a signing key)."""
    signer = _signing_key(connection)
    if signer is None:
        log.warning("no signing key yet: audit checkpoint at event %d skipped", last_event_id)
        return None
    kid, key = signer
    at = utcnow()
    payload = {"last_event_id": last_event_id, "row_hash": last_hash, "at": rfc3339(at)}
    signature = jws.serialize_compact({"alg": key.alg, "kid": kid}, _canonical(payload), key, algorithms=[key.alg])
    row = {"at": at, "last_event_id": last_event_id, "row_hash": last_hash, "kid": kid, "signature": signature}
    connection.execute(insert(_CHECKPOINTS), row)
    return row


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# Rows recorded with durable=True that the caller's transaction has not committed yet, kept in the session's info.
_UNCOMMITTED = "idp.audit.uncommitted"
# Every row the session's transaction recorded, appended to the chain when it commits (see the hash chain above).
_PENDING = "idp.audit.pending"
# The rows appended by the commit in progress, counted by idp.metrics once it has committed.
_APPENDED = "idp.audit.appended"


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
    row = {
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
        # As it will read back from the JSON column (tuples as lists, keys as strings): the hash covers that.
        "details": json.loads(json.dumps(details)),
        # Set here, not by the column's default: the hash covers it.
        "at": utcnow(),
    }
    connection = db.session.connection()  # the transaction begins now (its rows commit with its work)
    db.session.info.setdefault(_PENDING, []).append(row)
    if durable:
        db.session.info.setdefault(_UNCOMMITTED, []).append((connection.engine, row))
    if commit:
        db.session.commit()
    log.info("%s subject=%s client=%s ip=%s", event, subject_id, client_id, ip)


@listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    """The transaction commits: its recorded rows join the chain now, after the ORM wrote its own changes (so no
    row lock is waited for while the chain's lock is held)."""
    if not session.info.get(_PENDING):
        return
    session.flush()
    session.info[_APPENDED] = _append(session.connection(), session.info.pop(_PENDING))


@listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    session.info.pop(_UNCOMMITTED, None)  # the durable rows are in, with the rest of the caller's work
    metrics.count_events(session.info.pop(_APPENDED, ()))  # counted only once they are committed


@listens_for(Session, "after_transaction_end")
def _unlinked(session: Session, transaction: SessionTransaction) -> None:
    """A transaction that ends without committing takes its recorded rows with it (the durable ones are written
    again by _ended)."""
    if transaction.parent is None and not transaction.nested:
        session.info.pop(_PENDING, None)
        session.info.pop(_APPENDED, None)


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
            with engine.begin() as connection:  # a transaction of its own: its own lock and link
                _append(connection, [row])
            metrics.count_events((row,))
    except SQLAlchemyError:  # the database is gone: say so loudly, but the answer to the user stands
        log.exception("could not write %d refused-request audit rows", len(pending))


# --- Checkpoints and verification ------------------------------------------------------------------------------------


def checkpoint() -> dict[str, Any] | None:
    """Sign the end of the chain now (``idp audit checkpoint``); None when the log is empty. Commits."""
    from idp.oidc.keys import active

    active()  # the signing keys exist (created and committed on first use)
    connection = db.session.connection()
    last = connection.execute(select(_EVENTS.c.id, _EVENTS.c.row_hash).order_by(_EVENTS.c.id.desc()).limit(1)
                              ).one_or_none()
    row = _checkpoint(connection, last.id, last.row_hash) if last is not None else None
    db.session.commit()
    return row


@dataclass
class Report:
    """What verify_chain found: the counts it walked, and the first broken link (None: the log is intact)."""

    events: int = 0
    checkpoints: int = 0
    problem: str | None = None
    anchors: int = 0  # prunes (IDP_AUDIT_RETENTION_DAYS): the rows up to pruned_through were archived
    pruned_through: int = 0

    @property
    def intact(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        if self.problem:
            return self.problem
        pruned = f"; archived and pruned up to event {self.pruned_through}" if self.anchors else ""
        return f"audit log intact: {self.events} events, {self.checkpoints} checkpoints{pruned}"


def _signed_problem(what: str, row: Any, claims: dict[str, Any], public_keys: dict[str, Any]) -> str | None:
    """Why a signed row (a checkpoint, an anchor) cannot be believed, or None: its JWS must verify with the key it
    names (any key in signing_keys, retired ones too: a signature outlives its key's tokens) and say exactly
    ``claims``, what its columns say."""
    jwk = public_keys.get(row.kid)
    if jwk is None:
        return f"{what} {row.id}: signed by unknown key {row.kid}"
    try:
        key = JWKRegistry.import_key(jwk)
        signed = jws.deserialize_compact(row.signature, key, algorithms=[jwk.get("alg", "ES256")])
        payload = json.loads(signed.payload)
    except (JoseError, ValueError, TypeError):
        return f"{what} {row.id}: bad signature"
    if signed.headers().get("kid") != row.kid or payload != claims:
        return f"{what} {row.id}: signed content does not match the row"
    return None


def _checkpoint_claims(cp: Any) -> dict[str, Any]:
    return {"last_event_id": cp.last_event_id, "row_hash": cp.row_hash, "at": rfc3339(cp.at)}


def _anchor_claims(anchor: Any) -> dict[str, Any]:
    # "anchor" sets its payload apart from a checkpoint's: a checkpoint's signature, copied into audit_anchors,
    # must not pass for an anchor (it would let whoever has the database cut the log's start off).
    return {"anchor": True, "last_event_id": anchor.last_event_id, "row_hash": anchor.row_hash,
            "at": rfc3339(anchor.at), "events": anchor.events, "archive": anchor.archive}


def verify_chain(batch: int = 1000) -> Report:
    """Walk the whole log in id order, recomputing every hash, and check every checkpoint: its signature, and
    that the event it names is there with the hash it signed. Stops at the first problem.

    After a prune (idp.audit.prune) the log starts later: a row may link over the archived rows to a signed anchor
    (the hash of the last archived row) instead of to the row before it, and a checkpoint may name an archived
    event. Both only up to the newest anchor: a row missing after it is still a broken link."""
    report = Report()
    public_keys = {kid: dict(jwk) for kid, jwk in db.session.execute(select(SigningKey.kid, SigningKey.public_jwk))}
    anchors = list(db.session.execute(select(_ANCHORS).order_by(_ANCHORS.c.last_event_id)))
    for signed in anchors:
        report.problem = _signed_problem("anchor", signed, _anchor_claims(signed), public_keys)
        if report.problem:
            return report
    by_hash = {signed.row_hash: signed for signed in anchors}
    by_anchored_event = {signed.last_event_id: signed for signed in anchors}
    pruned_through = anchors[-1].last_event_id if anchors else 0
    checkpoints = list(db.session.execute(select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.id)))
    by_event: dict[int, list[Any]] = {}
    for cp in checkpoints:
        report.problem = _signed_problem("checkpoint", cp, _checkpoint_claims(cp), public_keys)
        if report.problem:
            return report
        by_event.setdefault(cp.last_event_id, []).append(cp)
    prev_id, prev = None, GENESIS
    rows = db.session.execute(select(_EVENTS).order_by(_EVENTS.c.id).execution_options(yield_per=batch)).mappings()
    for row in rows:
        anchor = by_hash.get(row["prev_hash"])
        over_archived = anchor is not None and (prev_id or 0) < anchor.last_event_id < row["id"]
        if row["prev_hash"] != prev and not over_archived:
            report.problem = (f"event {row['id']}: prev_hash does not link to event {prev_id}" if prev_id is not None
                              else f"event {row['id']}: prev_hash does not start the chain")
        elif row["row_hash"] != row_hash(row["prev_hash"], row):
            report.problem = f"event {row['id']}: row_hash does not match its content"
        else:
            for cp in by_event.pop(row["id"], []):
                if cp.row_hash != row["row_hash"]:
                    report.problem = f"checkpoint {cp.id}: row_hash differs from event {row['id']}'s"
                    break
        if report.problem:
            rows.close()
            return report
        report.events += 1
        prev_id, prev = row["id"], row["row_hash"]
    for event_id, cps in by_event.items():  # a checkpoint names an event the walk did not meet
        if event_id > pruned_through:  # removed
            report.problem = f"checkpoint {cps[0].id}: event {event_id} is missing"
            return report
        anchor = by_anchored_event.get(event_id)  # archived: only an anchor of the same event can say more
        for cp in cps:
            if anchor is not None and cp.row_hash != anchor.row_hash:
                report.problem = f"checkpoint {cp.id}: row_hash differs from anchor {anchor.id}'s"
                return report
    report.checkpoints = len(checkpoints)
    report.anchors, report.pruned_through = len(anchors), pruned_through
    return report


# --- Retention: archive, anchor, prune (IDP_AUDIT_RETENTION_DAYS) -----------------------------------------------------
#
# The oldest rows leave the database in three steps, each durable before the next begins:
# 1. the whole log is verified (a prune never runs on a broken chain: it would archive the tampering and anchor what
#    follows it, which is what an attacker would want), then the rows to go are written to a JSON lines file, one
#    full row per line with both hashes, checked link by link as they are written, and fsynced;
# 2. a signed anchor names the last of them and its hash, and commits: from then on verify_chain accepts the first
#    kept row linking to it, and the database accepts a DELETE of the rows it covers (migration 0012), no other;
# 3. they are deleted in short batches, newest first, each its own transaction. Newest first, so that a run
#    stopped half way leaves a log that verifies (the oldest rows still link to one another, the first kept row
#    links to the anchor); the next run deletes what is left of it.
# The newest row always stays, even past the retention: the next append links to it.


class PruneRefused(RuntimeError):
    """The audit log does not verify: nothing is archived nor deleted until someone has looked."""


@dataclass
class Pruned:
    """What one prune did: rows archived (into ``archive``) and rows deleted."""

    archived: int = 0
    deleted: int = 0
    archive: Path | None = None
    through: int = 0  # the newest anchor's last event: the rows up to it are archived (and now deleted)


def archive_line(row: Mapping[str, Any]) -> str:
    """One audit row as a line of the archive: every column, ``at`` as the chain hashes it (RFC 3339, UTC,
    microseconds), ``details`` as the JSON object it is. A line's row_hash is sha256(prev_hash + the canonical JSON
    of the other columns), so each file can be checked on its own, and the files one after the other."""
    line = {name: row[name] for name in (*_FIELDS, "prev_hash", "row_hash")}
    line["at"] = rfc3339(line["at"])
    return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sign(connection: Connection, claims: dict[str, Any]) -> tuple[str, str]:
    """(kid, compact JWS of ``claims``) by the active ES256 key, created first if there is none yet."""
    signer = _signing_key(connection)
    if signer is None:
        raise PruneRefused("no signing key to sign the anchor with")
    kid, key = signer
    return kid, jws.serialize_compact({"alg": key.alg, "kid": kid}, _canonical(claims), key, algorithms=[key.alg])


def _write_archive(path: Path, rows: Any, prev: str) -> tuple[int, Any]:
    """Write ``rows`` (id order) to ``path``, checking each link from ``prev``; fsync the file and its folder.
    Returns (count, last row). The file is made under a temporary name and renamed when complete, and never
    replaces another."""
    partial = path.with_name(path.name + ".partial")
    count, last = 0, None
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the rows hold addresses: the owner only
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for row in rows:
                if row["prev_hash"] != prev or row["row_hash"] != row_hash(prev, row):
                    raise PruneRefused(f"event {row['id']} changed while it was being archived")
                out.write(archive_line(row) + "\n")
                count, last, prev = count + 1, row, row["row_hash"]
            out.flush()
            os.fsync(out.fileno())
        if os.path.exists(path):
            raise PruneRefused(f"{path} exists already")
        os.rename(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself is durable
    finally:
        os.close(folder)
    return count, last


# Newest first, covered by an anchor (the database refuses any other); marked as the one bulk change the
# session's guard lets through (idp.models.audit). No SKIP LOCKED: nothing ever locks an audit row.
_PRUNE_BATCH = (delete(_EVENTS)
                .where(_EVENTS.c.id.in_(select(_EVENTS.c.id).where(_EVENTS.c.id <= bindparam("through"))
                                        .order_by(_EVENTS.c.id.desc()).limit(bindparam("batch"))
                                        .correlate(None).scalar_subquery()))
                .execution_options(**{PRUNE_OPTION: True}))


def prune(*, before: datetime, archive_dir: str | os.PathLike[str], batch: int = 1000,
          now: datetime | None = None) -> Pruned:
    """Archive the rows recorded before ``before`` to a new file in ``archive_dir``, anchor the chain to the last
    of them, and delete them in batches of ``batch`` (each committed). Raises PruneRefused, having changed
    nothing, when the log does not verify. Rows an earlier, interrupted prune archived and anchored are deleted
    too."""
    from idp.oidc.keys import active

    now = now or utcnow()
    result = Pruned()
    session = db.session
    newest = session.execute(select(func.max(_EVENTS.c.id))).scalar()
    if newest is None:
        return result
    anchored = session.execute(select(func.max(_ANCHORS.c.last_event_id))).scalar() or 0
    first_kept = session.execute(select(func.min(_EVENTS.c.id)).where(_EVENTS.c.at >= before)).scalar()
    # A prefix of the chain, by id (the order of the chain; ``at`` may run a little out of it), without the newest.
    bound = min(first_kept, newest) if first_kept is not None else newest
    through = session.execute(select(func.max(_EVENTS.c.id)).where(_EVENTS.c.id < bound)).scalar()
    if through is not None and through > anchored:
        report = verify_chain()
        if not report.intact:
            session.rollback()
            raise PruneRefused(f"the audit log does not verify ({report.problem}): nothing pruned")
        active()  # the signing keys exist (created and committed on first use)
        start = session.execute(select(_ANCHORS.c.row_hash).where(_ANCHORS.c.last_event_id == anchored)).scalar()
        folder = Path(archive_dir)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        first = session.execute(select(func.min(_EVENTS.c.id)).where(_EVENTS.c.id > anchored)).scalar_one()
        path = folder / f"audit-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{first}-{through}.jsonl"
        rows = session.execute(select(_EVENTS).where(_EVENTS.c.id > anchored, _EVENTS.c.id <= through)
                               .order_by(_EVENTS.c.id).execution_options(yield_per=batch)).mappings()
        try:
            count, last = _write_archive(path, rows, start or GENESIS)
        finally:
            rows.close()
        at = utcnow()
        anchor = {"at": at, "last_event_id": last["id"], "row_hash": last["row_hash"], "events": count,
                  "archive": path.name}
        connection = session.connection()
        anchor["kid"], anchor["signature"] = _sign(connection, _anchor_claims(SimpleNamespace(**anchor)))
        try:
            anchor_id = connection.execute(insert(_ANCHORS).returning(_ANCHORS.c.id), anchor).scalar_one()
            session.commit()
        except IntegrityError:  # another prune, run at the same moment, anchored these rows first: its archive
            session.rollback()  # is the one its anchor names
            path.unlink(missing_ok=True)
            raise PruneRefused(f"another prune archived events up to {through} at the same time") from None
        log.info("audit events %d to %d archived to %s (anchor %d)", first, through, path, anchor_id)
        result.archived, result.archive = count, path
        anchored = through
    result.through = anchored
    while anchored:
        deleted = cast(CursorResult, session.execute(_PRUNE_BATCH, {"through": anchored, "batch": batch})).rowcount
        session.commit()
        result.deleted += deleted
        if deleted < batch:
            break
    return result
