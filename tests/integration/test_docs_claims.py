"""Claims of the docs (the FAQ, the source pages, the backends page) that no other test
proved, against the real servers: the RDS-IAM emulator, moto, OpenBao, MariaDB."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from iamdb import Target
from iamdb.sources import CallableSource, SecretsManagerSecret
from iamdb.sources.vault import TokenAuth, VaultDatabaseCredentials
from tests.conftest import DbUser, make_wrapper, new_password
from tests.fakeclock import FakeClock, run_now
from tests.integration.vault_fixtures import VaultLab
from tests.leakscan import LeakScan
from tests.services.iam_emulator import IamUser, needs_root
from tests.services.moto import MotoServer
from tests.services.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]

BACKEND_PID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


def backend_pid(wrapper: Any) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute(BACKEND_PID[wrapper.vendor])
        return int(cursor.fetchone()[0])


# -- docs/faq.md: a connection outlives its IAM token ------------------------------------------


@needs_root
@pytest.mark.root
def test_an_open_connection_outlives_its_iam_token(iam_user: IamUser, leaks: LeakScan) -> None:
    """RDS checks a token only at login: a persistent connection keeps working after its
    token has expired, and iamdb does not retire it (Django's CONN_MAX_AGE decides)."""
    from django.db.utils import OperationalError

    from iamdb.sources import RdsIamToken

    source = RdsIamToken(session=iam_user.emulator.session())
    wrapper = make_wrapper(iam_user.settings(source, CONN_MAX_AGE=None))
    first = backend_pid(wrapper)
    token = source.get_password(wrapper.iamdb.target)
    # From now on the server refuses tokens signed more than 1 s ago (whole seconds in
    # X-Amz-Date: the token above is over 1 s old after 2.2 s).
    iam_user.emulator.set_max_age(1)
    time.sleep(2.2)
    with leaks.paused():  # Django's own frames hold a plain password: not iamdb's leak
        stale = make_wrapper(iam_user.settings(token))
        with pytest.raises(OperationalError):
            stale.ensure_connection()  # the token has expired for a new login
    wrapper.close_if_unusable_or_obsolete()  # a request boundary
    assert wrapper.connection is not None and wrapper.close_at is None
    assert backend_pid(wrapper) == first  # the same session, still serving queries
    wrapper.close()


# -- docs/backends.md: the MySQL clone fails loudly -------------------------------------------


@pytest.mark.parametrize("vendor", ["mysql"])
def test_a_failed_mysql_clone_raises_instead_of_leaving_an_empty_database(
    db_user: DbUser, mysql_admin: Any
) -> None:
    target_db = f"{db_user.name}_clone_1"
    mysql_admin.sql(f"CREATE DATABASE `{target_db}`", f"GRANT ALL ON `{target_db}`.* TO '{db_user.name}'@'%'")
    try:
        wrapper = make_wrapper(db_user.settings(CallableSource(lambda: db_user.password)))
        with pytest.raises(subprocess.CalledProcessError) as info:
            wrapper.creation._clone_db(f"{db_user.name}_no_such_database", target_db)
    finally:
        mysql_admin.sql(f"DROP DATABASE IF EXISTS `{target_db}`")
    assert info.value.cmd[0] == "mysqldump"  # the dump failed, and said so
    assert db_user.password not in " ".join(info.value.cmd)


# -- docs/sources/vault.md: the policy printed there is all the source needs -------------------


def documented_vault_policy() -> str:
    page = (ROOT / "docs" / "sources" / "vault.md").read_text()
    blocks = [block for block in re.findall(r"```hcl\n(.*?)```", page, re.DOTALL) if "sys/leases" in block]
    assert len(blocks) == 1, "docs/sources/vault.md prints one policy for the source"
    # The page's roles (shop-web, shop-batch) become the test server's.
    return blocks[0].replace("shop-web", "pg-hour").replace("shop-batch", "pg-static")


def test_the_documented_vault_policy_is_all_the_source_needs(vault_lab: VaultLab) -> None:
    """A token with the page's policy and nothing else (not even Vault's `default`
    policy): every request the source makes is allowed. Fake clock: the token (60 s) is
    in its renewal window, the lease (1 h) is renewed, then revoked."""
    vault_lab.bao.policy("iamdb-documented", documented_vault_policy())
    token = vault_lab.bao.client().auth.token.create(
        policies=["iamdb-documented"], ttl="60s", renewable=True, no_default_policy=True
    )["auth"]["client_token"]
    clock = FakeClock(now=time.monotonic(), wall=time.time())
    source = VaultDatabaseCredentials("pg-hour", url=vault_lab.bao.addr, auth=TokenAuth(token), clock=clock)
    target = Target(alias="vault_documented_policy")
    first = source.fetch(target)  # auth/token/lookup-self, database/creds/pg-hour
    clock.advance(45)
    again = source.fetch(target)  # auth/token/renew-self, sys/leases/renew
    assert again.password == first.password
    assert source.revoke_leases() == 1  # sys/leases/revoke
    stats = source.stats
    assert (stats.leases_issued, stats.leases_renewed, stats.leases_revoked) == (1, 1, 1)
    assert (stats.token_renewals, stats.token_renewal_failures, stats.logins) == (1, 0, 0)
    static = VaultDatabaseCredentials("pg-static", static=True, url=vault_lab.bao.addr, auth=TokenAuth(token))
    assert static.fetch(target).username == "iamdb_vault_static"  # database/static-creds/pg-static


# -- docs/sources/secretsmanager.md: GetSecretValue is the only call ----------------------------


def test_the_secrets_manager_source_calls_only_get_secret_value(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading, re-reading after the ttl, and the AWSPENDING path after a refusal: the IAM
    permission the docs name (secretsmanager:GetSecretValue) covers every call."""
    import botocore.client

    calls: list[str] = []
    real = botocore.client.BaseClient._make_api_call

    def recorded(client: Any, operation: str, params: Any) -> Any:
        if hasattr(client, "_iamdb_session"):
            calls.append(operation)
        return real(client, operation, params)

    admin = moto_server.admin_client()
    name = f"iamdb/test/docs-claims-{new_password()[-8:]}"
    admin.create_secret(Name=name, SecretString="pw-current-value-1234")
    admin.put_secret_value(SecretId=name, SecretString="pw-pending-value-5678", VersionStages=["AWSPENDING"])
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recorded)
    try:
        clock = FakeClock()
        source = SecretsManagerSecret(name, ttl=60, clock=clock)
        source._cache._spawn = run_now
        user = Target(user="app")
        assert source.get_password(user) == "pw-current-value-1234"
        clock.advance(61)
        source.get_password(user)  # past the ttl: read again
        source.invalidate(user, password="pw-current-value-1234")  # the server refused it
        clock.advance(1)
        assert source.get_password(user) == "pw-pending-value-5678"
    finally:
        monkeypatch.undo()
        admin.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    assert len(calls) >= 4 and set(calls) == {"GetSecretValue"}


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_a_secrets_manager_connection_keeps_conn_max_age(moto_server: MotoServer, db_user: DbUser) -> None:
    """docs/backends.md: a rotating password's sessions do not end, so a persistent connection
    made with it is not retired (Django's CONN_MAX_AGE alone decides)."""
    admin = moto_server.admin_client()
    name = f"iamdb/test/docs-claims-{new_password()[-8:]}"
    admin.create_secret(Name=name, SecretString=db_user.password)
    try:
        wrapper = make_wrapper(db_user.settings(SecretsManagerSecret(name), CONN_MAX_AGE=None))
        wrapper.ensure_connection()
        wrapper.close_if_unusable_or_obsolete()
        assert wrapper.connection is not None and wrapper.close_at is None
        wrapper.close()
    finally:
        admin.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


# -- docs/faq.md: only a refused login is retried -------------------------------------------------


@pytest.mark.parametrize("fault", ["no such database", "nothing listening"])
def test_errors_other_than_a_refused_login_fail_at_once(db_user: DbUser, fault: str) -> None:
    """A missing database or a server that is not there: raised at once, with one fetch,
    however large the retry budget."""
    from django.db.utils import OperationalError

    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return db_user.password

    extra: dict[str, Any] = {"OPTIONS": {"iamdb": {"retry_budget": 30}}}
    if fault == "no such database":
        extra["NAME"] = f"{db_user.name}_missing"
    else:
        extra["PORT"] = free_port()
    wrapper = make_wrapper(db_user.settings(password, **extra))
    started = time.monotonic()
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()
    assert calls == [1] and time.monotonic() - started < 3


# -- docs/migrating.md: django-iam-dbauth's OPTIONS must go -------------------------------------


def test_options_left_from_django_iam_dbauth_fail_at_the_first_connection(db_user: DbUser) -> None:
    """``use_iam_auth`` and ``region_name`` are not iamdb's: they reach the driver, which
    refuses them by name (nothing is silently ignored)."""
    options = {"use_iam_auth": True, "region_name": "eu-west-1"}
    wrapper = make_wrapper(db_user.settings(lambda: db_user.password, OPTIONS=options))
    with pytest.raises(Exception) as info:  # each driver raises its own type
        wrapper.ensure_connection()
    assert "use_iam_auth" in str(info.value)
    assert type(info.value).__name__ in {"ProgrammingError", "TypeError"}
