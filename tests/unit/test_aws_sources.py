"""The AWS sources without a database: regions, settings checks, token lifetimes, errors, pickling."""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import subprocess
import sys
from types import MappingProxyType
from typing import Any

import boto3
import botocore.credentials
import botocore.session
import pytest
from django.core.exceptions import ImproperlyConfigured

from iamdb import CredentialError, Target
from iamdb.sources import RdsIamToken, SecretsManagerSecret, _aws
from iamdb.sources.rds import region_from_host
from iamdb.sources.secretsmanager import region_from_arn

TLS_PG = {"sslmode": "verify-full", "sslrootcert": "/ca.pem"}


def session(region: str | None = "us-east-1", **kwargs: Any) -> Any:
    return boto3.session.Session(
        aws_access_key_id="AKIDTEST", aws_secret_access_key="secret", region_name=region, **kwargs
    )


def target(vendor: str = "postgresql", options: dict[str, Any] | None = None, **kw: Any) -> Target:
    values = {"alias": "orders", "vendor": vendor, "host": "db.internal", "port": 5432, "user": "app"}
    values.update(kw)
    return Target(options=MappingProxyType(TLS_PG if options is None else options), **values)


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("mydb.c9akciq32.us-east-1.rds.amazonaws.com", "us-east-1"),
        ("cluster.cluster-ro-c9akciq32.eu-west-3.rds.amazonaws.com", "eu-west-3"),
        ("proxy.proxy-c9akciq32.ap-southeast-2.rds.amazonaws.com", "ap-southeast-2"),
        ("mydb.c9akciq32.cn-north-1.rds.amazonaws.com.cn", "cn-north-1"),
        ("mydb.c9akciq32.cn-northwest-1.rds.amazonaws.com.cn", "cn-northwest-1"),
        ("mydb.c9akciq32.us-gov-west-1.rds.amazonaws.com", "us-gov-west-1"),
        ("MyDB.C9AKCIQ32.US-EAST-2.RDS.AMAZONAWS.COM.", "us-east-2"),
        ("db.internal", None),
        ("127.0.0.1", None),
        ("rds.amazonaws.com", None),
        ("mydb.us-east-1.rds.example.com", None),
    ],
)
def test_region_from_an_endpoint_name(host: str, region: str | None) -> None:
    assert region_from_host(host) == region


@pytest.mark.parametrize(
    ("secret_id", "region"),
    [
        ("arn:aws:secretsmanager:eu-central-1:123456789012:secret:db-AbCdEf", "eu-central-1"),
        ("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:db-AbCdEf", "cn-north-1"),
        ("arn:aws-us-gov:secretsmanager:us-gov-east-1:123456789012:secret:db", "us-gov-east-1"),
        ("prod/db", None),
    ],
)
def test_region_from_a_secret_arn(secret_id: str, region: str | None) -> None:
    assert region_from_arn(secret_id) == region


def test_region_order_argument_then_endpoint_then_boto3() -> None:
    rds_host = "mydb.c9akciq32.eu-west-1.rds.amazonaws.com"
    assert RdsIamToken("ap-south-1", session=session()).region_for(target(host=rds_host)) == "ap-south-1"
    assert RdsIamToken(session=session()).region_for(target(host=rds_host)) == "eu-west-1"
    assert RdsIamToken(signing_host=rds_host, session=session()).region_for(target()) == "eu-west-1"
    assert RdsIamToken(session=session()).region_for(target()) == "us-east-1"


def test_no_region_anywhere_is_improperly_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto's fixture (integration tests) sets a default region for the session.
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    source = RdsIamToken(session=session(region=None))
    with pytest.raises(ImproperlyConfigured, match="region") as info:
        source.check_target(target())
    assert "'orders'" in str(info.value)
    with pytest.raises(ImproperlyConfigured, match="region"):
        SecretsManagerSecret("prod/db", session=session(region=None)).check_target(target())


def test_user_and_host_are_required() -> None:
    source = RdsIamToken(session=session())
    with pytest.raises(ImproperlyConfigured, match="USER"):
        source.check_target(target(user=""))
    with pytest.raises(ImproperlyConfigured, match="HOST"):
        source.check_target(target(host=""))


@pytest.mark.parametrize(
    ("vendor", "options", "outcome"),
    [
        ("postgresql", {}, "refused"),
        ("postgresql", {"sslmode": "prefer"}, "refused"),
        ("postgresql", {"sslmode": "allow"}, "refused"),
        ("postgresql", {"sslmode": "require"}, "warned"),
        ("postgresql", {"sslmode": "verify-ca", "sslrootcert": "/ca"}, "ok"),
        ("postgresql", {"sslmode": "verify-full", "sslrootcert": "/ca"}, "ok"),
        ("mysql", {}, "refused"),
        ("mysql", {"ssl_mode": "PREFERRED"}, "refused"),
        ("mysql", {"ssl": {"ca": "/ca"}, "ssl_mode": "DISABLED"}, "refused"),
        ("mysql", {"ssl_mode": "REQUIRED"}, "warned"),
        ("mysql", {"ssl": {"cert": "/c", "key": "/k"}}, "warned"),
        ("mysql", {"ssl": {"ca": "/ca"}, "ssl_mode": "REQUIRED"}, "warned"),
        ("mysql", {"ssl": {"ca": "/ca"}}, "ok"),
        ("mysql", {"ssl": {"ca": "/ca"}, "ssl_mode": "VERIFY_IDENTITY"}, "ok"),
    ],
)
def test_tls_must_be_mandatory_for_tokens(
    vendor: str, options: dict[str, Any], outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = RdsIamToken(session=session())
    caplog.set_level(logging.WARNING, logger="iamdb")
    if outcome == "refused":
        with pytest.raises(ImproperlyConfigured, match="TLS") as info:
            source.check_target(target(vendor, options))
        assert "'orders'" in str(info.value) and "RdsIamToken" in str(info.value)
        return
    source.check_target(target(vendor, options))
    warned = "does not verify" in caplog.text
    assert warned == (outcome == "warned")


def test_the_insecure_opt_out_warns(caplog: pytest.LogCaptureFixture) -> None:
    source = RdsIamToken(session=session(), allow_insecure_transport=True)
    source.check_target(target(options={}))
    assert "without mandatory TLS" in caplog.text


def test_tokens_are_cached_per_endpoint_and_user() -> None:
    source = RdsIamToken(session=session())
    a = source.get_password(target())
    assert source.get_password(target()) == a
    b = source.get_password(target(user="other"))
    c = source.get_password(target(port=5433))
    assert len({a, b, c}) == 3
    assert "DBUser=other" in b and ":5433/" in c
    assert source._cache.fetches == 3


def test_a_token_lives_15_minutes_and_never_past_the_aws_credentials() -> None:
    clock = [1_000_000.0]
    source = RdsIamToken(session=session(), clock=lambda: clock[0])
    assert source.get_credentials(target()).expires_at == clock[0] + 900
    # Temporary credentials that end in 12 minutes bound the token (botocore itself
    # refreshes them once less than 10 minutes are left).
    botocore_session = botocore.session.Session()
    ends = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=12)
    same = {"access_key": "AKIDTEMP", "secret_key": "secret", "token": "t", "expiry_time": ends.isoformat()}
    botocore_session._credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
        same, refresh_using=lambda: same, method="test"
    )
    temporary = boto3.session.Session(botocore_session=botocore_session, region_name="us-east-1")
    source = RdsIamToken(session=temporary, clock=lambda: clock[0])
    credential = source.get_credentials(target())
    assert credential.expires_at is not None
    assert 700 < credential.expires_at - clock[0] <= 720


def test_no_aws_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    source = RdsIamToken("us-east-1", session=boto3.session.Session())
    with pytest.raises(CredentialError) as info:
        source.get_credentials(target())
    message = str(info.value)
    assert (
        "'orders'" in message and "no AWS credentials found" in message and "app@db.internal:5432" in message
    )
    assert info.value.__cause__ is None  # not a botocore traceback


def test_one_client_per_service_region_and_session() -> None:
    own = session()
    assert _aws.client("rds", "us-east-1", own) is _aws.client("rds", "us-east-1", own)
    assert _aws.client("rds", "eu-west-1", own) is not _aws.client("rds", "us-east-1", own)
    assert _aws.client("rds", "us-east-1", session()) is not _aws.client("rds", "us-east-1", own)


def test_a_forked_child_makes_its_own_client() -> None:
    own = session()
    parent_client = _aws.client("rds", "us-east-1", own)
    source = RdsIamToken(session=own)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            ok = not _aws._clients and _aws.client("rds", "us-east-1", own) is not parent_client
            ok = ok and source.cached(target()) is None and "DBUser=app" in source.get_password(target())
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)
    assert _aws.client("rds", "us-east-1", own) is parent_client


def test_sources_survive_pickling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    source = RdsIamToken("us-east-1", signing_host="mydb.x.us-east-1.rds.amazonaws.com")
    token = source.get_password(target())
    copy = pickle.loads(pickle.dumps(source))
    assert copy.cached(target()) is None  # no token travels
    assert token not in repr(pickle.dumps(source))
    assert copy.describe() == source.describe()
    named = pickle.loads(pickle.dumps(RdsIamToken(session=boto3.session.Session(region_name="eu-west-1"))))
    assert named._session is not None
    secret = pickle.loads(pickle.dumps(SecretsManagerSecret("prod/db", region="eu-west-1", ttl=60)))
    assert (secret.secret_id, secret.region, secret.ttl) == ("prod/db", "eu-west-1", 60)


def test_describe_and_repr_hold_no_secret() -> None:
    source = RdsIamToken("eu-west-1", signing_host="db.example", signing_port=6432, session=session())
    assert repr(source) == "RdsIamToken('eu-west-1', signing_host='db.example', signing_port=6432)"
    assert str(SecretsManagerSecret("prod/db")) == "SecretsManagerSecret('prod/db')"


@pytest.mark.parametrize("bad", [{"ttl": 0}, {"ttl": -1}, {"secret_id": ""}])
def test_bad_secrets_manager_arguments(bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"secret_id": "prod/db", **bad}
    with pytest.raises(ImproperlyConfigured):
        SecretsManagerSecret(**kwargs)


def test_without_boto3_the_error_names_the_extra() -> None:
    code = "import sys; sys.modules['boto3'] = None\nfrom iamdb.sources import RdsIamToken\n"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode != 0
    assert "MissingDependencyError" in result.stderr and 'pip install "iamdb[aws]"' in result.stderr


def test_importing_the_rds_source_enables_the_mysql_cleartext_plugin() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN"}
    code = "import os, iamdb.sources.rds; print(os.environ['LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN'])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.stdout.strip() == "1", result.stderr
