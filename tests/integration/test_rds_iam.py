"""RdsIamToken against the RDS-IAM emulator: real servers checking real SigV4 tokens over TLS."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

from iamdb.sources import RdsIamToken, _aws
from tests.conftest import make_wrapper
from tests.leakscan import LeakScan
from tests.load import run_load
from tests.services.iam_emulator import IamUser, needs_root

# The fixtures (servers, emulator) live in a plugin module of their own.
pytest_plugins = ["tests.integration.conftest_aws"]

pytestmark = [pytest.mark.root, needs_root]

WHOAMI = {
    "postgresql": "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1), "
    "(SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER')",
}


def whoami(wrapper: Any) -> tuple[str, bool]:
    """The user the server logged in, and whether the session is encrypted."""
    with wrapper.cursor() as cursor:
        cursor.execute(WHOAMI[wrapper.vendor])
        user, tls = cursor.fetchone()
    return user, tls in (True, 1) or (isinstance(tls, str) and bool(tls))


class ScaledClock:
    """A clock running ``factor`` times faster than the real one: a 15-minute token
    lives 900/factor real seconds for the source."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.start_monotonic, self.start_wall = time.monotonic(), time.time()

    def monotonic(self) -> float:
        return self.start_monotonic + (time.monotonic() - self.start_monotonic) * self.factor

    def time(self) -> float:
        return self.start_wall + (time.time() - self.start_wall) * self.factor

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.factor)

    def real_budget(self, seconds: float) -> dict[str, Any]:
        """OPTIONS giving a retry budget of ``seconds`` real seconds (it runs on this clock)."""
        return {"iamdb": {"retry_budget": seconds * self.factor, "max_retry_delay": self.factor}}


def test_login_with_a_token_over_verified_tls(iam_user: IamUser) -> None:
    source = RdsIamToken(session=iam_user.emulator.session())
    wrapper = make_wrapper(iam_user.settings(source))
    assert whoami(wrapper) == (iam_user.name, True)
    wrapper.close()
    # The next connections reuse the token: one signature for all of them.
    for _ in range(3):
        assert whoami(wrapper)[0] == iam_user.name
        wrapper.close()
    assert source._cache.fetches == 1


def test_a_token_signed_with_another_key_is_refused_after_one_retry(iam_user: IamUser) -> None:
    """Every fetch signs a new token: a refused one is retried once, not for the whole
    retry budget, so that a wrong key or IAM policy fails fast."""
    import boto3

    forged = boto3.session.Session(
        aws_access_key_id=iam_user.emulator.access_key,
        aws_secret_access_key="not-the-key",
        region_name="us-east-1",
    )
    source = RdsIamToken(session=forged)
    wrapper = make_wrapper(
        iam_user.settings(source, OPTIONS={**iam_user.tls_options(), "iamdb": {"retry_budget": 30}})
    )
    started = time.monotonic()
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()
    assert source._cache.fetches == 2  # the first token, and one retry with a new one
    assert time.monotonic() - started < 15  # far less than the budget


def test_an_expired_token_is_refused_and_the_source_recovers(iam_user: IamUser, leaks: LeakScan) -> None:
    source = RdsIamToken(session=iam_user.emulator.session())
    settings_dict = iam_user.settings(source)
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper)[0] == iam_user.name
    wrapper.close()
    old_token = source.get_password(wrapper.iamdb.target)
    # X-Amz-Date has whole seconds: a token just signed may look up to 1 s old, so a
    # new one must be accepted at 2 s, and the old one (over 3 s old) refused.
    iam_user.emulator.set_max_age(2)
    time.sleep(3.1)
    # The same token, given as a plain password: the server now refuses it. (Django's own
    # frames hold a plain password: not a leak of iamdb's.)
    with leaks.paused():
        stale = make_wrapper(iam_user.settings(old_token))
        with pytest.raises(OperationalError):
            stale.ensure_connection()
    # The source's cached token is refused too; the backend signs a new one and retries.
    assert whoami(wrapper)[0] == iam_user.name
    wrapper.close()
    assert source.get_password(wrapper.iamdb.target) != old_token


def test_threads_see_no_failure_while_tokens_expire_every_few_seconds(iam_user: IamUser) -> None:
    iam_user.emulator.set_max_age(3)
    clock = ScaledClock(900 / 3)
    source = RdsIamToken(session=iam_user.emulator.session(), clock=clock)
    settings_dict = iam_user.settings(source, options={**iam_user.tls_options(), **clock.real_budget(5)})

    def request() -> None:
        wrapper = make_wrapper(settings_dict)
        try:
            assert whoami(wrapper)[0] == iam_user.name
        finally:
            wrapper.close()

    logins, failures = run_load(request, threads=4, seconds=7)
    assert failures == []
    assert logins > 20
    assert source._cache.fetches >= 2  # the tokens were renewed, and used after the first expired


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's PostgreSQL pool is new in 5.1")
@pytest.mark.parametrize("iam_user", ["postgresql"], indirect=True)
def test_django_pool_opens_new_connections_with_fresh_tokens(iam_user: IamUser) -> None:
    iam_user.emulator.set_max_age(3)
    clock = ScaledClock(900 / 3)
    source = RdsIamToken(session=iam_user.emulator.session(), clock=clock)
    options = {
        **iam_user.tls_options(),
        **clock.real_budget(5),
        "pool": {"min_size": 0, "max_size": 3, "max_lifetime": 1.0, "timeout": 10},
    }
    settings_dict = iam_user.settings(source, options=options)
    alias = f"iam_pool_{iam_user.name}"
    failures: list[BaseException] = []
    stop = time.monotonic() + 7
    first = make_wrapper(settings_dict, alias)
    try:

        def work() -> None:
            wrapper = make_wrapper(settings_dict, alias)
            while time.monotonic() < stop:
                try:
                    assert whoami(wrapper)[0] == iam_user.name
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
    # The pool replaced its connections (max_lifetime) long after the first token expired.
    assert stats["connections_num"] >= 4, stats
    assert source._cache.fetches >= 2, stats


def test_signing_host_for_a_proxy_or_tunnel(iam_user: IamUser) -> None:
    """Connect to 127.0.0.1, sign for the RDS endpoint name; the region comes from that name."""
    endpoint = "orders.c9akciq32.us-east-1.rds.amazonaws.com"
    iam_user.emulator.accept_endpoint(endpoint, 15432)
    session = iam_user.emulator.session()
    session._session.set_config_variable("region", "eu-west-3")  # not the database's region
    source = RdsIamToken(signing_host=endpoint, signing_port=15432, session=session)
    wrapper = make_wrapper(iam_user.settings(source))
    assert whoami(wrapper)[0] == iam_user.name
    wrapper.close()
    # Signing for a name the server does not answer to is refused.
    elsewhere = RdsIamToken(signing_host="other.c9akciq32.us-east-1.rds.amazonaws.com", session=session)
    wrapper = make_wrapper(
        iam_user.settings(elsewhere, OPTIONS={**iam_user.tls_options(), "iamdb": {"retry_budget": 0}})
    )
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()


def test_tls_is_mandatory_for_tokens(iam_user: IamUser) -> None:
    source = RdsIamToken(session=iam_user.emulator.session())
    wrapper = make_wrapper(iam_user.settings(source, options={}), alias="orders")
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    assert "'orders'" in str(info.value) and "RdsIamToken" in str(info.value) and "TLS" in str(info.value)


def test_a_server_certificate_from_another_ca_is_rejected(iam_user: IamUser, other_ca: Any) -> None:
    source = RdsIamToken(session=iam_user.emulator.session())
    wrapper = make_wrapper(iam_user.settings(source, options=iam_user.tls_options(str(other_ca.ca))))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert source.get_password(wrapper.iamdb.target) not in str(info.value)


def test_tokens_never_reach_the_logs(
    iam_user: IamUser, caplog: pytest.LogCaptureFixture, leaks: LeakScan
) -> None:
    caplog.set_level(logging.DEBUG)
    source = RdsIamToken(session=iam_user.emulator.session())
    wrapper = make_wrapper(iam_user.settings(source))
    assert whoami(wrapper)[0] == iam_user.name
    wrapper.close()
    token = source.get_password(wrapper.iamdb.target)
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "botocore" in " ".join(r.name for r in caplog.records)  # botocore did log at DEBUG
    assert signature not in logged
    # Control: the same SDK call made outside iamdb logs the signature.
    caplog.clear()
    client = _aws.client("rds", "us-east-1", source.aws_session())
    with leaks.paused():
        leaked = client.generate_db_auth_token(DBHostname="127.0.0.1", Port=1, DBUsername="x")
        assert leaked.rsplit("X-Amz-Signature=", 1)[1] in "\n".join(r.getMessage() for r in caplog.records)


def run_dbshell(wrapper: Any, sql: str, capfd: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    """Run dbshell with the real client; return its output and the argv it was given."""
    seen: list[list[str]] = []
    real_run = subprocess.run

    def spy(args: Any, *a: Any, **kw: Any) -> Any:
        seen.append(list(args))
        return real_run(args, *a, **kw)

    params = ["-c", sql] if wrapper.vendor == "postgresql" else ["-N", "-B", "-e", sql]
    subprocess.run = spy
    try:
        capfd.readouterr()
        wrapper.client.runshell(params)
    finally:
        subprocess.run = real_run
    return capfd.readouterr().out, seen[0]


def test_dbshell_logs_in_with_a_token_over_tls(iam_user: IamUser, capfd: pytest.CaptureFixture[str]) -> None:
    source = RdsIamToken(session=iam_user.emulator.session())
    settings_dict = iam_user.settings(source)
    if iam_user.vendor == "mysql":
        # Django's mysql client maps OPTIONS["ssl"] to --ssl-*; the server requires TLS of IAM users.
        sql = (
            "SELECT CURRENT_USER(), VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
            "WHERE VARIABLE_NAME = 'SSL_CIPHER'"
        )
    else:
        sql = "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    wrapper = make_wrapper(settings_dict)
    out, argv = run_dbshell(wrapper, sql, capfd)
    assert iam_user.name in out
    if iam_user.vendor == "postgresql":
        assert f"{iam_user.name} true" in out
    else:
        assert out.split()[-1]  # a cipher name: the session is encrypted
    token = source.get_password(wrapper.iamdb.target)
    assert token not in " ".join(argv)
    assert settings_dict["PASSWORD"] is source
