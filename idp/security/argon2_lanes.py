"""argon2id verification with every lane on one thread: the one place idp calls argon2's C core directly.

Why not ``PasswordHasher.verify``: the thread count is not an input of argon2 (RFC 9106 3.1: ``p`` is how many
lanes *can* run in parallel), so any count gives the same digest. argon2-cffi starts one thread per lane, and the
threads wait for each other at the 12 synchronisation points of a t=3 hash. gunicorn already runs one worker per
core: under load those waits left cores idle. One thread per hash gave about 9% more sign-ins per second on the
bench's 2-core box (a lone hash is slower: 135 ms instead of 90 ms there). argon2-cffi's public API has no thread
setting, so this module builds argon2's own ``argon2_context`` through the bindings argon2-cffi ships.

tests/test_security_unit.py checks it against argon2-cffi both ways (matching and not, over random passwords and
parameters), so that it can never accept what the library would refuse or the reverse.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

from argon2.low_level import Type, core, ffi, lib

VERIFY_THREADS = 1

# The encoded form argon2 writes (PHC string format): variant, version, cost, then salt and digest in unpadded
# standard base64. Only the canonical spelling is verified here (ASCII digits without leading zeros, base64 that
# encodes back to itself); any other spelling never matches, as with argon2-cffi, whose C decoder refuses it too.
_NUMBER = r"(?:0|[1-9][0-9]{0,9})"
ARGON2ID = re.compile(rf"\$argon2id\$v=(?P<v>{_NUMBER})\$m=(?P<m>{_NUMBER}),t=(?P<t>{_NUMBER}),p=(?P<p>{_NUMBER})"
                      r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<digest>[A-Za-z0-9+/]+)")


def verify_argon2id(encoded: str, secret: bytes) -> bool | None:
    """Whether ``secret`` matches the argon2id hash ``encoded``; None when ``encoded`` is not argon2id's canonical
    form (the caller hands it to argon2-cffi). Raises binascii.Error or OverflowError on a malformed hash."""
    match = ARGON2ID.fullmatch(encoded)
    if match is None:
        return None
    salt, digest = _b64(match["salt"]), _b64(match["digest"])
    out = ffi.new("uint8_t[]", len(digest))
    pwd, salt_buf = ffi.new("uint8_t[]", secret), ffi.new("uint8_t[]", salt)
    context = ffi.new("argon2_context *", {  # a field out of its C type's range raises OverflowError
        "out": out, "outlen": len(digest), "pwd": pwd, "pwdlen": len(secret), "salt": salt_buf,
        "saltlen": len(salt), "secret": ffi.NULL, "secretlen": 0, "ad": ffi.NULL, "adlen": 0,
        "t_cost": int(match["t"]), "m_cost": int(match["m"]), "lanes": int(match["p"]), "threads": VERIFY_THREADS,
        "version": int(match["v"]), "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL,
        "flags": lib.ARGON2_DEFAULT_FLAGS,
    })
    if core(context, Type.ID.value) != lib.ARGON2_OK:  # parameters out of argon2's range, or no memory
        return False
    return hmac.compare_digest(bytes(ffi.buffer(out, len(digest))), digest)


def _b64(value: str) -> bytes:
    raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    if base64.b64encode(raw).rstrip(b"=").decode() != value:  # unused low bits set: not what argon2 writes
        raise binascii.Error("not canonical base64")
    return raw
