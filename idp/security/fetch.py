"""Fetching a document a client registered (a request object at its ``request_uri``, its JWK Set at its
``jwks_uri``), within bounds: an address that answers slowly, endlessly or with a redirect elsewhere must not hold a
worker or make idp fetch what nobody registered.

requests offers timeouts per socket operation but no bound on a whole response or its size, so the body is read one
socket read at a time against a deadline and a byte limit here; redirects are never followed (RFC 9101 10.4.2 for
request objects; a JWK Set has no reason to move either), and content encodings are refused (``identity``), so the
limit counts the bytes that arrive.

Where the address may lead (SSRF): the URL is a client's, and with dynamic registration open a stranger's. In
production (``public_only``) every address its host resolves to must be a global unicast address: no loopback,
private, link-local (cloud metadata at 169.254.169.254), shared or reserved range, so that a registered URL cannot
make idp reach its own host's or network's services. The check runs just before the request; a DNS answer that
changes in between (rebinding) would still have to present a valid certificate for the registered https host name,
which an internal service does not have. Development and testing allow loopback (the tests' key and logout servers).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable
from urllib.parse import urlsplit


class FetchFailed(Exception):
    """The document could not be fetched within the bounds; the message says why, for the caller's error."""


def check_destination(uri: str, *, public_only: bool) -> None:
    """Refuse ``uri`` (FetchFailed) when ``public_only`` and its host resolves to any address that is not global."""
    if not public_only:
        return
    parts = urlsplit(uri)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchFailed("could not be fetched (the host does not resolve)") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            raise FetchFailed("is not fetched: its host is not a public address")


def bounded_get(uri: str, *, media_types: Iterable[str], max_bytes: int, seconds: float,
                public_only: bool = True) -> bytes:
    """GET ``uri``: answered 200, with one of ``media_types``, at most ``max_bytes`` within ``seconds`` in all, no
    redirect followed, to a public address only when ``public_only``. Raises FetchFailed."""
    import requests

    check_destination(uri, public_only=public_only)

    allowed = tuple(media_types)
    deadline = time.monotonic() + seconds
    body = bytearray()
    try:
        with requests.get(uri, timeout=(seconds, seconds), allow_redirects=False, stream=True,
                          headers={"Accept": ", ".join(allowed), "Accept-Encoding": "identity"}) as response:
            if response.status_code != 200:
                raise FetchFailed(f"answered {response.status_code} (no redirect is followed)")
            media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media_type not in allowed:
                raise FetchFailed(f"answered {media_type or 'no media type'}, not {' or '.join(allowed)}")
            while chunk := response.raw.read1(8192):  # one socket read at a time, so the deadline is seen
                body += chunk
                if len(body) > max_bytes:
                    raise FetchFailed("the answer is too large")
                if time.monotonic() > deadline:
                    raise FetchFailed("the answer took too long")
    except (requests.RequestException, OSError, ValueError):  # refused, reset, timed out, not HTTP
        raise FetchFailed("could not be fetched") from None
    return bytes(body)
