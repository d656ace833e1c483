"""The PAM side of the OAuth-token emulators: a PAM service that runs
:mod:`tests.services.token_checker` through ``pam_exec``, and the users it serves.

The same private servers as the RDS-IAM emulator are used (``iam_postgres``, ``iam_mariadb``):
MariaDB names the PAM service per user; on PostgreSQL, members of :data:`PG_ROLE` are sent to
this service by a ``pg_hba.conf`` line of its own, above the emulator's. Needs root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.services.pam import PamChecker

CHECKER = Path(__file__).with_name("token_checker.py")
#: PostgreSQL role whose members log in with OAuth tokens.
PG_ROLE = "iamdb_oauth"


class TokenPam(PamChecker):
    """The PAM service, the checker and its settings (issuers' keys, users)."""

    label = "OAuth token checker"

    def __init__(self) -> None:
        super().__init__(CHECKER, "iamdb-token")
        self.keys: dict[str, str] = {}
        self.users: dict[str, list[str]] = {}

    def trust(self, issuer: str, key: str) -> None:
        self.keys[issuer] = key
        self.write_config()

    def add_user(self, db_user: str, issuer: str, principal: str) -> None:
        """Let ``db_user`` log in with ``issuer``'s tokens for ``principal``."""
        self.users[db_user] = [issuer, principal]
        self.write_config()

    def config(self) -> dict[str, Any]:
        return {"keys": self.keys, "users": self.users}
