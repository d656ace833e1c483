"""Counters per database alias and source, fed by :mod:`iamdb.signals`, readable from Python.

>>> from iamdb import metrics
>>> for (alias, source), counts in metrics.snapshot().items():
...     print(alias, source, counts.fetches, counts.fetch_failures)

Counts are per process (each worker of a pre-forking server counts its own) and
never hold a secret: the last error is its one-line, secret-free description.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any

from . import signals
from .errors import describe

__all__ = ["Counts", "reset", "snapshot"]


@dataclasses.dataclass
class Counts:
    """What one source did for one database alias in this process."""

    fetches: int = 0
    fetch_failures: int = 0
    fetch_seconds: float = 0.0
    logins_refused: int = 0
    retirements: int = 0
    last_fetch_at: float | None = None  # wall-clock time.time()
    last_error: str | None = None
    last_error_at: float | None = None


_counts: dict[tuple[str, str], Counts] = {}
_lock = threading.Lock()


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


def _entry(alias: str, source: Any) -> Counts:
    key = (alias, source.describe())
    counts = _counts.get(key)
    if counts is None:
        counts = _counts.setdefault(key, Counts())
    return counts


def snapshot() -> dict[tuple[str, str], Counts]:
    """A copy of every counter, keyed by (alias, the source's description)."""
    with _lock:
        return {key: dataclasses.replace(counts) for key, counts in _counts.items()}


def reset() -> None:
    """Forget every counter (for tests)."""
    with _lock:
        _counts.clear()


def _fetched(sender: Any, *, source: Any, alias: str, duration: float, **_: Any) -> None:
    with _lock:
        counts = _entry(alias, source)
        counts.fetches += 1
        counts.fetch_seconds += duration
        counts.last_fetch_at = time.time()


def _failed(sender: Any, *, source: Any, alias: str, duration: float, error: BaseException, **_: Any) -> None:
    with _lock:
        counts = _entry(alias, source)
        counts.fetches += 1
        counts.fetch_failures += 1
        counts.fetch_seconds += duration
        counts.last_error = describe(error)
        counts.last_error_at = time.time()


def _refused(sender: Any, *, source: Any, alias: str, **_: Any) -> None:
    with _lock:
        _entry(alias, source).logins_refused += 1


def _retired(sender: Any, *, source: Any, alias: str, **_: Any) -> None:
    with _lock:
        _entry(alias, source).retirements += 1


signals.credential_fetched.connect(_fetched, dispatch_uid="iamdb.metrics")
signals.refresh_failed.connect(_failed, dispatch_uid="iamdb.metrics")
signals.login_refused.connect(_refused, dispatch_uid="iamdb.metrics")
signals.connection_retired.connect(_retired, dispatch_uid="iamdb.metrics")
