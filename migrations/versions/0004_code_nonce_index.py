"""Index the authorization codes by client and nonce: the nonce replay check runs on every authorization request.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 23:30:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_authorization_codes_client_id_nonce', 'authorization_codes', ['client_id', 'nonce'],
                    unique=False)


def downgrade():
    op.drop_index('ix_authorization_codes_client_id_nonce', table_name='authorization_codes')
