"""Settings of the test project: one database whose password a file holds and a
callable source reads, as a secret store would. Configured by environment
variables that the tests set."""

from __future__ import annotations

import os
from pathlib import Path

from iamdb.sources import CallableSource

ENGINE = os.environ.get("IAMDB_TEST_ENGINE", "postgresql")
PASSWORD_FILE = Path(os.environ.get("IAMDB_TEST_PASSWORD_FILE", "/nonexistent"))


def read_password() -> str:
    """Module-level, so that it pickles by reference under the spawn start method."""
    return PASSWORD_FILE.read_text().strip()


SECRET_KEY = "tests-only-not-secret"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "tests.project.demoapp"]
DATABASES = {
    "default": {
        "ENGINE": f"iamdb.backends.{ENGINE}",
        "HOST": os.environ.get("IAMDB_TEST_HOST", "127.0.0.1"),
        "PORT": os.environ.get("IAMDB_TEST_PORT", ""),
        "NAME": os.environ.get("IAMDB_TEST_NAME", "iamdb_project"),
        "USER": os.environ.get("IAMDB_TEST_USER", ""),
        "PASSWORD": CallableSource(read_password, ttl=30),
    }
}
ROOT_URLCONF = "tests.project.urls"
