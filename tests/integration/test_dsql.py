"""AuroraDsqlToken against the emulated cluster: PostgreSQL checking real DSQL tokens at login.

The connections name the cluster endpoint in HOST (TLS verifies that name) and reach the
server through libpq's ``hostaddr``; the SigV4 checker accepts only tokens signed for that
name, with the right action for the role, within X-Amz-Expires.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

from iamdb.sources import AuroraDsqlToken
from tests.conftest import make_wrapper
from tests.integration.conftest_dsql import CLUSTER, OTHER_CLUSTER, PRIVATELINK, DsqlRole
from tests.leakscan import LeakScan
from tests.load import run_load
from tests.services.iam_emulator import needs_root

pytestmark = [pytest.mark.root, needs_root]

WHOAMI = "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"


def whoami(wrapper: Any) -> tuple[str, bool]:
    with wrapper.cursor() as cursor:
        cursor.execute(WHOAMI)
        user, tls = cursor.fetchone()
    return str(user), tls is True


def elsewhere(role: DsqlRole) -> Any:
    """The emulator's keys in a session whose own region is not the cluster's."""
    session = role.emulator.session()
    session._session.set_config_variable("region", "eu-west-3")
    return session


def no_retry(role: DsqlRole) -> dict[str, Any]:
    return {**role.tls_options(), "iamdb": {"retry_budget": 0}}


def test_admin_and_a_role_log_in_with_tokens_over_verified_tls(dsql_role: DsqlRole) -> None:
    """The region comes from the cluster name (the session's own is eu-west-3); admin gets
    DbConnectAdmin tokens, a role DbConnect tokens, both reused by later connections."""
    source = AuroraDsqlToken(session=elsewhere(dsql_role))
    wrapper = make_wrapper(dsql_role.settings(source))
    assert whoami(wrapper) == (dsql_role.name, True)
    wrapper.close()
    for _ in range(2):
        assert whoami(wrapper)[0] == dsql_role.name
        wrapper.close()
    assert source._cache.fetches == 1
    token = source.get_password(wrapper.iamdb.target)
    action = "DbConnectAdmin" if dsql_role.name == "admin" else "DbConnect"
    assert token.startswith(f"{CLUSTER}/?Action={action}&") and "X-Amz-Expires=900&" in token


@pytest.mark.parametrize("dsql_role", ["role"], indirect=True)
def test_the_checker_refuses_an_admin_token_for_another_role(dsql_role: DsqlRole, leaks: LeakScan) -> None:
    """DbConnectAdmin is for admin only: the emulator refuses it for any other role."""
    client = dsql_role.emulator.session().client("dsql", region_name="us-east-1")
    admin_token = client.generate_db_connect_admin_auth_token(Hostname=CLUSTER, Region="us-east-1")
    token = client.generate_db_connect_auth_token(Hostname=CLUSTER, Region="us-east-1")
    with leaks.paused():  # plain passwords given to stock Django's paths
        wrapper = make_wrapper(dsql_role.settings(admin_token))
        with pytest.raises(OperationalError):
            wrapper.ensure_connection()
        wrapper = make_wrapper(dsql_role.settings(token))  # control: the same role, DbConnect
        assert whoami(wrapper)[0] == dsql_role.name
        wrapper.close()


@pytest.mark.parametrize("dsql_role", ["role"], indirect=True)
def test_a_token_signed_for_another_name_is_refused_and_signing_host_fixes_it(dsql_role: DsqlRole) -> None:
    """Through a PrivateLink name (which TLS accepts), the token must still be signed for the
    cluster name; signing for any other name is refused."""
    session = dsql_role.emulator.session()  # us-east-1: only the signed name differs
    unsigned = AuroraDsqlToken(session=session)
    wrapper = make_wrapper(dsql_role.settings(unsigned, host=PRIVATELINK, options=no_retry(dsql_role)))
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()
    assert unsigned.get_password(wrapper.iamdb.target).startswith(f"{PRIVATELINK}/?")

    # Refused, and retried once with a newly signed token (token_per_fetch), not for the budget.
    other = AuroraDsqlToken(session=session, signing_host=OTHER_CLUSTER)
    options = {**dsql_role.tls_options(), "iamdb": {"retry_budget": 30}}
    wrapper = make_wrapper(dsql_role.settings(other, options=options))
    started = time.monotonic()
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()
    assert other._cache.fetches == 2
    assert time.monotonic() - started < 15

    signed = AuroraDsqlToken(session=session, signing_host=CLUSTER)
    wrapper = make_wrapper(dsql_role.settings(signed, host=PRIVATELINK))
    assert whoami(wrapper) == (dsql_role.name, True)
    wrapper.close()


@pytest.mark.parametrize("dsql_role", ["role"], indirect=True)
def test_threads_see_no_failure_while_dsql_tokens_expire_every_few_seconds(dsql_role: DsqlRole) -> None:
    """expires_in=3: the cluster refuses each token 3 s after the second it was signed in
    (X-Amz-Expires); a new connection per request, 4 threads, not one failure."""
    source = AuroraDsqlToken(expires_in=3, session=dsql_role.emulator.session())
    settings_dict = dsql_role.settings(source)

    def request() -> None:
        wrapper = make_wrapper(settings_dict)
        try:
            assert whoami(wrapper)[0] == dsql_role.name
        finally:
            wrapper.close()

    logins, failures = run_load(request, threads=4, seconds=6)
    assert failures == []
    assert logins > 20
    assert source._cache.fetches >= 3  # renewed at least twice, each before the cluster refused it


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's PostgreSQL pool is new in 5.1")
@pytest.mark.parametrize("dsql_role", ["admin"], indirect=True)
def test_django_pool_opens_new_connections_with_fresh_dsql_tokens(dsql_role: DsqlRole) -> None:
    source = AuroraDsqlToken(expires_in=3, session=dsql_role.emulator.session())
    options = {
        **dsql_role.tls_options(),
        "pool": {"min_size": 0, "max_size": 3, "max_lifetime": 1.0, "timeout": 10},
    }
    settings_dict = dsql_role.settings(source, options=options)
    alias = "dsql_pool"
    failures: list[BaseException] = []
    stop = time.monotonic() + 5
    first = make_wrapper(settings_dict, alias)
    try:

        def work() -> None:
            wrapper = make_wrapper(settings_dict, alias)
            while time.monotonic() < stop:
                try:
                    assert whoami(wrapper)[0] == dsql_role.name
                except BaseException as exc:
                    failures.append(exc)
                finally:
                    wrapper.close()
                time.sleep(0.05)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = first.pool.get_stats()
    finally:
        first.close_pool()
    assert failures == []
    assert stats["connections_num"] >= 4, stats
    assert source._cache.fetches >= 2, stats


def test_dbshell_reaches_hostaddr_with_the_token_in_the_environment_only(
    dsql_role: DsqlRole, capfd: pytest.CaptureFixture[str]
) -> None:
    """psql gets HOST (the cluster name, verified by TLS) and OPTIONS' hostaddr as PGHOSTADDR."""
    source = AuroraDsqlToken(session=dsql_role.emulator.session())
    wrapper = make_wrapper(dsql_role.settings(source))
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def spy(args: Any, *a: Any, **kw: Any) -> Any:
        calls.append((list(args), dict(kw.get("env") or {})))
        return real_run(args, *a, **kw)

    sql = "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    subprocess.run = spy
    try:
        capfd.readouterr()
        wrapper.client.runshell(["-c", sql])
    finally:
        subprocess.run = real_run
    out = capfd.readouterr().out
    assert f"{dsql_role.name} true" in out
    (argv, env), *_ = calls
    token = source.get_password(wrapper.iamdb.target)
    assert token not in " ".join(argv) and CLUSTER in argv
    assert env["PGPASSWORD"] == token and env["PGHOSTADDR"] == "127.0.0.1"


@pytest.mark.parametrize("dsql_role", ["admin"], indirect=True)
def test_test_database_is_the_clusters_one_database_with_keepdb(dsql_role: DsqlRole) -> None:
    """DSQL has one database (postgres) and no CREATE DATABASE: with TEST NAME 'postgres' and
    keepdb, Django's test setup uses it and creates no database."""
    source = AuroraDsqlToken(session=dsql_role.emulator.session())
    wrapper = make_wrapper(dsql_role.settings(source, TEST={"NAME": "postgres"}), alias="dsql_tests")
    before = dsql_role.server.sql("SELECT count(*) FROM pg_database")
    assert wrapper.creation._create_test_db(verbosity=0, autoclobber=True, keepdb=True) == "postgres"
    assert dsql_role.server.sql("SELECT count(*) FROM pg_database") == before
    assert whoami(wrapper)[0] == "admin"
    wrapper.close()


@pytest.mark.parametrize("dsql_role", ["role"], indirect=True)
def test_dsql_settings_without_tls_name_the_alias_and_the_source(dsql_role: DsqlRole) -> None:
    source = AuroraDsqlToken(session=dsql_role.emulator.session())
    options = {"sslrootcert": str(dsql_role.ca.ca), "hostaddr": "127.0.0.1"}  # no sslmode
    wrapper = make_wrapper(dsql_role.settings(source, options=options), alias="orders")
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    assert (
        "'orders'" in str(info.value) and "AuroraDsqlToken()" in str(info.value) and "TLS" in str(info.value)
    )
