"""What both engines' backends share: resolving credentials, retrying refused logins,
retiring connections before their credential ends, and resolved settings for the
command-line clients.

Nothing here writes into ``settings_dict``: it is ``settings.DATABASES[alias]``
itself, shared by every thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from django.db.backends.base.client import BaseDatabaseClient

from ..credentials import Credential, CredentialSource, Target, as_source
from ..errors import ConfigurationError

logger = logging.getLogger("iamdb")

#: The key in ``OPTIONS`` that holds iamdb's own settings; never reaches the driver.
OPTIONS_KEY = "iamdb"

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class ConnectOptions:
    """iamdb's settings for one database, from ``OPTIONS["iamdb"]``.

    - ``retry_budget``: seconds to keep retrying a refused login with fresh
      credentials before giving up (0 disables retrying);
    - ``retry_delay`` / ``max_retry_delay``: the first delay between attempts
      after the immediate retry, doubled each time up to the maximum;
    - ``retire_margin``: a connection whose credential ends its sessions (a
      Vault lease) is closed at least this many seconds before that end, or
      earlier when the lease is long (a tenth of its lifetime).
    """

    retry_budget: float = 5.0
    retry_delay: float = 0.05
    max_retry_delay: float = 1.0
    retire_margin: float = 5.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any], alias: str) -> ConnectOptions:
        raw = options.get(OPTIONS_KEY)
        if raw is None:
            return _DEFAULT_OPTIONS  # built once per wrapper: keep the common case cheap
        if not isinstance(raw, Mapping):
            raise ConfigurationError(
                f"database {alias!r}: OPTIONS[{OPTIONS_KEY!r}] must be a dict, not {type(raw).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigurationError(
                f"database {alias!r}: unknown OPTIONS[{OPTIONS_KEY!r}] key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        values: dict[str, float] = {}
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(
                    f"database {alias!r}: OPTIONS[{OPTIONS_KEY!r}][{key!r}] must be a number >= 0"
                )
            values[key] = float(value)
        return cls(**values)


_DEFAULT_OPTIONS = ConnectOptions()


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
        options: Mapping[str, Any] = settings_dict.get("OPTIONS") or {}
        self.options = ConnectOptions.from_options(options, alias)
        self.source: CredentialSource | None = as_source(settings_dict.get("PASSWORD"), alias=alias)
        self.target = Target.from_settings(settings_dict, alias=alias, vendor=vendor)
        if self.source is None:
            return
        clash = [key for key in (*password_keys, *user_keys) if key in options]
        if clash:
            raise ConfigurationError(
                f"database {alias!r}: PASSWORD is {self.source.describe()}, so OPTIONS must not set "
                f"{', '.join(clash)}: iamdb gives the driver the user and password itself"
            )
        if not self.target.user and not self.source.issues_username:
            raise ConfigurationError(
                f"database {alias!r}: USER is empty and {self.source.describe()} does not issue a user name"
            )
        self.source.check_target(self.target)

    # -- connections ------------------------------------------------------------------

    def credential(self) -> Credential | None:
        return None if self.source is None else self.source.get_credentials(self.target)

    def apply(
        self, params: dict[str, Any], *, user_key: str = "user", password_key: str = "password"
    ) -> Credential | None:
        """Put the current user and password into driver connection parameters;
        return the credential used (None with a plain string PASSWORD)."""
        credential = self.credential()
        if credential is not None:
            params[password_key] = credential.password
            if credential.username:
                params[user_key] = credential.username
        return credential

    def connect(
        self,
        params: dict[str, Any],
        open_connection: Callable[[dict[str, Any]], C],
        refused: Callable[[BaseException], bool],
        credential: Credential | None,
        *,
        user_key: str = "user",
        password_key: str = "password",
    ) -> tuple[C, Credential | None]:
        """Open a connection with ``params``, which carry ``credential`` (as
        :meth:`apply` put it there); return the connection and the credential used.

        When the login is refused, fetch a new
        credential and try again until ``retry_budget`` is spent.

        Only a refused login is retried; any other error is raised at once. The
        first retry is immediate (the credential was just invalidated), then
        with a growing, jittered delay.
        """
        if self.source is None:
            return open_connection(params), None
        deadline = time.monotonic() + self.options.retry_budget
        delay = 0.0
        attempt = 1
        while True:
            try:
                return open_connection(params), credential
            except Exception as exc:
                if not refused(exc):
                    raise
                self.source.invalidate(self.target, password=params.get(password_key))
                remaining = deadline - time.monotonic()
                if remaining <= delay:
                    _add_note(
                        exc,
                        f"iamdb: database {self.alias!r}: login refused {attempt} time(s) with credentials "
                        f"from {self.source.describe()}; gave up after the retry budget of "
                        f"{self.options.retry_budget:g} s",
                    )
                    raise
                logger.info(
                    "iamdb: database %r: login refused (attempt %d), fetching a new credential from %s",
                    self.alias,
                    attempt,
                    self.source.describe(),
                )
                if delay:
                    time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(max(delay * 2, self.options.retry_delay), self.options.max_retry_delay)
                attempt += 1
                params = dict(params)
                credential = self.apply(params, user_key=user_key, password_key=password_key)

    def retire_at(self, credential: Credential | None) -> float | None:
        """When (``time.monotonic()``) a connection made with ``credential`` must be
        closed: before its sessions end. None when they don't end."""
        if credential is None or credential.sessions_end_at is None:
            return None
        ends = credential.sessions_end_at
        if self.source is not None:
            # A renewed lease keeps the password and ends later.
            current = self.source.cached(self.target)
            if current is not None and current.password == credential.password:
                ends = max(ends, current.sessions_end_at or ends)
        now = time.time()
        lifetime = ends - (credential.issued_at or now)
        margin = max(self.options.retire_margin, lifetime / 10)
        return time.monotonic() + (ends - margin - now)

    # -- the command-line clients -----------------------------------------------------

    def resolved_settings(self) -> dict[str, Any]:
        """A copy of the settings with USER and PASSWORD as strings, for ``dbshell``
        and the test-database clone. The shared settings dict is left untouched."""
        resolved = dict(self.settings_dict)
        options = dict(resolved.get("OPTIONS") or {})
        options.pop(OPTIONS_KEY, None)
        resolved["OPTIONS"] = options
        credential = self.credential()
        if credential is not None:
            resolved["PASSWORD"] = credential.password
            if credential.username:
                resolved["USER"] = credential.username
        return resolved


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)


class CredentialsWrapperMixin:
    """Mixed into each engine's ``DatabaseWrapper`` before Django's own class."""

    settings_dict: dict[str, Any]
    alias: str
    vendor: str
    close_at: float | None
    _iamdb_binding: Binding | None = None
    _iamdb_credential: Credential | None = None

    # Driver keywords that carry the user and password (MySQL has aliases).
    iamdb_password_keys: tuple[str, ...] = ("password",)
    iamdb_user_keys: tuple[str, ...] = ("user",)

    @property
    def iamdb(self) -> Binding:
        binding = self._iamdb_binding
        if binding is None or binding.settings_dict is not self.settings_dict:
            binding = Binding(
                self.settings_dict,
                alias=self.alias,
                vendor=self.vendor,
                password_keys=self.iamdb_password_keys,
                user_keys=self.iamdb_user_keys,
            )
            self._iamdb_binding = binding
        return binding

    def iamdb_login_refused(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by the driver's connect(), is a refused login."""
        raise NotImplementedError

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
        params.pop(OPTIONS_KEY, None)
        if self.iamdb_pooled():
            # The pool asks for the credential itself, for each connection it opens;
            # what Django put here is the source object from the settings.
            params.pop("password", None)
            self._iamdb_credential = None
        else:
            # Django calls get_new_connection() with these params next, in this thread.
            self._iamdb_credential = self.iamdb.apply(params)
        return params

    def iamdb_pooled(self) -> bool:
        """Whether connections come from a pool that resolves credentials itself."""
        return False

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        binding = self.iamdb
        connection, credential = binding.connect(
            conn_params,
            super().get_new_connection,  # type: ignore[misc]
            self.iamdb_login_refused,
            self._iamdb_credential,
        )
        self.iamdb_retire(binding.retire_at(credential))
        return connection

    def iamdb_retire(self, retire_at: float | None) -> None:
        """Close the connection (in ``close_if_unusable_or_obsolete``) by ``retire_at``."""
        if retire_at is not None:
            self.close_at = retire_at if self.close_at is None else min(self.close_at, retire_at)


class CredentialsClientMixin(BaseDatabaseClient):
    """``dbshell`` with the current credential: the password goes into the child's
    environment only (never its command line), and the settings stay untouched."""

    connection: Any

    def runshell(self, parameters: Iterable[str]) -> None:
        settings_dict = self.connection.iamdb.resolved_settings()
        args, env = self.settings_to_cmd_args_env(settings_dict, parameters)
        env = {**os.environ, **env} if env else None
        subprocess.run(args, env=env, check=True)
