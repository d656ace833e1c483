"""The PostgreSQL backend on psycopg2, as Django uses it when psycopg 3 is not
installed. A child process hides psycopg 3 before Django is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import DbUser

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["psycopg"] = None  # as if psycopg 3 were not installed
    import django
    from django.conf import settings

    config = json.loads(sys.stdin.read())  # not argv: no password on a command line
    published = {"password": config["old"]}
    reads = []

    def password():
        reads.append(1)
        if len(reads) >= 3:  # the new password is published late
            published["password"] = config["new"]
        return published["password"]

    settings.configure(DATABASES={"default": {
        "ENGINE": "iamdb.backends.postgresql", "HOST": "127.0.0.1", "PORT": config["port"],
        "NAME": "postgres", "USER": config["user"], "PASSWORD": password,
    }}, USE_TZ=True)
    django.setup()
    from django.db import connection
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        user = cursor.fetchone()[0]
    print(json.dumps({
        "psycopg3": is_psycopg3,
        "driver": connection.Database.__name__,
        "user": user,
        "reads": len(reads),
    }))
    """
)


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_psycopg2_refused_login_is_retried_with_a_fresh_password(db_user: DbUser) -> None:
    pytest.importorskip("psycopg2")
    old = db_user.password
    new = db_user.rotate()  # the server changed; the source still returns the old one
    config = {"port": db_user.server.port, "user": db_user.name, "old": old, "new": new}
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["psycopg3"] is False and report["driver"] == "psycopg2"
    assert report["user"] == db_user.name
    assert report["reads"] == 3  # two refused logins, then the published password
