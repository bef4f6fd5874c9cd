"""Tamper-evident audit log: each audit row carries the hash of the one before and its own (a hash chain), and
signed checkpoints of the chain's end go to a table of their own (SECURITY.md 35). The rows already there are
chained here, in id order.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-12 10:00:00

"""
import hashlib
import json
from datetime import UTC

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

GENESIS = "0" * 64
# The columns a row's hash covers. This is a copy of idp.audit.row_hash as it was when the migration was written:
# a migration does not follow later changes of the application's code.
FIELDS = ("id", "at", "event", "actor_id", "subject_id", "subject_email", "client_id", "ip", "user_agent", "details")


def _row_hash(prev_hash, row):
    content = {name: row[name] for name in FIELDS}
    at = content["at"]
    if isinstance(at, str):  # SQLite without type information hands back text
        from datetime import datetime
        at = datetime.fromisoformat(at)
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    content["at"] = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    details = content["details"]
    content["details"] = json.loads(details) if isinstance(details, str) else (details or {})
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


def _triggers(bind, on):
    """Switch the append-only triggers of 0001 off for the one UPDATE that chains the old rows, and back on."""
    if bind.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE audit_events {'ENABLE' if on else 'DISABLE'} TRIGGER audit_events_append_only")
    elif on:
        op.execute("""
            CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
            BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")


def upgrade():
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('row_hash', sa.String(length=64), nullable=True))
    op.create_table(
        'audit_checkpoints',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('row_hash', sa.String(length=64), nullable=False),
        sa.Column('kid', sa.String(length=64), nullable=False),
        sa.Column('signature', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_checkpoints')),
    )
    with op.batch_alter_table('audit_checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_checkpoints_last_event_id'), ['last_event_id'], unique=False)

    bind = op.get_bind()
    events = sa.table('audit_events', *(sa.column(name) for name in FIELDS), sa.column('prev_hash'),
                      sa.column('row_hash'))
    rows = bind.execute(sa.select(*(events.c[name] for name in FIELDS)).order_by(events.c.id)).mappings().all()
    if rows:
        _triggers(bind, on=False)
        prev = GENESIS
        for row in rows:
            this = _row_hash(prev, row)
            bind.execute(events.update().where(events.c.id == row["id"]).values(prev_hash=prev, row_hash=this))
            prev = this
        _triggers(bind, on=True)

    # Checkpoints are as append-only as the events they vouch for.
    if bind.dialect.name == "postgresql":
        op.execute("""
            CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER audit_checkpoints_no_{verb.lower()} BEFORE {verb} ON audit_checkpoints
                BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END""")


def downgrade():
    op.drop_table('audit_checkpoints')  # its triggers go with it
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        with op.batch_alter_table('audit_events', schema=None) as batch_op:
            batch_op.drop_column('row_hash')
            batch_op.drop_column('prev_hash')
    else:
        # SQLite drops a column by rebuilding the table, which loses its triggers: they are made again.
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"DROP TRIGGER IF EXISTS audit_events_no_{verb.lower()}")
        with op.batch_alter_table('audit_events', schema=None) as batch_op:
            batch_op.drop_column('row_hash')
            batch_op.drop_column('prev_hash')
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events
                BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""")
