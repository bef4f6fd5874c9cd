"""The `idp` command: the Flask CLI for this app (run, db, shell) plus users, demo, audit and worker."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from rq import Worker

from idp import audit
from idp.admin import bulk, service
from idp.config import env_example, markdown_table
from idp.demo import DEMO_ADMIN_EMAIL, DEMO_EMAIL, DEMO_REDIRECT_URI, demo_client_credentials
from idp.extensions import db
from idp.jobs import queue
from idp.login.factors.totp import confirm_totp, start_totp, totp_secret
from idp.models import AdminRole, AuditEvent, Factor, User, utcnow
from idp.models.user import normalize_email
from idp.oidc import par
from idp.oidc.cli import clients, keys_group
from idp.security.otp import provisioning_uri, totp_code_at
from idp.security.passwords import hash_password, verify_password
from idp.security.tokens import new_token


def _user(email: str) -> User:
    user = db.session.execute(db.select(User).where(User.email == normalize_email(email))).scalar_one_or_none()
    if user is None:
        raise click.ClickException(f"no user with email {email}")
    return user


def _read_password(password: str | None, password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("a password is required (--password or --password-stdin)")
    return password


# AppGroup and with_appcontext push the app context for every command, also under app.test_cli_runner()
# (only the `idp` FlaskGroup pushes one on its own).
users = AppGroup("users", help="Manage user accounts.")


@users.command("create")
@click.argument("email")
@click.option("--password", help="The password (prefer --password-stdin: arguments show in `ps`).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--invite", is_flag=True, help="Mail the user a link to choose their password instead.")
@click.option("--name", default="", help="Display name.")
@click.option("--verified", is_flag=True, help="Mark the email address as verified.")
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
def users_create(email, password, password_stdin, invite, name, verified, admin):
    """Create a user, with a password or an invitation mail."""
    email = normalize_email(email)
    if not invite:
        password = _read_password(password, password_stdin)
    try:
        service.create_user(service.OPERATOR, email=email, name=name, password=None if invite else password,
                            email_verified=verified, admin=admin, invite=invite)
    except service.Conflict:
        raise click.ClickException(f"a user with email {email} already exists") from None
    except service.Invalid as refused:
        # The command's own words for each refusal, one line.
        field, message = next(iter(refused.errors.items()))
        words = {"email": f"not an email address: {email}", "name": "a name has at most 200 characters",
                 "password": f"weak password: {message}"}
        raise click.ClickException(words.get(field, f"{field}: {message}")) from None
    click.echo(f"created {email}" + (" (invitation mailed)" if invite else ""))


@users.command("list")
def users_list():
    """List users."""
    rows = db.session.execute(db.select(User).order_by(User.id)).scalars()
    for user in rows:
        flags = [f for f, on in (("verified", user.email_verified), ("admin", user.is_admin),
                                 ("disabled", user.disabled), ("locked", user.locked),
                                 ("deleted", user.deleted_at is not None)) if on]
        click.echo(f"{user.id}\t{user.email}\t{user.name}\t{','.join(flags)}")


def _acting(action, *args, **kwargs):
    """Run an admin action as the operator at the command line; its refusal is the command's one-line error."""
    try:
        return action(service.OPERATOR, *args, **kwargs)
    except service.AdminError as refused:
        raise click.ClickException(str(refused)) from None


@users.command("disable")
@click.argument("email")
def users_disable(email):
    """Disable a user and end all their sessions."""
    user = _user(email)
    ended, _revoked = _acting(service.disable, user)
    click.echo(f"disabled {user.email} ({ended} sessions ended)")


@users.command("enable")
@click.argument("email")
def users_enable(email):
    """Enable a disabled user."""
    user = _user(email)
    _acting(service.enable, user)
    click.echo(f"enabled {user.email}")


@users.command("require-mfa")
@click.argument("email")
@click.option("--off", is_flag=True, help="Lift the requirement instead.")
def users_require_mfa(email, off):
    """Require (or no longer require) a second factor for a user; one without a factor enrols at next sign-in."""
    user = _user(email)
    _acting(service.require_mfa, user, not off)
    click.echo(f"{'no longer ' if off else ''}requiring MFA for {user.email}")


@users.command("reset-mfa")
@click.argument("email")
def users_reset_mfa(email):
    """Remove every factor, recovery code and remembered device of a user; ends sessions and revokes tokens."""
    user = _user(email)
    factors, ended, _revoked = _acting(service.reset_mfa, user)
    click.echo(f"reset MFA for {user.email}: {factors} factors removed, {ended} sessions ended")


@users.command("delete")
@click.argument("email")
def users_delete(email):
    """Delete a user softly: disabled and hidden at once, restorable for IDP_DELETE_GRACE_DAYS."""
    user = _user(email)
    _acting(service.delete_user, user)
    click.echo(f"deleted {user.email} (restorable for {current_app.config['IDP_DELETE_GRACE_DAYS']} days)")


@users.command("restore")
@click.argument("email")
def users_restore(email):
    """Undo a deletion that was not purged yet."""
    user = _user(email)
    _acting(service.restore_user, user)
    click.echo(f"restored {user.email}")


@users.command("purge")
def users_purge():
    """Remove for good the users deleted more than IDP_DELETE_GRACE_DAYS ago (run it daily, from cron)."""
    click.echo(f"purged {_acting(service.purge_deleted)} deleted users")


@users.command("unlock")
@click.argument("email")
def users_unlock(email):
    """Lift the lock that repeated failed sign-ins put on an account."""
    user = _user(email)
    _acting(service.unlock, user)
    click.echo(f"unlocked {user.email}")


@users.command("grant-role")
@click.argument("email")
@click.argument("role", type=click.Choice(sorted(service.ROLE_NAMES)))
@click.option("--until", "until", help="When the role lapses by itself (ISO 8601 with an offset, or a date: UTC).")
def users_grant_role(email, role, until):
    """Give a user an admin role (admin, helpdesk or auditor), for good or until a time."""
    user = _user(email)
    moment = None
    if until:
        try:
            moment = datetime.fromisoformat(until if "T" in until else f"{until}T00:00:00+00:00")
        except ValueError:
            raise click.ClickException(f"not a date or time: {until}") from None
        if moment.tzinfo is None:
            raise click.ClickException("give the time with its offset, e.g. 2027-01-31T18:00:00+01:00")
    _acting(service.grant_role, user, role, moment)
    click.echo(f"{user.email} is {role}" + (f" until {moment.isoformat()}" if moment else ""))


@users.command("revoke-role")
@click.argument("email")
@click.argument("role", type=click.Choice(sorted(service.ROLE_NAMES)))
def users_revoke_role(email, role):
    """Take an admin role away (never the last administrator's)."""
    user = _user(email)
    _acting(service.revoke_role, user, role)
    click.echo(f"{user.email} is no longer {role}")


@users.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("-q", "--query", "q", default="", help="Only users whose email or name contains this.")
def users_export(fmt, q):
    """Print users as JSON lines or CSV (no secrets); `idp users import` reads the JSON lines back."""
    for chunk in _acting(bulk.export_users, q, {}, fmt):
        click.echo(chunk, nl=False)


@users.command("import")
@click.argument("source", type=click.File("rb"))
@click.option("--invite", is_flag=True, help="Mail each new user an invitation to choose a password.")
def users_import(source, invite):
    """Create users from a JSON lines file (`-` for standard input): the export's fields, plus a migration's
    password_hash (Django's argon2, pbkdf2_sha256, bcrypt_sha256), phone_verified and totp_secret; prints each
    line's outcome."""
    results = _acting(bulk.import_users, iter(source), invite=invite)
    for number, email, outcome in results:
        click.echo(f"{number}\t{email or '-'}\t{outcome}")
    created = sum(1 for _n, _e, outcome in results if outcome == "created")
    click.echo(f"created {created} of {len(results)}")


@click.command("housekeeping")
@with_appcontext
def housekeeping():
    """Daily chores: record admin roles whose end time passed, purge users deleted longer ago than
    IDP_DELETE_GRACE_DAYS, and remove pushed authorization requests a day after they expired (run it from a timer
    or cron)."""
    lapsed = service.lapse_roles()
    purged = service.purge_deleted(service.OPERATOR)
    pushed = par.purge(utcnow())
    db.session.commit()
    click.echo(f"{lapsed} admin roles lapsed, {purged} deleted users purged, {pushed} pushed requests removed")


@users.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, required=True, help="Read the new password from standard input.")
def users_set_password(email, password_stdin):
    """Set a user's password (read from standard input) and end their sessions."""
    user = _user(email)
    password = _read_password(None, password_stdin)
    try:
        ended, _revoked = service.set_password(service.OPERATOR, user, password)
    except service.Invalid as refused:
        raise click.ClickException("weak password: " + refused.errors["password"]) from None
    click.echo(f"password set for {user.email} ({ended} sessions ended)")


@click.command("demo")
@with_appcontext
def demo():
    """Create the demo user (idempotent) and print how to sign in."""
    cred = Path(current_app.instance_path) / "demo-password"
    password = current_app.config["IDP_DEMO_PASSWORD"] or (cred.read_text().strip() if cred.exists() else "")
    if not password:
        password = "-".join(new_token(4) for _ in range(3))
        cred.write_text(password)
        cred.chmod(0o600)
    user = db.session.execute(db.select(User).where(User.email == DEMO_EMAIL)).scalar_one_or_none()
    if user is None:
        now = utcnow()
        user = User(email=DEMO_EMAIL, name="Demo User", password_hash=hash_password(password),
                    password_changed_at=now, email_verified_at=now)
        db.session.add(user)
        db.session.flush()
        audit.record("user.created", subject=user, via="demo")
        db.session.commit()
    admin_secret = _demo_admin(password)
    demo_client = demo_client_credentials()
    changed = not verify_password(user.password_hash, password)
    issuer = current_app.config["IDP_ISSUER"]
    click.echo(f"Demo user:     {DEMO_EMAIL}")
    click.echo(f"Demo password: {password}" + ("  (changed since; use yours)" if changed else ""))
    click.echo(f"Sign in at:    {issuer}/login")
    click.echo(f"Demo admin:    {DEMO_ADMIN_EMAIL}, same password, administrator of the console at {issuer}/admin/")
    if admin_secret:
        click.echo(f"               its second factor is an authenticator app with the key {admin_secret}")
        click.echo(f"               ({provisioning_uri(admin_secret, DEMO_ADMIN_EMAIL, 'idp demo')})")
    if current_app.config["IDP_ENV"] == "development":
        click.echo(f"Dev outbox:    {issuer}/dev/outbox")
    client_id, secret = demo_client
    click.echo(f"Demo client:   client_id={client_id} client_secret={secret}")
    click.echo(f"               redirect_uri={DEMO_REDIRECT_URI}")
    if current_app.config["IDP_ENV"] == "development":
        click.echo(f"Try a sign-in: {issuer}/demo (a relying party built in: a fresh request each time, then the "
                   "ID token, userinfo and a refresh)")
    # By hand: a fresh state and nonce at every run (a nonce is accepted once per client, OIDC Core 15.5.2).
    click.echo("Or by hand: open this URL, sign in, and copy `code` from the address the browser lands on:")
    click.echo(f"  {issuer}/authorize?response_type=code&client_id={client_id}&redirect_uri={DEMO_REDIRECT_URI}"
               f"&scope=openid%20profile%20email&state={new_token(8)}&nonce={new_token(12)}")


def _demo_admin(password: str) -> str | None:
    """The demo administrator (created once, with the demo password and a confirmed TOTP factor, since the console
    demands a second factor); returns its TOTP key, or None when that factor was removed since."""
    key = current_app.config["IDP_SECRET_KEY"]
    admin = db.session.execute(db.select(User).where(User.email == DEMO_ADMIN_EMAIL)).scalar_one_or_none()
    if admin is None:
        now = utcnow()
        admin = User(email=DEMO_ADMIN_EMAIL, name="Demo Admin", password_hash=hash_password(password),
                     password_changed_at=now, email_verified_at=now)
        admin.roles = [AdminRole(role="admin")]
        db.session.add(admin)
        db.session.flush()
        credential = start_totp(admin, now, key)
        # Confirmed with the previous period's code, so that the code showing now still signs in.
        assert confirm_totp(credential, totp_code_at(totp_secret(credential, key), now - timedelta(seconds=30)),
                            now, key)
        audit.record("user.created", subject=admin, via="demo", admin=True)
        db.session.commit()
    factor = db.session.execute(db.select(Factor).where(Factor.user_id == admin.id, Factor.kind == "totp",
                                                        Factor.confirmed_at.is_not(None))).scalars().first()
    return totp_secret(factor, key) if factor is not None else None


@click.group("audit", cls=AppGroup)
def audit_group():
    """Read and verify the audit log."""


@audit_group.command("tail")
@click.option("--user", "email", help="Only events about this user.")
@click.option("-n", "--lines", default=20, show_default=True, help="How many events.")
def audit_tail(email, lines):
    """Print the most recent audit events, oldest first."""
    query = db.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(lines)
    if email:
        query = query.where(AuditEvent.subject_id == _user(email).id)
    for row in reversed(list(db.session.execute(query).scalars())):
        details = " ".join(f"{k}={v}" for k, v in sorted(row.details.items()))
        click.echo(f"{row.at.isoformat(timespec='seconds')}\t{row.event}\t{row.subject_email or '-'}\t"
                   f"{row.ip or '-'}\t{row.client_id or '-'}\t{details}")


@audit_group.command("checkpoint")
def audit_checkpoint():
    """Sign the current end of the hash chain with the active signing key (keep the printed JWS elsewhere too)."""
    row = audit.checkpoint()
    if row is None:
        raise click.ClickException("the audit log is empty: nothing to sign")
    click.echo(f"checkpoint at event {row['last_event_id']} ({row['row_hash']}), key {row['kid']}")
    click.echo(row["signature"])


@audit_group.command("verify")
def audit_verify():
    """Recompute the audit hash chain and check the signed checkpoints; exit 1 at the first broken link."""
    report = audit.verify_chain()
    click.echo(str(report))
    if not report.intact:
        sys.exit(1)


@click.command("worker")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@with_appcontext
def worker(burst):
    """Run an RQ worker for mail and SMS jobs, inside the app context."""
    q = queue()
    if q is None:
        raise click.ClickException("IDP_REDIS_URL is not set: jobs run inline, no worker is needed")
    Worker([q], connection=q.connection).work(burst=burst, with_scheduler=True)


@click.command("config-doc")
@click.option("--markdown", is_flag=True, help="Print the README's configuration table instead.")
def config_doc(markdown):
    """Print every setting with its default (the text of .env.example)."""
    click.echo(markdown_table() if markdown else env_example(), nl=False)


# idp's own commands, also attached to the `idp` group itself (idp.console) so that `idp --help` lists them
# without building the app.
COMMANDS = (users, demo, audit_group, worker, config_doc, clients, keys_group, housekeeping)


def register(app: Flask) -> None:
    """Attach the commands to the app's CLI."""
    for command in COMMANDS:
        app.cli.add_command(command)
