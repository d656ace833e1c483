"""The policy of a connection attempt, without Django: options, login retries, retirement.

- :class:`ConnectOptions`: ``OPTIONS["iamdb"]``, validated when settings are read;
- :class:`LoginRetry`: open a connection; when the server refuses the login,
  invalidate the credential, fetch a new one and try again, until one
  :class:`~iamdb.deadline.Deadline` (the retry budget) ends. A token source
  (every fetch signs a new token) is retried once: a wrong IAM policy fails fast;
- :func:`retire_at`: when a connection made with a credential must be closed,
  before the server ends its sessions (a Vault lease).

Time comes from the source's clock; the backends are glue around these.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from . import signals
from .clock import Clock
from .credentials import CredentialSource
from .deadline import Deadline
from .errors import ConfigurationError, CredentialError, IamdbError, describe, secret_free
from .values import Credential, Target

logger = logging.getLogger("iamdb")

#: The key in ``OPTIONS`` that holds iamdb's own settings; never reaches the driver.
OPTIONS_KEY = "iamdb"

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class ConnectOptions:
    """iamdb's settings for one database, from ``OPTIONS["iamdb"]``.

    - ``retry_budget``: seconds a connection attempt may take, retries of a
      refused login included (0 disables retrying);
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
        where = f"database {alias!r}: OPTIONS[{OPTIONS_KEY!r}]"
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{where} must be a dict, not {type(raw).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in set(raw) - set(known))
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, float] = {}
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigurationError(
                    f"{where}[{key!r}] must be a finite number of seconds >= 0, not {value!r}"
                )
            if value < 0:
                raise ConfigurationError(f"{where}[{key!r}] must be >= 0, not {value!r}")
            values[key] = float(value)
        result = cls(**values)
        if result.retry_delay > result.max_retry_delay:
            raise ConfigurationError(
                f"{where}: retry_delay ({result.retry_delay:g}) must be <= max_retry_delay "
                f"({result.max_retry_delay:g})"
            )
        return result


_DEFAULT_OPTIONS = ConnectOptions()


class LoginRetry:
    """Opens connections for one database, retrying refused logins with fresh credentials."""

    def __init__(
        self,
        source: CredentialSource,
        options: ConnectOptions,
        *,
        clock: Clock,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.source = source
        self.options = options
        self.clock = clock
        self.jitter = jitter

    def deadline(self) -> Deadline:
        """The deadline of a connection attempt starting now."""
        return Deadline.after(self.options.retry_budget, self.clock)

    def run(
        self,
        target: Target,
        open_with: Callable[[Credential], C],
        refused: Callable[[BaseException], bool],
        credential: Credential,
        deadline: Deadline,
    ) -> tuple[C, Credential]:
        """Open a connection with ``credential`` (``open_with`` builds the driver's
        parameters from it); return the connection and the credential it used.

        Only a refused login is retried: the first retry at once (the credential
        was just invalidated), then after a growing, jittered delay; no attempt
        or fetch starts after ``deadline``. Giving up raises a
        :class:`CredentialError` naming the database and the source, with the
        server's refusal as ``__cause__``.
        """
        source = self.source
        delay = 0.0
        attempt = 1
        while True:
            try:
                return open_with(credential), credential
            except Exception as exc:
                if not refused(exc):
                    raise
                source.invalidate(target, password=credential.password)
                if source.token_per_fetch and attempt >= 2:
                    reason = "a new token was refused too: check the IAM policy and the database user"
                elif deadline.remaining() <= delay:
                    reason = f"gave up after the retry budget of {self.options.retry_budget:g} s"
                else:
                    reason = None
                signals.login_refused.send(
                    type(source), source=source, alias=target.alias, attempt=attempt, retrying=reason is None
                )
                if reason is not None:
                    raise self._refused(target, exc, attempt, reason) from secret_free(exc)
                logger.info(
                    "iamdb: database %r: login refused (attempt %d), fetching a new credential from %s",
                    target.alias,
                    attempt,
                    source.describe(),
                )
                if delay:
                    self.clock.sleep(delay * (0.5 + self.jitter() / 2))
                delay = min(max(delay * 2, self.options.retry_delay), self.options.max_retry_delay)
                attempt += 1
                try:
                    credential = source.get_credentials(target, deadline=deadline)
                except IamdbError as fetch_error:
                    reason = f"no new credential: {describe(fetch_error)}"
                    raise self._refused(target, exc, attempt - 1, reason) from secret_free(exc)

    def _refused(self, target: Target, exc: BaseException, attempts: int, reason: str) -> CredentialError:
        return CredentialError(
            f"database {target.alias!r}: the server refused the login {attempts} time(s) with credentials "
            f"from {self.source.describe()}; {reason} ({describe(exc)})"
        )


def sessions_end(
    source: CredentialSource, target: Target, credential: Credential, known: float | None = None
) -> float | None:
    """When sessions made with ``credential`` end, on the source's monotonic clock.

    ``known`` is the end as known before (at connect): the source's current answer
    replaces it (a renewed lease ends later), unless the source no longer knows
    the credential. None when they don't end.
    """
    end = source.sessions_end(target, credential)
    return known if end is None else end


def retire_at(end: float | None, credential: Credential, margin: float) -> float | None:
    """When a connection whose sessions end at ``end`` must be closed: ``margin``
    seconds before, or a tenth of the credential's lifetime if that is longer."""
    if end is None or end == math.inf:
        return None
    lifetime = 0.0
    if credential.sessions_end_at is not None and credential.issued_at is not None:
        lifetime = credential.sessions_end_at - credential.issued_at
    return end - max(margin, lifetime / 10)
