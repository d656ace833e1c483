"""AzureEntraToken against a managed-identity endpoint stand-in (App Service protocol):
azure-identity's own DefaultAzureCredential fetches the tokens, and the servers check every
one at login (PAM)."""

from __future__ import annotations

import logging
import os
import signal
import time

import django
import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from iamdb import CredentialError, Target
from iamdb.sources import AzureEntraToken
from iamdb.sources.azure import SCOPE
from tests.conftest import make_wrapper
from tests.integration.conftest_tokens import run_dbshell, whoami
from tests.integration.test_cloudsql import pool_run
from tests.load import run_load
from tests.services.azure_identity import AzureIdentity
from tests.services.iam_emulator import IamUser, needs_root

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture(autouse=True)
def _sdk_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The SDK's DEBUG records too go through the leak scan (every test here runs under it)."""
    for name in ("azure", "msal"):
        caplog.set_level(logging.DEBUG, logger=name)


def test_login_with_an_entra_token_over_verified_tls(
    azure_user: IamUser, azure_identity: AzureIdentity
) -> None:
    asked = azure_identity.tokens_issued
    source = AzureEntraToken()
    wrapper = make_wrapper(azure_user.settings(source))
    try:
        assert whoami(wrapper) == (azure_user.name, True)
    finally:
        wrapper.close()
    # The scope ".default" of ossrdbms-aad, asked for as the managed-identity resource.
    assert azure_identity.resources_asked[asked:] == [SCOPE.removesuffix("/.default")]


def test_azure_threads_see_no_failure_while_tokens_expire_every_few_seconds(
    azure_user: IamUser, azure_identity: AzureIdentity
) -> None:
    azure_identity.lifetime = 3
    issued = azure_identity.tokens_issued
    source = AzureEntraToken()
    settings_dict = azure_user.settings(source)

    def request() -> None:
        wrapper = make_wrapper(settings_dict)
        try:
            assert whoami(wrapper)[0] == azure_user.name
        finally:
            wrapper.close()

    logins, failures = run_load(request, threads=4, seconds=4)
    assert failures == []
    assert logins > 20
    assert azure_identity.tokens_issued - issued >= 2
    assert source._cache.fetches <= azure_identity.tokens_issued - issued


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's PostgreSQL pool is new in 5.1")
@pytest.mark.parametrize("azure_user", ["postgresql"], indirect=True)
def test_azure_django_pool_opens_new_connections_with_fresh_tokens(
    azure_user: IamUser, azure_identity: AzureIdentity
) -> None:
    azure_identity.lifetime = 3
    source = AzureEntraToken()
    pool_run(azure_user, source, alias=f"azure_pool_{os.getpid()}")
    assert source._cache.fetches >= 2


def test_azure_dbshell_gets_the_token_in_its_environment_only(
    azure_user: IamUser, capfd: pytest.CaptureFixture[str]
) -> None:
    source = AzureEntraToken()
    wrapper = make_wrapper(azure_user.settings(source))
    out, argv, env = run_dbshell(wrapper, capfd)
    assert azure_user.name in out
    token = source.get_password(wrapper.iamdb.target)
    assert token not in " ".join(argv)
    assert token in (env.get("PGPASSWORD"), env.get("MYSQL_PWD"))
    if azure_user.vendor == "postgresql":
        assert f"{azure_user.name} true" in out


def test_azure_identity_returns_its_cached_token_until_5_minutes_before_the_end(
    azure_identity: AzureIdentity,
) -> None:
    # A token that lives 302 s: for 2 s, more than 5 minutes of it are left.
    azure_identity.lifetime = 302
    issued = azure_identity.tokens_issued
    credential = DefaultAzureCredential()
    first = credential.get_token(SCOPE)
    assert credential.get_token(SCOPE).token == first.token
    # The source's own refresh gets the token it already holds: no error, no new request.
    source = AzureEntraToken(credential=credential)
    held = source.fetch(Target())
    assert source.fetch(Target()).password == held.password == first.token
    assert azure_identity.tokens_issued == issued + 1
    time.sleep(max(first.expires_on - 300 - time.time(), 0) + 0.2)
    assert source.fetch(Target()).password != first.token
    assert azure_identity.tokens_issued == issued + 2


def test_azure_endpoint_errors_name_the_database_and_the_source(azure_identity: AzureIdentity) -> None:
    azure_identity.fail_with = 400
    try:
        source = AzureEntraToken(credential=ManagedIdentityCredential())
        with pytest.raises(CredentialError) as info:
            source.get_credentials(Target(alias="orders"))
    finally:
        azure_identity.fail_with = None
    message = str(info.value)
    assert message.startswith(
        "database 'orders': AzureEntraToken(credential=ManagedIdentityCredential) "
        "could not get an Entra ID token:"
    )
    assert "pass credential=" in message
    cause = info.value.__cause__
    assert type(cause).__module__.startswith("azure.")
    assert cause is not None and cause.__traceback__ is None


# The stand-in serves from a thread: Python 3.12+ warns about fork() in a threaded process.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("given", [False, True], ids=["default", "given"])
def test_azure_a_forked_child_gets_tokens_while_a_parent_thread_held_the_locks(
    azure_identity: AzureIdentity, given: bool
) -> None:
    azure_identity.lifetime = 3
    source = AzureEntraToken(credential=ManagedIdentityCredential() if given else None)
    target = Target()
    first = source.get_password(target)
    time.sleep(0.01)
    issued = azure_identity.tokens_issued
    with source._sdk_lock:  # as a parent's thread fetching at fork time would
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
    assert azure_identity.tokens_issued == issued + 1
