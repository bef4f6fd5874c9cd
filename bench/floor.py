"""The serving stack's floor for bench/run.py: what gunicorn, and gunicorn with Flask, cost per request before any
of idp's own code runs. Both answer every request with the same bytes as idp's discovery document (the file named
by BENCH_FLOOR_DOC), so they compare with the discovery row and with the peer's rows:

    gunicorn -w 2 --chdir bench floor:wsgi_app      # a plain WSGI callable
    gunicorn -w 2 --chdir bench floor:flask_app     # a bare Flask app: one view returning the document
"""

from __future__ import annotations

import os

from flask import Flask, Response

DOCUMENT = open(os.environ["BENCH_FLOOR_DOC"], "rb").read()  # noqa: SIM115 - read once at import
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(DOCUMENT)))]


def wsgi_app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [DOCUMENT]


flask_app = Flask(__name__)


@flask_app.get("/<path:anything>")
def document(anything: str) -> Response:
    return Response(DOCUMENT, mimetype="application/json")
