"""Fault injection: the app under load while its credential service or database fails.

The services are real (OpenBao, moto's server, private PostgreSQL); the faults come
from :class:`~tests.services.faultproxy.FaultProxy`, set between the sources and
the service, or from restarting the database server itself.

Each scenario records a row (requests ok/failed, upstream requests, longest
request); the table is printed at the end of the session.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import django
import pytest
from django.db.utils import OperationalError

from tests.conftest import make_wrapper
from tests.services.faultproxy import FaultProxy

#: Threads of load in every scenario.
THREADS = 5
#: ``OPTIONS["iamdb"]`` of the scenarios: a short retry budget keeps failures short.
RETRY_BUDGET = 3.0
FAST = {"retry_budget": RETRY_BUDGET, "retire_margin": 1.0}
#: A failing request must end within the retry budget and this much more.
GRACE = 3.0
#: The longest a request may take while a usable credential is cached: far below
#: every SDK timeout here (5 s and more), so a request that waited for a fetch shows.
UNSLOWED = 1.5

needs_pool = pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's PostgreSQL pool needs Django 5.1+")
#: The faults of the "service down while the credential is valid" scenarios:
#: new connections per request, and Django's pool.
down_while_valid = pytest.mark.parametrize(
    ("fault", "pooled"),
    [
        ("reset", False),
        ("blackhole", False),
        ("http_error", False),
        pytest.param("blackhole", True, marks=needs_pool),
    ],
    ids=["reset", "blackhole", "http503", "blackhole-pool"],
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault injection against real services (tests/faults; a few minutes)"
    )


# -- the session's table -------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    scenario: str
    ok: int
    failed: int
    fetches: int | None
    longest: float


_rows: list[Row] = []


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _rows:
        return
    width = max(len("scenario"), *(len(row.scenario) for row in _rows))
    terminalreporter.section("fault injection")
    terminalreporter.write_line(
        f"{'scenario':<{width}}  {'ok':>6}  {'failed':>6}  {'fetches':>7}  {'longest (s)':>11}"
    )
    for row in _rows:
        fetches = "-" if row.fetches is None else str(row.fetches)
        terminalreporter.write_line(
            f"{row.scenario:<{width}}  {row.ok:>6}  {row.failed:>6}  {fetches:>7}  {row.longest:>11.2f}"
        )
    terminalreporter.write_line(
        "fetches: requests the credential service received through the fault proxy "
        "(each HTTP request, and each connection reset before it could send one)"
    )


class Report:
    """Rows of one test for the session's table."""

    def __init__(self, name: str) -> None:
        self.name = name

    def add(self, load: Load, *, fetches: int | None, label: str = "") -> None:
        scenario = f"{self.name}{' ' + label if label else ''}"
        _rows.append(Row(scenario, load.ok, load.failed, fetches, load.longest()))


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    return Report(request.node.name)


# -- load ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    thread: int
    started: float  # time.monotonic()
    ended: float
    error: BaseException | None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Load:
    """``threads`` threads calling ``request`` in a loop, from :meth:`start` to :meth:`stop`,
    each outcome recorded with its start and end. A request still running at
    :meth:`stop` (a hang) counts with the time it had run."""

    def __init__(self, request: Callable[[], None], *, threads: int = THREADS, gap: float = 0.01) -> None:
        self.request = request
        self.gap = gap  # between one thread's requests
        self.outcomes: list[Outcome] = []
        self.hung: list[float] = []  # how long each request still running at stop() had run
        self._running: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._threads = [
            threading.Thread(target=self._work, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, *, grace: float = RETRY_BUDGET + GRACE + 2) -> Load:
        """Stop, waiting up to ``grace`` s for the requests in progress."""
        self._stop.set()
        self._go.set()
        end = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(end - time.monotonic(), 0.01))
        now = time.monotonic()
        with self._lock:
            self.hung = [now - started for started in self._running.values()]
        return self

    def pause(self, timeout: float = RETRY_BUDGET + GRACE) -> None:
        """Let no new request start; wait for the ones in progress."""
        with self._lock:
            self._go.clear()
        wait_until(lambda: not self._running, timeout)

    def resume(self) -> None:
        self._go.set()

    def run(self, seconds: float) -> Load:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def _work(self, number: int) -> None:
        while not self._stop.is_set():
            with self._lock:
                go = self._go.is_set()
                started = time.monotonic()
                if go:
                    self._running[number] = started
            if not go:
                self._go.wait(0.05)
                continue
            error: BaseException | None = None
            try:
                self.request()
            except Exception as exc:
                error = exc
            outcome = Outcome(number, started, time.monotonic(), error)
            with self._lock:
                del self._running[number]
                self.outcomes.append(outcome)
            self._stop.wait(self.gap)

    # -- what happened -----------------------------------------------------------------

    def between(self, start: float = float("-inf"), end: float = float("inf")) -> list[Outcome]:
        """The outcomes of the requests that started in [start, end)."""
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]

    @property
    def ok(self) -> int:
        return sum(o.error is None for o in self.between())

    @property
    def failed(self) -> int:
        return sum(o.error is not None for o in self.between()) + len(self.hung)

    def failures(self, start: float = float("-inf"), end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.between(start, end) if o.error is not None]

    def longest(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        seconds = [o.seconds for o in self.between(start, end)] + self.hung
        return max(seconds, default=0.0)

    def first_success(self, after: float) -> Outcome | None:
        """The first request to succeed at or after ``after``."""
        done = [o for o in self.between() if o.error is None and o.ended >= after]
        return min(done, key=lambda o: o.ended, default=None)

    def summary(self, start: float = float("-inf"), end: float = float("inf")) -> str:
        """A short account for assertion messages: counts, the longest, a few distinct errors."""
        outcomes = self.between(start, end)
        errors: dict[str, int] = {}
        for o in outcomes:
            if o.error is not None:
                key = f"{type(o.error).__name__}: {error_text(o.error)[:300]}"
                errors[key] = errors.get(key, 0) + 1
        shown = "; ".join(f"{n}x {text}" for text, n in list(errors.items())[:4])
        failed = sum(o.error is not None for o in outcomes)
        return (
            f"{len(outcomes) - failed} ok, {failed} failed, "
            f"{len(self.hung)} still running at the end, longest {self.longest(start, end):.2f} s; {shown}"
        )


def error_text(exc: BaseException) -> str:
    """What a user sees of an error: its message and any notes added to it."""
    notes = getattr(exc, "__notes__", None) or []
    return " ".join([str(exc), *map(str, notes)])


def assert_clear_failures(load: Load, start: float, end: float, *, alias: str, source_name: str) -> int:
    """Every request that started in [start, end) and failed failed fast, with
    django.db's OperationalError naming the alias and the source. Returns how many failed."""
    failures = load.failures(start, end)
    for outcome in failures:
        exc = outcome.error
        assert isinstance(exc, OperationalError), f"{type(exc).__name__}: {exc}"
        text = error_text(exc)
        assert repr(alias) in text and source_name in text, text
        assert outcome.seconds <= RETRY_BUDGET + GRACE, (
            f"a failing request took {outcome.seconds:.2f} s: {load.summary(start, end)}"
        )
    assert not load.hung, f"requests hung: {load.summary(start, end)}"
    return len(failures)


def assert_refresh_warned(caplog: pytest.LogCaptureFixture, source_name: str) -> None:
    """iamdb logged a WARNING for a failed refresh while it kept the cached credential."""
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.name == "iamdb"
        and r.levelno == logging.WARNING
        and "still using the current credential" in r.getMessage()
    ]
    assert warned, "no WARNING from iamdb about the failed refresh"
    assert all(source_name in message for message in warned), warned[0]


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def recovers(request: Callable[[], None], done: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether, making requests (which may fail meanwhile), ``done()`` comes true within ``timeout``."""

    def attempt() -> bool:
        try:
            request()
        except OperationalError:
            return False
        return done()

    return wait_until(attempt, timeout, step=0.1)


# -- requests --------------------------------------------------------------------------------


def new_connection_request(settings_dict: dict[str, Any], alias: str) -> Callable[[], None]:
    """A request with a new database connection: connect, SELECT 1, close (with a pool
    in OPTIONS, the connection comes from Django's pool and goes back to it)."""

    def request() -> None:
        wrapper = make_wrapper(settings_dict, alias)
        try:
            wrapper.ensure_connection()
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        finally:
            wrapper.close()

    return request


def persistent_request(settings_dict: dict[str, Any], alias: str) -> Callable[[], None]:
    """A request as Django runs it with persistent connections: one connection per
    thread, checked by ``close_if_unusable_or_obsolete`` at the start and end."""
    local = threading.local()

    def request() -> None:
        wrapper = getattr(local, "wrapper", None)
        if wrapper is None:
            wrapper = local.wrapper = make_wrapper(settings_dict, alias)
        wrapper.close_if_unusable_or_obsolete()  # request_started
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except Exception:
            wrapper.close()
            raise
        finally:
            wrapper.close_if_unusable_or_obsolete()  # request_finished

    return request


def close_pool(settings_dict: dict[str, Any], alias: str) -> None:
    make_wrapper(settings_dict, alias).close_pool()


@pytest.fixture
def proxies() -> Iterator[Callable[[int, str], FaultProxy]]:
    """Start proxies (``proxies(upstream_port, name)``); all are stopped after the test."""
    started: list[FaultProxy] = []

    def make(port: int, name: str) -> FaultProxy:
        proxy = FaultProxy(port, name=name).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
