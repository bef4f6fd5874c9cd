"""The discovery document and the JWK Set answered before Flask, from an answer Flask made once (issue 22).

A relying party's library fetches these documents when it starts and again whenever it meets a key it does not
know, so they are among the most frequent requests. Both are bytes prepared once: the metadata once per app (it
depends on the settings alone), the JWK Set once per change of the keys (idp.oidc.keys). What a request for them
costs is the stack around the bytes: Flask's request context and idp's hooks, five times what a bare Flask app
costs for the same document (bench/README.md, tenth pass).

So the first plain GET of each goes through Flask as every request does, and its answer (status, headers, body)
is kept. Each later plain GET gets that answer again from here, while its document is the one the answer carries,
and this middleware does what the hooks do per request for such a GET: a request id (``logs.request_id``, returned
in X-Request-ID), the request line in the log (``logs.request_line``, with the client's address resolved through
IDP_TRUSTED_PROXIES) and the request counted in the metrics (``metrics.count_request``). Everything else in the
answer (the security headers of SECURITY.md 16, CORS, ETag, Cache-Control) is what the hooks put there the first
time, and does not depend on the request. When is the document the same:
- the metadata: always, once made (the view keeps it in ``app.extensions``, with its entity tag);
- the JWK Set: while the worker's kept keys are current without a query (idp.changes: the listener connected and
  no change to the keys notified since, SECURITY.md 14). After a change, or with no listener (SQLite), requests go
  through Flask, which reads the keys and makes the answer kept next.

Anything that is not a plain GET goes through Flask: another method, a query string, a conditional request (Flask
answers 304), an Authorization header (the request line names its client), a header carrying a NUL character
(refused there, SECURITY.md 31).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask

from idp import logs, metrics
from idp.http import headers_carry_nul, resolve_client_address
from idp.oidc import keys
from idp.security.network import PEER_ADDR

# The documents answered here, by path (the route of their URL rule: the metrics' and the log's label).
METADATA = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
JWKS = "/jwks.json"
# Request headers that send a GET of a document through Flask.
_THROUGH_FLASK = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_AUTHORIZATION")


@dataclass(frozen=True)
class _Answer:
    etag: str  # of the document it carries
    status: str
    headers: list[tuple[str, str]]  # all but X-Request-ID
    body: bytes


class PreparedDocuments:
    """WSGI middleware in front of ``app.wsgi_app``: answers a plain GET of a prepared document (module docstring)."""

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.wsgi_app = wsgi_app
        self.answers: dict[str, _Answer] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (path not in METADATA and path != JWKS) or environ.get("REQUEST_METHOD") != "GET" \
                or environ.get("QUERY_STRING") or any(name in environ for name in _THROUGH_FLASK) \
                or headers_carry_nul(environ):
            return self.wsgi_app(environ, start_response)
        etag = self._current_etag(path)
        if etag is None:
            return self.wsgi_app(environ, start_response)
        answer = self.answers.get(path)
        if answer is None or answer.etag != etag:
            return self._keep(path, environ, start_response)
        return self._give(answer, path, environ, start_response)

    def _current_etag(self, path: str) -> str | None:
        """The entity tag of the document as the view would serve it now without a query, or None (not known yet,
        or the keys must be read)."""
        if path == JWKS:
            kept = keys.kept_jwks_document(app=self.app)
            return kept[1] if kept is not None else None
        prepared = self.app.extensions.get("idp.metadata")  # (document, etag), made by the view
        return prepared[1] if prepared is not None else None

    def _keep(self, path: str, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Let Flask answer, and keep its answer when it is the document's 200 with no cookie."""
        seen: list[Any] = []

        def noting(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen[:] = [status, headers]
            return start_response(status, headers, exc_info)

        result = self.wsgi_app(environ, noting)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if seen and seen[0].startswith("200 "):
            names = {name.lower(): value for name, value in seen[1]}
            etag = names.get("etag", "").strip('"')
            if "set-cookie" not in names and etag:
                kept = [(name, value) for name, value in seen[1] if name.lower() != logs.REQUEST_ID_HEADER.lower()]
                self.answers[path] = _Answer(etag, seen[0], kept, body)
        return [body]

    def _give(self, answer: _Answer, path: str, environ: dict[str, Any],
              start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        trusted = self.app.config["IDP_TRUSTED_PROXIES"]
        ip = resolve_client_address(environ, trusted)  # as Flask's hooks do: gunicorn's access log reads it
        rid = logs.request_id(environ.get("HTTP_X_REQUEST_ID", ""), environ[PEER_ADDR], trusted)
        try:
            logs.request_line("GET", path, path, 200, started, ip, None, None, rid)
            metrics.count_request("GET", path, 200, started)
        except Exception:  # (the metrics' files unwritable, say): Flask's path answers, with its error handling
            return self.wsgi_app(environ, start_response)
        start_response(answer.status, [*answer.headers, (logs.REQUEST_ID_HEADER, rid)])
        return [answer.body]
