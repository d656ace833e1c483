"""OpenTelemetry metrics (``iamdb.otel``) on real servers, read back through the SDK's
InMemoryMetricReader: what is exported, with which attributes, never a secret; nothing
breaks without a provider, with a failing one, without opentelemetry, or after fork."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError

pytest.importorskip("opentelemetry.sdk.metrics", reason="the test extra installs opentelemetry-sdk")

from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from iamdb import Credential, metrics, otel, signals
from iamdb.sources import CallableSource
from tests import leakscan
from tests.conftest import DbUser, make_wrapper

ROOT = Path(__file__).resolve().parents[2]


def exported(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """The data points of the ``iamdb`` meter, by instrument name."""
    data = reader.get_metrics_data()
    assert data is not None, "nothing was exported"
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "iamdb"
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    return points


def by_attributes(points: list[Any]) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset(point.attributes.items()): point for point in points}


def attrs(**attributes: Any) -> frozenset[tuple[str, Any]]:
    return frozenset({key.replace("_", "."): value for key, value in attributes.items()}.items())


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """A provider of the test's own (the global one can be set once per process)."""
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    metrics.reset()
    otel.enable(provider)
    otel.enable(provider)  # idempotent: a second set of receivers would double the counts
    yield memory
    otel.disable()
    provider.shutdown()


def test_fetches_refusals_and_failures_are_exported_without_secrets(
    db_user: DbUser, reader: InMemoryMetricReader, leaks: leakscan.LeakScan
) -> None:
    served = {"password": db_user.password, "stale_for": 0, "fail": False}

    def password() -> str:
        if served["fail"]:
            raise RuntimeError("secret store unreachable")
        if served["stale_for"]:
            served["stale_for"] = int(served["stale_for"]) - 1
            return str(served["password"])
        served["password"] = db_user.password
        return db_user.password

    source = CallableSource(password)
    wrapper = make_wrapper(db_user.settings(source), alias="otel_db")
    wrapper.ensure_connection()
    wrapper.close()
    old = db_user.password
    db_user.rotate()  # the server has the new password; the source serves the old one once more
    served["stale_for"] = 1
    wrapper.ensure_connection()
    wrapper.close()
    served["fail"] = True
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()

    points = exported(reader)
    described = source.describe()
    base = attrs(iamdb_alias="otel_db", iamdb_source=described)
    failed = base | attrs(error_type="CredentialError")
    fetches = by_attributes(points["iamdb.credential.fetches"])
    assert {key: point.value for key, point in fetches.items()} == {
        base: 3,  # the first connection, the refused (old) password, the new one
        failed: 1,
    }
    durations = by_attributes(points["iamdb.credential.fetch.duration"])
    assert {key: point.count for key, point in durations.items()} == {
        base: 3,
        failed: 1,
    }
    assert durations[base].explicit_bounds == otel.DURATION_BUCKETS
    assert 0 < durations[base].sum < 10
    refusals = by_attributes(points["iamdb.login.refusals"])
    assert {key: point.value for key, point in refusals.items()} == {base | attrs(iamdb_retrying=True): 1}
    assert "iamdb.connection.retirements" not in points  # nothing recorded, nothing exported
    # The Python counters saw the same events.
    counts = metrics.snapshot()[("otel_db", described)]
    assert (counts.fetches, counts.fetch_failures, counts.logins_refused) == (4, 1, 1)

    document = reader.get_metrics_data().to_json()
    for secret in (old, db_user.password):
        assert secret not in document
    assert db_user.name not in document  # not even the user name
    leaks.register(document)


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_a_retired_connection_is_exported(db_user: DbUser, reader: InMemoryMetricReader) -> None:
    def lease() -> Credential:
        now = time.time()
        return Credential(password=db_user.password, expires_at=now + 1.5, sessions_end_at=now + 1.5)

    source = CallableSource(lease)
    wrapper = make_wrapper(
        db_user.settings(source, CONN_MAX_AGE=None, OPTIONS={"iamdb": {"retire_margin": 1.0}}),
        alias="otel_db",
    )
    wrapper.ensure_connection()
    assert wrapper.close_at is not None
    time.sleep(max(wrapper.close_at - time.monotonic(), 0) + 0.05)
    wrapper.close_if_unusable_or_obsolete()
    assert wrapper.connection is None
    retirements = exported(reader)["iamdb.connection.retirements"]
    assert [(dict(p.attributes), p.value) for p in retirements] == [
        ({"iamdb.alias": "otel_db", "iamdb.source": source.describe()}, 1)
    ]


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_without_a_meter_provider_nothing_breaks(db_user: DbUser, caplog: pytest.LogCaptureFixture) -> None:
    # No global provider in this process: the API's proxy instruments, which do nothing.
    assert type(otel_metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
    metrics.reset()
    otel.enable()
    try:
        assert otel.is_enabled()
        wrapper = make_wrapper(db_user.settings(CallableSource(lambda: db_user.password)), alias="otel_db")
        with caplog.at_level(logging.DEBUG, logger="iamdb"):
            wrapper.ensure_connection()
            wrapper.close()
    finally:
        otel.disable()
    assert not otel.is_enabled()
    assert [counts.fetches for counts in metrics.snapshot().values()] == [1]
    assert not [r for r in caplog.records if "OpenTelemetry" in r.getMessage()]


class _Raising:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("exporter down")

    record = add


class _RaisingMeter(otel_metrics.NoOpMeter):
    def create_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _Raising()

    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        return _Raising()


class _RaisingProvider(otel_metrics.NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> otel_metrics.Meter:
        return _RaisingMeter(name)


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_an_opentelemetry_error_never_fails_a_request(
    db_user: DbUser, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otel, "_warned", False)
    stale = {"password": "not-yet-" + db_user.password}

    def password() -> str:
        current = stale["password"]
        stale["password"] = db_user.password  # a refused login first, then the right one
        return current

    otel.enable(_RaisingProvider())
    try:
        wrapper = make_wrapper(db_user.settings(CallableSource(password)), alias="otel_db")
        with caplog.at_level(logging.DEBUG, logger="iamdb"):
            wrapper.ensure_connection()  # two fetches and a refused login, each recorded
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
                assert cursor.fetchone() == (1,)
            wrapper.close()
    finally:
        otel.disable()
    raised = [r for r in caplog.records if "OpenTelemetry raised" in r.getMessage()]
    # Fetch (refused), refusal, fetch: a WARNING once per process, then DEBUG.
    assert [r.levelname for r in raised] == ["WARNING", "DEBUG", "DEBUG"]
    assert all("RuntimeError: exporter down" in r.getMessage() for r in raised)


class _OldApiMeter(otel_metrics.NoOpMeter):
    """A meter of opentelemetry-api before 1.30: no ``explicit_bucket_boundaries_advisory``."""

    histograms: list[str] = []

    def create_histogram(self, name: str, unit: str = "", description: str = "") -> Any:  # type: ignore[override]
        self.histograms.append(name)
        return otel_metrics.NoOpHistogram(name, unit, description)


class _OldApiProvider(otel_metrics.NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> otel_metrics.Meter:
        return _OldApiMeter(name)


def test_an_api_without_bucket_advice_still_gets_the_histogram() -> None:
    _OldApiMeter.histograms = []
    otel.enable(_OldApiProvider())
    try:
        assert otel.is_enabled()
        assert _OldApiMeter.histograms == ["iamdb.credential.fetch.duration"]
    finally:
        otel.disable()


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("vendor", ["postgresql"])
@pytest.mark.parametrize("sdk_setup", ["before", "after"])
def test_the_app_records_through_the_global_provider_without_code(db_user: DbUser, sdk_setup: str) -> None:
    # A project with "iamdb" in INSTALLED_APPS; the SDK is set up before or after Django starts.
    code = """
        import json, os
        import django
        from django.conf import settings
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from iamdb.sources import CallableSource

        reader = InMemoryMetricReader()
        if os.environ["OTEL_TEST_SDK_SETUP"] == "before":
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

        settings.configure(
            INSTALLED_APPS=["iamdb"],
            DATABASES={"default": {
                "ENGINE": "iamdb.backends.postgresql", "HOST": "127.0.0.1", "NAME": "postgres",
                "PORT": os.environ["OTEL_TEST_PORT"], "USER": os.environ["OTEL_TEST_USER"],
                "PASSWORD": CallableSource(lambda: os.environ["OTEL_TEST_PASSWORD"]),
            }},
        )
        django.setup()
        if os.environ["OTEL_TEST_SDK_SETUP"] == "after":
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        from django.db import connection
        connection.ensure_connection()
        connection.close()
        print(reader.get_metrics_data().to_json())
    """
    result = _run(
        code,
        {
            "OTEL_TEST_PORT": str(db_user.server.port),
            "OTEL_TEST_USER": db_user.name,
            "OTEL_TEST_PASSWORD": db_user.password,
            "OTEL_TEST_SDK_SETUP": sdk_setup,
        },
    )
    assert result.returncode == 0, result.stderr
    assert db_user.password not in result.stdout
    document = json.loads(result.stdout)
    [scope] = document["resource_metrics"][0]["scope_metrics"]
    assert scope["scope"]["name"] == "iamdb"
    values = {
        m["name"]: [p.get("value", p.get("count")) for p in m["data"]["data_points"]]
        for m in scope["metrics"]
    }
    assert values == {"iamdb.credential.fetches": [1], "iamdb.credential.fetch.duration": [1]}


def test_iamdb_otel_imports_without_opentelemetry() -> None:
    # A meta-path finder that refuses opentelemetry stands in for a venv without the extra.
    code = """
        import sys

        class NoOpenTelemetry:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError(f"No module named {name!r} (blocked)")
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        import django
        from django.conf import settings

        settings.configure(INSTALLED_APPS=["iamdb"])
        django.setup()  # the app's ready() skips OpenTelemetry quietly
        import iamdb.otel
        from iamdb.errors import MissingDependencyError

        assert not iamdb.otel.is_enabled()
        try:
            iamdb.otel.enable()
        except MissingDependencyError as exc:
            print(exc)
        assert "opentelemetry" not in sys.modules
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'iamdb.otel needs opentelemetry-api: pip install "iamdb[otel]"'


# Forking while a thread holds the lock is the point: Python 3.12+ warns about exactly that.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_records_through_its_copy_and_disable_stops(
    reader: InMemoryMetricReader,
) -> None:
    source = CallableSource(lambda: "unused")
    holder_in = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with otel._lock:
            holder_in.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_in.wait(10)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            signals.credential_fetched.send(CallableSource, source=source, alias="forked", duration=0.01)
            child_reader = InMemoryMetricReader()
            otel.enable(MeterProvider(metric_readers=[child_reader]))  # takes the lock
            signals.credential_fetched.send(CallableSource, source=source, alias="forked", duration=0.01)
            [point] = exported(child_reader)["iamdb.credential.fetches"]
            os.write(write_end, f"{point.attributes['iamdb.alias']} {point.value}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    release.set()
    holder.join(10)
    for _ in range(1000):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on iamdb.otel's lock")
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"forked 1"
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's reader saw nothing of the child's events, and still records its own.
    signals.credential_fetched.send(CallableSource, source=source, alias="parent", duration=0.01)
    [point] = exported(reader)["iamdb.credential.fetches"]
    assert point.attributes["iamdb.alias"] == "parent" and point.value == 1
    otel.disable()
    signals.credential_fetched.send(CallableSource, source=source, alias="parent", duration=0.01)
    assert [p.value for p in exported(reader)["iamdb.credential.fetches"]] == [1]  # not recorded
