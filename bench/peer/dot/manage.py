#!/usr/bin/env python
"""Django's command line for the DOT peer: migrate, seed_bench (bench/run.py runs both with DOT's virtualenv)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchdot.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
