"""Settings of the demo project. The database comes from the environment that
``run.py`` prepares (engine, host, port, user, and the file the secret is published in).

``default`` is iamdb's backend with the password read through a callable source;
``stock`` is Django's own backend with the password read once at startup, the way
a project without iamdb would do it, for contrast.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from iamdb.sources import CallableSource

from .published import read_published_password

DEBUG = False
SECRET_KEY = secrets.token_urlsafe(32)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "examples.demo.urls"
USE_TZ = True

ENGINE = os.environ["IAMDB_DEMO_ENGINE"]  # "mysql" or "postgresql"

_server: dict[str, Any] = {
    "HOST": os.environ["IAMDB_DEMO_HOST"],
    "PORT": os.environ["IAMDB_DEMO_PORT"],
    "NAME": os.environ.get("IAMDB_DEMO_NAME", ""),
    "USER": os.environ["IAMDB_DEMO_USER"],
    "CONN_MAX_AGE": 0,  # a new connection for every request: each one logs in
}

DATABASES = {
    "default": {
        **_server,
        "ENGINE": f"iamdb.backends.{ENGINE}",
        # Re-read every 5 minutes, and at once when the server refuses the password.
        "PASSWORD": CallableSource(read_published_password, ttl=300),
    },
    "stock": {
        **_server,
        "ENGINE": f"django.db.backends.{ENGINE}",
        "PASSWORD": read_published_password(),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django.request": {"level": "CRITICAL"}},
}
