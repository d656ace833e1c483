"""Connections whose credential's sessions end (a Vault lease) are retired before
that moment, by Django's own close_if_unusable_or_obsolete(); others are not."""

from __future__ import annotations

import time

import django
import pytest

from iamdb import Credential
from iamdb.sources import CallableSource
from tests.conftest import DbUser, make_wrapper, new_password


def lease_source(user: DbUser, lifetime: float) -> CallableSource:
    """Credentials whose sessions end ``lifetime`` seconds after each fetch."""

    def fetch() -> Credential:
        now = time.time()
        return Credential(
            password=user.password,
            expires_at=now + lifetime,
            sessions_end_at=now + lifetime,
        )

    return CallableSource(fetch)


def test_persistent_connection_is_retired_before_its_lease_ends(db_user: DbUser) -> None:
    settings_dict = db_user.settings(
        lease_source(db_user, lifetime=3.0), CONN_MAX_AGE=None, OPTIONS={"iamdb": {"retire_margin": 2.0}}
    )
    wrapper = make_wrapper(settings_dict)
    wrapper.ensure_connection()
    first = wrapper.connection
    assert wrapper.close_at is not None
    # Retired at the latest 2 s before the end of a 3-second lease.
    assert wrapper.close_at - time.monotonic() <= 1.0 + 0.1
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is first  # not yet
    time.sleep(max(wrapper.close_at - time.monotonic(), 0) + 0.05)
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is None  # retired, as at the end of a request
    wrapper.ensure_connection()
    assert wrapper.connection is not first
    wrapper.close()


def test_connection_with_a_lasting_credential_keeps_conn_max_age(db_user: DbUser) -> None:
    wrapper = make_wrapper(db_user.settings(lambda: db_user.password, CONN_MAX_AGE=None))
    wrapper.ensure_connection()
    assert wrapper.close_at is None  # persistent, as Django makes it
    wrapper.close()


def test_long_lease_keeps_conn_max_age_when_shorter(db_user: DbUser) -> None:
    wrapper = make_wrapper(db_user.settings(lease_source(db_user, lifetime=3600), CONN_MAX_AGE=60))
    before = time.monotonic()
    wrapper.ensure_connection()
    assert wrapper.close_at is not None and wrapper.close_at - before <= 60.5
    wrapper.close()


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_pool_discards_connections_whose_lease_is_ending(db_user: DbUser) -> None:
    settings_dict = db_user.settings(
        lease_source(db_user, lifetime=3.0),
        OPTIONS={"pool": {"min_size": 1, "max_size": 2, "timeout": 10}, "iamdb": {"retire_margin": 2.0}},
    )
    alias = f"pool_{new_password()[-8:]}"
    wrapper = make_wrapper(settings_dict, alias=alias)
    try:
        wrapper.ensure_connection()
        first_pid = wrapper.connection.info.backend_pid
        wrapper.close()  # back to the pool
        time.sleep(1.2)  # the pooled connection's lease now ends within the margin
        wrapper.ensure_connection()
        assert wrapper.connection.info.backend_pid != first_pid
        wrapper.close()
    finally:
        wrapper.close_pool()
