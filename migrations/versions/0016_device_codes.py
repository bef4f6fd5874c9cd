"""Device authorization grant (RFC 8628): the device codes a device polls with and its user approves at /device.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 20:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade():
    # A new table only (expand): the previous release never reads nor writes it.
    op.create_table(
        'device_codes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('device_code_hash', sa.String(length=64), nullable=False),
        sa.Column('user_code_hash', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('interval', sa.Integer(), nullable=False),
        sa.Column('last_polled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('approved', sa.Boolean(), nullable=True),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('sid', sa.String(length=64), nullable=True),
        sa.Column('auth_time', sa.DateTime(timezone=True), nullable=True),
        sa.Column('acr', sa.String(length=64), nullable=False),
        sa.Column('amr', sa.JSON(), nullable=False),
        sa.Column('redeemed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_device_codes_user_id_users'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_device_codes')),
        sa.UniqueConstraint('device_code_hash', name=op.f('uq_device_codes_device_code_hash')),
        sa.UniqueConstraint('user_code_hash', name=op.f('uq_device_codes_user_code_hash')),
    )
    with op.batch_alter_table('device_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_codes_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('device_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_codes_expires_at'))
    op.drop_table('device_codes')
