"""Record when the profile phone number was proved by a texted code, so `phone_number_verified` tells the truth.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 13:20:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    # Numbers already in users.phone were never proved: they stay, unverified (NULL).
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phone_verified_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('phone_verified_at')
