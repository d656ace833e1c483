"""An RDS-IAM emulator: the database servers check tokens through PAM and a SigV4 checker.

RDS checks an IAM token at login with a PAM-like plugin that receives it in
cleartext over TLS. Here, a PAM service of the tests' own
(``/etc/pam.d/iamdb-test-<random>``) runs :mod:`tests.services.sigv4_checker`
through ``pam_exec``; the private PostgreSQL and MariaDB servers send their
IAM users' passwords to that service. The checker recomputes the token's SigV4
signature with the emulator's secret key, and refuses a token older than
``max_age`` seconds (settable while the servers run, so expiry takes seconds).

Needs root (writing /etc/pam.d, running the servers as their own users).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.services.pam import PamChecker
from tests.services.postgres import PrivatePostgres
from tests.services.tls import TestCA

CHECKER = Path(__file__).with_name("sigv4_checker.py")


class IamEmulator(PamChecker):
    """The PAM service, the checker and its settings (keys, accepted endpoints, max age)."""

    label = "RDS-IAM emulator"

    def __init__(self, *, region: str = "us-east-1") -> None:
        super().__init__(CHECKER, "iamdb-test")
        self.region = region
        self.access_key = "AKIAIAMDBTEST" + secrets.token_hex(4).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.hosts: list[str] = []
        self.dsql_hosts: list[str] = []
        self.max_age = 900.0

    def accept_endpoint(self, host: str, port: int) -> None:
        """Accept tokens signed for ``host:port`` (what RDS knows as its endpoint)."""
        self.hosts.append(f"{host}:{port}")
        self.write_config()

    def accept_dsql_endpoint(self, name: str) -> None:
        """Accept Aurora DSQL tokens signed for the cluster endpoint ``name`` (no port)."""
        self.dsql_hosts.append(name)
        self.write_config()

    def set_max_age(self, seconds: float) -> None:
        """Refuse tokens signed more than ``seconds`` ago (RDS: 900)."""
        self.max_age = float(seconds)
        self.write_config()

    def config(self) -> dict[str, Any]:
        return {
            "keys": {self.access_key: self.secret_key},
            "hosts": self.hosts,
            "dsql_hosts": self.dsql_hosts,
            "region": self.region,
            "max_age": self.max_age,
        }

    def postgres(self, ca: TestCA) -> PrivatePostgres:
        """A private PostgreSQL as RDS is: TLS with ``ca``'s certificate, and this emulator (PAM)
        checking the logins of rds_iam's members. Started; the caller stops it."""
        server = PrivatePostgres(
            hba_lines=[f"hostssl all +rds_iam 127.0.0.1/32 pam pamservice={self.service}"],
        )
        server.use_tls(ca).start()
        try:
            server.sql("CREATE ROLE rds_iam NOLOGIN")
        except BaseException:
            server.stop()
            raise
        self.accept_endpoint("127.0.0.1", server.port)
        return server

    def session(self, **extra: Any) -> Any:
        """A boto3 Session holding the key pair the emulator trusts."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            **extra,
        )


needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: the RDS-IAM emulator writes a PAM service to /etc/pam.d and runs private "
    "database servers as their own users (CI runs these as root)",
)


class IamUser:
    """A database user that logs in with IAM tokens on one of the emulator's servers."""

    def __init__(self, vendor: str, name: str, server: Any, emulator: IamEmulator, ca: TestCA) -> None:
        self.vendor = vendor
        self.name = name
        self.server = server
        self.emulator = emulator
        self.ca = ca

    def tls_options(self, ca: str | None = None) -> dict[str, Any]:
        ca = ca or str(self.ca.ca)
        if self.vendor == "postgresql":
            return {"sslmode": "verify-full", "sslrootcert": ca}
        return {"ssl": {"ca": ca}, "ssl_mode": "VERIFY_IDENTITY"}

    def settings(self, source: Any, *, options: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        engine = {"postgresql": "iamdb.backends.postgresql", "mysql": "iamdb.backends.mysql"}[self.vendor]
        return {
            "ENGINE": engine,
            "HOST": "127.0.0.1",
            "PORT": self.server.port,
            "NAME": "postgres" if self.vendor == "postgresql" else "test",
            "USER": self.name,
            "PASSWORD": source,
            "OPTIONS": self.tls_options() if options is None else options,
            **extra,
        }
