"""SecretsManagerSecret under load while Secrets Manager (moto's server, behind the
fault proxy) or the database fails.

Every request opens a new database connection (or takes one from Django's pool),
runs SELECT 1 and closes it, from several threads at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import django
import pytest

from iamdb.sources import SecretsManagerSecret
from tests.conftest import DbUser, new_password
from tests.faults.conftest import (
    FAST,
    GRACE,
    RETRY_BUDGET,
    THREADS,
    UNSLOWED,
    Load,
    Report,
    assert_clear_failures,
    assert_refresh_warned,
    close_pool,
    down_while_valid,
    new_connection_request,
    persistent_request,
    recovers,
)
from tests.services.faultproxy import FaultProxy
from tests.services.moto import MotoServer
from tests.services.postgres import PrivatePostgres

pytestmark = pytest.mark.faults

SOURCE = "SecretsManagerSecret"
#: The secret is read again this often: its refresh falls within each scenario.
TTL = 2.0


class SecretLab:
    """moto's Secrets Manager behind a fault proxy, and the tests' secrets in it."""

    def __init__(self, moto: MotoServer, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.admin = moto.admin_client()
        self.names: list[str] = []

    def secret(self, user: DbUser, password: str | None = None) -> str:
        name = f"iamdb/faults/{user.name}-{new_password()[-6:]}"
        self.admin.create_secret(Name=name, SecretString=self.value(user, password))
        self.names.append(name)
        return name

    def value(self, user: DbUser, password: str | None = None) -> str:
        return json.dumps({"username": user.name, "password": password or user.password})

    def source(self, secret_id: str, **kwargs: Any) -> SecretsManagerSecret:
        # A session of its own: its client is made with the proxy's endpoint (set below).
        return SecretsManagerSecret(secret_id, session=boto3.session.Session(), ttl=TTL, **kwargs)

    def cleanup(self) -> None:
        for name in self.names:
            self.admin.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


@pytest.fixture
def sm(
    moto_server: MotoServer, proxies: Callable[[int, str], FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretLab]:
    proxy = proxies(moto_server.port, "moto")
    # boto3 finds the endpoint as it finds AWS's: the sources need no test hook.
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.url)
    lab = SecretLab(moto_server, proxy)
    yield lab
    proxy.pass_through()
    lab.cleanup()


def settings_for(user: DbUser, source: SecretsManagerSecret, **extra: Any) -> dict[str, Any]:
    options = {"iamdb": FAST, **extra.pop("OPTIONS", {})}
    return user.settings(source, OPTIONS=options, **extra)


POOL = {"min_size": 1, "max_size": THREADS, "timeout": RETRY_BUDGET, "max_lifetime": 1.0}


# -- the service down while the cached credential is valid -----------------------------------


@pytest.mark.parametrize("vendor", ["postgresql"])
@down_while_valid
def test_down_while_the_secret_is_cached(
    sm: SecretLab, db_user: DbUser, report: Report, fault: str, pooled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The secret is re-read every TTL seconds; while Secrets Manager is down or
    black-holed, every request still succeeds at once with the cached secret."""
    source = sm.source(sm.secret(db_user))
    alias = f"sm_cached_{fault}_{'pool' if pooled else 'new'}"
    settings_dict = settings_for(db_user, source, OPTIONS={"pool": POOL} if pooled else {})
    request = new_connection_request(settings_dict, alias)
    try:
        request()  # the secret is cached
        cached = source.cached()
        sm.proxy.reset_stats()
        getattr(sm.proxy, fault)()
        load = Load(request).run(2.5 * TTL)  # the refresh falls due after TTL s
        fetches = sm.proxy.stats.attempts
        sm.proxy.pass_through()
        report.add(load, fetches=fetches)

        assert load.failed == 0, load.summary()
        assert load.longest() < UNSLOWED, f"a request waited for Secrets Manager: {load.summary()}"
        # The refresh was tried while the service was down, spaced by the backoff.
        assert fetches >= 1
        if fault != "blackhole":  # a black-holed refresh is still waiting for its timeout
            assert_refresh_warned(caplog, source.describe())
        assert fetches * 5 <= load.ok, f"{fetches} requests to Secrets Manager for {load.ok} served"
        # Back up: the secret is read again, by itself.
        assert recovers(request, lambda: source.cached() is not cached), "never re-read"
    finally:
        sm.proxy.pass_through()
        if pooled:
            close_pool(settings_dict, alias)


# -- the service down, or slow, when nothing usable is cached ---------------------------------


@pytest.mark.parametrize("vendor", ["postgresql"])
@pytest.mark.parametrize("fault", ["reset", "slow"])
def test_down_with_nothing_cached(sm: SecretLab, db_user: DbUser, report: Report, fault: str) -> None:
    """A process starting while Secrets Manager is down (reset) or answers only after
    the SDK's timeout (slow): requests fail fast with a clear error, and recover
    by themselves once it answers again."""
    source = sm.source(sm.secret(db_user))
    alias = f"sm_empty_{fault}"
    request = new_connection_request(settings_for(db_user, source), alias)
    if fault == "slow":
        sm.proxy.delay(12.0)  # past botocore's read timeout (10 s)
    else:
        sm.proxy.reset()
    load = Load(request).start()
    time.sleep(6.0)
    back = time.monotonic()
    sm.proxy.pass_through()
    time.sleep(5.0)
    load.stop()
    fetches = sm.proxy.stats.attempts
    report.add(load, fetches=fetches)

    assert_clear_failures(load, float("-inf"), float("inf"), alias=alias, source_name=SOURCE)
    # No retry storm: failed fetches back off, and callers meanwhile get the same error.
    assert fetches <= 20 and fetches * 10 <= load.failed, f"{fetches} requests to Secrets Manager"
    down = [o for o in load.between() if o.ended < back]
    assert down, f"no request ended while Secrets Manager was {fault}: {load.summary()}"
    assert all(o.error is not None for o in down), load.summary(end=back)
    first = load.first_success(after=back)
    assert first is not None and first.ended - back < 5.0, f"no recovery: {load.summary(start=back)}"
    assert not load.failures(start=first.ended), load.summary(start=first.ended)


# -- the password changed behind the app's back -----------------------------------------------


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_password_changed_behind_the_apps_back(
    sm: SecretLab,
    db_user: DbUser,
    pg_server: PrivatePostgres,
    proxies: Callable[[int, str], FaultProxy],
    report: Report,
) -> None:
    """ALTER ROLE without updating the secret: after the retry budget, clear errors
    naming alias and source; Secrets Manager is asked a few times, not once per
    refused login per thread; once the secret holds the new password, requests
    recover by themselves."""
    secret = sm.secret(db_user)
    source = sm.source(secret)
    database = proxies(pg_server.port, "postgres")  # counts the login attempts
    alias = "sm_changed"
    settings_dict = settings_for(db_user, source, PORT=database.port)
    request = new_connection_request(settings_dict, alias)
    request()
    changed = new_password()
    db_user.server.set_password(db_user.name, changed)
    sm.proxy.reset_stats()
    database.reset_stats()
    load = Load(request).start()
    time.sleep(2 * RETRY_BUDGET)
    fetches, logins = sm.proxy.stats.attempts, database.stats.connections
    fixed = time.monotonic()
    sm.admin.put_secret_value(SecretId=secret, SecretString=sm.value(db_user, changed))
    time.sleep(4.0)
    load.stop()
    report.add(load, fetches=fetches)

    failures = assert_clear_failures(load, float("-inf"), fixed, alias=alias, source_name=SOURCE)
    assert failures >= THREADS, load.summary(end=fixed)
    for outcome in load.failures(end=fixed):
        # Refused, retried with the secret read again for most of the budget, then given up.
        assert "refused" in str(outcome.error), str(outcome.error)
        assert outcome.seconds >= RETRY_BUDGET / 2, f"gave up after {outcome.seconds:.2f} s"
    # A handful of reads (a refetch after a refusal reads AWSCURRENT and AWSPENDING), shared
    # by the threads: not one per refused login per thread.
    assert fetches <= 4 * 2 * RETRY_BUDGET, f"{fetches} reads of the secret for {logins} logins"
    assert fetches * 2 <= logins, f"{fetches} reads of the secret for {logins} logins"
    first = load.first_success(after=fixed)
    assert first is not None and first.ended - fixed < 4.0, load.summary(start=fixed)
    assert not load.failures(start=first.ended), load.summary(start=first.ended)


# -- the database server restarted ------------------------------------------------------------


@pytest.fixture
def restartable_pg() -> Iterator[PrivatePostgres]:
    """A private server of this test's own: it is stopped and started again."""
    server = PrivatePostgres().start()
    try:
        yield server
    finally:
        server.stop()


def pg_ctl(server: PrivatePostgres, *args: str) -> None:
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*as_postgres, str(server.bindir / "pg_ctl"), "-D", str(server.datadir), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


def stop_server(server: PrivatePostgres) -> None:
    pg_ctl(server, "-m", "fast", "-w", "stop")


def start_server(server: PrivatePostgres) -> None:
    pg_ctl(server, "-l", str(server.root / "server.log"), "-w", "-t", "60", "start")


def test_database_restarted(sm: SecretLab, restartable_pg: PrivatePostgres, report: Report) -> None:
    """The database server restarts under load: requests fail while it is down, fast,
    and recover after. Then it restarts while idle connections wait (persistent, or
    in the pool): none whose session died is handed out afterwards, with
    CONN_HEALTH_CHECKS (the pool's check). Without it, dead connections are handed
    out: the controls, which show that the test can tell."""
    server = restartable_pg
    name, password = "iamdb_restart", new_password()
    server.create_role(name, password)
    user = DbUser("postgresql", name, password, server)
    source = sm.source(sm.secret(user))
    pool = {"min_size": 2, "max_size": 2, "timeout": RETRY_BUDGET}
    kinds: dict[str, dict[str, Any]] = {
        "new connection": {},
        "persistent": {"CONN_MAX_AGE": None, "CONN_HEALTH_CHECKS": True},
        "persistent, no checks": {"CONN_MAX_AGE": None},
    }
    if django.VERSION >= (5, 1):
        kinds["pool"] = {"CONN_HEALTH_CHECKS": True, "OPTIONS": {"pool": pool}}
        kinds["pool, no checks"] = {"OPTIONS": {"pool": pool}}
    loads: dict[str, Load] = {}
    pools: list[tuple[dict[str, Any], str]] = []
    for number, (label, extra) in enumerate(kinds.items()):
        alias = f"restart_{number}"
        settings_dict = settings_for(user, source, **extra)
        make = persistent_request if "CONN_MAX_AGE" in extra else new_connection_request
        loads[label] = Load(make(settings_dict, alias), threads=2)
        if "pool" in label:
            pools.append((settings_dict, alias))
    try:
        for load in loads.values():
            load.request()  # connected (the pools opened) before the load starts
            load.start()
        time.sleep(1.0)
        stopping = time.monotonic()
        stop_server(server)  # under load
        down = time.monotonic()
        time.sleep(2.0)
        starting = time.monotonic()
        start_server(server)
        up = time.monotonic()
        time.sleep(4.0)
        for load in loads.values():
            load.pause()  # idle: the connections wait in the pool, or in their thread
        stop_server(server)
        start_server(server)
        idle_restart = time.monotonic()
        for load in loads.values():
            load.resume()
        time.sleep(2.0)
        for load in loads.values():
            load.stop()
    finally:
        for settings_dict, alias in pools:
            close_pool(settings_dict, alias)
    for label, load in loads.items():
        report.add(load, fetches=None, label=label)

    for label, load in loads.items():
        before = [o for o in load.between() if o.ended < stopping]
        assert before and not [o for o in before if o.error], f"{label}: {load.summary(end=stopping)}"
        # While it is down, nothing succeeds: requests fail (or wait for the pool, up to its timeout).
        during = [o for o in load.between() if down + 0.2 < o.ended < starting]
        assert all(o.error is not None for o in during), f"{label}: {load.summary(down, starting)}"
        assert during or "pool" in label, f"{label}: {load.summary(down, starting)}"
        for outcome in load.failures():
            assert outcome.seconds <= RETRY_BUDGET + GRACE, f"{label}: {load.summary()}"
        assert not load.hung, f"{label}: {load.summary()}"
        first = load.first_success(after=up)
        assert first is not None and first.ended - up < 3.0, f"{label}: {load.summary(start=up)}"
        assert not load.failures(first.ended, idle_restart), (
            f"{label}: {load.summary(first.ended, idle_restart)}"
        )
        after_idle = load.failures(start=idle_restart)
        if "no checks" in label:
            assert after_idle, f"{label}: the control should have been handed a dead connection"
        else:
            assert not after_idle, (
                f"{label}: a dead connection was handed out: {load.summary(start=idle_restart)}"
            )
