"""A fake clock for unit tests: monotonic and wall time that move only when told."""

from __future__ import annotations

import threading


class FakeClock:
    """Implements :class:`iamdb.clock.Clock`. ``sleep()`` advances both clocks at once
    (no real waiting); ``step_wall()`` moves the wall clock alone, as NTP does."""

    def __init__(self, now: float = 1_000_000.0, wall: float = 1_800_000_000.0) -> None:
        self._monotonic = now
        self._wall = wall
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds > 0:
            self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._monotonic += seconds
            self._wall += seconds

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (an NTP correction); monotonic time does not."""
        with self._lock:
            self._wall += seconds


def run_now(job: object) -> None:
    """A ``spawn`` for CredentialCache that runs a background refresh at once, in this thread."""
    job()  # type: ignore[operator]
