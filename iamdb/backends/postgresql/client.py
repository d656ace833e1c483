"""``dbshell`` for PostgreSQL with the current credential."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.backends.postgresql import client

from .._shared import CredentialsClientMixin


class DatabaseClient(client.DatabaseClient, CredentialsClientMixin):
    # MRO: Django's PostgreSQL runshell (SIGINT handling) -> ours -> BaseDatabaseClient.

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        """Django's, plus OPTIONS' ``hostaddr`` as PGHOSTADDR (Django's dbshell drops it): psql
        then reaches that address while TLS and a signed token name HOST (Aurora DSQL)."""
        args, env = super().settings_to_cmd_args_env(settings_dict, parameters)
        hostaddr = (settings_dict.get("OPTIONS") or {}).get("hostaddr")
        if hostaddr:
            env = {**(env or {}), "PGHOSTADDR": str(hostaddr)}
        return args, env
