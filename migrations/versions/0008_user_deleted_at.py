"""Soft delete: a user an administrator deleted is disabled and hidden at once, and purged after
IDP_DELETE_GRACE_DAYS unless restored.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 16:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_users_deleted_at', ['deleted_at'])


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_deleted_at')
        batch_op.drop_column('deleted_at')
