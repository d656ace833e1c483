"""Issue 7 against real servers: renewed leases extend open connections, Django's pool
reports a broken source quickly, multi-host settings, token sources fail fast."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

from iamdb import ConfigurationError, Credential, CredentialError, CredentialSource, Target
from iamdb.sources import CallableSource
from tests.conftest import DbUser, make_wrapper, new_password
from tests.services.postgres import free_port

needs_pool = pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")


class Lease(CredentialSource):
    """Like a Vault lease: the same password, renewed on every fetch for ``lifetime`` s more."""

    issues_username = False

    def __init__(self, user: DbUser, lifetime: float) -> None:
        self.user = user
        self.lifetime = lifetime
        self.renewals = 0
        super().__init__()

    def fetch(self, target: Target) -> Credential:
        self.renewals += 1
        now = time.time()
        end = now + self.lifetime
        return Credential(password=self.user.password, expires_at=end, sessions_end_at=end, issued_at=now)


def test_a_renewed_lease_extends_connections_already_open(db_user: DbUser) -> None:
    """docs/backends.md: a renewed lease that keeps the password extends open connections.
    The first release set close_at once, at connect, and retired the connection at the
    first lease's end although the lease had been renewed."""
    source = Lease(db_user, lifetime=3.0)
    wrapper = make_wrapper(
        db_user.settings(source, CONN_MAX_AGE=None, OPTIONS={"iamdb": {"retire_margin": 0.5}})
    )
    wrapper.ensure_connection()
    first = wrapper.connection
    first_close_at = wrapper.close_at
    assert first_close_at is not None
    time.sleep(2.35)  # past 75 % of the lease: the next use renews it (in the background)
    source.get_credentials(wrapper.iamdb.target)
    for _ in range(200):
        if source.renewals == 2:
            break
        time.sleep(0.01)
    assert source.renewals == 2
    time.sleep(max(first_close_at - time.monotonic(), 0) + 0.1)  # past the first lease's retirement
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is first, "retired although its lease was renewed"
    assert wrapper.close_at is not None and wrapper.close_at > first_close_at + 1.5
    wrapper.close()


@needs_pool
@pytest.mark.parametrize("vendor", ["postgresql"])
@pytest.mark.parametrize(
    ("func", "error", "cause"),
    [
        (lambda: None, ImproperlyConfigured, None),
        (lambda: (_ for _ in ()).throw(ConnectionError("vault is down")), OperationalError, ConnectionError),
    ],
    ids=["callable-returns-None", "source-down"],
)
def test_the_pool_reports_a_broken_source_within_the_budget(
    db_user: DbUser, func: Any, error: type[Exception], cause: type[Exception] | None
) -> None:
    """The first release: every request stalled 30 s and ended in PoolTimeout naming
    neither the database nor the source."""
    alias = f"pool_{new_password()[-8:]}"
    settings_dict = db_user.settings(
        CallableSource(func),
        OPTIONS={"pool": {"min_size": 1, "max_size": 2, "timeout": 30}, "iamdb": {"retry_budget": 1.0}},
    )
    wrapper = make_wrapper(settings_dict, alias=alias)
    try:
        for _ in range(2):  # the first request, and one after the pool has failed already
            start = time.monotonic()
            with pytest.raises(error) as info:
                wrapper.ensure_connection()
            elapsed = time.monotonic() - start
            assert elapsed < 1.0 + 4.0, f"took {elapsed:.1f} s"
            message = str(info.value)
            assert f"database {alias!r}" in message and "CallableSource(" in message
            if cause is not None:
                assert isinstance(info.value.__cause__, cause)
    finally:
        wrapper.close_pool()


@needs_pool
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_retiring_a_pooled_connection_logs_no_warning(
    db_user: DbUser, caplog: pytest.LogCaptureFixture
) -> None:
    source = Lease(db_user, lifetime=3.0)
    alias = f"pool_{new_password()[-8:]}"
    settings_dict = db_user.settings(
        source,
        OPTIONS={"pool": {"min_size": 1, "max_size": 2, "timeout": 10}, "iamdb": {"retire_margin": 2.0}},
    )
    wrapper = make_wrapper(settings_dict, alias=alias)
    try:
        with caplog.at_level(logging.INFO, logger="psycopg.pool"):
            wrapper.ensure_connection()
            first = wrapper.connection.info.backend_pid
            wrapper.close()
            time.sleep(1.2)  # now due
            wrapper.ensure_connection()
            assert wrapper.connection.info.backend_pid != first
            wrapper.close()
    finally:
        wrapper.close_pool()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


# -- multi-host ------------------------------------------------------------------------------


def dead_port() -> int:
    return free_port()  # nothing listens there


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_multi_host_settings_with_a_plain_password_are_stock_django(db_user: DbUser) -> None:
    """libpq's failover (HOST "h1,h2", PORT "p1,p2"): Django passes it through; so does iamdb."""
    settings_dict = db_user.settings(db_user.password)
    settings_dict.update(HOST="127.0.0.1,127.0.0.1", PORT=f"{dead_port()},{db_user.server.port}")
    wrapper = make_wrapper(settings_dict)
    wrapper.ensure_connection()
    assert wrapper.connection.info.port == db_user.server.port
    wrapper.close()


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_multi_host_settings_with_a_source(db_user: DbUser) -> None:
    settings_dict = db_user.settings(lambda: db_user.password)
    settings_dict.update(HOST="127.0.0.1,127.0.0.1", PORT=f"{dead_port()},{db_user.server.port}")
    wrapper = make_wrapper(settings_dict)
    wrapper.ensure_connection()
    assert wrapper.connection.info.port == db_user.server.port
    wrapper.close()


class HostSigner(CredentialSource):
    """A token source stand-in: each fetch 'signs' for one host:port. Only the token for the
    live server's port is the real password."""

    token_per_fetch = True

    def __init__(self, user: DbUser) -> None:
        self.user = user
        self.signed: list[tuple[str, int | None]] = []
        self.lock = threading.Lock()
        super().__init__()

    def cache_key(self, target: Target) -> object:
        return (target.host, target.port)

    def fetch(self, target: Target) -> Credential:
        with self.lock:
            self.signed.append((target.host, target.port))
        good = target.port == self.user.server.port
        return Credential(password=self.user.password if good else f"token-for-{target.port}")


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_a_signer_signs_for_each_host_tried(db_user: DbUser) -> None:
    source = HostSigner(db_user)
    down = dead_port()
    settings_dict = db_user.settings(source)
    settings_dict.update(HOST="127.0.0.1,127.0.0.1", PORT=f"{down},{db_user.server.port}")
    wrapper = make_wrapper(settings_dict)
    wrapper.ensure_connection()
    assert wrapper.connection.info.port == db_user.server.port
    assert source.signed == [("127.0.0.1", down), ("127.0.0.1", db_user.server.port)]
    wrapper.close()


@pytest.mark.parametrize("port", ["fivefour", "5432,x", "0", 3.5])
def test_a_port_that_is_not_a_number_is_improperly_configured(port: object) -> None:
    settings_dict = {
        "ENGINE": "iamdb.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": port,
        "NAME": "postgres",
        "USER": "app",
        "PASSWORD": lambda: "x",
    }
    wrapper = make_wrapper(settings_dict, alias="reports")
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    assert isinstance(info.value, ConfigurationError)
    assert "database 'reports'" in str(info.value) and "PORT" in str(info.value)


# -- token sources fail fast -------------------------------------------------------------------


def test_a_token_source_retries_a_refused_login_once(db_user: DbUser) -> None:
    class WrongPolicy(CredentialSource):
        token_per_fetch = True
        fetched = 0

        def fetch(self, target: Target) -> Credential:
            self.fetched += 1
            return Credential(password=f"token-{self.fetched}-{new_password()}")

    source = WrongPolicy()
    wrapper = make_wrapper(db_user.settings(source, OPTIONS={"iamdb": {"retry_budget": 30}}))
    start = time.monotonic()
    with pytest.raises(CredentialError, match="new token was refused too"):
        wrapper.ensure_connection()
    assert source.fetched == 2
    assert time.monotonic() - start < 10  # not the 30-s budget
