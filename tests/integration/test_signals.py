"""Signals and counters on real servers: refused logins and retired connections."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from iamdb import Credential, metrics, signals
from iamdb.sources import CallableSource
from tests.conftest import DbUser, make_wrapper


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []

    def on_refused(sender: Any, **kwargs: Any) -> None:
        events.append(("login_refused", kwargs))

    def on_retired(sender: Any, **kwargs: Any) -> None:
        events.append(("connection_retired", kwargs))

    signals.login_refused.connect(on_refused)
    signals.connection_retired.connect(on_retired)
    metrics.reset()
    yield events
    signals.login_refused.disconnect(on_refused)
    signals.connection_retired.disconnect(on_retired)


def test_a_refused_login_retried_sends_login_refused(db_user: DbUser, received: list[Any]) -> None:
    stale = {"password": "not-yet-" + db_user.password}
    calls = []

    def password() -> str:
        calls.append(1)
        if len(calls) >= 2:
            stale["password"] = db_user.password  # published after the first refusal
        return stale["password"]

    source = CallableSource(password)
    wrapper = make_wrapper(db_user.settings(source), alias="signals_db")
    wrapper.ensure_connection()
    wrapper.close()
    refused = [kwargs for name, kwargs in received if name == "login_refused"]
    assert [(e["alias"], e["attempt"], e["retrying"]) for e in refused] == [("signals_db", 1, True)]
    assert refused[0]["source"] is source
    counts = metrics.snapshot()[("signals_db", source.describe())]
    assert counts.logins_refused == 1 and counts.fetches == 2 and counts.fetch_failures == 0


def test_retiring_a_connection_sends_connection_retired(db_user: DbUser, received: list[Any]) -> None:
    def lease() -> Credential:
        now = time.time()
        return Credential(password=db_user.password, expires_at=now + 3.0, sessions_end_at=now + 3.0)

    source = CallableSource(lease)
    wrapper = make_wrapper(
        db_user.settings(source, CONN_MAX_AGE=None, OPTIONS={"iamdb": {"retire_margin": 2.0}}),
        alias="signals_db",
    )
    wrapper.ensure_connection()
    wrapper.close_if_unusable_or_obsolete()
    assert received == []  # not due yet
    assert wrapper.close_at is not None
    time.sleep(max(wrapper.close_at - time.monotonic(), 0) + 0.05)
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is None
    assert [(name, e["alias"]) for name, e in received] == [("connection_retired", "signals_db")]
    assert metrics.snapshot()[("signals_db", source.describe())].retirements == 1
