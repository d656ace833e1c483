"""The AWS sources without a database: regions, settings checks, token lifetimes, errors, pickling."""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from types import MappingProxyType
from typing import Any

import boto3
import botocore.credentials
import botocore.exceptions
import botocore.session
import pytest
from django.core.exceptions import ImproperlyConfigured

from iamdb import CredentialError, Target
from iamdb.deadline import Deadline
from iamdb.sources import RdsIamToken, SecretsManagerSecret, _aws
from iamdb.sources.rds import region_from_host
from iamdb.sources.secretsmanager import region_from_arn
from tests.fakeclock import FakeClock

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
    # The wall clock is the real one's, as botocore's temporary credentials are.
    clock = FakeClock(wall=time.time())
    source = RdsIamToken(session=session(), clock=clock)
    credential = source.get_credentials(target())
    assert credential.issued_at == clock.time() and credential.expires_at == clock.time() + 900
    # Temporary credentials that end in 12 minutes bound the token (botocore itself
    # refreshes them once less than 10 minutes are left).
    botocore_session = botocore.session.Session()
    clock = FakeClock(wall=time.time())
    ends = datetime.datetime.fromtimestamp(clock.time() + 12 * 60, datetime.timezone.utc)
    same = {"access_key": "AKIDTEMP", "secret_key": "secret", "token": "t", "expiry_time": ends.isoformat()}
    botocore_session._credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
        same, refresh_using=lambda: same, method="test"
    )
    temporary = boto3.session.Session(botocore_session=botocore_session, region_name="us-east-1")
    source = RdsIamToken(session=temporary, clock=clock)
    credential = source.get_credentials(target())
    assert credential.expires_at is not None
    assert 719 < credential.expires_at - clock.time() < 721  # not 900


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
    # botocore's exception is the cause, without its frames (which hold what was signed).
    assert isinstance(info.value.__cause__, botocore.exceptions.NoCredentialsError)
    assert info.value.__cause__.__traceback__ is None


def test_one_client_per_service_region_and_session() -> None:
    own = session()
    assert _aws.client("rds", "us-east-1", own) is _aws.client("rds", "us-east-1", own)
    assert _aws.client("rds", "eu-west-1", own) is not _aws.client("rds", "us-east-1", own)
    assert _aws.client("rds", "us-east-1", session()) is not _aws.client("rds", "us-east-1", own)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
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
    assert named.aws_session().region_name == "eu-west-1"
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


# -- fork while a lock is held (issue 7) ---------------------------------------------------


def in_forked_child(func: Any, timeout: float = 15.0) -> str:
    """Fork; run ``func`` in the child and return what it reported: ``"ok <result>"``,
    ``"error <type>: <message>"``, or ``"hung"`` if it did not finish within ``timeout``."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a threaded process may deadlock: the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            try:
                report = f"ok {func()}"
            except BaseException as exc:
                report = f"error {type(exc).__name__}: {exc}"
            os.write(write, report.encode()[:4000])
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + timeout
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hung"
            time.sleep(0.02)
        return os.read(read, 4096).decode()
    finally:
        os.close(read)


class Blocker:
    """Makes a helper thread block inside a hook, only in this (the parent) process."""

    def __init__(self) -> None:
        self.parent = os.getpid()
        self.entered = threading.Event()
        self.release = threading.Event()

    def block(self) -> None:
        if os.getpid() == self.parent:
            self.entered.set()
            self.release.wait(30)

    def fork_while_inside(self, call: Any, child: Any) -> str:
        """Start ``call`` in a thread, fork once it blocks in the hook, run ``child`` there."""
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        try:
            assert self.entered.wait(10), "the helper thread never reached the hook"
            return in_forked_child(child)
        finally:
            self.release.set()
            thread.join(10)

    def patch(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        """Make ``owner.name(...)`` block in the parent before doing its work."""
        real = getattr(owner, name)

        def blocking(*args: Any, **kwargs: Any) -> Any:
            self.block()
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, blocking)


def environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys and region for boto3's default chain (iamdb's own default Session)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")


def test_fork_while_another_thread_creates_the_aws_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module lock is held while a client is made: the child makes its own."""
    own = session()
    source = RdsIamToken(session=own)
    blocker = Blocker()
    blocker.patch(monkeypatch, own, "client")
    report = blocker.fork_while_inside(
        lambda: source.get_password(target()), lambda: "DBUser=app" in source.get_password(target())
    )
    assert report == "ok True"


def test_fork_while_another_thread_creates_the_default_session(monkeypatch: pytest.MonkeyPatch) -> None:
    environment_credentials(monkeypatch)
    monkeypatch.setattr(_aws, "_default_session", None)
    source = RdsIamToken()
    blocker = Blocker()
    blocker.patch(monkeypatch, boto3.session, "Session")
    report = blocker.fork_while_inside(
        lambda: source.get_password(target()), lambda: "eu-west-1" in source.get_password(target())
    )
    assert report == "ok True"


def test_the_cached_token_path_takes_no_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """region=None and a HOST that is not an endpoint name: boto3's region, found once."""
    environment_credentials(monkeypatch)
    source = RdsIamToken()
    token = source.get_password(target())
    got: list[str] = []
    with _aws._lock:  # held, as by a thread stuck creating a client
        thread = threading.Thread(target=lambda: got.append(source.get_password(target())), daemon=True)
        thread.start()
        thread.join(5)
        assert got == [token]
        assert in_forked_child(lambda: source.get_password(target()) == token) == "ok True"


def credential_process_profile(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, minutes: float) -> str:
    """A profile whose temporary credentials come from a process and end in ``minutes``:
    botocore refreshes them (under its lock) on every use in their last 10 minutes."""
    script = tmp_path / "credentials.py"
    script.write_text(
        "import datetime, json\n"
        f"end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes={minutes!r})\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': 'AKIDPROC', 'SecretAccessKey': 's',\n"
        "                  'SessionToken': 't', 'Expiration': end.isoformat()}))\n"
    )
    config = tmp_path / "config"
    config.write_text(
        f"[profile iamdbproc]\ncredential_process = {sys.executable} {script}\nregion = eu-west-2\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    # The profile's region, not one that another test's services put in the environment.
    for name in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return "iamdbproc"


def test_fork_while_another_thread_refreshes_the_sessions_credentials(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Session passed by the user is re-created from its profile and region in the child."""
    profile = credential_process_profile(tmp_path, monkeypatch, minutes=5)
    own = boto3.session.Session(profile_name=profile)
    source = RdsIamToken(session=own)
    assert "AKIDPROC" in source.get_password(target())
    held = own.get_credentials()._refresh_lock
    blocker = Blocker()

    def refreshing() -> None:
        with held:
            blocker.block()

    report = blocker.fork_while_inside(refreshing, lambda: source.get_password(target(user="other")))
    assert report.startswith("ok ") and "AKIDPROC" in report and "DBUser=other" in report, report
    assert "eu-west-2" in report


def test_a_forked_child_keeps_the_keys_of_the_session_it_was_given() -> None:
    source = RdsIamToken(session=session(region="ap-south-1"))
    report = in_forked_child(lambda: source.get_password(target()))
    assert report.startswith("ok ") and "AKIDTEST" in report and "ap-south-1" in report, report


# -- constructor arguments (issue 7) -------------------------------------------------------

RDS_BAD_ARGUMENTS = [
    ("region", ""),
    ("region", " "),
    ("region", 42),
    ("region", "eu west 1"),
    ("signing_host", ""),
    ("signing_host", 10),
    ("signing_host", "db .example"),
    ("signing_port", 0),
    ("signing_port", 65536),
    ("signing_port", True),
    ("signing_port", "5432"),
    ("session", "default"),
    ("session", botocore.session.Session()),
    ("allow_insecure_transport", "false"),
    ("allow_insecure_transport", 1),
    ("refresh", {"advisory": 0.5}),
    ("clock", object()),
]


@pytest.mark.parametrize(("name", "value"), RDS_BAD_ARGUMENTS)
def test_bad_rds_arguments_are_named(name: str, value: Any) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        RdsIamToken(**{name: value})
    message = str(info.value)
    assert message.startswith(f"RdsIamToken: {name} must be "), message


SECRETS_BAD_ARGUMENTS = [
    ("secret_id", ""),
    ("secret_id", "  "),
    ("secret_id", None),
    ("secret_id", 5),
    ("secret_id", "prod db"),
    ("region", ""),
    ("region", 1),
    ("version_stage", ""),
    ("version_stage", None),
    ("username_key", ""),
    ("password_key", ""),
    ("password_key", 0),
    ("ttl", 0),
    ("ttl", -1),
    ("ttl", float("nan")),
    ("ttl", float("inf")),
    ("ttl", True),
    ("ttl", "300"),
    ("ttl", None),
    ("session", object()),
    ("refresh", 1),
    ("clock", "now"),
]


@pytest.mark.parametrize(("name", "value"), SECRETS_BAD_ARGUMENTS)
def test_bad_secrets_manager_arguments_are_named(name: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"secret_id": "prod/db", name: value}
    with pytest.raises(ImproperlyConfigured) as info:
        SecretsManagerSecret(**kwargs)
    message = str(info.value)
    assert message.startswith(f"SecretsManagerSecret: {name} must be "), message


def test_a_region_that_contradicts_the_arn() -> None:
    arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:db-AbCdEf"
    with pytest.raises(ImproperlyConfigured, match="region must be"):
        SecretsManagerSecret(arn, region="us-east-1")
    assert SecretsManagerSecret(arn, region="eu-central-1").region == "eu-central-1"


def test_good_arguments_are_kept() -> None:
    source = RdsIamToken(
        "eu-west-1", signing_host="db.example", signing_port=6432, allow_insecure_transport=True
    )
    assert (source.region, source.signing_host, source.signing_port) == ("eu-west-1", "db.example", 6432)
    assert SecretsManagerSecret("prod/db", ttl=1).ttl == 1.0


# -- the per-target work is done once (issue 7) --------------------------------------------


def test_the_endpoint_name_is_parsed_once_per_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from iamdb.sources import rds

    calls: list[str] = []
    real = rds.region_from_host

    def counted(host: str) -> str | None:
        calls.append(host)
        return real(host)

    monkeypatch.setattr(rds, "region_from_host", counted)
    source = RdsIamToken(session=session())
    rds_host = "mydb.c9akciq32.eu-west-1.rds.amazonaws.com"
    tokens = {source.get_password(target(host=rds_host)) for _ in range(5)}
    assert len(tokens) == 1 and "eu-west-1" in tokens.pop()
    other = source.get_password(target(host=rds_host, user="other"))
    assert "DBUser=other" in other
    assert len(calls) <= 2, calls


# -- deadlines (issue 7) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "seconds", "attempts"),
    [(0.5, 1.0, 1), (1.0, 1.0, 1), (1.5, 1.0, 2), (3.0, 2.5, 2), (7.0, 3.0, 3), (None, 3.0, 3), (60, 3.0, 3)],
)
def test_clients_fit_the_time_the_caller_has_left(
    budget: float | None, seconds: float, attempts: int
) -> None:
    config = _aws.client("secretsmanager", "us-east-1", session(), budget=budget).meta.config
    assert config.read_timeout == seconds
    assert config.connect_timeout <= seconds
    assert config.retries == {"mode": "standard", "total_max_attempts": attempts}
    # Within its bucket, attempts x timeout fits the time rounded up to the bucket.
    bucket = _aws.bucket_for(_aws.CALL_TIMEOUT if budget is None else budget)
    assert attempts * seconds <= bucket.budget


def test_a_lock_wait_ends_at_the_deadline() -> None:
    """A thread stuck while holding the AWS lock delays others until their deadline, no more."""
    source = RdsIamToken(session=session())
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            source.get_credentials(target(), deadline=Deadline.after(0.5))
        except CredentialError as exc:
            errors.append(exc)

    with _aws._lock:
        thread = threading.Thread(target=connect, daemon=True)
        started = time.monotonic()
        thread.start()
        thread.join(5)
        elapsed = time.monotonic() - started
    assert not thread.is_alive() and len(errors) == 1
    assert "another thread creating an AWS client" in str(errors[0]) and "'orders'" in str(errors[0])
    assert elapsed < 0.5 + 1.5


# -- errors (issue 7) ------------------------------------------------------------------------


def test_an_iamdb_bug_is_not_reported_as_an_aws_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only botocore's exceptions are translated; anything else surfaces as what it is."""

    def broken(session: Any = None) -> float:
        raise RuntimeError("a bug of iamdb's")

    monkeypatch.setattr(_aws, "credentials_expiry", broken)
    with pytest.raises(CredentialError) as info:
        RdsIamToken(session=session()).get_credentials(target())
    assert "could not sign a token" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


# -- one clock (issue 7) ---------------------------------------------------------------------


def test_a_token_outlives_a_wall_clock_step() -> None:
    """Token times are written on the wall clock; the engine decides on monotonic time."""
    clock = FakeClock()
    source = RdsIamToken(session=session(), clock=clock)
    credential = source.get_credentials(target())
    assert credential.issued_at == clock.time() and credential.expires_at == clock.time() + 900
    clock.step_wall(3600)  # NTP moves the wall clock an hour: the token is not over
    assert source.get_password(target()) == credential.password
    clock.step_wall(-7200)
    assert source.get_password(target()) == credential.password
    assert source._cache.fetches == 1
    clock.advance(900)  # 15 minutes on the monotonic clock: a new token
    assert source.get_credentials(target()).issued_at == clock.time()
    assert source._cache.fetches == 2


def test_refused_passwords_are_remembered_on_the_monotonic_clock() -> None:
    clock = FakeClock()
    source = SecretsManagerSecret("prod/db", region="eu-west-1", clock=clock)
    source.invalidate(target(), password="pw-refused-by-the-server")
    assert source._was_refused("pw-refused-by-the-server")
    assert not source._was_refused("pw-another-one")
    clock.step_wall(-3600)
    assert source._was_refused("pw-refused-by-the-server")
    clock.step_wall(7200)
    assert source._was_refused("pw-refused-by-the-server")
    clock.advance(121)  # REFUSED_MEMORY is 120 s
    assert not source._was_refused("pw-refused-by-the-server")
    for n in range(10):  # the memory is bounded
        source.invalidate(target(), password=f"pw-refused-number-{n}")
    assert len(source._refused) == 8 and source._was_refused("pw-refused-number-9")


def test_a_token_is_renewed_from_11_minutes_in_the_background_and_by_everyone_from_13() -> None:
    clock = FakeClock()
    source = RdsIamToken(session=session(), clock=clock)
    refreshes: list[Any] = []
    source._cache._spawn = refreshes.append  # the background refreshes, run when the test says
    first = source.get_credentials(target())
    clock.advance(11 * 60 + 14)
    assert source.get_credentials(target()) is first and refreshes == []
    clock.advance(2)  # 11 1/4 minutes: the token is still handed out, a refresh is started
    assert source.get_credentials(target()) is first and len(refreshes) == 1
    clock.advance(2 * 60 + 15)  # 13 1/2 minutes: callers wait for a new token
    renewed = source.get_credentials(target())
    assert renewed is not first and renewed.issued_at == clock.time()


def test_mysqldb_on_oracles_library_imported_first_is_refused() -> None:
    """Oracle's libmysqlclient reads LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN once, as it loads."""
    code = (
        "import MySQLdb, boto3\n"
        "from types import MappingProxyType\n"
        "from iamdb import Target\n"
        "from iamdb.sources import rds\n"
        "target = Target(alias='orders', vendor='mysql', host='db', user='app',\n"
        "                options=MappingProxyType({'ssl': {'ca': '/ca.pem'}}))\n"
        "source = rds.RdsIamToken('us-east-1', session=boto3.session.Session(\n"
        "    aws_access_key_id='AKIDTEST', aws_secret_access_key='secret'))\n"
        "source.check_target(target)  # MariaDB Connector/C (this machine): fine\n"
        "rds._mariadb_client = lambda: False  # as if MySQLdb were built on Oracle's library\n"
        "try:\n"
        "    source.check_target(target)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    assert result.stdout.startswith("ConfigurationError "), result.stderr
    assert "'orders'" in result.stdout and "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1" in result.stdout
