"""iamdb's events as OpenTelemetry metrics (the ``otel`` extra: ``pip install "iamdb[otel]"``).

With ``"iamdb"`` in ``INSTALLED_APPS`` and opentelemetry-api installed, the app enables
this when Django starts: iamdb then records through the global ``MeterProvider``, the
one your OpenTelemetry SDK setup installs (before or after Django starts). Without a
provider the API's instruments do nothing. Elsewhere, call :func:`enable` once.

Instruments (meter ``iamdb``), fed by :mod:`iamdb.signals`:

- ``iamdb.credential.fetches`` (counter, ``{fetch}``): every fetch, the failed ones
  with ``error.type`` (the iamdb error's class name);
- ``iamdb.credential.fetch.duration`` (histogram, ``s``): how long each fetch took,
  same attributes;
- ``iamdb.login.refusals`` (counter, ``{refusal}``): logins the server refused, with
  ``iamdb.retrying`` (whether a new credential was fetched and the login tried again);
- ``iamdb.connection.retirements`` (counter, ``{connection}``): persistent connections
  closed before their credential's sessions end.

Every one carries ``iamdb.alias`` (the ``DATABASES`` key) and ``iamdb.source`` (the
source's ``describe()``): never a secret, never a user name. An OpenTelemetry error is
logged, never raised into the request that sent the event.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from . import __version__, signals
from .errors import MissingDependencyError, describe

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.util.types import Attributes

__all__ = ["disable", "enable", "is_enabled"]

logger = logging.getLogger("iamdb")

METER_NAME = "iamdb"
ALIAS = "iamdb.alias"
SOURCE = "iamdb.source"
RETRYING = "iamdb.retrying"
ERROR_TYPE = "error.type"  # OpenTelemetry's general attribute for a failed operation

#: Fetch duration buckets, in seconds: a local callable takes microseconds, an SDK call
#: tens of milliseconds, a slow credential service seconds (the SDK's default buckets
#: are meant for milliseconds and would put every fetch in the first one).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_DISPATCH_UID = "iamdb.otel"
_NO_PROVIDER = object()  # the global provider (through the API's proxy)


@dataclasses.dataclass(frozen=True)
class _Instruments:
    provider: object  # what enable() was given: a MeterProvider or _NO_PROVIDER
    fetches: Counter
    duration: Histogram
    refusals: Counter
    retirements: Counter


_instruments: _Instruments | None = None
_lock = threading.Lock()
_warned = False


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


def enable(meter_provider: MeterProvider | None = None) -> None:
    """Record iamdb's events as OpenTelemetry metrics, through ``meter_provider`` or, by
    default, the global provider (also one set later, with
    ``opentelemetry.metrics.set_meter_provider``).

    Calling it again with the same provider does nothing; with another, iamdb records
    through that one from then on. Raises :class:`~iamdb.errors.MissingDependencyError`
    when opentelemetry-api is not installed.
    """
    global _instruments
    try:
        from opentelemetry import metrics as api
    except ImportError as exc:
        raise MissingDependencyError('iamdb.otel needs opentelemetry-api: pip install "iamdb[otel]"') from exc
    wanted = _NO_PROVIDER if meter_provider is None else meter_provider
    with _lock:
        if _instruments is not None and _instruments.provider is wanted:
            return
        if meter_provider is None:
            meter = api.get_meter(METER_NAME, __version__)
        else:
            meter = meter_provider.get_meter(METER_NAME, __version__)
        histogram = ("iamdb.credential.fetch.duration", "s", "How long iamdb's credential fetches took")
        try:
            duration = meter.create_histogram(
                *histogram, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
            )
        except TypeError:  # opentelemetry-api before 1.30: no advisory buckets
            duration = meter.create_histogram(*histogram)
        _instruments = _Instruments(
            provider=wanted,
            fetches=meter.create_counter(
                "iamdb.credential.fetches",
                unit="{fetch}",
                description="Credential fetches by iamdb's sources; failed ones carry error.type",
            ),
            duration=duration,
            refusals=meter.create_counter(
                "iamdb.login.refusals",
                unit="{refusal}",
                description="Logins the database server refused with a credential from iamdb",
            ),
            retirements=meter.create_counter(
                "iamdb.connection.retirements",
                unit="{connection}",
                description="Persistent connections closed before their credential's sessions end",
            ),
        )
        signals.credential_fetched.connect(_fetched, dispatch_uid=_DISPATCH_UID)
        signals.refresh_failed.connect(_failed, dispatch_uid=_DISPATCH_UID)
        signals.login_refused.connect(_refused, dispatch_uid=_DISPATCH_UID)
        signals.connection_retired.connect(_retired, dispatch_uid=_DISPATCH_UID)


def disable() -> None:
    """Stop recording (the instruments already exported keep their values)."""
    global _instruments
    with _lock:
        for signal in (
            signals.credential_fetched,
            signals.refresh_failed,
            signals.login_refused,
            signals.connection_retired,
        ):
            signal.disconnect(dispatch_uid=_DISPATCH_UID)
        _instruments = None


def is_enabled() -> bool:
    """Whether iamdb records its events as OpenTelemetry metrics in this process."""
    return _instruments is not None


def _enable_if_installed() -> None:
    """:func:`enable` with the global provider when opentelemetry-api is installed (the
    app's ``ready()``); an OpenTelemetry error is logged, Django still starts."""
    try:
        enable()
    except MissingDependencyError:
        return
    except Exception as exc:  # the OpenTelemetry side (a provider of the project's) raised
        _warn("enabling", exc)


def _attributes(alias: str, source: Any, **extra: Any) -> Attributes:
    described = source.describe() if source is not None else "-"
    return {ALIAS: alias, SOURCE: described, **extra}


def _warn(what: str, exc: Exception) -> None:
    """Once per process at WARNING, then at DEBUG: an exporter that fails at every event
    should not flood the log."""
    global _warned
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    logger.log(level, "iamdb: OpenTelemetry raised while %s iamdb's metrics: %s", what, describe(exc))


def _fetched(sender: Any, *, source: Any, alias: str, duration: float, **_: Any) -> None:
    instruments = _instruments
    if instruments is None:
        return
    try:
        attributes = _attributes(alias, source)
        instruments.fetches.add(1, attributes)
        instruments.duration.record(duration, attributes)
    except Exception as exc:  # never fail the request over a metric
        _warn("recording", exc)


def _failed(sender: Any, *, source: Any, alias: str, duration: float, error: BaseException, **_: Any) -> None:
    instruments = _instruments
    if instruments is None:
        return
    try:
        attributes = _attributes(alias, source, **{ERROR_TYPE: type(error).__qualname__})
        instruments.fetches.add(1, attributes)
        instruments.duration.record(duration, attributes)
    except Exception as exc:  # never fail the request over a metric
        _warn("recording", exc)


def _refused(sender: Any, *, source: Any, alias: str, retrying: bool, **_: Any) -> None:
    instruments = _instruments
    if instruments is None:
        return
    try:
        instruments.refusals.add(1, _attributes(alias, source, **{RETRYING: retrying}))
    except Exception as exc:  # never fail the request over a metric
        _warn("recording", exc)


def _retired(sender: Any, *, source: Any, alias: str, **_: Any) -> None:
    instruments = _instruments
    if instruments is None:
        return
    try:
        instruments.retirements.add(1, _attributes(alias, source))
    except Exception as exc:  # never fail the request over a metric
        _warn("recording", exc)
