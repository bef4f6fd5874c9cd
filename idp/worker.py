"""The entry point RQ workers call for every idp job (``idp.jobs.ENTRY_POINT``).

Under ``idp worker`` the job runs in the worker's app context; a worker started some other way (``rq worker``)
gets an app built from the environment, as ``wsgi.py`` builds it.
"""

from __future__ import annotations

from typing import Any

from flask import has_app_context
from rq import get_current_job

from idp import create_app
from idp.jobs import run_reporting


def execute(name: str, kwargs: dict[str, Any]) -> None:
    """Run the registered job ``name`` in an app context, auditing each failed attempt."""
    if has_app_context():
        return run_reporting(name, kwargs, get_current_job())
    with create_app().app_context():
        return run_reporting(name, kwargs, get_current_job())
