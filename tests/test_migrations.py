"""The schema and the audit log: migrations match the models, the log is append-only, and it holds no secret
(SECURITY.md 29, 30)."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError

from idp.extensions import db
from idp.login.steps.password import GENERIC_FAILURE
from idp.models import AuditEvent, User
from idp.models.audit import AuditLogIsAppendOnly
from tests.conftest import SECRET, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.instances import (
    ROOT,
    RP,
    Browser,
    Instance,
    refresh,
    run_cli,
    running,
    sign_in_for_tokens,
    subprocess_env,
    userinfo,
)
from tests.support import PASSWORD, code_in, csrf_token, link_in, open_link, sign_in, signed_in_email, submit_link

NEW_PASSWORD = "a whole new passphrase for alice"
TYPO_PASSWORD = "correct horse battery stapel"


def test_migrations_match_the_models(app):
    """After `upgrade` (done by the database fixture), autogenerate finds nothing to add, drop or change."""
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def _some_audit_rows(app, client, make_user) -> int:
    make_user()
    sign_in(client, "alice@example.com", "not the right password")
    client.get(sign_in(client, "alice@example.com").headers["Location"])
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def _audit_snapshot(app) -> list[tuple]:
    with app.app_context():
        return [tuple(row) for row in db.session.execute(
            select(AuditEvent.id, AuditEvent.event, AuditEvent.ip, AuditEvent.details).order_by(AuditEvent.id))]


@pytest.mark.parametrize("statement", ["UPDATE audit_events SET event = 'tampered', ip = '0.0.0.0'",
                                       "DELETE FROM audit_events"])
def test_database_refuses_to_change_audit_rows(app, client, make_user, statement):
    assert _some_audit_rows(app, client, make_user) >= 2
    before = _audit_snapshot(app)
    with app.app_context(), db.engine.connect() as connection:
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(text(statement))
        connection.rollback()
        # The refusal is the audit log's own: other tables stay writable on the same connection.
        connection.execute(text("UPDATE users SET name = 'Alice B' WHERE email = 'alice@example.com'"))
        connection.commit()
    assert _audit_snapshot(app) == before
    with app.app_context():
        assert db.session.execute(select(User.name)).scalar_one() == "Alice B"


def test_orm_refuses_to_change_audit_rows(app, client, make_user):
    _some_audit_rows(app, client, make_user)
    before = _audit_snapshot(app)
    with app.app_context():
        row = db.session.execute(select(AuditEvent).order_by(AuditEvent.id).limit(1)).scalar_one()
        row.event = "tampered"
        with pytest.raises(AuditLogIsAppendOnly):
            db.session.commit()
        db.session.rollback()
        row = db.session.execute(select(AuditEvent).order_by(AuditEvent.id).limit(1)).scalar_one()
        db.session.delete(row)
        with pytest.raises(AuditLogIsAppendOnly):
            db.session.commit()
        db.session.rollback()
    assert _audit_snapshot(app) == before


def _link_token(link: str) -> str:
    return unquote(link.partition("#")[2])


def test_no_secret_reaches_an_audit_row_or_a_log_line(app, mailbox, caplog):
    caplog.set_level(logging.DEBUG)
    secrets: dict[str, str] = {"password": PASSWORD, "new password": NEW_PASSWORD, "typo": TYPO_PASSWORD}
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = "AuditCheck/1.0"
    # Sign up and verify by code; the same mail carries a link.
    page = client.get("/signup")
    started = client.post("/signup", data={"csrf_token": csrf_token(page), "email": "alice@example.com",
                                           "name": "Alice", "password": PASSWORD})
    step = client.get(started.headers["Location"])
    mail = mailbox.last("alice@example.com", "Verify")
    secrets["code"] = code_in(mail)
    verify_link = link_in(mail, "/verify-email#")
    client.post(started.headers["Location"], data={"csrf_token": csrf_token(step), "step": "email_verification",
                                                   "code": secrets["code"]})
    client.get(started.headers["Location"])
    assert signed_in_email(client) == "alice@example.com"
    secrets["session cookie 1"] = client.get_cookie("idp_session").value
    secrets["verify link"] = _link_token(verify_link)
    # Sign out, a typo, sign in again.
    page = client.get("/logout")
    client.post("/logout", data={"csrf_token": csrf_token(page)})
    assert str(GENERIC_FAILURE) in sign_in(client, "alice@example.com", TYPO_PASSWORD).get_data(as_text=True)
    client.get(sign_in(client, "alice@example.com").headers["Location"])
    secrets["session cookie 2"] = client.get_cookie("idp_session").value
    # Reset the password by link and sign in with the new one.
    page = client.get("/forgot")
    client.post("/forgot", data={"csrf_token": csrf_token(page), "email": "alice@example.com"})
    reset_link = link_in(mailbox.last("alice@example.com", "Reset"), "/reset#")
    secrets["reset link"] = _link_token(reset_link)
    form = open_link(client, reset_link)
    done = submit_link(client, reset_link, form, password=NEW_PASSWORD, confirm=NEW_PASSWORD)
    assert done.status_code == 302
    client.get(sign_in(client, "alice@example.com", NEW_PASSWORD).headers["Location"])
    assert signed_in_email(client) == "alice@example.com"
    secrets["session cookie 3"] = client.get_cookie("idp_session").value
    # The raw tokens inside the signed links.
    key = app.config["IDP_SECRET_KEY"]
    secrets["verify token"] = URLSafeTimedSerializer(key, salt="idp.verify_email").loads(secrets["verify link"])
    secrets["reset token"] = URLSafeTimedSerializer(key, salt="idp.password_reset").loads(secrets["reset link"])

    with app.app_context():
        rows = list(db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())
    events = [row.event for row in rows]
    for expected in ("user.signup", "email.verified", "login.success", "logout", "login.failure",
                     "password.reset_requested", "password.reset"):
        assert expected in events, events
    assert {row.user_agent for row in rows if row.event == "login.success"} == {"AuditCheck/1.0"}
    for row in rows:
        # Every text a row carries (its time is left out: a 6-digit code could match its microseconds).
        carried = "\n".join(str(v) for v in (row.event, row.subject_email, row.client_id, row.ip, row.user_agent,
                                             json.dumps(row.details)))
        for name, secret in secrets.items():
            if name == "code":
                assert not re.search(rf"\b{secret}\b", carried), f"{name} in audit row {row.event}"
            else:
                assert secret not in carried, f"{name} in audit row {row.event}"
    # Every log line of the run, the app's and the RQ worker's; only the test's own SMTP server (aiosmtpd's
    # "mail.log", which prints the mail it receives) is left out.
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                       if not r.name.startswith("mail.log"))
    assert "login.success" in logged
    for name, secret in secrets.items():
        assert secret not in logged, f"{name} in the log"



# --- rolling upgrades: expand, then contract (migrations/README) --------------------------------------------------

MIGRATIONS = ROOT / "migrations"
# The last revision written before the rule. The ones up to it that break it stay as they are (a migration that ran
# is not rewritten); they are named here so that the check below is exact about everything after them.
LAST_BEFORE_THE_RULE = "0011"
HISTORICAL = {
    # Adds clients.refresh_tokens_for_sessions NOT NULL and removes its server default in the same revision: the
    # previous release's INSERT of a client, which does not name the column, fails.
    "0006": "removes the server default",
    # Drops users.is_admin, which the previous release read on every admin check (it became admin_roles here).
    "0009": "drop_column",
}
# SQL in op.execute() that removes or tightens something (the same steps as the operations checked below).
CONTRACT_SQL = re.compile(r"\bDROP\s+(?:COLUMN|TABLE)\b|\bRENAME\b|\bSET\s+NOT\s+NULL\b|\bDROP\s+DEFAULT\b|"
                          r"\bALTER\s+COLUMN\s+\S+\s+(?:SET\s+DATA\s+)?TYPE\b|\bADD\s+CONSTRAINT\b|"
                          r"\bCREATE\s+UNIQUE\s+INDEX\b", re.IGNORECASE)
CONSTRAINTS = {"create_unique_constraint": 1, "create_check_constraint": 1, "create_foreign_key": 1,
               "create_primary_key": 1}  # operation -> position of its table argument (op.<name>(name, table, ...))


def _constant(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _strings(node: ast.AST) -> list[str]:
    """The literal text of a str argument (an f-string's literal parts)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(part.value for part in node.values if isinstance(part, ast.Constant))]
    return []


class _UpgradeSteps(ast.NodeVisitor):
    """Collects the contract steps of a revision's upgrade side (everything but ``downgrade``)."""

    def __init__(self, created: set[str]):
        self.created = created  # tables the revision creates itself: nothing older runs on them
        self.batches: dict[str, str] = {}  # `with op.batch_alter_table("t") as batch_op`: batch_op -> t
        self.found: list[str] = []

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            call = item.context_expr
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "batch_alter_table" and isinstance(item.optional_vars, ast.Name)):
                self.batches[item.optional_vars.id] = self._arg(call, 0, "table_name")
        self.generic_visit(node)

    @staticmethod
    def _arg(call: ast.Call, position: int, keyword: str) -> str:
        node = call.args[position] if len(call.args) > position else next(
            (k.value for k in call.keywords if k.arg == keyword), None)
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "?"

    def _table(self, call: ast.Call, position: int) -> str:
        """The table an operation is on: its argument, or the batch it runs in (which takes no table argument)."""
        target = call.func.value if isinstance(call.func, ast.Attribute) else None
        if isinstance(target, ast.Name) and target.id in self.batches:
            return self.batches[target.id]
        return self._arg(call, position, "table_name")

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        keywords = {k.arg: k.value for k in node.keywords}
        batch = isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
            and node.func.value.id in self.batches
        if name in ("drop_column", "drop_table", "rename_table"):
            self.found.append(f"{name} on {self._table(node, 0)}")
        elif name == "alter_column":
            table = self._table(node, 0)
            if "new_column_name" in keywords:
                self.found.append(f"renames a column of {table}")
            if _constant(keywords.get("nullable"), False):
                self.found.append(f"makes a column of {table} NOT NULL")
            if "type_" in keywords:
                self.found.append(f"changes the type of a column of {table}")
            if "server_default" in keywords and _constant(keywords["server_default"], None):
                self.found.append(f"removes the server default of a column of {table}")
        elif name == "add_column":
            table = self._table(node, 0)
            column = next((a for a in node.args if isinstance(a, ast.Call)
                           and getattr(a.func, "attr", getattr(a.func, "id", None)) == "Column"), None)
            if column is not None and table not in self.created:
                options = {k.arg: k.value for k in column.keywords}
                if _constant(options.get("nullable"), False) and (
                        "server_default" not in options or _constant(options["server_default"], None)):
                    self.found.append(f"adds a NOT NULL column without a server default to {table}")
        elif name in CONSTRAINTS:
            table = self._table(node, 0 if batch else CONSTRAINTS[name])
            if table not in self.created:
                self.found.append(f"{name} on {table}")
        elif name == "create_index" and _constant(keywords.get("unique"), True):
            table = self._table(node, 0 if batch else 1)
            if table not in self.created:
                self.found.append(f"a unique index on {table}")
        for argument in [*node.args, *node.keywords]:
            for sql in _strings(argument.value if isinstance(argument, ast.keyword) else argument):
                if CONTRACT_SQL.search(sql):
                    self.found.append(f"SQL: {' '.join(sql.split())[:80]}")
        self.generic_visit(node)


def contract_steps(source: str) -> list[str]:
    """What a revision's upgrade does that the previous release's code may not survive (migrations/README)."""
    tree = ast.parse(source)
    upgrade_side = [node for node in tree.body
                    if not (isinstance(node, ast.FunctionDef) and node.name == "downgrade")]
    created = {node.args[0].value for top in upgrade_side for node in ast.walk(top)
               if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "create_table"
               and node.args and isinstance(node.args[0], ast.Constant)}
    visitor = _UpgradeSteps(created)
    for node in upgrade_side:
        visitor.visit(node)
    return visitor.found


def declared_contract(source: str) -> str | None:
    """The module-level ``CONTRACT = "..."`` of a revision (what it removes and since when nothing uses it)."""
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CONTRACT" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value.strip() or None
    return None


def revisions(migrations: Path = MIGRATIONS) -> list:
    """The revisions of a migrations folder, oldest first (one head: two would be a merge to make first)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations))
    script = ScriptDirectory.from_config(config)
    heads = script.get_heads()
    assert len(heads) == 1, f"{migrations} has {len(heads)} heads {heads}: merge them (idp db merge) first"
    return list(reversed(list(script.walk_revisions())))


SKELETON = '''"""A revision."""
from alembic import op
import sqlalchemy as sa

revision = "9999"
down_revision = "9998"
{contract}

def upgrade():
{body}


def downgrade():
    op.drop_table("things")
    op.drop_column("users", "nickname")
'''


def revision_source(body: str, contract: str = "") -> str:
    """A whole revision file whose upgrade is ``body`` (lines indented relative to the function's body)."""
    return SKELETON.format(body=textwrap.indent(body, "    "), contract=contract)


@pytest.mark.parametrize(("body", "expected"), [
    ('op.drop_column("users", "phone")', "drop_column on users"),
    ('op.drop_table("devices")', "drop_table on devices"),
    ('op.rename_table("devices", "browsers")', "rename_table on devices"),
    ('op.alter_column("users", "name", new_column_name="full_name")', "renames a column of users"),
    ('op.alter_column("users", "locale", nullable=False)', "makes a column of users NOT NULL"),
    ('op.alter_column("users", "name", type_=sa.Text())', "changes the type of a column of users"),
    ('op.alter_column("clients", "mfa", server_default=None)', "removes the server default of a column of clients"),
    ('op.add_column("users", sa.Column("nickname", sa.String(50), nullable=False))',
     "adds a NOT NULL column without a server default to users"),
    ('with op.batch_alter_table("users") as batch_op:\n'
     '    batch_op.add_column(sa.Column("nickname", sa.String(50), nullable=False, server_default=None))',
     "adds a NOT NULL column without a server default to users"),
    ('with op.batch_alter_table("users") as batch_op:\n    batch_op.drop_column("phone")', "drop_column on users"),
    ('op.create_unique_constraint("uq_users_name", "users", ["name"])', "create_unique_constraint on users"),
    ('op.create_foreign_key("fk_x", "tokens", "clients", ["client_id"], ["client_id"])',
     "create_foreign_key on tokens"),
    ('op.create_index("ix_users_name", "users", ["name"], unique=True)', "a unique index on users"),
    ('op.execute("ALTER TABLE users DROP COLUMN phone")', "SQL: ALTER TABLE users DROP COLUMN phone"),
    ('op.execute(sa.text("ALTER TABLE users ALTER COLUMN locale SET NOT NULL"))', "SQL: ALTER TABLE users"),
    ('op.execute(f"ALTER TABLE {name} RENAME TO old_{name}")', "SQL: ALTER TABLE RENAME TO old_"),
])
def test_the_contract_check_finds_each_step_the_previous_release_would_trip_on(body, expected):
    source = revision_source(body)
    found = contract_steps(source)
    assert len(found) == 1 and found[0].startswith(expected), found
    assert declared_contract(source) is None
    declared = revision_source(body, contract='CONTRACT = "drops it: unused since revision 0009, released"')
    assert declared_contract(declared) == "drops it: unused since revision 0009, released"
    assert declared_contract(revision_source(body, contract='CONTRACT = "  "')) is None  # a reason is required


@pytest.mark.parametrize("body", [
    'op.add_column("users", sa.Column("nickname", sa.String(50), nullable=True))',
    'op.add_column("users", sa.Column("nickname", sa.String(50)))',
    'op.add_column("users", sa.Column("tier", sa.String(8), nullable=False, server_default="free"))',
    'op.create_table("things", sa.Column("id", sa.Integer(), nullable=False), sa.PrimaryKeyConstraint("id"))\n'
    'op.add_column("things", sa.Column("name", sa.String(50), nullable=False))\n'
    'op.create_unique_constraint("uq_things_name", "things", ["name"])\n'
    'op.create_index("ix_things_name", "things", ["name"], unique=True)',
    'op.create_index("ix_users_locale", "users", ["locale"])',
    'op.alter_column("users", "name", comment="shown in mail")',
    'op.execute("UPDATE users SET locale = \'en\' WHERE locale IS NULL")',
    'op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")',
])
def test_the_contract_check_lets_expand_steps_pass(body):
    """Additions, a server default that stays, tables made in the same revision, a backfill, and whatever the
    downgrade does (SKELETON's drops)."""
    assert contract_steps(revision_source(body)) == []


def test_every_revision_expands_or_declares_its_contract():
    """migrations/README: a revision after LAST_BEFORE_THE_RULE that removes or tightens something says so with
    CONTRACT; the ones before the rule that break it are exactly those in HISTORICAL."""
    chain = revisions()
    ids = [revision.revision for revision in chain]
    assert LAST_BEFORE_THE_RULE in ids
    before_the_rule = set(ids[:ids.index(LAST_BEFORE_THE_RULE) + 1])
    assert set(HISTORICAL) <= before_the_rule, "only revisions written before the rule can be historical"
    undeclared = {}
    for revision in chain:
        source = Path(revision.path).read_text()
        found = contract_steps(source)
        if revision.revision in HISTORICAL:
            # Still found: a check that stopped seeing these would let the same steps through in a new revision.
            assert any(HISTORICAL[revision.revision] in step for step in found), (revision.revision, found)
        elif found and not declared_contract(source):
            undeclared[Path(revision.path).name] = found
    assert undeclared == {}, (
        f"these revisions remove or tighten what the previous release still uses: {undeclared}. Expand now and "
        "contract in a later release, or declare CONTRACT = \"...\" (migrations/README)")


# --- a real rolling upgrade: the previous release beside this one (PostgreSQL) ------------------------------------

ROLLING_ISSUER = "https://idp.rolling.test"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)


def previous_release(newest: Path) -> str:
    """The commit of the previous release: the first parent of the commit that added the newest revision, or HEAD while
    that revision is not committed yet. Skips when the checkout has no git history to take it from."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release is taken from the repository's history")
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout (an exported tree?): the previous release is taken from its history")
    # Along the first parents, merges compared with theirs: a revision that came in with a merge (or was renamed
    # there) is added by that merge, and the previous release is the branch it was merged into.
    added = _git("log", "--first-parent", "-m", "--diff-filter=A", "--format=%H", "--",
                 str(newest.relative_to(ROOT))).stdout.split()
    base = f"{added[0]}^" if added else "HEAD"
    found = _git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    if found.returncode != 0:
        pytest.skip(f"the history does not reach {base} (a shallow clone? git fetch --unshallow)")
    return found.stdout.strip()


def export_tree(commit: str, folder: Path) -> Path:
    """``git archive COMMIT`` unpacked into ``folder``: the code as that commit has it, nothing of this checkout."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True,
                             timeout=120)
    assert archive.returncode == 0, archive.stderr.decode(errors="replace")
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


@contextmanager
def fresh_database() -> Iterator[str]:
    """An empty PostgreSQL database beside the test database, dropped afterwards (whoever is still connected)."""
    parts = urlsplit(TEST_DATABASE_URL)
    name = f"{parts.path.strip('/')}_rolling_{uuid.uuid4().hex[:8]}"
    admin = create_engine(urlunsplit(parts._replace(scheme="postgresql+psycopg2", path="/postgres")),
                          isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _done(result: subprocess.CompletedProcess, what: str) -> str:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.skipif(not TEST_DATABASE_URL.startswith("postgresql"),
                    reason="a rolling upgrade is for PostgreSQL, production's database: set IDP_TEST_DATABASE_URL")
def test_the_previous_release_runs_on_this_releases_schema_beside_this_release(tmp_path, capsys):
    """migrations/README, for real: the previous release (the tree before the newest revision was added) migrates
    a fresh database, creates a user and a client and serves a sign-in; this release's `idp db upgrade` runs while
    it serves; then both serve the same sign-in session and tokens, each taking over what the other issued, and
    the previous release still signs a user in and issues tokens on the new schema."""
    chain = revisions()
    newest = chain[-1]
    commit = previous_release(Path(newest.path))
    previous = export_tree(commit, tmp_path / "previous")
    previous_head = revisions(previous / "migrations")[-1].revision
    assert previous_head != newest.revision, (commit, previous_head)
    # What the old tree's processes import is its own idp (not this checkout's, nor an installed one).
    located = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('idp').origin)"],
                             cwd=tmp_path, env=subprocess_env(previous), capture_output=True, text=True, timeout=60)
    assert Path(located.stdout.strip()).is_relative_to(previous), (located.stdout, located.stderr)

    email = "rolling@example.com"
    with fresh_database() as url:
        env = {"IDP_ENV": "testing", "IDP_ISSUER": ROLLING_ISSUER, "IDP_SECRET_KEY": SECRET, "IDP_DATABASE_URL": url,
               "IDP_REDIS_URL": TEST_REDIS_URL, "IDP_QUEUE_NAME": f"idp-rolling-{uuid.uuid4().hex[:12]}",
               "IDP_MAIL_BACKEND": "outbox", "IDP_OUTBOX_DIR": str(tmp_path / "outbox"),
               "IDP_PASSWORD_HASH_COST": "t=1,m=64,p=1", "IDP_THROTTLE_IP": "10000/minute"}
        # The previous release as it was deployed: its migrations, its user and client, its instance.
        _done(run_cli(["db", "upgrade"], env, tmp_path / "cli", code=previous), "the previous release's db upgrade")
        _done(run_cli(["users", "create", email, "--password-stdin", "--verified", "--name", "Rolling"], env,
                      tmp_path / "cli", code=previous, input=PASSWORD + "\n"), "users create")
        created = _done(run_cli(["clients", "create", "--name", "Rolling", "--redirect-uri", RP, "--first-party"],
                                env, tmp_path / "cli", code=previous), "clients create")
        client = (re.search(r"client_id:\s+(\S+)", created).group(1),
                  re.search(r"client_secret:\s+(\S+)", created).group(1))
        old = Instance("previous", env, tmp_path / "previous-run", workers=1, code=previous)
        new = Instance("current", env, tmp_path / "current-run", workers=1)
        browser, second, third = Browser(ROLLING_ISSUER), Browser(ROLLING_ISSUER), Browser(ROLLING_ISSUER)
        try:
            with running(old):
                before = sign_in_for_tokens(browser, old, client, email, scope="openid offline_access")
                # This release's migrations, while the previous release serves.
                _done(run_cli(["db", "upgrade"], env, tmp_path / "cli"), "this release's db upgrade")
                with running(new):
                    # The previous release goes on: a token it issued before the upgrade, a new sign-in after it.
                    refreshed = refresh(browser, old, client, before["refresh_token"])
                    later = sign_in_for_tokens(second, old, client, email, scope="openid offline_access")
                    # This release takes over what the previous one issued, and the other way round.
                    taken_over = refresh(browser, new, client, refreshed["refresh_token"])
                    handed_back = refresh(browser, old, client, taken_over["refresh_token"])
                    latest = sign_in_for_tokens(third, new, client, email, scope="openid offline_access")
                    refresh(third, old, client, latest["refresh_token"])
                    refresh(second, new, client, later["refresh_token"])
                    subjects = set()
                    for token in (refreshed, later, taken_over, handed_back, latest):
                        for via in (old, new):
                            answer = userinfo(browser, via, token["access_token"])
                            assert answer.status_code == 200, (via.name, answer.text)
                            subjects.add(answer.json()["sub"])
                    assert len(subjects) == 1
                    # The sign-in session of before the upgrade is one session for both releases.
                    for via in (old, new):
                        assert browser.get(via, "/account").status_code == 200, via.name
        finally:
            for one in (browser, second, third):
                one.close()
            for instance in (old, new):
                print(f"--- {instance.name} ({instance.code}) log ---\n{instance.log()}")
