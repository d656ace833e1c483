"""Settings of the demo project: one source on one engine, named by the environment
that ``run.py`` prepares (``IAMDB_DEMO_SOURCE``, ``IAMDB_DEMO_ENGINE``, the server's
address, and where the source finds its secret).

``default`` is iamdb's backend with the source as PASSWORD; ``stock`` is Django's
own backend with the credential read once, here at startup, the way a project
without iamdb would do it, for contrast. The services are found the way a real
project finds them: boto3 through ``AWS_*`` variables (``AWS_ENDPOINT_URL_SECRETS_MANAGER``
points it at moto), hvac and iamdb through ``VAULT_ADDR`` and ``VAULT_TOKEN``.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from .published import read_published_password

DEBUG = False
SECRET_KEY = secrets.token_urlsafe(32)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "examples.demo.urls"
USE_TZ = True

SOURCE = os.environ["IAMDB_DEMO_SOURCE"]  # callable, secretsmanager, rds or vault
ENGINE = os.environ["IAMDB_DEMO_ENGINE"]  # mysql or postgresql

_server: dict[str, Any] = {
    "HOST": os.environ["IAMDB_DEMO_HOST"],
    "PORT": os.environ["IAMDB_DEMO_PORT"],
    "NAME": os.environ.get("IAMDB_DEMO_NAME", ""),
    "CONN_MAX_AGE": 0,  # a new connection for every request: each one logs in
}


def callable_source() -> tuple[dict[str, Any], dict[str, Any]]:
    """A password published in a file (a mounted secret), read by a function of ours."""
    from iamdb.sources import CallableSource

    user = os.environ["IAMDB_DEMO_USER"]
    return (
        # Re-read every 5 minutes, and at once when the server refuses the password.
        {"USER": user, "PASSWORD": CallableSource(read_published_password, ttl=300)},
        {"USER": user, "PASSWORD": read_published_password()},
    )


def secrets_manager() -> tuple[dict[str, Any], dict[str, Any]]:
    """An RDS-style secret (JSON with username and password) that a rotation function rotates."""
    import boto3

    from iamdb.sources import SecretsManagerSecret

    secret_id = os.environ["IAMDB_DEMO_SECRET_ID"]
    value = json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"])
    return (
        {"USER": "", "PASSWORD": SecretsManagerSecret(secret_id)},  # the secret names the user
        {"USER": value["username"], "PASSWORD": value["password"]},
    )


def rds_iam() -> tuple[dict[str, Any], dict[str, Any]]:
    """RDS IAM authentication: a signed token as the password, over verified TLS."""
    import boto3

    from iamdb.sources import RdsIamToken

    user, ca = os.environ["IAMDB_DEMO_USER"], os.environ["IAMDB_DEMO_CA"]
    if ENGINE == "postgresql":
        tls: dict[str, Any] = {"sslmode": "verify-full", "sslrootcert": ca}
    else:
        tls = {"ssl": {"ca": ca}, "ssl_mode": "VERIFY_IDENTITY"}
    token = boto3.client("rds").generate_db_auth_token(
        DBHostname=_server["HOST"], Port=int(_server["PORT"]), DBUsername=user
    )
    return (
        {"USER": user, "PASSWORD": RdsIamToken(), "OPTIONS": tls},
        {"USER": user, "PASSWORD": token, "OPTIONS": tls},
    )


def vault() -> tuple[dict[str, Any], dict[str, Any]]:
    """A Vault (here OpenBao) dynamic role: a database user per lease, dropped when the
    lease ends, its sessions killed by the role's revocation statements."""
    import hvac

    from iamdb.sources import VaultDatabaseCredentials

    role = os.environ["IAMDB_DEMO_VAULT_ROLE"]
    options: dict[str, Any] = {}
    if ENGINE == "postgresql":
        options["assume_role"] = os.environ["IAMDB_DEMO_PG_OWNER"]  # the role that owns the tables
    lease = hvac.Client().secrets.database.generate_credentials(name=role)["data"]
    return (
        {
            "USER": "",  # each lease brings its own user
            "PASSWORD": VaultDatabaseCredentials(role, revoke_at_exit=True),
            # Persistent connections, retired a second before their lease ends
            # (leases last seconds here: the default margin is 5 s).
            "CONN_MAX_AGE": None,
            "OPTIONS": {**options, "iamdb": {"retire_margin": 1.0}},
        },
        {"USER": lease["username"], "PASSWORD": lease["password"], "CONN_MAX_AGE": None, "OPTIONS": options},
    )


_iamdb, _stock = {
    "callable": callable_source,
    "secretsmanager": secrets_manager,
    "rds": rds_iam,
    "vault": vault,
}[SOURCE]()

DATABASES = {
    "default": {**_server, "ENGINE": f"iamdb.backends.{ENGINE}", **_iamdb},
    "stock": {**_server, "ENGINE": f"django.db.backends.{ENGINE}", **_stock},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django.request": {"level": "CRITICAL"}, "iamdb": {"level": "WARNING"}},
}
