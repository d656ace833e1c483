"""PostgreSQL backend: Django's, with credentials resolved at connect time,
including for every connection that Django's pool (Django 5.1+) opens."""

from __future__ import annotations

import time
from typing import Any

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from .._shared import Binding, CredentialsWrapperMixin
from .client import DatabaseClient

Database: Any = base.Database  # type: ignore[attr-defined]  # psycopg or psycopg2
_HAS_POOL = hasattr(base.DatabaseWrapper, "pool")  # Django 5.1+

# What PostgreSQL says when it refuses a password (RDS IAM gives the PAM one).
_REFUSED_LOGIN = ("password authentication failed for user", "PAM authentication failed for user")


def login_refused(exc: BaseException) -> bool:
    """Whether a connect() error is a refused login. Connection errors carry no
    SQLSTATE, so the server's message is matched."""
    if not isinstance(exc, Database.OperationalError):
        return False
    message = str(exc)
    return any(text in message for text in _REFUSED_LOGIN)


class _PoolConnectionMixin:
    """Marks a pool connection class made by :func:`pool_connection_class`."""

    _iamdb_retire_at: float | None = None


def pool_connection_class(base_class: type[Any], binding: Binding) -> type[Any]:
    """A subclass of the pool's connection class whose ``connect()`` uses the current
    credential and retries a refused login with a fresh one, inside the pool's
    own connect path (auth errors never reach the backend when a pool is used)."""

    class IamdbPoolConnection(_PoolConnectionMixin, base_class):  # type: ignore[misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            params = dict(kwargs)
            credential = binding.apply(params)
            parent: Any = super()
            connection, credential = binding.connect(
                params, lambda p: parent.connect(conninfo, **p), login_refused, credential
            )
            connection._iamdb_retire_at = binding.retire_at(credential)
            return connection

    return IamdbPoolConnection


class DatabaseWrapper(CredentialsWrapperMixin, base.DatabaseWrapper):
    client_class = DatabaseClient

    def iamdb_login_refused(self, exc: BaseException) -> bool:
        return login_refused(exc)

    def iamdb_pooled(self) -> bool:
        # Not self.pool: Django's pool property calls get_connection_params().
        return (
            _HAS_POOL
            and self.alias != NO_DB_ALIAS
            and bool(self.settings_dict["OPTIONS"].get("pool"))
            and self.iamdb.source is not None
        )

    @property
    def pool(self) -> Any:
        pool = getattr(super(), "pool", None)  # Django 4.2 has no pool
        if pool is not None and not issubclass(pool.connection_class, _PoolConnectionMixin):
            binding = self.iamdb
            if binding.source is not None:
                # Django built the pool from get_connection_params(), which left the
                # credential out; every connection the pool opens asks for the current
                # one. The pool is not open yet: Django opens it after this property.
                pool.connection_class = pool_connection_class(pool.connection_class, binding)
        return pool

    def _configure_role(self, connection: Any) -> bool:
        # Django 5.1+ quotes the role through this wrapper's own connection
        # (ops.compose_sql), which inside a pool worker asks the pool for a
        # connection and waits until PoolTimeout: the pool never opens one with
        # OPTIONS["assume_role"]. Quote it with the driver instead.
        role = self.settings_dict["OPTIONS"].get("assume_role")
        if not role or not is_psycopg3:
            return bool(super()._configure_role(connection))  # type: ignore[misc]
        from psycopg import sql

        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        return True

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.pool
        if not pool:
            return super().get_new_connection(conn_params)
        # The pool connects (and retries a refused login) by itself. Here, a pooled
        # connection whose credential's sessions are about to end is discarded.
        # The last attempt is a connection the pool has just opened with the current
        # credential: it is kept even when due (a lease shorter than the retire
        # margin), and Django closes it at the end of the request.
        attempts = pool.max_size + 1
        for attempt in range(attempts):
            connection = base.DatabaseWrapper.get_new_connection(self, conn_params)
            retire_at = getattr(connection, "_iamdb_retire_at", None)
            if retire_at is None or retire_at > time.monotonic() or attempt == attempts - 1:
                break
            connection.close()
            pool.putconn(connection)
        self.iamdb_retire(retire_at)
        return connection
