"""The interface every source implements, and the shared machinery behind it.

``Credential`` and ``Target`` live in :mod:`iamdb.values` and are re-exported here.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Hashable
from typing import Any, ClassVar, TypeVar

from . import metrics, signals  # noqa: F401 - metrics: its receivers count every source's events
from .clock import SYSTEM_CLOCK, Clock, to_monotonic
from .deadline import Deadline
from .engine import CredentialCache, RefreshPolicy
from .errors import ConfigurationError, CredentialError, IamdbError, describe, secret_free
from .values import Credential, Target

__all__ = ["Credential", "CredentialSource", "Target", "as_source"]

logger = logging.getLogger("iamdb")


S = TypeVar("S", bound="CredentialSource")

# Every live source, so that a forked child re-creates locks and SDK clients.
_live_sources: weakref.WeakSet[CredentialSource] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for source in list(_live_sources):
        source._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CredentialSource:
    """Base class of every source: fetches credentials, caches and refreshes them.

    A subclass implements :meth:`fetch` (one call to whatever issues the
    credential, no caching) and, when the credential depends on where it is
    used, :meth:`cache_key`. Everything else is shared:

    - :meth:`get_credentials` / :meth:`get_password` return a cached credential,
      refreshed ahead of its expiry, with one fetch at a time per cache key;
    - :meth:`invalidate` drops a credential the server refused;
    - :meth:`sessions_end` tells when connections made with a credential end;
    - instances are always truthy, ``repr`` shows no secret, ``copy.deepcopy``
      returns the same object, and pickling drops locks, SDK clients and
      cached secrets (they are re-created on first use). After ``fork()`` the
      child keeps the cached credentials and re-creates its locks and SDK clients.
    """

    #: Whether the source issues the user name too (Vault, Secrets Manager).
    issues_username: ClassVar[bool] = False
    #: Whether every fetch makes a new token (RDS IAM): a refused login is then
    #: retried once, not for the whole retry budget (a wrong policy fails fast).
    token_per_fetch: ClassVar[bool] = False
    #: Attributes that are never pickled and are re-created after fork().
    _transient: ClassVar[tuple[str, ...]] = ("_cache",)

    _cache: CredentialCache

    def __init__(self, *, refresh: RefreshPolicy | None = None, clock: Clock | None = None) -> None:
        name = type(self).__name__
        if refresh is not None and not isinstance(refresh, RefreshPolicy):
            raise ConfigurationError(
                f"{name}: refresh must be an iamdb.RefreshPolicy, not {type(refresh).__name__}"
            )
        if clock is not None and not all(
            callable(getattr(clock, m, None)) for m in ("monotonic", "time", "sleep")
        ):
            raise ConfigurationError(
                f"{name}: clock must be an iamdb.clock.Clock (monotonic(), time() and sleep()), "
                f"not {type(clock).__name__}"
            )
        self._refresh_policy = refresh or RefreshPolicy()
        self._clock: Clock = clock or SYSTEM_CLOCK
        self._reset_transient_state()
        _live_sources.add(self)

    # -- what a subclass provides ------------------------------------------------

    def fetch(self, target: Target) -> Credential:
        """Obtain a new credential for ``target``. Called by the cache, never concurrently
        per key, within the caller's deadline (:func:`iamdb.deadline.current`)."""
        raise NotImplementedError

    def cache_key(self, target: Target) -> Hashable:
        """Which targets share a credential. By default all of them do."""
        return None

    def check_target(self, target: Target) -> None:
        """Raise :class:`ConfigurationError` if the source cannot serve ``target``.

        Called once when a database connection first uses the source.
        """

    def describe(self) -> str:
        """A short, secret-free description for messages and ``repr``."""
        return f"{type(self).__name__}()"

    def _new_transient_state(self) -> None:
        """Re-create SDK clients and similar state (at init, after unpickling and after fork)."""

    # -- the shared machinery ----------------------------------------------------

    @property
    def uses_cache(self) -> bool:
        """Whether :meth:`get_credentials` answers from the cache (a callable with
        ``ttl=0`` is called for every connection instead)."""
        return True

    def get_credentials(
        self, target: Target | None = None, *, deadline: Deadline | None = None
    ) -> Credential:
        """The current credential for ``target``: cached, refreshed ahead of expiry.

        A caller that must wait for a fetch waits until ``deadline`` at most.
        """
        target = target or Target()
        return self._cache.get(
            self.cache_key(target), lambda: self._checked_fetch(target), deadline, target.alias
        )

    def get_password(self, target: Target | None = None, *, deadline: Deadline | None = None) -> str:
        """The current password for ``target``."""
        return self.get_credentials(target, deadline=deadline).password

    def invalidate(self, target: Target | None = None, *, password: str | None = None) -> None:
        """Forget the cached credential for ``target`` (after the server refused it).

        With ``password``, only a credential with that password is dropped, so
        that many connections refused at once cause one new fetch, not many.
        """
        self._cache.invalidate(self.cache_key(target or Target()), password=password)

    def cached(self, target: Target | None = None) -> Credential | None:
        """The cached credential for ``target``, if any, without fetching."""
        return self._cache.peek(self.cache_key(target or Target()))

    def phase(self, target: Target | None = None) -> str:
        """The cached credential's state: ``empty``, ``fresh``, ``advisory``,
        ``mandatory`` or ``ended`` (see the engine). Asks the source nothing."""
        if not self.uses_cache:
            return "uncached"
        return self._cache.phase(self.cache_key(target or Target())).value

    def sessions_end(self, target: Target, credential: Credential) -> float | None:
        """When database sessions opened with ``credential`` end, on this source's
        monotonic clock, as far as the source knows now; None when they don't end,
        or when the source no longer knows that credential.

        By default: the ``sessions_end_at`` of the cached credential if it has the
        same password (a renewed lease keeps it and ends later), converted to the
        monotonic clock when it was fetched.
        """
        end = self._cache.sessions_end(self.cache_key(target), credential)
        if end is None and credential.sessions_end_at is not None and self.cached(target) is None:
            # Never cached (a callable without ttl): convert it now, just after the fetch.
            return to_monotonic(self._clock, credential.sessions_end_at)
        return end

    def _checked_fetch(self, target: Target) -> Credential:
        """One fetch, checked, timed and reported (:mod:`iamdb.signals`, the ``iamdb`` logger)."""
        started = self._clock.monotonic()
        try:
            credential = self._validated_fetch(target)
        except IamdbError as exc:
            duration = self._clock.monotonic() - started
            signals.refresh_failed.send(
                type(self), source=self, alias=target.alias, duration=duration, error=exc
            )
            raise
        duration = self._clock.monotonic() - started
        logger.debug(
            "iamdb: database %r: %s issued a credential for %s in %.3f s",
            target.alias,
            self.describe(),
            credential.username or target.user or "USER",
            duration,
        )
        signals.credential_fetched.send(
            type(self), source=self, alias=target.alias, duration=duration, username=credential.username
        )
        return credential

    def _validated_fetch(self, target: Target) -> Credential:
        try:
            credential = self.fetch(target)
        except IamdbError:
            raise
        except Exception as exc:
            # A custom source's own error: keep its type and message, not its frames.
            logger.debug("iamdb: %s: fetch raised %s", self.describe(), describe(exc))
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} could not get a credential: {describe(exc)}"
            ) from secret_free(exc)
        if not isinstance(credential, Credential):
            kind = type(credential).__name__
            del credential  # it may be the password itself: not a local of the raising frame
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()}.fetch() returned {kind}, "
                "not an iamdb.Credential"
            )
        if not isinstance(credential.password, str) or not credential.password:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} returned an empty or non-str password"
            )
        if credential.username is not None and not isinstance(credential.username, str):
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} returned a non-str username "
                f"({type(credential.username).__name__})"
            )
        if credential.issued_at is None:
            credential = credential.replace(issued_at=self._clock.time())
        return credential

    def _reset_transient_state(self) -> None:
        self._cache = CredentialCache(clock=self._clock, policy=self._refresh_policy, name=self.describe())
        self._new_transient_state()

    def _after_fork(self) -> None:
        self._cache.after_fork()
        self._new_transient_state()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for cls in type(self).__mro__:
            for name in getattr(cls, "_transient", ()):
                state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_transient_state()
        _live_sources.add(self)

    def __deepcopy__(self: S, memo: dict[int, Any]) -> S:
        # Django deep-copies settings (connection.copy()); a source is shared state.
        return self

    def __copy__(self: S) -> S:
        return self

    def __bool__(self) -> bool:
        # Django tests PASSWORD for truthiness before using it.
        return True

    def __repr__(self) -> str:
        return self.describe()

    # A driver that receives the object itself (a stock Django backend) calls
    # str() on it: make that a harmless, recognisable non-password.
    __str__ = __repr__


def as_source(value: object, *, alias: str = "default") -> CredentialSource | None:
    """The source behind a ``PASSWORD`` value: ``None`` for a plain string."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, CredentialSource):
        return value
    if callable(value):
        return _wrap_callable(value)
    raise ConfigurationError(
        f"database {alias!r}: PASSWORD must be a str, a callable or an iamdb source, "
        f"not {type(value).__name__}"
    )


_wrapped: weakref.WeakKeyDictionary[Any, CredentialSource] = weakref.WeakKeyDictionary()


def _wrap_callable(func: Any) -> CredentialSource:
    """One CallableSource per callable, shared by every connection that uses it."""
    from .sources.callable import CallableSource

    try:
        return _wrapped[func]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable
        return CallableSource(func)
    return _wrapped.setdefault(func, CallableSource(func))
