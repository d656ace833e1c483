"""SecretsManagerAgentSecret against a stand-in of the Secrets Manager Agent (its HTTP API,
its 300 s cache, refreshNow, its token check) in front of moto's server, and the real
database servers."""

from __future__ import annotations

import copy
import json
import os
import pickle
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

from iamdb import CredentialError, Target
from iamdb.sources import SecretsManagerAgentSecret
from tests.conftest import DbUser, make_wrapper, new_password
from tests.fakeclock import FakeClock, run_now
from tests.integration.conftest_aws import rds_secret
from tests.leakscan import LeakScan
from tests.load import run_load
from tests.services.moto import MotoServer
from tests.services.postgres import free_port
from tests.services.smagent import HEADER, SecretsManagerAgent

pytest_plugins = ["tests.integration.conftest_aws"]

CURRENT_USER = {
    "postgresql": "SELECT current_user",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
}
TOKEN_VARIABLES = ("AWS_TOKEN", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN")


def whoami(wrapper: Any) -> str:
    with wrapper.cursor() as cursor:
        cursor.execute(CURRENT_USER[wrapper.vendor])
        return str(cursor.fetchone()[0])


@pytest.fixture(scope="module")
def agent(moto_server: MotoServer) -> Iterator[SecretsManagerAgent]:
    server = SecretsManagerAgent(moto_server).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token(agent: SecretsManagerAgent, monkeypatch: pytest.MonkeyPatch, leaks: LeakScan) -> str:
    """The agent's token in AWS_TOKEN, the other variables unset. A secret: the leak scan
    looks for it in every log record, error, repr and child's argv."""
    leaks.add(agent.token, "the agent's token")
    for variable in TOKEN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_TOKEN", agent.token)
    return agent.token


def ask_agent(agent: SecretsManagerAgent, secret_id: str) -> str:
    """What the agent answers a plain request (no refreshNow), as any client would see it."""
    request = urllib.request.Request(
        f"{agent.endpoint}/secretsmanager/get?secretId={secret_id}", headers={HEADER: agent.token}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.loads(response.read())["SecretString"])


def test_login_with_the_user_and_password_from_the_agent(
    db_user: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint)
    settings_dict = db_user.settings(source, USER="")
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    assert settings_dict["PASSWORD"] is source and settings_dict["USER"] == ""
    ours = [q for q, status in agent.requests if q.get("secretId") == secret_name]
    assert ours == [{"secretId": secret_name}]  # one request, no refreshNow
    assert token not in repr(source)


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_the_token_comes_from_the_first_variable_set_or_its_file(
    db_user: DbUser,
    agent: SecretsManagerAgent,
    token: str,
    admin: Any,
    secret_name: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    admin.create_secret(Name=secret_name, SecretString=db_user.password)
    target = Target(alias="billing", user=db_user.name)
    # AWS_TOKEN is first: a wrong value there wins over a right one further down.
    monkeypatch.setenv("AWS_TOKEN", "not-the-agent-token")
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    with pytest.raises(ImproperlyConfigured) as info:
        SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint).get_credentials(target)
    assert "HTTP 403" in str(info.value) and "AWS_TOKEN" in str(info.value)
    monkeypatch.delenv("AWS_TOKEN")
    assert (
        SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint).get_password(target)
        == db_user.password
    )
    # The last one, as file://PATH (ECS and EKS Pod Identity hand the token in a file).
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", f"file://{token_file}")
    assert (
        SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint).get_password(target)
        == db_user.password
    )
    token_file.unlink()
    with pytest.raises(CredentialError) as failed:
        SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint).get_credentials(target)
    assert f"names the token file '{token_file}', which could not be read" in str(failed.value)


def test_without_a_token_the_error_says_which_variables(
    nobody: DbUser, agent: SecretsManagerAgent, token: str, secret_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_TOKEN")
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint)
    wrapper = make_wrapper(nobody.settings(source), alias="billing")
    before = len(agent.requests)
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert "database 'billing'" in message and secret_name in message
    assert (
        "no token for the agent: set AWS_TOKEN (or AWS_SESSION_TOKEN, AWS_CONTAINER_AUTHORIZATION_TOKEN)"
        in message
    )
    assert len(agent.requests) == before  # not even asked
    # The agent itself refuses a request without its header.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{agent.endpoint}/secretsmanager/get?secretId={secret_name}", timeout=5)
    assert refused.value.code == 401


def test_a_rotation_behind_the_agent_s_cache_is_recovered_with_refresh_now(
    db_user: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint, ttl=3600)
    settings_dict = db_user.settings(source, USER="")
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    upstream = agent.upstream_calls
    new = db_user.rotate()
    admin.put_secret_value(SecretId=secret_name, SecretString=rds_secret(db_user, new))
    # The agent does not notice: it still answers the old password from its cache.
    assert json.loads(ask_agent(agent, secret_name))["password"] != new
    source.invalidate()  # and iamdb's own cache would not ask it anyway: forget it
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == db_user.name  # refused once, then refreshNow=true
    wrapper.close()
    assert agent.refreshes(secret_name) == 1
    assert agent.upstream_calls == upstream + 1
    assert json.loads(ask_agent(agent, secret_name))["password"] == new  # the agent's cache too


@pytest.mark.slow
@pytest.mark.parametrize("vendor", ["mysql"])  # PostgreSQL: under load through its pool, below
def test_agent_rotation_under_load_fails_no_request(
    db_user: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    """The server's password changes, the secret a moment later; the agent's cache holds
    the old value for 300 s. Several threads, a new connection per request."""
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint, ttl=3600)
    settings_dict = db_user.settings(source, USER="")
    local = threading.local()
    rotations = 3

    def request() -> None:
        wrapper = getattr(local, "wrapper", None)
        if wrapper is None:
            wrapper = local.wrapper = make_wrapper(settings_dict)
        try:
            assert whoami(wrapper) == db_user.name
        finally:
            wrapper.close()

    def rotate() -> None:
        for _ in range(rotations):
            time.sleep(0.4)
            new = db_user.rotate()
            time.sleep(0.1)  # the secret lags behind the server
            admin.put_secret_value(SecretId=secret_name, SecretString=rds_secret(db_user, new))
        time.sleep(0.5)

    ok, failures = run_load(request, threads=4, seconds=20, during=rotate)
    refreshes = agent.refreshes(secret_name)
    print(f"{ok} requests, {len(failures)} failed, {refreshes} refreshNow, {source._cache.fetches} fetches")
    assert failures == [], failures[:3]
    assert 1 <= refreshes <= rotations * 6 and source._cache.fetches <= 1 + rotations * 6 < ok


@pytest.mark.slow
@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_pool_through_rotations_behind_the_agent(
    db_user: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint, ttl=3600)
    settings_dict = db_user.settings(
        source, USER="", OPTIONS={"pool": {"min_size": 1, "max_size": 4, "max_lifetime": 1.0, "timeout": 10}}
    )
    alias = f"agent_pool_{new_password()[-8:]}"
    local = threading.local()

    def request() -> None:
        wrapper = getattr(local, "wrapper", None)
        if wrapper is None:
            wrapper = local.wrapper = make_wrapper(settings_dict, alias=alias)
        try:
            assert whoami(wrapper) == db_user.name
        finally:
            wrapper.close()

    def rotate() -> None:
        for _ in range(2):
            time.sleep(0.7)
            new = db_user.rotate()
            admin.put_secret_value(SecretId=secret_name, SecretString=rds_secret(db_user, new))
        time.sleep(1.2)

    try:
        ok, failures = run_load(request, threads=4, seconds=20, during=rotate)
        stats = make_wrapper(settings_dict, alias=alias).pool.get_stats()
    finally:
        make_wrapper(settings_dict, alias=alias).close_pool()
    assert failures == [], failures[:3]
    assert ok > 0 and stats["connections_num"] > 2
    assert agent.refreshes(secret_name) >= 1


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_the_agent_is_asked_again_after_ttl(
    db_user: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretString="pw-first-value-1234")
    clock = FakeClock()
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint, ttl=60, clock=clock)
    source._cache._spawn = run_now
    user = Target(user="app")
    assert source.get_password(user) == "pw-first-value-1234"
    asked = len(agent.requests)
    clock.advance(59)
    assert source.get_password(user) == "pw-first-value-1234"
    assert len(agent.requests) == asked
    clock.advance(2)  # past the ttl: this request gets what it knows, and the agent is asked
    assert source.get_password(user) == "pw-first-value-1234"
    assert len(agent.requests) == asked + 1
    assert agent.requests[-1][0] == {"secretId": secret_name}  # no refreshNow: the agent's cache is fine


# -- Django's other paths -------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["postgresql"])  # both clients: test_file_secret.py
def test_dbshell_with_the_agent_gets_the_password_in_its_environment_only(
    db_user: DbUser,
    agent: SecretsManagerAgent,
    token: str,
    admin: Any,
    secret_name: str,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    wrapper = make_wrapper(
        db_user.settings(SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint), USER="")
    )
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def run(args: list[str], **kwargs: Any) -> Any:
        calls.append((list(args), dict(kwargs.get("env") or {})))
        return real_run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    query = {
        "postgresql": ["-X", "-A", "-t", "-c", "SELECT session_user"],
        "mysql": ["-N", "-B", "-e", "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)"],
    }
    capfd.readouterr()
    wrapper.client.runshell(query[db_user.vendor])
    assert capfd.readouterr().out.strip() == db_user.name
    ((argv, env),) = calls
    assert all(db_user.password not in arg and token not in arg for arg in argv)
    assert db_user.password in env.values()


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_test_databases_are_created_and_dropped_with_the_agent_s_user(
    db_user: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    test_name = f"test_iamdb_{secrets.token_hex(4)}"
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint)
    settings_dict = db_user.settings(source, USER="", TEST={"NAME": test_name})
    wrapper = make_wrapper(settings_dict)
    assert wrapper.creation._create_test_db(verbosity=0, autoclobber=True, keepdb=False) == test_name
    try:
        inside = make_wrapper({**settings_dict, "NAME": test_name})
        assert whoami(inside) == db_user.name
        inside.close()
    finally:
        wrapper.creation._destroy_test_db(test_name, verbosity=0)


# -- errors ---------------------------------------------------------------------------------


@pytest.fixture
def nobody(pg_server: Any) -> DbUser:
    """PostgreSQL settings with a user that does not exist: for errors raised before any login."""
    return DbUser("postgresql", "iamdb_nobody", "unused-password", pg_server)


def test_a_missing_secret_behind_the_agent(nobody: DbUser, agent: SecretsManagerAgent, token: str) -> None:
    source = SecretsManagerAgentSecret("iamdb/no/such/secret", endpoint=agent.endpoint)
    wrapper = make_wrapper(nobody.settings(source), alias="billing")
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert isinstance(info.value, CredentialError)
    message = str(info.value)
    assert "database 'billing'" in message and "iamdb/no/such/secret" in message
    assert "HTTP 400: ResourceNotFoundException" in message and "GetSecretValue" in message
    assert (
        isinstance(info.value.__cause__, urllib.error.HTTPError)
        and info.value.__cause__.__traceback__ is None
    )


def test_an_agent_that_is_not_running(nobody: DbUser, token: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    wrapper = make_wrapper(
        nobody.settings(SecretsManagerAgentSecret("any", endpoint=endpoint)), alias="billing"
    )
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert "database 'billing'" in message and endpoint in message
    assert (
        "could not reach the agent (ConnectionRefusedError" in message
        and "check that the Secrets Manager Agent runs" in message
    )


def test_a_silent_agent_fails_within_the_retry_budget(nobody: DbUser, token: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        source = SecretsManagerAgentSecret("any", endpoint=endpoint)
        wrapper = make_wrapper(nobody.settings(source, OPTIONS={"iamdb": {"retry_budget": 1}}))
        started = time.monotonic()
        with pytest.raises(CredentialError) as info:
            wrapper.ensure_connection()
        elapsed = time.monotonic() - started
    assert "could not reach the agent" in str(info.value) and "timeout 1 s" in str(info.value)
    assert elapsed < 2.5, elapsed


def test_a_json_secret_without_the_password_key_through_the_agent(
    nobody: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str, leaks: LeakScan
) -> None:
    leaks.add("hunter2-agent")
    admin.create_secret(
        Name=secret_name, SecretString=json.dumps({"username": nobody.name, "pass": "hunter2-agent"})
    )
    wrapper = make_wrapper(
        nobody.settings(SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint)), alias="billing"
    )
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert "database 'billing'" in message and secret_name in message
    assert "no non-empty string 'password' key (its keys: pass, username)" in message


def test_a_binary_secret_through_the_agent_is_not_supported(
    nobody: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretBinary=b"pw-binary-secret-1234")
    wrapper = make_wrapper(
        nobody.settings(SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint)), alias="billing"
    )
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    assert "binary secrets are not supported" in str(info.value)


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_no_proxy_and_no_redirect_carry_the_token_elsewhere(
    db_user: DbUser,
    agent: SecretsManagerAgent,
    token: str,
    admin: Any,
    secret_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin.create_secret(Name=secret_name, SecretString=db_user.password)
    target = Target(alias="billing", user=db_user.name)
    # A proxy from the environment is not used (nothing listens there: it would fail).
    for variable in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(variable, f"http://127.0.0.1:{free_port()}")
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    assert (
        SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint).get_password(target)
        == db_user.password
    )
    # A redirect is not followed: the token would go with it.
    seen: list[str | None] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get(HEADER))
            self.send_response(307)
            self.send_header("Location", agent.endpoint + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        asked = len(agent.requests)
        with pytest.raises(CredentialError) as info:
            SecretsManagerAgentSecret(secret_name, endpoint=endpoint).get_credentials(target)
    finally:
        server.shutdown()
        server.server_close()
    assert "HTTP 307" in str(info.value) and "does not redirect" in str(info.value)
    assert seen == [token] and len(agent.requests) == asked


# -- copies, pickles, forks -------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_agent_secret_survives_deepcopy_pickle_and_fork(
    db_user: DbUser, agent: SecretsManagerAgent, token: str, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretString=db_user.password)
    source = SecretsManagerAgentSecret(secret_name, endpoint=agent.endpoint)
    target = Target(user=db_user.name)
    assert source.get_password(target) == db_user.password
    assert copy.deepcopy(source) is source
    data = pickle.dumps(source)
    assert db_user.password.encode() not in data and token.encode() not in data
    clone = pickle.loads(data)
    assert clone.cached(target) is None and clone.get_password(target) == db_user.password
    asked = len(agent.requests)
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child:
        # what this test does on purpose (the agent's and the servers' threads run).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            kept = source.get_password(target) == db_user.password  # cached: no request
            source.invalidate(target)
            again = source.get_password(target) == db_user.password  # a request of its own
            os.write(write, b"ok" if kept and again else b"no")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 10)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert len(agent.requests) == asked + 1  # the child's one request
