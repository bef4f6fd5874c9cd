"""The WSGI entry point: `gunicorn -c deploy/gunicorn.conf.py wsgi:app`.

Settings that production refuses end the process with one line and exit status 2 (issue 20), not a traceback:
gunicorn then stops with "Worker failed to boot" instead of restarting the worker forever.
"""

import sys

from idp import create_app
from idp.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    print(f"idp: configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(2)
