"""Every integration test runs under the leak scan of ``tests/leakscan.py``.

Only fixtures here: ``pytest_plugins`` may not be declared in a conftest below the
root one, and the test modules that declare ``pytest_plugins`` themselves
(``tests.integration.conftest_aws``) keep doing so.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import leakscan


@pytest.fixture(scope="session", autouse=True)
def _leakscan_recorders() -> Iterator[None]:
    """The recording wrappers (fetched passwords, child processes, warnings...), once."""
    with leakscan.recorders():
        yield


@pytest.fixture(autouse=True)
def leaks(_leakscan_recorders: None, request: pytest.FixtureRequest) -> Iterator[leakscan.LeakScan]:
    """The test's leak scan: ``leaks.add(secret)``, ``leaks.check_exception(exc)``,
    ``leaks.register(obj)``, ``with leaks.paused():``. Fails the test at teardown
    when a secret it used shows up in a log record, a warning, an exception, a
    debug page, a registered repr or a child's argv."""
    with leakscan.scanning(request.node.nodeid) as scan:
        yield scan
