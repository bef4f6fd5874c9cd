"""DPoP (RFC 9449): a client proves, at every request, that it holds the private key its tokens are bound to.

A proof is a JWT in the ``DPoP`` request header (RFC 9449 4.1, 4.2), signed with the client's key, whose public
part rides in its ``jwk`` header. It names the request (``htm``, ``htu``), its time (``iat``), a value never used
before (``jti``), at a resource the access token it comes with (``ath``), and, when the server asks for one, a
server nonce (RFC 9449 8, 9). ``check`` runs RFC 9449 4.3's checks in order and answers the key's RFC 7638
thumbprint (the ``jkt``) that tokens are bound to: an access token carries it as ``cnf.jkt`` (RFC 9449 6.1), the
token row keeps it (idp.oidc.server), and a bound token is accepted only with a proof by that key (RFC 9449 7).

- ``htu`` is compared with the endpoint's URL built from IDP_ISSUER and the path (never from the Host header,
  which the client chooses), both normalised as RFC 9449 4.3 asks (RFC 3986 6.2.2 and 6.2.3: scheme and host
  case, the default port, percent-encoding case); a ``htu`` carrying a query or fragment is refused (RFC 9449
  4.2: "without query and fragment parts").
- ``iat`` may lie IDP_DPOP_LEEWAY seconds either side of the server's clock (RFC 9449 11.1).
- ``jti`` is remembered until the proof is too old to be accepted again (RFC 9449 11.1), in the ``dpop_proofs``
  table (a unique row; `idp housekeeping` purges expired ones), shared by every instance, so a proof accepted by
  one is refused by all. One store only: Redis in front with the table while Redis is down would be two memories,
  each accepting a proof the other had seen, around any Redis outage. The jti is kept per key (a hash of the jkt
  and the jti): nobody can use up another client's jti values.
- Server nonces (IDP_DPOP_NONCE) are stateless: an HMAC, under a key derived from IDP_SECRET_KEY, of the current
  NONCE_WINDOW; the current and the previous window's are accepted.

Errors: ``invalid_dpop_proof`` (RFC 9449 5: 400 at the token endpoint; 7.1: 401 with a ``WWW-Authenticate: DPoP``
challenge at a resource) and ``use_dpop_nonce`` with a ``DPoP-Nonce`` header (RFC 9449 8, 9). Nothing a client
puts in the header gives a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2 import OAuth2Error
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from flask import current_app, request
from joserfc import jws
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from werkzeug.wrappers import Response

from idp.extensions import db
from idp.models import DPoPProof, table_of, utcnow
from idp.security.tokens import token_hash

log = logging.getLogger("idp.dpop")

# RFC 9449 5.1 dpop_signing_alg_values_supported: asymmetric algorithms only (4.2: "MUST NOT be none or an
# identifier for a symmetric algorithm"), those joserfc verifies. Edwards keys as RFC 9864's fully-specified
# Ed25519: the polymorphic "EdDSA" is deprecated there, and joserfc warns on every use of it.
ALGS = ("ES256", "ES384", "PS256", "RS256", "Ed25519")
KEY_TYPES = {"ES256": "EC", "ES384": "EC", "PS256": "RSA", "RS256": "RSA", "Ed25519": "OKP"}
CURVES = {"ES256": {"P-256"}, "ES384": {"P-384"}, "Ed25519": {"Ed25519"}}
MIN_RSA_BITS = 2048
# The members of a JWK that only a private (or symmetric) key has (RFC 7518 6.2.2, 6.3.2, 6.4; RFC 8037 2).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MAX_PROOF = 8192  # a proof with an RSA 4096 key is about 1.5 KB
NONCE_WINDOW = 300  # seconds a server nonce is current; the previous one is accepted too


class _ProofRegistry(JWSRegistry):
    """joserfc's JWS rules with room for the ``jwk`` header: its default 512 bytes would refuse every RSA key.
    Header members it does not know are no error (a proof may carry ``kid``, say); ``crit`` is still honoured."""

    max_header_length = 4096
    max_payload_length = 4096

PRESENTED = "idp.dpop"  # where a request's checked proof is kept (request.environ)
_B64URL_SHA256 = re.compile(r"[A-Za-z0-9_-]{43}")


class DPoPError(OAuth2Error):
    """``invalid_dpop_proof`` (RFC 9449 5, 7.1): 400 at the token endpoint, 401 with a DPoP challenge at a
    resource. ``nonce`` adds the ``DPoP-Nonce`` header (RFC 9449 8.2, 9)."""

    error = "invalid_dpop_proof"

    def __init__(self, description: str, *, resource: bool = False, nonce: str | None = None,
                 error: str | None = None):
        super().__init__(description=description, status_code=401 if resource else 400)
        if error:
            self.error = error
        self.resource = resource
        self.nonce = nonce

    def get_headers(self) -> list[tuple[str, str]]:
        headers = super().get_headers()
        if self.resource:
            headers.append(("WWW-Authenticate", challenge(self.error, self.description or "")))
        if self.nonce:
            headers.append(("DPoP-Nonce", self.nonce))
        return headers


class UseDPoPNonce(DPoPError):
    """RFC 9449 8 and 9: the proof lacks the server's current nonce, which the DPoP-Nonce header gives."""

    error = "use_dpop_nonce"


def challenge(error: str | None = None, description: str = "") -> str:
    """RFC 9449 7.1: the ``WWW-Authenticate`` challenge of the DPoP scheme, with the algorithms accepted."""
    parts = []
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + "".join(ch for ch in description if 0x20 <= ord(ch) <= 0x7E
                                                     and ch not in '"\\') + '"')
    parts.append(f'algs="{" ".join(ALGS)}"')
    return "DPoP " + ", ".join(parts)


def error_response(error: DPoPError) -> Response:
    """A DPoPError as an OAuth error object (RFC 6749 5.2) with its headers."""
    status, body, headers = error()
    response = current_app.response_class(json.dumps(body), status=status, mimetype="application/json")
    for name, value in headers:
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@dataclass(frozen=True)
class Proof:
    """A checked proof: the RFC 7638 thumbprint of its key (what tokens are bound to) and its jti."""

    jkt: str
    jti: str


def presented() -> Proof | None:
    """The proof this request presented and ``check`` accepted (kept by the views that check one), or None."""
    return request.environ.get(PRESENTED)


def keep(proof: Proof | None) -> None:
    request.environ[PRESENTED] = proof


def access_token_hash(access_token: str) -> str:
    """RFC 9449 4.2 ``ath``: the base64url SHA-256 of the access token's ASCII."""
    return _b64(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def is_thumbprint(value: Any) -> bool:
    """Whether ``value`` has the form of a SHA-256 JWK thumbprint, base64url without padding (RFC 9449 10)."""
    return isinstance(value, str) and _B64URL_SHA256.fullmatch(value) is not None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# --- the htu ---------------------------------------------------------------------------------------------------

_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise(url: str) -> str | None:
    """``url`` after RFC 3986 6.2.2 and 6.2.3 normalisation, without query and fragment (RFC 9449 4.3 step 9);
    None for what is no http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number, a broken IPv6 literal
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in DEFAULT_PORTS or not host or parts.username is not None or parts.password is not None:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"

    def one(match: re.Match) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return f"{scheme}://{netloc}{_PERCENT.sub(one, parts.path) or '/'}"


def endpoint_url() -> str:
    """This request's URL as a proof must name it: IDP_ISSUER's origin and the request's path (RFC 9449 4.3)."""
    issuer = urlsplit(current_app.config["IDP_ISSUER"])
    return f"{issuer.scheme}://{issuer.netloc}{request.script_root}{request.path}"


# --- nonces ----------------------------------------------------------------------------------------------------

def nonces_required() -> bool:
    return bool(current_app.config["IDP_DPOP_NONCE"])


def _nonce_for(window: int) -> str:
    key = hashlib.sha256(b"idp dpop nonce\x00" + current_app.config["IDP_SECRET_KEY"].encode()).digest()
    return _b64(hmac.new(key, f"{window}".encode(), hashlib.sha256).digest()[:24])


def current_nonce(now: float | None = None) -> str:
    """The server nonce of this NONCE_WINDOW (RFC 9449 8): stateless, the same on every instance."""
    return _nonce_for(int(now if now is not None else time.time()) // NONCE_WINDOW)


def nonce_ok(value: Any, now: float | None = None) -> bool:
    """Whether ``value`` is the current window's nonce or the previous one's."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    window = int(now if now is not None else time.time()) // NONCE_WINDOW
    return any(hmac.compare_digest(value, _nonce_for(w)) for w in (window, window - 1))


# --- the jti replay cache --------------------------------------------------------------------------------------

_PROOFS = table_of(DPoPProof)


def first_use(jkt: str, jti: str, seconds: int) -> bool:
    """Remember the jti of the key ``jkt`` for ``seconds``; True for exactly one caller (RFC 9449 11.1), on any
    instance: a unique row committed at once in a transaction of its own (so that the request's own rollback, or a
    view that never commits, cannot forget it), removed by housekeeping once expired."""
    key = token_hash(f"{jkt}:{jti}")
    # The table is the one authority: Redis and the table as two caches, one used while the other is down, would
    # each accept a jti the other had seen, so a proof could be replayed around a Redis outage (review finding).
    try:
        with db.engine.begin() as connection:
            connection.execute(insert(_PROOFS), {"jti_hash": key,
                                                 "expires_at": utcnow() + timedelta(seconds=max(1, seconds))})
    except IntegrityError:
        return False
    return True


# --- the proof -------------------------------------------------------------------------------------------------

def _public_key(header: dict[str, Any], alg: str):
    """The proof's key from its ``jwk`` header: a public key of the algorithm's type (RFC 9449 4.3 steps 6, 7)."""
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise ValueError("The jwk header must be a JSON Web Key.")
    if PRIVATE_MEMBERS & set(jwk):
        raise ValueError("The jwk header must not hold a private or symmetric key.")
    if jwk.get("kty") != KEY_TYPES[alg]:
        raise ValueError(f"The jwk header must be a {KEY_TYPES[alg]} key for {alg}.")
    if alg in CURVES and jwk.get("crv") not in CURVES[alg]:
        raise ValueError(f"The jwk header's curve does not fit {alg}.")
    key = JWKRegistry.import_key(dict(jwk))
    if key.is_private:
        raise ValueError("The jwk header must not hold a private key.")
    raw = key.raw_value
    if isinstance(raw, RSAPublicKey) and raw.key_size < MIN_RSA_BITS:
        raise ValueError(f"An RSA key must have at least {MIN_RSA_BITS} bits.")
    return key


def check(*, access_token: str | None = None, resource: bool = False) -> Proof | None:
    """The proof this request carries, checked against it (RFC 9449 4.3): None when there is no DPoP header; a
    DPoPError for any failure. ``access_token`` is the token it comes with at a resource (``ath`` required)."""
    values = request.headers.getlist("DPoP")
    if not values:
        return None

    def refuse(description: str) -> DPoPError:
        return DPoPError(description, resource=resource)

    if len(values) != 1:  # step 1: "there is not more than one DPoP HTTP request header field"
        raise refuse("Send exactly one DPoP header.")
    value = values[0]
    # Step 2: one well-formed JWT (three base64url parts), of a size no real proof exceeds.
    if (not value or len(value) > MAX_PROOF or not value.isascii() or value.count(".") != 2
            or not re.fullmatch(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+", value)):
        raise refuse("The DPoP header is not one JWS in compact serialisation.")
    try:
        header = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=" * (-len(value.split(".")[0]) % 4)))
    except ValueError:  # binascii.Error and json.JSONDecodeError are ValueErrors, and so are bad UTF-8 bytes
        raise refuse("The DPoP proof's header is not JSON.") from None
    if not isinstance(header, dict):
        raise refuse("The DPoP proof's header is not a JSON object.")
    if header.get("typ") != "dpop+jwt":  # step 4
        raise refuse("The DPoP proof's typ must be dpop+jwt.")
    alg = header.get("alg")
    if alg not in ALGS:  # step 5: asymmetric, and supported
        raise refuse(f"The DPoP proof's alg must be one of {' '.join(ALGS)}.")
    try:
        key = _public_key(header, alg)
    except ValueError as exc:
        raise refuse(str(exc) if str(exc).startswith("The ") or str(exc).startswith("An ")
                     else "The jwk header is not a usable public key.") from None
    except Exception:  # noqa: BLE001 - whatever joserfc makes of a hostile key, it is no key (never a 500)
        raise refuse("The jwk header is not a usable public key.") from None
    try:  # step 7: the signature, with that key and that algorithm only
        verified = jws.deserialize_compact(value, key, registry=_ProofRegistry(algorithms=[alg],
                                                                              strict_check_header=False))
    except Exception:  # noqa: BLE001 - joserfc raises JoseError, ValueError and others for hostile input
        raise refuse("The DPoP proof's signature does not verify with its jwk.") from None
    try:
        claims = json.loads(verified.payload)
    except ValueError:
        raise refuse("The DPoP proof's payload is not JSON.") from None
    if not isinstance(claims, dict):
        raise refuse("The DPoP proof's payload is not a JSON object.")
    jti, htm, htu, iat = claims.get("jti"), claims.get("htm"), claims.get("htu"), claims.get("iat")
    # Step 3: the required claims.
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        raise refuse("The DPoP proof needs a jti of 1 to 256 characters.")
    if htm != request.method:  # step 8
        raise refuse("The DPoP proof's htm is not this request's method.")
    if not isinstance(htu, str) or len(htu) > 2048:
        raise refuse("The DPoP proof needs an htu.")
    parts = urlsplit(htu) if htu.isascii() else None
    if parts is None or parts.query or parts.fragment or "?" in htu or "#" in htu:
        raise refuse("The DPoP proof's htu must be the endpoint's URL without query and fragment.")
    expected = normalise(endpoint_url())
    if normalise(htu) is None or normalise(htu) != expected:  # step 9
        raise refuse("The DPoP proof's htu is not this endpoint's URL.")
    now = time.time()
    leeway = int(current_app.config["IDP_DPOP_LEEWAY"])
    try:  # an int beyond any float (10**400) is no time either, and must not raise OverflowError here
        moment = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else math.nan
    except OverflowError:
        moment = math.nan
    if not math.isfinite(moment) or abs(now - moment) > leeway:  # step 11
        raise refuse("The DPoP proof's iat is missing or outside the accepted time window.")
    if access_token is not None:  # step 12: ath at a resource
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, access_token_hash(access_token)):
            raise refuse("The DPoP proof's ath does not match the access token.")
    if nonces_required() and not nonce_ok(claims.get("nonce"), now):  # step 10
        raise UseDPoPNonce("Send the DPoP-Nonce value as the proof's nonce.", resource=resource,
                           nonce=current_nonce(now))
    try:
        jkt = key.thumbprint()  # RFC 7638, SHA-256
    except Exception:  # noqa: BLE001 - a key joserfc imported but cannot serialise
        raise refuse("The jwk header is not a usable public key.") from None
    # Step 11 (11.1): the jti once, for as long as the proof could be accepted.
    if not first_use(jkt, jti, int(moment + leeway - now) + 1):
        raise refuse("The DPoP proof's jti was used already.")
    return Proof(jkt=jkt, jti=jti)


def add_nonce(response: Response) -> Response:
    """A fresh nonce on a response to a DPoP request when nonces are on (RFC 9449 8.2), so the next proof has it."""
    if nonces_required():
        response.headers["DPoP-Nonce"] = current_nonce()
    return response
