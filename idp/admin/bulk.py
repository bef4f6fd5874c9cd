"""Actions on many users at once: a bulk action on a filtered selection (a dry run first, then a job with a result
per user), and the export and import of users (CSV or JSON lines out, JSON lines in; never a secret).

Every user's change goes through the one-user action of idp.admin.service, in its own transaction, so a bulk
action is audited, mailed and refused exactly as the same action on one user would be.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app
from flask_babel import gettext
from sqlalchemy.exc import IntegrityError

from idp import audit, i18n
from idp.admin import service
from idp.admin.service import Actor, AdminError, Conflict, Invalid, Power, require
from idp.extensions import db
from idp.jobs import enqueue
from idp.login.codes import normalize_phone
from idp.login.factors.totp import TotpCredential
from idp.models import AdminJob, User, utcnow
from idp.models.user import normalize_email
from idp.security import crypto, imported_hashes

MAX_SELECTION = 10_000  # a bulk action names its users one by one; a larger selection is narrowed first
MAX_IMPORT_LINES = 5_000


# action -> (the one-user action, the power it needs, whether it is destructive)
ACTIONS: dict[str, tuple[Callable[[Actor, User], Any], Power, bool]] = {
    "disable": (service.disable, Power.CHANGE_USERS, True),
    "enable": (service.enable, Power.CHANGE_USERS, False),
    "reset-mfa": (service.reset_mfa, Power.SUPPORT_USERS, True),
    "end-sessions": (service.end_sessions, Power.END_SESSIONS, False),
    "delete": (service.delete_user, Power.CHANGE_USERS, True),
}


def _action(name: str) -> tuple[Callable[[Actor, User], Any], Power, bool]:
    if name not in ACTIONS:
        raise Invalid({"action": f"one of {', '.join(ACTIONS)}"})
    return ACTIONS[name]


def selection(actor: Actor, q: str, filters: Mapping[str, bool]) -> list[User]:
    """Every user the search and filters select (as the users list shows them), at most MAX_SELECTION."""
    users: list[User] = []
    cursor = None
    while True:
        page, cursor = service.list_users(actor, q=q, filters=filters, cursor=cursor, limit=service.MAX_PAGE)
        users.extend(page)
        if len(users) > MAX_SELECTION:
            raise Invalid({"selection": f"more than {MAX_SELECTION} users: narrow the search first"})
        if cursor is None:
            return users


def skip_reason(actor: Actor, action: str, user: User) -> str | None:
    """Why the action would leave ``user`` as is (the dry run shows it; the run records it), or None."""
    if actor.user is not None and actor.user.id == user.id and action in ("disable", "delete"):
        return "you cannot do this to yourself"
    if user.deleted_at is not None and action in ("disable", "enable", "reset-mfa"):
        return "deleted (restore them first)"
    if action == "reset-mfa" and service.roles_of(user) and not service.can(actor, Power.MANAGE_ADMINS):
        return "an administrator: only an administrator may do this"
    if action == "disable" and user.disabled:
        return "disabled already"
    if action == "enable" and not user.disabled:
        return "enabled already"
    if action == "delete" and user.deleted_at is not None:
        return "deleted already"
    return None


@dataclass
class Preview:
    """A dry run: how many users the action would change and skip, and the first of them with their outcome."""

    action: str
    total: int
    changed: int
    sample: list[tuple[User, str | None]]


def preview(actor: Actor, action: str, q: str, filters: Mapping[str, bool], sample: int = 100) -> Preview:
    """Dry run: nothing is written (but the selection is read, as the users list reads it)."""
    _run, power, _destructive = _action(action)
    require(actor, power)
    users = selection(actor, q, filters)
    outcomes = [(user, skip_reason(actor, action, user)) for user in users]
    return Preview(action=action, total=len(users), changed=sum(1 for _user, why in outcomes if why is None),
                   sample=outcomes[:sample])


def start(actor: Actor, action: str, q: str, filters: Mapping[str, bool], expected: int) -> AdminJob:
    """Freeze the selection the dry run showed (refused when it changed since: ``expected`` users) and run the
    action on it as a job."""
    _run, power, _destructive = _action(action)
    require(actor, power)
    users = selection(actor, q, filters)
    if len(users) != expected:
        raise Conflict(f"the selection changed since the dry run ({len(users)} users now, {expected} then): "
                       "run the dry run again")
    job = AdminJob(action=action, actor_id=actor.user.id if actor.user else None, via=actor.via,
                   user_ids=[user.id for user in users], results={})
    db.session.add(job)
    db.session.flush()
    audit.record("admin.bulk_started", action=action, job_id=job.id, users=len(users), **actor.audit())
    enqueue("admin_bulk", job_id=job.id)
    db.session.commit()  # the job's row, and the job (sent once this has committed; inline, it has run by now)
    return job


def run_job(job_id: int) -> None:
    """The job: the action on each user of the frozen selection, one transaction each, the result kept per user.
    Run again (a retry), it goes on from the first user without a result."""
    found = db.session.get(AdminJob, job_id)
    if found is None or found.finished_at is not None:
        return
    job = found
    actor_user = db.session.get(User, job.actor_id) if job.actor_id is not None else None
    who = (service.person(actor_user, via=job.via) if actor_user is not None else service.OPERATOR)
    run, power, _destructive = _action(job.action)
    job.started_at = job.started_at or utcnow()
    db.session.commit()
    results = dict(job.results)
    for user_id in job.user_ids:
        if str(user_id) in results:
            continue
        user = db.session.get(User, user_id)
        outcome: str | None = "gone" if user is None else skip_reason(who, job.action, user)
        if outcome is None and user is not None:
            try:
                run(who, user)  # commits, or raises having written nothing
                outcome = "done"
            except AdminError as refused:  # the last administrator, roles that lapsed meanwhile...
                db.session.rollback()
                outcome = str(refused)
        results[str(user_id)] = outcome or "done"
        job.results = dict(results)  # a new value, so the JSON column is written
        db.session.commit()
    job.finished_at = utcnow()
    done = sum(1 for outcome in results.values() if outcome == "done")
    audit.record("admin.bulk_finished", action=job.action, job_id=job.id, users=len(job.user_ids), done=done,
                 actor=actor_user, actor_client=None, via=job.via)
    db.session.commit()


def get_job(actor: Actor, job_id: int) -> AdminJob:
    """A bulk action: its own author's, or any for an administrator."""
    require(actor, Power.READ_USERS)
    job = db.session.get(AdminJob, job_id) if 0 <= job_id <= service.MAX_ID else None
    mine = job is not None and actor.user is not None and job.actor_id == actor.user.id
    if job is None or not (mine or service.can(actor, Power.MANAGE_ADMINS)):
        raise service.NotFound("no such bulk action")
    return job


# --- export and import ------------------------------------------------------------------------------------------

EXPORT_FIELDS = ("id", "subject", "email", "name", "email_verified", "phone", "phone_verified", "locale",
                 "disabled", "locked", "has_mfa", "roles", "created_at")


def _exported(user: User, mfa: set[int]) -> dict[str, Any]:
    return {"id": user.id, "subject": user.subject, "email": user.email, "name": user.name,
            "email_verified": user.email_verified, "phone": user.phone, "phone_verified": user.phone_verified,
            "locale": user.locale, "disabled": user.disabled, "locked": user.locked, "has_mfa": user.id in mfa,
            "roles": sorted(service.roles_of(user)), "created_at": user.created_at.isoformat()}


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell that a spreadsheet will not run: text starting with = + - @ (or a tab or carriage
    return) is a formula to Excel and LibreOffice, so it is quoted with a leading apostrophe (OWASP, CSV
    injection). A user's own name is such text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_users(actor: Actor, q: str, filters: Mapping[str, bool], fmt: str) -> Iterator[str]:
    """The selected users as CSV (a header first) or JSON lines, a page at a time; no secret, no hash. The
    export is audited before the first line."""
    require(actor, Power.READ_USERS)
    if fmt not in ("csv", "jsonl"):
        raise Invalid({"format": "csv or jsonl"})
    audit.record("users.exported", format=fmt, q=q, filters=dict(filters), **actor.audit())
    db.session.commit()

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if fmt == "csv":
            writer.writerow(EXPORT_FIELDS)
        cursor = None
        while True:
            page, cursor = service.list_users(actor, q=q, filters=filters, cursor=cursor, limit=service.MAX_PAGE)
            mfa = service.with_mfa(page)
            for user in page:
                record = _exported(user, mfa)
                if fmt == "jsonl":
                    buffer.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
                else:
                    record["roles"] = " ".join(record["roles"])
                    writer.writerow([csv_cell(record[name]) for name in EXPORT_FIELDS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if cursor is None:
                return
    return lines()


IMPORT_FIELDS = frozenset({"email", "name", "email_verified", "phone", "locale"})
# What a migration from the service idp replaces also carries: its password hashes (Django's formats, kept until the
# next sign-in re-hashes them: idp.security.imported_hashes), whether the phone was verified, and TOTP seeds.
MIGRATION_FIELDS = frozenset({"password_hash", "phone_verified", "totp_secret"})
# Fields of the export that an import reads past (they describe the exported account, not the new one).
EXPORT_ONLY = frozenset(EXPORT_FIELDS) - IMPORT_FIELDS


def _import_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if any(isinstance(value, str) and "\x00" in value for value in (*record, *record.values())):
        return "a NUL character"  # refused everywhere in idp (PostgreSQL cannot store one)
    unknown = set(record) - IMPORT_FIELDS - MIGRATION_FIELDS - EXPORT_ONLY
    if unknown:
        return f"unknown fields: {', '.join(sorted(unknown))[:200]}"
    if not isinstance(record.get("email"), str) or service._email_problem(record["email"]):
        return "no valid email"
    if not isinstance(record.get("name", ""), str) or len(record.get("name", "")) > 200:
        return "a name is text of at most 200 characters"
    if not isinstance(record.get("email_verified", False), bool):
        return "email_verified is true or false"
    if record.get("phone") is not None and (not isinstance(record["phone"], str) or normalize_phone(
            record["phone"], current_app.config["IDP_DEFAULT_PHONE_REGION"]) is None):
        return "not a phone number"
    if record.get("locale") is not None and record["locale"] not in i18n.LANGUAGES:
        return "not a language idp speaks"
    password_hash = record.get("password_hash")
    if password_hash is not None and (not isinstance(password_hash, str) or len(password_hash) > 255 or not (
            imported_hashes.well_formed(password_hash) or password_hash.startswith("$argon2id$"))):
        return "password_hash is not one of argon2, pbkdf2_sha256, bcrypt_sha256 (Django) or $argon2id$"
    if not isinstance(record.get("phone_verified", False), bool) or (record.get("phone_verified")
                                                                     and not record.get("phone")):
        return "phone_verified is true or false, and true only with a phone"
    seed = record.get("totp_secret")
    if seed is not None and not _base32_seed(seed):
        return "totp_secret is a base32 key of at least 16 characters"
    return None


def _base32_seed(seed: Any) -> bool:
    if not isinstance(seed, str) or not 16 <= len(seed) <= 128:
        return False
    try:
        base64.b32decode(seed.upper() + "=" * (-len(seed) % 8))
    except (ValueError, binascii.Error):
        return False
    return True


def import_users(actor: Actor, lines: Iterator[bytes | str], *, invite: bool) -> list[tuple[int, str, str]]:
    """Create users from JSON lines (the export's format; its account fields are read past): one transaction
    per line, an existing address skipped. A line may carry a migration's ``password_hash`` (Django's formats),
    ``phone_verified`` and ``totp_secret``; without a hash the user has no password: ``invite`` mails each a link
    to choose one, otherwise they use "forgot password". Returns (line number, email, outcome) per line."""
    require(actor, Power.CHANGE_USERS)
    results: list[tuple[int, str, str]] = []
    for number, raw in enumerate(lines, start=1):
        if number > MAX_IMPORT_LINES:
            results.append((number, "", f"stopped: at most {MAX_IMPORT_LINES} lines per import"))
            break
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            results.append((number, "", "not JSON"))
            continue
        problem = _import_problem(record)
        email = record.get("email", "") if isinstance(record, dict) and isinstance(record.get("email"), str) else ""
        if problem:
            results.append((number, email[:320], problem))
            continue
        email = normalize_email(email)
        if db.session.execute(db.select(User.id).where(User.email == email)).first():
            results.append((number, email, "exists already"))
            continue
        now = utcnow()
        user = User(email=email, name=(record.get("name") or "").strip(), locale=record.get("locale"),
                    email_verified_at=now if record.get("email_verified") else None,
                    password_hash=record.get("password_hash"),
                    password_changed_at=now if record.get("password_hash") else None)
        if record.get("phone"):
            phone = normalize_phone(record["phone"], current_app.config["IDP_DEFAULT_PHONE_REGION"])
            if record.get("phone_verified") and phone:
                user.set_verified_phone(phone, now)
            else:
                user.phone = phone
        db.session.add(user)
        try:
            db.session.flush()
        except IntegrityError:  # the same address created meanwhile (another import, a sign-up)
            db.session.rollback()
            results.append((number, email, "exists already"))
            continue
        if record.get("totp_secret"):  # the authenticator app the user already has keeps working
            key = current_app.config["IDP_SECRET_KEY"]
            db.session.add(TotpCredential(user_id=user.id, name=gettext("Authenticator app"), created_at=now,
                                          confirmed_at=now, secret_encrypted=crypto.encrypt(
                                              record["totp_secret"].upper().encode(), key, "totp")))
        audit.record("user.created", subject=user, imported=True, invited=invite,
                     with_password=bool(record.get("password_hash")), with_totp=bool(record.get("totp_secret")),
                     **actor.audit())
        db.session.commit()
        if invite:
            service.invite_user(user)
        results.append((number, email, "created"))
    audit.record("users.imported", lines=len(results), created=sum(1 for r in results if r[2] == "created"),
                 **actor.audit())
    db.session.commit()
    return results

