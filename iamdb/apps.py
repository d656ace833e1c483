"""The Django app: ``"iamdb"`` in ``INSTALLED_APPS`` enables iamdb's system checks.

The backends work without it; the app adds what ``manage.py`` offers.
"""

from __future__ import annotations

from django.apps import AppConfig


class IamdbConfig(AppConfig):
    name = "iamdb"
    verbose_name = "iamdb"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - importing registers the checks
