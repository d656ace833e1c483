"""Settings of the test project for ``manage.py check``: ``"iamdb"`` in ``INSTALLED_APPS``
and, chosen by ``IAMDB_CHECKS_SCENARIO``, a correct or a faulty ``DATABASES``.

- ``good``: ``default`` is the project's real database (a callable source reading a
  password file, as in :mod:`tests.project.settings`), and one entry per other
  source kind configured as the docs say (never connected to: the checks are offline);
- ``bad``: one mistake per entry, each with the id the tests expect (PostgreSQL only: from
  Django 6.1, ``manage.py check`` runs the field checks of every database, and MySQL's
  connect);
- ``no_mysqldb``: an iamdb MySQL engine in a process where MySQLdb cannot be imported.

``IAMDB_CHECKS_APP=0`` leaves ``"iamdb"`` out of ``INSTALLED_APPS``.
"""

from __future__ import annotations

import os
import sys

from iamdb.sources import CallableSource, RdsIamToken, SecretsManagerSecret, VaultDatabaseCredentials
from tests.project.settings import DATABASES as PROJECT_DATABASES
from tests.project.settings import DEFAULT_AUTO_FIELD, SECRET_KEY, USE_TZ, read_password

__all__ = ["DATABASES", "DEFAULT_AUTO_FIELD", "INSTALLED_APPS", "SECRET_KEY", "USE_TZ"]

SCENARIO = os.environ.get("IAMDB_CHECKS_SCENARIO", "good")
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
if os.environ.get("IAMDB_CHECKS_APP", "1") == "1":
    INSTALLED_APPS.append("iamdb")

TLS_PG = {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/rds-ca.pem"}
TLS_MYSQL = {"ssl": {"ca": "/etc/ssl/rds-ca.pem"}, "ssl_mode": "VERIFY_IDENTITY"}
RDS_HOST = "app.abc123xyz.us-east-1.rds.amazonaws.com"


def _entry(engine: str, password: object, **extra: object) -> dict[str, object]:
    return {
        "ENGINE": engine,
        "HOST": RDS_HOST,
        "NAME": "app",
        "USER": "app",
        "PASSWORD": password,
        **extra,
    }


_vault = VaultDatabaseCredentials("app", url="http://127.0.0.1:1")

if SCENARIO == "good":
    DATABASES = {
        "default": PROJECT_DATABASES["default"],
        "rds_pg": _entry("iamdb.backends.postgresql", RdsIamToken(), OPTIONS=dict(TLS_PG)),
        "rds_mysql": _entry("iamdb.backends.mysql", RdsIamToken(), OPTIONS=dict(TLS_MYSQL)),
        "secrets": _entry("iamdb.backends.postgresql", SecretsManagerSecret("prod/app", region="us-east-1")),
        "vault": _entry("iamdb.backends.mysql", _vault, USER="", CONN_MAX_AGE=None),
        "pooled": _entry("iamdb.backends.postgresql", _vault, USER="", OPTIONS={"pool": True}),
        "tuned": _entry(
            "iamdb.backends.mysql", CallableSource(read_password), OPTIONS={"iamdb": {"retry_budget": 2.5}}
        ),
    }
elif SCENARIO == "bad":
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "stock": _entry("django.db.backends.postgresql", RdsIamToken(), OPTIONS=dict(TLS_PG)),  # E001
        "options": _entry("iamdb.backends.postgresql", "plain", OPTIONS={"iamdb": {"retries": 3}}),  # E002
        "nouser": _entry("iamdb.backends.postgresql", read_password, USER=""),  # E004
        "cleartext": _entry("iamdb.backends.postgresql", RdsIamToken()),  # E010
        "unverified": _entry(
            "iamdb.backends.postgresql", RdsIamToken(), OPTIONS={"sslmode": "require"}
        ),  # W011
    }
elif SCENARIO == "no_mysqldb":
    sys.modules["MySQLdb"] = None  # type: ignore[assignment]  # how Python marks a module it cannot import
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "mysql": _entry("iamdb.backends.mysql", "plain"),  # E020
    }
else:  # pragma: no cover - a typo in a test
    raise ValueError(f"unknown IAMDB_CHECKS_SCENARIO {SCENARIO!r}")
