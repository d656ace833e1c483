"""The connection-attempt policy without a server: options, retries within one deadline, retirement."""

from __future__ import annotations

import math

import pytest

from iamdb import ConfigurationError, Credential, CredentialError, CredentialSource, Target
from iamdb.retry import ConnectOptions, LoginRetry, retire_at
from tests.fakeclock import FakeClock


class Refused(Exception):
    pass


class Source(CredentialSource):
    """Hands out pw-1, pw-2, ...; each fetch takes ``fetch_seconds`` of the fake clock."""

    def __init__(self, clock: FakeClock, fetch_seconds: float = 0.0, token: bool = False) -> None:
        self.clock = clock
        self.fetch_seconds = fetch_seconds
        self.fetched = 0
        self.token_per_fetch = token  # type: ignore[misc]
        super().__init__(clock=clock)

    def fetch(self, target: Target) -> Credential:
        self.clock.advance(self.fetch_seconds)
        self.fetched += 1
        return Credential(password=f"pw-{self.fetched}")


def attempt(
    source: Source, clock: FakeClock, budget: float, accept: str | None = None
) -> tuple[list[str], BaseException | None]:
    options = ConnectOptions(retry_budget=budget)
    retry = LoginRetry(source, options, clock=clock, jitter=lambda: 1.0)
    deadline = retry.deadline()
    target = Target()
    tried: list[str] = []

    def open_with(credential: Credential) -> str:
        tried.append(credential.password)
        if credential.password != accept:
            raise Refused(credential.password)
        return "connection"

    try:
        retry.run(
            target, open_with, lambda exc: isinstance(exc, Refused), source.get_credentials(target), deadline
        )
    except CredentialError as exc:
        return tried, exc
    return tried, None


def test_refused_login_is_retried_with_a_fresh_credential() -> None:
    clock = FakeClock()
    source = Source(clock)
    tried, error = attempt(source, clock, budget=5, accept="pw-3")
    assert error is None
    assert tried == ["pw-1", "pw-2", "pw-3"]


def test_the_budget_is_a_deadline_that_a_slow_fetch_counts_against() -> None:
    """Budget 1 s, each fetch takes 2 s: the attempt's first fetch spends the budget, so
    after the refusal no refetch and no new attempt starts (the first release kept
    going and gave up after 4.3 s)."""
    clock = FakeClock()
    source = Source(clock, fetch_seconds=2.0)
    start = clock.monotonic()
    tried, error = attempt(source, clock, budget=1.0)
    assert tried == ["pw-1"]
    assert error is not None and "retry budget of 1 s" in str(error)
    assert clock.monotonic() - start == pytest.approx(2.0)
    assert source.fetched == 1


def test_no_retry_sleep_runs_past_the_deadline() -> None:
    clock = FakeClock()
    source = Source(clock)
    start = clock.monotonic()
    _, error = attempt(source, clock, budget=0.3)
    assert error is not None
    assert clock.monotonic() - start <= 0.3 + 1e-9
    assert all(s <= 0.3 for s in clock.slept)


def test_a_token_source_retries_a_refused_login_once() -> None:
    """Every fetch signs a new token: a second refusal means the policy or the user is
    wrong, and waiting for the budget helps nobody."""
    clock = FakeClock()
    source = Source(clock, token=True)
    tried, error = attempt(source, clock, budget=30.0)
    assert tried == ["pw-1", "pw-2"]
    assert error is not None and "new token was refused too" in str(error)
    assert isinstance(error.__cause__, Refused)


def test_giving_up_names_the_database_and_the_source_and_keeps_the_cause() -> None:
    clock = FakeClock()
    source = Source(clock)
    _, error = attempt(source, clock, budget=0.0)
    assert error is not None
    assert "database 'default'" in str(error) and "Source()" in str(error)
    assert isinstance(error.__cause__, Refused)
    assert error.__cause__.__traceback__ is None  # no frames that could hold the password


def test_other_errors_are_not_retried() -> None:
    clock = FakeClock()
    source = Source(clock)
    retry = LoginRetry(source, ConnectOptions(), clock=clock)

    def open_with(credential: Credential) -> str:
        raise OSError("connection refused")

    with pytest.raises(OSError):
        retry.run(Target(), open_with, lambda exc: False, source.get_credentials(), retry.deadline())
    assert source.fetched == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("retry_budget", math.nan),
        ("retry_budget", math.inf),
        ("retry_delay", -1),
        ("max_retry_delay", "1"),
        ("retire_margin", True),
        ("retire_margin", None),
    ],
)
def test_options_are_validated_with_the_alias_and_key(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectOptions.from_options({"iamdb": {key: value}}, "reports")
    assert "database 'reports'" in str(info.value) and repr(key) in str(info.value)


def test_retry_delay_above_its_maximum_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="retry_delay"):
        ConnectOptions.from_options({"iamdb": {"retry_delay": 2, "max_retry_delay": 1}}, "default")


def test_retirement_keeps_a_margin_or_a_tenth_of_the_lease() -> None:
    short = Credential(password="x", issued_at=0.0, sessions_end_at=30.0)
    assert retire_at(100.0, short, margin=5.0) == 95.0
    long = Credential(password="x", issued_at=0.0, sessions_end_at=3600.0)
    assert retire_at(100.0, long, margin=5.0) == pytest.approx(100.0 - 360.0)
    assert retire_at(None, short, margin=5.0) is None
    assert retire_at(math.inf, short, margin=5.0) is None
