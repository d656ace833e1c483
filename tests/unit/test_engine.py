"""The credential engine with a fake clock and a fake source: no sleeping, no servers."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

import pytest

from iamdb import ConfigurationError, Credential, CredentialError, CredentialSource, RefreshPolicy, Target
from iamdb.deadline import Deadline
from tests.fakeclock import FakeClock, run_now


class FakeSource(CredentialSource):
    """Issues password-1, password-2, ... each valid for ``lifetime`` seconds."""

    def __init__(
        self, clock: FakeClock, lifetime: float | None = 900.0, *, background: bool = False, **kwargs: object
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.issued = 0
        self.fail_with: Exception | None = None
        self.on_fetch: Callable[[], None] | None = None
        super().__init__(clock=clock, **kwargs)  # type: ignore[arg-type]
        if not background:
            self._cache._spawn = run_now  # the advisory refresh runs at once, after the answer is decided

    def fetch(self, target: Target) -> Credential:
        if self.on_fetch:
            self.on_fetch()
        if self.fail_with is not None:
            raise self.fail_with
        self.issued += 1
        expires = None if self.lifetime is None else self.clock.time() + self.lifetime
        return Credential(password=f"password-{self.issued}", username="app", expires_at=expires)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_cached_until_the_advisory_window(clock: FakeClock) -> None:
    source = FakeSource(clock)
    assert source.get_password() == "password-1"
    clock.advance(900 * 0.75 - 1)  # 11:14 into a 15-minute token
    assert source.get_password() == "password-1"
    assert source.issued == 1


def test_refreshes_in_the_advisory_window(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(900 * 0.75 + 1)
    # The caller gets the current credential at once; the refresh runs beside it.
    assert source.get_password() == "password-1"
    assert source.issued == 2
    assert source.get_password() == "password-2"


def test_failed_refresh_in_advisory_window_keeps_the_current_credential(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(700)
    source.fail_with = ConnectionError("endpoint down")
    with caplog.at_level(logging.WARNING, logger="iamdb"):
        assert source.get_password() == "password-1"
    assert "refresh failed" in caplog.text and "password-1" not in caplog.text
    # A transient failure is a WARNING (a configuration error is an ERROR: see below).
    assert [r.levelno for r in caplog.records if "refresh failed" in r.getMessage()] == [logging.WARNING]


def test_failed_refresh_is_not_retried_on_every_call(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(700)
    attempts = []
    source.fail_with = ConnectionError("down")
    source.on_fetch = lambda: attempts.append(1)
    for _ in range(50):
        source.get_password()
    assert len(attempts) == 1
    clock.advance(1)  # past the first backoff (0.5 s)
    source.get_password()
    assert len(attempts) == 2


def test_mandatory_window_serves_a_still_valid_credential_when_refresh_fails(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(850)  # 50 s left: mandatory (90 s before the end)
    source.fail_with = ConnectionError("down")
    assert source.get_password() == "password-1"


def test_expired_credential_is_never_handed_out(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(899)  # inside the safety margin
    source.fail_with = ConnectionError("down")
    with pytest.raises(CredentialError) as info:
        source.get_password()
    assert isinstance(info.value.__cause__, ConnectionError)


def test_mandatory_window_refreshes(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(850)
    assert source.get_password() == "password-2"


def test_windows_scale_with_lifetime(clock: FakeClock) -> None:
    source = FakeSource(clock, lifetime=20.0, refresh=RefreshPolicy(safety_margin=1.0))
    source.get_password()
    clock.advance(14.9)  # advisory opens at 15 s of a 20-s lease
    assert source.get_password() == "password-1"
    assert source.issued == 1
    clock.advance(0.2)
    source.get_password()
    assert source.issued == 2
    assert source.get_password() == "password-2"


def test_credential_without_expiry_is_cached_forever(clock: FakeClock) -> None:
    source = FakeSource(clock, lifetime=None)
    source.get_password()
    clock.advance(10**9)
    assert source.get_password() == "password-1"


def test_invalidate_by_password_is_idempotent(clock: FakeClock) -> None:
    source = FakeSource(clock)
    refused = source.get_password()
    source.invalidate(password=refused)
    assert source.get_password() == "password-2"
    source.invalidate(password=refused)  # a late report about the old one
    assert source.get_password() == "password-2"
    assert source.issued == 2


def test_invalidate_without_password_drops_the_credential(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.get_password()
    source.invalidate()
    assert source.get_password() == "password-2"


def test_refresh_after_is_a_soft_deadline(clock: FakeClock) -> None:
    """A rotating secret re-read on a timer: past refresh_after, a failing source
    leaves the working secret in place instead of failing connections."""

    class Rotating(FakeSource):
        def fetch(self, target: Target) -> Credential:
            credential = super().fetch(target)
            return credential.replace(expires_at=None, refresh_after=self.clock.time() + 60)

    source = Rotating(clock)
    source.get_password()
    clock.advance(61)
    source.get_password()  # refreshed beside the request
    assert source.get_password() == "password-2"
    clock.advance(3600)
    source.fail_with = ConnectionError("down")
    assert source.get_password() == "password-2"


def test_errors_during_backoff_are_reraised_without_a_fetch(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.fail_with = ConnectionError("down")
    attempts = []
    source.on_fetch = lambda: attempts.append(1)
    for _ in range(5):
        with pytest.raises(CredentialError):
            source.get_password()
    assert len(attempts) == 1


def test_cache_key_separates_targets(clock: FakeClock) -> None:
    class PerHost(FakeSource):
        def cache_key(self, target: Target) -> object:
            return target.host

    source = PerHost(clock)
    a = source.get_password(Target(host="a"))
    b = source.get_password(Target(host="b"))
    assert a != b
    assert source.get_password(Target(host="a")) == a


def test_64_threads_cause_one_fetch(clock: FakeClock) -> None:
    source = FakeSource(clock)
    started = threading.Event()
    release = threading.Event()

    def slow() -> None:
        started.set()
        assert release.wait(10)

    source.on_fetch = slow
    barrier = threading.Barrier(64)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        results.append(source.get_password())

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for thread in threads:
        thread.start()
    assert started.wait(10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == ["password-1"] * 64
    assert source.issued == 1


def test_concurrent_invalidations_cause_one_fetch(clock: FakeClock) -> None:
    source = FakeSource(clock)
    refused = source.get_password()
    barrier = threading.Barrier(32)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        source.invalidate(password=refused)
        results.append(source.get_password())

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert set(results) == {"password-2"}
    assert source.issued == 2


def test_advisory_refresh_runs_in_the_background_while_everyone_uses_the_current(clock: FakeClock) -> None:
    source = FakeSource(clock, background=True)
    source.get_password()
    clock.advance(700)  # advisory
    in_fetch = threading.Event()
    release = threading.Event()

    def slow() -> None:
        in_fetch.set()
        assert release.wait(10)

    source.on_fetch = slow
    # No caller waits for the refresh, not even the one that started it.
    assert source.get_password() == "password-1"
    assert in_fetch.wait(10)
    assert [source.get_password() for _ in range(10)] == ["password-1"] * 10
    release.set()
    for _ in range(1000):
        if source.cached() is not None and source.cached().password == "password-2":  # type: ignore[union-attr]
            break
        threading.Event().wait(0.01)
    source.on_fetch = None
    assert source.get_password() == "password-2"
    assert source.issued == 2


def test_credential_repr_hides_the_password() -> None:
    credential = Credential(password="hunter2", username="app", expires_at=1.0)
    assert "hunter2" not in repr(credential)
    assert "hunter2" not in str(credential)
    assert "app" in repr(credential)
    with pytest.raises(AttributeError):
        credential.password = "other"  # type: ignore[misc]


def test_refresh_policy_rejects_inverted_windows() -> None:
    with pytest.raises(ConfigurationError, match="mandatory <= advisory"):
        RefreshPolicy(advisory=0.1, mandatory=0.2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("advisory", float("nan")),
        ("mandatory", -0.1),
        ("safety_margin", float("inf")),
        ("failure_backoff", "1"),
        ("max_failure_backoff", True),
        ("refetch_spacing", None),
        ("max_refetch_spacing", float("nan")),
    ],
)
def test_refresh_policy_validates_every_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"RefreshPolicy: {field} must be"):
        RefreshPolicy(**{field: value})  # type: ignore[arg-type]


def test_refused_logins_space_out_refetches(clock: FakeClock) -> None:
    """While the source keeps returning the refused password (the new one is not
    published yet), refetches are spaced 0.1 s, 0.2 s, 0.4 s ... apart."""

    class Stale(FakeSource):
        def fetch(self, target: Target) -> Credential:
            self.issued += 1
            return Credential(password="old", expires_at=self.clock.time() + 900)

    source = Stale(clock)
    for _ in range(4):
        password = source.get_password()
        source.invalidate(password=password)
    source.get_password()
    assert [round(s, 3) for s in clock.slept] == [0.1, 0.2, 0.4, 0.8]
    assert source.issued == 5


def test_spacing_resets_once_the_password_changes(clock: FakeClock) -> None:
    source = FakeSource(clock)
    for _ in range(4):
        source.invalidate(password=source.get_password())
    source.get_password()
    # Each refetch brought a new password: the spacing stays at its first step.
    assert [round(s, 3) for s in clock.slept] == [0.1, 0.1, 0.1, 0.1]
    assert source.issued == 5


def test_credential_shorter_lived_than_the_safety_margin_is_still_cached(clock: FakeClock) -> None:
    source = FakeSource(clock, lifetime=1.5)  # safety_margin is 2 s
    source.get_password()
    clock.advance(1.0)
    assert source.get_password() == "password-1"  # still cached, not refetched on every call
    clock.advance(0.4)  # within the last 10 % of its life: mandatory
    assert source.get_password() == "password-2"


# -- issue 7: refreshes that never fail a request, deadlines, one clock, fork ------------------


@pytest.mark.parametrize("background", [False, True])
def test_configuration_error_in_the_advisory_window_does_not_fail_the_request(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, background: bool
) -> None:
    """A callable that starts returning None, a secret that lost its keys: while the
    cached credential is valid, the request gets it and the error is logged at ERROR."""
    source = FakeSource(clock, background=background)
    source.get_password()
    clock.advance(700)  # advisory
    source.fail_with = ConfigurationError("database 'default': the secret has no 'password' key")
    with caplog.at_level(logging.WARNING, logger="iamdb"):
        assert source.get_password() == "password-1"
        for _ in range(500):  # the background refresh logs when it has failed
            if any(r.levelno == logging.ERROR for r in caplog.records):
                break
            threading.Event().wait(0.01)
    assert source._cache.failures == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "refresh failed" in errors[0].getMessage()
    assert "has no 'password' key" in errors[0].getMessage()


def test_configuration_error_in_the_mandatory_window_serves_the_valid_credential(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(850)  # mandatory: 50 s left
    source.fail_with = ConfigurationError("bad")
    with caplog.at_level(logging.ERROR, logger="iamdb"):
        assert source.get_password() == "password-1"
    assert "refresh failed" in caplog.text
    clock.advance(49)  # inside the safety margin: nothing valid is left
    clock.advance(1)
    with pytest.raises(ConfigurationError):
        source.get_password()


def test_waiting_for_another_threads_fetch_ends_at_the_deadline() -> None:
    """Real time: one thread is stuck in a fetch; another caller with a 0.2-s deadline
    gives up with a CredentialError instead of waiting for the lock forever."""
    from iamdb.clock import SYSTEM_CLOCK

    class Stuck(CredentialSource):
        def __init__(self) -> None:
            self.release = threading.Event()
            self.entered = threading.Event()
            super().__init__()

        def fetch(self, target: Target) -> Credential:
            self.entered.set()
            self.release.wait(20)
            return Credential(password="late")

    source = Stuck()
    first = threading.Thread(target=source.get_password, daemon=True)
    first.start()
    assert source.entered.wait(10)
    outcome: list[BaseException] = []

    def second() -> None:
        try:
            source.get_password(deadline=Deadline.after(0.2, SYSTEM_CLOCK))
        except CredentialError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=second, daemon=True)
    waiter.start()
    waiter.join(10)
    alive = waiter.is_alive()
    source.release.set()
    first.join(10)
    assert not alive, "the caller waited past its deadline"
    assert outcome and "deadline" in str(outcome[0])


def test_refetch_spacing_longer_than_the_deadline_fails_without_sleeping(clock: FakeClock) -> None:
    class Stale(FakeSource):
        def fetch(self, target: Target) -> Credential:
            self.issued += 1
            return Credential(password="old", expires_at=self.clock.time() + 900)

    source = Stale(clock)
    for _ in range(4):  # spacing now 0.8 s
        source.invalidate(password=source.get_password())
    clock.slept.clear()
    with pytest.raises(CredentialError, match="deadline ends before the next fetch"):
        source.get_password(deadline=Deadline.after(0.3, clock))
    assert clock.slept == []


def test_the_fetch_runs_within_the_callers_deadline(clock: FakeClock) -> None:
    from iamdb import deadline as deadlines

    seen: list[float] = []
    source = FakeSource(clock)
    source.on_fetch = lambda: seen.append(deadlines.timeout_for(10.0, floor=0.0))
    source.get_password(deadline=Deadline.after(3.0, clock))
    assert seen == [3.0]
    source.invalidate()
    source.get_password()  # no deadline: the source's own default
    assert seen[-1] == 10.0


@pytest.mark.parametrize("step", [+3600.0, -3600.0])
def test_a_wall_clock_step_neither_extends_nor_cuts_a_credential(clock: FakeClock, step: float) -> None:
    """NTP moves the wall clock by an hour: the token is still refreshed at 11:15 of its
    15 minutes and used until then, on monotonic time."""
    source = FakeSource(clock)
    source.get_password()
    clock.step_wall(step)
    clock.advance(600)
    assert source.get_password() == "password-1"
    assert source.issued == 1  # not cut: no refresh before the advisory window
    clock.advance(90)  # 11:30: advisory
    source.get_password()
    assert source.issued == 2  # not extended: refreshed on time


def test_stepped_wall_clock_does_not_extend_failure_backoff(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.fail_with = ConnectionError("down")
    with pytest.raises(CredentialError):
        source.get_password()
    clock.step_wall(-3600)
    clock.advance(0.6)  # past the first backoff on monotonic time
    source.fail_with = None
    assert source.get_password() == "password-1"


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_keeps_cached_credentials_and_new_locks(clock: FakeClock) -> None:
    import os

    source = FakeSource(clock)
    source.get_password()
    holder_in = threading.Event()
    release = threading.Event()
    slot = next(iter(source._cache._slots.values()))

    def hold() -> None:
        with slot.fetch_lock:
            holder_in.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_in.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            same_slot = source._cache.slot(None) is slot  # the backends keep slots: never replaced
            if (
                same_slot
                and source.cached() is not None
                and source.get_password() == "password-1"
                and source.issued == 1
            ):
                source.invalidate()
                code = 0 if source.get_password() == "password-2" else 3  # the lock was re-created
        finally:
            os._exit(code)
    release.set()
    holder.join(10)
    for _ in range(1000):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0


def test_backoff_of_a_timer_refreshed_secret_is_not_cut_by_its_ttl(clock: FakeClock) -> None:
    """A secret re-read every 2 s keeps working while its service is down: the failure
    backoff grows as for any source (0.5, 1, 2 s ...), not capped at a tenth of a second."""

    class Rotating(FakeSource):
        def fetch(self, target: Target) -> Credential:
            credential = super().fetch(target)
            return credential.replace(expires_at=None, refresh_after=self.clock.time() + 2)

    source = Rotating(clock)
    source.get_password()
    source.fail_with = ConnectionError("down")
    attempts: list[float] = []
    source.on_fetch = lambda: attempts.append(clock.monotonic())
    for _ in range(400):  # 4 s of requests, one every 10 ms
        clock.advance(0.01)
        assert source.get_password() == "password-1"
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(attempts)]
    assert gaps[:2] == [0.5, 1.0]
    assert len(attempts) <= 4


def test_a_background_refresh_ends_when_the_credential_stops_being_usable(clock: FakeClock) -> None:
    from iamdb import deadline as deadlines

    seen: list[float] = []
    source = FakeSource(clock)
    source.get_password()
    clock.advance(700)  # advisory: 900 - 700 - 2 s of margin = 198 s of use left
    source.on_fetch = lambda: seen.append(deadlines.timeout_for(600.0, floor=0.0))
    source.get_password()
    assert seen == [pytest.approx(198.0)]
