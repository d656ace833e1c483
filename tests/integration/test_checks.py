"""iamdb's system checks through Django's own ``check`` command: a real ``manage.py check``
subprocess of the test project (tests/project/settings_checks.py) and ``call_command``.

The correct configuration's ``default`` is a real database: ``check --database default``
runs Django's database checks too, which on MySQL connect through iamdb's backend (to
read ``sql_mode``); on PostgreSQL they do not connect.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from iamdb.sources import RdsIamToken
from tests.conftest import DbUser

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "tests" / "project" / "manage.py"
PROJECT_DB = "iamdb_project"
ID = re.compile(r"\((iamdb\.[EW]\d{3})\)")


def manage_check(env: dict[str, str], scenario: str, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, str(MANAGE), "check", *args],
        env={
            **env,
            "IAMDB_CHECKS_SCENARIO": scenario,
            "DJANGO_SETTINGS_MODULE": "tests.project.settings_checks",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def base_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("IAMDB_CHECKS_APP", None)
    return env


@pytest.fixture
def real_db_env(db_user: DbUser, base_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """The project's ``default`` entry pointed at a real database and a fresh user."""
    server: Any = db_user.server
    if db_user.vendor == "mysql":
        server.sql(
            f"CREATE DATABASE IF NOT EXISTS {PROJECT_DB}",
            f"GRANT ALL ON {PROJECT_DB}.* TO '{db_user.name}'@'%'",
        )
    else:
        server.sql(f"DROP DATABASE IF EXISTS {PROJECT_DB} WITH (FORCE)")
        server.sql(f"CREATE DATABASE {PROJECT_DB} OWNER {db_user.name}")
    password_file = tmp_path / "password"
    password_file.write_text(db_user.password)
    yield {
        **base_env,
        "IAMDB_TEST_ENGINE": db_user.vendor,
        "IAMDB_TEST_PORT": str(server.port),
        "IAMDB_TEST_USER": db_user.name,
        "IAMDB_TEST_PASSWORD_FILE": str(password_file),
    }
    if db_user.vendor == "mysql":
        server.sql(f"DROP DATABASE IF EXISTS {PROJECT_DB}")
    else:
        server.sql(f"DROP DATABASE IF EXISTS {PROJECT_DB} WITH (FORCE)")


def test_checks_manage_py_correct_configuration_exits_0(real_db_env: dict[str, str]) -> None:
    status, output = manage_check(real_db_env, "good", "--database", "default")
    assert status == 0, output
    assert "System check identified no issues" in output
    assert "iamdb." not in output


@pytest.mark.parametrize("vendor", ["mysql"])  # Django's PostgreSQL checks do not connect
def test_checks_manage_py_correct_configuration_reports_a_wrong_password(
    vendor: str, real_db_env: dict[str, str]
) -> None:
    # On MySQL the check above really connected: with a wrong password it fails, secret-free.
    Path(real_db_env["IAMDB_TEST_PASSWORD_FILE"]).write_text("pw-not-this-one-7f3a")
    status, output = manage_check(real_db_env, "good", "--database", "default")
    assert status != 0
    assert "Access denied" in output
    assert "pw-not-this-one-7f3a" not in output


def test_checks_manage_py_faulty_configuration(base_env: dict[str, str]) -> None:
    status, output = manage_check(base_env, "bad")
    assert status == 1, output
    found = {(obj, id_) for obj, id_ in re.findall(r"^(\w+): \((iamdb\.[EW]\d{3})\)", output, re.MULTILINE)}
    assert found == {
        ("stock", "iamdb.E001"),
        ("options", "iamdb.E002"),
        ("nouser", "iamdb.E004"),
        ("cleartext", "iamdb.E010"),
        ("unverified", "iamdb.W011"),
    }
    assert output.count("HINT:") == 5
    assert "Set ENGINE to 'iamdb.backends.postgresql'" in output


def test_checks_manage_py_tag_iamdb_and_only_warnings(base_env: dict[str, str]) -> None:
    status, output = manage_check(base_env, "bad", "--tag", "iamdb", "--fail-level", "CRITICAL")
    assert status == 0, output  # errors reported, not fatal at this fail level
    assert sorted(set(ID.findall(output))) == [
        "iamdb.E001",
        "iamdb.E002",
        "iamdb.E004",
        "iamdb.E010",
        "iamdb.W011",
    ]


def test_checks_manage_py_driver_not_installed(base_env: dict[str, str]) -> None:
    # --tag iamdb: from Django 6.1 the field checks of every database load its backend first,
    # and the missing MySQLdb stops them with Django's own ImproperlyConfigured.
    status, output = manage_check(base_env, "no_mysqldb", "--tag", "iamdb")
    assert status == 1, output
    assert ID.findall(output) == ["iamdb.E020"]
    assert 'pip install "iamdb[mysql]"' in output


def test_checks_manage_py_without_the_app_reports_nothing(base_env: dict[str, str]) -> None:
    status, output = manage_check({**base_env, "IAMDB_CHECKS_APP": "0"}, "bad")
    assert status == 0, output
    assert ID.findall(output) == []


def _override(**settings: Any) -> Any:
    warnings.filterwarnings("ignore", "Overriding setting (DATABASES|INSTALLED_APPS)")
    return override_settings(**settings)


def test_checks_call_command(db_user: DbUser) -> None:
    installed = ["django.contrib.contenttypes", "django.contrib.auth", "iamdb"]
    from django.apps import apps

    bad = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "cleartext": {
            "ENGINE": f"iamdb.backends.{db_user.vendor}",
            "HOST": "127.0.0.1",
            "NAME": "app",
            "USER": db_user.name,
            "PASSWORD": RdsIamToken("us-east-1"),
        },
    }
    with _override(INSTALLED_APPS=installed):
        assert apps.get_app_config("iamdb").__class__.__name__ == "IamdbConfig"
        with _override(DATABASES=bad), pytest.raises(SystemCheckError, match=r"cleartext: \(iamdb\.E010\)"):
            call_command("check", stdout=StringIO(), stderr=StringIO())
        warned = {**bad, "cleartext": {**bad["cleartext"], "OPTIONS": {"sslmode": "require"}}}
        if db_user.vendor == "mysql":
            warned["cleartext"]["OPTIONS"] = {"ssl_mode": "REQUIRED"}
        err = StringIO()
        with _override(DATABASES=warned):
            call_command("check", stdout=StringIO(), stderr=err)  # a warning does not fail
        assert "cleartext: (iamdb.W011)" in err.getvalue()
        good = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
        out = StringIO()
        with _override(DATABASES=good):
            call_command("check", stdout=out, stderr=StringIO())
        assert "no issues" in out.getvalue()
