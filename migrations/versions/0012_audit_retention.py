"""Audit retention: a prune archives the oldest audit rows and anchors the kept chain to the last of them with a
signed row in audit_anchors (idp.audit.prune). The append-only guard of audit_events then lets a DELETE through
for the rows an anchor covers, and for no other; anchors are as append-only as checkpoints.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-20 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# The largest event id an anchor covers (0 without one): rows up to it were archived and may go.
ANCHORED = "(SELECT coalesce(max(last_event_id), 0) FROM audit_anchors)"


def upgrade():
    op.create_table(
        'audit_anchors',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('row_hash', sa.String(length=64), nullable=False),
        sa.Column('events', sa.Integer(), nullable=False),
        sa.Column('archive', sa.String(length=255), nullable=False),
        sa.Column('kid', sa.String(length=64), nullable=False),
        sa.Column('signature', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_anchors')),
    )
    with op.batch_alter_table('audit_anchors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_anchors_last_event_id'), ['last_event_id'], unique=True)

    if op.get_bind().dialect.name == "postgresql":
        # audit_events gets a guard of its own; audit_checkpoints keeps 0001's function, which refuses everything.
        op.execute(f"""
            CREATE FUNCTION audit_events_guard() RETURNS trigger AS $$
            BEGIN
                IF TG_OP = 'DELETE' AND OLD.id <= {ANCHORED} THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'audit_events is append-only';
            END; $$ LANGUAGE plpgsql""")
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("""
            CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_guard()""")
        op.execute("""
            CREATE TRIGGER audit_anchors_append_only BEFORE UPDATE OR DELETE ON audit_anchors
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        op.execute(f"""
            CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
            WHEN OLD.id > {ANCHORED}
            BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""")
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER audit_anchors_no_{verb.lower()} BEFORE {verb} ON audit_anchors
                BEGIN SELECT RAISE(ABORT, 'audit_anchors is append-only'); END""")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("""
            CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""")
        op.execute("DROP FUNCTION audit_events_guard()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        op.execute("""
            CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
            BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""")
    op.drop_table('audit_anchors')  # its triggers go with it
