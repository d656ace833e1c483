"""SecretsManagerSecret against moto's server and the real database servers: rotation under load."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import boto3
import botocore.exceptions
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

from iamdb import CredentialError, Target
from iamdb.sources import SecretsManagerSecret, _aws
from tests.conftest import DbUser, make_wrapper, new_password
from tests.fakeclock import FakeClock, run_now
from tests.integration.conftest_aws import rds_secret
from tests.leakscan import LeakScan
from tests.load import run_load
from tests.services.moto import MotoServer
from tests.services.postgres import free_port

pytest_plugins = ["tests.integration.conftest_aws"]

CURRENT_USER = {
    "postgresql": "SELECT current_user",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
}


def whoami(wrapper: Any) -> str:
    with wrapper.cursor() as cursor:
        cursor.execute(CURRENT_USER[wrapper.vendor])
        return str(cursor.fetchone()[0])


@pytest.fixture
def get_secret_value_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the GetSecretValue calls iamdb's own clients make (real HTTP calls),
    whatever timeout bucket each client serves."""
    import botocore.client

    calls = [0]
    real = botocore.client.BaseClient._make_api_call

    def counted(client: Any, operation: str, params: Any) -> Any:
        if operation == "GetSecretValue" and hasattr(client, "_iamdb_session"):
            calls[0] += 1
        return real(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counted)
    return calls


def test_login_with_the_user_and_password_in_an_rds_secret(
    db_user: DbUser, admin: Any, secret_name: str
) -> None:
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerSecret(secret_name)
    settings_dict = db_user.settings(source, USER="")  # the secret gives the user name
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    assert settings_dict["USER"] == "" and settings_dict["PASSWORD"] is source
    # The secret's user name wins over USER.
    wrapper = make_wrapper(db_user.settings(source, USER="someone_else"))
    assert whoami(wrapper) == db_user.name
    wrapper.close()


def simulated(ttl: float, secret_name: str) -> tuple[SecretsManagerSecret, FakeClock]:
    """A source on a fake clock whose background refreshes run at once, in the caller's thread."""
    clock = FakeClock()
    source = SecretsManagerSecret(secret_name, ttl=ttl, clock=clock)
    source._cache._spawn = run_now
    return source, clock


def test_the_secret_is_read_again_after_ttl(
    moto_server: MotoServer, admin: Any, secret_name: str, get_secret_value_calls: list[int]
) -> None:
    admin.create_secret(Name=secret_name, SecretString="pw-first-value-1234")
    source, clock = simulated(60, secret_name)
    user = Target(user="app")
    assert source.get_password(user) == "pw-first-value-1234"
    admin.put_secret_value(SecretId=secret_name, SecretString="pw-second-value-5678")
    clock.advance(59)
    assert source.get_password(user) == "pw-first-value-1234"
    assert get_secret_value_calls == [1]
    clock.advance(2)  # past the ttl: this request gets the value it knows, and starts a read
    assert source.get_password(user) == "pw-first-value-1234"
    assert get_secret_value_calls == [2]
    assert source.get_password(user) == "pw-second-value-5678"


def test_awspending_only_after_a_refusal_and_for_10_seconds(
    moto_server: MotoServer, admin: Any, secret_name: str, get_secret_value_calls: list[int]
) -> None:
    """A rotation between setSecret and finishSecret: the server has the AWSPENDING password."""
    admin.create_secret(Name=secret_name, SecretString="pw-current-value-1234")
    admin.put_secret_value(
        SecretId=secret_name, SecretString="pw-pending-value-5678", VersionStages=["AWSPENDING"]
    )
    source, clock = simulated(3600, secret_name)
    user = Target(user="app")
    # AWSCURRENT works (as far as anyone knows): AWSPENDING is not even read.
    assert source.get_password(user) == "pw-current-value-1234"
    assert get_secret_value_calls == [1]
    source.invalidate(user, password="pw-current-value-1234")  # the server refused it
    clock.advance(1)
    assert source.get_password(user) == "pw-pending-value-5678"
    assert get_secret_value_calls == [3]  # AWSCURRENT again, then AWSPENDING
    clock.advance(9)
    assert source.get_password(user) == "pw-pending-value-5678"
    assert get_secret_value_calls == [3]
    clock.advance(2)  # 10 s on AWSPENDING: AWSCURRENT is read again
    source.get_password(user)
    assert get_secret_value_calls[0] >= 4


def test_a_binary_secret_is_not_supported(db_user: DbUser, admin: Any, secret_name: str) -> None:
    admin.create_secret(Name=secret_name, SecretBinary=b"pw-binary-secret-1234")
    wrapper = make_wrapper(db_user.settings(SecretsManagerSecret(secret_name)), alias="billing")
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    assert "binary secrets are not supported" in str(info.value) and "'billing'" in str(info.value)


def test_a_plain_string_secret_is_the_password(db_user: DbUser, admin: Any, secret_name: str) -> None:
    admin.create_secret(Name=secret_name, SecretString=db_user.password)
    wrapper = make_wrapper(db_user.settings(SecretsManagerSecret(secret_name)))
    assert whoami(wrapper) == db_user.name
    wrapper.close()


@pytest.mark.slow
def test_rotation_under_load_fails_no_request_and_makes_few_calls(
    db_user: DbUser, admin: Any, secret_name: str, get_secret_value_calls: list[int]
) -> None:
    """The server's password changes first; the secret is updated a moment later, repeatedly."""
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerSecret(secret_name, ttl=3600)
    calls = get_secret_value_calls
    settings_dict = db_user.settings(source, OPTIONS={"iamdb": {"retry_budget": 10}})
    rotations = 4

    def request() -> None:
        wrapper = make_wrapper(settings_dict)
        try:
            assert whoami(wrapper) == db_user.name
        finally:
            wrapper.close()

    def rotate_repeatedly() -> None:
        for _ in range(rotations):
            time.sleep(0.7)
            new = db_user.rotate()
            time.sleep(0.4)  # the secret lags behind the server
            admin.put_secret_value(SecretId=secret_name, SecretString=rds_secret(db_user, new))
        time.sleep(0.7)

    requests, failures = run_load(request, threads=4, seconds=60, during=rotate_repeatedly)
    assert failures == []
    assert requests > 50
    # A few calls per rotation (the first read, then a handful while the secret lags),
    # never one per request or per thread.
    print(f"rotations={rotations} requests={requests} GetSecretValue={calls[0]}")
    assert calls[0] <= 1 + rotations * 8, (calls[0], requests)


@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
def test_managed_rotation_uses_awspending_until_it_finishes(
    db_user: DbUser, admin: Any, secret_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Single-user rotation: createSecret (AWSPENDING), setSecret (the server), ..., finishSecret."""
    caplog.set_level(logging.INFO, logger="iamdb")
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerSecret(secret_name, ttl=3600)
    settings_dict = db_user.settings(source, OPTIONS={"iamdb": {"retry_budget": 1}})
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    new = new_password()
    pending = admin.put_secret_value(
        SecretId=secret_name, SecretString=rds_secret(db_user, new), VersionStages=["AWSPENDING"]
    )
    db_user.rotate(new)  # setSecret: the server has the pending password
    # finishSecret has not run: AWSCURRENT is refused, AWSPENDING works.
    for _ in range(3):
        assert whoami(wrapper) == db_user.name
        wrapper.close()
    assert "using AWSPENDING" in caplog.text
    current = admin.describe_secret(SecretId=secret_name)["VersionIdsToStages"]
    old_version = next(v for v, stages in current.items() if "AWSCURRENT" in stages)
    admin.update_secret_version_stage(
        SecretId=secret_name,
        VersionStage="AWSCURRENT",
        MoveToVersionId=pending["VersionId"],
        RemoveFromVersionId=old_version,
    )
    assert whoami(wrapper) == db_user.name
    wrapper.close()


def test_a_json_secret_without_the_password_key(
    db_user: DbUser, admin: Any, secret_name: str, leaks: LeakScan
) -> None:
    # The other keys' values are secrets too: neither the message nor a frame that
    # Django's debug page shows (the leak scan renders it) holds them.
    leaks.add("hunter2x")
    admin.create_secret(
        Name=secret_name, SecretString=json.dumps({"username": db_user.name, "pass": "hunter2x"})
    )
    wrapper = make_wrapper(db_user.settings(SecretsManagerSecret(secret_name)), alias="billing")
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert "'billing'" in message and secret_name in message and "'password'" in message
    assert "hunter2x" not in message
    assert "pass, username" in message  # the keys it has, never their values


def test_a_missing_secret(db_user: DbUser, moto_server: MotoServer) -> None:
    wrapper = make_wrapper(db_user.settings(SecretsManagerSecret("iamdb/no/such/secret")), alias="billing")
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert isinstance(info.value, CredentialError)
    message = str(info.value)
    assert (
        "'billing'" in message
        and "iamdb/no/such/secret" in message
        and "ResourceNotFoundException" in message
    )
    # botocore's error is the cause, without the frames beneath it (they hold the request).
    cause = info.value.__cause__
    assert isinstance(cause, botocore.exceptions.ClientError)
    assert cause.__traceback__ is None
    assert cause.response["Error"]["Code"] == "ResourceNotFoundException"


def test_an_error_holds_no_session_token(db_user: DbUser, moto_server: MotoServer, leaks: LeakScan) -> None:
    """The request botocore signed (with an STS session token) stays out of the error's chain."""
    token = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN" + new_password()
    leaks.add(token)
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token=token
    )
    source = SecretsManagerSecret("iamdb/no/such/secret", session=session)
    wrapper = make_wrapper(db_user.settings(source), alias="billing")
    with pytest.raises(CredentialError) as info:
        wrapper.ensure_connection()
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, botocore.exceptions.ClientError) for e in chain)
    assert all(e.__traceback__ is None for e in chain[1:])


def test_an_unreachable_endpoint(
    db_user: DbUser, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{free_port()}")
    session = boto3.session.Session()  # a client of its own, made with that endpoint
    wrapper = make_wrapper(db_user.settings(SecretsManagerSecret("iamdb/any", session=session)))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert "could not connect to the AWS endpoint" in str(info.value)


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_a_silent_endpoint_fails_within_the_retry_budget(
    db_user: DbUser, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections and never answers: the client's timeouts and
    attempts fit the time the connection has left (botocore's defaults: 3 x 60 s)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{silent.getsockname()[1]}")
        source = SecretsManagerSecret("iamdb/any", session=boto3.session.Session())
        wrapper = make_wrapper(db_user.settings(source, OPTIONS={"iamdb": {"retry_budget": 1}}))
        started = time.monotonic()
        with pytest.raises(CredentialError) as info:
            wrapper.ensure_connection()
        elapsed = time.monotonic() - started
    assert "ReadTimeoutError" in str(info.value)
    assert elapsed < 1 + 3, elapsed


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_secrets_never_reach_the_logs(
    db_user: DbUser, admin: Any, secret_name: str, caplog: pytest.LogCaptureFixture, leaks: LeakScan
) -> None:
    caplog.set_level(logging.DEBUG)
    admin.create_secret(Name=secret_name, SecretString=rds_secret(db_user))
    source = SecretsManagerSecret(secret_name)
    caplog.clear()
    wrapper = make_wrapper(db_user.settings(source))
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    names = {record.name for record in caplog.records}
    assert "botocore.parsers" in names  # botocore did log the response at DEBUG
    assert db_user.password not in "\n".join(record.getMessage() for record in caplog.records)
    # Control: the same call made outside iamdb logs the password.
    caplog.clear()
    client = _aws.client("secretsmanager", "us-east-1", None)
    with leaks.paused():
        client.get_secret_value(SecretId=secret_name)
        assert db_user.password in "\n".join(record.getMessage() for record in caplog.records)
