"""AuroraDsqlToken without a database: regions, arguments, actions, lifetimes, errors, copies."""

from __future__ import annotations

import copy
import datetime
import logging
import os
import pickle
import time
import urllib.parse
from types import MappingProxyType
from typing import Any

import boto3
import botocore.credentials
import botocore.exceptions
import botocore.session
import pytest
from django.core.exceptions import ImproperlyConfigured

from iamdb import CredentialError, Target
from iamdb.sources import AuroraDsqlToken, _aws
from iamdb.sources.dsql import region_from_host
from tests.fakeclock import FakeClock
from tests.unit.test_aws_sources import in_forked_child

CLUSTER = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
TLS = {"sslmode": "verify-full", "sslrootcert": "/ca.pem", "hostaddr": "10.0.0.1"}


def session(region: str | None = "us-east-1", **kwargs: Any) -> Any:
    return boto3.session.Session(
        aws_access_key_id="AKIDTEST", aws_secret_access_key="secret", region_name=region, **kwargs
    )


def target(vendor: str = "postgresql", options: dict[str, Any] | None = None, **kw: Any) -> Target:
    values: dict[str, Any] = {
        "alias": "orders",
        "vendor": vendor,
        "host": CLUSTER,
        "port": 5432,
        "user": "app",
    }
    values.update(kw)
    return Target(options=MappingProxyType(TLS if options is None else options), **values)


def query(token: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(token.partition("/?")[2]))


@pytest.mark.parametrize(
    ("host", "region"),
    [
        (CLUSTER, "us-east-1"),
        ("a1b2c3.dsql.eu-west-2.on.aws", "eu-west-2"),
        ("A1B2C3.DSQL.AP-NORTHEAST-1.ON.AWS.", "ap-northeast-1"),
        ("a1b2c3.dsql-fnh4.us-east-2.on.aws", "us-east-2"),
        ("db.internal", None),
        ("10.0.0.1", None),
        ("mydb.c9akciq32.us-east-1.rds.amazonaws.com", None),
        ("a1b2c3.dsql.us-east-1.on.aws.example.com", None),
    ],
)
def test_region_from_a_cluster_endpoint_name(host: str, region: str | None) -> None:
    assert region_from_host(host) == region


def test_dsql_region_order_argument_then_endpoint_then_boto3() -> None:
    other = "a1b2c3.dsql.eu-west-2.on.aws"
    assert AuroraDsqlToken("ap-south-1", session=session()).region_for(target()) == "ap-south-1"
    assert AuroraDsqlToken(session=session()).region_for(target()) == "us-east-1"
    assert AuroraDsqlToken(session=session("eu-west-3")).region_for(target(host=other)) == "eu-west-2"
    assert AuroraDsqlToken(signing_host=other, session=session()).region_for(target()) == "eu-west-2"
    assert AuroraDsqlToken(session=session("eu-west-3")).region_for(target(host="db.internal")) == "eu-west-3"


def test_no_region_anywhere_names_the_alias_and_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    source = AuroraDsqlToken(session=session(region=None))
    with pytest.raises(ImproperlyConfigured) as info:
        source.check_target(target(host="db.internal"))
    message = str(info.value)
    assert (
        "'orders'" in message and "AuroraDsqlToken()" in message and "cannot tell the AWS region" in message
    )
    assert "<id>.dsql.<region>.on.aws" in message


def test_admin_gets_db_connect_admin_tokens_and_every_other_role_db_connect() -> None:
    """Signed as boto3 signs them: the cluster name with no port, no user, service dsql."""
    source = AuroraDsqlToken(session=session())
    admin = source.get_password(target(user="admin"))
    app = source.get_password(target(user="app"))
    assert admin.startswith(f"{CLUSTER}/?Action=DbConnectAdmin&")
    assert app.startswith(f"{CLUSTER}/?Action=DbConnect&")
    for token in (admin, app):
        params = query(token)
        assert params["X-Amz-Credential"].endswith("/us-east-1/dsql/aws4_request")
        assert params["X-Amz-Expires"] == "900" and "DBUser" not in params and ":5432" not in token
    assert source._cache.fetches == 2
    assert source.get_password(target(user="app")) == app  # cached


def test_expires_in_is_signed_and_is_the_tokens_lifetime() -> None:
    clock = FakeClock(wall=1_700_000_000.0)  # a whole second: X-Amz-Date cuts nothing
    source = AuroraDsqlToken(expires_in=3600, session=session(), clock=clock)
    credential = source.get_credentials(target())
    assert query(credential.password)["X-Amz-Expires"] == "3600"
    assert credential.issued_at == clock.time() and credential.expires_at == clock.time() + 3600
    # X-Amz-Date holds whole seconds: a token signed at .75 s ends 3599.25 s later.
    clock = FakeClock(wall=1_700_000_000.75)
    late = AuroraDsqlToken(expires_in=3600, session=session(), clock=clock).get_credentials(target())
    assert late.expires_at == pytest.approx(clock.time() + 3599.25)


def test_a_token_never_outlives_the_aws_credentials_that_signed_it() -> None:
    botocore_session = botocore.session.Session()
    clock = FakeClock(wall=time.time())
    ends = datetime.datetime.fromtimestamp(clock.time() + 12 * 60, datetime.timezone.utc)
    same = {"access_key": "AKIDTEMP", "secret_key": "secret", "token": "t", "expiry_time": ends.isoformat()}
    botocore_session._credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(  # type: ignore[attr-defined]
        same, refresh_using=lambda: same, method="test"
    )
    temporary = boto3.session.Session(botocore_session=botocore_session, region_name="us-east-1")
    credential = AuroraDsqlToken(expires_in=3600, session=temporary, clock=clock).get_credentials(target())
    assert credential.expires_at is not None
    assert 719 < credential.expires_at - clock.time() < 721  # not 3600
    assert query(credential.password)["X-Amz-Security-Token"] == "t"


def test_a_mysql_engine_is_improperly_configured() -> None:
    source = AuroraDsqlToken(session=session())
    with pytest.raises(ImproperlyConfigured) as info:
        source.check_target(target("mysql", {"ssl": {"ca": "/ca"}}))
    message = str(info.value)
    assert "'orders'" in message and "AuroraDsqlToken()" in message
    assert "PostgreSQL only" in message and "iamdb.backends.postgresql" in message


@pytest.mark.parametrize(
    ("options", "outcome"),
    [
        ({}, "refused"),
        ({"hostaddr": "10.0.0.1"}, "refused"),
        ({"sslmode": "prefer"}, "refused"),
        ({"sslmode": "disable"}, "refused"),
        ({"sslmode": "require"}, "warned"),
        ({"sslmode": "verify-full", "sslrootcert": "/ca"}, "ok"),
    ],
)
def test_tls_is_mandatory_for_dsql_tokens(
    options: dict[str, Any], outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = AuroraDsqlToken(session=session())
    caplog.set_level(logging.WARNING, logger="iamdb")
    if outcome == "refused":
        with pytest.raises(ImproperlyConfigured, match="TLS") as info:
            source.check_target(target(options=options))
        assert "'orders'" in str(info.value) and "AuroraDsqlToken()" in str(info.value)
        return
    source.check_target(target(options=options))
    assert ("does not verify" in caplog.text) == (outcome == "warned")


def test_the_dsql_insecure_opt_out_warns(caplog: pytest.LogCaptureFixture) -> None:
    AuroraDsqlToken(session=session(), allow_insecure_transport=True).check_target(target(options={}))
    assert "without mandatory TLS" in caplog.text


def test_dsql_user_and_host_are_required() -> None:
    source = AuroraDsqlToken(session=session())
    with pytest.raises(ImproperlyConfigured, match="USER"):
        source.check_target(target(user=""))
    with pytest.raises(ImproperlyConfigured, match="HOST"):
        source.check_target(target(host=""))


BAD_ARGUMENTS = [
    ("region", ""),
    ("region", "EU WEST"),
    ("region", 1),
    ("expires_in", 0),
    ("expires_in", -1),
    ("expires_in", 604801),
    ("expires_in", 1.5),
    ("expires_in", float("nan")),
    ("expires_in", float("inf")),
    ("expires_in", True),
    ("expires_in", "900"),
    ("expires_in", None),
    ("signing_host", ""),
    ("signing_host", "a b"),
    ("signing_host", 1),
    ("session", object()),
    ("allow_insecure_transport", 1),
    ("refresh", {"advisory": 0.5}),
    ("clock", object()),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS)
def test_bad_dsql_arguments_are_named(name: str, value: Any) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        AuroraDsqlToken(**{name: value})
    assert str(info.value).startswith(f"AuroraDsqlToken: {name} must be "), str(info.value)


def test_good_arguments_are_kept_and_described_without_secrets() -> None:
    source = AuroraDsqlToken("eu-west-1", expires_in=604800.0, signing_host=CLUSTER, session=session())
    assert (source.region, source.expires_in, source.signing_host) == ("eu-west-1", 604800, CLUSTER)
    assert repr(source) == f"AuroraDsqlToken('eu-west-1', expires_in=604800, signing_host='{CLUSTER}')"
    assert repr(AuroraDsqlToken(expires_in=1)) == "AuroraDsqlToken(expires_in=1)"
    assert AuroraDsqlToken.token_per_fetch is True


def test_dsql_without_aws_credentials_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    source = AuroraDsqlToken(session=boto3.session.Session())
    with pytest.raises(CredentialError) as info:
        source.get_credentials(target(user="admin"))
    message = str(info.value)
    assert "'orders'" in message and "AuroraDsqlToken()" in message and "no AWS credentials found" in message
    assert f"admin@{CLUSTER} (DbConnectAdmin) in us-east-1" in message
    assert isinstance(info.value.__cause__, botocore.exceptions.NoCredentialsError)
    assert info.value.__cause__.__traceback__ is None


def test_dsql_source_survives_deepcopy_pickle_and_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    own = session()
    source = AuroraDsqlToken("us-east-1", expires_in=600, session=own)
    token = source.get_password(target())
    assert copy.deepcopy(source) is source  # as Django deep-copies DATABASES
    unpickled = pickle.loads(pickle.dumps(source))
    assert token not in repr(pickle.dumps(source))
    assert unpickled.cached(target()) is None and unpickled.describe() == source.describe()
    assert unpickled.aws_session().region_name == "us-east-1"
    assert query(unpickled.get_password(target()))["X-Amz-Expires"] == "600"
    parent_client = _aws.client("dsql", "us-east-1", own)

    def child() -> str:
        # The cached token is kept; the session and clients are the child's own.
        fresh = _aws.client("dsql", "us-east-1", source.aws_session()) is not parent_client
        kept = source.get_password(target()) == token
        return f"{fresh} {kept} {source.aws_session() is not own}"

    assert in_forked_child(child) == "ok True True True"


def test_system_checks_report_a_mysql_engine_and_settings_without_tls() -> None:
    from iamdb.checks import check_database

    def ids(engine: str, options: dict[str, Any]) -> list[str]:
        entry = {
            "ENGINE": engine,
            "HOST": CLUSTER,
            "USER": "admin",
            "PASSWORD": AuroraDsqlToken(),
            "OPTIONS": options,
        }
        return [str(message.id) for message in check_database("orders", entry)]

    assert ids("iamdb.backends.postgresql", TLS) == []
    assert "iamdb.E005" in ids("iamdb.backends.mysql", {"ssl": {"ca": "/ca"}})
    assert ids("iamdb.backends.postgresql", {"hostaddr": "10.0.0.1"}) == ["iamdb.E010"]


def test_dsql_tokens_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = AuroraDsqlToken(session=session()).get_password(target())
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "botocore.auth" in {record.name for record in caplog.records}  # botocore logged what it signed
    assert token.rsplit("X-Amz-Signature=", 1)[1] not in logged


def test_the_emulators_checker_verifies_dsql_tokens_as_dsql_does(capsys: pytest.CaptureFixture[str]) -> None:
    """tests/services/sigv4_checker.py, which the emulated cluster runs at each login."""
    from tests.services import sigv4_checker

    config = {"keys": {"AKIDTEST": "secret"}, "hosts": [], "dsql_hosts": [CLUSTER], "region": "us-east-1"}
    client = session().client("dsql", region_name="us-east-1")

    def reason(token: str, user: str = "app", *, later: float = 0, **extra: Any) -> str:
        try:
            sigv4_checker.check(token, user, {**config, **extra}, time.time() + later)
        except SystemExit:
            return capsys.readouterr().err.split("refused: ", 1)[1].strip()
        return "accepted"

    token = client.generate_db_connect_auth_token(Hostname=CLUSTER, Region="us-east-1", ExpiresIn=60)
    admin = client.generate_db_connect_admin_auth_token(Hostname=CLUSTER, Region="us-east-1")
    assert reason(token) == "accepted" and reason(admin, "admin") == "accepted"
    assert reason(admin, "app").startswith("DbConnectAdmin is for the role admin only")
    assert reason(token, "admin").startswith("DbConnectAdmin is for the role admin only")
    assert reason(token, later=62) == "expired"  # X-Amz-Expires
    assert reason(token, later=10, max_age=5) == "expired"  # the emulator's max age
    assert reason(token.replace("Action=DbConnect&", "Action=DbConnect&DBUser=app&")).startswith(
        "a DSQL token"
    )
    with_port = client.generate_db_connect_auth_token(Hostname=CLUSTER + ":5432", Region="us-east-1")
    assert reason(with_port).startswith("a DSQL token names no port")
    other = client.generate_db_connect_auth_token(Hostname=CLUSTER.replace("abc", "xyz"), Region="us-east-1")
    assert reason(other) == "signed for another cluster endpoint"
    assert reason(token.replace("Action=DbConnect&", "Action=DbConnectAdmin&"), "admin") == "bad signature"
    rds = session().client("rds", region_name="us-east-1")
    as_rds = rds.generate_db_auth_token(DBHostname=CLUSTER, Port=5432, DBUsername="app")
    assert reason(as_rds, hosts=[f"{CLUSTER}:5432"]) == "accepted"  # RDS tokens are still checked as before
    week = client.generate_db_connect_auth_token(Hostname=CLUSTER, Region="us-east-1", ExpiresIn=604801)
    assert reason(week) == "X-Amz-Expires out of range"
