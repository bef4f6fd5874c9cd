"""The profile phone number (OIDC Core 5.1 `phone_number`): held as verified only once a code texted to that number
is typed back in the same sign-in session; codes are capped against pumping (SECURITY.md 23) and every change is
audited and mailed (SECURITY.md 27)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask_babel import gettext as _

from idp.i18n import product_name
from idp.login import onetime
from idp.login.codes import SmsRefused, check_phone_code, mask_phone, normalize_phone, send_sms_code
from idp.login.enrolment import notify_change
from idp.models import User

PURPOSE = "profile_phone"


class PhoneRefused(Exception):
    """The number or the code was not accepted; the text is for the user."""


def channel(sid: str) -> str:
    """What a code is bound to: the sign-in session that asked for it (another browser cannot use it)."""
    return f"profile-phone:{sid}"


def profile_text(code: str) -> str:
    """The text message that proves a profile number."""
    return _("%(code)s is your code to add this number to your %(product)s profile.", code=code,
             product=product_name())


def send_code(user: User, raw: str, *, sid: str, ip: str | None, config: Mapping[str, Any]) -> str:
    """Text a code to the number typed; returns it in E.164 (raises PhoneRefused)."""
    phone = normalize_phone(raw, config["IDP_DEFAULT_PHONE_REGION"])
    if phone is None:
        raise PhoneRefused(_("Enter a valid mobile number with its country code, like +44 7700 900123."))
    if user.phone_verified and user.phone == phone:
        raise PhoneRefused(_("This number is already in your profile."))
    try:
        send_sms_code(user, phone, profile_text,
                      purpose=PURPOSE, ttl=config["IDP_SMS_CODE_TTL"], transaction_id=channel(sid), ip=ip)
    except SmsRefused as refused:
        raise PhoneRefused(str(refused)) from refused
    return phone


def confirm(user: User, phone: str, code: str, *, sid: str, now: datetime, config: Mapping[str, Any]) -> None:
    """Save ``phone`` as the verified profile number if ``code`` is the newest one texted to it for this session
    (each wrong code counts; raises PhoneRefused)."""
    try:
        check_phone_code(PURPOSE, channel(sid), user, phone, code, now=now, config=config)
    except onetime.CodeRejected as rejected:
        raise PhoneRefused(str(rejected)) from rejected
    replaced = user.phone is not None
    user.set_verified_phone(phone, now)
    what = (_("The phone number %(number)s is now in your profile, in place of the previous one.",
                number=mask_phone(phone)) if replaced
            else _("The phone number %(number)s is now in your profile.", number=mask_phone(phone)))
    notify_change(user, what,
                  event="profile.phone_changed", phone=mask_phone(phone), replaced=replaced,
                  next_step=_("Applications you allow to see your phone number will receive it."))


def remove(user: User) -> bool:
    """Take the number out of the profile (audited and mailed); False when there was none."""
    if user.phone is None:
        return False
    removed = user.phone
    user.phone = None
    notify_change(user, _("The phone number %(number)s was removed from your profile.",
                          number=mask_phone(removed)),
                  event="profile.phone_removed", phone=mask_phone(removed))
    return True
