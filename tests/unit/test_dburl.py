"""iamdb.parse_database_url: every scheme round-tripped to a DATABASES entry, every mistake refused."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured

import iamdb
from iamdb import ConfigurationError, parse_database_url
from iamdb.dburl import register_with_dj_database_url
from iamdb.sources import RdsIamToken, SecretsManagerSecret, VaultDatabaseCredentials

BASES = {
    "postgresql": "iamdb.backends.postgresql",
    "postgres": "iamdb.backends.postgresql",
    "postgis": "iamdb.backends.gis.postgis",
    "mysql": "iamdb.backends.mysql",
    "mysqlgis": "iamdb.backends.gis.mysql",
}
PASSWORD = "S3cr3t-pw"


def causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def refused(url: str, *fragments: str, **overrides: Any) -> ConfigurationError:
    """The ConfigurationError for ``url``, checked to show no password anywhere."""
    with pytest.raises(ConfigurationError) as info:
        parse_database_url(url, **overrides)
    error = info.value
    assert isinstance(error, ImproperlyConfigured)
    for exc in causes(error):
        for text in (str(exc), repr(exc.args)):
            assert PASSWORD not in text and "S3cr3t" not in text, text
    for fragment in fragments:
        assert fragment in str(error)
    return error


# -- schemes --------------------------------------------------------------------------------


@pytest.mark.parametrize("base", sorted(BASES))
def test_rds_iam_scheme_gives_the_token_source(base: str) -> None:
    vendor_tls = "sslmode=verify-full&sslrootcert=/etc/rds.pem" if "pos" in base else "ssl_ca=/etc/rds.pem"
    entry = parse_database_url(f"{base}+rds-iam://app@db.example.com:5433/shop?region=eu-west-1&{vendor_tls}")
    source = entry.pop("PASSWORD")
    assert isinstance(source, RdsIamToken) and source.region == "eu-west-1"
    expected_options: dict[str, Any] = (
        {"sslmode": "verify-full", "sslrootcert": "/etc/rds.pem"}
        if "pos" in base
        else {"ssl": {"ca": "/etc/rds.pem"}}
    )
    assert entry == {
        "ENGINE": BASES[base],
        "NAME": "shop",
        "USER": "app",
        "HOST": "db.example.com",
        "PORT": 5433,
        "OPTIONS": expected_options,
    }


def test_rds_iam_signing_parameters() -> None:
    entry = parse_database_url(
        "mysql+rds-iam://app@proxy.local/shop?signing_host=db.example.com&signing_port=3306"
    )
    source = entry["PASSWORD"]
    assert isinstance(source, RdsIamToken)
    assert (source.region, source.signing_host, source.signing_port) == (None, "db.example.com", 3306)


@pytest.mark.parametrize("base", sorted(BASES))
def test_secretsmanager_scheme_gives_the_secret_source(base: str) -> None:
    entry = parse_database_url(
        f"{base}+secretsmanager://db.example.com:5432/shop?secret=prod%2Fshop&region=eu-west-1"
        "&version_stage=AWSPREVIOUS&username_key=login&password_key=pw&ttl=30.5"
    )
    source = entry.pop("PASSWORD")
    assert isinstance(source, SecretsManagerSecret)
    assert (source.secret_id, source.region, source.version_stage) == (
        "prod/shop",
        "eu-west-1",
        "AWSPREVIOUS",
    )
    assert (source.username_key, source.password_key, source.ttl) == ("login", "pw", 30.5)
    assert entry == {
        "ENGINE": BASES[base],
        "NAME": "shop",
        "USER": "",
        "HOST": "db.example.com",
        "PORT": 5432,
    }


@pytest.mark.parametrize("base", sorted(BASES))
def test_vault_scheme_gives_the_vault_source(base: str) -> None:
    entry = parse_database_url(
        f"{base}+vault://db.example.com/shop?role=shop-app&mount=db-secrets&static=true"
    )
    source = entry.pop("PASSWORD")
    assert isinstance(source, VaultDatabaseCredentials)
    assert (source.role, source.mount_point, source.static) == ("shop-app", "db-secrets", True)
    assert entry == {"ENGINE": BASES[base], "NAME": "shop", "USER": "", "HOST": "db.example.com", "PORT": ""}
    default = parse_database_url(f"{base}+vault://db.example.com/shop?role=r")["PASSWORD"]
    assert (default.mount_point, default.static) == ("database", False)


@pytest.mark.parametrize("base", sorted(BASES))
def test_plain_scheme_decodes_user_and_password(base: str) -> None:
    entry = parse_database_url(f"{base}://app%40corp:p%40ss%2Fw%3Ard@db.example.com:6000/my%20db")
    assert entry == {
        "ENGINE": BASES[base],
        "NAME": "my db",
        "USER": "app@corp",
        "PASSWORD": "p@ss/w:rd",
        "HOST": "db.example.com",
        "PORT": 6000,
    }
    assert parse_database_url(f"{base}://app@db/shop")["PASSWORD"] == ""


def test_ipv6_host_and_scheme_case() -> None:
    entry = parse_database_url("PostgreSQL+RDS-IAM://app@[2001:db8::1]:5432/shop?region=eu-west-1")
    assert (entry["HOST"], entry["PORT"], entry["ENGINE"]) == (
        "2001:db8::1",
        5432,
        "iamdb.backends.postgresql",
    )
    assert isinstance(entry["PASSWORD"], RdsIamToken)


# -- options --------------------------------------------------------------------------------


def test_postgresql_libpq_keys_pass_through() -> None:
    entry = parse_database_url(
        "postgresql+secretsmanager://h/db?secret=s&sslmode=verify-ca&sslrootcert=/ca.pem&sslcert=/c.pem"
        "&sslkey=/k.pem&connect_timeout=5&application_name=shop&options=-c%20search_path%3Dshop"
        "&target_session_attrs=read-write&assume_role=owner&server_side_binding=true"
    )
    assert entry["OPTIONS"] == {
        "sslmode": "verify-ca",
        "sslrootcert": "/ca.pem",
        "sslcert": "/c.pem",
        "sslkey": "/k.pem",
        "connect_timeout": "5",
        "application_name": "shop",
        "options": "-c search_path=shop",
        "target_session_attrs": "read-write",
        "assume_role": "owner",
        "server_side_binding": True,
    }


def test_mysql_options_in_the_form_mysqlclient_takes() -> None:
    entry = parse_database_url(
        "mysql+rds-iam://app@h/db?region=eu-west-1&ssl_ca=/ca.pem&ssl_cert=/c.pem&ssl_key=/k.pem"
        "&ssl_mode=VERIFY_IDENTITY&connect_timeout=5&read_timeout=30&charset=utf8mb4"
        "&isolation_level=read%20committed&init_command=SET%20sql_mode%3D%27STRICT_ALL_TABLES%27&local_infile=false"
    )
    assert entry["OPTIONS"] == {
        "ssl": {"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"},
        "ssl_mode": "VERIFY_IDENTITY",
        "connect_timeout": 5,
        "read_timeout": 30,
        "charset": "utf8mb4",
        "isolation_level": "read committed",
        "init_command": "SET sql_mode='STRICT_ALL_TABLES'",
        "local_infile": False,
    }


def test_plain_schemes_pass_unknown_parameters_through() -> None:
    assert parse_database_url("postgresql://u:p@h/db?gssencmode=disable&x_custom=1")["OPTIONS"] == {
        "gssencmode": "disable",
        "x_custom": "1",
    }
    assert parse_database_url("mysql://u:p@h/db?x_custom=1")["OPTIONS"] == {"x_custom": "1"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("conn_max_age=600", {"CONN_MAX_AGE": 600}),
        ("conn_max_age=0", {"CONN_MAX_AGE": 0}),
        ("conn_max_age=none", {"CONN_MAX_AGE": None}),
        ("conn_max_age=None&conn_health_checks=true", {"CONN_MAX_AGE": None, "CONN_HEALTH_CHECKS": True}),
        ("conn_health_checks=false&disable_server_side_cursors=1", {"CONN_HEALTH_CHECKS": False,
                                                                    "DISABLE_SERVER_SIDE_CURSORS": True}),
    ],
)  # fmt: skip
def test_django_connection_settings(query: str, expected: dict[str, Any]) -> None:
    for url in (f"postgresql://u:p@h/db?{query}", f"mysql+vault://h/db?role=r&{query}"):
        entry = parse_database_url(url)
        assert {key: entry[key] for key in expected} == expected
        assert "OPTIONS" not in entry


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool is 5.1+")
def test_pool_true_sets_django_pool_option() -> None:
    assert parse_database_url("postgresql+rds-iam://u@h/db?pool=true")["OPTIONS"] == {"pool": True}
    assert "OPTIONS" not in parse_database_url("postgresql://u:p@h/db?pool=false")


@pytest.mark.skipif(django.VERSION >= (5, 1), reason="Django 5.1+ has a pool")
def test_pool_before_django_5_1_is_refused() -> None:
    refused("postgresql://u:S3cr3t-pw@h/db?pool=true", "Django 5.1")


def test_overrides_update_the_entry_and_merge_options() -> None:
    entry = parse_database_url(
        "postgresql+rds-iam://u@h/db?region=eu-west-1&sslmode=verify-full&conn_max_age=60",
        CONN_MAX_AGE=120,
        TEST={"NAME": "test_db"},
        ATOMIC_REQUESTS=True,
        OPTIONS={"sslmode": "require", "iamdb": {"retry_budget": 10}},
    )
    assert entry["CONN_MAX_AGE"] == 120 and entry["TEST"] == {"NAME": "test_db"} and entry["ATOMIC_REQUESTS"]
    assert entry["OPTIONS"] == {"sslmode": "require", "iamdb": {"retry_budget": 10}}
    source = iamdb.sources.CallableSource(lambda: "pw")
    assert parse_database_url("postgresql://u@h/db", PASSWORD=source)["PASSWORD"] is source


# -- mistakes -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["rds-iam", "secretsmanager", "vault"])
def test_password_with_a_source_scheme_is_refused(source: str) -> None:
    refused(f"postgresql+{source}://app:{PASSWORD}@h/db?secret=s&role=r", "takes no password", "app:***@h/db")
    refused(f"mysql+{source}://app:S3cr3t%2Dpw@h/db?secret=s&role=r", "takes no password")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (f"sqlite://u:{PASSWORD}@h/db", "unknown scheme 'sqlite'"),
        (f"postgresql+iam://u:{PASSWORD}@h/db", "unknown scheme 'postgresql+iam'"),
        (f"oracle+vault://u:{PASSWORD}@h/db", "unknown scheme"),
        (f"postgresql:u:{PASSWORD}@h/db", "no scheme://"),
        (f"postgresql://u:{PASSWORD}@/db", "no host"),
        (f"mysql://u:{PASSWORD}@:3306/db", "no host"),
        (f"postgresql://u:{PASSWORD}@h", "no database name"),
        (f"postgresql://u:{PASSWORD}@h/", "no database name"),
        (f"postgresql://u:{PASSWORD}@h/a/b", "one path segment"),
        (f"postgresql://u:{PASSWORD}@h:port/db", "port is not a number"),
        (f"postgresql://u:{PASSWORD}@h:70000/db", "port is not a number"),
        ("postgresql://u:S3cr3t/pw@h/db", "percent-encode"),
        ("postgresql://u:S3cr3t#pw@h/db", "'#' fragment"),
        ("postgresql://u:S3cr3t?pw@h/db", "percent-encode"),
        ("postgresql://u:1234/S3cr3t@h", "percent-encode"),
        (f"postgresql://u:{PASSWORD}@[::1/db", "cannot be parsed"),
        (f"postgresql://u:{PASSWORD}@h/db?sslmode=verify", "'sslmode' must be one of"),
        (f"mysql://u:{PASSWORD}@h/db?ssl_mode=verify_ca", "'ssl_mode' must be one of"),
        (f"mysql://u:{PASSWORD}@h/db?isolation_level=snapshot", "'isolation_level' must be one of"),
        (f"mysql://u:{PASSWORD}@h/db?connect_timeout=5s", "whole number"),
        (f"mysql://u:{PASSWORD}@h/db?pool=true", "PostgreSQL only"),
        (f"postgresql://u:{PASSWORD}@h/db?conn_max_age=-1", "whole number"),
        (f"postgresql://u:{PASSWORD}@h/db?conn_health_checks=yes", "true or false"),
        (f"postgresql://u:{PASSWORD}@h/db?sslmode=require&sslmode=disable", "given twice"),
        (f"postgresql://u:{PASSWORD}@h/db?password=other", "belongs in the URL"),
        (f"mysql://u:{PASSWORD}@h/db?passwd=other", "belongs in the URL"),
        ("postgresql://u@h/db?sslpassword=S3cr3t-pw&host=x", "belongs in the URL"),
    ],
)
def test_malformed_url_is_refused_without_its_password(url: str, fragment: str) -> None:
    error = refused(url, fragment)
    assert "***" in str(error)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql+rds-iam://h/db?region=eu-west-1", "needs a user name"),
        ("postgresql+rds-iam://u@h/db?regoin=eu-west-1", "unknown parameter 'regoin'"),
        ("postgresql+rds-iam://u@h/db?secret=s", "unknown parameter 'secret'"),
        ("mysql+secretsmanager://h/db?secret=s&x_custom=1", "unknown parameter 'x_custom'"),
        ("postgresql+vault://h/db?role=r&mount_point=db", "unknown parameter 'mount_point'"),
        ("postgresql+secretsmanager://h/db?region=eu-west-1", "needs the parameter 'secret'"),
        ("postgresql+vault://h/db?mount=db", "needs the parameter 'role'"),
        ("postgresql+vault://h/db?role=", "'role' is empty"),
        ("postgresql+vault://h/db?role=r&static=maybe", "true or false"),
        ("postgresql+secretsmanager://h/db?secret=s&ttl=-1", "seconds >= 0"),
        ("postgresql+secretsmanager://h/db?secret=s&ttl=inf", "seconds >= 0"),
        ("postgresql+rds-iam://u@h/db?signing_port=x", "whole number"),
        ("postgresql+rds-iam://u@h/db?region=not%20a%20region", "refused its arguments"),
        ("postgresql+vault://h/db?role=%2F%2F", "refused its arguments"),
    ],
)
def test_bad_source_parameters_are_refused_at_parse_time(url: str, fragment: str) -> None:
    error = refused(url, fragment, url.split("?")[0])
    if "refused its arguments" in fragment:
        assert isinstance(error.__cause__, ConfigurationError) and error.__cause__.__traceback__ is None


def test_password_in_a_query_is_hidden_too() -> None:
    error = refused("postgresql://u@h/db?sslpassword=S3cr3t-pw&sslmode=bad", "sslmode")
    assert "sslpassword=***" in str(error)


def test_lowercase_override_is_refused() -> None:
    refused(f"postgresql://u:{PASSWORD}@h/db", "not a DATABASES key", conn_max_age=60)


def test_a_url_that_is_not_a_str_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not bytes"):
        parse_database_url(b"postgresql://u@h/db")  # type: ignore[arg-type]


# -- imports --------------------------------------------------------------------------------


def test_importing_iamdb_and_parsing_plain_urls_loads_no_sdk() -> None:
    code = (
        "import sys, iamdb\n"
        "iamdb.parse_database_url('postgresql://u:p@h/db')\n"
        "iamdb.parse_database_url('mysql://u:p@h/db?ssl_ca=/ca')\n"
        "print(sorted(m for m in ('boto3', 'botocore', 'hvac') if m in sys.modules))\n"
        "iamdb.parse_database_url('postgresql+vault://h/db?role=r')\n"
        "print('boto3' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:2] == ["[]", "False"]


# -- dj-database-url ------------------------------------------------------------------------


def test_dj_database_url_parses_the_source_schemes() -> None:
    dj_database_url = pytest.importorskip("dj_database_url")
    register_with_dj_database_url()  # idempotent
    entry = dj_database_url.parse(
        "postgresql+secretsmanager://db.example.com:5432/shop?secret=prod%2Fshop&region=eu-west-1&sslmode=verify-full"
        "&conn_max_age=60",
        conn_max_age=300,
    )
    source = entry.pop("PASSWORD")
    assert isinstance(source, SecretsManagerSecret) and source.secret_id == "prod/shop"
    assert entry["ENGINE"] == "iamdb.backends.postgresql"
    assert (entry["HOST"], entry["PORT"], entry["NAME"], entry["USER"]) == (
        "db.example.com",
        5432,
        "shop",
        "",
    )
    assert entry["OPTIONS"] == {"sslmode": "verify-full"}
    assert entry["CONN_MAX_AGE"] == 300  # dj-database-url's own arguments win over the URL's
    mysql = dj_database_url.parse(
        "mysqlgis+rds-iam://app@h:3306/db?region=eu-west-1&ssl_ca=/ca.pem&connect_timeout=5"
    )
    assert mysql["ENGINE"] == "iamdb.backends.gis.mysql" and isinstance(mysql["PASSWORD"], RdsIamToken)
    assert mysql["OPTIONS"] == {"ssl": {"ca": "/ca.pem"}, "connect_timeout": 5}
    vault = dj_database_url.parse("postgis+vault://h/db?role=r&static=true")
    assert vault["PASSWORD"].static is True and "OPTIONS" not in vault
    # Plain schemes keep dj-database-url's own meaning.
    assert dj_database_url.parse("postgresql://u:p@h/db")["ENGINE"] == "django.db.backends.postgresql"


def test_dj_database_url_refuses_what_iamdb_refuses() -> None:
    dj_database_url = pytest.importorskip("dj_database_url")
    with pytest.raises(ConfigurationError, match="takes no password") as info:
        dj_database_url.parse(f"postgresql+rds-iam://app:{PASSWORD}@h/db?region=eu-west-1")
    for exc in causes(info.value):
        assert PASSWORD not in str(exc) and PASSWORD not in repr(exc.args)
    assert "app:***@h" in str(info.value)
    with pytest.raises(ConfigurationError, match="unknown parameter 'regoin'"):
        dj_database_url.parse("mysql+rds-iam://app@h/db?regoin=eu-west-1")


def test_missing_sdk_is_missing_dependency_error_naming_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "import iamdb\n"
        "try:\n"
        "    iamdb.parse_database_url('postgresql+secretsmanager://h/db?secret=s')\n"
        "except iamdb.MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert 'pip install "iamdb[aws]"' in done.stdout
    assert "postgresql+secretsmanager://h/db?secret=s" in done.stdout


def test_query_values_are_form_decoded() -> None:
    entry = parse_database_url("postgresql+secretsmanager://h/db?secret=a%2Bb&application_name=x+y")
    assert entry["PASSWORD"].secret_id == "a+b" and entry["OPTIONS"] == {"application_name": "x y"}
