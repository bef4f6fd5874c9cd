"""Creating an account: once, for the sign-up page (idp.account.views) and the account API (idp.account.api).
Whether or not the address has an account, the caller shows the same next step (SECURITY.md 19)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError

from idp import audit
from idp.extensions import db
from idp.models import User, utcnow
from idp.models.user import normalize_email
from idp.security.passwords import hash_password, password_problems


@dataclass
class Registration:
    """The new user, or the address that has an account already; or what is wrong with the password."""

    user: User | None = None
    existing: str | None = None
    problems: list[str] = field(default_factory=list)


def register(email: str, name: str, password: str, **details: Any) -> Registration:
    """Create the user (unverified) unless the address has an account; audited either way, not committed."""
    email = normalize_email(email)
    problems = password_problems(password, single_factor=True, context=(email.split("@")[0], name))
    if problems:
        return Registration(problems=problems)
    password_hash = hash_password(password)  # hashed in both branches so both cost the same
    existing = db.session.execute(db.select(User).where(User.email == email)).scalar_one_or_none()
    if existing is None:
        user = User(email=email, name=name.strip(), password_hash=password_hash, password_changed_at=utcnow())
        db.session.add(user)
        try:
            db.session.flush()
        except IntegrityError:  # the same address registered a moment ago by another request
            db.session.rollback()
            existing = db.session.execute(db.select(User).where(User.email == email)).scalar_one()
        else:
            audit.record("user.signup", subject=user, **details)
            return Registration(user=user)
    audit.record("user.signup_existing", subject=existing, **details)
    return Registration(existing=email)
