"""Changing the email address: the old address stays until the new one is proved, by the link or the code of a
mail sent to it; then the old address is told. Once, for the account page (idp.account.views) and the account API
(idp.account.api).

The answer is the same whether or not another account has the new address (SECURITY.md 19): that address's owner
gets a mail saying so instead of a code, and the change cannot complete.
"""

from __future__ import annotations

from typing import Any

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_babel import gettext as _
from sqlalchemy.exc import IntegrityError

from idp import audit
from idp.extensions import db
from idp.http import external_url
from idp.jobs import enqueue
from idp.login import onetime
from idp.models import OneTimeToken, User, utcnow
from idp.models.user import normalize_email

PURPOSE = "change_email"


class EmailRefused(Exception):
    """The new address was not accepted; the text is for the user."""


def channel(sid: str) -> str:
    """What a change's code is bound to: the sign-in session that asked for it."""
    return f"email-change:{sid}"


def request_change(user: User, raw: str, *, sid: str, **details: Any) -> str:
    """Mail the new address a link and a code that prove it (or, if another account has it, say so to that
    address); returns the normalised address. Raises EmailRefused for an address that is not one, or the same."""
    try:
        validate_email(raw or "", check_deliverability=False)
    except EmailNotValidError:
        raise EmailRefused(_("Enter a valid email address, like name@example.com.")) from None
    new = normalize_email(raw)
    if new == user.email:
        raise EmailRefused(_("This is already your address."))
    cfg = current_app.config
    taken = db.session.execute(db.select(User.id).where(User.email == new)).first() is not None
    audit.record("email.change_requested", subject=user, taken=taken, **details)
    if taken:
        enqueue("send_mail", to=new, template="account_exists",
                context={"signin": external_url("login.begin"), "reset": external_url("account.forgot")})
        return new
    issued = onetime.issue(PURPOSE, user, now=utcnow(), ttl=cfg["IDP_VERIFY_LINK_TTL"],
                           secret_key=cfg["IDP_SECRET_KEY"], code=True, transaction_id=channel(sid))
    issued.row.email = new  # the address this token proves (not the user's current one)
    assert issued.token is not None
    link = external_url("account.confirm_email", _anchor=onetime.sign(issued.token, PURPOSE, cfg["IDP_SECRET_KEY"]))
    enqueue("send_mail", to=new, template="change_email",
            context={"name": user.name, "link": link, "code": issued.code,
                     "code_minutes": cfg["IDP_VERIFY_LINK_TTL"] // 60})
    return new


def by_link(token: str) -> OneTimeToken | None:
    """The live change behind a mailed link's token, or None."""
    cfg = current_app.config
    return onetime.find_by_link(PURPOSE, token, now=utcnow(), secret_key=cfg["IDP_SECRET_KEY"],
                                ttl=cfg["IDP_VERIFY_LINK_TTL"], proves_new_address=True)


def by_code(user: User, code: str, *, sid: str) -> OneTimeToken:
    """The change this session asked for, if ``code`` is its code (each wrong code counts); raises CodeRejected."""
    cfg = current_app.config
    row = onetime.check_code(PURPOSE, channel(sid), code, now=utcnow(), secret_key=cfg["IDP_SECRET_KEY"],
                             max_attempts=cfg["IDP_CODE_MAX_ATTEMPTS"])
    if row.user_id != user.id:
        raise onetime.CodeRejected(_("This code has expired. Send a new one."))
    return row


def complete(row: OneTimeToken, *, used: bool = False, **details: Any) -> None:
    """Make the proved address the user's (verified), tell the old one, audit; commits. ``used``: the code path
    used the token already. Raises EmailRefused when another account took the address meanwhile."""
    now = utcnow()
    user, new = row.user, row.email
    if db.session.execute(db.select(User.id).where(User.email == new, User.id != user.id)).first():
        raise EmailRefused(_("This address belongs to another account now."))
    if not used and not onetime.use(row, now):
        raise EmailRefused(_("It has expired, was already used, or was replaced by a newer one."))
    old = user.email
    user.email = new
    user.email_verified_at = now
    audit.record("email.changed", subject=user, old=old, new=new, **details)
    enqueue("send_mail", to=old, template="email_changed", context={"name": user.name, "new": new})
    try:
        db.session.commit()  # the change, and the mail to the old address (sent once this has committed)
    except IntegrityError:  # the address was registered between the check above and this commit: no change, no mail
        db.session.rollback()
        raise EmailRefused(_("This address belongs to another account now.")) from None
