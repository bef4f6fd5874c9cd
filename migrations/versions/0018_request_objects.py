"""Request objects (RFC 9101, OIDC Core 6): the request_uris a client may pass its request objects by reference
from, and the algorithm its request objects must be signed with.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-12 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade():
    # Expand only (migrations/README): nullable columns, which the previous release leaves NULL in the clients it
    # registers (no request_uris, any of the signing algorithms): exactly what such a client had before.
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_uris', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('request_object_signing_alg', sa.String(length=16), nullable=True))


def downgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('request_object_signing_alg')
        batch_op.drop_column('request_uris')
