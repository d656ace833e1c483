"""``dbshell`` for PostgreSQL with the current credential."""

from __future__ import annotations

from django.db.backends.postgresql import client

from .._shared import CredentialsClientMixin


class DatabaseClient(client.DatabaseClient, CredentialsClientMixin):
    # MRO: Django's PostgreSQL runshell (SIGINT handling) -> ours -> BaseDatabaseClient.
    pass
