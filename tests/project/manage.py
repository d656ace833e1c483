#!/usr/bin/env python
"""manage.py of the small project the tests drive through Django's own commands."""

from __future__ import annotations

import multiprocessing
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")
    start_method = os.environ.get("IAMDB_TEST_START_METHOD")
    if start_method:  # "spawn": the parallel test runner then pickles the settings
        multiprocessing.set_start_method(start_method, force=True)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
