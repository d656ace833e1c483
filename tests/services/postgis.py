"""A private PostgreSQL server with PostGIS enabled in ``template1``.

``CREATE EXTENSION postgis`` needs a superuser. With the extension in
``template1``, every database created afterwards has it, including the test
databases Django's test runner creates for a user that is not a superuser.
"""

from __future__ import annotations

from tests.services.postgres import PrivatePostgres


class PostgisServer(PrivatePostgres):
    def postgis_available(self) -> bool:
        """Whether the PostGIS extension is installed on this machine (Debian:
        ``postgresql-15-postgis-3``)."""
        return self.sql("SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'") == "1"

    def enable_postgis(self, dbname: str = "template1") -> None:
        self.sql("CREATE EXTENSION IF NOT EXISTS postgis", dbname=dbname)
