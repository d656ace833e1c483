"""CloudSqlIamToken and AzureEntraToken without a network: arguments, settings checks, expiry
tracking with a fake clock, errors, pickling. (Against the stand-ins: tests/integration.)"""

from __future__ import annotations

import copy
import datetime
import pickle
import threading
import time
from types import MappingProxyType
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from django.core.exceptions import ImproperlyConfigured

from iamdb import CredentialError, Target
from iamdb.clock import SYSTEM_CLOCK
from iamdb.deadline import Deadline, scope
from iamdb.sources import AzureEntraToken, CloudSqlIamToken, cloudsql
from iamdb.sources import azure as azure_module
from tests.fakeclock import FakeClock, run_now

TLS = {
    "postgresql": {"sslmode": "verify-full", "sslrootcert": "/ca.pem"},
    "mysql": {"ssl": {"ca": "/ca.pem"}, "ssl_mode": "VERIFY_IDENTITY"},
}


def target(vendor: str = "postgresql", user: str = "app", options: dict[str, Any] | None = None) -> Target:
    return Target(
        alias="orders",
        vendor=vendor,
        host="10.0.0.5",
        port=5432,
        user=user,
        options=MappingProxyType(TLS[vendor] if options is None else options),
    )


class FakeMsal:
    """What azure-identity does with a managed identity: the cached token is handed back
    until 5 minutes before its end, then a new one is fetched (``calls`` counts both)."""

    def __init__(self, clock: Any, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.issued = 0
        self.cached: AccessToken | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        now = self.clock.time()
        if self.cached is None or self.cached.expires_on - now < 300:
            self.issued += 1
            self.cached = AccessToken(f"token-{self.issued}", int(now + self.lifetime))
        return self.cached


class FakeGoogle(google.auth.credentials.Scoped, google.auth.credentials.Credentials):  # type: ignore[misc]
    """Credentials whose refresh() makes a token living ``lifetime`` seconds of the fake clock."""

    def __init__(self, clock: FakeClock | None = None, lifetime: float = 3600.0, fail: bool = False) -> None:
        super().__init__()
        self.clock: Any = clock or SYSTEM_CLOCK
        self.lifetime = lifetime
        self.fail = fail
        self.refreshes = 0
        self.requests: list[Any] = []
        self._scopes: list[str] | None = None

    @property
    def requires_scopes(self) -> bool:
        return not self._scopes

    def with_scopes(self, scopes: Any, default_scopes: Any = None) -> FakeGoogle:
        scoped = FakeGoogle(self.clock, self.lifetime, self.fail)
        scoped._scopes = list(scopes)
        return scoped

    def refresh(self, request: Any) -> None:
        self.requests.append(request)
        if self.fail:
            raise google.auth.exceptions.RefreshError("metadata server said 403: no such scope")
        self.refreshes += 1
        self.token = f"ya29.fake-{self.refreshes}"
        end = self.clock.time() + self.lifetime
        self.expiry = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).replace(tzinfo=None)


# -- Azure: a token handed back again -----------------------------------------------------


def test_azure_cached_token_handed_back_makes_a_few_calls_not_one_per_connection() -> None:
    clock = FakeClock()
    msal = FakeMsal(clock)
    source = AzureEntraToken(credential=msal, clock=clock)
    source._cache._spawn = run_now
    t = target()
    start = clock.time()
    assert source.get_password(t) == "token-1"
    # Into the advisory window (15 minutes before the end, by default), then 130 connections
    # 6 s apart (13 minutes): MSAL hands back token-1 until 5 minutes before its end.
    clock.advance(3600 - 15 * 60)
    seen = []
    for _ in range(130):
        password = source.get_password(t)
        seen.append(password)
        assert clock.time() < start + 3600 if password == "token-1" else True
        clock.advance(6)
    assert set(seen) == {"token-1", "token-2"}
    # 1 first fetch, at most 2 that got token-1 back, and the one that got token-2.
    assert msal.calls <= 4
    assert msal.issued == 2


def test_azure_returns_no_token_past_its_end_when_calls_keep_getting_it_back() -> None:
    clock = FakeClock()
    msal = FakeMsal(clock, lifetime=3600)
    source = AzureEntraToken(credential=msal, clock=clock)
    source._cache._spawn = run_now
    t = target()
    ends: dict[str, float] = {}
    for _ in range(2 * 3600 // 30):  # two hours, a connection every 30 s
        password = source.get_password(t)
        assert msal.cached is not None
        ends.setdefault(msal.cached.token, msal.cached.expires_on)
        assert clock.time() < ends[password] - 1
        clock.advance(30)
    assert msal.issued == 3
    assert msal.calls <= 3 * 4


# -- Cloud SQL: expiry tracked by the source -----------------------------------------------


def test_cloud_sql_uses_a_token_google_auth_calls_stale_until_its_own_windows() -> None:
    clock = FakeClock(wall=time.time())  # google-auth's own `valid` reads the real clock
    credentials = FakeGoogle(clock, lifetime=200)  # < 3 min 45 s: stale to google-auth at once
    source = CloudSqlIamToken(credentials=credentials, clock=clock)
    source._cache._spawn = run_now
    t = target()
    first = source.get_password(t)
    scoped = source.sdk_object()
    assert not scoped.valid  # google-auth would refresh before every request
    for _ in range(100):
        assert source.get_password(t) == first
        clock.advance(1)
    assert scoped.refreshes == 1
    clock.advance(60)  # 160 s of 200: in the advisory window, refreshed once in the background
    assert source.get_password(t) == first
    assert scoped.refreshes == 2
    assert source.get_password(t) != first


def test_cloud_sql_scopes_given_credentials_that_need_it() -> None:
    source = CloudSqlIamToken(credentials=FakeGoogle())
    source.get_password(target())
    assert source.sdk_object()._scopes == [cloudsql.SCOPE]


def test_cloud_sql_refresh_timeout_is_cut_to_the_callers_deadline() -> None:
    class Session:
        timeouts: list[float] = []

        def request(self, method: str, url: str, data: Any = None, headers: Any = None, **kw: Any) -> Any:
            self.timeouts.append(kw["timeout"])
            response = type("R", (), {"status_code": 200, "headers": {}, "content": b"{}"})()
            return response

        def close(self) -> None:
            pass

    request = cloudsql._TimedRequest(session=Session())
    request("http://metadata/x", timeout=3)
    with scope(Deadline.after(1.5)):
        request("http://metadata/x", timeout=3)
        request("http://metadata/x")
    assert Session.timeouts[0] == 3
    assert 1.0 < Session.timeouts[1] <= 1.5 and 1.0 < Session.timeouts[2] <= 1.5


# -- settings and arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CloudSqlIamToken(credentials="key.json"), "CloudSqlIamToken: credentials must be None or"),
        (
            lambda: CloudSqlIamToken(allow_insecure_transport=1),
            "CloudSqlIamToken: allow_insecure_transport must be True or False",
        ),
        (lambda: AzureEntraToken(credential=object()), "AzureEntraToken: credential must be None or"),
        (lambda: AzureEntraToken(scope=""), "AzureEntraToken: scope must be a non-empty str"),
        (
            lambda: AzureEntraToken(scope=["a"]),
            "AzureEntraToken: scope must be a non-empty str without spaces",
        ),
    ],
)
def test_bad_oauth_arguments_are_named(make: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="^" + message.replace("(", r"\(")):
        make()


@pytest.mark.parametrize("source", [CloudSqlIamToken(), AzureEntraToken()], ids=["gcp", "azure"])
def test_tokens_need_mandatory_tls_and_a_user(source: Any) -> None:
    source.check_target(target())
    source.check_target(target("mysql"))
    with pytest.raises(ImproperlyConfigured, match="do not make TLS mandatory"):
        source.check_target(target(options={"sslmode": "prefer"}))
    with pytest.raises(ImproperlyConfigured, match="USER is empty"):
        source.check_target(target(user=""))
    insecure = type(source)(allow_insecure_transport=True)
    insecure.check_target(target(options={}))
    assert type(source).token_per_fetch is True


@pytest.mark.parametrize(
    ("vendor", "expected"), [("postgresql", "'sa@proj.iam' on PostgreSQL"), ("mysql", "'sa' on MySQL")]
)
def test_cloud_sql_names_the_user_when_given_a_service_account_email(vendor: str, expected: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=expected):
        CloudSqlIamToken().check_target(target(vendor, user="sa@proj.iam.gserviceaccount.com"))
    CloudSqlIamToken().check_target(target(vendor, user="sa@proj.iam" if vendor == "postgresql" else "sa"))


def test_sdk_errors_become_credential_errors_naming_database_and_source() -> None:
    source = CloudSqlIamToken(credentials=FakeGoogle(fail=True))
    with pytest.raises(CredentialError) as info:
        source.get_credentials(target())
    assert str(info.value).startswith(
        "database 'orders': CloudSqlIamToken(credentials=FakeGoogle) could not get a Cloud SQL IAM token: "
        "RefreshError: metadata server said 403"
    )
    assert isinstance(info.value.__cause__, google.auth.exceptions.RefreshError)
    assert info.value.__cause__.__traceback__ is None

    class Failing:
        def get_token(self, *scopes: str) -> AccessToken:
            raise ClientAuthenticationError("ManagedIdentityCredential authentication unavailable")

    azure = AzureEntraToken(credential=Failing())
    with pytest.raises(CredentialError) as info:
        azure.get_credentials(target())
    assert (
        "AzureEntraToken(credential=Failing) could not get an Entra ID token: ClientAuthenticationError"
        in str(info.value)
    )
    assert info.value.__cause__ is not None and info.value.__cause__.__traceback__ is None


def test_oauth_sources_describe_repr_deepcopy_and_pickle() -> None:
    source = AzureEntraToken(
        credential=FakeMsal(SYSTEM_CLOCK), scope="https://ossrdbms-aad.database.chinacloudapi.cn/.default"
    )
    assert repr(source) == (
        "AzureEntraToken(credential=FakeMsal, scope='https://ossrdbms-aad.database.chinacloudapi.cn/.default')"
    )
    assert repr(AzureEntraToken()) == "AzureEntraToken()" and repr(CloudSqlIamToken()) == "CloudSqlIamToken()"
    password = source.get_password(target())
    assert password not in repr(source)
    assert copy.deepcopy(source) is source
    copied = pickle.loads(pickle.dumps(source))
    assert copied.cached(target()) is None  # no token pickled
    assert copied.get_password(target()) == password  # from its own copy of the given credential
    assert copied.sdk_object() is not source.sdk_object()
    # What iamdb made (credentials, its HTTP session) is not pickled: made again on first use.
    made = CloudSqlIamToken()
    made._sdk, made._transport = threading.Lock(), threading.Lock()  # neither could be pickled
    assert pickle.loads(pickle.dumps(made))._sdk is None
    google_source = CloudSqlIamToken(credentials=FakeGoogle())
    google_source.get_password(target())
    assert pickle.loads(pickle.dumps(google_source)).get_password(target()).startswith("ya29.fake-")


def test_modules_name_their_scopes() -> None:
    assert cloudsql.SCOPE == "https://www.googleapis.com/auth/sqlservice.login"
    assert azure_module.SCOPE == "https://ossrdbms-aad.database.windows.net/.default"


def test_a_forked_child_copies_a_given_credential_or_keeps_one_that_cannot_be_pickled() -> None:
    import os

    class Unpicklable(FakeMsal):
        def __init__(self) -> None:
            super().__init__(SYSTEM_CLOCK)
            self.lock = threading.Lock()

    for given, copied in ((FakeMsal(SYSTEM_CLOCK), True), (Unpicklable(), False)):
        source = AzureEntraToken(credential=given)
        assert source.sdk_object() is given  # in the process that made the source: the object itself
        source._after_fork()  # what a forked child runs (os.register_at_fork)
        source._given_pid = os.getpid() + 1  # ... in a process other than the one that made it
        assert (source.sdk_object() is not given) is copied
        assert source.get_password(target()) == "token-1"


def test_a_token_without_an_expiry_is_asked_for_again_after_5_minutes() -> None:
    clock = FakeClock()
    credentials = FakeGoogle(clock)
    source = CloudSqlIamToken(credentials=credentials, clock=clock)
    scoped = source.sdk_object()
    scoped.lifetime = None  # type: ignore[assignment]

    def refresh(request: Any) -> None:
        scoped.refreshes += 1
        scoped.token, scoped.expiry = f"ya29.fake-{scoped.refreshes}", None

    scoped.refresh = refresh
    credential = source.fetch(target())
    assert credential.expires_at is None
    assert credential.refresh_after == clock.time() + 300
