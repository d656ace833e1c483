"""PostgreSQL backend: Django's, with credentials resolved at connect time,
including for every connection that Django's pool (Django 5.1+) opens."""

from __future__ import annotations

import time
from typing import Any

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from ...errors import ConfigurationError, CredentialError, IamdbError, describe, secret_free
from .._shared import Binding, CredentialsWrapperMixin
from .client import DatabaseClient

Database: Any = base.Database  # type: ignore[attr-defined]  # psycopg or psycopg2
_HAS_POOL = hasattr(base.DatabaseWrapper, "pool")  # Django 5.1+

# What PostgreSQL says when it refuses a password (RDS IAM gives the PAM one).
_REFUSED_LOGIN = ("password authentication failed for user", "PAM authentication failed for user")

#: How often a request waiting for a pooled connection looks at the pool's connect errors.
_POOL_POLL = 0.25
#: How long past the retry budget a request waits for the pool while its connects fail.
_POOL_GRACE = 2.0


def login_refused(exc: BaseException) -> bool:
    """Whether a connect() error is a refused login. Connection errors carry no
    SQLSTATE, so the server's message is matched."""
    if not isinstance(exc, Database.OperationalError):
        return False
    message = str(exc)
    return any(text in message for text in _REFUSED_LOGIN)


class _PoolConnectionMixin:
    """Marks a pool connection class made by :func:`pool_connection_class`, and
    records how the pool's last connection attempts went (for the requests waiting).

    One tuple, replaced whole: no lock (that a fork could leave held) is needed."""

    _iamdb_last: tuple[BaseException | None, float, float] = (None, float("-inf"), float("-inf"))

    @classmethod
    def iamdb_record(cls, error: BaseException | None) -> None:
        last_error, failed_at, ok_at = cls._iamdb_last
        if error is None:
            cls._iamdb_last = (last_error, failed_at, time.monotonic())
        else:
            cls._iamdb_last = (error, time.monotonic(), ok_at)

    @classmethod
    def iamdb_failing(cls) -> BaseException | None:
        """The error of the pool's last connection attempt, if none succeeded since."""
        error, failed_at, ok_at = cls._iamdb_last
        return error if failed_at > ok_at else None


def pool_connection_class(base_class: type[Any], binding: Binding) -> type[Any]:
    """A subclass of the pool's connection class whose ``connect()`` uses the current
    credential and retries a refused login with a fresh one, inside the pool's
    own connect path (auth errors never reach the backend when a pool is used).

    psycopg_pool's callable ``kwargs`` (3.3+) could supply the credential, but
    not retry a refused login at once: the pool would wait a second or more
    before its next attempt, and the request with it.
    """

    class IamdbPoolConnection(_PoolConnectionMixin, base_class):  # type: ignore[misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            parent: Any = super()
            try:
                connection, credential = binding.connect(
                    kwargs, lambda params: parent.connect(conninfo, **params), login_refused
                )
            except Exception as exc:
                cls.iamdb_record(secret_free(exc))
                raise exc  # not a bare raise: before Python 3.11 that restores the driver's frames
            cls.iamdb_record(None)
            connection._iamdb_credential = credential
            connection._iamdb_sessions_end = binding.sessions_end(credential)
            return connection

    return IamdbPoolConnection


class _TimedPool:
    """Django's pool as ``get_new_connection`` sees it: ``getconn()`` gives up, with an
    error naming the database and the source, soon after the pool's connects start
    failing (instead of waiting the pool's whole timeout for a PoolTimeout)."""

    def __init__(self, pool: Any, binding: Binding) -> None:
        self._pool = pool
        self._binding = binding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def getconn(self) -> Any:
        from psycopg_pool import PoolTimeout

        pool, binding = self._pool, self._binding
        start = time.monotonic()
        end = start + pool.timeout
        give_up = start + binding.options.retry_budget + _POOL_GRACE
        while True:
            now = time.monotonic()
            error = pool.connection_class.iamdb_failing()
            if error is not None and (isinstance(error, ConfigurationError) or now >= give_up):
                raise _pool_error(binding, error, now - start)
            try:
                return pool.getconn(timeout=max(min(_POOL_POLL, end - now), 0.01))
            except PoolTimeout as exc:
                if time.monotonic() >= end:
                    error = pool.connection_class.iamdb_failing()
                    assert binding.source is not None
                    failed = f"; its last connection attempt failed: {describe(error)}" if error else ""
                    raise CredentialError(
                        f"database {binding.alias!r}: no connection from Django's pool within "
                        f"{pool.timeout:g} s (credentials from {binding.source.describe()}){failed}"
                    ) from secret_free(error or exc)


def _pool_error(binding: Binding, error: BaseException, waited: float) -> IamdbError:
    if isinstance(error, IamdbError):
        again = type(error)(*error.args)
        again.__cause__ = error.__cause__
        return again
    assert binding.source is not None
    failure = CredentialError(
        f"database {binding.alias!r}: Django's pool could not open a connection with credentials from "
        f"{binding.source.describe()} (waited {waited:.1f} s): {describe(error)}"
    )
    failure.__cause__ = error
    return failure


class DatabaseWrapper(CredentialsWrapperMixin, base.DatabaseWrapper):
    client_class = DatabaseClient
    _iamdb_timed_pool = False

    def iamdb_login_refused(self, exc: BaseException) -> bool:
        return login_refused(exc)

    def iamdb_uses_pool(self) -> bool:
        # Not self.pool: Django's pool property calls get_connection_params().
        return _HAS_POOL and self.alias != NO_DB_ALIAS and bool(self.settings_dict["OPTIONS"].get("pool"))

    @property
    def pool(self) -> Any:
        pool = getattr(super(), "pool", None)  # Django 4.2 has no pool
        if pool is None:
            return None
        binding = self.iamdb
        if binding.source is None:
            return pool
        if not issubclass(pool.connection_class, _PoolConnectionMixin):
            # Django built the pool from get_connection_params(), which left the
            # credential out; every connection the pool opens asks for the current
            # one. The pool is not open yet: Django opens it after this property.
            pool.connection_class = pool_connection_class(pool.connection_class, binding)
        return _TimedPool(pool, binding) if self._iamdb_timed_pool else pool

    def _configure_role(self, connection: Any) -> bool:
        # With a source and Django's pool, Django 5.1+ quotes the role through this
        # wrapper's own connection (ops.compose_sql), which inside a pool worker asks
        # the pool for a connection and waits until PoolTimeout: the pool never opens
        # one with OPTIONS["assume_role"]. Quote it with the driver instead. A plain
        # string PASSWORD keeps Django's own behaviour.
        role = self.settings_dict["OPTIONS"].get("assume_role")
        if not role or not is_psycopg3 or not self.iamdb_pooled():
            return bool(super()._configure_role(connection))  # type: ignore[misc]
        from psycopg import sql

        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        return True

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.iamdb_pooled():
            return super().get_new_connection(conn_params)
        # The pool connects (and retries a refused login) by itself; Django's own
        # get_new_connection() takes a connection from it through _TimedPool. A
        # pooled connection whose credential's sessions are about to end is
        # discarded. The last attempt is a connection the pool has just opened with
        # the current credential: it is kept even when due (a lease shorter than
        # the retire margin), and Django closes it at the end of the request.
        pool = self.pool
        attempts = pool.max_size + 1
        for attempt in range(attempts):
            self._iamdb_timed_pool = True
            try:
                # The class after the credentials mixin in this wrapper's MRO: Django's
                # PostgreSQL wrapper, or a subclass of it (PostGIS registers its adapters).
                connection = super(CredentialsWrapperMixin, self).get_new_connection(conn_params)
            finally:
                self._iamdb_timed_pool = False
            credential = getattr(connection, "_iamdb_credential", None)
            known = getattr(connection, "_iamdb_sessions_end", None)
            close_at = self.iamdb.close_at(self.iamdb.sessions_end(credential, known), credential)
            if close_at is None or close_at > time.monotonic() or attempt == attempts - 1:
                break
            _expire(connection)
            pool.putconn(connection)
        self.iamdb_track(credential, known)
        return connection

    def _close(self) -> None:
        connection = self.connection
        if (
            connection is not None
            and self.iamdb_pooled()
            and self.iamdb_retire_at is not None
            and self.iamdb_retire_at <= time.monotonic()
        ):
            _expire(connection)  # due: the pool discards it instead of lending it again
        super()._close()  # type: ignore[misc]


def _expire(connection: Any) -> None:
    """Make psycopg_pool treat ``connection`` as past its ``max_lifetime``: when it is
    returned, the pool closes it and opens a new one (logged at INFO, not as a warning)."""
    connection._expire_at = float("-inf")
