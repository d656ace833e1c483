"""Administration of the MariaDB/MySQL server the tests use.

The machine's own server is used as it is (root over TCP with no password, or
what ``IAMDB_TEST_MYSQL_*`` say); tests only create and drop their own users
and databases, they never change the server's configuration.
"""

from __future__ import annotations

import os
from typing import Any


class MysqlAdmin:
    def __init__(self) -> None:
        self.host = os.environ.get("IAMDB_TEST_MYSQL_HOST", "127.0.0.1")
        self.port = int(os.environ.get("IAMDB_TEST_MYSQL_PORT", "3306"))
        self.user = os.environ.get("IAMDB_TEST_MYSQL_USER", "root")
        self.password = os.environ.get("IAMDB_TEST_MYSQL_PASSWORD", "")

    def connect(self) -> Any:
        import MySQLdb

        return MySQLdb.connect(host=self.host, port=self.port, user=self.user, password=self.password)

    def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            rows: list[tuple[Any, ...]] = []
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()

    def create_user(self, name: str, password: str, *, databases: tuple[str, ...] = ("test",)) -> None:
        self.sql(
            f"DROP USER IF EXISTS '{name}'@'%'",
            f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'",
            *(f"GRANT ALL ON `{db}`.* TO '{name}'@'%'" for db in databases),
        )

    def set_password(self, name: str, password: str) -> None:
        self.sql(f"ALTER USER '{name}'@'%' IDENTIFIED BY '{password}'")

    def drop_user(self, name: str) -> None:
        self.sql(f"DROP USER IF EXISTS '{name}'@'%'")
