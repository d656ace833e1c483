"""VaultDatabaseCredentials against a real OpenBao server and real databases.

Leases last a few seconds (see ``vault_fixtures``), so renewal, the max TTL,
revocation and token expiry all happen within a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import django
import hvac
import pytest
import requests
from django.db.utils import OperationalError

from iamdb import CredentialError, Target
from iamdb.sources.vault import AppRoleAuth, TokenAuth, VaultCredential, VaultDatabaseCredentials
from tests.conftest import make_wrapper
from tests.fakeclock import FakeClock
from tests.integration.vault_fixtures import (
    HOUR_TTL,
    LONG_TTL,
    PG_OWNER,
    SHORT_MAX_TTL,
    WHO,
    VaultLab,
    run_load,
)
from tests.services.faultproxy import FaultProxy

ROLE = {"postgresql": "pg", "mysql": "my"}
# Connections are retired this long before their lease ends (leases here last seconds).
FAST = {"iamdb": {"retire_margin": 1.0}}


def source_for(lab: VaultLab, role: str, **kwargs: Any) -> VaultDatabaseCredentials:
    kwargs.setdefault("auth", TokenAuth(lab.bao.root_token))
    return VaultDatabaseCredentials(role, url=lab.bao.addr, **kwargs)


def who(wrapper: Any) -> str:
    with wrapper.cursor() as cursor:
        cursor.execute(WHO[wrapper.vendor])
        return str(cursor.fetchone()[0])


def test_dynamic_credentials_connect_as_a_vault_user(vault_lab: VaultLab, vendor: str) -> None:
    source = source_for(vault_lab, f"{ROLE[vendor]}-long")
    wrapper = make_wrapper(vault_lab.settings(vendor, source))
    user = who(wrapper)
    credential = source.cached(wrapper.iamdb.target)
    assert credential is not None and credential.username == user
    assert user.startswith("v-") and user in vault_lab.db_users(vendor)
    assert credential.sessions_end_at == credential.expires_at
    assert credential.expires_at - time.time() <= LONG_TTL
    assert credential.password not in repr(credential) + repr(source)
    wrapper.close()
    # Opt-in clean-up: the lease is revoked and the user dropped.
    assert source.revoke_leases() == 1
    assert user not in vault_lab.db_users(vendor)


def test_revocation_ends_open_sessions(vault_lab: VaultLab, vendor: str) -> None:
    """Why connections must be retired before their lease ends: a connection made
    with a lease's password (stock Django, a plain string) dies when it is revoked."""
    response = vault_lab.bao.client().secrets.database.generate_credentials(name=f"{ROLE[vendor]}-long")
    settings_dict = vault_lab.settings(
        vendor, response["data"]["password"], USER=response["data"]["username"]
    )
    wrapper = make_wrapper(settings_dict)
    assert who(wrapper) == response["data"]["username"]
    vault_lab.bao.client().sys.revoke_lease(response["lease_id"])
    with pytest.raises(OperationalError):
        who(wrapper)
    wrapper.close()


@pytest.mark.slow
def test_persistent_connections_under_load_across_lease_lifetimes(vault_lab: VaultLab, vendor: str) -> None:
    role = f"{ROLE[vendor]}-short"
    source = source_for(vault_lab, role)
    settings_dict = vault_lab.settings(vendor, source, CONN_MAX_AGE=None, OPTIONS=FAST)
    live: list[int] = []
    seconds = 2.3 * SHORT_MAX_TTL
    result = run_load(
        settings_dict,
        alias=f"vault_load_{vendor}",
        threads=4,
        seconds=seconds,
        sample=lambda: live.append(len(vault_lab.live_leases(role))),
    )
    stats = source.stats
    print(
        f"\n{vendor}: {result.ok} requests ok, {len(result.failures)} failed, "
        f"{len(result.connections)} connections, {stats.leases_issued} leases issued, "
        f"{stats.leases_renewed} renewals, live leases sampled max {max(live)}"
    )
    assert result.failures == []
    assert result.ok > 200
    # Several lease lifetimes (each ended by the max TTL), one lease at a time:
    # new leases scale with time, not with threads or connections.
    assert 2 <= stats.leases_issued <= seconds / (SHORT_MAX_TTL - 3) + 1
    assert stats.leases_renewed >= stats.leases_issued
    assert len(result.users) == stats.leases_issued
    assert max(live) <= 2
    # Connections persist between requests (retired only before a lease ends).
    assert len(result.connections) < result.ok / 5
    # Expired leases were revoked by Vault: their users are gone.
    time.sleep(0.5)
    assert len(result.users & vault_lab.db_users(vendor)) <= 2


@pytest.mark.slow
@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's PostgreSQL pool needs Django 5.1+")
def test_postgresql_pool_under_load_across_lease_lifetimes(vault_lab: VaultLab) -> None:
    role = "pg-short"
    source = source_for(vault_lab, role)
    pool = {"min_size": 2, "max_size": 4, "timeout": 10}
    settings_dict = vault_lab.settings("postgresql", source, CONN_MAX_AGE=0, OPTIONS={"pool": pool, **FAST})
    alias = "vault_pool"
    warm = make_wrapper(settings_dict, alias)
    assert who(warm).startswith("v-")
    warm.close()
    try:
        seconds = 2 * SHORT_MAX_TTL
        result = run_load(settings_dict, alias=alias, threads=4, seconds=seconds)
    finally:
        warm.close_pool()
    stats = source.stats
    print(
        f"\npool: {result.ok} requests ok, {len(result.failures)} failed, "
        f"{len(result.connections)} connections, {stats.leases_issued} leases, "
        f"{stats.leases_renewed} renewals"
    )
    assert result.failures == []
    assert result.ok > 200
    assert 2 <= stats.leases_issued <= seconds / (SHORT_MAX_TTL - 3) + 2
    assert len(result.users) <= stats.leases_issued


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's PostgreSQL pool needs Django 5.1+")
def test_pool_with_assume_role_and_leases_shorter_than_the_retire_margin(vault_lab: VaultLab) -> None:
    """Two fixes found here: Django quoted assume_role through the pool itself (the
    pool never opened a connection), and a pool whose every new connection was
    already due for retirement handed out a closed one."""
    source = source_for(vault_lab, "pg-short")
    pool = {"min_size": 1, "max_size": 2, "timeout": 10}
    settings_dict = vault_lab.settings("postgresql", source, CONN_MAX_AGE=0, OPTIONS={"pool": pool})
    wrapper = make_wrapper(settings_dict, "vault_pool_short")
    try:
        for _ in range(3):
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT current_user, session_user")
                current, session = cursor.fetchone()
            wrapper.close()
            assert current == PG_OWNER and session.startswith("v-")
    finally:
        wrapper.close_pool()


@pytest.mark.slow
def test_static_role_rotating_under_load(vault_lab: VaultLab) -> None:
    source = source_for(vault_lab, "pg-static", static=True)
    settings_dict = vault_lab.settings("postgresql", source, CONN_MAX_AGE=0)
    passwords: set[str] = set()
    target = make_wrapper(settings_dict, "vault_static").iamdb.target

    def sample() -> None:
        credential = source.cached(target)
        if credential is not None:
            passwords.add(credential.password)

    result = run_load(settings_dict, alias="vault_static", threads=3, seconds=13, pause=0.02, sample=sample)
    print(
        f"\nstatic: {result.ok} requests ok, {len(result.failures)} failed, "
        f"{len(passwords)} passwords seen, {source.stats.static_reads} reads"
    )
    assert result.failures == []
    assert result.users == {"iamdb_vault_static"}
    assert len(passwords) >= 2  # Vault rotated the password (every 5 s) while requests ran
    assert source.stats.static_reads <= 40  # read when it rotates, not per connection


@pytest.mark.slow
def test_vault_stopped_then_restarted(vault_lab: VaultLab) -> None:
    source = source_for(vault_lab, "pg-long")
    settings_dict = vault_lab.settings("postgresql", source, CONN_MAX_AGE=0)
    wrapper = make_wrapper(settings_dict, "vault_outage")
    first_user = who(wrapper)
    wrapper.close()
    credential = source.cached(wrapper.iamdb.target)
    assert credential is not None and credential.expires_at is not None
    vault_lab.bao.stop()
    try:
        # While the credential is valid, new connections keep working.
        ok = 0
        while time.time() < credential.expires_at - 3 and ok < 500:
            assert who(wrapper) == first_user
            wrapper.close()
            ok += 1
            time.sleep(0.02)
        assert ok > 10
        # Once it has ended, a clear error, quickly, naming alias, role and address.
        error = None
        for _ in range(200):
            try:
                who(wrapper)
                wrapper.close()
            except OperationalError as exc:
                error = exc
                break
            time.sleep(0.05)
        assert isinstance(error, CredentialError)
        message = str(error)
        assert "'vault_outage'" in message and "'pg-long'" in message and vault_lab.bao.addr in message
        assert "cannot connect to Vault" in message
        assert vault_lab.bao.root_token not in message
    finally:
        vault_lab.bao.restart()
        vault_lab.configure()
    # Restarted (empty, then configured again): the next connections recover.
    recovered = None
    for _ in range(100):
        try:
            recovered = who(wrapper)
            break
        except OperationalError:
            time.sleep(0.1)
    wrapper.close()
    assert recovered is not None and recovered != first_user
    vault_lab.drop_leftover_users()  # the forgotten leases' users


@pytest.mark.slow
def test_approle_token_expiring_is_renewed_then_replaced(vault_lab: VaultLab) -> None:
    client = vault_lab.bao.client()
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.auth.approle.create_or_update_approle(
        "iamdb-app", token_policies=["iamdb-app"], token_ttl="3s", token_max_ttl="7s"
    )
    role_id = client.auth.approle.read_role_id("iamdb-app")["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id("iamdb-app")["data"]["secret_id"]
    source = source_for(vault_lab, "pg-long", auth=AppRoleAuth(role_id, secret_id))
    settings_dict = vault_lab.settings("postgresql", source, CONN_MAX_AGE=None, OPTIONS=FAST)
    result = run_load(settings_dict, alias="vault_approle", threads=2, seconds=16)
    stats = source.stats
    print(
        f"\napprole: {result.ok} requests ok, {len(result.failures)} failed, {stats.logins} logins, "
        f"{stats.token_renewals} token renewals, {stats.leases_issued} leases"
    )
    assert result.failures == []
    assert stats.logins >= 2 and stats.token_renewals >= 1
    # Leases die with their token, so each token got its own lease...
    assert stats.leases_issued == stats.logins
    # ...and the credential never outlives the token (3 s), though the lease is 6 s.
    credential = source.cached(make_wrapper(settings_dict, "vault_approle").iamdb.target)
    assert credential is not None and credential.issued_at is not None and credential.expires_at is not None
    assert credential.expires_at - credential.issued_at <= 3.5
    # The tokens that ended took their leases' users with them.
    time.sleep(0.5)
    assert len(result.users & vault_lab.db_users("postgresql")) <= 2


def test_token_that_cannot_be_renewed_bounds_the_credential(vault_lab: VaultLab) -> None:
    token = vault_lab.bao.client().auth.token.create(policies=["iamdb-app"], ttl="4s", renewable=False)
    source = source_for(vault_lab, "pg-long", auth=TokenAuth(token["auth"]["client_token"]))
    wrapper = make_wrapper(vault_lab.settings("postgresql", source), "vault_token")
    assert who(wrapper).startswith("v-")
    wrapper.close()
    credential = source.cached(wrapper.iamdb.target)
    assert credential is not None and credential.expires_at is not None and credential.issued_at is not None
    assert credential.expires_at - credential.issued_at <= 4  # the token's TTL, not the lease's 6 s
    time.sleep(max(credential.expires_at - time.time(), 0) + 0.2)
    with pytest.raises(CredentialError) as info:
        who(wrapper)
    message = str(info.value)
    assert "'vault_token'" in message and "'pg-long'" in message
    assert token["auth"]["client_token"] not in message


@pytest.mark.parametrize(
    ("role", "auth", "expected"),
    [
        ("no-such-role", None, "unknown role"),
        ("pg-long", "unprivileged", "permission denied"),
    ],
)
def test_vault_errors_name_alias_role_and_address(
    vault_lab: VaultLab, role: str, auth: str | None, expected: str
) -> None:
    token = None
    if auth == "unprivileged":
        token = vault_lab.bao.client().auth.token.create(policies=["default"], ttl="60s")["auth"][
            "client_token"
        ]
    source = source_for(vault_lab, role, **({"auth": TokenAuth(token)} if token else {}))
    wrapper = make_wrapper(vault_lab.settings("postgresql", source), "reports")
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert isinstance(info.value, CredentialError)
    assert expected in message
    assert "'reports'" in message and repr(role) in message and vault_lab.bao.addr in message
    for secret in (vault_lab.bao.root_token, token):
        assert not secret or secret not in message
    cause = info.value.__cause__
    assert isinstance(cause, hvac.exceptions.VaultError) and cause.__traceback__ is None


def test_unreachable_vault_fails_fast_with_a_clear_error(vault_lab: VaultLab) -> None:
    from tests.services.postgres import free_port

    addr = f"http://127.0.0.1:{free_port()}"
    source = VaultDatabaseCredentials("pg-long", url=addr, auth=TokenAuth("s.not-a-real-token"), timeout=2)
    wrapper = make_wrapper(vault_lab.settings("postgresql", source), "billing")
    with pytest.raises(CredentialError) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert "'billing'" in message and "'pg-long'" in message and addr in message
    assert "cannot connect to Vault" in message and "not-a-real-token" not in message
    # The cause is requests' own error, without the frames whose locals hold the token.
    cause = info.value.__cause__
    assert isinstance(cause, requests.exceptions.ConnectionError) and cause.__traceback__ is None


def test_client_from_the_environment(
    vault_lab: VaultLab, vendor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", vault_lab.bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", vault_lab.bao.root_token)
    source = VaultDatabaseCredentials(f"{ROLE[vendor]}-long")
    assert vault_lab.bao.addr in repr(source) and vault_lab.bao.root_token not in repr(source)
    wrapper = make_wrapper(vault_lab.settings(vendor, source))
    assert who(wrapper).startswith("v-")
    wrapper.close()
    source.revoke_leases()


DBSHELL_QUERY = {
    "postgresql": ["-X", "-A", "-t", "-c", "SELECT session_user"],
    "mysql": ["-N", "-B", "-e", "SELECT CURRENT_USER()"],
}


def test_dbshell_logs_in_as_the_vault_user(
    vault_lab: VaultLab, vendor: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    source = source_for(vault_lab, f"{ROLE[vendor]}-long")
    wrapper = make_wrapper(vault_lab.settings(vendor, source), "vault_shell")
    argv: list[list[str]] = []
    real_run = subprocess.run

    def run(args: list[str], **kwargs: Any) -> Any:
        argv.append(list(args))
        return real_run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    wrapper.client.runshell(DBSHELL_QUERY[vendor])
    credential = source.cached(wrapper.iamdb.target)
    assert credential is not None and credential.username
    out = capfd.readouterr().out
    assert credential.username in out  # the real psql/mysql client logged in as the lease's user
    assert argv and all(credential.password not in arg for arg in argv[0])
    source.revoke_leases()


PROJECT_SETTINGS = """
import json, os
from iamdb.sources.vault import VaultDatabaseCredentials

SECRET_KEY = "not-secret"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "notes"]
DATABASES = {"default": {
    **json.loads(os.environ["IAMDB_TEST_DATABASE"]),
    # Address and token from VAULT_ADDR and VAULT_TOKEN, as the Vault CLI reads them.
    "PASSWORD": VaultDatabaseCredentials(os.environ["IAMDB_TEST_VAULT_ROLE"], revoke_at_exit=True),
}}
"""
PROJECT_MODELS = """
from django.db import models

class Note(models.Model):
    text = models.CharField(max_length=100)
"""
PROJECT_TESTS = """
from django.db import connection
from django.test import TestCase

from notes.models import Note

SESSION_USER = {"postgresql": "SELECT session_user", "mysql": "SELECT CURRENT_USER()"}


class NoteTests(TestCase):
    def test_save_and_count(self):
        Note.objects.create(text="from a Vault lease")
        self.assertEqual(Note.objects.count(), 1)

    def test_runs_as_a_vault_user_in_the_test_database(self):
        with connection.cursor() as cursor:
            cursor.execute(SESSION_USER[connection.vendor])
            self.assertTrue(cursor.fetchone()[0].startswith("v-"))
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))
"""


@pytest.mark.slow
def test_manage_py_test_with_vault_credentials(vault_lab: VaultLab, vendor: str, tmp_path: Any) -> None:
    """Django's test runner creates and drops its test database with dynamic
    credentials (the role statements grant CREATEDB / the test database)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "__init__.py").write_text("")
    (tmp_path / "notes" / "models.py").write_text(PROJECT_MODELS)
    (tmp_path / "notes" / "tests.py").write_text(PROJECT_TESTS)
    (tmp_path / "vault_settings.py").write_text(PROJECT_SETTINGS)
    database = {k: v for k, v in vault_lab.settings(vendor, None).items() if k != "PASSWORD"}
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)]),
        "DJANGO_SETTINGS_MODULE": "vault_settings",
        "VAULT_ADDR": vault_lab.bao.addr,
        "VAULT_TOKEN": vault_lab.bao.root_token,
        "IAMDB_TEST_DATABASE": json.dumps(database),
        "IAMDB_TEST_VAULT_ROLE": f"{ROLE[vendor]}-long",
    }
    before = vault_lab.db_users(vendor)
    result = subprocess.run(
        [sys.executable, "-m", "django", "test", "notes", "--noinput", "-v", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Ran 2 tests" in output and "OK" in output
    assert "Destroying test database" in output
    assert vault_lab.bao.root_token not in output
    # revoke_at_exit: the worker left no database user behind.
    assert vault_lab.db_users(vendor) <= before


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def run_in_child(child: Callable[[], int], *, timeout: float = 30.0) -> int:
    """Fork; run ``child`` in the child and exit with its code; return that code.
    A child still running after ``timeout`` seconds (hung on a lock) is killed."""
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the
        # child: what these tests do on purpose, to show that it does not.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = child()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung for {timeout:g} s")


@contextlib.contextmanager
def held(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread within the block (as when fork() happens mid-fetch)."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(5)
    try:
        yield
    finally:
        release.set()
        thread.join(5)


def test_forked_child_keeps_the_lease_and_revokes_only_its_own(vault_lab: VaultLab) -> None:
    """fork() while another thread holds the source's lock: the child does not hang,
    keeps the cached credential and the lease behind it, and does not revoke the
    parent's lease; its own new lease is its own to revoke."""
    source = source_for(vault_lab, "pg-long")
    settings_dict = vault_lab.settings("postgresql", source)
    wrapper = make_wrapper(settings_dict, "vault_fork")
    parent_user = who(wrapper)
    wrapper.close()

    def child() -> int:
        wrapper = make_wrapper(settings_dict, "vault_fork")
        if who(wrapper) != parent_user:
            return 2  # the inherited credential, without asking Vault
        wrapper.close()
        source.invalidate()  # forget it: the next fetch issues a lease of this process's own
        user = who(wrapper)
        wrapper.close()
        if user == parent_user or source.stats.leases_issued != 1:
            return 3
        if parent_user not in vault_lab.db_users("postgresql"):
            return 4  # invalidate() without a refused password revokes nothing
        if source.revoke_leases() != 1 or parent_user not in vault_lab.db_users("postgresql"):
            return 5  # only its own lease is the child's to revoke
        return 0 if user not in vault_lab.db_users("postgresql") else 6

    with held(source._lock):
        code = run_in_child(child)
    assert code == 0
    assert who(wrapper) == parent_user
    wrapper.close()
    source.revoke_leases()


def test_forked_child_with_a_given_client(vault_lab: VaultLab) -> None:
    """A caller's hvac.Client in a forked child gets a new requests session (its
    settings kept, not the parent's sockets or pool locks) and keeps working."""
    import hvac

    client = hvac.Client(url=vault_lab.bao.addr, token=vault_lab.bao.root_token, timeout=5)
    client.adapter.session.headers["X-Test"] = "kept"
    source = VaultDatabaseCredentials("pg-long", client=client)
    target = Target(alias="vault_fork_client")
    first = source.get_credentials(target)
    parent_session = client.adapter.session
    parent_session.iamdb_parent = True  # type: ignore[attr-defined]

    def child() -> int:
        session = client.adapter.session
        if getattr(session, "iamdb_parent", False) or session.headers.get("X-Test") != "kept":
            return 2
        renewed = source.fetch(target)  # renews the inherited lease through the new session
        return 0 if renewed.password == first.password and source.stats.leases_renewed == 1 else 3

    with held(source._lock):
        assert run_in_child(child) == 0
    assert client.adapter.session is parent_session
    source.revoke_leases()


def test_kubernetes_auth(vault_lab: VaultLab, tmp_path: Any) -> None:
    """OpenBao's kubernetes auth method for real, with a stand-in TokenReview API."""
    from iamdb.sources.vault import KubernetesAuth
    from tests.services.tokenreview import TokenReviewServer

    reviewer = TokenReviewServer().start()
    try:
        client = vault_lab.bao.client()
        if "kubernetes/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method("kubernetes")
        vault_lab.bao.write(
            "auth/kubernetes/config",
            kubernetes_host=reviewer.url,
            disable_local_ca_jwt=True,
            kubernetes_ca_cert=reviewer.ca_pem(),
            token_reviewer_jwt=reviewer.service_account_jwt("kube-system", "vault-reviewer"),
        )
        vault_lab.bao.write(
            "auth/kubernetes/role/web",
            bound_service_account_names="web",
            bound_service_account_namespaces="shop",
            token_policies="iamdb-app",
            token_ttl="60s",
        )
        jwt_path = tmp_path / "token"
        jwt_path.write_text(reviewer.service_account_jwt("shop", "web"))
        source = source_for(vault_lab, "pg-long", auth=KubernetesAuth("web", jwt_path=str(jwt_path)))
        wrapper = make_wrapper(vault_lab.settings("postgresql", source), "vault_k8s")
        assert who(wrapper).startswith("v-")
        wrapper.close()
        assert source.stats.logins == 1 and reviewer.reviews >= 1
        source.revoke_leases()
        # A service account the cluster does not vouch for is refused, clearly.
        jwt_path.write_text(reviewer.service_account_jwt("other", "web"))
        stranger = source_for(vault_lab, "pg-long", auth=KubernetesAuth("web", jwt_path=str(jwt_path)))
        with pytest.raises(CredentialError) as info:
            make_wrapper(vault_lab.settings("postgresql", stranger), "vault_k8s").ensure_connection()
        assert "'vault_k8s'" in str(info.value) and "logging in with KubernetesAuth" in str(info.value)
        assert jwt_path.read_text() not in str(info.value)
    finally:
        reviewer.stop()


def test_sealed_vault_is_a_clear_error(vault_lab: VaultLab) -> None:
    from tests.services.openbao import OpenBao

    sealed = OpenBao(vault_lab.bao.binary).start(sealed=True)
    try:
        source = VaultDatabaseCredentials("pg-long", url=sealed.addr, auth=TokenAuth("s.some-token"))
        wrapper = make_wrapper(vault_lab.settings("postgresql", source), "vault_sealed")
        with pytest.raises(CredentialError) as info:
            wrapper.ensure_connection()
    finally:
        sealed.cleanup()
    message = str(info.value)
    assert "sealed" in message and "'vault_sealed'" in message and "'pg-long'" in message
    assert sealed.addr in message and "s.some-token" not in message


# -- refused and revoked leases (each through Django's connection path) -------------------


def test_refused_dynamic_user_is_replaced_by_a_new_lease(vault_lab: VaultLab, vendor: str) -> None:
    """The database refuses the lease's password (changed behind Vault's back): the
    next connection gets a new lease, and the refused one is revoked."""
    source = source_for(vault_lab, f"{ROLE[vendor]}-long")
    source.revoke_grace = 0.2
    settings_dict = vault_lab.settings(vendor, source)
    wrapper = make_wrapper(settings_dict, "vault_refused")
    first = who(wrapper)
    wrapper.close()
    refused = source.cached(wrapper.iamdb.target)
    assert isinstance(refused, VaultCredential) and refused.lease_id
    vault_lab.refuse_user(vendor, first)
    try:
        wrapper = make_wrapper(settings_dict, "vault_refused")
        wrapper.ensure_connection()
        second = who(wrapper)
        wrapper.close()
        assert second.startswith("v-") and second != first
        assert source.stats.leases_issued == 2
        # Its connections are retired from now on; it is revoked after the grace.
        end = source.sessions_end(wrapper.iamdb.target, refused)
        assert end is not None and end <= time.monotonic() + source.revoke_grace
        # Best effort, but here Vault is up: the refused lease is gone, its user dropped.
        assert wait_for(lambda: source.stats.leases_revoked == 1, 10)
        assert refused.lease_id.rsplit("/", 1)[-1] not in vault_lab.live_leases(f"{ROLE[vendor]}-long")
        assert first not in vault_lab.db_users(vendor)
    finally:
        source.revoke_leases()


SLEEP = {"postgresql": "SELECT pg_sleep(2)", "mysql": "SELECT SLEEP(2)"}


def test_a_refused_lease_lets_running_queries_finish_then_retires_them(
    vault_lab: VaultLab, vendor: str
) -> None:
    """Another thread's connection made with the refused lease is in the middle of a
    query: the query finishes (the revocation, which ends the lease's sessions,
    waits a grace period), and the connection is retired at its next request
    boundary; then the lease is revoked."""
    source = source_for(vault_lab, f"{ROLE[vendor]}-hour")
    settings_dict = vault_lab.settings(vendor, source, CONN_MAX_AGE=None)
    connected, refused = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def busy() -> None:
        wrapper = make_wrapper(settings_dict, "vault_refused_busy")
        try:
            outcome["user"] = who(wrapper)
            connected.set()
            refused.wait(10)
            with wrapper.cursor() as cursor:
                cursor.execute(SLEEP[vendor])  # a long query, running while the lease is replaced
            outcome["query"] = "finished"
            wrapper.close_if_unusable_or_obsolete()  # request_finished
            outcome["retired"] = wrapper.connection is None
        except Exception as exc:
            outcome["query"] = f"{type(exc).__name__}: {exc}"
        finally:
            wrapper.close()

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        assert connected.wait(10)
        first = outcome["user"]
        vault_lab.refuse_user(vendor, first)
        refused.set()
        time.sleep(0.5)  # the query is running
        other = make_wrapper(settings_dict, "vault_refused_busy")
        second = who(other)  # refused, then a new lease
        other.close()
        thread.join(15)
        assert second != first and source.stats.leases_issued == 2
        assert outcome["query"] == "finished"
        assert outcome["retired"] is True
        # Then the refused lease is revoked (after the grace): its user is dropped.
        assert wait_for(lambda: first not in vault_lab.db_users(vendor), source.revoke_grace + 10)
    finally:
        refused.set()
        thread.join(15)
        source.revoke_leases()


def test_refused_lease_that_cannot_be_revoked_still_gets_replaced(
    vault_lab: VaultLab, caplog: pytest.LogCaptureFixture
) -> None:
    """Revoking the refused lease is best effort: a token without the policy for it
    gets a warning in the log, and the connection is made with the new lease."""
    token = vault_lab.bao.client().auth.token.create(policies=["iamdb-no-revoke"], ttl="60s")
    source = source_for(vault_lab, "pg-long", auth=TokenAuth(token["auth"]["client_token"]))
    source.revoke_grace = 0.2
    settings_dict = vault_lab.settings("postgresql", source)
    wrapper = make_wrapper(settings_dict, "vault_no_revoke")
    first = who(wrapper)
    wrapper.close()
    vault_lab.refuse_user("postgresql", first)
    with caplog.at_level("INFO", logger="iamdb"):
        second = who(wrapper)
        wrapper.close()
        assert wait_for(lambda: "could not revoke the lease of " + first in caplog.text, 10)
    assert second != first and source.stats.leases_issued == 2 and source.stats.leases_revoked == 0
    assert first in vault_lab.db_users("postgresql")  # left to Vault (its TTL)
    vault_lab.bao.client().sys.revoke_prefix("database/creds/pg-long/")


def test_without_the_renew_policy_each_refresh_issues_a_new_lease(vault_lab: VaultLab) -> None:
    token = vault_lab.bao.client().auth.token.create(
        policies=["iamdb-no-renew"], ttl="60s", no_default_policy=True
    )
    source = source_for(vault_lab, "pg-long", auth=TokenAuth(token["auth"]["client_token"]))
    target = Target(alias="vault_no_renew")
    first = source.fetch(target)
    second = source.fetch(target)  # what a refresh does
    assert second.password != first.password
    assert source.stats.leases_issued == 2 and source.stats.leases_renewed == 0
    source.revoke_leases()


def test_static_role_refused_is_read_again(vault_lab: VaultLab) -> None:
    source = source_for(vault_lab, "pg-static", static=True)
    settings_dict = vault_lab.settings("postgresql", source, OPTIONS={"iamdb": {"retry_budget": 8}})
    wrapper = make_wrapper(settings_dict, "vault_static_refused")
    assert who(wrapper) == "iamdb_vault_static"
    wrapper.close()
    reads = source.stats.static_reads
    vault_lab.bao.write("database/rotate-role/pg-static")  # Vault rotates it now
    wrapper.ensure_connection()  # the cached password is refused: read again, then connect
    wrapper.close()
    assert source.stats.static_reads > reads


def test_revoked_lease_is_replaced(vault_lab: VaultLab, vendor: str) -> None:
    """``bao lease revoke`` of the live lease: its sessions end, its user is dropped,
    and the next connection gets a new lease."""
    source = source_for(vault_lab, f"{ROLE[vendor]}-long")
    wrapper = make_wrapper(vault_lab.settings(vendor, source), "vault_revoked")
    first = who(wrapper)
    credential = source.cached(wrapper.iamdb.target)
    assert isinstance(credential, VaultCredential) and credential.lease_id
    vault_lab.bao.client().sys.revoke_lease(credential.lease_id)
    with pytest.raises(OperationalError):
        who(wrapper)  # the revocation statements ended the session
    wrapper.close()
    try:
        second = who(wrapper)
        wrapper.close()
        assert second.startswith("v-") and second != first
        assert source.stats.leases_issued == 2
    finally:
        source.revoke_leases()


# -- transient Vault errors ----------------------------------------------------------------


def approle_auth(lab: VaultLab, *, token_ttl: str, token_max_ttl: str = "60s") -> AppRoleAuth:
    client = lab.bao.client()
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    name = f"iamdb-{token_ttl}-{token_max_ttl}"
    client.auth.approle.create_or_update_approle(
        name, token_policies=["iamdb-app"], token_ttl=token_ttl, token_max_ttl=token_max_ttl
    )
    role_id = client.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    return AppRoleAuth(role_id, secret_id)


def test_token_renewal_rate_limited_keeps_the_token_and_the_lease(
    vault_lab: VaultLab, caplog: pytest.LogCaptureFixture
) -> None:
    """429 on renew-self is not a refusal: no new login, so no new lease (a new token
    could not renew the live lease, and a new database user would be issued)."""
    source = source_for(vault_lab, "pg-long", auth=approle_auth(vault_lab, token_ttl="5s"))
    target = make_wrapper(vault_lab.settings("postgresql", source), "vault_429").iamdb.target
    first = source.get_credentials(target)
    assert source.stats.logins == 1 and source.stats.leases_issued == 1
    vault_lab.bao.block_path("renew-self", "auth/token/renew-self")
    try:
        time.sleep(1.5)  # the token (5 s) is now in its renewal window (its last 4 s)
        with caplog.at_level("INFO", logger="iamdb"):
            again = source.fetch(target)  # what a refresh does
    finally:
        vault_lab.bao.unblock_path("renew-self")
    assert "rate limit" in caplog.text  # renewal was tried, and why it failed is logged
    assert source.stats.logins == 1  # not logged in again for a rate limit
    assert source.stats.token_renewals == 0
    assert source.stats.leases_issued == 1 and source.stats.leases_renewed == 1
    assert again.password == first.password and again.username == first.username
    source.revoke_leases()


def test_no_secret_in_the_repr_of_any_internal_object(vault_lab: VaultLab) -> None:
    auth = approle_auth(vault_lab, token_ttl="60s")
    source = source_for(vault_lab, "pg-long", auth=auth)
    credential = source.get_credentials(Target(alias="vault_repr"))
    token = source._vault().token
    secrets = [credential.password, token, auth._secret_id]
    assert all(secrets)
    seen: list[str] = []
    for name, value in vars(source).items():
        seen.append(f"{name}={value!r}")
        if isinstance(value, dict):
            seen.extend(repr(item) for item in value.values())
    seen += [repr(source._lease), repr(source._token), repr(auth), repr(credential), repr(source)]
    text = "\n".join(seen)
    assert "_Lease(" in text and "_Token(" in text  # the objects that hold secrets were looked at
    for secret in secrets:
        assert secret not in text
    source.revoke_leases()


@pytest.mark.parametrize(
    ("fault", "kwargs"),
    [
        ("http_error", {"status": 503}),
        ("http_error", {"status": 500}),
        ("http_error", {"status": 429}),
        ("refuse", {}),
        ("blackhole", {}),
    ],
)
def test_transient_errors_never_cause_a_new_login(
    vault_lab: VaultLab, fault: str, kwargs: dict[str, float]
) -> None:
    """A fault between the source and Vault while the token is due for renewal: no
    new login (it would orphan the lease), the lease stays, and once Vault answers
    again the same token and lease are renewed. Fake clock: the token (60 s) is in
    its renewal window while, in real time, it and the lease (1 h) are young."""
    clock = FakeClock(now=time.monotonic(), wall=time.time())
    with FaultProxy(vault_lab.bao.port) as proxy:
        auth = approle_auth(vault_lab, token_ttl="60s", token_max_ttl="1h")
        source = VaultDatabaseCredentials("pg-hour", url=proxy.url, auth=auth, clock=clock, timeout=1)
        target = Target(alias="vault_transient")
        first = source.fetch(target)
        clock.advance(45)
        with proxy.fault(fault, **kwargs), pytest.raises(CredentialError) as info:
            source.fetch(target)
        message = str(info.value)
        assert "renewing the lease" in message and "logging in" not in message
        assert source.stats.logins == 1 and source.stats.token_renewal_failures == 1
        again = source.fetch(target)  # Vault answers again
        stats = source.stats
        assert again.password == first.password and again.username == first.username
        assert stats.logins == 1 and stats.leases_issued == 1
        assert stats.token_renewals == 1 and stats.leases_renewed == 1
        source.revoke_leases()


def test_sessions_end_follows_the_lease_by_id(vault_lab: VaultLab) -> None:
    clock = FakeClock(now=time.monotonic(), wall=time.time())
    source = source_for(vault_lab, "pg-hour", clock=clock)
    target = Target(alias="vault_sessions_end")
    first = source.fetch(target)
    assert isinstance(first, VaultCredential) and first.lease_id
    start = clock.monotonic()
    end = source.sessions_end(target, first)
    assert end is not None and start + HOUR_TTL - 5 <= end <= start + HOUR_TTL
    clock.advance(3000)  # in the renewal window: renewed for another hour
    renewed = source.fetch(target)
    assert renewed.password == first.password and source.stats.leases_renewed == 1
    later = source.sessions_end(target, first)  # the first credential's sessions last longer now
    assert later is not None and later >= clock.monotonic() + HOUR_TTL - 5
    # A static role's sessions do not end; an unknown lease is not known.
    assert source.sessions_end(target, VaultCredential(password="x", lease_id=None)) is None
    assert source.sessions_end(target, VaultCredential(password="x", lease_id="database/creds/x/y")) is None
    # Revoked by this source: its sessions end now.
    source.revoke_leases()
    assert source.sessions_end(target, first) == clock.monotonic()


def test_lock_wait_is_bounded_by_the_deadline(vault_lab: VaultLab) -> None:
    from iamdb.deadline import Deadline

    source = source_for(vault_lab, "pg-long", timeout=30)
    target = Target(alias="vault_lock")
    with held(source._lock):
        started = time.monotonic()
        with pytest.raises(CredentialError) as info:
            source.get_credentials(target, deadline=Deadline.after(0.2))
        waited = time.monotonic() - started
    assert waited < 5  # not 4 x timeout (120 s): the deadline's 0.2 s, floored at 0.5 s
    assert "'vault_lock'" in str(info.value) and "'pg-long'" in str(info.value)


def test_a_wall_clock_step_changes_no_lease(vault_lab: VaultLab) -> None:
    """Lease and token ends are kept on the monotonic clock: the wall clock jumping
    two hours ahead (past the lease's hour) does not make the lease look ended. Only
    the credential's wall-clock fields follow the wall clock."""
    clock = FakeClock(now=time.monotonic(), wall=time.time())
    source = source_for(vault_lab, "pg-hour", clock=clock)
    target = Target(alias="vault_wall_step")
    first = source.fetch(target)
    end = source.sessions_end(target, first)
    clock.step_wall(2 * HOUR_TTL)
    again = source.fetch(target)
    assert again.password == first.password
    assert source.stats.leases_issued == 1 and source.stats.leases_renewed == 1
    assert again.expires_at is not None and again.expires_at >= clock.time() + HOUR_TTL - 5
    assert source.sessions_end(target, first) == pytest.approx(end, abs=5)
    source.revoke_leases()


def test_vault_requests_end_at_the_connection_deadline(vault_lab: VaultLab) -> None:
    """A Vault that does not answer: the request's timeout is the deadline's
    remaining time (1 s here), not the source's ``timeout`` (30 s)."""
    from iamdb.deadline import Deadline

    with FaultProxy(vault_lab.bao.port) as proxy:
        source = VaultDatabaseCredentials(
            "pg-long", url=proxy.url, auth=TokenAuth(vault_lab.bao.root_token), timeout=30
        )
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(CredentialError) as info:
            source.get_credentials(Target(alias="vault_deadline"), deadline=Deadline.after(1.0))
        waited = time.monotonic() - started
    assert waited < 1.0 + 3  # the budget and some slack, far from 30 s
    assert "did not answer in time" in str(info.value) and "'vault_deadline'" in str(info.value)


def test_a_revoked_token_is_a_refusal_and_logs_in_again(vault_lab: VaultLab) -> None:
    """An operator revokes the token (and with it its leases): renewing it is refused
    (403), so AppRoleAuth logs in again and the next credential is a new lease."""
    clock = FakeClock(now=time.monotonic(), wall=time.time())
    source = source_for(
        vault_lab, "pg-hour", auth=approle_auth(vault_lab, token_ttl="60s", token_max_ttl="1h"), clock=clock
    )
    target = Target(alias="vault_token_revoked")
    first = source.fetch(target)
    vault_lab.bao.client().auth.token.revoke(source._vault().token)
    clock.advance(45)  # the token is due for renewal
    again = source.fetch(target)
    assert source.stats.logins == 2 and source.stats.token_renewal_failures == 0
    assert again.password != first.password and source.stats.leases_issued == 2
    source.revoke_leases()
