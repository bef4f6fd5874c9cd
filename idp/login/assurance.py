"""Levels of assurance (`acr`) derived from the methods used (`amr`, RFC 8176)."""

from __future__ import annotations

from collections.abc import Iterable

ACR_PASSWORD = "urn:idp:acr:pwd"
ACR_MFA = "urn:idp:acr:mfa"
ACR_PHISHING_RESISTANT = "urn:idp:acr:phr"

# Ordered weakest first: a request for a level is met by that level or any stronger one.
LEVELS = (ACR_PASSWORD, ACR_MFA, ACR_PHISHING_RESISTANT)


def acr_for(amr: Iterable[str]) -> str:
    """The strongest level that the methods in ``amr`` reach ("" when nothing was verified)."""
    methods = set(amr)
    if methods & {"hwk", "swk"} and "user" in methods:
        return ACR_PHISHING_RESISTANT
    if "mfa" in methods:
        return ACR_MFA
    return ACR_PASSWORD if methods else ""


def meets(reached: str, requested: str) -> bool:
    """Whether level ``reached`` satisfies ``requested`` (unknown levels are never met)."""
    if requested not in LEVELS or reached not in LEVELS:
        return False
    return LEVELS.index(reached) >= LEVELS.index(requested)
