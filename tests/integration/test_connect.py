"""New connections on both engines take their credentials from the source."""

from __future__ import annotations

import copy

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

from iamdb import Credential, CredentialError
from iamdb.sources import CallableSource
from tests.conftest import DbUser, make_wrapper, new_password

CURRENT_USER = {
    "postgresql": "SELECT current_user",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
}


def whoami(wrapper) -> str:
    with wrapper.cursor() as cursor:
        cursor.execute(CURRENT_USER[wrapper.vendor])
        return cursor.fetchone()[0]


def test_plain_string_password_is_stock_django(db_user: DbUser) -> None:
    wrapper = make_wrapper(db_user.settings(db_user.password))
    assert whoami(wrapper) == db_user.name
    wrapper.close()


def test_callable_is_called_for_each_new_connection(db_user: DbUser) -> None:
    calls = []

    def password() -> str:
        calls.append(1)
        return db_user.password

    settings_dict = db_user.settings(password)
    wrapper = make_wrapper(settings_dict)
    for _ in range(3):
        assert whoami(wrapper) == db_user.name
        wrapper.close()
    assert len(calls) == 3
    assert settings_dict["PASSWORD"] is password  # never rewritten


def test_source_issuing_the_user_name_with_empty_user(db_user: DbUser) -> None:
    source = CallableSource(lambda: Credential(username=db_user.name, password=db_user.password))
    source.issues_username = True  # type: ignore[misc]
    settings_dict = db_user.settings(source, USER="")
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    assert settings_dict["USER"] == ""


def test_new_connection_sees_rotated_password(db_user: DbUser) -> None:
    wrapper = make_wrapper(db_user.settings(lambda: db_user.password))
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    db_user.rotate()
    assert whoami(wrapper) == db_user.name
    wrapper.close()


def test_refused_login_is_retried_until_the_new_password_is_published(db_user: DbUser) -> None:
    """The server changes first; the source publishes the new password a moment later."""
    published = {"password": db_user.password}
    source = CallableSource(lambda: published["password"], ttl=3600)
    wrapper = make_wrapper(db_user.settings(source))
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    new = db_user.rotate()
    attempts = []

    def publish_late() -> str:
        attempts.append(1)
        if len(attempts) >= 3:
            published["password"] = new
        return published["password"]

    source.func = publish_late
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    assert len(attempts) >= 3


def test_refused_login_gives_up_after_the_budget(db_user: DbUser) -> None:
    wrapper = make_wrapper(
        db_user.settings(lambda: "not-the-password", OPTIONS={"iamdb": {"retry_budget": 0.3}})
    )
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert "not-the-password" not in message
    assert isinstance(info.value, CredentialError)
    assert "database 'default'" in message and "CallableSource(" in message
    assert "refused the login" in message and "retry budget of 0.3 s" in message
    # The server's refusal is the cause, without the driver's frames (their locals hold the password).
    assert isinstance(info.value.__cause__, wrapper.Database.OperationalError)
    assert info.value.__cause__.__traceback__ is None


@pytest.mark.parametrize("bad", [None, "", 42])
def test_callable_returning_nonsense_is_improperly_configured(db_user: DbUser, bad: object) -> None:
    wrapper = make_wrapper(db_user.settings(lambda: bad), alias="reports")
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    assert "'reports'" in str(info.value) and "CallableSource" in str(info.value)


def test_failing_source_is_operational_error_naming_alias_and_source(db_user: DbUser) -> None:
    secret = new_password()

    def broken() -> str:
        raise ConnectionError("vault down")

    wrapper = make_wrapper(db_user.settings(broken), alias="billing")
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert isinstance(info.value, CredentialError)
    message = str(info.value)
    assert "'billing'" in message and "broken" in message and "vault down" in message
    assert secret not in message
    assert isinstance(info.value.__cause__, ConnectionError)


def test_options_must_not_carry_a_second_password(db_user: DbUser) -> None:
    wrapper = make_wrapper(db_user.settings(lambda: "x", OPTIONS={"password": "y"}))
    with pytest.raises(ImproperlyConfigured, match="OPTIONS must not set password"):
        wrapper.ensure_connection()


def test_unknown_iamdb_option_is_improperly_configured(db_user: DbUser) -> None:
    wrapper = make_wrapper(db_user.settings(lambda: "x", OPTIONS={"iamdb": {"retry_budjet": 1}}))
    with pytest.raises(ImproperlyConfigured, match="retry_budjet"):
        wrapper.ensure_connection()


def test_iamdb_options_never_reach_the_driver(db_user: DbUser) -> None:
    wrapper = make_wrapper(db_user.settings(lambda: db_user.password, OPTIONS={"iamdb": {"retry_budget": 1}}))
    assert "iamdb" not in wrapper.get_connection_params()
    assert whoami(wrapper) == db_user.name
    wrapper.close()


def test_connection_copy_deep_copies_settings_but_shares_the_source(db_user: DbUser) -> None:
    source = CallableSource(lambda: db_user.password, ttl=60)
    wrapper = make_wrapper(db_user.settings(source))
    clone = wrapper.copy()
    assert clone.settings_dict is not wrapper.settings_dict
    assert clone.settings_dict["PASSWORD"] is source
    assert copy.deepcopy(wrapper.settings_dict)["PASSWORD"] is source
    assert whoami(clone) == db_user.name
    clone.close()
