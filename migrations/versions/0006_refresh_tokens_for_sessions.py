"""Clients that may get refresh tokens for an online session (OIDC Core 11: without offline_access, a refresh token
lives only as long as the sign-in session it came from).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 13:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    # Existing clients keep getting refresh tokens from a plain code flow, as they did before this revision; new
    # clients get them only with offline_access unless registered for online sessions.
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refresh_tokens_for_sessions', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.alter_column('refresh_tokens_for_sessions', server_default=None)


def downgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('refresh_tokens_for_sessions')
