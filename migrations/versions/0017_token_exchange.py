"""Token exchange (RFC 8693): which clients may exchange a token for one addressed to a client, and, on a token
row, the audience and the act claim (RFC 8693 4.1) of an exchanged access token.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-10 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade():
    # Expand only (migrations/README): nullable columns. The previous release leaves them NULL, which reads as no
    # exchange allowed (a client) and a token addressed to its own client with no actor (a token row), as every
    # token it issues is.
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_exchange_actors', sa.JSON(), nullable=True))
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audience', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('act', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_column('act')
        batch_op.drop_column('audience')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('token_exchange_actors')
