"""CloudSqlIamToken against a Compute Engine metadata server stand-in: google-auth's own
Compute Engine credentials fetch the tokens, and the servers check every one at login (PAM)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import django
import pytest
from django.db.utils import OperationalError

from iamdb import CredentialError
from iamdb.sources import CloudSqlIamToken
from iamdb.sources.cloudsql import SCOPE
from tests.conftest import make_wrapper
from tests.integration.conftest_tokens import run_dbshell, whoami
from tests.load import run_load
from tests.services.gce_metadata import ISSUER, GceMetadata
from tests.services.iam_emulator import IamUser, needs_root
from tests.services.token_checker import mint

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture(autouse=True)
def _sdk_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The SDK's DEBUG records too go through the leak scan (every test here runs under it)."""
    for name in ("google", "google.auth"):
        caplog.set_level(logging.DEBUG, logger=name)


def test_login_with_a_cloud_sql_token_over_verified_tls(gce_user: IamUser, gce_metadata: GceMetadata) -> None:
    asked = len(gce_metadata.scopes_asked)
    source = CloudSqlIamToken()
    wrapper = make_wrapper(gce_user.settings(source))
    try:
        assert whoami(wrapper) == (gce_user.name, True)
    finally:
        wrapper.close()
    # google.auth.default(scopes=[sqlservice.login]): the scope reaches the metadata server.
    assert gce_metadata.scopes_asked[asked:] == [SCOPE]


def test_the_checker_refuses_tokens_it_did_not_issue_or_that_ended(
    gce_user: IamUser, gce_metadata: GceMetadata
) -> None:
    good = mint(gce_metadata.key, ISSUER, gce_metadata.email, int(time.time()) + 60)
    forged = mint("another key", ISSUER, gce_metadata.email, int(time.time()) + 60)
    ended = mint(gce_metadata.key, ISSUER, gce_metadata.email, int(time.time()) - 1)
    wrapper = make_wrapper(gce_user.settings(good))
    assert whoami(wrapper)[0] == gce_user.name
    wrapper.close()
    for token in (forged, ended):
        with pytest.raises(OperationalError):
            make_wrapper(gce_user.settings(token)).ensure_connection()


def test_cloud_sql_threads_see_no_failure_while_tokens_expire_every_few_seconds(
    gce_user: IamUser, gce_metadata: GceMetadata
) -> None:
    gce_metadata.lifetime = 3
    issued = gce_metadata.tokens_issued
    source = CloudSqlIamToken()
    settings_dict = gce_user.settings(source)

    def request() -> None:
        wrapper = make_wrapper(settings_dict)
        try:
            assert whoami(wrapper)[0] == gce_user.name
        finally:
            wrapper.close()

    logins, failures = run_load(request, threads=4, seconds=4)
    assert failures == []
    assert logins > 20
    # Several 3-second tokens were used (google-auth itself calls each one stale at once).
    assert gce_metadata.tokens_issued - issued >= 2
    assert source._cache.fetches <= gce_metadata.tokens_issued - issued


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's PostgreSQL pool is new in 5.1")
@pytest.mark.parametrize("gce_user", ["postgresql"], indirect=True)
def test_cloud_sql_django_pool_opens_new_connections_with_fresh_tokens(
    gce_user: IamUser, gce_metadata: GceMetadata
) -> None:
    gce_metadata.lifetime = 3
    source = CloudSqlIamToken()
    pool_run(gce_user, source, alias=f"gce_pool_{os.getpid()}")
    assert source._cache.fetches >= 2


def pool_run(user: IamUser, source: Any, *, alias: str) -> None:
    options = {
        **user.tls_options(),
        "pool": {"min_size": 0, "max_size": 3, "max_lifetime": 1.0, "timeout": 10},
    }
    settings_dict = user.settings(source, options=options)
    failures: list[BaseException] = []
    stop = time.monotonic() + 4
    first = make_wrapper(settings_dict, alias)
    try:

        def work() -> None:
            wrapper = make_wrapper(settings_dict, alias)
            while time.monotonic() < stop:
                try:
                    assert whoami(wrapper)[0] == user.name
                except BaseException as exc:
                    failures.append(exc)
                finally:
                    wrapper.close()
                time.sleep(0.02)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = first.pool.get_stats()
    finally:
        first.close_pool()
    assert failures == []
    # The pool replaced its connections (max_lifetime) long after the first token ended.
    assert stats["connections_num"] >= 4, stats


def test_cloud_sql_dbshell_gets_the_token_in_its_environment_only(
    gce_user: IamUser, capfd: pytest.CaptureFixture[str]
) -> None:
    source = CloudSqlIamToken()
    wrapper = make_wrapper(gce_user.settings(source))
    out, argv, env = run_dbshell(wrapper, capfd)
    assert gce_user.name in out
    token = source.get_password(wrapper.iamdb.target)
    assert token not in " ".join(argv)
    assert token in (env.get("PGPASSWORD"), env.get("MYSQL_PWD"))
    if gce_user.vendor == "postgresql":
        assert f"{gce_user.name} true" in out


def test_metadata_server_errors_name_the_database_and_the_source(gce_metadata: GceMetadata) -> None:
    from iamdb import Target

    gce_metadata.fail_with = 403
    try:
        source = CloudSqlIamToken()
        with pytest.raises(CredentialError) as info:
            source.get_credentials(Target(alias="orders"))
    finally:
        gce_metadata.fail_with = None
    message = str(info.value)
    assert message.startswith("database 'orders': CloudSqlIamToken() could not get a Cloud SQL IAM token:")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message
    cause = info.value.__cause__
    assert type(cause).__module__.startswith("google.auth")
    assert cause is not None and cause.__traceback__ is None


# The stand-in serves from a thread: Python 3.12+ warns about fork() in a threaded process.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("given", [False, True], ids=["default", "given"])
def test_cloud_sql_a_forked_child_gets_tokens_while_a_parent_thread_held_the_locks(
    gce_metadata: GceMetadata, given: bool
) -> None:
    from google.auth import compute_engine

    from iamdb import Target

    source = CloudSqlIamToken(credentials=compute_engine.Credentials() if given else None)
    target = Target()
    first = source.get_password(target)
    issued = gce_metadata.tokens_issued
    with source._sdk_lock:  # as a parent's thread refreshing at fork time would
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.alarm(10)
            try:
                source.invalidate(target)
                ok = source.get_password(target) != first
            finally:
                os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gce_metadata.tokens_issued == issued + 1
