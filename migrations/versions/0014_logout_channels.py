"""Logout for every client (OpenID Connect Back-Channel and Front-Channel Logout 1.0): the clients' logout URIs,
and which clients each sign-in session signed into.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 20:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'session_clients',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sid', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['sid'], ['login_sessions.sid'],
                                name=op.f('fk_session_clients_sid_login_sessions'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_session_clients')),
        sa.UniqueConstraint('sid', 'client_id', name=op.f('uq_session_clients_sid')),
    )
    with op.batch_alter_table('session_clients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_session_clients_client_id'), ['client_id'], unique=False)
    # Nullable URIs, and flags whose server default stays (expand, then contract: migrations/README): the previous
    # release inserts clients without these columns while the new one rolls out.
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('backchannel_logout_uri', sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column('backchannel_logout_session_required', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('frontchannel_logout_uri', sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column('frontchannel_logout_session_required', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('frontchannel_logout_session_required')
        batch_op.drop_column('frontchannel_logout_uri')
        batch_op.drop_column('backchannel_logout_session_required')
        batch_op.drop_column('backchannel_logout_uri')
    with op.batch_alter_table('session_clients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_session_clients_client_id'))
    op.drop_table('session_clients')
