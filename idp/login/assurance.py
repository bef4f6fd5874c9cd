"""Levels of assurance (`acr`) derived from the methods used (`amr`, RFC 8176).

- `urn:idp:acr:pwd`: a password alone.
- `urn:idp:acr:mfa`: a password plus a factor that counts toward MFA (each factor says whether it does: TOTP
  `otp`, `sms`, WebAuthn `hwk`/`swk`, a recovery code), or a phishing-resistant factor with user verification
  (a passkey), or a remembered device that was proven with such a factor.
- `urn:idp:acr:phr`: a phishing-resistant factor (WebAuthn `hwk` or `swk`) with user verification (`user`).

An emailed code (`email_otp`) never counts toward `mfa` (SECURITY.md 24): its factor says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from idp.login.factors import REGISTRY

ACR_PASSWORD = "urn:idp:acr:pwd"
ACR_MFA = "urn:idp:acr:mfa"
ACR_PHISHING_RESISTANT = "urn:idp:acr:phr"

# Ordered weakest first: a request for a level is met by that level or any stronger one.
LEVELS = (ACR_PASSWORD, ACR_MFA, ACR_PHISHING_RESISTANT)



def complete_amr(amr: Iterable[str]) -> list[str]:
    """``amr`` with "mfa" added when the methods are two factors: a password and a factor that counts toward MFA,
    or a phishing-resistant factor with user verification."""
    methods = list(dict.fromkeys(amr))
    present = set(methods)
    if "mfa" not in present and (("pwd" in present and present & REGISTRY.mfa_amr()) or
                                 (present & REGISTRY.phishing_resistant_amr() and "user" in present)):
        methods.append("mfa")
    return methods


def acr_for(amr: Iterable[str]) -> str:
    """The strongest level that the methods in ``amr`` reach ("" when nothing was verified)."""
    methods = set(complete_amr(amr))
    if methods & REGISTRY.phishing_resistant_amr() and "user" in methods:
        return ACR_PHISHING_RESISTANT
    if "mfa" in methods:
        return ACR_MFA
    return ACR_PASSWORD if methods else ""


def meets(reached: str, requested: str) -> bool:
    """Whether level ``reached`` satisfies ``requested`` (unknown levels are never met)."""
    if requested not in LEVELS or reached not in LEVELS:
        return False
    return LEVELS.index(reached) >= LEVELS.index(requested)


def strongest(levels: Iterable[str]) -> str:
    """The highest of some known levels ("" when none)."""
    known = [level for level in levels if level in LEVELS]
    return max(known, key=LEVELS.index) if known else ""


def weakest(levels: Iterable[str]) -> str:
    """The lowest of some known levels ("" when none): any requested acr value is acceptable (OIDC Core 3.1.2.1)."""
    known = [level for level in levels if level in LEVELS]
    return min(known, key=LEVELS.index) if known else ""
