"""Identify the user and check the password (SECURITY.md 19-21)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from idp import audit
from idp.extensions import db
from idp.jobs import enqueue
from idp.login import consume, onetime
from idp.login.context import FRESH_LOGIN_REASONS, Outcome, Step, StepContext, too_many_attempts
from idp.login.forms import SignInForm
from idp.login.throttle import account_key
from idp.login.webauthn import assertion_options, verify_assertion, webauthn_available
from idp.models import User
from idp.models.user import normalize_email
from idp.security.passwords import hash_password, needs_rehash, verify_password
from idp.security.webauthn import WebAuthnFailed, amr_for

# One message for unknown account, wrong password, locked and disabled account (ASVS V6.3.8, SECURITY.md 19/21).
GENERIC_FAILURE = _l("Incorrect email or password.")


# Why a signed-in user is asked to sign in again (a change that needs a recent sign-in), by the key the page that
# asks passes to recent_auth_required.
REAUTH_PURPOSES = {
    "": _l("Confirm it's you to change your account's security."),
    "change_password": _l("Confirm it's you to change your password."),
    "add_method": _l("Confirm it's you to add a sign-in method."),
    "change_method": _l("Confirm it's you to change a sign-in method."),
    "remove_method": _l("Confirm it's you to remove a sign-in method."),
    "forget_device": _l("Confirm it's you to forget a remembered device."),
    "change_phone": _l("Confirm it's you to change your phone number."),
    "admin_action": _l("Confirm it's you to make this change as an administrator."),
    "delete_account": _l("Confirm it's you to delete your account."),
    "change_email": _l("Confirm it's you to change your email address."),
    "export_data": _l("Confirm it's you to download your data."),
}


class PasswordStep(Step):
    """Email + password, or a passkey instead of both; the step that tells the transaction who the user is."""

    name = "password"
    template = "login/password.html"
    form_class = SignInForm
    title = _l("Sign in")

    def begin(self, ctx: StepContext) -> dict[str, Any]:
        hint = ctx.state.login_hint or (ctx.user.email if ctx.user else "")
        # A signed-in user asked again is told why, and whose account it is.
        reauth = (str(REAUTH_PURPOSES.get(ctx.state.reauth_purpose, REAUTH_PURPOSES[""]))
                  if "reauth" in ctx.state.reasons else None)
        # Passkey sign-in (conditional UI): any discoverable credential may answer, with user verification.
        if not webauthn_available():
            return {"email": hint, "passkey_options": None, "reauth": reauth}
        return {"email": hint, "passkey_options": assertion_options(ctx.txn, user_id=None, require_uv=True),
                "reauth": reauth}

    def verify_passkey(self, ctx: StepContext, credential_json: str) -> Outcome:
        """Passwordless: a passkey with user verification identifies the user and is two factors in one."""
        try:
            factor, result = verify_assertion(ctx.txn, credential_json, user_id=None, require_uv=True, now=ctx.now)
        except WebAuthnFailed:
            audit.record("login.failure", reason="passkey", ip=ctx.ip, user_agent=ctx.user_agent, durable=True)
            return Outcome(False, _("That passkey could not be verified. Try again or use your password."))
        user = factor.user
        if user.disabled or user.locked or (ctx.user is not None and ctx.user.id != user.id
                                            and ctx.reasons & FRESH_LOGIN_REASONS - {"no_session"}):
            audit.record("login.failure", subject=user, reason="passkey_refused", ip=ctx.ip,
                         user_agent=ctx.user_agent, durable=True)
            return Outcome(False, str(GENERIC_FAILURE))
        ctx.txn.user = user
        return Outcome(True, amr=amr_for(factor.backed_up, result.user_verified))

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        email = normalize_email(data.get("email", ""))
        keys = {"account": account_key(email), "ip": ctx.ip}
        wait = ctx.throttle.retry_after("password", keys)
        if wait:
            audit.record("login.failure", reason="throttled", email=email, ip=ctx.ip, user_agent=ctx.user_agent,
                         durable=True)
            return Outcome(False, too_many_attempts(wait))
        user = db.session.execute(db.select(User).where(User.email == email)).scalar_one_or_none()
        # The hash is checked even for unknown users (against a dummy hash) so timing does not tell them apart.
        matches = verify_password(user.password_hash if user else None, data.get("password", ""))
        reason = None
        if user is None:
            reason = "unknown_user"
        elif ctx.user is not None and ctx.user.id != user.id and ctx.reasons & {"reauth", "max_age"}:
            reason = "another_user"  # signing in again (max_age, reauth) proves the same person
        elif not matches:
            reason = "bad_password"
        elif user.disabled:
            reason = "disabled"
        elif user.locked:
            reason = "locked"
        if reason is None:
            assert user is not None
            user.failed_logins = 0
            if needs_rehash(user.password_hash):
                user.password_hash = hash_password(data["password"])
            ctx.throttle.succeeded("password", keys)
            ctx.txn.user = user
            return Outcome(True, amr=("pwd",))
        ctx.throttle.failed("password", keys)
        if user is not None and reason == "bad_password":
            self._count_failure(ctx, user)
        audit.record("login.failure", subject=user, reason=reason, email=None if user else email,
                     ip=ctx.ip, user_agent=ctx.user_agent, durable=True)
        return Outcome(False, str(GENERIC_FAILURE))

    def _count_failure(self, ctx: StepContext, user: User) -> None:
        """Consecutive failures lock the account at the threshold; an emailed link or an admin unlocks it."""
        failures = consume.failed_login(user)  # counted in the database: parallel failures all count
        if failures >= ctx.config["IDP_LOCKOUT_THRESHOLD"] and consume.lock(user, ctx.now):
            audit.record("account.locked", subject=user, failures=failures, ip=ctx.ip,
                         user_agent=ctx.user_agent)
            issued = onetime.issue("unlock", user, now=ctx.now, ttl=ctx.config["IDP_RESET_LINK_TTL"],
                                   secret_key=ctx.config["IDP_SECRET_KEY"])
            assert issued.token is not None
            link = ctx.url("account.unlock", _anchor=onetime.sign(issued.token, "unlock", ctx.config["IDP_SECRET_KEY"]))
            enqueue("send_mail", to=user.email, template="account_locked", context={"name": user.name, "link": link})
