"""Shared fixtures: Django configured once, real database servers, test users."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings

from tests.services.mysql import MysqlAdmin
from tests.services.postgres import PrivatePostgres

if not settings.configured:
    settings.configure(
        DATABASES={},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()

# Session fixtures shared by every module that uses them (moto, the RDS-IAM emulator, the
# OpenBao lab): registered once here, so that no module starts a second copy.
pytest_plugins = [
    "tests.integration.conftest_aws",
    "tests.integration.vault_fixtures",
    "tests.integration.conftest_dsql",
    "tests.integration.conftest_tokens",
]

ENGINES = {"postgresql": "iamdb.backends.postgresql", "mysql": "iamdb.backends.mysql"}


def make_wrapper(settings_dict: dict[str, Any], alias: str = "default") -> Any:
    """A DatabaseWrapper for ``settings_dict``, defaults filled in as Django does."""
    from django.db import connections
    from django.db.utils import load_backend

    configured = connections.configure_settings({"default": settings_dict})["default"]
    backend = load_backend(configured["ENGINE"])
    return backend.DatabaseWrapper(configured, alias)


def new_password() -> str:
    return "pw-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mysql_admin() -> MysqlAdmin:
    admin = MysqlAdmin()
    try:
        admin.sql("SELECT 1")
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"MariaDB/MySQL is not reachable at {admin.host}:{admin.port}: {exc}")
    admin.sql("CREATE DATABASE IF NOT EXISTS test")
    return admin


class DbUser:
    """A database user of a test's own, whose password the test can rotate."""

    def __init__(self, vendor: str, name: str, password: str, server: Any) -> None:
        self.vendor = vendor
        self.name = name
        self.password = password
        self.server = server

    def rotate(self, password: str | None = None) -> str:
        self.password = password or new_password()
        self.server.set_password(self.name, self.password)
        return self.password

    def settings(self, password: Any, **extra: Any) -> dict[str, Any]:
        """A DATABASES entry for this user on its server."""
        if self.vendor == "postgresql":
            base = {"HOST": "127.0.0.1", "PORT": self.server.port, "NAME": "postgres"}
        else:
            base = {"HOST": self.server.host, "PORT": self.server.port, "NAME": "test"}
        return {"ENGINE": ENGINES[self.vendor], "USER": self.name, "PASSWORD": password, **base, **extra}


@pytest.fixture(params=["postgresql", "mysql"])
def vendor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_user(vendor: str, request: pytest.FixtureRequest) -> Iterator[DbUser]:
    """A fresh user on the engine named by the ``vendor`` fixture."""
    name = f"iamdb_{secrets.token_hex(4)}"
    password = new_password()
    if vendor == "postgresql":
        server: Any = request.getfixturevalue("pg_server")
        server.create_role(name, password, createdb=True)
    else:
        server = request.getfixturevalue("mysql_admin")
        server.create_user(name, password)
    user = DbUser(vendor, name, password, server)
    yield user
    if vendor == "postgresql":
        server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
        server.sql(f"DROP OWNED BY {name}")
        server.sql(f"DROP ROLE IF EXISTS {name}")
    else:
        server.drop_user(name)


def pytest_report_header(config: pytest.Config) -> str:
    import django as dj

    return f"iamdb tests: Django {dj.get_version()}, root={os.geteuid() == 0}"
