"""The credential engine with a fake clock and a fake source: no sleeping, no servers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

from iamdb import Credential, CredentialError, CredentialSource, RefreshPolicy, Target


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSource(CredentialSource):
    """Issues password-1, password-2, ... each valid for ``lifetime`` seconds."""

    def __init__(self, clock: FakeClock, lifetime: float | None = 900.0, **kwargs: object) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.issued = 0
        self.fail_with: Exception | None = None
        self.on_fetch: Callable[[], None] | None = None
        super().__init__(clock=clock, **kwargs)  # type: ignore[arg-type]

    def fetch(self, target: Target) -> Credential:
        if self.on_fetch:
            self.on_fetch()
        if self.fail_with is not None:
            raise self.fail_with
        self.issued += 1
        expires = None if self.lifetime is None else self.clock() + self.lifetime
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
    clock.advance(0.2)
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
            return credential.replace(expires_at=None, refresh_after=self.clock() + 60)

    source = Rotating(clock)
    source.get_password()
    clock.advance(61)
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


def test_advisory_refresh_by_one_thread_while_others_use_the_current(clock: FakeClock) -> None:
    source = FakeSource(clock)
    source.get_password()
    clock.advance(700)  # advisory
    in_fetch = threading.Event()
    release = threading.Event()

    def slow() -> None:
        in_fetch.set()
        assert release.wait(10)

    source.on_fetch = slow
    refresher = threading.Thread(target=source.get_password)
    refresher.start()
    assert in_fetch.wait(10)
    # While one thread refreshes, everybody else gets the current credential at once.
    assert [source.get_password() for _ in range(10)] == ["password-1"] * 10
    release.set()
    refresher.join(10)
    source.on_fetch = None
    assert source.get_password() == "password-2"


def test_credential_repr_hides_the_password() -> None:
    credential = Credential(password="hunter2", username="app", expires_at=1.0)
    assert "hunter2" not in repr(credential)
    assert "hunter2" not in str(credential)
    assert "app" in repr(credential)
    with pytest.raises(AttributeError):
        credential.password = "other"  # type: ignore[misc]


def test_refresh_policy_rejects_inverted_windows() -> None:
    with pytest.raises(ValueError):
        RefreshPolicy(advisory=0.1, mandatory=0.2)


def test_refused_logins_space_out_refetches(clock: FakeClock) -> None:
    """While the source keeps returning the refused password (the new one is not
    published yet), refetches are spaced 0.1 s, 0.2 s, 0.4 s ... apart."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 3))
        clock.advance(seconds)

    class Stale(FakeSource):
        def fetch(self, target: Target) -> Credential:
            self.issued += 1
            return Credential(password="old", expires_at=self.clock() + 900)

    source = Stale(clock)
    source._cache._sleep = sleep
    for _ in range(4):
        password = source.get_password()
        source.invalidate(password=password)
    source.get_password()
    assert slept == [0.1, 0.2, 0.4, 0.8]
    assert source.issued == 5


def test_spacing_resets_once_the_password_changes(clock: FakeClock) -> None:
    slept: list[float] = []
    source = FakeSource(clock)
    source._cache._sleep = lambda seconds: (slept.append(seconds), clock.advance(seconds))  # type: ignore[func-returns-value]
    for _ in range(4):
        source.invalidate(password=source.get_password())
    source.get_password()
    # Each refetch brought a new password: the spacing stays at its first step.
    assert [round(s, 3) for s in slept] == [0.1, 0.1, 0.1, 0.1]
    assert source.issued == 5


def test_credential_shorter_lived_than_the_safety_margin_is_still_cached(clock: FakeClock) -> None:
    source = FakeSource(clock, lifetime=1.5)  # safety_margin is 2 s
    source.get_password()
    clock.advance(1.0)
    assert source.get_password() == "password-1"  # still cached, not refetched on every call
    clock.advance(0.4)  # within the last 10 % of its life: mandatory
    assert source.get_password() == "password-2"
