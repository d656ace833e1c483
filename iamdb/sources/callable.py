"""A source that calls a function of the user's."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..credentials import Credential, CredentialSource, Target
from ..deadline import Deadline, scope
from ..engine import Clock, RefreshPolicy
from ..errors import ConfigurationError


class CallableSource(CredentialSource):
    """Calls ``func()`` for a password (or a :class:`Credential`).

    ``func`` takes no arguments and returns the password as a non-empty str,
    or a :class:`~iamdb.Credential` (to give a user name or an expiry too).

    ``ttl`` (seconds): with ``ttl=0``, the default, ``func`` is called for
    every new connection, as a bare callable in ``PASSWORD`` is. With a ttl,
    the result is cached and refreshed ahead of its end, one call at a time.
    A refused login always calls ``func`` again.
    """

    def __init__(
        self,
        func: Callable[[], str | Credential],
        *,
        ttl: float = 0,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not callable(func):
            kind = type(func).__name__
            del func  # a password given by mistake: not a local of the raising frame
            raise ConfigurationError(f"CallableSource needs a callable, not {kind}")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl < 0:
            raise ConfigurationError(
                f"CallableSource: ttl must be a finite number of seconds >= 0 (0: call func for every "
                f"new connection), not {ttl!r}"
            )
        self.func = func
        self.ttl = float(ttl)
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        name = getattr(self.func, "__qualname__", None) or type(self.func).__name__
        module = getattr(self.func, "__module__", None)
        label = f"{module}.{name}" if module else name
        ttl = f", ttl={self.ttl:g}" if self.ttl else ""
        return f"CallableSource({label}{ttl})"

    @property
    def uses_cache(self) -> bool:
        return bool(self.ttl)

    def get_credentials(
        self, target: Target | None = None, *, deadline: Deadline | None = None
    ) -> Credential:
        if not self.ttl:
            with scope(deadline):
                return self._checked_fetch(target or Target())
        return super().get_credentials(target, deadline=deadline)

    def fetch(self, target: Target) -> Credential:
        value: Any = self.func()
        if isinstance(value, Credential):
            credential = value
        elif isinstance(value, str) and value:
            credential = Credential(password=value)
        else:
            kind = "an empty string" if value == "" else type(value).__name__
            del value  # it may hold the password in another type: not a local of the raising frame
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} returned {kind}; "
                "it must return a non-empty str or an iamdb.Credential"
            )
        if self.ttl and credential.expires_at is None and credential.refresh_after is None:
            credential = credential.replace(refresh_after=self._clock.time() + self.ttl)
        return credential
