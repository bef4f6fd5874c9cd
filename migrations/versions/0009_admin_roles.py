"""Admin roles: a user may be a full administrator, helpdesk or auditor, each grant for good or until an end time
(the single is_admin flag becomes an "admin" grant); a client may have a logo shown on the consent page.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 17:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'admin_roles',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('granted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('granted_by', sa.Integer(), nullable=True),
        sa.Column('until', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_id', 'role'),
    )
    op.create_index('ix_admin_roles_user_id', 'admin_roles', ['user_id'])
    op.create_index('ix_admin_roles_until', 'admin_roles', ['until'])
    op.execute("INSERT INTO admin_roles (user_id, role, granted_at) "
               "SELECT id, 'admin', created_at FROM users WHERE is_admin")
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('is_admin')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('logo_uri', sa.String(length=2000), nullable=True))


def downgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('logo_uri')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_admin', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE users SET is_admin = true WHERE id IN (SELECT user_id FROM admin_roles WHERE role = 'admin')")
    op.drop_index('ix_admin_roles_until', table_name='admin_roles')
    op.drop_index('ix_admin_roles_user_id', table_name='admin_roles')
    op.drop_table('admin_roles')
