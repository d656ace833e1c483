"""The credential value, the connection target, and the interface every source implements."""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from .engine import Clock, CredentialCache, RefreshPolicy, wall_clock
from .errors import ConfigurationError, CredentialError, IamdbError, describe

logger = logging.getLogger("iamdb")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Credential:
    """An immutable user name and password, with what is known of their lifetime.

    Times are wall-clock seconds since the epoch (``time.time()``).

    - ``expires_at``: logins with this credential fail afterwards (an IAM token,
      the end of a Vault lease). iamdb never hands it out past that moment.
    - ``refresh_after``: a fresh copy should be fetched from then on, although
      this one still works (a rotating secret that is re-read every few minutes).
    - ``sessions_end_at``: connections opened with it are ended by the server
      then (a revoked Vault lease); iamdb retires them before that moment.

    ``repr()`` and ``str()`` never show the password.
    """

    password: str
    username: str | None = None
    expires_at: float | None = None
    refresh_after: float | None = None
    sessions_end_at: float | None = None
    issued_at: float | None = None

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}", "password='***'"]
        for name in ("expires_at", "refresh_after", "sessions_end_at"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:.0f}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__

    def replace(self, **changes: Any) -> Credential:
        """A copy with some fields changed (the value itself never changes)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a credential is used: one database entry of ``settings.DATABASES``.

    Sources that sign for a host (RDS IAM) read ``host``, ``port`` and ``user``;
    the others ignore it. ``options`` is a read-only view of ``OPTIONS``.
    """

    alias: str = "default"
    vendor: str = ""
    host: str = ""
    port: int | None = None
    user: str = ""
    name: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    @classmethod
    def from_settings(
        cls, settings_dict: Mapping[str, Any], *, alias: str = "default", vendor: str = ""
    ) -> Target:
        port = settings_dict.get("PORT") or None
        user = settings_dict.get("USER") or ""
        return cls(
            alias=alias,
            vendor=vendor,
            host=str(settings_dict.get("HOST") or ""),
            port=int(port) if port else None,
            user=user if isinstance(user, str) else "",
            name=str(settings_dict.get("NAME") or ""),
            options=MappingProxyType(dict(settings_dict.get("OPTIONS") or {})),
        )


S = TypeVar("S", bound="CredentialSource")

# Every live source, so that a forked child re-creates locks and SDK clients.
_live_sources: weakref.WeakSet[CredentialSource] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for source in list(_live_sources):
        source._reset_transient_state()


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
    - instances are always truthy, ``repr`` shows no secret, ``copy.deepcopy``
      returns the same object, and pickling drops locks, SDK clients and
      cached secrets (they are re-created on first use). After ``fork()`` the
      child re-creates its locks and SDK clients.
    """

    #: Whether the source issues the user name too (Vault, Secrets Manager).
    issues_username: ClassVar[bool] = False
    #: Attributes that are never pickled and are re-created after fork().
    _transient: ClassVar[tuple[str, ...]] = ("_cache",)

    _cache: CredentialCache

    def __init__(self, *, refresh: RefreshPolicy | None = None, clock: Clock | None = None) -> None:
        self._refresh_policy = refresh or RefreshPolicy()
        self._clock: Clock = clock or wall_clock
        self._reset_transient_state()
        _live_sources.add(self)

    # -- what a subclass provides ------------------------------------------------

    def fetch(self, target: Target) -> Credential:
        """Obtain a new credential for ``target``. Called by the cache, never concurrently per key."""
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
        """Re-create SDK clients and similar state (after unpickling or fork)."""

    # -- the shared machinery ----------------------------------------------------

    def get_credentials(self, target: Target | None = None) -> Credential:
        """The current credential for ``target``: cached, refreshed ahead of expiry."""
        target = target or Target()
        return self._cache.get(self.cache_key(target), lambda: self._checked_fetch(target))

    def get_password(self, target: Target | None = None) -> str:
        """The current password for ``target``."""
        return self.get_credentials(target).password

    def invalidate(self, target: Target | None = None, *, password: str | None = None) -> None:
        """Forget the cached credential for ``target`` (after the server refused it).

        With ``password``, only a credential with that password is dropped, so
        that many connections refused at once cause one new fetch, not many.
        """
        self._cache.invalidate(self.cache_key(target or Target()), password=password)

    def cached(self, target: Target | None = None) -> Credential | None:
        """The cached credential for ``target``, if any, without fetching."""
        return self._cache.peek(self.cache_key(target or Target()))

    def _checked_fetch(self, target: Target) -> Credential:
        try:
            credential = self.fetch(target)
        except IamdbError:
            raise
        except Exception as exc:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} could not get a credential: {describe(exc)}"
            ) from exc
        if not isinstance(credential, Credential):
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()}.fetch() returned "
                f"{type(credential).__name__}, not a Credential"
            )
        if not isinstance(credential.password, str) or not credential.password:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} returned an empty or non-str password"
            )
        if credential.issued_at is None:
            credential = credential.replace(issued_at=self._clock())
        return credential

    def _reset_transient_state(self) -> None:
        self._cache = CredentialCache(clock=self._clock, policy=self._refresh_policy, name=self.describe())
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
