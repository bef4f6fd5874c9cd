"""The audit log is tamper-evident (SECURITY.md 35): every row is chained to the one before by its hash, signed
checkpoints vouch for the chain's end, and `idp audit verify` names the first broken link.

The attacker here has the database: raw SQL with the append-only triggers switched off (the ORM's listeners and
the triggers are the first line, tested in test_migrations.py; this is what is left when they are bypassed).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from sqlalchemy import select, text

from idp import audit
from idp.extensions import db
from idp.models import AuditCheckpoint, AuditEvent
from idp.oidc import keys
from tests.conftest import TEST_DATABASE_URL


def events(app) -> list:
    with app.app_context():
        return [dict(row) for row in db.session.execute(select(audit._EVENTS).order_by(AuditEvent.id)).mappings()]


def verify(app):
    """`idp audit verify`: (exit code, its one line)."""
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    return result.exit_code, result.output.strip()


def some_events(app, count=5) -> list:
    with app.test_request_context():
        for i in range(count):
            audit.record("test.event", n=i, commit=True)
    return events(app)


def as_attacker(app, *statements: str) -> None:
    """Run raw SQL on the audit tables with the append-only triggers off (the attacker owns the database)."""
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            for table in ("audit_events", "audit_checkpoints"):
                db.session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            for statement in statements:
                db.session.execute(text(statement))
            for table in ("audit_events", "audit_checkpoints"):
                db.session.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        else:
            for table in ("audit_events", "audit_checkpoints"):
                for verb in ("update", "delete"):
                    db.session.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{verb}"))
            for statement in statements:
                db.session.execute(text(statement))
        db.session.commit()


def test_every_row_links_to_the_one_before_including_a_durable_row_written_after_a_rollback(app):
    with app.test_request_context():
        audit.record("test.first", commit=True)
        audit.record("test.second")
        audit.record("test.third", commit=True)  # two rows in one transaction
        audit.record("test.refused", durable=True)
        audit.record("test.rolled_back")
        db.session.rollback()  # the durable row is written again, in a transaction of its own
        audit.record("test.after", commit=True)
    rows = events(app)
    assert [r["event"] for r in rows] == ["test.first", "test.second", "test.third", "test.refused", "test.after"]
    prev = audit.GENESIS
    for row in rows:
        assert row["prev_hash"] == prev
        assert row["row_hash"] == audit.row_hash(prev, row)
        prev = row["row_hash"]
    assert verify(app) == (0, "audit log intact: 5 events, 0 checkpoints")


def test_a_row_changed_in_the_database_is_named_and_verify_exits_1(app):
    rows = some_events(app)
    as_attacker(app, f"UPDATE audit_events SET details = '{{\"n\": 99}}' WHERE id = {rows[2]['id']}")
    assert verify(app) == (1, f"event {rows[2]['id']}: row_hash does not match its content")


def test_a_changed_row_with_its_hash_recomputed_breaks_the_next_link(app):
    rows = some_events(app)
    forged = {**rows[2], "ip": "203.0.113.9"}
    as_attacker(app, f"UPDATE audit_events SET ip = '203.0.113.9', "
                     f"row_hash = '{audit.row_hash(rows[2]['prev_hash'], forged)}' WHERE id = {rows[2]['id']}")
    assert verify(app) == (1, f"event {rows[3]['id']}: prev_hash does not link to event {rows[2]['id']}")


def test_a_deleted_middle_row_is_named_and_verify_exits_1(app):
    rows = some_events(app)
    as_attacker(app, f"DELETE FROM audit_events WHERE id = {rows[2]['id']}")
    assert verify(app) == (1, f"event {rows[3]['id']}: prev_hash does not link to event {rows[1]['id']}")


def test_a_deleted_first_row_is_named(app):
    rows = some_events(app)
    as_attacker(app, f"DELETE FROM audit_events WHERE id = {rows[0]['id']}")
    assert verify(app) == (1, f"event {rows[1]['id']}: prev_hash does not start the chain")


def test_a_checkpoint_signs_the_end_of_the_chain_and_verifies(app):
    rows = some_events(app, 3)
    result = app.test_cli_runner().invoke(args=["audit", "checkpoint"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint at event {rows[-1]['id']} ({rows[-1]['row_hash']})" in result.output
    some_events(app, 2)
    assert verify(app) == (0, "audit log intact: 5 events, 1 checkpoints")


def test_checkpoint_of_an_empty_log_is_refused(app):
    result = app.test_cli_runner().invoke(args=["audit", "checkpoint"])
    assert result.exit_code == 1 and "empty" in result.output


def _checkpoint(app) -> AuditCheckpoint:
    assert app.test_cli_runner().invoke(args=["audit", "checkpoint"]).exit_code == 0
    with app.app_context():
        row = db.session.execute(select(AuditCheckpoint)).scalar_one()
        db.session.expunge(row)
        return row


def test_a_forged_checkpoint_signature_is_reported(app):
    some_events(app, 3)
    cp = _checkpoint(app)
    # Signed by a key of the attacker's own, under the name of idp's key.
    forger = ECKey.generate_key("P-256", private=True)
    payload = audit._canonical({"last_event_id": cp.last_event_id, "row_hash": cp.row_hash,
                                "at": audit.rfc3339(cp.at)})
    forged = jws.serialize_compact({"alg": "ES256", "kid": cp.kid}, payload, forger, algorithms=["ES256"])
    as_attacker(app, f"UPDATE audit_checkpoints SET signature = '{forged}' WHERE id = {cp.id}")
    assert verify(app) == (1, f"checkpoint {cp.id}: bad signature")


def test_a_rewritten_chain_does_not_match_its_signed_checkpoint(app):
    """The attacker changes a row and rechains everything after it: the links hold, the checkpoint does not."""
    rows = some_events(app, 3)
    cp = _checkpoint(app)
    statements, prev = [], audit.GENESIS
    for row in rows:
        row = {**row, "details": {"n": 42}} if row["id"] == rows[1]["id"] else row
        this = audit.row_hash(prev, row)
        statements.append(f"UPDATE audit_events SET details = '{{\"n\": {row['details']['n']}}}', "
                          f"prev_hash = '{prev}', row_hash = '{this}' WHERE id = {row['id']}")
        prev = this
    as_attacker(app, *statements)
    assert verify(app) == (1, f"checkpoint {cp.id}: row_hash differs from event {rows[-1]['id']}'s")
    # Nor can the checkpoint's own row_hash be moved along: its signature covers it.
    as_attacker(app, f"UPDATE audit_checkpoints SET row_hash = '{prev}' WHERE id = {cp.id}")
    assert verify(app) == (1, f"checkpoint {cp.id}: signed content does not match the row")


def test_a_checkpoint_whose_event_was_cut_off_the_end_is_reported(app):
    rows = some_events(app, 3)
    cp = _checkpoint(app)
    as_attacker(app, f"DELETE FROM audit_events WHERE id = {rows[-1]['id']}")
    assert verify(app) == (1, f"checkpoint {cp.id}: event {rows[-1]['id']} is missing")


def test_a_checkpoint_is_written_every_n_events(make_app):
    app = make_app(IDP_AUDIT_CHECKPOINT_EVERY=3)
    with app.app_context():
        keys.active()  # the signing keys exist (a checkpoint at append time creates none)
    rows = some_events(app, 7)
    with app.app_context():
        signed = [row.last_event_id for row in db.session.execute(select(AuditCheckpoint)).scalars()]
    assert signed == [row["id"] for row in rows if row["id"] % 3 == 0] and len(signed) == 2
    assert verify(app) == (0, "audit log intact: 7 events, 2 checkpoints")


def test_the_rows_of_one_transaction_go_in_together_with_their_checkpoints(make_app):
    """A transaction's rows are appended as one INSERT (idp.audit._append): each still links to the one before, and
    each n-th of them still gets its checkpoint."""
    app = make_app(IDP_AUDIT_CHECKPOINT_EVERY=2)
    with app.app_context():
        keys.active()
    with app.test_request_context():
        for n in range(5):
            audit.record("test.batch", n=n)
        db.session.commit()
    rows = events(app)
    assert [row["details"]["n"] for row in rows if row["event"] == "test.batch"] == list(range(5))
    with app.app_context():
        signed = [row.last_event_id for row in db.session.execute(select(AuditCheckpoint)).scalars()]
    assert signed == [row["id"] for row in rows if row["id"] % 2 == 0] and len(signed) >= 2
    assert verify(app) == (0, f"audit log intact: {len(rows)} events, {len(signed)} checkpoints")


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="concurrent writers need PostgreSQL (SQLite serialises them): "
                                                  "set IDP_TEST_DATABASE_URL")
def test_concurrent_appends_on_postgresql_keep_one_intact_chain(app):
    threads, each = 8, 10
    barrier = threading.Barrier(threads, timeout=60)

    def append(i):
        with app.test_request_context():
            db.session.connection()  # each thread's own connection, opened before the barrier
            barrier.wait()
            for n in range(each):
                audit.record("test.race", thread=i, n=n, commit=(n % 2 == 1))  # one or two rows per transaction
            db.session.commit()
        with app.app_context():
            db.session.remove()

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(append, i) for i in range(threads)]:
            future.result(timeout=120)
    rows = events(app)
    assert len(rows) == threads * each
    assert len({row["prev_hash"] for row in rows}) == len(rows)  # no two rows link to the same predecessor
    assert verify(app) == (0, f"audit log intact: {threads * each} events, 0 checkpoints")
