"""MySQL / MariaDB spatial backend: iamdb's MySQL wrapper over Django's GIS one.

The MRO is iamdb's MySQL wrapper (its dbshell client and test-database creation
classes), iamdb's credentials mixin (retry, retirement), Django's GIS MySQL
wrapper (features, operations, introspection, schema editor), then Django's
MySQL wrapper. Nothing is written here but the combination.
"""

from __future__ import annotations

from django.contrib.gis.db.backends.mysql import base as gis_mysql

from ...mysql import base


class DatabaseWrapper(base.DatabaseWrapper, gis_mysql.DatabaseWrapper):
    pass
