"""Dynamic client registration (RFC 7591, RFC 7592): the initial access tokens an operator issues, and on clients
their policy and terms-of-service links, their application type and the hash of their registration access token.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-09 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade():
    # Expand only (migrations/README): a new table, and nullable columns that the previous release leaves NULL (a
    # client without these links, registered by an operator, which no registration access token manages).
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('policy_uri', sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column('tos_uri', sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column('application_type', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('registration_access_token_hash', sa.String(length=64), nullable=True))
    op.create_table(
        'initial_access_tokens',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('uses_left', sa.Integer(), nullable=True),
        sa.Column('used', sa.Integer(), nullable=False, server_default='0'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_initial_access_tokens')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_initial_access_tokens_token_hash')),
    )
    with op.batch_alter_table('initial_access_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_initial_access_tokens_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('initial_access_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_initial_access_tokens_expires_at'))
    op.drop_table('initial_access_tokens')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('registration_access_token_hash')
        batch_op.drop_column('application_type')
        batch_op.drop_column('tos_uri')
        batch_op.drop_column('policy_uri')
