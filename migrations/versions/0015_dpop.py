"""DPoP (RFC 9449): the key a token row's tokens are bound to, the key an authorization code is bound to (its
dpop_jkt, RFC 9449 10), the client setting that makes a proof mandatory (RFC 9449 5.2), and the proofs' jti
replay cache used when there is no Redis.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    # Expand only (migrations/README): nullable columns, which the previous release leaves NULL (an unbound token
    # or code, as every one it issues is), and a server default that stays for the client setting.
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dpop_jkt', sa.String(length=64), nullable=True))
    with op.batch_alter_table('authorization_codes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dpop_jkt', sa.String(length=64), nullable=True))
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dpop_bound_access_tokens', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.create_table(
        'dpop_proofs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('jti_hash', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dpop_proofs')),
        sa.UniqueConstraint('jti_hash', name=op.f('uq_dpop_proofs_jti_hash')),
    )
    with op.batch_alter_table('dpop_proofs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dpop_proofs_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('dpop_proofs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dpop_proofs_expires_at'))
    op.drop_table('dpop_proofs')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('dpop_bound_access_tokens')
    with op.batch_alter_table('authorization_codes', schema=None) as batch_op:
        batch_op.drop_column('dpop_jkt')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_column('dpop_jkt')
