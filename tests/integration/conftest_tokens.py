"""Fixtures for the OAuth-token sources (Cloud SQL IAM, Azure Entra ID): the stand-ins of the
Compute Engine metadata server and of Azure's managed-identity endpoint, and database users on
the RDS-IAM emulator's private servers whose logins a PAM checker of their own verifies.

google-auth reads ``GCE_METADATA_HOST`` once, when ``google.auth.compute_engine`` is first
imported: this module (a plugin, loaded before any test module) fixes the stand-in's address
then, and the session's stand-in listens there once a test asks for it. Until then nothing
listens, so google-auth elsewhere in the session finds no metadata server at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services.azure_identity import AzureIdentity
from tests.services.gce_metadata import GceMetadata
from tests.services.iam_emulator import IamUser
from tests.services.postgres import free_port
from tests.services.tls import TestCA
from tests.services.token_pam import PG_ROLE, TokenPam

_GCE_HOST = os.environ.setdefault("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")
os.environ.setdefault("GCE_METADATA_IP", _GCE_HOST)

WHOAMI = {
    "postgresql": "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1), "
    "(SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER')",
}


def whoami(wrapper: Any) -> tuple[str, bool]:
    """The user the server logged in, and whether the session is encrypted."""
    with wrapper.cursor() as cursor:
        cursor.execute(WHOAMI[wrapper.vendor])
        user, tls = cursor.fetchone()
    return user, tls in (True, 1) or (isinstance(tls, str) and bool(tls))


def run_dbshell(wrapper: Any, capfd: pytest.CaptureFixture[str]) -> tuple[str, list[str], dict[str, str]]:
    """Run dbshell with the real client; return its output, argv and the environment it was given."""
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def spy(args: Any, *a: Any, **kw: Any) -> Any:
        seen.append((list(args), dict(kw.get("env") or {})))
        return real_run(args, *a, **kw)

    if wrapper.vendor == "postgresql":
        params = ["-c", "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"]
    else:
        sql = (
            "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1), VARIABLE_VALUE FROM "
            "information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER'"
        )
        params = ["-N", "-B", "-e", sql]
    subprocess.run = spy  # type: ignore[assignment]
    try:
        capfd.readouterr()
        wrapper.client.runshell(params)
    finally:
        subprocess.run = real_run  # type: ignore[assignment]
    return capfd.readouterr().out, seen[0][0], seen[0][1]


def _restoring(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (or with None, unset) environment variables; return what they were."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return saved


@pytest.fixture(scope="session")
def token_pam() -> Iterator[TokenPam]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the token checker writes a PAM service to /etc/pam.d")
    pam = TokenPam().install()
    try:
        yield pam
    finally:
        pam.remove()


@pytest.fixture(scope="session")
def gce_metadata(token_pam: TokenPam) -> Iterator[GceMetadata]:
    """The metadata server stand-in, at the address google-auth was given; no other Google
    credentials found (no GOOGLE_APPLICATION_CREDENTIALS, an empty gcloud config)."""
    host, _, port = os.environ["GCE_METADATA_HOST"].rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        pytest.skip(f"GCE_METADATA_HOST is set to {os.environ['GCE_METADATA_HOST']!r} outside the tests")
    server = GceMetadata(port=int(port)).start()
    token_pam.trust("gce", server.key)
    gcloud = tempfile.mkdtemp(prefix="iamdb-gcloud-")
    saved = _restoring({"GOOGLE_APPLICATION_CREDENTIALS": None, "CLOUDSDK_CONFIG": gcloud})
    try:
        yield server
    finally:
        _restoring(saved)
        server.stop()
        shutil.rmtree(gcloud, ignore_errors=True)


@pytest.fixture(scope="session")
def azure_identity(token_pam: TokenPam) -> Iterator[AzureIdentity]:
    """The managed-identity endpoint stand-in, named by IDENTITY_ENDPOINT / IDENTITY_HEADER;
    no service principal in the environment (DefaultAzureCredential tries that first)."""
    server = AzureIdentity().start()
    token_pam.trust("entra", server.key)
    cleared: dict[str, str | None] = {
        key: None for key in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME")
    }
    saved = _restoring({**cleared, **server.environ()})
    try:
        yield server
    finally:
        _restoring(saved)
        server.stop()


class TokenUsers:
    """Database users that log in with the stand-ins' tokens, made once per session."""

    def __init__(self, pam: TokenPam, ca: TestCA) -> None:
        self.pam = pam
        self.ca = ca
        self.made: dict[tuple[str, str], IamUser] = {}
        self.pg_ready = False

    def get(
        self, request: pytest.FixtureRequest, vendor: str, name: str, issuer: str, principal: str
    ) -> IamUser:
        found = self.made.get((vendor, name))
        if found is not None:
            return found
        self.pam.add_user(name, issuer, principal)
        if vendor == "postgresql":
            server: Any = request.getfixturevalue("iam_postgres")
            if not self.pg_ready:
                self._route_pg_role(server)
            server.sql(f'CREATE ROLE "{name}" LOGIN IN ROLE {PG_ROLE}')
            server.sql(f'GRANT ALL ON SCHEMA public TO "{name}"')
        else:
            server = request.getfixturevalue("iam_mariadb")
            server.create_iam_user(name, self.pam.service)
        user = IamUser(vendor, name, server, self.pam, self.ca)
        self.made[(vendor, name)] = user
        return user

    def _route_pg_role(self, server: Any) -> None:
        """Members of PG_ROLE log in through this PAM service: a pg_hba.conf line above the others."""
        server.sql(f"CREATE ROLE {PG_ROLE} NOLOGIN")
        hba = server.datadir / "pg_hba.conf"
        line = f"hostssl all +{PG_ROLE} 127.0.0.1/32 pam pamservice={self.pam.service}"
        hba.write_text(line + "\n" + hba.read_text())
        server.sql("SELECT pg_reload_conf()")
        self.pg_ready = True


@pytest.fixture(scope="session")
def token_users(token_pam: TokenPam, test_ca: TestCA) -> TokenUsers:
    return TokenUsers(token_pam, test_ca)


def cloud_sql_user(email: str, vendor: str) -> str:
    """The database user Cloud SQL makes for a service account."""
    short = email.removesuffix(".gserviceaccount.com")
    return short if vendor == "postgresql" else short.split("@", 1)[0]


@pytest.fixture(params=["postgresql", "mysql"])
def gce_user(
    request: pytest.FixtureRequest, gce_metadata: GceMetadata, token_users: TokenUsers
) -> Iterator[IamUser]:
    """The metadata server's service account as a Cloud SQL IAM user on PostgreSQL or MariaDB."""
    vendor = str(request.param)
    user = token_users.get(
        request, vendor, cloud_sql_user(gce_metadata.email, vendor), "gce", gce_metadata.email
    )
    gce_metadata.lifetime, gce_metadata.fail_with = 3600, None
    yield user
    gce_metadata.lifetime, gce_metadata.fail_with = 3600, None


@pytest.fixture(params=["postgresql", "mysql"])
def azure_user(
    request: pytest.FixtureRequest, azure_identity: AzureIdentity, token_users: TokenUsers
) -> Iterator[IamUser]:
    """The managed identity as an Entra ID database user on PostgreSQL or MariaDB."""
    vendor = str(request.param)
    principal = azure_identity.principal
    user = token_users.get(request, vendor, principal, "entra", principal)
    azure_identity.lifetime, azure_identity.fail_with = 3600, None
    yield user
    azure_identity.lifetime, azure_identity.fail_with = 3600, None
