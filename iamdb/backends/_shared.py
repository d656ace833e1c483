"""The glue between Django's backends and iamdb's credential policy, shared by both engines.

Nothing here writes into ``settings_dict``: it is ``settings.DATABASES[alias]``
itself, shared by every thread. The policy (retries, deadlines, retirement)
lives in :mod:`iamdb.retry`; this module applies it on Django's paths.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar

from django.db.backends.base.client import BaseDatabaseClient

from .. import signals
from ..credentials import CredentialSource, as_source
from ..deadline import Deadline
from ..errors import ConfigurationError, IamdbError, secret_free
from ..retry import OPTIONS_KEY, ConnectOptions, LoginRetry, retire_at, sessions_end
from ..values import Credential, SecretStr, Target

__all__ = ["OPTIONS_KEY", "Binding", "ConnectOptions", "CredentialsClientMixin", "CredentialsWrapperMixin"]

logger = logging.getLogger("iamdb")

C = TypeVar("C")


class Binding:
    """How one database entry gets its credentials: its source, target and options.

    Made once per ``DatabaseWrapper`` (one per thread and alias). With a plain
    string PASSWORD, ``source`` is None and every method is a no-op, so the
    backend behaves exactly like Django's.
    """

    def __init__(
        self,
        settings_dict: Mapping[str, Any],
        *,
        alias: str,
        vendor: str,
        password_keys: tuple[str, ...] = ("password",),
        user_keys: tuple[str, ...] = ("user",),
    ) -> None:
        self.settings_dict = settings_dict
        self.alias = alias
        #: Whether Django's pool opens the connections (set by the backend), and whether
        #: get_connection_params() needs nothing but the credential (no pool, no
        #: OPTIONS["iamdb"] and no sslpassword to remove or hide): the hot path.
        self.pooled = False
        self.plain = True
        self.has_options_key = False
        self.sslpassword: SecretStr | None = None
        #: The source cache's ``fresh(key, now)`` for the first target's key, when it caches.
        #: The cache slot of the first target's credential, once it exists (see the hot path).
        self.slot: Any = None
        options: Mapping[str, Any] = settings_dict.get("OPTIONS") or {}
        self.options = ConnectOptions.from_options(options, alias)
        self.source: CredentialSource | None = as_source(settings_dict.get("PASSWORD"), alias=alias)
        if self.source is None:
            return
        self.target = Target.from_settings(
            settings_dict, alias=alias, vendor=vendor, source=self.source.describe()
        )
        self.retry = LoginRetry(self.source, self.options, clock=self.source._clock)
        clash = [key for key in (*password_keys, *user_keys) if key in options]
        if clash:
            raise ConfigurationError(
                f"database {alias!r}: PASSWORD is {self.source.describe()}, so OPTIONS must not set "
                f"{', '.join(clash)}: iamdb gives the driver the user and password itself"
            )
        if not self.target.user and not self.source.issues_username:
            raise ConfigurationError(
                f"database {alias!r}: USER is empty and {self.source.describe()} does not issue a user "
                "name: set USER"
            )
        self._targets = self._make_targets()
        for target in self._targets:
            self.source.check_target(target)
        self.monotonic = self.source._clock.monotonic
        self.has_options_key = OPTIONS_KEY in options
        passphrase = options.get("sslpassword")
        self.sslpassword = SecretStr(passphrase) if isinstance(passphrase, str) else None
        # The cache key of the first target, for fresh() (a key depends on the target only).
        self.cache_key: Hashable = self.source.cache_key(self._targets[0])

    def _make_targets(self) -> list[Target]:
        """The targets a connection attempt tries in turn: one per host of a multi-host
        setting when every fetch signs for one host (a token source), else one."""
        assert self.source is not None
        if self.source.token_per_fetch and self.target.multi_host:
            return [self.target.single(host, port) for host, port in self.target.endpoints]
        return [self.target]

    # -- connections ------------------------------------------------------------------

    def deadline(self, started: float | None = None) -> Deadline | None:
        """The deadline of a connection attempt that started at ``started`` (the source
        clock's monotonic time; default: now). None without a source."""
        if self.source is None:
            return None
        if started is None:
            return self.retry.deadline()
        return Deadline(started + self.options.retry_budget, self.source._clock)

    def credential(self, deadline: Deadline | None = None, target: Target | None = None) -> Credential | None:
        if self.source is None:
            return None
        return self.source.get_credentials(target or self._targets[0], deadline=deadline)

    @staticmethod
    def apply(
        params: dict[str, Any],
        credential: Credential | None,
        *,
        user_key: str = "user",
        password_key: str = "password",
    ) -> dict[str, Any]:
        """``params`` with the credential's user and password in them (a copy)."""
        if credential is None:
            return params
        applied = dict(params)
        applied[password_key] = credential.password
        if credential.username:
            applied[user_key] = credential.username
        return applied

    def connect(
        self,
        params: dict[str, Any],
        open_connection: Callable[[dict[str, Any]], C],
        refused: Callable[[BaseException], bool],
        deadline: Deadline | None = None,
        credential: Credential | None = None,
    ) -> tuple[C, Credential | None]:
        """Open a connection with ``params`` and the current credential (``credential``
        if given, fetched for the first target), retrying refused logins within the
        deadline; return the connection and the credential it used.

        With a token source and a multi-host setting, each host is tried in turn
        with a token signed for it. A driver error raised from here carries no
        frames of the driver (whose locals hold the password).
        """
        if self.source is None:
            return open_connection(params), None
        deadline = deadline or self.retry.deadline()
        targets = self._targets
        last: BaseException | None = None
        for index, target in enumerate(targets):
            narrowed = params
            if len(targets) > 1:
                narrowed = dict(params, host=target.host)
                narrowed.pop("port", None)
                if target.port is not None:
                    narrowed["port"] = target.port
            if credential is None or index > 0:
                credential = self.source.get_credentials(target, deadline=deadline)

            def open_with(cred: Credential, base: dict[str, Any] = narrowed) -> C:
                return open_connection(self.apply(base, cred))

            try:
                return self.retry.run(target, open_with, refused, credential, deadline)
            except Exception as exc:
                if index == len(targets) - 1 or deadline.expired():
                    # Not a bare raise: before Python 3.11 it would restore the driver's frames.
                    raise secret_free(exc)  # noqa: B904 - the exception itself, re-raised
                logger.info(
                    "iamdb: database %r: %s:%s failed, trying the next host",
                    self.alias,
                    target.host,
                    target.port,
                )
                last = exc
        raise AssertionError("unreachable") from last  # pragma: no cover

    def sessions_end(self, credential: Credential | None, known: float | None = None) -> float | None:
        """When (source's monotonic clock) sessions made with ``credential`` end."""
        if (
            self.source is None
            or credential is None
            or (credential.sessions_end_at is None and known is None)
        ):
            return None
        return sessions_end(self.source, self.target, credential, known)

    def close_at(self, end: float | None, credential: Credential | None) -> float | None:
        """Django's ``close_at`` (``time.monotonic()``) that retires a connection
        whose sessions end at ``end``. None when it need not be retired."""
        if self.source is None or credential is None:
            return None
        moment = retire_at(end, credential, self.options.retire_margin)
        if moment is None:
            return None
        return time.monotonic() + (moment - self.source._clock.monotonic())

    # -- the command-line clients -----------------------------------------------------

    def resolved_settings(self) -> dict[str, Any]:
        """A copy of the settings with USER and PASSWORD as strings, for ``dbshell``
        and the test-database clone. The shared settings dict is left untouched."""
        resolved = dict(self.settings_dict)
        options = dict(resolved.get("OPTIONS") or {})
        options.pop(OPTIONS_KEY, None)
        resolved["OPTIONS"] = options
        credential = self.credential(self.deadline())
        if credential is not None:
            resolved["PASSWORD"] = credential.password
            if credential.username:
                resolved["USER"] = credential.username
        return resolved


class CredentialsWrapperMixin:
    """Mixed into each engine's ``DatabaseWrapper`` before Django's own class."""

    settings_dict: dict[str, Any]
    alias: str
    vendor: str
    close_at: float | None
    connection: Any
    _iamdb_binding: Binding | None = None
    _iamdb_started: float | None = None
    # The credential of the open connection, when its sessions end (source's clock),
    # and the close_at that Django itself set (CONN_MAX_AGE).
    _iamdb_credential: Credential | None = None
    _iamdb_sessions_end: float | None = None
    _iamdb_django_close_at: float | None = None
    #: When (``time.monotonic()``) the open connection is retired for its credential.
    iamdb_retire_at: float | None = None

    # Driver keywords that carry the user and password (MySQL has aliases).
    iamdb_password_keys: tuple[str, ...] = ("password",)
    iamdb_user_keys: tuple[str, ...] = ("user",)

    @property
    def iamdb(self) -> Binding:
        binding = self._iamdb_binding
        if binding is None or binding.settings_dict is not self.settings_dict:
            try:
                binding = Binding(
                    self.settings_dict,
                    alias=self.alias,
                    vendor=self.vendor,
                    password_keys=self.iamdb_password_keys,
                    user_keys=self.iamdb_user_keys,
                )
            except IamdbError as exc:
                # Raised without the frames below, whose locals hold the settings (passwords).
                raise secret_free(exc)  # noqa: B904 - the exception itself, re-raised
            binding.pooled = binding.source is not None and self.iamdb_uses_pool()
            binding.plain = not (binding.pooled or binding.has_options_key or binding.sslpassword is not None)
            self._iamdb_binding = binding
        return binding

    def iamdb_login_refused(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by the driver's connect(), is a refused login."""
        raise NotImplementedError

    def iamdb_uses_pool(self) -> bool:
        """Whether the settings ask for a pool that resolves credentials itself."""
        return False

    def iamdb_pooled(self) -> bool:
        """Whether connections come from a pool that resolves credentials itself."""
        return self.iamdb.pooled

    def get_connection_params(self) -> dict[str, Any]:
        # The binding first: it checks the settings (PORT, HOST, ...) before Django uses them.
        binding = self._iamdb_binding
        if binding is None or binding.settings_dict is not self.settings_dict:
            binding = self.iamdb
        params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
        if binding.source is None:
            params.pop(OPTIONS_KEY, None)
            return params
        # What Django put under "password" is the source object from the settings.
        del params["password"]
        if not binding.plain:
            if binding.has_options_key:
                del params[OPTIONS_KEY]
            if binding.sslpassword is not None:  # PostgreSQL's key passphrase: hidden on the debug page
                params["sslpassword"] = binding.sslpassword
            if binding.pooled:
                return params  # the pool asks for the credential for each connection it opens
        # Django calls get_new_connection() with these params next, in this thread: the
        # attempt (and its deadline) starts now, with the credential.
        self._iamdb_started = started = binding.monotonic()
        # The hot path: the cached credential of the first target, read from its cache slot
        # without a call or a lock (CredentialCache.fresh(), inlined).
        slot = binding.slot
        credential = None
        if slot is not None:
            state = slot.state
            if started < state.windows.advisory_at:
                credential = state.credential
        if credential is None:
            credential = binding.credential(binding.deadline(started))
            assert credential is not None
            if binding.source.uses_cache:
                binding.slot = binding.source._cache.slot(binding.cache_key)
        self._iamdb_credential = credential
        params["password"] = credential.password
        if credential.username:
            params[self.iamdb_user_keys[0]] = credential.username
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        binding = self.iamdb
        if binding.source is None:
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        connection, credential = binding.connect(
            conn_params,
            super().get_new_connection,  # type: ignore[misc]
            self.iamdb_login_refused,
            binding.deadline(self._iamdb_started),
            self._iamdb_credential,
        )
        self.iamdb_track(credential)
        return connection

    def iamdb_track(self, credential: Credential | None, sessions_end: float | None = None) -> None:
        """Remember the open connection's credential and set ``close_at`` before its sessions end."""
        binding = self.iamdb
        self._iamdb_credential = credential
        self._iamdb_django_close_at = self.close_at
        self._iamdb_sessions_end = binding.sessions_end(credential, sessions_end)
        self._iamdb_set_close_at()

    def _iamdb_set_close_at(self) -> None:
        self.iamdb_retire_at = retire = self.iamdb.close_at(self._iamdb_sessions_end, self._iamdb_credential)
        django_close_at = self._iamdb_django_close_at
        if retire is None:
            self.close_at = django_close_at
        else:
            self.close_at = retire if django_close_at is None else min(django_close_at, retire)

    def close_if_unusable_or_obsolete(self) -> None:
        retiring = False
        if self.connection is not None and self._iamdb_credential is not None:
            # A renewed lease ends later: ask the source again, at every request's start and end.
            self._iamdb_sessions_end = self.iamdb.sessions_end(
                self._iamdb_credential, self._iamdb_sessions_end
            )
            self._iamdb_set_close_at()
            retire_at = self.iamdb_retire_at
            retiring = retire_at is not None and retire_at <= time.monotonic()
        super().close_if_unusable_or_obsolete()  # type: ignore[misc]
        if retiring and self.connection is None:
            source = self.iamdb.source
            logger.info(
                "iamdb: database %r: connection retired before its credential's sessions end (%s)",
                self.alias,
                source.describe() if source else "-",
            )
            signals.connection_retired.send(type(source), source=source, alias=self.alias)


class CredentialsClientMixin(BaseDatabaseClient):
    """``dbshell`` with the current credential: the password goes into the child's
    environment only (never its command line), and the settings stay untouched."""

    connection: Any

    def runshell(self, parameters: Iterable[str]) -> None:
        settings_dict = self.connection.iamdb.resolved_settings()
        args, env = self.settings_to_cmd_args_env(settings_dict, parameters)
        env = {**os.environ, **env} if env else None
        subprocess.run(args, env=env, check=True)
