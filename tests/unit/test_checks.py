"""iamdb's system checks, called directly with ``DATABASES`` overridden: ids, levels, hints, objs.

Offline: no check connects or fetches (the sources here point at nothing that answers).
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.checks import ERROR, WARNING, CheckMessage
from django.test import override_settings

from iamdb import checks
from iamdb.credentials import CredentialSource
from iamdb.sources import CallableSource, RdsIamToken, SecretsManagerSecret, VaultDatabaseCredentials

PG_TLS = {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/rds-ca.pem"}
MYSQL_TLS = {"ssl": {"ca": "/etc/ssl/rds-ca.pem"}, "ssl_mode": "VERIFY_IDENTITY"}


class Unreachable(CredentialSource):
    """A source that fails the test if a check fetches from it."""

    def fetch(self, target: Any) -> Any:
        raise AssertionError("a check fetched a credential")


def read_password() -> str:
    raise AssertionError("a check called the password callable")


def rds() -> RdsIamToken:
    return RdsIamToken("us-east-1")


def vault() -> VaultDatabaseCredentials:
    return VaultDatabaseCredentials("app", url="http://127.0.0.1:1")


def entry(engine: str = "postgresql", password: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "ENGINE": engine if "." in engine else f"iamdb.backends.{engine}",
        "HOST": "db.example.internal",
        "NAME": "app",
        "USER": "app",
        "PASSWORD": password if password is not None else Unreachable(),
        **extra,
    }


def run(**databases: dict[str, Any]) -> list[CheckMessage]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES")
        with override_settings(DATABASES=databases):
            return checks.check_databases()


def ids(messages: list[CheckMessage]) -> list[str]:
    return [str(message.id) for message in messages]


def only(messages: list[CheckMessage]) -> CheckMessage:
    assert len(messages) == 1, [str(m) for m in messages]
    return messages[0]


def expect(messages: list[CheckMessage], expected: tuple[str, int] | None, obj: str) -> CheckMessage | None:
    """The one message with ``expected`` (id, level) for ``obj``; no message when None."""
    if expected is None:
        assert messages == []
        return None
    message = only(messages)
    assert (message.id, message.level, message.obj) == (*expected, obj)
    return message


def correct_databases() -> dict[str, dict[str, Any]]:
    """One entry per source kind and engine, each configured as the docs say."""
    return {
        "default": entry("postgresql", rds(), OPTIONS=dict(PG_TLS)),
        "rds_mysql": entry("mysql", rds(), OPTIONS=copy.deepcopy(MYSQL_TLS)),
        "secrets": entry("postgresql", SecretsManagerSecret("prod/app", region="us-east-1"), USER=""),
        "vault": entry("mysql", vault(), USER="", CONN_MAX_AGE=None),
        "callable": entry("postgresql", read_password, CONN_MAX_AGE=60),
        "callable_source": entry(
            "mysql", CallableSource(read_password, ttl=30), OPTIONS={"iamdb": {"retry_budget": 2}}
        ),
        "pooled": entry("postgresql", vault(), USER="", OPTIONS={"pool": True}),
        "plain": entry("postgresql", "a-password"),
        "stock": entry("django.db.backends.postgresql", "a-password"),
        "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    }


@pytest.fixture
def databases() -> Iterator[dict[str, dict[str, Any]]]:
    yield correct_databases()


def test_checks_correct_configuration_gives_no_message(databases: dict[str, dict[str, Any]]) -> None:
    before = copy.deepcopy(
        {alias: {k: v for k, v in e.items() if k != "PASSWORD"} for alias, e in databases.items()}
    )
    assert run(**databases) == []
    after = {alias: {k: v for k, v in e.items() if k != "PASSWORD"} for alias, e in databases.items()}
    assert after == before  # read, never written


@pytest.mark.parametrize(
    "engine",
    [
        "django.db.backends.postgresql",
        "django.db.backends.mysql",
        "django.contrib.gis.db.backends.postgis",
        "django.contrib.gis.db.backends.mysql",
    ],
)
@pytest.mark.parametrize("password", [Unreachable, lambda: read_password])
def test_checks_source_on_stock_engine(engine: str, password: Any) -> None:
    message = only(run(db=entry(engine, password())))
    assert (message.id, message.level, message.obj) == ("iamdb.E001", ERROR, "db")
    assert checks.STOCK_ENGINES[engine] in message.hint
    assert message.hint.startswith("Set ENGINE to 'iamdb.backends.")
    assert ("gis" in message.hint) == ("gis" in engine)


def test_checks_stock_engine_with_a_plain_password_is_left_alone() -> None:
    assert run(db=entry("django.db.backends.mysql", "a-password")) == []


@pytest.mark.parametrize(
    ("sslmode", "expected"),
    [
        (None, ("iamdb.E010", ERROR)),
        ("disable", ("iamdb.E010", ERROR)),
        ("allow", ("iamdb.E010", ERROR)),
        ("prefer", ("iamdb.E010", ERROR)),
        ("require", ("iamdb.W011", WARNING)),
        ("verify-ca", None),
        ("verify-full", None),
    ],
)
def test_checks_token_source_postgresql_tls(sslmode: str | None, expected: tuple[str, int] | None) -> None:
    options = {"sslmode": sslmode} if sslmode else {}
    messages = run(primary=entry("postgresql", rds(), OPTIONS=options))
    message = expect(messages, expected, "primary")
    assert message is None or ("'verify-full'" in message.hint and "sslrootcert" in message.hint)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ("iamdb.E010", ERROR)),
        ({"ssl_mode": "PREFERRED"}, ("iamdb.E010", ERROR)),
        ({"ssl_mode": "DISABLED", "ssl": {"ca": "/ca.pem"}}, ("iamdb.E010", ERROR)),
        ({"ssl_mode": "REQUIRED"}, ("iamdb.W011", WARNING)),
        ({"ssl": {"cert": "/client.pem"}}, ("iamdb.W011", WARNING)),
        ({"ssl_mode": "REQUIRED", "ssl": {"ca": "/ca.pem"}}, ("iamdb.W011", WARNING)),
        ({"ssl_mode": "VERIFY_CA"}, ("iamdb.W011", WARNING)),
        ({"ssl": {"ca": "/ca.pem"}}, None),
        ({"ssl": {"capath": "/certs"}, "ssl_mode": "VERIFY_CA"}, None),
        ({"ssl": {"ca": "/ca.pem"}, "ssl_mode": "VERIFY_IDENTITY"}, None),
    ],
)
def test_checks_token_source_mysql_tls(options: dict[str, Any], expected: tuple[str, int] | None) -> None:
    messages = run(replica=entry("mysql", rds(), OPTIONS=options))
    message = expect(messages, expected, "replica")
    assert message is None or (
        "OPTIONS['ssl'] = {'ca':" in message.hint and "VERIFY_IDENTITY" in message.hint
    )


def test_checks_tls_only_for_token_sources() -> None:
    # A rotating secret is not a token signed per fetch: no TLS message (TLS is still advised).
    assert (
        run(
            a=entry("postgresql", SecretsManagerSecret("s", region="us-east-1")),
            b=entry("mysql", read_password),
        )
        == []
    )


def test_checks_allow_insecure_transport_is_a_warning() -> None:
    source = RdsIamToken("us-east-1", allow_insecure_transport=True)
    message = only(run(local=entry("postgresql", source)))
    assert (message.id, message.level, message.obj) == ("iamdb.W012", WARNING, "local")
    assert "local tests only" in message.hint
    # With verified TLS the flag changes nothing.
    assert run(local=entry("postgresql", source, OPTIONS=dict(PG_TLS))) == []


def test_every_token_source_refuses_what_the_check_flags() -> None:
    # One set of TLS rules (iamdb.tls) for the checks and every token source's check_target.
    from iamdb import ConfigurationError, Target
    from iamdb.sources import AuroraDsqlToken, AzureEntraToken, CloudSqlIamToken, RdsIamToken

    cases: list[tuple[str, dict[str, Any]]] = [
        ("postgresql", {"sslmode": mode})
        for mode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
    ] + [
        ("mysql", options)
        for options in (
            {},
            {"ssl_mode": "REQUIRED"},
            {"ssl": {"ca": "/ca.pem"}},
            {"ssl": {"ca": "/ca.pem"}, "ssl_mode": "PREFERRED"},
            {"ssl": {"key": "/k.pem"}},
        )
    ]
    import google.oauth2.credentials

    class GivenAzureCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise AssertionError("check_target asks for no token")

    sources = [
        RdsIamToken(region="eu-west-1"),
        AuroraDsqlToken(region="eu-west-1"),
        CloudSqlIamToken(credentials=google.oauth2.credentials.Credentials(token=None)),
        AzureEntraToken(credential=GivenAzureCredential()),
    ]
    refused = 0
    for source in sources:
        assert source.token_per_fetch
        for vendor, options in cases:
            if vendor not in getattr(source, "vendors", (vendor,)):
                continue
            mandatory, _verified = checks.transport(vendor, options)
            target = Target(alias="db", vendor=vendor, host="db.example.com", user="app", options=options)
            if mandatory:
                source.check_target(target)
            else:
                with pytest.raises(ConfigurationError, match="do not make TLS mandatory"):
                    source.check_target(target)
                refused += 1
    assert refused == 3 * 4 + 2 * 3  # 3 unsafe PostgreSQL modes on 4 sources, 2 MySQL cases on 3


@pytest.mark.parametrize(
    ("iamdb_options", "fragment"),
    [
        ({"retry_budget": 1, "retries": 3}, "unknown key(s) retries"),
        ({"retry_budget": -1}, "must be >= 0"),
        ({"retry_delay": "fast"}, "finite number of seconds"),
        ({"retry_delay": 2, "max_retry_delay": 1}, "must be <= max_retry_delay"),
        (["retry_budget"], "must be a dict"),
    ],
)
def test_checks_bad_iamdb_options(iamdb_options: Any, fragment: str) -> None:
    message = only(run(db=entry("postgresql", "plain", OPTIONS={"iamdb": iamdb_options})))
    assert (message.id, message.level, message.obj) == ("iamdb.E002", ERROR, "db")
    assert fragment in message.msg
    assert "Fix OPTIONS['iamdb']" in message.hint


def test_checks_bad_password_type() -> None:
    message = only(run(db=entry("postgresql", 12345)))
    assert (message.id, message.level, message.obj) == ("iamdb.E003", ERROR, "db")
    assert "a str, a callable or an iamdb source" in message.hint


@pytest.mark.parametrize("user", ["", None])
def test_checks_empty_user_with_a_source_that_issues_none(user: Any) -> None:
    databases = {
        "token": entry("postgresql", rds(), USER=user, OPTIONS=dict(PG_TLS)),
        "callable": entry("mysql", read_password, USER=user),
        "vault": entry("mysql", vault(), USER=user),  # issues a user: fine
        "secrets": entry("postgresql", SecretsManagerSecret("s", region="us-east-1"), USER=user),
    }
    messages = run(**databases)
    assert [(m.id, m.level, m.obj) for m in messages] == [
        ("iamdb.E004", ERROR, "token"),
        ("iamdb.E004", ERROR, "callable"),
    ]
    assert all(m.hint == "Set USER to the database user the credential is for." for m in messages)


@pytest.mark.parametrize(
    ("engine", "modules", "extra"),
    [
        ("postgresql", ("psycopg", "psycopg2"), "postgresql"),
        ("mysql", ("MySQLdb",), "mysql"),
    ],
)
def test_checks_engine_driver_not_installed(
    monkeypatch: pytest.MonkeyPatch, engine: str, modules: tuple[str, ...], extra: str
) -> None:
    # A None entry in sys.modules is how Python marks a module that cannot be imported.
    for module in modules[1:]:
        monkeypatch.setitem(sys.modules, module, None)
    assert run(db=entry(engine, "plain")) == []  # one driver of the list is enough
    monkeypatch.setitem(sys.modules, modules[0], None)
    message = only(run(db=entry(engine, "plain")))
    assert (message.id, message.level, message.obj) == ("iamdb.E020", ERROR, "db")
    assert message.hint == f'Run: pip install "iamdb[{extra}]"'


@pytest.mark.parametrize(
    ("make", "module", "extra"),
    [
        (rds, "boto3", "aws"),
        (lambda: SecretsManagerSecret("s", region="us-east-1"), "boto3", "aws"),
        (vault, "hvac", "vault"),
    ],
)
def test_checks_source_sdk_not_installed(
    monkeypatch: pytest.MonkeyPatch, make: Any, module: str, extra: str
) -> None:
    source = make()
    options = dict(PG_TLS)
    assert run(db=entry("postgresql", source, OPTIONS=options)) == []
    monkeypatch.setitem(sys.modules, module, None)
    message = only(run(db=entry("postgresql", source, OPTIONS=options)))
    assert (message.id, message.level, message.obj) == ("iamdb.E021", ERROR, "db")
    assert message.hint == f'Run: pip install "iamdb[{extra}]"'


@pytest.mark.parametrize(
    ("version", "expected"),
    [("3.2.6", "psycopg-pool 3.2.6 is installed"), (None, "psycopg-pool is not installed"), ("3.3.0", None)],
)
def test_checks_pool_needs_psycopg_pool_3_3(
    monkeypatch: pytest.MonkeyPatch, version: str | None, expected: str | None
) -> None:
    monkeypatch.setattr(checks, "_distribution_version", lambda name: version)
    databases = {
        "pooled": entry("postgresql", vault(), USER="", OPTIONS={"pool": True}),
        "plain_pool": entry("postgresql", "plain", OPTIONS={"pool": True}),  # no source: Django's business
        "unpooled": entry("postgresql", vault(), USER=""),
    }
    messages = run(**databases)
    if expected is None:
        assert messages == []
        return
    message = only(messages)
    assert (message.id, message.level, message.obj) == ("iamdb.E030", ERROR, "pooled")
    assert expected in message.msg
    assert 'pip install "psycopg-pool>=3.3"' in message.hint


def test_checks_installed_psycopg_pool_version_is_read() -> None:
    version = checks._distribution_version("psycopg-pool")
    assert version is not None and checks._version_tuple(version) >= (3, 3)
    assert checks._distribution_version("iamdb-no-such-distribution") is None
    assert checks._version_tuple("3.2.10.dev1") == (3, 2, 10)


def test_checks_every_message_has_a_hint_and_a_known_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "_distribution_version", lambda name: "3.1")
    messages = run(
        a=entry("django.db.backends.mysql", rds()),
        b=entry(
            "postgresql", rds(), USER="", OPTIONS={"iamdb": {"x": 1}, "sslmode": "require", "pool": True}
        ),
        c=entry("mysql", RdsIamToken(allow_insecure_transport=True)),
        d=entry("mysql", object()),
    )
    assert sorted(ids(messages)) == sorted(
        ["iamdb.E001", "iamdb.E002", "iamdb.E004", "iamdb.W011", "iamdb.E030", "iamdb.W012", "iamdb.E003"]
    )
    assert all(m.hint and m.obj in {"a", "b", "c", "d"} for m in messages)


def test_checks_never_fetch_nor_touch_settings() -> None:
    source = Unreachable()
    databases = {"db": entry("postgresql", source), "cb": entry("mysql", read_password)}
    assert run(**databases) == []
    assert source.cached() is None
    assert databases["db"]["PASSWORD"] is source and databases["cb"]["PASSWORD"] is read_password
