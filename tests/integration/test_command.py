"""``manage.py iamdb``: a real subprocess on the test project's database, and call_command."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from iamdb.management.commands.iamdb import Command
from iamdb.sources import CallableSource
from tests.conftest import DbUser
from tests.integration.test_django_commands import MANAGE, project_env

__all__ = ["project_env"]  # the fixture, from the module that defines it

ROOT = Path(__file__).resolve().parents[2]


def manage_iamdb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MANAGE), "iamdb", *args],
        env={
            **env,
            "DJANGO_SETTINGS_MODULE": "tests.project.settings_checks",
            "IAMDB_CHECKS_SCENARIO": "good",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_opens_a_connection_and_reports_it(project_env: dict[str, str], db_user: DbUser) -> None:
    result = manage_iamdb(project_env, "--database", "default", "--check")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"default: iamdb.backends.{db_user.vendor}")
    assert "source: CallableSource(tests.project.settings.read_password, ttl=30)" in out
    assert "connection check: ok" in out
    assert "counters: fetches=1, fetch_failures=0" in out
    assert db_user.password not in out + result.stderr


def test_check_exits_non_zero_when_a_connection_fails(project_env: dict[str, str], db_user: DbUser) -> None:
    Path(project_env["IAMDB_TEST_PASSWORD_FILE"]).write_text("wrong-" + db_user.password)
    result = manage_iamdb(project_env, "--database", "default", "--check", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)["databases"][0]
    assert report["alias"] == "default" and report["check"]["ok"] is False
    assert "refused the login" in report["check"]["error"]
    assert "connection check failed for: default" in result.stderr
    assert db_user.password not in result.stdout + result.stderr


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_json_lists_every_alias_without_connecting(project_env: dict[str, str]) -> None:
    result = manage_iamdb(project_env, "--json")
    assert result.returncode == 0, result.stderr
    reports = {entry["alias"]: entry for entry in json.loads(result.stdout)["databases"]}
    assert "default" in reports and len(reports) > 1
    assert all("check" not in entry for entry in reports.values())
    assert reports["default"]["cache"] == "empty"  # nothing was fetched: no connection was made


@pytest.fixture
def alias(db_user: DbUser) -> Any:
    """An alias in Django's connection handler for this test only."""
    name = "command_db"
    source = CallableSource(lambda: db_user.password, ttl=300)
    entry = db_user.settings(source)
    configured = connections.configure_settings({"default": entry, name: entry})[name]
    connections.settings[name] = configured
    yield name, source
    connections[name].close()
    del connections[name]
    del connections.settings[name]


def test_call_command_reports_the_cached_credential(alias: Any, db_user: DbUser) -> None:
    name, source = alias
    call_command(Command(), database=[name], check=True, stdout=StringIO())  # fetch once
    out = StringIO()
    call_command(Command(), database=[name], json=True, stdout=out)
    report = json.loads(out.getvalue())["databases"][0]
    assert report["source"] == source.describe() and report["user"] == db_user.name
    assert report["cache"] == "fresh" and 0 <= report["credential_age_s"] < 60
    assert 240 < report["refresh_in_s"] <= 300
    assert db_user.password not in out.getvalue()


def test_an_unknown_alias_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="unknown database alias"):
        call_command(Command(), database=["nope"], stdout=StringIO())
