"""The profile phone number (OIDC Core 5.1 `phone_number`): held as verified only once a code texted to that number
is typed back in the same sign-in session; codes are capped against pumping (SECURITY.md 23) and every change is
audited and mailed (SECURITY.md 27)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

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


def send_code(user: User, raw: str, *, sid: str, ip: str | None, config: Mapping[str, Any]) -> str:
    """Text a code to the number typed; returns it in E.164 (raises PhoneRefused)."""
    phone = normalize_phone(raw)
    if phone is None:
        raise PhoneRefused("Enter a valid mobile number with its country code, like +44 7700 900123.")
    if user.phone_verified and user.phone == phone:
        raise PhoneRefused("This number is already in your profile.")
    try:
        send_sms_code(user, phone, lambda code: f"{code} is your code to add this number to your idp profile.",
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
    notify_change(user, f"The phone number {mask_phone(phone)} is now in your profile"
                        f"{', in place of the previous one' if replaced else ''}.",
                  event="profile.phone_changed", phone=mask_phone(phone), replaced=replaced,
                  next_step="Applications you allow to see your phone number will receive it.")


def remove(user: User) -> bool:
    """Take the number out of the profile (audited and mailed); False when there was none."""
    if user.phone is None:
        return False
    removed = user.phone
    user.phone = None
    notify_change(user, f"The phone number {mask_phone(removed)} was removed from your profile.",
                  event="profile.phone_removed", phone=mask_phone(removed))
    return True
