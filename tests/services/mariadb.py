"""A private, throwaway MariaDB server with TLS and PAM (the RDS-IAM emulator's MySQL side).

Made with ``mariadb-install-db`` in a temporary folder; listens on 127.0.0.1
on a port of its own. ``auth_pam`` (v1) with ``pam_use_cleartext_plugin=ON`` makes
clients send the password with ``mysql_clear_password``, exactly as RDS does.
The administrator is root over the server's own socket (unix_socket auth).
Needs root (the server runs as the ``mysql`` user).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.services.mysql import MysqlAdmin
from tests.services.postgres import free_port
from tests.services.process import stop_process
from tests.services.tls import TestCA


class PrivateMariadb(MysqlAdmin):
    def __init__(self, *, tls: TestCA | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="iamdb-mariadb-"))
        self.datadir = self.root / "data"
        self.socket = self.root / "mariadb.sock"
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateMariadb:
        if os.geteuid() != 0:
            raise PermissionError("the private MariaDB server needs root (it runs as 'mysql')")
        self.root.chmod(0o755)
        self.datadir.mkdir()
        shutil.chown(self.root, "mysql", "mysql")
        shutil.chown(self.datadir, "mysql", "mysql")
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install is None:
            raise RuntimeError("mariadb-install-db not found: install mariadb-server")
        result = subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"mariadb-install-db failed: {result.stdout}{result.stderr}")
        args = [
            shutil.which("mariadbd") or "/usr/sbin/mariadbd",
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.root / 'mariadb.pid'}",
            f"--log-error={self.root / 'error.log'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--user=mysql",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
            "--max-connections=200",
            # v1 runs PAM inside the server (as 'mysql'); v2 needs a setuid helper that
            # trimmed installs lack. Both are the 'pam' authentication plugin.
            "--plugin-load-add=auth_pam_v1",
            "--pam-use-cleartext-plugin=ON",
        ]
        if self.tls is not None:
            tls_dir = self.root / "tls"
            tls_dir.mkdir()
            for name in ("ca", "cert", "key"):
                shutil.copyfile(getattr(self.tls, name), tls_dir / f"{name}.pem")
                shutil.chown(tls_dir / f"{name}.pem", "mysql", "mysql")
            args += [
                f"--ssl-ca={tls_dir / 'ca.pem'}",
                f"--ssl-cert={tls_dir / 'cert.pem'}",
                f"--ssl-key={tls_dir / 'key.pem'}",
            ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sql("SELECT 1")
                break
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop(keep_files=True)
                    raise RuntimeError(f"mariadbd did not start: {self.log()}") from None
                time.sleep(0.2)
        self.sql("CREATE DATABASE IF NOT EXISTS test")
        return self

    def stop(self, *, keep_files: bool = False) -> None:
        stop_process(self.process, timeout=30)
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- administration ----------------------------------------------------------------

    def connect(self) -> Any:
        import MySQLdb

        return MySQLdb.connect(unix_socket=str(self.socket), user="root")

    def create_iam_user(self, name: str, pam_service: str) -> None:
        """A user that logs in with an IAM token (RDS: IDENTIFIED WITH AWSAuthenticationPlugin)."""
        self.sql(
            f"DROP USER IF EXISTS '{name}'@'%'",
            f"CREATE USER '{name}'@'%' IDENTIFIED VIA pam USING '{pam_service}' REQUIRE SSL",
            f"GRANT ALL ON `test`.* TO '{name}'@'%'",
        )
