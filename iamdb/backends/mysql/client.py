"""``dbshell`` for MySQL with the current credential."""

from __future__ import annotations

from django.db.backends.mysql import client

from .._shared import CredentialsClientMixin


class DatabaseClient(client.DatabaseClient, CredentialsClientMixin):
    # MRO: Django's MySQL runshell (SIGINT handling) -> ours -> BaseDatabaseClient.
    pass
