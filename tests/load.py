"""One load runner for the tests that open connections from many threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_load(
    request: Callable[[], None],
    *,
    threads: int = 6,
    seconds: float = 5.0,
    max_requests: int = 100_000,
    during: Callable[[], None] | None = None,
) -> tuple[int, list[BaseException]]:
    """Call ``request`` from ``threads`` threads until ``seconds`` or ``max_requests``
    run out; return how many succeeded and every failure.

    With ``during``, the calling thread runs it while the load runs (a rotation
    script, say), and the load stops when it returns (or at ``seconds``).
    """
    deadline = time.monotonic() + seconds
    stop = threading.Event()
    lock = threading.Lock()
    ok = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal ok
        while not stop.is_set() and time.monotonic() < deadline:
            with lock:
                if ok + len(errors) >= max_requests:
                    return
            try:
                request()
            except BaseException as exc:  # every failure counts
                with lock:
                    errors.append(exc)
            else:
                with lock:
                    ok += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    try:
        if during is not None:
            during()
            stop.set()
    finally:
        for thread in pool:
            thread.join(seconds + 30)
        stop.set()
    return ok, errors


def first_line(exc: BaseException) -> str:
    """A failure in one short line (for reports): its class and its message's first line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:160]
