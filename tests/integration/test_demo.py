"""The demo (``scripts/demo``: ``examples/demo/run.py``) in a short mode, as a subprocess:
it starts its own services, prints its table, and its exit status says whether any
request through iamdb failed. Marker ``demo``: one matrix entry runs it (scripts/test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services.iam_emulator import needs_root

pytestmark = [pytest.mark.demo, pytest.mark.root, needs_root]

RUN = Path(__file__).resolve().parents[2] / "examples" / "demo" / "run.py"
SOURCES = ("callable", "Secrets Manager (moto)", "RDS IAM (emulator)", "Vault (OpenBao)")
ENGINES = ("MariaDB", "PostgreSQL")
ROW = re.compile(
    r"^(?P<source>" + "|".join(re.escape(source) for source in SOURCES) + r")\s+"
    r"(?P<engine>MariaDB|PostgreSQL)\s+(?P<ok>\d+)\s+(?P<failed>\d+)\s+(?P<fetches>\d+)\s+\d+\s+"
    r"(?P<survived>\d+) [a-z ]+?\s+(?P<stock_ok>\d+)\s+(?P<stock_failed>\d+)$",
    re.MULTILINE,
)


def run_demo(*args: str) -> tuple[int, str, dict[tuple[str, str], dict[str, int]]]:
    """The demo's exit status, its output, and its table's rows by (source, engine)."""
    result = subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    rows = {
        (match["source"], match["engine"]): {
            key: int(value) for key, value in match.groupdict().items() if key not in ("source", "engine")
        }
        for match in ROW.finditer(result.stdout)
    }
    return result.returncode, output, rows


def test_every_source_and_engine_with_no_failure_through_iamdb() -> None:
    status, output, rows = run_demo("--seconds", "3", "--threads", "2", "--jobs", "8")
    assert status == 0, output
    assert set(rows) == {(source, engine) for source in SOURCES for engine in ENGINES}, output
    for key, row in rows.items():
        assert row["failed"] == 0, (key, output)
        assert row["ok"] > 0 and row["fetches"] >= 1, (key, output)
    # The rotations happened while the app ran (the first one 0.75 s after it started).
    for engine in ENGINES:
        assert rows["callable", engine]["survived"] >= 1, output
        assert rows["Secrets Manager (moto)", engine]["survived"] >= 1, output
    assert "demo: 0 failed requests through iamdb, in 8 scenarios" in output


def test_a_failed_request_through_iamdb_fails_the_demo() -> None:
    """A real failure: the app's Secrets Manager source reads a secret whose password the
    server never had; iamdb retries with fresh reads, then gives up after its retry budget."""
    status, output, rows = run_demo(
        "--source", "secretsmanager", "--engine", "mysql", "--seconds", "0", "--wrong-secret"
    )
    assert status == 1, output
    assert set(rows) == {("Secrets Manager (moto)", "MariaDB")}, output
    row = rows["Secrets Manager (moto)", "MariaDB"]
    assert row["failed"] == 1 and row["ok"] == 0, output  # the first request (no load: 0 s)
    assert row["fetches"] >= 2, output  # read again after the server refused it
    assert "demo: FAILED requests through iamdb: Secrets Manager (moto) on MariaDB" in output
    assert "Access denied for user" in output
