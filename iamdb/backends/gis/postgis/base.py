"""PostGIS backend: iamdb's PostgreSQL wrapper over Django's PostGIS wrapper.

The MRO is iamdb's PostgreSQL wrapper (pool, retirement), iamdb's credentials
mixin (retry), Django's PostGIS wrapper (features, operations, introspection,
schema editor, the psycopg 3 adapters it registers on each new connection),
then Django's PostgreSQL wrapper. Nothing is written here but the combination.
"""

from __future__ import annotations

from django.contrib.gis.db.backends.postgis import base as postgis

from ...postgresql import base


class DatabaseWrapper(base.DatabaseWrapper, postgis.DatabaseWrapper):
    pass
