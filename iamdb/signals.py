"""Django signals that iamdb sends, for monitoring. None of them carries a secret.

Each is sent with ``sender`` the source's class and these keyword arguments:

- :data:`credential_fetched`: ``source``, ``alias``, ``duration`` (seconds the fetch
  took), ``username`` (the user name issued, or None);
- :data:`refresh_failed`: ``source``, ``alias``, ``duration``, ``error`` (the iamdb
  error, whose message names the database and the source). Sent for every failed
  fetch, whether a cached credential is still served or the request fails;
- :data:`login_refused`: ``source``, ``alias``, ``attempt`` (1 for the first refusal),
  ``retrying`` (whether a new credential is fetched and the login tried again);
- :data:`connection_retired`: ``source``, ``alias``: a persistent connection was
  closed before its credential's sessions end (a Vault lease).

The ``iamdb`` logger records the same events. :mod:`iamdb.metrics` counts them;
:mod:`iamdb.otel` records them as OpenTelemetry metrics.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["connection_retired", "credential_fetched", "login_refused", "refresh_failed"]

credential_fetched = Signal()
refresh_failed = Signal()
login_refused = Signal()
connection_retired = Signal()
