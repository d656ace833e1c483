"""GeoDjango backends against real servers: PostGIS on a private PostgreSQL server
(``CREATE EXTENSION`` needs its superuser) and MariaDB's spatial types.

Each test makes a geometry table with the schema editor, inserts points, runs
spatial lookups and goes through password rotations whose first login is
refused and retried. The model lives in an app registry of its own, so that no
installed app gains a model.
"""

from __future__ import annotations

import functools
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import django
import pytest
from django.apps.registry import Apps
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from iamdb import Credential, signals
from iamdb.sources import CallableSource
from tests.conftest import make_wrapper, new_password
from tests.services.mysql import MysqlAdmin
from tests.services.postgis import PostgisServer


def _gis_missing() -> str | None:
    """Why GeoDjango cannot run here (GDAL or GEOS not loadable), or None."""
    try:
        from django.contrib.gis.gdal import gdal_version
        from django.contrib.gis.geos import geos_version

        gdal_version()
        geos_version()
    except (ImportError, ImproperlyConfigured, OSError) as exc:
        return f"GeoDjango needs the GDAL and GEOS libraries (Debian: libgdal32 libgeos-c1v5): {exc}"
    return None


_MISSING = _gis_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

POSTGIS = "iamdb.backends.gis.postgis"
MYSQL_GIS = "iamdb.backends.gis.mysql"
needs_pool = pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")


@functools.cache
def place_model() -> Any:
    from django.contrib.gis.db import models

    class Place(models.Model):
        name = models.CharField(max_length=40)
        location = models.PointField(srid=4326)

        class Meta:
            apps = Apps([])
            app_label = "iamdb_gis_tests"
            db_table = "iamdb_gis_place"

    return Place


class Published:
    """A password store: the server's password changes first, the published one
    ``lag`` seconds later, so the first login after a rotation is refused."""

    def __init__(self, password: str, set_on_server: Any) -> None:
        self.password = password
        self._set = set_on_server

    def read(self) -> str:
        return self.password

    def rotate(self, lag: float = 0.3) -> threading.Timer:
        password = new_password()
        self._set(password)
        timer = threading.Timer(lag, lambda: setattr(self, "password", password))
        timer.start()
        return timer


@contextmanager
def registered(entry: dict[str, Any]) -> Iterator[str]:
    """An alias in Django's connection handler (and settings) for one test."""
    alias = f"gis_{secrets.token_hex(4)}"
    connections.settings[alias] = connections.configure_settings({"default": entry, alias: entry})[alias]
    try:
        yield alias
    finally:
        connections[alias].close()
        if django.VERSION >= (5, 1) and entry.get("OPTIONS", {}).get("pool"):
            connections[alias].close_pool()
        del connections[alias]
        del connections.settings[alias]


@contextmanager
def counting_refusals() -> Iterator[list[Any]]:
    seen: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(sender)

    signals.login_refused.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signals.login_refused.disconnect(receiver)


def spatial_names(alias: str, *, dwithin: bool) -> dict[str, list[str]]:
    """Insert three places and run the spatial lookups of the engine."""
    from django.contrib.gis.geos import Point, Polygon

    place = place_model()
    place.objects.using(alias).bulk_create(
        [
            place(name="inside", location=Point(1, 1, srid=4326)),
            place(name="edge", location=Point(2.5, 2.5, srid=4326)),
            place(name="far", location=Point(40, 40, srid=4326)),
        ]
    )
    square = Polygon(((0, 0), (0, 3), (3, 3), (3, 0), (0, 0)), srid=4326)
    objects = place.objects.using(alias)
    found = {
        lookup: sorted(objects.filter(**{f"location__{lookup}": square}).values_list("name", flat=True))
        for lookup in ("within", "intersects", "contained")
    }
    if dwithin:
        near = objects.filter(location__dwithin=(Point(0, 0, srid=4326), 2.0))
        found["dwithin"] = sorted(near.values_list("name", flat=True))
    return found


def rotate_during_queries(alias: str, published: Published, *, dwithin: bool) -> int:
    """Three rotations, each followed by a new connection that inserts and queries."""
    place = place_model()
    expected = {
        "within": ["edge", "inside"],
        "intersects": ["edge", "inside"],
        "contained": ["edge", "inside"],
    }
    if dwithin:
        expected["dwithin"] = ["inside"]
    with counting_refusals() as refused:
        for _ in range(3):
            timer = published.rotate()
            connections[alias].close()
            try:
                place.objects.using(alias).all().delete()
                assert spatial_names(alias, dwithin=dwithin) == expected
            finally:
                timer.join(5)
    return len(refused)


def test_gis_backends_import_before_the_app_registry() -> None:
    """Django's GIS modules need a ready app registry; the packages do not import them."""
    code = "import iamdb.backends.gis, iamdb.backends.gis.postgis, iamdb.backends.gis.mysql"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_gis_wrappers_combine_iamdb_with_django_gis() -> None:
    from django.contrib.gis.db.backends.mysql.base import DatabaseWrapper as DjangoGisMysql
    from django.contrib.gis.db.backends.mysql.operations import MySQLOperations
    from django.contrib.gis.db.backends.postgis.base import DatabaseWrapper as DjangoPostgis
    from django.contrib.gis.db.backends.postgis.operations import PostGISOperations

    from iamdb.backends.mysql.base import DatabaseWrapper as IamdbMysql
    from iamdb.backends.mysql.client import DatabaseClient as MysqlClient
    from iamdb.backends.mysql.creation import DatabaseCreation as MysqlCreation
    from iamdb.backends.postgresql.base import DatabaseWrapper as IamdbPostgres
    from iamdb.backends.postgresql.client import DatabaseClient as PostgresClient

    common = {"USER": "u", "PASSWORD": lambda: "p", "HOST": "127.0.0.1", "NAME": "n"}
    postgis = make_wrapper({"ENGINE": POSTGIS, **common})
    assert isinstance(postgis, IamdbPostgres) and isinstance(postgis, DjangoPostgis)
    assert isinstance(postgis.ops, PostGISOperations) and isinstance(postgis.client, PostgresClient)
    mysql = make_wrapper({"ENGINE": MYSQL_GIS, **common})
    assert isinstance(mysql, IamdbMysql) and isinstance(mysql, DjangoGisMysql)
    assert isinstance(mysql.ops, MySQLOperations) and isinstance(mysql.client, MysqlClient)
    assert isinstance(mysql.creation, MysqlCreation)


# -- PostGIS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgis_server() -> Iterator[PostgisServer]:
    server = PostgisServer().start()
    try:
        if not server.postgis_available():
            pytest.skip("the PostGIS extension is not installed (Debian: postgresql-15-postgis-3)")
        server.enable_postgis("template1")  # every database made afterwards has it
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgis_user(postgis_server: PostgisServer) -> Iterator[tuple[str, Published, str]]:
    """A role (CREATEDB, not a superuser) owning a database made from template1."""
    name = f"iamdb_{secrets.token_hex(4)}"
    password = new_password()
    postgis_server.create_role(name, password, createdb=True)
    dbname = f"gis_{secrets.token_hex(4)}"
    postgis_server.sql(f"CREATE DATABASE {dbname} OWNER {name}")
    yield name, Published(password, lambda pw: postgis_server.set_password(name, pw)), dbname
    postgis_server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
    postgis_server.sql(f"DROP DATABASE IF EXISTS {dbname}")
    postgis_server.sql(f"DROP OWNED BY {name}")
    postgis_server.sql(f"DROP ROLE IF EXISTS {name}")


def postgis_entry(server: PostgisServer, user: tuple[str, Published, str], **extra: Any) -> dict[str, Any]:
    name, published, dbname = user
    return {
        "ENGINE": POSTGIS,
        "HOST": "127.0.0.1",
        "PORT": server.port,
        "NAME": dbname,
        "USER": name,
        "PASSWORD": published.read,
        **extra,
    }


def test_postgis_spatial_queries_through_rotations(
    postgis_server: PostgisServer, postgis_user: tuple[str, Published, str]
) -> None:
    with registered(postgis_entry(postgis_server, postgis_user)) as alias:
        with connections[alias].schema_editor() as editor:
            editor.create_model(place_model())
        refused = rotate_during_queries(alias, postgis_user[1], dwithin=True)
    assert refused >= 3  # each rotation's first login was refused, then retried


@needs_pool
def test_postgis_pool_inserts_and_queries_through_rotations(
    postgis_server: PostgisServer, postgis_user: tuple[str, Published, str]
) -> None:
    """Django's pool: each new pooled connection gets PostGIS's psycopg 3 adapters
    and the current password."""
    pool = {"min_size": 1, "max_size": 4, "timeout": 20}
    with registered(postgis_entry(postgis_server, postgis_user, OPTIONS={"pool": pool})) as alias:
        with connections[alias].schema_editor() as editor:
            editor.create_model(place_model())
        rotate_during_queries(alias, postgis_user[1], dwithin=True)  # the pool reuses its connection
        # A rotation, then connections the pool must open: the held ones make it grow,
        # and the first login of each is refused until the password is published.
        with counting_refusals() as refused:
            timer = postgis_user[1].rotate()
            held = [make_wrapper(connections.settings[alias], alias=alias) for _ in range(2)]
            try:
                for wrapper in held:
                    wrapper.ensure_connection()
                assert spatial_names(alias, dwithin=True)["within"] == ["edge", "edge", "inside", "inside"]
                stats = connections[alias].pool.get_stats()
            finally:
                timer.join(5)
                for wrapper in held:
                    wrapper.close()
    assert refused
    assert stats["connections_num"] >= 3


def test_postgis_test_database_for_a_user_that_is_not_superuser(
    postgis_server: PostgisServer, postgis_user: tuple[str, Published, str]
) -> None:
    """Django's test runner: the test database, made from template1, has PostGIS."""
    entry = postgis_entry(postgis_server, postgis_user)
    with registered(entry) as alias:
        creation = connections[alias].creation
        old_name = connections[alias].settings_dict["NAME"]
        # Django 6.1 deprecates serialize= (and no longer serializes by default).
        serialize: dict[str, Any] = {"serialize": False} if django.VERSION < (6, 1) else {}
        test_name = creation.create_test_db(verbosity=0, autoclobber=True, **serialize)
        try:
            assert test_name == f"test_{old_name}"
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT extname FROM pg_extension WHERE extname = 'postgis'")
                assert cursor.fetchone() == ("postgis",)
            with connections[alias].schema_editor() as editor:
                editor.create_model(place_model())
            assert spatial_names(alias, dwithin=False)["within"] == ["edge", "inside"]
        finally:
            creation.destroy_test_db(old_name, verbosity=0)


def test_postgis_without_the_extension_needs_a_superuser(
    postgis_server: PostgisServer, postgis_user: tuple[str, Published, str]
) -> None:
    """A database made from template0 has no PostGIS, and a role that is not a
    superuser cannot create it: what Django's migrate would do first."""
    name, _, dbname = postgis_user
    bare = f"{dbname}_bare"
    postgis_server.sql(f"CREATE DATABASE {bare} OWNER {name} TEMPLATE template0")
    try:
        entry = postgis_entry(postgis_server, postgis_user, NAME=bare)
        with registered(entry) as alias, pytest.raises(DatabaseError, match="permission denied to create"):
            connections[alias].prepare_database()
    finally:
        postgis_server.sql(f"DROP DATABASE IF EXISTS {bare}")


# -- MariaDB / MySQL ------------------------------------------------------------------------


@pytest.fixture
def mysql_gis_user(mysql_admin: MysqlAdmin) -> Iterator[tuple[str, Published, str]]:
    name = f"iamdb_{secrets.token_hex(4)}"
    dbname = f"iamdb_gis_{secrets.token_hex(4)}"
    password = new_password()
    mysql_admin.sql(f"CREATE DATABASE `{dbname}`")
    mysql_admin.create_user(name, password, databases=(dbname,))
    yield name, Published(password, lambda pw: mysql_admin.set_password(name, pw)), dbname
    mysql_admin.drop_user(name)
    mysql_admin.sql(f"DROP DATABASE IF EXISTS `{dbname}`")


def test_mysql_spatial_queries_through_rotations(
    mysql_admin: MysqlAdmin, mysql_gis_user: tuple[str, Published, str]
) -> None:
    name, published, dbname = mysql_gis_user
    entry = {
        "ENGINE": MYSQL_GIS,
        "HOST": mysql_admin.host,
        "PORT": mysql_admin.port,
        "NAME": dbname,
        "USER": name,
        "PASSWORD": published.read,
    }
    with registered(entry) as alias:
        with connections[alias].schema_editor() as editor:
            editor.create_model(place_model())
        refused = rotate_during_queries(alias, published, dwithin=False)
    assert refused >= 3


# -- both engines ---------------------------------------------------------------------------


@pytest.fixture(params=["postgis", "mysql"])
def gis_entry(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Published]:
    """A DATABASES entry (bare callable PASSWORD) of a fresh user, on each engine."""
    if request.param == "postgis":
        server = request.getfixturevalue("postgis_server")
        user = request.getfixturevalue("postgis_user")
        return postgis_entry(server, user), user[1]
    admin = request.getfixturevalue("mysql_admin")
    name, published, dbname = request.getfixturevalue("mysql_gis_user")
    entry = {"ENGINE": MYSQL_GIS, "HOST": admin.host, "PORT": admin.port, "NAME": dbname, "USER": name}
    return {**entry, "PASSWORD": published.read}, published


def test_gis_connection_is_retired_before_its_lease_ends(gis_entry: tuple[dict[str, Any], Published]) -> None:
    """Credentials whose sessions end: the persistent connection is closed before, as
    with the plain backends, and its successor still takes geometries."""
    entry, published = gis_entry

    def fetch() -> Credential:
        now = time.time()
        return Credential(password=published.read(), expires_at=now + 3.0, sessions_end_at=now + 3.0)

    entry = {**entry, "PASSWORD": CallableSource(fetch), "CONN_MAX_AGE": None}
    entry["OPTIONS"] = {"iamdb": {"retire_margin": 2.0}}
    with registered(entry) as alias:
        wrapper = connections[alias]
        with wrapper.schema_editor() as editor:
            editor.create_model(place_model())
        first = wrapper.connection
        assert first is not None and wrapper.close_at is not None
        time.sleep(max(wrapper.close_at - time.monotonic(), 0) + 0.05)
        wrapper.close_if_unusable_or_obsolete()
        assert wrapper.connection is None  # retired, as at the end of a request
        assert spatial_names(alias, dwithin=False)["within"] == ["edge", "inside"]
        assert wrapper.connection is not first
