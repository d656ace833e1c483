"""The credential engine: caching, refresh ahead of expiry, single flight, invalidation.

One :class:`CredentialCache` belongs to each source and holds one slot per
cache key (for most sources a single slot; RDS IAM keys by host, port and
user). A slot moves through three states, as botocore's refreshable
credentials do:

- *fresh*: the cached credential is returned without taking any lock;
- *advisory*: the credential nears its end. One caller refreshes while the
  others keep using the current credential; a failed refresh is logged and
  tolerated;
- *mandatory*: the credential is about to end, or was invalidated. Callers
  wait for one refresh. If it fails and the current credential has not
  ended yet, it is still returned; otherwise the error is raised.

The windows scale with the credential's lifetime (see :class:`RefreshPolicy`).
After a failed fetch, the next attempt waits a short, growing delay; callers
arriving in the meantime get the still-valid credential, or the same error
again, without a new fetch.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Protocol

from .errors import CredentialError, IamdbError, describe

if TYPE_CHECKING:
    from .credentials import Credential

logger = logging.getLogger("iamdb")


class Clock(Protocol):
    def __call__(self) -> float: ...


def wall_clock() -> float:
    return time.time()


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
    a twentieth of the credential's lifetime.

    ``refetch_spacing`` spaces the fetches that refused logins cause: a
    credential invalidated this soon after it was fetched is fetched again
    only when that time has passed, and the spacing doubles (up to
    ``max_refetch_spacing``) while the source keeps returning the refused
    password (a rotation whose new secret is not published yet). However many
    connections are refused meanwhile, the source sees a few fetches per
    rotation, not one per connection.
    """

    advisory: float = 0.25
    mandatory: float = 0.10
    safety_margin: float = 2.0
    failure_backoff: float = 0.5
    max_failure_backoff: float = 30.0
    refetch_spacing: float = 0.1
    max_refetch_spacing: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.mandatory <= self.advisory < 1:
            raise ValueError("RefreshPolicy needs 0 <= mandatory <= advisory < 1")


@dataclasses.dataclass(frozen=True)
class _State:
    """One slot's state, replaced as a whole so that readers need no lock."""

    credential: Credential | None = None
    advisory_at: float = float("-inf")
    mandatory_at: float = float("-inf")
    usable_until: float = float("-inf")
    failures: int = 0
    retry_at: float = float("-inf")
    error: IamdbError | None = None
    fetched_at: float = float("-inf")
    # After invalidate(): the refused credential, how many refusals in a row
    # found the same password, and when the next fetch may start.
    refused: Credential | None = None
    streak: int = 0
    not_before: float = float("-inf")


class _Slot:
    __slots__ = ("fetch_lock", "state")

    def __init__(self) -> None:
        self.fetch_lock = threading.Lock()
        self.state = _State()


class CredentialCache:
    """Caches the credentials of one source, one slot per cache key."""

    def __init__(
        self,
        *,
        clock: Clock,
        policy: RefreshPolicy,
        name: str = "source",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._policy = policy
        self._name = name
        self._slots: dict[Hashable, _Slot] = {}
        self._slots_lock = threading.Lock()
        #: Number of fetches started, for tests and benchmarks.
        self.fetches = 0

    def _slot(self, key: Hashable) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            with self._slots_lock:
                slot = self._slots.setdefault(key, _Slot())
        return slot

    def peek(self, key: Hashable) -> Credential | None:
        """The cached credential for ``key``, if any, without fetching."""
        slot = self._slots.get(key)
        return slot.state.credential if slot else None

    def get(self, key: Hashable, fetch: Callable[[], Credential]) -> Credential:
        slot = self._slot(key)
        state = slot.state
        if state.credential is not None and self._clock() < state.advisory_at:
            return state.credential  # fresh: the hot path takes no lock
        return self._refresh(slot, fetch)

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
            logger.info("iamdb: %s: cached credential invalidated", self._name)
            spacing = min(self._policy.refetch_spacing * 2**state.streak, self._policy.max_refetch_spacing)
            slot.state = _State(
                failures=state.failures,
                retry_at=state.retry_at,
                error=state.error,
                fetched_at=state.fetched_at,
                refused=state.credential,
                streak=state.streak + 1,
                not_before=state.fetched_at + spacing,
            )

    def _refresh(self, slot: _Slot, fetch: Callable[[], Credential]) -> Credential:
        now = self._clock()
        state = slot.state
        if state.credential is not None and now < state.mandatory_at:
            # Advisory: whoever gets the lock refreshes; nobody waits.
            if now >= state.retry_at and slot.fetch_lock.acquire(blocking=False):
                try:
                    if slot.state is state:
                        self._fetch_into(slot, fetch, tolerate=True)
                finally:
                    slot.fetch_lock.release()
            return slot.state.credential or state.credential
        # Mandatory, invalidated or empty: wait for one fetch.
        with slot.fetch_lock:
            now = self._clock()
            state = slot.state
            if state.credential is not None and now < state.mandatory_at:
                return state.credential  # another thread refreshed while we waited
            usable = state.credential is not None and now < state.usable_until
            if now < state.retry_at:
                if usable:
                    assert state.credential is not None
                    return state.credential
                if state.error is not None:
                    raise _again(state.error)
            if state.credential is None and now < state.not_before:
                self._sleep(min(state.not_before - now, self._policy.max_refetch_spacing))
            return self._fetch_into(slot, fetch, tolerate=usable)

    def _fetch_into(self, slot: _Slot, fetch: Callable[[], Credential], *, tolerate: bool) -> Credential:
        """Fetch and store a credential. Called with ``slot.fetch_lock`` held."""
        old = slot.state
        self.fetches += 1
        try:
            credential = fetch()
        except IamdbError as exc:
            error: IamdbError = exc
        except Exception as exc:  # a source outside the iamdb base class
            error = CredentialError(f"{self._name} could not get a credential: {describe(exc)}")
            error.__cause__ = exc
        else:
            new = self._state_for(credential)
            refused = old.refused
            if refused is not None and refused.password == credential.password:
                new = dataclasses.replace(new, streak=old.streak)  # still the refused one
            with self._slots_lock:
                slot.state = new
            return credential
        now = self._clock()
        failures = old.failures + 1
        delay = min(self._policy.failure_backoff * 2 ** (failures - 1), self._policy.max_failure_backoff)
        if old.credential is not None and old.credential.issued_at is not None:
            end = old.credential.expires_at or old.credential.refresh_after
            if end is not None:
                delay = min(delay, max((end - old.credential.issued_at) / 20, 0.05))
        with self._slots_lock:
            # Only invalidate() can have changed the state meanwhile: keep its change.
            slot.state = dataclasses.replace(slot.state, failures=failures, retry_at=now + delay, error=error)
        if tolerate and old.credential is not None and error.retryable:
            logger.warning(
                "iamdb: %s: refresh failed, still using the current credential: %s",
                self._name,
                describe(error),
            )
            return old.credential
        raise error

    def _state_for(self, credential: Credential) -> _State:
        policy = self._policy
        now = self._clock()
        issued = credential.issued_at if credential.issued_at is not None else now
        if credential.expires_at is not None:
            end = credential.expires_at
            lifetime = max(end - issued, 0.0)
            # A credential shorter-lived than the margin itself stays usable for a while.
            usable_until = end - min(policy.safety_margin, policy.mandatory * lifetime)
            mandatory_at = min(end - policy.mandatory * lifetime, usable_until)
            advisory_at = min(end - policy.advisory * lifetime, mandatory_at)
            if credential.refresh_after is not None:
                advisory_at = min(advisory_at, credential.refresh_after)
        elif credential.refresh_after is not None:
            advisory_at = credential.refresh_after
            mandatory_at = usable_until = float("inf")
        else:
            advisory_at = mandatory_at = usable_until = float("inf")
        return _State(
            credential=credential,
            advisory_at=advisory_at,
            mandatory_at=mandatory_at,
            usable_until=usable_until,
            fetched_at=now,
        )


def _again(error: IamdbError) -> IamdbError:
    """A fresh copy of a stored error, so that each caller gets its own traceback."""
    again = type(error)(*error.args)
    again.__cause__ = error.__cause__
    return again
