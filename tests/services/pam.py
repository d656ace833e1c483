"""A PAM service of the tests' own that runs a checker script through ``pam_exec``: the
database servers send a PAM user's password (a token) to it, and the checker accepts or
refuses it from a JSON config that the tests rewrite while the servers run. Needs root."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

PAM_DIR = Path("/etc/pam.d")


class PamChecker:
    """The service (``/etc/pam.d/<prefix>-<random>``), a copy of the checker in a folder the
    servers' users can read, and its config (``config()``, written atomically)."""

    label = "token checker"

    def __init__(self, checker: Path, prefix: str) -> None:
        self.source_checker = checker
        self.service = f"{prefix}-{secrets.token_hex(6)}"
        # A folder the database servers' users can read (the checker runs as them).
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.root.chmod(0o755)
        self.checker = self.root / checker.name
        self.config_path = self.root / "config.json"
        self.pam_file = PAM_DIR / self.service

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def install(self) -> Any:
        if os.geteuid() != 0:
            raise PermissionError(f"the {self.label} needs root (it writes a PAM service)")
        shutil.copyfile(self.source_checker, self.checker)
        self.checker.chmod(0o755)
        self.write_config()
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        self.pam_file.write_text(
            f"# iamdb tests: {self.label} (removed when the tests end)\n"
            f"auth required pam_exec.so expose_authtok quiet {python} {self.checker} {self.config_path}\n"
            "account required pam_permit.so\n"
        )
        return self

    def remove(self) -> None:
        self.pam_file.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def write_config(self) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config()))
        tmp.chmod(0o644)
        tmp.replace(self.config_path)  # atomic: a login never reads half a file
