"""Fixtures for the AWS sources: moto's server and the RDS-IAM emulator (PostgreSQL and MariaDB
with TLS and PAM). Test modules import the fixtures they use from here."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services.iam_emulator import IamEmulator, IamUser
from tests.services.mariadb import PrivateMariadb
from tests.services.moto import MotoServer
from tests.services.postgres import PrivatePostgres
from tests.services.tls import TestCA


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server, and boto3 pointed at it through the environment for the whole session."""
    server = MotoServer().start()
    saved = {key: os.environ.get(key) for key in server.environ()}
    os.environ.update(server.environ())
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def admin(moto_server: MotoServer) -> Any:
    """A boto3 Secrets Manager client on moto's server, with rights to create and rotate."""
    return moto_server.admin_client()


@pytest.fixture
def secret_name(admin: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A secret name of this test's own; the secret is deleted afterwards."""
    name = f"iamdb/test/{request.node.name}-{secrets.token_hex(4)}"
    yield name
    admin.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def rds_secret(user: Any, password: str | None = None) -> str:
    """The JSON that RDS-managed rotation keeps in a secret, for a tests.conftest.DbUser."""
    return json.dumps(
        {
            "engine": user.vendor,
            "host": "127.0.0.1",
            "port": user.server.port,
            "username": user.name,
            "password": password or user.password,
        }
    )


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    folder = tmp_path_factory.mktemp("tls")
    folder.chmod(0o755)
    return TestCA(folder)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA that did not sign the servers' certificates."""
    return TestCA(tmp_path_factory.mktemp("other-tls"), common_name="not the servers' CA")


@pytest.fixture(scope="session")
def iam_emulator() -> Iterator[IamEmulator]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the RDS-IAM emulator writes a PAM service to /etc/pam.d")
    emulator = IamEmulator().install()
    try:
        yield emulator
    finally:
        emulator.remove()


@pytest.fixture(scope="session")
def iam_postgres(iam_emulator: IamEmulator, test_ca: TestCA) -> Iterator[PrivatePostgres]:
    """PostgreSQL with ssl=on, and PAM (the emulator) for members of rds_iam, as on RDS."""
    server = iam_emulator.postgres(test_ca)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def iam_mariadb(iam_emulator: IamEmulator, test_ca: TestCA) -> Iterator[PrivateMariadb]:
    server = PrivateMariadb(tls=test_ca).start()
    iam_emulator.accept_endpoint("127.0.0.1", server.port)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["postgresql", "mysql"])
def iam_user(request: pytest.FixtureRequest, iam_emulator: IamEmulator, test_ca: TestCA) -> Iterator[IamUser]:
    """A fresh IAM user on the emulator's PostgreSQL or MariaDB server; max token age reset."""
    vendor = str(request.param)
    name = f"iam_{secrets.token_hex(4)}"
    if vendor == "postgresql":
        server: Any = request.getfixturevalue("iam_postgres")
        server.sql(f"CREATE ROLE {name} LOGIN IN ROLE rds_iam")
        server.sql(f"GRANT ALL ON SCHEMA public TO {name}")
    else:
        server = request.getfixturevalue("iam_mariadb")
        server.create_iam_user(name, iam_emulator.service)
    iam_emulator.set_max_age(900)
    yield IamUser(vendor, name, server, iam_emulator, test_ca)
    iam_emulator.set_max_age(900)
    if vendor == "postgresql":
        server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
        server.sql(f"DROP OWNED BY {name}")
        server.sql(f"DROP ROLE IF EXISTS {name}")
    else:
        server.drop_user(name)
