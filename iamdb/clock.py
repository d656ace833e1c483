"""One time base for iamdb: a clock object injected everywhere.

Every duration and deadline is measured on ``monotonic()``, which never
jumps. ``time()`` (the wall clock) is read only to convert a timestamp a
server gave (an expiry as a date) into a monotonic deadline, once, when the
credential is fetched: a later step of the wall clock (NTP) neither extends
nor cuts a credential's use.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What iamdb needs of time. Tests inject a fake one into a source (``clock=``)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: every duration and deadline."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch: only to convert server-given timestamps."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and :func:`time.sleep`."""

    # The C functions themselves: the hot path reads the clock once per new connection.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()


def to_monotonic(clock: Clock, wall: float) -> float:
    """The monotonic moment of the wall-clock timestamp ``wall``, as the clocks stand now."""
    return clock.monotonic() + (wall - clock.time())
