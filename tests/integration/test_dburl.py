"""Database URLs connected to real servers: plain URLs, and a +secretsmanager URL against moto."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import django
import pytest

from iamdb import parse_database_url
from iamdb.sources import SecretsManagerSecret
from tests.conftest import DbUser, make_wrapper
from tests.services.moto import MotoServer

pytest_plugins = ["tests.integration.conftest_aws"]

CURRENT_USER = {
    "postgresql": "SELECT current_user",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
}


def whoami(settings_dict: dict[str, Any]) -> str:
    wrapper = make_wrapper(settings_dict)
    try:
        with wrapper.cursor() as cursor:
            cursor.execute(CURRENT_USER[wrapper.vendor])
            return str(cursor.fetchone()[0])
    finally:
        wrapper.close()


def location(user: DbUser) -> str:
    """``HOST:PORT/NAME`` of the user's server, as in its settings."""
    settings_dict = user.settings("")
    return f"{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"


def test_plain_url_with_an_encoded_password_connects(db_user: DbUser) -> None:
    # Characters a URL must percent-encode, in a real password.
    password = db_user.rotate("pw:@/#?%&+" + secrets.token_hex(6))
    url = (
        f"{db_user.vendor}://{db_user.name}:{quote(password, safe='')}@{location(db_user)}?connect_timeout=5"
    )
    settings_dict = parse_database_url(url, CONN_MAX_AGE=0)
    assert settings_dict["PASSWORD"] == password
    assert whoami(settings_dict) == db_user.name


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_postgres_alias_scheme_connects_with_libpq_options(db_user: DbUser) -> None:
    url = f"postgres://{db_user.name}:{db_user.password}@{location(db_user)}?application_name=iamdb-url"
    wrapper = make_wrapper(parse_database_url(url))
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT current_user, current_setting('application_name')")
            assert cursor.fetchone() == (db_user.name, "iamdb-url")
    finally:
        wrapper.close()


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool is 5.1+")
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_pool_url_connects_through_djangos_pool(db_user: DbUser) -> None:
    url = f"postgresql://{db_user.name}:{db_user.password}@{location(db_user)}?pool=true"
    settings_dict = parse_database_url(url)
    assert settings_dict["OPTIONS"] == {"pool": True}
    wrapper = make_wrapper(settings_dict)
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == db_user.name
        assert wrapper.pool is not None
    finally:
        wrapper.close()
        wrapper.close_pool()


@pytest.fixture
def secret_name(moto_server: MotoServer, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"iamdb/test/dburl-{secrets.token_hex(4)}"
    yield name
    moto_server.admin_client().delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def test_secretsmanager_url_connects_with_the_secrets_user(
    db_user: DbUser, moto_server: MotoServer, secret_name: str
) -> None:
    moto_server.admin_client().create_secret(
        Name=secret_name, SecretString=json.dumps({"username": db_user.name, "password": db_user.password})
    )
    query = f"secret={quote(secret_name, safe='')}&region={moto_server.region}"
    url = f"{db_user.vendor}+secretsmanager://{location(db_user)}?{query}"
    settings_dict = parse_database_url(url)
    assert isinstance(settings_dict["PASSWORD"], SecretsManagerSecret) and settings_dict["USER"] == ""
    assert whoami(settings_dict) == db_user.name
