"""Change notification (issue 22): a PostgreSQL NOTIFY on channel idp_changes, with the table's name as payload,
after every statement that writes the clients or the signing keys, so that what each worker keeps of them
(idp.changes) is dropped at once, whoever wrote: another instance, the command line, an operator's psql.

Statement-level AFTER triggers, TRUNCATE included: one notification per statement (and PostgreSQL folds the same
one sent twice in a transaction into one), delivered when the transaction commits, none if it rolls back. The
clients' redirect URIs, keys (jwks) and settings are columns of clients: no other table is read with a client.

Expand only (migrations/README): a function and triggers that the previous release's code does not notice. SQLite
(development) gets nothing: each process there reads the tables on every request, as before.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 10:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

TABLES = ('clients', 'signing_keys')


def upgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("""
        CREATE FUNCTION idp_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('idp_changes', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$""")
    for table in TABLES:
        op.execute(f"""
            CREATE TRIGGER {table}_notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION idp_notify_change()""")


def downgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify_change ON {table}")
    op.execute("DROP FUNCTION IF EXISTS idp_notify_change()")
