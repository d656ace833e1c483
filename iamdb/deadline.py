"""Deadlines: a budget is a moment on the monotonic clock, passed down.

A connection attempt starts a :class:`Deadline` (``OPTIONS["iamdb"]["retry_budget"]``
from now). Everything under it ends by then: no new login attempt or refetch
starts after it, waits for a lock or for another thread's fetch end at it, and
sources size their SDK timeouts to it. While a source's ``fetch()`` runs, the
caller's deadline is :func:`current`, so a source needs no extra argument:
``timeout_for(5.0)`` gives the timeout for its next SDK call.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

from .clock import SYSTEM_CLOCK, Clock

__all__ = ["Deadline", "current", "scope", "timeout_for"]


@dataclasses.dataclass(frozen=True)
class Deadline:
    """A moment on ``clock.monotonic()`` by which some work must end."""

    at: float
    clock: Clock = dataclasses.field(default=SYSTEM_CLOCK, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        return cls(clock.monotonic() + seconds, clock)

    @classmethod
    def never(cls, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        return cls(float("inf"), clock)

    def remaining(self) -> float:
        """Seconds left, never negative (``inf`` for :meth:`never`)."""
        return max(self.at - self.clock.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.clock.monotonic() >= self.at

    def lock_timeout(self) -> float:
        """``remaining()`` as :meth:`threading.Lock.acquire` takes it (-1: no limit)."""
        remaining = self.remaining()
        return -1 if remaining == float("inf") else remaining


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("iamdb_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the fetch running on this thread, if any (None in a background refresh)."""
    return _current.get()


@contextlib.contextmanager
def scope(deadline: Deadline | None) -> Iterator[None]:
    """Make ``deadline`` :func:`current` within the block."""
    token = _current.set(deadline)
    try:
        yield
    finally:
        _current.reset(token)


def timeout_for(default: float, *, floor: float = 0.5) -> float:
    """The timeout for a source's next SDK call: ``default``, cut to the current
    deadline's remaining time (but never below ``floor``, so that a call can
    still be made when the budget is nearly spent)."""
    deadline = _current.get()
    if deadline is None:
        return default
    return min(default, max(deadline.remaining(), floor))
