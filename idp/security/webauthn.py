"""WebAuthn ceremonies over the `webauthn` package: options out, verified credentials in (SECURITY.md 25).

Pure functions: the caller stores the challenge (single use, bound to a login transaction or a session) and
passes it back; RP ID and origin come from the issuer.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)


class WebAuthnFailed(Exception):
    """One opaque error for every verification failure."""


@dataclass(frozen=True)
class RelyingParty:
    """Who we are to the authenticator."""

    rp_id: str
    origin: str
    name: str = "idp"
    # Android apps whose passkey ceremonies are accepted besides the web origin (android_origin below).
    app_origins: tuple[str, ...] = ()

    @property
    def origins(self) -> list[str]:
        """Every origin a ceremony's clientDataJSON may name: the issuer's, then the Android apps'."""
        return [self.origin, *self.app_origins]


def relying_party(issuer: str, rp_id: str = "") -> RelyingParty:
    """The RP ID is the issuer's host (or the configured one); the origin is the issuer's scheme and host."""
    parts = urlsplit(issuer)
    return RelyingParty(rp_id=rp_id or (parts.hostname or ""), origin=f"{parts.scheme}://{parts.netloc}")


def android_origin(sha256_fingerprint: str) -> str:
    """The origin Android's Credential Manager puts in clientDataJSON for a native app: ``android:apk-key-hash:``
    followed by the base64url (unpadded) SHA-256 of the app's signing certificate, the same 32 bytes that Digital
    Asset Links lists as colon-separated hex (``14:6D:E9:...``). Android's documentation of passkeys in apps ("Verify
    the origin" of a credential request) defines the form; WebAuthn L3 5.8.1 leaves non-web origins to the
    platform."""
    raw = bytes.fromhex(sha256_fingerprint.replace(":", ""))
    if len(raw) != 32:
        raise ValueError("a SHA-256 fingerprint is 32 bytes")
    return "android:apk-key-hash:" + bytes_to_base64url(raw)


def usable_rp_id(rp: RelyingParty) -> bool:
    """Whether browsers accept this RP ID: a host name, never an IP address (WebAuthn Level 2, 5.1.3 / 5.1.4.1)."""
    try:
        ipaddress.ip_address(rp.rp_id.strip("[]"))
    except ValueError:
        return bool(rp.rp_id)
    return False


def new_challenge() -> str:
    """A 256-bit random challenge, base64url."""
    return bytes_to_base64url(secrets.token_bytes(32))


def registration_options(rp: RelyingParty, *, user_handle: str, user_name: str, display_name: str,
                         challenge: str, exclude: list[str], passkey: bool) -> str:
    """Options JSON for navigator.credentials.create(); a passkey is discoverable and user-verifying."""
    options = generate_registration_options(
        rp_id=rp.rp_id, rp_name=rp.name, user_id=user_handle.encode(), user_name=user_name,
        user_display_name=display_name or user_name, challenge=base64url_to_bytes(challenge),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED if passkey else ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.REQUIRED if passkey
            else UserVerificationRequirement.PREFERRED),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=base64url_to_bytes(c)) for c in exclude],
    )
    return options_to_json(options)


@dataclass(frozen=True)
class Registered:
    """A verified new credential."""

    credential_id: str
    public_key: str
    sign_count: int
    backed_up: bool
    user_verified: bool


def verify_registration(rp: RelyingParty, credential_json: str, challenge: str) -> Registered:
    """Check a registration response against the challenge, origin and RP ID."""
    try:
        result = verify_registration_response(credential=credential_json, expected_challenge=base64url_to_bytes(
            challenge), expected_rp_id=rp.rp_id, expected_origin=rp.origins)
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:  # malformed JSON, CBOR, keys...
        raise WebAuthnFailed(str(exc)) from None
    return Registered(credential_id=bytes_to_base64url(result.credential_id),
                      public_key=bytes_to_base64url(result.credential_public_key), sign_count=result.sign_count,
                      backed_up=result.credential_backed_up or
                      result.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
                      user_verified=result.user_verified)


def authentication_options(rp: RelyingParty, *, challenge: str, allow: list[str], require_uv: bool) -> str:
    """Options JSON for navigator.credentials.get(); an empty ``allow`` lets a passkey pick the account."""
    options = generate_authentication_options(
        rp_id=rp.rp_id, challenge=base64url_to_bytes(challenge),
        allow_credentials=[PublicKeyCredentialDescriptor(id=base64url_to_bytes(c)) for c in allow],
        user_verification=UserVerificationRequirement.REQUIRED if require_uv
        else UserVerificationRequirement.PREFERRED)
    return options_to_json(options)


CREDENTIAL_ID = re.compile(r"[A-Za-z0-9_-]{1,1400}")  # WebAuthn: at most 1023 bytes, so 1,364 in base64url


def credential_id_of(credential_json: str) -> str:
    """The credential id a response claims to be from (to look up its public key)."""
    try:
        claimed = json.loads(credential_json)["id"]
    except (ValueError, KeyError, TypeError):
        raise WebAuthnFailed("malformed credential") from None
    if not isinstance(claimed, str) or not CREDENTIAL_ID.fullmatch(claimed):  # base64url, as every id we store
        raise WebAuthnFailed("malformed credential")
    return claimed


@dataclass(frozen=True)
class Asserted:
    """A verified assertion."""

    new_sign_count: int
    user_verified: bool


def verify_authentication(rp: RelyingParty, credential_json: str, challenge: str, *, public_key: str,
                          sign_count: int, require_uv: bool) -> Asserted:
    """Check an assertion: challenge, origin, RP ID, signature, and that the signature counter moved on."""
    try:
        result = verify_authentication_response(
            credential=credential_json, expected_challenge=base64url_to_bytes(challenge), expected_rp_id=rp.rp_id,
            expected_origin=rp.origins, credential_public_key=base64url_to_bytes(public_key),
            credential_current_sign_count=sign_count, require_user_verification=require_uv)
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise WebAuthnFailed(str(exc)) from None
    return Asserted(new_sign_count=result.new_sign_count, user_verified=result.user_verified)


def amr_for(backed_up: bool, user_verified: bool) -> tuple[str, ...]:
    """RFC 8176 values: a synced passkey is a software key (`swk`), else hardware (`hwk`); `user` when verified."""
    return ("swk" if backed_up else "hwk",) + (("user",) if user_verified else ())
