"""A private, throwaway PostgreSQL server for tests.

The machine's own server trusts every local login, so it cannot refuse a wrong
password. This one is made with ``initdb`` in a temporary folder, listens on
127.0.0.1 only, and checks passwords (scram-sha-256) on TCP; the superuser
logs in through the server's own Unix socket. Extra ``pg_hba.conf`` lines and
``postgresql.conf`` settings (TLS, PAM) can be given by the caller.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pg_bindir() -> Path:
    """The folder of ``initdb``/``pg_ctl`` (Debian keeps them out of PATH)."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for path in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (path / "initdb").exists():
            return path
    raise RuntimeError("initdb not found: install PostgreSQL's server package")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user() -> list[str]:
    """Run PostgreSQL's tools as 'postgres' when we are root (they refuse root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    def __init__(
        self,
        *,
        hba_lines: Sequence[str] = (),
        settings: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="iamdb-pg-"))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.hba_lines = list(hba_lines)
        self.settings = dict(settings or {})
        self.bindir = pg_bindir()
        # The server's own psql, not PATH's (tests put recording wrappers there).
        self.psql = str(self.bindir / "psql")

    def use_tls(self, ca: Any) -> PrivatePostgres:
        """Serve TLS with ``ca``'s server certificate (a tests.services.tls.TestCA); before start().
        The key goes in the server's own folder: PostgreSQL wants it owned by its user, mode 0600."""
        tls_dir = self.root / "tls"
        tls_dir.mkdir()
        for src, dst in ((ca.cert, "server.pem"), (ca.key, "server.key")):
            (tls_dir / dst).write_bytes(Path(src).read_bytes())
            (tls_dir / dst).chmod(0o600)
        if os.geteuid() == 0:
            for path in (tls_dir, tls_dir / "server.pem", tls_dir / "server.key"):
                shutil.chown(path, "postgres")
        self.settings.update(
            ssl="on",
            ssl_cert_file=f"'{tls_dir / 'server.pem'}'",
            ssl_key_file=f"'{tls_dir / 'server.key'}'",
        )
        return self

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> PrivatePostgres:
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockdir, "postgres")
        self._run(
            [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust"],
            "initdb",
        )
        hba = [
            "local all all trust",
            *self.hba_lines,
            "host all postgres 127.0.0.1/32 trust",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        (self.datadir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "password_encryption": "'scram-sha-256'",
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        with open(self.datadir / "postgresql.conf", "a") as fh:
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            "pg_ctl start",
        )
        return self

    def stop(self) -> None:
        if self.datadir.exists():
            subprocess.run(
                [
                    *_as_server_user(),
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, cmd: list[str], what: str) -> None:
        result = subprocess.run([*_as_server_user(), *cmd], capture_output=True, text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"{what} failed: {result.stdout}{result.stderr}{self.log()}")

    # -- administration ----------------------------------------------------------------

    def sql(self, statement: str, *, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the private socket; return psql's output."""
        result = subprocess.run(
            [
                self.psql,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.sockdir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def create_role(self, name: str, password: str, *, createdb: bool = False) -> None:
        extra = " CREATEDB" if createdb else ""
        self.sql(f"DROP ROLE IF EXISTS {name}")
        self.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'{extra}")
        self.sql(f"GRANT ALL ON SCHEMA public TO {name}", dbname="postgres")

    def set_password(self, name: str, password: str) -> None:
        self.sql(f"ALTER ROLE {name} PASSWORD '{password}'")
