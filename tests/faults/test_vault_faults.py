"""VaultDatabaseCredentials under load while Vault (OpenBao, behind the fault proxy)
fails, is sealed, or revokes the lease in use.

Leases last seconds (``pg-short``: 3 s, at most 8; ``pg-long``: 6 s, at most 30),
so expiry happens within a test. Every request opens a new database connection
(or takes one from Django's pool), runs SELECT 1 and closes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iamdb import RefreshPolicy
from iamdb.sources.vault import TokenAuth, VaultDatabaseCredentials
from tests.faults.conftest import (
    FAST,
    RETRY_BUDGET,
    THREADS,
    UNSLOWED,
    Load,
    Report,
    assert_clear_failures,
    assert_refresh_warned,
    close_pool,
    down_while_valid,
    needs_pool,
    new_connection_request,
    recovers,
)
from tests.integration.vault_fixtures import VaultLab
from tests.services.faultproxy import FaultProxy
from tests.services.openbao import OpenBao, bao_binary

pytestmark = pytest.mark.faults

SOURCE = "VaultDatabaseCredentials"
ROLE = {"postgresql": "pg", "mysql": "my"}
#: hvac's timeout for each request to Vault.
VAULT_TIMEOUT = 5.0
POOL = {"min_size": 1, "max_size": THREADS, "timeout": RETRY_BUDGET}
#: A pool that replaces its connections every second: each new one asks the source.
RENEWING_POOL = {**POOL, "max_lifetime": 1.0}


@pytest.fixture
def vault(vault_lab: VaultLab, proxies: Callable[[int, str], FaultProxy]) -> Iterator[FaultProxy]:
    """A fault proxy in front of the lab's OpenBao."""
    proxy = proxies(vault_lab.bao.port, "openbao")
    yield proxy
    proxy.pass_through()


def source_for(lab: VaultLab, proxy: FaultProxy, role: str, **kwargs: Any) -> VaultDatabaseCredentials:
    return VaultDatabaseCredentials(
        role, url=proxy.url, auth=TokenAuth(lab.bao.root_token), timeout=VAULT_TIMEOUT, **kwargs
    )


def settings_for(
    lab: VaultLab, vendor: str, source: VaultDatabaseCredentials, **extra: Any
) -> dict[str, Any]:
    options = {"iamdb": FAST, **extra.pop("OPTIONS", {})}
    return lab.settings(vendor, source, OPTIONS=options, **extra)


# -- Vault down while the lease is valid ------------------------------------------------------


@down_while_valid
def test_down_while_the_lease_is_valid(
    vault_lab: VaultLab,
    vault: FaultProxy,
    report: Report,
    fault: str,
    pooled: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 6 s lease whose renewal falls due after 2.4 s (advisory window); Vault goes
    down at once. Until the lease's mandatory window every request succeeds, none
    waiting for Vault; the renewal is tried in the meantime, spaced by the backoff."""
    source = source_for(vault_lab, vault, "pg-long", refresh=RefreshPolicy(advisory=0.6))
    alias = f"vault_valid_{fault}_{'pool' if pooled else 'new'}"
    settings_dict = settings_for(
        vault_lab, "postgresql", source, OPTIONS={"pool": RENEWING_POOL} if pooled else {}
    )
    request = new_connection_request(settings_dict, alias)
    try:
        request()
        issued = time.monotonic()
        leased = source.cached()
        assert leased is not None
        vault.reset_stats()
        getattr(vault, fault)()
        load = Load(request).start()
        time.sleep(max(issued + 4.5 - time.monotonic(), 0))  # the mandatory window opens at 5.4 s
        load.stop()
        fetches = vault.stats.attempts
        vault.pass_through()
        report.add(load, fetches=fetches)

        assert load.failed == 0, load.summary()
        assert load.longest() < UNSLOWED, f"a request waited for Vault: {load.summary()}"
        assert fetches >= 1, "the renewal was never tried"
        if fault != "blackhole":  # a black-holed refresh is still waiting for its timeout
            assert_refresh_warned(caplog, source.describe())
        assert fetches * 10 <= load.ok, f"{fetches} requests to Vault for {load.ok} served"
        # Back up: the lease is renewed or replaced, by itself.
        assert recovers(request, lambda: source.cached() is not leased), "never renewed"
    finally:
        vault.pass_through()
        if pooled:
            close_pool(settings_dict, alias)


# -- Vault down, slow or sealed past the lease's end ------------------------------------------


def run_past_expiry(
    lab: VaultLab,
    proxy: FaultProxy,
    vendor: str,
    alias: str,
    fault: Callable[[], None],
    restore: Callable[[], None],
    *,
    pooled: bool = False,
) -> tuple[Load, float, float, int]:
    """A 3 s lease, then ``fault`` for 6 s under load (the lease ends), then
    ``restore`` for 6 s. Returns the load, when the fault began and ended, and
    the requests Vault received meanwhile."""
    source = source_for(lab, proxy, f"{ROLE[vendor]}-short")
    extra: dict[str, Any] = {"CONN_HEALTH_CHECKS": True, "OPTIONS": {"pool": POOL}} if pooled else {}
    settings_dict = settings_for(lab, vendor, source, **extra)
    request = new_connection_request(settings_dict, alias)
    try:
        request()
        proxy.reset_stats()
        fault()
        began = time.monotonic()
        load = Load(request, gap=0.02).start()
        time.sleep(6.0)
        fetches = proxy.stats.attempts
        back = time.monotonic()
        restore()
        time.sleep(6.0)
        load.stop()
    finally:
        restore()
        if pooled:
            close_pool(settings_dict, alias)
    return load, began, back, fetches


def assert_down_then_recovered(
    load: Load, began: float, back: float, *, alias: str, more: str = "", pooled: bool = False
) -> None:
    assert_clear_failures(load, float("-inf"), float("inf"), alias=alias, source_name=SOURCE)
    # While the lease (3 s) is valid, nothing fails.
    assert not [o for o in load.failures() if o.ended < began + 2.0], load.summary(end=began + 2.0)
    # Once it has ended, nothing is usable: requests fail (or wait for Django's pool, up
    # to its timeout, and fail).
    ended = [o for o in load.between() if began + 3.5 < o.ended < back]
    assert ended or pooled, f"no request ended between the lease's end and Vault's return: {load.summary()}"
    assert all(o.error is not None for o in ended), load.summary(began + 3.5, back)
    assert load.failures(began, back), load.summary(began, back)
    for outcome in load.failures():
        assert more in str(outcome.error), str(outcome.error)
    first = load.first_success(after=back)
    assert first is not None and first.ended - back < 5.0, f"no recovery: {load.summary(start=back)}"
    assert not load.failures(start=first.ended), load.summary(start=first.ended)


@pytest.mark.parametrize(
    ("vendor", "fault", "pooled"),
    [
        ("postgresql", "refuse", False),
        ("mysql", "refuse", False),
        ("postgresql", "slow", False),
        pytest.param("postgresql", "refuse", True, marks=needs_pool),
    ],
    ids=["refuse-postgresql", "refuse-mysql", "slow-postgresql", "refuse-pool"],
)
def test_down_past_the_leases_end(
    vault_lab: VaultLab, vault: FaultProxy, report: Report, vendor: str, fault: str, pooled: bool
) -> None:
    """Vault down (port closed) or slow (answers after hvac's timeout) until after the
    lease has ended: requests fail fast, within the retry budget, with an error naming
    alias and source; once Vault answers again they recover by themselves."""
    alias = f"vault_expired_{fault}_{vendor}{'_pool' if pooled else ''}"
    down = vault.refuse if fault == "refuse" else (lambda: vault.delay(VAULT_TIMEOUT + 2))
    load, began, back, fetches = run_past_expiry(
        vault_lab, vault, vendor, alias, down, vault.pass_through, pooled=pooled
    )
    report.add(load, fetches=None if fault == "refuse" else fetches)
    assert_down_then_recovered(load, began, back, alias=alias, pooled=pooled)


@pytest.fixture
def sealed_bao(vault_lab: VaultLab) -> Iterator[OpenBao]:
    binary = bao_binary()
    assert binary is not None  # vault_lab skipped otherwise
    server = OpenBao(binary).start(sealed=True)
    try:
        yield server
    finally:
        server.cleanup()


def test_sealed_past_the_leases_end(
    vault_lab: VaultLab, vault: FaultProxy, sealed_bao: OpenBao, report: Report
) -> None:
    """Vault sealed (a real sealed OpenBao answers instead) until after the lease has
    ended: fast failures that say Vault is sealed, and recovery once it is unsealed."""
    alias = "vault_sealed"
    load, began, back, fetches = run_past_expiry(
        vault_lab,
        vault,
        "postgresql",
        alias,
        lambda: vault.set_upstream(sealed_bao.port),
        lambda: vault.set_upstream(vault_lab.bao.port),
    )
    report.add(load, fetches=fetches)
    assert_down_then_recovered(load, began, back, alias=alias, more="sealed")


# -- a lease revoked early --------------------------------------------------------------------


@pytest.mark.parametrize("pooled", [False, pytest.param(True, marks=needs_pool)], ids=["new", "pool"])
def test_lease_revoked_early(vault_lab: VaultLab, vault: FaultProxy, report: Report, pooled: bool) -> None:
    """An operator revokes the lease in use (``bao lease revoke``; the revocation
    statements end its sessions): at most the requests in flight fail, the next ones
    succeed with a new lease."""
    source = source_for(vault_lab, vault, "pg-long")
    alias = f"vault_revoked_{'pool' if pooled else 'new'}"
    extra: dict[str, Any] = {"CONN_HEALTH_CHECKS": True, "OPTIONS": {"pool": POOL}} if pooled else {}
    settings_dict = settings_for(vault_lab, "postgresql", source, **extra)
    request = new_connection_request(settings_dict, alias)
    try:
        request()
        first = source.cached()
        assert first is not None and getattr(first, "lease_id", None)
        load = Load(request).start()
        time.sleep(1.0)
        revoking = time.monotonic()
        vault_lab.bao.client().sys.revoke_lease(first.lease_id)  # type: ignore[attr-defined]
        revoked = time.monotonic()
        time.sleep(3.0)
        load.stop()
    finally:
        if pooled:
            close_pool(settings_dict, alias)
    report.add(load, fetches=None)

    assert not load.hung, load.summary()
    assert not [o for o in load.failures() if o.ended < revoking], load.summary(end=revoking)
    assert len(load.failures()) <= THREADS, f"more than the requests in flight failed: {load.summary()}"
    assert not load.failures(start=revoked), f"after the revocation: {load.summary(start=revoked)}"
    assert load.between(start=revoked), "no request after the revocation"
    now = source.cached()
    assert now is not None and now.username != first.username, "still the revoked lease's user"
    assert first.username not in vault_lab.db_users("postgresql")
