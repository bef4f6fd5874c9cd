"""TOTP (RFC 6238) and recovery codes. Time is a parameter, so tests never sleep."""

from __future__ import annotations

import secrets
import unicodedata
from datetime import datetime

import pyotp

TOTP_DIGITS = 6
TOTP_PERIOD = 30
DRIFT_STEPS = 1  # SECURITY.md 22: at most one step of clock drift either way
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: easy to copy by hand


def new_totp_secret() -> str:
    """A base32 TOTP seed of 160 bits (RFC 4226 4: at least 128, 160 recommended)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app scans."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(name=account,
                                                                                         issuer_name=issuer)


def typed_code(raw: str | None) -> str:
    """A code as the user meant it: NFKC folds the digits some keyboards type (fullwidth １２３) into ASCII ones,
    and spaces anywhere are dropped ("123 456")."""
    return "".join(unicodedata.normalize("NFKC", raw or "").split())


def totp_step_at(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step ``code`` is valid for at ``now`` (within the drift), or None; a step not after
    ``last_step`` is refused, so a code is accepted once (replay within its window fails)."""
    code = typed_code(code)
    if not (code.isascii() and code.isdigit()) or len(code) != TOTP_DIGITS:  # other scripts' digits included
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)
    current = totp.timecode(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if secrets.compare_digest(totp.generate_otp(step), code):
            if last_step is not None and step <= last_step:
                return None
            return step
    return None


def totp_code_at(secret: str, now: datetime) -> str:
    """The code an authenticator shows at ``now`` (for tests and enrolment checks)."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).at(now)


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """Single-use recovery codes like ``k7qm-x2pd-9hwt`` (about 73 bits each)."""
    return ["-".join("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(4)) for _ in range(3))
            for _ in range(count)]


def normalize_recovery_code(code: str) -> str:
    """How a typed recovery code is compared: lower case, no spaces, dashes where they belong."""
    raw = "".join(ch for ch in (code or "").lower() if ch.isalnum())
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))
