"""One-time codes sent by SMS or email inside a sign-in: bound to the transaction, hashed, short-lived,
limited attempts, resend after a cooldown (SECURITY.md 23); SMS also capped against pumping."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
from flask import current_app
from flask_babel import format_timedelta
from flask_babel import gettext as _

from idp import audit
from idp.extensions import limiter
from idp.jobs import enqueue
from idp.login import onetime
from idp.login.context import Outcome, StepContext
from idp.login.throttle import Throttle
from idp.login.transaction import update
from idp.models import OneTimeToken, User
from idp.models.types import utcnow


class SmsRefused(Exception):
    """The message would exceed a cap, or SMS is not available; the text is for the user."""


def sms_caps() -> Throttle:
    """Daily caps per number, per user and per destination country (SMS pumping, SECURITY.md 23)."""
    cfg = current_app.config
    return Throttle(limiter.limiter, {"number": cfg["IDP_SMS_CAP_NUMBER"], "user": cfg["IDP_SMS_CAP_USER"],
                                      "country": cfg["IDP_SMS_CAP_COUNTRY"]},
                    prefix=cfg.get("RATELIMIT_KEY_PREFIX", "idp"))


def normalize_phone(raw: str, region: str | None = None) -> str | None:
    """The number in E.164, or None when it is not a valid number. It may be typed as people write it, with spaces,
    dots, dashes and brackets ("+44 7700 900123", "(555) 010-4477"); without a +country code it is read in
    ``region`` (IDP_DEFAULT_PHONE_REGION), and refused when there is none."""
    try:
        number = phonenumbers.parse((raw or "").strip()[:64], region or None)
    except phonenumbers.NumberParseException:
        return None
    # Possible (a plausible length for its country), not "valid" by the library's list of allocated ranges: that
    # list lags behind the numbering plans and refuses the reserved ranges people test with; a number that does
    # not exist simply never gets its code.
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(phone: str) -> str:
    """+447700900123 -> +44 ••• ••• 123: enough to recognise, not to harvest."""
    return f"{phone[:3]} ••• ••• {phone[-3:]}" if len(phone) > 6 else "•••"


def send_sms_code(user: User, phone: str, body_for_code, *, purpose: str, ttl: int, transaction_id: str | None,
                  ip: str | None = None) -> None:
    """Issue a code for ``phone``, check the caps, and enqueue the text (raises SmsRefused)."""
    cfg = current_app.config
    if cfg["IDP_SMS_BACKEND"] == "disabled":
        raise SmsRefused(_("Text messages are not available on this server."))
    country = str(phonenumbers.parse(phone, None).country_code)
    keys = {"number": hashlib.sha256(phone.encode()).hexdigest()[:32], "user": str(user.id), "country": country}
    caps = sms_caps()
    if caps.retry_after("sms", keys):
        audit.record("sms.capped", subject=user, country=country, ip=ip, durable=True)
        raise SmsRefused(_("Too many text messages were sent. Try another method, or try again tomorrow."))
    caps.failed("sms", keys)  # counts one message against every cap
    issued = onetime.issue(purpose, user, now=utcnow(), ttl=ttl, secret_key=cfg["IDP_SECRET_KEY"],
                           link=False, code=True, transaction_id=transaction_id)
    issued.row.email = phone  # the destination the code went to
    enqueue("send_sms", to=phone, body=body_for_code(issued.code))


def check_phone_code(purpose: str, channel: str, user: User, phone: str, code: str, *, now: datetime,
                     config: Mapping[str, Any]) -> OneTimeToken:
    """The code texted to ``phone`` for ``user`` on ``channel``, if ``code`` is it (counts the attempt; raises
    CodeRejected): a code proves only the number it was sent to."""
    row = onetime.check_code(purpose, channel, code, now=now, secret_key=config["IDP_SECRET_KEY"],
                             max_attempts=config["IDP_CODE_MAX_ATTEMPTS"])
    if row.user_id != user.id or row.email != phone:
        raise onetime.CodeRejected(_("That code was for another number. Send a new one."))
    return row


class CodeDelivery(ABC):
    """Shared behaviour of steps that send a code (SMS, email): send once, resend after cooldown, check."""

    purpose: str

    @abstractmethod
    def deliver(self, ctx: StepContext) -> None:
        """Issue and send the code (each step says how)."""

    def sent_at(self, ctx: StepContext) -> float | None:
        """When this transaction's last code for the step was sent (POSIX time), if ever."""
        return ctx.state.code_sent_at.get(self.purpose)

    def ensure_sent(self, ctx: StepContext) -> str | None:
        """Send the first code for this transaction; returns an error message if it could not be sent."""
        if self.sent_at(ctx):
            return None
        return self._send(ctx)

    def _send(self, ctx: StepContext) -> str | None:
        try:
            self.deliver(ctx)
        except SmsRefused as refused:
            return str(refused)
        update(ctx.txn, code_sent_at={**ctx.state.code_sent_at, self.purpose: ctx.now.timestamp()})
        return None

    def resend(self, ctx: StepContext) -> str | None:
        sent_at = self.sent_at(ctx)
        cooldown = ctx.config["IDP_RESEND_COOLDOWN"]
        if sent_at is not None and ctx.now.timestamp() - sent_at < cooldown:
            wait = timedelta(seconds=int(cooldown - (ctx.now.timestamp() - sent_at)) + 1)
            return _("Please wait %(wait)s before asking again.",
                     wait=format_timedelta(wait, threshold=1.1, add_direction=False))
        return self._send(ctx) or _("We sent a new code.")

    def check(self, ctx: StepContext, code: str, amr: tuple[str, ...]) -> Outcome:
        """Verify a typed code for this transaction, with per-account attempt limits."""
        blocked = ctx.code_attempts_blocked()
        if blocked:
            return blocked
        try:
            onetime.check_code(self.purpose, ctx.txn.id, code, now=ctx.now, secret_key=ctx.config["IDP_SECRET_KEY"],
                               max_attempts=ctx.config["IDP_CODE_MAX_ATTEMPTS"])
        except onetime.CodeRejected as rejected:
            ctx.code_attempt_failed(self.purpose)
            return Outcome(False, str(rejected))
        return Outcome(True, amr=amr)
