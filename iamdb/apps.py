"""The Django app: ``"iamdb"`` in ``INSTALLED_APPS`` enables iamdb's system checks, and
its OpenTelemetry metrics when opentelemetry-api is installed (:mod:`iamdb.otel`).

The backends work without it; the app adds what ``manage.py`` offers.
"""

from __future__ import annotations

from django.apps import AppConfig


class IamdbConfig(AppConfig):
    name = "iamdb"
    verbose_name = "iamdb"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - importing registers the checks
        from .otel import _enable_if_installed

        _enable_if_installed()
