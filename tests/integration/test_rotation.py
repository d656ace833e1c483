"""Password rotation under load: the server's password changes every second while
threads keep opening connections. No request may fail."""

from __future__ import annotations

import threading
import time
from typing import Any

import django
import pytest

from iamdb.sources import CallableSource
from tests.conftest import DbUser, make_wrapper, new_password
from tests.load import run_load

pytestmark = pytest.mark.slow


class Rotator:
    """Changes the password on the server, then publishes it ``delay`` seconds later,
    as a secret store does: for a moment the published password is already wrong."""

    def __init__(self, user: DbUser, *, every: float = 1.0, delay: float = 0.15) -> None:
        self.user = user
        self.every = every
        self.delay = delay
        self.published = user.password
        self.reads = 0
        self.rotations = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> str:
        self.reads += 1
        return self.published

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                password = self.user.rotate()
            except BaseException as exc:  # reported by __exit__
                self.errors.append(exc)
                return
            time.sleep(self.delay)
            self.published = password
            self.rotations += 1

    def __enter__(self) -> Rotator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, f"the rotator failed: {self.errors!r}"


def query_once(settings_dict: dict[str, Any], local: threading.local) -> None:
    """One request with CONN_MAX_AGE=0: a new connection, a query, close."""
    wrapper = getattr(local, "wrapper", None)
    if wrapper is None:
        wrapper = local.wrapper = make_wrapper(settings_dict)
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone()[0] == 1
    finally:
        wrapper.close()


@pytest.mark.parametrize("cached", [False, True], ids=["bare-callable", "cached-source"])
def test_rotation_under_load_fails_no_request(db_user: DbUser, cached: bool) -> None:
    with Rotator(db_user) as rotator:
        password: Any = CallableSource(rotator.read, ttl=3600) if cached else rotator.read
        settings_dict = db_user.settings(password)
        local = threading.local()
        ok, errors = run_load(lambda: query_once(settings_dict, local))
    assert rotator.rotations >= 3
    assert not errors, f"{len(errors)} of {ok + len(errors)} requests failed: {errors[:3]!r}"
    assert ok > 0
    if cached:
        # A cached source is read again only after a refused login: a few reads
        # per rotation, not one per request.
        assert rotator.reads <= 1 + rotator.rotations * 6 < ok
    assert settings_dict["PASSWORD"] is password


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_pool_through_rotation(db_user: DbUser) -> None:
    """Django's pool opens new connections during rotations (short max_lifetime
    forces it to); every one gets the current password."""
    with Rotator(db_user) as rotator:
        source = CallableSource(rotator.read, ttl=3600)
        settings_dict = db_user.settings(
            source,
            OPTIONS={"pool": {"min_size": 2, "max_size": 6, "max_lifetime": 1.5, "timeout": 20}},
        )
        alias = f"pool_{new_password()[-8:]}"
        local = threading.local()

        def request() -> None:
            wrapper = getattr(local, "wrapper", None)
            if wrapper is None:
                wrapper = local.wrapper = make_wrapper(settings_dict, alias=alias)
            try:
                with wrapper.cursor() as cursor:
                    cursor.execute("SELECT current_user")
                    assert cursor.fetchone()[0] == db_user.name
            finally:
                wrapper.close()

        try:
            ok, errors = run_load(request, threads=6, seconds=6.0)
            pool = make_wrapper(settings_dict, alias=alias).pool
            stats = pool.get_stats()
        finally:
            make_wrapper(settings_dict, alias=alias).close_pool()
    assert rotator.rotations >= 4
    assert not errors, f"{len(errors)} of {ok + len(errors)} requests failed: {errors[:3]!r}"
    # The pool really did open connections across the rotations.
    assert stats["connections_num"] > rotator.rotations


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_pool_built_before_a_rotation_opens_connections_after_it(db_user: DbUser) -> None:
    published = {"password": db_user.password}
    settings_dict = db_user.settings(
        CallableSource(lambda: published["password"], ttl=3600),
        OPTIONS={"pool": {"min_size": 1, "max_size": 4, "timeout": 10}},
    )
    alias = f"pool_{new_password()[-8:]}"
    first = make_wrapper(settings_dict, alias=alias)
    try:
        first.ensure_connection()  # opens the pool with the first password
        published["password"] = db_user.rotate()
        held = [make_wrapper(settings_dict, alias=alias) for _ in range(3)]
        for wrapper in held:  # the pool must grow: new logins, new password
            wrapper.ensure_connection()
        assert "password" not in first.pool.kwargs  # no frozen secret in the pool
        for wrapper in held:
            wrapper.close()
    finally:
        first.close()
        first.close_pool()


def test_new_password_reaches_persistent_connections_after_reconnect(db_user: DbUser) -> None:
    """CONN_MAX_AGE=None: an open session survives the rotation (servers check
    passwords only at login); the next connection uses the new password."""
    rotator = Rotator(db_user)
    settings_dict = db_user.settings(CallableSource(rotator.read, ttl=3600), CONN_MAX_AGE=None)
    wrapper = make_wrapper(settings_dict)
    wrapper.ensure_connection()
    rotator.published = db_user.rotate()
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
    wrapper.close()
    wrapper.ensure_connection()
    wrapper.close()


def test_wrong_password_everywhere_is_refused_quickly(db_user: DbUser) -> None:
    settings_dict = db_user.settings(lambda: new_password(), OPTIONS={"iamdb": {"retry_budget": 0.5}})
    wrapper = make_wrapper(settings_dict)
    from django.db.utils import OperationalError

    with pytest.raises(OperationalError):
        wrapper.ensure_connection()


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_pool_asks_for_credentials_only_when_it_opens_connections(db_user: DbUser) -> None:
    calls = []

    def password() -> str:
        calls.append(1)
        return db_user.password

    settings_dict = db_user.settings(
        password, OPTIONS={"pool": {"min_size": 1, "max_size": 2, "timeout": 10}}
    )
    alias = f"pool_{new_password()[-8:]}"
    wrapper = make_wrapper(settings_dict, alias=alias)
    try:
        for _ in range(20):  # 20 requests reuse the pool's connection
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
            wrapper.close()
        opened = wrapper.pool.get_stats()["connections_num"]
    finally:
        wrapper.close_pool()
    assert 1 <= len(calls) == opened < 20
