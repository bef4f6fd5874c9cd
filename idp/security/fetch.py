"""Fetching a document a client registered (a request object at its ``request_uri``, its JWK Set at its
``jwks_uri``), within bounds: an address that answers slowly, endlessly or with a redirect elsewhere must not hold a
worker or make idp fetch what nobody registered.

requests offers timeouts per socket operation but no bound on a whole response or its size, so the body is read one
socket read at a time against a deadline and a byte limit here; redirects are never followed (RFC 9101 10.4.2 for
request objects; a JWK Set has no reason to move either), and content encodings are refused (``identity``), so the
limit counts the bytes that arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterable


class FetchFailed(Exception):
    """The document could not be fetched within the bounds; the message says why, for the caller's error."""


def bounded_get(uri: str, *, media_types: Iterable[str], max_bytes: int, seconds: float) -> bytes:
    """GET ``uri``: answered 200, with one of ``media_types``, at most ``max_bytes`` within ``seconds`` in all, no
    redirect followed. Raises FetchFailed."""
    import requests

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
