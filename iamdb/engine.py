"""The credential engine: caching, refresh ahead of expiry, single flight, invalidation.

One :class:`CredentialCache` belongs to each source and holds one slot per
cache key (for most sources a single slot; RDS IAM keys by host, port and
user). A slot's state is one immutable :class:`_State`, replaced as a whole,
made of three parts that each live in one place:

- :class:`Windows`: when the cached credential enters its advisory and
  mandatory windows and when it stops being usable, on the monotonic clock
  (a credential's wall-clock times are converted once, when it is stored);
- :class:`Backoff`: failed fetches in a row, and when the next may start;
- :class:`Refusals`: what the server refused, how many refusals in a row
  found the same password, and when the next refetch may start.

From these, a slot is in one :class:`Phase`:

- ``FRESH``: the cached credential is returned without taking any lock;
- ``ADVISORY``: it nears its end. It is returned at once, and one refresh
  runs in a background thread; a failed refresh is logged and never fails a
  request;
- ``MANDATORY``: it is about to end. Callers wait (until their deadline) for
  one refresh; if that fails while the credential is still usable, it is
  still returned, with the failure logged;
- ``ENDED`` or ``EMPTY`` (never fetched, or invalidated after a refused
  login): callers wait for one fetch, and get its error if it fails.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from .clock import SYSTEM_CLOCK, Clock
from .deadline import Deadline, scope
from .errors import ConfigurationError, CredentialError, IamdbError, describe

if TYPE_CHECKING:
    from .values import Credential

__all__ = ["Clock", "CredentialCache", "Phase", "RefreshPolicy"]

logger = logging.getLogger("iamdb")

_INF = float("inf")


@dataclasses.dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh, as fractions of a credential's lifetime.

    For a credential that lives ``L`` seconds and ends at ``E``, the advisory
    window opens at ``E - advisory * L`` and the mandatory one at
    ``E - mandatory * L``, but never later than ``E - safety_margin`` (a
    credential is not handed out in its last ``safety_margin`` seconds, so a
    login that starts with it can finish; for credentials that live less than
    ``safety_margin / mandatory`` seconds, the margin is ``mandatory * L``).
    For a 15-minute IAM token the defaults give 11:15 and 13:30.

    A credential with only ``refresh_after`` (a rotating secret re-read on a
    timer) enters the advisory window then and never becomes mandatory: it
    keeps working until a refresh succeeds or the server refuses it.

    ``failure_backoff`` is the first delay after a failed fetch; it doubles on
    each further failure up to ``max_failure_backoff``, and is never more than
    a twentieth of the lifetime of a credential that expires (one with only
    ``refresh_after`` keeps working meanwhile, so its backoff is not shortened).

    ``refetch_spacing`` spaces the fetches that refused logins cause: a
    credential invalidated this soon after it was fetched is fetched again
    only when that time has passed, and the spacing doubles (up to
    ``max_refetch_spacing``) while the source keeps returning the refused
    password (a rotation whose new secret is not published yet).
    """

    advisory: float = 0.25
    mandatory: float = 0.10
    safety_margin: float = 2.0
    failure_backoff: float = 0.5
    max_failure_backoff: float = 30.0
    refetch_spacing: float = 0.1
    max_refetch_spacing: float = 1.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigurationError(
                    f"RefreshPolicy: {field.name} must be a finite number, not {value!r}"
                )
            if value < 0:
                raise ConfigurationError(f"RefreshPolicy: {field.name} must be >= 0, not {value!r}")
        if not 0 <= self.mandatory <= self.advisory < 1:
            raise ConfigurationError(
                f"RefreshPolicy: needs 0 <= mandatory <= advisory < 1 "
                f"(fractions of the lifetime), not mandatory={self.mandatory!r}, advisory={self.advisory!r}"
            )
        if self.failure_backoff > self.max_failure_backoff:
            raise ConfigurationError("RefreshPolicy: failure_backoff must be <= max_failure_backoff")
        if self.refetch_spacing > self.max_refetch_spacing:
            raise ConfigurationError("RefreshPolicy: refetch_spacing must be <= max_refetch_spacing")


class Phase(enum.Enum):
    EMPTY = "empty"
    FRESH = "fresh"
    ADVISORY = "advisory"
    MANDATORY = "mandatory"
    ENDED = "ended"


@dataclasses.dataclass(frozen=True)
class Windows:
    """A credential's windows on the monotonic clock (``-inf``: none cached)."""

    advisory_at: float = -_INF
    mandatory_at: float = -_INF
    usable_until: float = -_INF
    sessions_end: float | None = None
    lifetime: float | None = None

    @classmethod
    def of(cls, credential: Credential, policy: RefreshPolicy, clock: Clock) -> Windows:
        """Convert ``credential``'s wall-clock times to the monotonic clock, once."""
        now = clock.monotonic()
        wall_now = clock.time()

        def mono(wall: float | None) -> float | None:
            return None if wall is None else now + (wall - wall_now)

        issued = mono(credential.issued_at)
        issued = now if issued is None else min(issued, now)
        end = mono(credential.expires_at)
        refresh = mono(credential.refresh_after)
        sessions_end = mono(credential.sessions_end_at)
        if end is not None:
            lifetime = max(end - issued, 0.0)
            # A credential shorter-lived than the margin itself stays usable for a while.
            usable_until = end - min(policy.safety_margin, policy.mandatory * lifetime)
            mandatory_at = min(end - policy.mandatory * lifetime, usable_until)
            advisory_at = min(end - policy.advisory * lifetime, mandatory_at)
            if refresh is not None:
                advisory_at = min(advisory_at, refresh)
            return cls(advisory_at, mandatory_at, usable_until, sessions_end, lifetime)
        if refresh is not None:
            # No end: the failure backoff is not bounded by a lifetime (see Backoff).
            return cls(refresh, _INF, _INF, sessions_end, None)
        return cls(_INF, _INF, _INF, sessions_end, None)


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Failed fetches in a row, and when the next fetch may start."""

    failures: int = 0
    retry_at: float = -_INF
    error: IamdbError | None = None

    def waiting(self, now: float) -> bool:
        return now < self.retry_at

    def after_failure(
        self, error: IamdbError, now: float, policy: RefreshPolicy, windows: Windows
    ) -> Backoff:
        failures = self.failures + 1
        delay = min(policy.failure_backoff * 2 ** (failures - 1), policy.max_failure_backoff)
        if windows.lifetime:
            delay = min(delay, max(windows.lifetime / 20, 0.05))
        return Backoff(failures, now + delay, error)


@dataclasses.dataclass(frozen=True)
class Refusals:
    """Refused logins: the refused credential, the streak, and when the next refetch may start."""

    refused: Credential | None = None
    streak: int = 0
    not_before: float = -_INF

    def after_refusal(self, credential: Credential, fetched_at: float, policy: RefreshPolicy) -> Refusals:
        spacing = min(policy.refetch_spacing * 2**self.streak, policy.max_refetch_spacing)
        return Refusals(credential, self.streak + 1, fetched_at + spacing)

    def after_fetch(self, credential: Credential) -> Refusals:
        """A new fetch: the streak goes on only while the source returns the refused password."""
        if self.refused is not None and self.refused.password == credential.password:
            return Refusals(streak=self.streak)
        return Refusals()


@dataclasses.dataclass(frozen=True)
class _State:
    """One slot's state, replaced as a whole so that readers need no lock."""

    credential: Credential | None = None
    windows: Windows = Windows()
    backoff: Backoff = Backoff()
    refusals: Refusals = Refusals()
    fetched_at: float = -_INF

    def phase(self, now: float) -> Phase:
        if self.credential is None:
            return Phase.EMPTY
        if now < self.windows.advisory_at:
            return Phase.FRESH
        if now < self.windows.mandatory_at:
            return Phase.ADVISORY
        if now < self.windows.usable_until:
            return Phase.MANDATORY
        return Phase.ENDED

    def usable(self, now: float) -> bool:
        return self.credential is not None and now < self.windows.usable_until


class _Slot:
    __slots__ = ("fetch_lock", "refreshing", "state")

    def __init__(self, state: _State | None = None) -> None:
        self.fetch_lock = threading.Lock()
        self.state = state or _State()
        self.refreshing = False


def _start_thread(job: Callable[[], None]) -> None:
    threading.Thread(target=job, name="iamdb-refresh", daemon=True).start()


class CredentialCache:
    """Caches the credentials of one source, one slot per cache key.

    ``spawn`` runs a background refresh (by default in a new daemon thread);
    tests pass one that runs it at once.
    """

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        policy: RefreshPolicy | None = None,
        name: str = "source",
        spawn: Callable[[Callable[[], None]], None] = _start_thread,
    ) -> None:
        self._clock = clock
        self._policy = policy or RefreshPolicy()
        self._name = name
        self._spawn = spawn
        self._slots: dict[Hashable, _Slot] = {}
        self._slots_lock = threading.Lock()
        #: Fetches started, and how many failed (for tests, benchmarks and monitoring).
        self.fetches = 0
        self.failures = 0

    def after_fork(self) -> None:
        """In a forked child: new locks (a parent's thread may have held one at fork
        time), no refresh under way; the cached credentials are kept. The slots stay the
        same objects (see :meth:`slot`)."""
        self._slots_lock = threading.Lock()
        for slot in self._slots.values():
            slot.fetch_lock = threading.Lock()
            slot.refreshing = False

    def slot(self, key: Hashable) -> _Slot | None:
        """The slot of ``key`` if one exists. A slot is never replaced or removed for the
        life of the cache (fork included), so a caller may keep it and read ``slot.state``
        without a lock: the backends' hot path does."""
        return self._slots.get(key)

    def _slot(self, key: Hashable) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            with self._slots_lock:
                slot = self._slots.setdefault(key, _Slot())
        return slot

    # -- reading -----------------------------------------------------------------------

    def peek(self, key: Hashable) -> Credential | None:
        """The cached credential for ``key``, if any, without fetching."""
        slot = self._slots.get(key)
        return slot.state.credential if slot else None

    def phase(self, key: Hashable) -> Phase:
        slot = self._slots.get(key)
        return slot.state.phase(self._clock.monotonic()) if slot else Phase.EMPTY

    def sessions_end(self, key: Hashable, credential: Credential) -> float | None:
        """When sessions made with ``credential`` end (monotonic), if it is the cached one."""
        slot = self._slots.get(key)
        cached = slot.state.credential if slot else None
        if slot is None or cached is None or cached.password != credential.password:
            return None
        return slot.state.windows.sessions_end

    def fresh(self, key: Hashable, now: float) -> Credential | None:
        """The cached credential for ``key`` if it is fresh at ``now`` (monotonic), else
        None. Takes no lock and allocates nothing: the hot path of a new connection."""
        slot = self._slots.get(key)
        if slot is not None:
            state = slot.state
            if state.credential is not None and now < state.windows.advisory_at:
                return state.credential
        return None

    def get(
        self,
        key: Hashable,
        fetch: Callable[[], Credential],
        deadline: Deadline | None = None,
        alias: str | None = None,
    ) -> Credential:
        """The credential for ``key``; ``alias`` names the database in the engine's own errors."""
        slot = self._slot(key)
        state = slot.state
        credential = state.credential
        if credential is not None and self._clock.monotonic() < state.windows.advisory_at:
            return credential  # fresh: the hot path takes no lock
        return self._get_slow(slot, fetch, deadline, alias)

    # -- changing ----------------------------------------------------------------------

    def invalidate(self, key: Hashable, *, password: str | None = None) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        with self._slots_lock:
            state = slot.state
            if state.credential is None:
                return
            if password is not None and state.credential.password != password:
                return  # already replaced by another thread's refresh
            logger.info("iamdb: %s: cached credential invalidated (refused by the server)", self._name)
            slot.state = _State(
                backoff=state.backoff,
                refusals=state.refusals.after_refusal(state.credential, state.fetched_at, self._policy),
                fetched_at=state.fetched_at,
            )

    def discard(self, key: Hashable, credential: Credential | None) -> None:
        """Forget what is cached for ``key`` because the source knows it changed (a file
        source saw its file change): the next caller fetches at once. Not a refusal: no
        refetch spacing, and any failure backoff is dropped too. Only while ``credential``
        is the cached one (the same object; None: only while nothing is cached), so that
        threads that saw the same change discard one credential, not each other's fetches."""
        slot = self._slots.get(key)
        if slot is None:
            return
        with self._slots_lock:
            if slot.state.credential is credential:
                slot.state = _State()

    def _get_slow(
        self, slot: _Slot, fetch: Callable[[], Credential], deadline: Deadline | None, alias: str | None
    ) -> Credential:
        now = self._clock.monotonic()
        state = slot.state
        if state.phase(now) is Phase.ADVISORY:
            self._refresh_in_background(slot, fetch, now)
            assert state.credential is not None
            return state.credential
        deadline = deadline or Deadline.never(self._clock)
        if not slot.fetch_lock.acquire(timeout=deadline.lock_timeout()):
            state, now = slot.state, self._clock.monotonic()
            if state.usable(now):
                assert state.credential is not None
                return state.credential
            raise CredentialError(
                f"{_where(alias)}{self._name}: no credential within the deadline (another thread's fetch "
                "is still running: the credential service may be slow or unreachable)"
            )
        try:
            now = self._clock.monotonic()
            state = slot.state
            phase = state.phase(now)
            if phase in (Phase.FRESH, Phase.ADVISORY):
                assert state.credential is not None
                return state.credential  # another thread fetched while this one waited
            usable = state.usable(now)
            if state.backoff.waiting(now):
                if usable:
                    assert state.credential is not None
                    return state.credential
                if state.backoff.error is not None:
                    raise _again(state.backoff.error)
            wait = state.refusals.not_before - now
            if phase is Phase.EMPTY and wait > 0:
                if wait >= deadline.remaining():
                    raise CredentialError(
                        f"{_where(alias)}{self._name}: the deadline ends before the next fetch may start "
                        f"(refetches after refused logins are {wait:.2g} s apart now)"
                    )
                self._clock.sleep(wait)
            return self._fetch_into(slot, fetch, deadline, tolerate=usable)
        finally:
            slot.fetch_lock.release()

    def _refresh_in_background(self, slot: _Slot, fetch: Callable[[], Credential], now: float) -> None:
        with self._slots_lock:
            if slot.refreshing or slot.state.backoff.waiting(now):
                return
            slot.refreshing = True

        def refresh() -> None:
            try:
                if not slot.fetch_lock.acquire(blocking=False):
                    return  # a caller in the mandatory window is fetching already
                try:
                    state = slot.state
                    if state.phase(self._clock.monotonic()) is Phase.ADVISORY:
                        # No request waits for it, but it must not hold the fetch lock past the
                        # moment the cached credential stops being usable: its SDK calls end then.
                        until = Deadline(state.windows.usable_until, self._clock)
                        self._fetch_into(slot, fetch, until, tolerate=True)
                finally:
                    slot.fetch_lock.release()
            except IamdbError:
                pass  # nothing usable was cached any more: logged, and the next caller fetches
            finally:
                slot.refreshing = False

        try:
            self._spawn(refresh)
        except RuntimeError:  # no new thread (interpreter shutting down): refresh later
            slot.refreshing = False

    def _fetch_into(
        self, slot: _Slot, fetch: Callable[[], Credential], deadline: Deadline | None, *, tolerate: bool
    ) -> Credential:
        """Fetch and store a credential. Called with ``slot.fetch_lock`` held."""
        old = slot.state
        self.fetches += 1
        try:
            with scope(deadline):
                credential = fetch()
        except IamdbError as exc:
            error = exc
        else:
            new = _State(
                credential=credential,
                windows=Windows.of(credential, self._policy, self._clock),
                refusals=old.refusals.after_fetch(credential),
                fetched_at=self._clock.monotonic(),
            )
            with self._slots_lock:
                slot.state = new
            return credential
        self.failures += 1
        now = self._clock.monotonic()
        with self._slots_lock:
            # Only invalidate() can have changed the state meanwhile: keep its change.
            current = slot.state
            slot.state = dataclasses.replace(
                current, backoff=current.backoff.after_failure(error, now, self._policy, old.windows)
            )
        if tolerate and old.usable(now):
            left = old.windows.usable_until - now
            level = logging.WARNING if error.retryable else logging.ERROR
            logger.log(
                level,
                "iamdb: %s: refresh failed; still using the current credential (usable for %s more): %s",
                self._name,
                "ever" if left == _INF else f"{left:.0f} s",
                describe(error),
            )
            assert old.credential is not None
            return old.credential
        raise error


def _where(alias: str | None) -> str:
    return "" if alias is None else f"database {alias!r}: "


def _again(error: IamdbError) -> IamdbError:
    """A fresh copy of a stored error, so that each caller gets its own traceback."""
    again = type(error)(*error.args)
    again.__cause__ = error.__cause__
    return again
