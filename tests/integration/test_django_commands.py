"""Django's own commands with a source in PASSWORD: dbshell through the real psql and
mysql clients, and ``manage.py test --parallel 2`` (test database creation and the
MySQL clone), under fork and under spawn (which pickles the settings)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DbUser, make_wrapper

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "tests" / "project" / "manage.py"
PROJECT_DB = "iamdb_project"


@pytest.fixture
def project_env(db_user: DbUser, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for tests/project: its database, user, and the password file."""
    if db_user.vendor == "mysql":
        db_user.server.sql(
            f"DROP DATABASE IF EXISTS {PROJECT_DB}",
            f"CREATE DATABASE {PROJECT_DB}",
            f"GRANT ALL ON *.* TO '{db_user.name}'@'%'",
        )
        port = str(db_user.server.port)
    else:
        db_user.server.sql(f"DROP DATABASE IF EXISTS {PROJECT_DB} WITH (FORCE)")
        db_user.server.sql(f"CREATE DATABASE {PROJECT_DB} OWNER {db_user.name}")
        port = str(db_user.server.port)
    password_file = tmp_path / "password"
    password_file.write_text(db_user.password)
    env = {
        **os.environ,
        "IAMDB_TEST_ENGINE": db_user.vendor,
        "IAMDB_TEST_PORT": port,
        "IAMDB_TEST_USER": db_user.name,
        "IAMDB_TEST_PASSWORD_FILE": str(password_file),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    yield env
    if db_user.vendor == "mysql":
        db_user.server.sql(f"DROP DATABASE IF EXISTS {PROJECT_DB}")
    else:
        db_user.server.sql(f"DROP DATABASE IF EXISTS {PROJECT_DB} WITH (FORCE)")


@pytest.fixture
def recording_clients(tmp_path: Path) -> Path:
    """Put recorders named psql, mysql and mysqldump first in PATH: each writes its
    argv and whether it got a password in its environment, then runs the real client."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "argv.log"
    for name in ("psql", "mysql", "mysqldump"):
        real = subprocess.run(["which", name], capture_output=True, text=True).stdout.strip()
        if not real:
            pytest.fail(f"the real {name} client is not installed")
        script = bindir / name
        script.write_text(
            "#!/bin/sh\n"
            f'printf "%s" "{name}" >> "{log}"\n'
            f'for a in "$@"; do printf " %s" "$a" >> "{log}"; done\n'
            f'if [ -n "$PGPASSWORD$MYSQL_PWD" ]; then echo " [password in env]" >> "{log}"; '
            f'else echo " [no password in env]" >> "{log}"; fi\n'
            f'exec "{real}" "$@"\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    return log


@pytest.fixture(autouse=True)
def _restore_path() -> Any:
    saved = os.environ["PATH"]
    yield
    os.environ["PATH"] = saved


QUERY = {
    "postgresql": ["-At", "-c", "SELECT current_user"],
    "mysql": ["-N", "-B", "-e", "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)"],
}


def test_dbshell_in_process(
    db_user: DbUser, recording_clients: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    password_holder = {"value": db_user.password}
    settings_dict = db_user.settings(lambda: password_holder["value"])
    wrapper = make_wrapper(settings_dict)
    before = {**settings_dict, "OPTIONS": dict(settings_dict["OPTIONS"])}
    wrapper.client.runshell(QUERY[db_user.vendor])
    out = capfd.readouterr().out
    assert db_user.name in out
    argv = recording_clients.read_text()
    assert "[password in env]" in argv
    assert db_user.password not in argv
    assert settings_dict == before  # untouched, PASSWORD still the callable


def test_dbshell_after_rotation_uses_the_new_password(db_user: DbUser, recording_clients: Path) -> None:
    holder = {"value": db_user.password}
    wrapper = make_wrapper(db_user.settings(lambda: holder["value"]))
    holder["value"] = db_user.rotate()
    wrapper.client.runshell(QUERY[db_user.vendor])  # raises CalledProcessError if refused
    assert db_user.password not in recording_clients.read_text()


def test_manage_py_dbshell(project_env: dict[str, str], db_user: DbUser, recording_clients: Path) -> None:
    env = {**project_env, "PATH": os.environ["PATH"]}
    result = subprocess.run(
        [sys.executable, str(MANAGE), "dbshell", "--", *QUERY[db_user.vendor]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == db_user.name
    argv = recording_clients.read_text()
    assert db_user.password not in argv and db_user.password not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_manage_py_test_parallel(
    project_env: dict[str, str], db_user: DbUser, recording_clients: Path, start_method: str
) -> None:
    env = {**project_env, "PATH": os.environ["PATH"], "IAMDB_TEST_START_METHOD": start_method}
    result = subprocess.run(
        [
            sys.executable,
            str(MANAGE),
            "test",
            "tests.project.demoapp",
            "--parallel",
            "2",
            "--noinput",
            "-v",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Cloning test database" in output
    assert "Ran 5 tests" in output and "OK" in output
    assert db_user.password not in output
    if db_user.vendor == "mysql":
        argv = recording_clients.read_text()
        assert "mysqldump" in argv  # the clone ran through the real tools
        assert db_user.password not in argv
