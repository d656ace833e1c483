"""Signals and counters: what iamdb reports, with a fake clock and a fake source."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from iamdb import Credential, CredentialError, CredentialSource, Target, metrics, signals
from tests.fakeclock import FakeClock, run_now


class Source(CredentialSource):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.fail: Exception | None = None
        super().__init__(clock=clock)
        self._cache._spawn = run_now

    def describe(self) -> str:
        return "Source(test)"

    def fetch(self, target: Target) -> Credential:
        self.clock.advance(0.25)  # the fetch takes a quarter of a second
        if self.fail is not None:
            raise self.fail
        return Credential(password="pw-secret-123", username="app", expires_at=self.clock.time() + 900)


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name in ("credential_fetched", "refresh_failed", "login_refused", "connection_retired"):

        def receiver(sender: Any, name: str = name, **kwargs: Any) -> None:
            events.append((name, {"sender": sender, **kwargs}))

        receivers[name] = receiver
        getattr(signals, name).connect(receiver)
    metrics.reset()
    yield events
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def test_a_fetch_sends_credential_fetched_with_its_duration(received: list[Any]) -> None:
    source = Source(FakeClock())
    source.get_credentials(Target(alias="reports"))
    assert [name for name, _ in received] == ["credential_fetched"]
    event = received[0][1]
    assert event["sender"] is Source and event["source"] is source and event["alias"] == "reports"
    assert event["duration"] == pytest.approx(0.25) and event["username"] == "app"
    assert "pw-secret-123" not in repr(event)


def test_a_failed_fetch_sends_refresh_failed_and_is_counted(received: list[Any]) -> None:
    clock = FakeClock()
    source = Source(clock)
    source.get_credentials(Target(alias="reports"))
    clock.advance(700)  # advisory
    source.fail = ConnectionError("endpoint down")
    source.get_credentials(Target(alias="reports"))  # served from the cache; the refresh fails
    names = [name for name, _ in received]
    assert names == ["credential_fetched", "refresh_failed"]
    assert isinstance(received[1][1]["error"], CredentialError)
    counts = metrics.snapshot()[("reports", "Source(test)")]
    assert (counts.fetches, counts.fetch_failures) == (2, 1)
    assert counts.fetch_seconds == pytest.approx(0.5)
    assert counts.last_error is not None and "endpoint down" in counts.last_error


def test_the_fetch_is_logged_at_debug_without_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    source = Source(FakeClock())
    with caplog.at_level(logging.DEBUG, logger="iamdb"):
        source.get_credentials(Target(alias="reports"))
    assert "database 'reports': Source(test) issued a credential for app" in caplog.text
    assert "pw-secret-123" not in caplog.text


def test_counters_are_per_alias_and_source(received: list[Any]) -> None:
    source = Source(FakeClock())
    source.get_credentials(Target(alias="a"))
    source.get_credentials(Target(alias="b"))  # the same cache key: no new fetch
    assert set(metrics.snapshot()) == {("a", "Source(test)")}
    other = Source(FakeClock())
    other.get_credentials(Target(alias="b"))
    assert set(metrics.snapshot()) == {("a", "Source(test)"), ("b", "Source(test)")}
    assert metrics.snapshot()[("b", "Source(test)")].fetches == 1
