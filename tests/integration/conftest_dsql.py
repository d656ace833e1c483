"""Fixtures for AuroraDsqlToken: a PostgreSQL server that checks DSQL tokens at login.

Aurora DSQL speaks PostgreSQL over TLS on a cluster endpoint name
(``<id>.dsql.<region>.on.aws``) and checks a ``DbConnect`` / ``DbConnectAdmin``
token signed for that name. Here, a private PostgreSQL server with a certificate
for the cluster name sends its DSQL roles' passwords to the SigV4 checker (the
RDS-IAM emulator's PAM service), which accepts tokens signed for that name only.
The connections name the cluster in HOST (TLS verifies it) and reach the server
through libpq's ``hostaddr=127.0.0.1``. DSQL's roles are ``admin`` and the roles
it creates; its one database is ``postgres``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services.iam_emulator import IamEmulator
from tests.services.postgres import PrivatePostgres
from tests.services.tls import TestCA

#: The cluster endpoint the server answers to (its certificate names it) and the emulator accepts.
CLUSTER = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
#: A PrivateLink-style name for the same cluster: TLS accepts it, DSQL does not sign for it.
PRIVATELINK = "abcdefghijklmnopqrstuvwxyz.dsql-fnh4.us-east-1.vpce.amazonaws.com"
#: Another cluster's endpoint: a token signed for it is refused here.
OTHER_CLUSTER = "zyxwvutsrqponmlkjihgfedcba.dsql.us-east-1.on.aws"


class DsqlRole:
    """A role that logs in to the emulated cluster with DSQL tokens."""

    def __init__(self, name: str, server: PrivatePostgres, emulator: IamEmulator, ca: TestCA) -> None:
        self.name = name
        self.server = server
        self.emulator = emulator
        self.ca = ca

    def tls_options(self) -> dict[str, Any]:
        """What a DSQL connection sets: verified TLS for the cluster name, and the address to reach."""
        return {"sslmode": "verify-full", "sslrootcert": str(self.ca.ca), "hostaddr": "127.0.0.1"}

    def settings(
        self, source: Any, *, host: str = CLUSTER, options: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        return {
            "ENGINE": "iamdb.backends.postgresql",
            "HOST": host,
            "PORT": self.server.port,
            "NAME": "postgres",
            "USER": self.name,
            "PASSWORD": source,
            "OPTIONS": self.tls_options() if options is None else options,
            **extra,
        }


@pytest.fixture(scope="session")
def dsql_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    folder = tmp_path_factory.mktemp("dsql-tls")
    folder.chmod(0o755)
    return TestCA(folder, common_name="iamdb test DSQL CA", names=[CLUSTER, PRIVATELINK])


@pytest.fixture(scope="session")
def dsql_postgres(iam_emulator: IamEmulator, dsql_ca: TestCA) -> Iterator[PrivatePostgres]:
    """PostgreSQL with TLS for the cluster name, and PAM (the SigV4 checker) for the DSQL roles."""
    server = PrivatePostgres(
        hba_lines=[f"hostssl all +dsql_iam 127.0.0.1/32 pam pamservice={iam_emulator.service}"],
    )
    server.use_tls(dsql_ca)
    server.start()
    iam_emulator.accept_dsql_endpoint(CLUSTER)
    try:
        server.sql("CREATE ROLE dsql_iam NOLOGIN")
        # DSQL's admin role: it creates the other roles and owns the schema.
        server.sql("CREATE ROLE admin LOGIN CREATEROLE IN ROLE dsql_iam")
        server.sql("GRANT ALL ON SCHEMA public TO admin")
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["admin", "role"])
def dsql_role(
    request: pytest.FixtureRequest, dsql_postgres: PrivatePostgres, iam_emulator: IamEmulator, dsql_ca: TestCA
) -> Iterator[DsqlRole]:
    """DSQL's ``admin``, or a fresh role of its own (DbConnect tokens); max token age reset."""
    name = "admin" if request.param == "admin" else f"app_{secrets.token_hex(4)}"
    if name != "admin":
        dsql_postgres.sql(f"CREATE ROLE {name} LOGIN IN ROLE dsql_iam")
        dsql_postgres.sql(f"GRANT ALL ON SCHEMA public TO {name}")
    iam_emulator.set_max_age(900)
    yield DsqlRole(name, dsql_postgres, iam_emulator, dsql_ca)
    iam_emulator.set_max_age(900)
    dsql_postgres.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
    if name != "admin":
        dsql_postgres.sql(f"DROP OWNED BY {name}")
        dsql_postgres.sql(f"DROP ROLE IF EXISTS {name}")
