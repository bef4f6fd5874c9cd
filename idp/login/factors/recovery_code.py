"""Second factor of last resort: one of the ten single-use recovery codes (SECURITY.md 26)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import func

from idp import audit
from idp.extensions import db
from idp.jobs import enqueue
from idp.login import consume
from idp.login.context import Outcome, StepContext
from idp.login.factors.base import Action, EnrolContext, Enrolled, FactorType, Section
from idp.login.forms import ConfirmForm, RecoveryCodeForm
from idp.models import Factor, RecoveryCode, User
from idp.security.otp import new_recovery_codes, normalize_recovery_code
from idp.security.tokens import code_hash


def recovery_code_hash(secret_key: str, user_id: int, code: str) -> str:
    """Keyed hash of a normalized recovery code, bound to its user."""
    return code_hash(secret_key, normalize_recovery_code(code), f"recovery:{user_id}")


def unused_recovery_codes(user: User) -> int:
    """How many recovery codes the user has left."""
    return db.session.execute(db.select(func.count(RecoveryCode.id)).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))).scalar_one()


def new_recovery_codes_for(user: User, now: datetime, secret_key: str) -> list[str]:
    """Replace the user's recovery codes with ten new ones; returns them (to show once)."""
    db.session.execute(db.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = new_recovery_codes()
    for code in codes:
        db.session.add(RecoveryCode(user_id=user.id, code_hash=recovery_code_hash(secret_key, user.id, code),
                                    created_at=now))
    return codes


class RecoveryCodes(FactorType):
    """Accept one unused recovery code; using one is audited and mailed to the user."""

    kind = "recovery_code"
    amr_values = frozenset({"recovery_code"})
    template = "login/recovery_code.html"
    form_class = RecoveryCodeForm
    title = _l("Recovery code")
    chooser_label = _l("Recovery code")
    slug = "recovery-codes"
    enrol_stages = {"new": ("account/recovery_codes.html", ConfirmForm)}
    enrol_by_post_only = True

    def offered(self, user: User, confirmed: list[Factor]) -> bool:
        return unused_recovery_codes(user) > 0

    def verify(self, ctx: StepContext, data: Mapping[str, Any]) -> Outcome:
        blocked = ctx.code_attempts_blocked()
        if blocked:
            return blocked
        user = ctx.user
        assert user is not None
        digest = recovery_code_hash(ctx.config["IDP_SECRET_KEY"], user.id, data.get("code", ""))
        if not consume.recovery_code(user.id, digest, ctx.now):  # one conditional UPDATE: used once, even at once
            ctx.code_attempt_failed(self.kind)
            return Outcome(False, _("That recovery code is not valid or was already used."))
        left = unused_recovery_codes(user)
        audit.record("recovery_code.used", subject=user, remaining=left, ip=ctx.ip, user_agent=ctx.user_agent)
        enqueue("send_mail", to=user.email, template="security_notice",
                context={"name": user.name, "what": _("A recovery code was used to sign in to your account."),
                         "detail": f"{left} recovery codes are left."})
        return Outcome(True, amr=("recovery_code",))

    def section(self, user: User, confirmed: list[Factor], config: Mapping[str, Any]) -> Section:
        left = unused_recovery_codes(user)
        return Section(_("Recovery codes"),
                       summary=f"{left} unused recovery code{'' if left == 1 else 's'}. Each works once, if you "
                               "lose your other methods.",
                       actions=[Action(_("Generate new codes") if left else _("Generate recovery codes"), post=True,
                                       primary=False)])

    def enrol_verify(self, stage: str, ec: EnrolContext, data: Mapping[str, Any]) -> Enrolled:
        codes = new_recovery_codes_for(ec.user, ec.now, ec.config["IDP_SECRET_KEY"])
        return Enrolled(True, notice=_("New recovery codes were generated; the old ones no longer work."),
                        event="recovery_codes.generated",
                        show="account/recovery_codes.html", show_context={"codes": codes, "email": ec.user.email})
