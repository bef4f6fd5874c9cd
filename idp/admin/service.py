"""Every admin action on users, once: the command line, the admin REST API (and the console to come) call these.

An action is checked against the actor's roles here, not in each caller, so they all agree; it is audited with the
actor (a person, a machine client of the API, or the operator at the command line) and the user as subject; a
change the user would be mailed about had they made it themselves is mailed to them now too (SECURITY.md 27). Each
action is one transaction: it commits, or raises and leaves nothing written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_babel import force_locale, gettext
from sqlalchemy import exists, false, or_
from sqlalchemy.orm import selectinload

from idp import audit, i18n
from idp.extensions import db
from idp.http import external_url
from idp.jobs import enqueue
from idp.login import enrolment, onetime, sessions, verification
from idp.login.browser import unlock_account
from idp.login.codes import normalize_phone
from idp.login.factors import REGISTRY
from idp.models import (
    AdminRole,
    AuditEvent,
    Client,
    Consent,
    Device,
    Factor,
    LoginSession,
    RecoveryCode,
    SigningKey,
    User,
    utcnow,
)
from idp.models.user import normalize_email
from idp.oidc import keys
from idp.oidc.dynamic import issue_initial_token
from idp.oidc.registration import create_client as register
from idp.oidc.registration import new_client_secret
from idp.oidc.registration import update_client as update
from idp.oidc.server import revoke_client, revoke_for_client
from idp.security.passwords import hash_password, password_problems
from idp.security.tokens import token_hash


class Role(StrEnum):
    """What an administrator may do (the API's scopes idp:admin, idp:helpdesk, idp:audit name them)."""

    ADMIN = "admin"  # everything
    HELPDESK = "helpdesk"  # look users up, unlock, reset MFA, send reset mails
    AUDITOR = "auditor"  # read the audit log only


class Power(StrEnum):
    READ_USERS = "read users"
    SUPPORT_USERS = "support users"  # unlock, reset MFA, send a password reset
    CHANGE_USERS = "change users"  # edit, disable, enable, require MFA, revoke tokens
    END_SESSIONS = "end sessions"
    MANAGE_CLIENTS = "manage clients"
    MANAGE_KEYS = "manage keys"
    MANAGE_ADMINS = "grant or remove admin roles"
    READ_AUDIT = "read the audit log"


POWERS: dict[Power, frozenset[Role]] = {
    Power.READ_USERS: frozenset({Role.ADMIN, Role.HELPDESK}),
    Power.SUPPORT_USERS: frozenset({Role.ADMIN, Role.HELPDESK}),
    Power.CHANGE_USERS: frozenset({Role.ADMIN}),
    Power.END_SESSIONS: frozenset({Role.ADMIN, Role.HELPDESK}),
    Power.MANAGE_CLIENTS: frozenset({Role.ADMIN}),
    Power.MANAGE_KEYS: frozenset({Role.ADMIN}),
    Power.MANAGE_ADMINS: frozenset({Role.ADMIN}),
    Power.READ_AUDIT: frozenset({Role.ADMIN, Role.AUDITOR}),
}


@dataclass(frozen=True)
class Actor:
    """Who acts: their roles, and who they are for the audit log."""

    roles: frozenset[Role]
    via: str  # "cli", "api", "console"
    user: User | None = None  # a person
    client_id: str | None = None  # a machine client of the API

    def audit(self) -> dict[str, Any]:
        return {"actor": self.user, "actor_client": self.client_id, "via": self.via}


OPERATOR = Actor(roles=frozenset({Role.ADMIN}), via="cli")  # whoever runs `idp` on the server
ROLE_NAMES = frozenset(role.value for role in Role)


def roles_of(user: User, now: datetime | None = None) -> frozenset[Role]:
    """The admin roles ``user`` holds now (a grant past its end time no longer counts, lapsed or not)."""
    if user.disabled or user.deleted_at is not None:
        return frozenset()
    return frozenset(Role(name) for name in user.roles_at(now or utcnow()) if name in ROLE_NAMES)


def person(user: User, via: str = "console") -> Actor:
    """A signed-in administrator acting (in the console, or with a token of their own at the API)."""
    return Actor(roles=roles_of(user), via=via, user=user)


def can(actor: Actor, power: Power) -> bool:
    return bool(actor.roles & POWERS[power])


class AdminError(Exception):
    """An action refused; ``status`` is the HTTP status the API answers with, the message is for the caller."""

    status = 400


class Forbidden(AdminError):
    status = 403


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


@dataclass
class Invalid(AdminError):
    """Bad input, by field."""

    errors: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(f"{name}: {message}" for name, message in self.errors.items())


def their_language(user: User) -> Any:
    """The user's language for what they are told (a notice mail), whatever the administrator's page speaks."""
    return force_locale(i18n.first_supported(user.locale) or i18n.LANGUAGES[0])


def require(actor: Actor, power: Power) -> None:
    if not can(actor, power):
        raise Forbidden(f"this requires one of the roles {', '.join(sorted(POWERS[power]))} to {power}")


# --- reading ----------------------------------------------------------------------------------------------------

FILTERS = ("verified", "locked", "disabled", "admin", "mfa", "deleted")
MAX_ID = 2**31 - 1  # ids are 32-bit integers
MAX_PAGE = 200


def _has_mfa():
    return exists().where(Factor.user_id == User.id, Factor.confirmed_at.is_not(None))


def _has_role():
    now = utcnow()
    return exists().where(AdminRole.user_id == User.id, or_(AdminRole.until.is_(None), AdminRole.until > now))


def _filter(name: str, on: bool):
    column = {
        "verified": User.email_verified_at.is_not(None),
        "locked": User.locked_at.is_not(None),
        "disabled": User.disabled.is_(True),
        "admin": _has_role(),
        "mfa": _has_mfa(),
        "deleted": User.deleted_at.is_not(None),
    }[name]
    return column if on else ~column


def encode_cursor(row_id: int) -> str:
    """A page's cursor: the id of its last row (keyset pagination needs nothing more)."""
    return str(row_id)


def decode_cursor(cursor: str, ceiling: int = MAX_ID) -> int:
    """The id a cursor names; one past the column's range (``ceiling``) reads as its end, never reaching the
    database, which would refuse the number."""
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise Invalid({"cursor": "not a cursor this API returned"})
    return min(int(cursor), ceiling)


def _keyset(query: Any, column: Any, cursor: str | None, limit: int, *, newest_first: bool = False,
            ceiling: int = MAX_ID) -> tuple[list[Any], str | None]:
    """One page of ``query`` (already ordered by ``column``) after ``cursor``, and the next page's cursor:
    keyset pagination, a WHERE on the indexed id instead of OFFSET, so the last page costs what the first does."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid({"limit": f"between 1 and {MAX_PAGE}"})
    if cursor is not None:
        bound = decode_cursor(cursor, ceiling)
        query = query.where(column < bound if newest_first else column > bound)
    rows = list(db.session.execute(query.limit(limit + 1)).scalars())
    return rows[:limit], encode_cursor(rows[limit - 1].id) if len(rows) > limit else None


def list_users(actor: Actor, *, q: str = "", filters: Mapping[str, bool] | None = None, cursor: str | None = None,
               limit: int = 50) -> tuple[list[User], str | None]:
    """A page of users in id order after ``cursor`` (keyset pagination: as fast on the millionth page as on the
    first, unlike OFFSET), matching ``q`` (email, name or subject) and the flag filters; and the next cursor."""
    require(actor, Power.READ_USERS)
    # The page's admin roles in one more query, not one per user (the lists show who is an administrator).
    query = db.select(User).order_by(User.id).options(selectinload(User.roles))
    if q:
        if len(q) > 320:
            raise Invalid({"q": "at most 320 characters"})
        pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(User.email.like(pattern, escape="\\"), User.name.ilike(pattern, escape="\\"),
                                User.subject == q))
    filters = {"deleted": False, **(filters or {})}  # deleted users are hidden unless asked for
    for name, on in filters.items():
        query = query.where(_filter(name, on))
    return _keyset(query, User.id, cursor, limit)


def get_user(actor: Actor, user_id: int) -> User:
    require(actor, Power.READ_USERS)
    # An id beyond the column's range names nobody (and must not reach the database, which would refuse it).
    user = db.session.get(User, user_id) if 0 <= user_id <= MAX_ID else None
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


def user_by_email(actor: Actor, email: str) -> User:
    require(actor, Power.READ_USERS)
    user = db.session.execute(db.select(User).where(User.email == normalize_email(email))).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user with email {email}")
    return user


def with_mfa(users: list[User]) -> set[int]:
    """The ids among ``users`` that have a confirmed second factor, in one query (a page of users, not one each)."""
    ids = [user.id for user in users]
    if not ids:
        return set()
    return set(db.session.execute(db.select(Factor.user_id).where(Factor.user_id.in_(ids),
                                                                  Factor.confirmed_at.is_not(None))).scalars())


# --- changing ---------------------------------------------------------------------------------------------------

def _email_problem(email: Any) -> str | None:
    try:
        if not isinstance(email, str) or len(email) > 320:
            raise EmailNotValidError("too long")
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return "not a valid email address"
    return None


def create_user(actor: Actor, *, email: Any, name: Any = "", password: Any = None, email_verified: Any = False,
                admin: Any = False, invite: Any = False) -> User:
    """Create a user with a password the administrator typed, or invite them: a mail with a link to choose their
    password (valid IDP_INVITE_LINK_TTL), which also proves the address."""
    require(actor, Power.CHANGE_USERS)
    errors: dict[str, str] = {}
    if problem := _email_problem(email):
        errors["email"] = problem
    if not isinstance(name, str) or len(name) > 200:
        errors["name"] = "a name has at most 200 characters"
    for flag, value in (("email_verified", email_verified), ("admin", admin), ("invite", invite)):
        if not isinstance(value, bool):
            errors[flag] = "true or false"
    if password is not None and not isinstance(password, str):
        errors["password"] = "a string"
    elif (password is not None) == (invite is True):  # one way in: a password, or an invitation to choose one
        errors["password" if password is None else "invite"] = "a password or an invitation (one of the two)"
    if errors:
        raise Invalid(errors)
    email = normalize_email(email)
    if password is not None:
        problems = password_problems(password, single_factor=True, context=(email.split("@")[0], name))
        if problems:
            raise Invalid({"password": " ".join(problems)})
    if db.session.execute(db.select(User.id).where(User.email == email)).first():
        raise Conflict("a user with that email address exists")
    now = utcnow()
    user = User(email=email, name=name.strip(), email_verified_at=now if email_verified else None,
                password_hash=hash_password(password) if password is not None else None,
                password_changed_at=now if password is not None else None)
    if admin:
        user.roles = [AdminRole(role=Role.ADMIN, granted_by=actor.user.id if actor.user else None)]
    db.session.add(user)
    db.session.flush()
    audit.record("user.created", subject=user, admin=admin, invited=invite, **actor.audit())
    db.session.commit()
    if invite:
        invite_user(user)
    return user


def invite_user(user: User) -> None:
    """Mail ``user`` an invitation: a link to choose their password (valid IDP_INVITE_LINK_TTL), which also
    proves their address."""
    cfg = current_app.config
    issued = onetime.issue("invite", user, now=utcnow(), ttl=cfg["IDP_INVITE_LINK_TTL"],
                           secret_key=cfg["IDP_SECRET_KEY"])
    assert issued.token is not None
    link = external_url("account.reset_password",  # the token in the fragment, as every mailed link
                        _anchor=onetime.sign(issued.token, "invite", cfg["IDP_SECRET_KEY"]))
    enqueue("send_mail", to=user.email, template="invitation", **({"language": user.locale} if user.locale else {}),
            context={"name": user.name, "link": link, "days": max(1, cfg["IDP_INVITE_LINK_TTL"] // 86400)})
    db.session.commit()  # the link's token, and the mail that carries it (sent once this has committed)


def delete_user(actor: Actor, user: User) -> None:
    """Delete softly: disabled and hidden at once, every session ended and token revoked; restorable until
    purged (IDP_DELETE_GRACE_DAYS)."""
    require(actor, Power.CHANGE_USERS)
    if actor.user is not None and actor.user.id == user.id:
        raise Conflict("you cannot delete yourself")
    if user.deleted_at is not None:
        raise Conflict("this user is deleted already")
    _keep_an_admin(user)
    was_disabled = user.disabled
    user.deleted_at = utcnow()
    user.disabled = True
    ended, revoked = sessions.sign_out_everywhere(user, "user_deleted", user.deleted_at)
    # Whether they were disabled already is kept in the (append-only) log: restoring gives that state back.
    audit.record("user.deleted", subject=user, sessions_ended=ended, tokens_revoked=revoked,
                 was_disabled=was_disabled, **actor.audit())
    db.session.commit()


def restore_user(actor: Actor, user: User) -> None:
    """Undo a deletion that has not been purged yet; the user is enabled again."""
    require(actor, Power.CHANGE_USERS)
    if user.deleted_at is None:
        raise Conflict("this user is not deleted")
    deleted = db.session.execute(db.select(AuditEvent.details).where(
        AuditEvent.event == "user.deleted", AuditEvent.subject_id == user.id).order_by(AuditEvent.id.desc())
        .limit(1)).scalar()
    user.deleted_at = None
    user.disabled = bool((deleted or {}).get("was_disabled"))  # as they were before the deletion
    audit.record("user.restored", subject=user, disabled=user.disabled, **actor.audit())
    db.session.commit()


def purge_deleted(actor: Actor, *, now: datetime | None = None) -> int:
    """Remove for good the users deleted more than IDP_DELETE_GRACE_DAYS ago (their factors, sessions, tokens
    and consents go with them; the audit log keeps its rows, which hold ids and snapshots). Returns how many."""
    require(actor, Power.CHANGE_USERS)
    cutoff = (now or utcnow()) - timedelta(days=current_app.config["IDP_DELETE_GRACE_DAYS"])
    doomed = list(db.session.execute(db.select(User).where(User.deleted_at.is_not(None),
                                                           User.deleted_at < cutoff)).scalars())
    for user in doomed:
        audit.record("user.purged", subject=user, **actor.audit())
    if doomed:
        db.session.execute(db.delete(User).where(User.id.in_([user.id for user in doomed])))
    db.session.commit()
    return len(doomed)


def update_user(actor: Actor, user: User, changes: Mapping[str, Any]) -> User:
    """Edit the profile fields an administrator may set: name, email, email_verified, phone (E.164 or as people
    write it, read in IDP_DEFAULT_PHONE_REGION; empty or null removes it; a new number is unverified)."""
    require(actor, Power.CHANGE_USERS)
    unknown = set(changes) - {"name", "email", "email_verified", "phone"}
    if unknown:
        raise Invalid({name: "not a field an administrator can change" for name in sorted(unknown)})
    errors: dict[str, str] = {}
    before = {"name": user.name, "email": user.email, "email_verified": user.email_verified, "phone": user.phone}
    if "name" in changes:
        name = changes["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            errors["name"] = "a name has 1 to 200 characters"
    if "email" in changes and (problem := _email_problem(changes["email"])):
        errors["email"] = problem
    if "email_verified" in changes and not isinstance(changes["email_verified"], bool):
        errors["email_verified"] = "true or false"
    phone = changes.get("phone")
    if phone is not None and not isinstance(phone, str):
        errors["phone"] = "a phone number, or null"
    elif phone:
        phone = normalize_phone(phone, current_app.config["IDP_DEFAULT_PHONE_REGION"])
        if phone is None:
            errors["phone"] = "not a phone number (write it with its +country code)"
    if errors:
        raise Invalid(errors)
    now = utcnow()
    if "name" in changes:
        user.name = changes["name"].strip()
    if "email" in changes and normalize_email(changes["email"]) != user.email:
        email = normalize_email(changes["email"])
        if db.session.execute(db.select(User.id).where(User.email == email)).first():
            raise Conflict("another user has that email address")
        user.email = email
        user.email_verified_at = None  # a new address is proved by its owner, unless the admin says so below
    if "email_verified" in changes:
        user.email_verified_at = (user.email_verified_at or now) if changes["email_verified"] else None
    if "phone" in changes:
        user.phone = phone or None  # a different number drops the proof of the old one (User._phone_changed)
    after = {"name": user.name, "email": user.email, "email_verified": user.email_verified, "phone": user.phone}
    diff = {key: [before[key], after[key]] for key in before if before[key] != after[key]}
    if diff:
        audit.record("user.updated", subject=user, changes=diff, **actor.audit())
    db.session.commit()
    return user


def disable(actor: Actor, user: User) -> tuple[int, int]:
    """Disable the user: every session ends and every token is revoked; returns (sessions, tokens)."""
    require(actor, Power.CHANGE_USERS)
    if actor.user is not None and actor.user.id == user.id:
        raise Conflict("you cannot disable yourself")
    _keep_an_admin(user)
    user.disabled = True
    ended, revoked = sessions.sign_out_everywhere(user, "user_disabled", utcnow())
    audit.record("user.disabled", subject=user, sessions_ended=ended, tokens_revoked=revoked, **actor.audit())
    db.session.commit()
    return ended, revoked


def enable(actor: Actor, user: User) -> None:
    require(actor, Power.CHANGE_USERS)
    if user.deleted_at is not None:
        raise Conflict("this user is deleted: restore them instead")
    user.disabled = False
    audit.record("user.enabled", subject=user, **actor.audit())
    db.session.commit()


def unlock(actor: Actor, user: User) -> None:
    """Lift the lock of repeated failed sign-ins."""
    require(actor, Power.SUPPORT_USERS)
    _guard_admin(actor, user)
    unlock_account(user, actor.via, **{key: value for key, value in actor.audit().items() if key != "via"})
    db.session.commit()


def require_mfa(actor: Actor, user: User, required: bool) -> None:
    """Require (or stop requiring) a second factor at every sign-in of the user."""
    require(actor, Power.CHANGE_USERS)
    user.mfa_required = required
    audit.record("user.mfa_required", subject=user, required=required, **actor.audit())
    db.session.commit()


def reset_mfa(actor: Actor, user: User) -> tuple[int, int, int]:
    """Remove every factor, recovery code and remembered device; end the sessions and revoke the tokens; the user
    is mailed, in their language. Returns (factors, sessions, tokens)."""
    require(actor, Power.SUPPORT_USERS)
    _guard_admin(actor, user)
    now = utcnow()
    factors = len(db.session.execute(db.delete(Factor).where(Factor.user_id == user.id).returning(Factor.id)).all())
    db.session.execute(db.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    db.session.execute(db.update(Device).where(Device.user_id == user.id).values(remembered_until=None, revoked_at=now))
    ended, revoked = sessions.sign_out_everywhere(user, "mfa_reset", now)
    with their_language(user):
        enrolment.notify_change(user, gettext("An administrator removed your second factors."), event="mfa.reset",
                                next_step=gettext("Set up a new one at your next sign-in."), factors_removed=factors,
                                sessions_ended=ended, tokens_revoked=revoked, **actor.audit())
    db.session.commit()
    return factors, ended, revoked


def revoke_tokens(actor: Actor, user: User) -> tuple[int, int]:
    """End every session and revoke every token of the user (they sign in again everywhere)."""
    require(actor, Power.CHANGE_USERS)
    ended, revoked = sessions.sign_out_everywhere(user, "revoked_by_admin", utcnow())
    audit.record("user.tokens_revoked", subject=user, sessions_ended=ended, tokens_revoked=revoked, **actor.audit())
    db.session.commit()
    return ended, revoked


def set_password(actor: Actor, user: User, password: Any) -> tuple[int, int]:
    """Set the user's password (checked as at sign-up); every session ends and every token is revoked, and the
    user is mailed. Returns (sessions, tokens)."""
    require(actor, Power.CHANGE_USERS)
    if not isinstance(password, str) or not password:
        raise Invalid({"password": "a password"})
    problems = password_problems(password, single_factor=True, context=(user.email.split("@")[0], user.name))
    if problems:
        raise Invalid({"password": " ".join(problems)})
    now = utcnow()
    user.password_hash = hash_password(password)
    user.password_changed_at = now
    user.failed_logins = 0
    ended, revoked = sessions.sign_out_everywhere(user, "password_reset", now)
    with their_language(user):  # the notice and its mail, in the user's language
        enrolment.notify_change(user, gettext("An administrator set a new password for your account."),
                                event="password.reset", sessions_ended=ended, tokens_revoked=revoked,
                                **actor.audit())
    db.session.commit()
    return ended, revoked


def send_password_reset(actor: Actor, user: User) -> None:
    """Mail the user a password reset link, as /forgot does (the same cooldown applies)."""
    require(actor, Power.SUPPORT_USERS)
    audit.record("user.password_reset_sent", subject=user, **actor.audit())
    # The job goes out when the row saying it was sent commits (idp.jobs); with Redis down it runs in this request.
    enqueue("start_password_reset", email=user.email, language=user.locale or None)
    db.session.commit()


def send_verification(actor: Actor, user: User) -> None:
    """Mail the user a new link to verify their address (helpdesk: "I never got the mail")."""
    require(actor, Power.SUPPORT_USERS)
    if user.email_verified:
        raise Conflict("this address is verified already")
    audit.record("user.verification_sent", subject=user, **actor.audit())
    with their_language(user):
        verification.send_verification(user, now=utcnow(), config=current_app.config, url=external_url)
    db.session.commit()


# --- admin roles ------------------------------------------------------------------------------------------------

def _keep_an_admin(user: User) -> None:
    """Refuse to take the last enabled administrator with a permanent admin grant away (disabled, deleted,
    stripped of the role, or given an end time): someone must always be able to administer, and a grant with an
    end time lapses by itself.

    The admin grants are read FOR UPDATE, and their users with them (PostgreSQL locks the rows of both joined
    tables, and re-reads a row another transaction changed before it returns it): two administrators removing
    each other at the same moment would otherwise each see the other still in place and leave nobody."""
    keepers = db.session.execute(
        db.select(AdminRole.user_id).join(User, User.id == AdminRole.user_id)
        .where(AdminRole.role == Role.ADMIN.value, AdminRole.until.is_(None), User.disabled.is_(False),
               User.deleted_at.is_(None))
        .with_for_update()).scalars().all()
    if user.id in keepers and len(set(keepers)) == 1:
        raise Conflict("this is the last administrator: make someone else an administrator (for good) first")


def _guard_admin(actor: Actor, user: User) -> None:
    """Support actions (reset MFA, remove a factor, forget a device, unlock) on an administrator weaken what guards
    the console: only an administrator may do them to an administrator, never the helpdesk."""
    if roles_of(user) and not can(actor, Power.MANAGE_ADMINS):
        raise Forbidden("only an administrator may do this to a user who holds an admin role")


def grant_role(actor: Actor, user: User, role: Any, until: datetime | None = None) -> AdminRole:
    """Give ``user`` an admin role, for good or until ``until`` (then it lapses by itself); granting a role
    held already sets its end time anew."""
    require(actor, Power.MANAGE_ADMINS)
    if role not in ROLE_NAMES:
        raise Invalid({"role": f"one of {', '.join(sorted(ROLE_NAMES))}"})
    now = utcnow()
    if until is not None and (until.tzinfo is None or until <= now):
        raise Invalid({"until": "a time in the future, with its offset"})
    if user.deleted_at is not None or user.disabled:
        raise Conflict("a disabled or deleted user cannot hold an admin role")
    grant = next((row for row in user.roles if row.role == role), None)
    before = grant.until.isoformat() if grant is not None and grant.until else None
    if role == Role.ADMIN.value and until is not None and grant is not None and grant.until is None:
        _keep_an_admin(user)  # a permanent grant given an end time: not the last one
    if grant is None:
        grant = AdminRole(role=role, until=until, granted_at=now, granted_by=actor.user.id if actor.user else None)
        user.roles.append(grant)
    else:
        grant.until, grant.granted_at = until, now
        grant.granted_by = actor.user.id if actor.user else None
    audit.record("admin.role_granted", subject=user, role=role, until=until.isoformat() if until else None,
                 previous_until=before, **actor.audit())
    db.session.commit()
    return grant


def revoke_role(actor: Actor, user: User, role: Any) -> None:
    """Take an admin role away. Nobody removes their own admin role, and the last administrator stays one."""
    require(actor, Power.MANAGE_ADMINS)
    grant = next((row for row in user.roles if row.role == role), None)
    if grant is None:
        raise NotFound(f"this user does not hold the role {str(role)[:16]}")
    if role == Role.ADMIN.value:
        if actor.user is not None and actor.user.id == user.id:
            raise Conflict("you cannot remove your own admin role")
        _keep_an_admin(user)
    user.roles.remove(grant)
    audit.record("admin.role_revoked", subject=user, role=role, **actor.audit())
    db.session.commit()


def lapse_roles(now: datetime | None = None) -> int:
    """Remove the grants whose end time has passed, each audited (housekeeping; a lapsed grant stopped counting
    at its end time already, this only records it and tidies up). Returns how many."""
    now = now or utcnow()
    lapsed = list(db.session.execute(db.select(AdminRole).where(AdminRole.until.is_not(None), AdminRole.until <= now)
                                     .with_for_update(skip_locked=True)).scalars())
    for grant in lapsed:
        audit.record("admin.role_lapsed", subject=grant.user, role=grant.role, until=grant.until.isoformat(),
                     via="system")
        db.session.delete(grant)
    db.session.commit()
    return len(lapsed)


# --- a user's devices, applications and events ------------------------------------------------------------------

def list_devices(actor: Actor, user: User) -> list[Device]:
    """The user's known browsers, remembered or not, newest first."""
    require(actor, Power.READ_USERS)
    return list(db.session.execute(db.select(Device).where(Device.user_id == user.id, Device.revoked_at.is_(None))
                                   .order_by(Device.last_used_at.desc())).scalars())


def forget_device(actor: Actor, user: User, device_id: int) -> Device:
    """Stop remembering a device: its next sign-in asks for the second factor again (the user is told)."""
    require(actor, Power.SUPPORT_USERS)
    _guard_admin(actor, user)
    device = db.session.get(Device, device_id) if 0 <= device_id <= MAX_ID else None
    if device is None or device.user_id != user.id or device.revoked_at is not None:
        raise NotFound("no such device")
    device.remembered_until = None
    device.revoked_at = utcnow()
    with their_language(user):  # the notice and its mail, in the user's language
        enrolment.notify_change(user, gettext("An administrator made idp forget the device “%(name)s”.",
                                              name=device.name),
                                event="device.forgotten", device_id=device.id, **actor.audit())
    db.session.commit()
    return device


def remove_factor(actor: Actor, user: User, factor_id: int) -> Factor:
    """Remove one sign-in factor of the user (mailed to them, as when they remove it themselves)."""
    require(actor, Power.SUPPORT_USERS)
    _guard_admin(actor, user)
    factor = db.session.get(Factor, factor_id) if 0 <= factor_id <= MAX_ID else None
    if factor is None or factor.user_id != user.id:
        raise NotFound("no such factor")
    factor_type = REGISTRY.get(factor.kind)
    if factor_type is not None:
        factor_type.remove(factor)
    else:  # a credential of a factor this server no longer offers
        db.session.delete(factor)
    with their_language(user):  # the notice and its mail, in the user's language
        enrolment.notify_change(user, gettext("An administrator removed the sign-in method “%(name)s” from your "
                                              "account.", name=factor.name),
                                event="factor.removed", kind=factor.kind, **actor.audit())
    db.session.commit()
    return factor


def list_consents(actor: Actor, user: User) -> list[tuple[Consent, Client | None]]:
    """The applications the user allowed, with what they may see."""
    require(actor, Power.READ_USERS)
    return [(consent, client) for consent, client in db.session.execute(
        db.select(Consent, Client).outerjoin(Client, Client.client_id == Consent.client_id)
        .where(Consent.user_id == user.id, Consent.revoked_at.is_(None)).order_by(Consent.updated_at.desc()))]


def revoke_consent(actor: Actor, user: User, client_id: str) -> int:
    """Withdraw an application's access to the user: the consent ends and its tokens are revoked; returns how many."""
    require(actor, Power.CHANGE_USERS)
    consent = db.session.execute(db.select(Consent).where(Consent.user_id == user.id,
                                                          Consent.client_id == client_id[:128],
                                                          Consent.revoked_at.is_(None))).scalar_one_or_none()
    if consent is None:
        raise NotFound("this application has no access to the user")
    consent.revoked_at = utcnow()
    revoked = revoke_for_client(user, consent.client_id, "consent_revoked")
    audit.record("consent.revoked", subject=user, client_id=consent.client_id, tokens_revoked=revoked,
                 **actor.audit())
    db.session.commit()
    return revoked


def end_sessions(actor: Actor, user: User) -> int:
    """End every live session of the user (their tokens stay; revoke_tokens ends both)."""
    require(actor, Power.END_SESSIONS)
    ended = sessions.end_all(user, "ended_by_admin", utcnow())
    audit.record("session.ended_all", subject=user, sessions_ended=ended, **actor.audit())
    db.session.commit()
    return ended


# --- sessions and factors ---------------------------------------------------------------------------------------



def list_sessions(actor: Actor, *, user: User | None = None, cursor: str | None = None,
                  limit: int = 50) -> tuple[list[LoginSession], str | None]:
    """Live sign-in sessions (all, or one user's), in id order after ``cursor``."""
    require(actor, Power.READ_USERS)
    query = db.select(LoginSession).where(LoginSession.ended_at.is_(None)).order_by(LoginSession.id)
    if user is not None:
        query = query.where(LoginSession.user_id == user.id)
    return _keyset(query, LoginSession.id, cursor, limit)


def end_session(actor: Actor, sid: str) -> LoginSession:
    """End one live session (its browser signs in again)."""
    require(actor, Power.END_SESSIONS)
    row = db.session.execute(db.select(LoginSession).where(LoginSession.sid == sid[:64],
                                                           LoginSession.ended_at.is_(None))).scalar_one_or_none()
    if row is None:
        raise NotFound("no live session with that id")
    sessions.end(row, "ended_by_admin", utcnow())
    audit.record("session.ended", subject=row.user, sid=row.sid, **actor.audit())
    db.session.commit()
    return row


def list_factors(actor: Actor, user: User) -> list[Factor]:
    """The user's confirmed sign-in factors (names, kinds, dates; never a secret)."""
    require(actor, Power.READ_USERS)
    return list(db.session.execute(db.select(Factor).where(Factor.user_id == user.id, Factor.confirmed_at.is_not(None))
                                   .order_by(Factor.id)).scalars())


# --- clients and keys -------------------------------------------------------------------------------------------

def list_clients(actor: Actor) -> list[Client]:
    require(actor, Power.MANAGE_CLIENTS)
    return list(db.session.execute(db.select(Client).order_by(Client.id)).scalars())


def get_client(actor: Actor, client_id: str) -> Client:
    require(actor, Power.MANAGE_CLIENTS)
    client = db.session.execute(db.select(Client).where(Client.client_id == client_id[:128])).scalar_one_or_none()
    if client is None:
        raise NotFound(f"no client {client_id[:128]}")
    return client


def create_client(actor: Actor, **settings: Any) -> tuple[Client, str | None]:
    """Register a client (idp.oidc.registration.create_client checks every setting); returns it and its secret,
    which is shown once."""
    require(actor, Power.MANAGE_CLIENTS)
    try:
        client, secret = register(**settings, audit_details=actor.audit())
    except ValueError as refused:
        db.session.rollback()
        raise Invalid({"client": str(refused)}) from None
    db.session.commit()
    return client, secret


def update_client(actor: Actor, client: Client, changes: Mapping[str, Any]) -> Client:
    """Change a client's settings (checked as a whole, as at creation); the changed fields are audited."""
    require(actor, Power.MANAGE_CLIENTS)
    try:
        update(client, dict(changes), audit_details=actor.audit())
    except ValueError as refused:
        db.session.rollback()
        raise Invalid({"client": str(refused)}) from None
    db.session.commit()
    return client


def delete_client(actor: Actor, client: Client) -> int:
    """Delete a client: every token it holds is revoked; returns how many."""
    require(actor, Power.MANAGE_CLIENTS)
    revoked = revoke_client(client.client_id, "client_deleted")
    db.session.delete(client)
    audit.record("client.deleted", client_id=client.client_id, tokens_revoked=revoked, **actor.audit())
    db.session.commit()
    return revoked


def rotate_client_secret(actor: Actor, client: Client) -> str:
    """A new secret (returned once, stored hashed); the old one stops working at once."""
    require(actor, Power.MANAGE_CLIENTS)
    if client.client_secret_hash is None:
        raise Conflict("this client has no secret (public or private_key_jwt)")
    secret = new_client_secret()
    client.client_secret_hash = token_hash(secret)
    audit.record("client.secret_rotated", client_id=client.client_id, **actor.audit())
    db.session.commit()
    return secret


def issue_initial_access_token(actor: Actor, expires_in: Any, uses: Any) -> tuple[str, datetime]:
    """An initial access token for dynamic client registration (RFC 7591 3): returned once, stored hashed; with
    its expiry. ``expires_in`` and ``uses`` as the caller sent them (checked by issue_initial_token)."""
    require(actor, Power.MANAGE_CLIENTS)
    try:
        token, row = issue_initial_token(expires_in, uses, actor.audit())
    except ValueError as refused:
        db.session.rollback()
        raise Invalid({"initial_access_token": str(refused)}) from None
    db.session.commit()
    return token, row.expires_at


def list_keys(actor: Actor) -> list[SigningKey]:
    """The signing keys, newest first: active, or retired and published until their tokens expire."""
    require(actor, Power.MANAGE_KEYS)
    keys.active()  # the first keys are made on first use
    return list(db.session.execute(db.select(SigningKey).order_by(SigningKey.created_at.desc(),
                                                                  SigningKey.id.desc())).scalars())


def rotate_keys(actor: Actor) -> list[SigningKey]:
    """New signing keys; the previous ones stay published while tokens they signed can live."""
    require(actor, Power.MANAGE_KEYS)
    fresh = keys.rotate(max_token_lifetime=keys.longest_token_lifetime())
    audit.record("key.rotated", kids=[row.kid for row in fresh], **actor.audit())
    db.session.commit()
    return fresh


# --- the audit log ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditFilter:
    """Which audit events: by event, subject, client, IP and time range (all optional)."""

    event: str | None = None
    events: tuple[str, ...] | None = None  # any of these
    user_id: int | None = None
    client_id: str | None = None
    ip: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def described(self) -> dict[str, str]:
        return {key: str(value) for key, value in vars(self).items() if value is not None}

    def query(self):
        query = db.select(AuditEvent).order_by(AuditEvent.id.desc())
        if self.event:
            query = query.where(AuditEvent.event == self.event[:64])
        if self.events:
            query = query.where(AuditEvent.event.in_(self.events))
        if self.user_id is not None:
            # An id beyond the column's range names nobody (and the database would refuse the number).
            query = query.where(AuditEvent.subject_id == self.user_id if self.user_id <= MAX_ID else false())
        if self.client_id:
            query = query.where(AuditEvent.client_id == self.client_id[:128])
        if self.ip:
            query = query.where(AuditEvent.ip == self.ip[:64])
        if self.since is not None:
            query = query.where(AuditEvent.at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.at < self.until)
        return query


def list_audit_events(actor: Actor, where: AuditFilter, *, cursor: str | None = None,
                      limit: int = 100) -> tuple[list[AuditEvent], str | None]:
    """Audit events, newest first, filtered; keyset pagination on the id."""
    require(actor, Power.READ_AUDIT)
    rows, next_cursor = _keyset(where.query(), AuditEvent.id, cursor, limit, newest_first=True, ceiling=2**63 - 1)
    # Reading the log is itself audited: who looked, at what (the filters), and how much they got.
    audit.record("audit.read", filters=where.described(), rows=len(rows), **actor.audit())
    db.session.commit()
    return rows, next_cursor


def verify_audit(actor: Actor) -> audit.Report:
    """Check the audit log's hash chain and signed checkpoints (idp.audit.verify_chain); the check is audited."""
    require(actor, Power.READ_AUDIT)
    report = audit.verify_chain()
    audit.record("audit.verified", intact=report.intact, events=report.events, checkpoints=report.checkpoints,
                 problem=report.problem, **actor.audit())
    db.session.commit()
    return report


def checkpoint_audit(actor: Actor) -> dict[str, Any] | None:
    """Sign the end of the audit chain now (idp.audit.checkpoint); None when the log is empty. Audited."""
    require(actor, Power.READ_AUDIT)
    audit.record("audit.checkpointed", **actor.audit())
    db.session.commit()
    return audit.checkpoint()


def export_audit_events(actor: Actor, where: AuditFilter, fmt: str) -> Iterator[AuditEvent]:
    """Every audit event the filter selects, newest first, read in batches; the export itself is audited first."""
    require(actor, Power.READ_AUDIT)  # checked now, before the answer starts (not when the rows are read)
    audit.record("audit.exported", filters=where.described(), format=fmt, **actor.audit())
    db.session.commit()

    def rows() -> Iterator[AuditEvent]:
        # Read as the answer is written (a streamed answer outlives the request's own database session).
        yield from db.session.execute(where.query().execution_options(yield_per=500)).scalars()
    return rows()
