"""Where the demo's secret is "published": a file, as a mounted secret would be.

The rotator writes the new password here a moment after changing it on the
server; the application reads it through :func:`read_published_password`.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_calls = 0
_calls_lock = threading.Lock()


def secret_path() -> Path:
    return Path(os.environ["IAMDB_DEMO_SECRET_FILE"])


def read_published_password() -> str:
    """The password currently published (the callable the application gives iamdb)."""
    global _calls
    with _calls_lock:
        _calls += 1
    return secret_path().read_text().strip()


def calls() -> int:
    """How many times the application has read the published password."""
    with _calls_lock:
        return _calls


def publish(password: str, path: Path | None = None) -> None:
    """Replace the published password atomically (readers see the old or the new one)."""
    path = path or secret_path()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
    with os.fdopen(fd, "w") as fh:
        fh.write(password)
    os.replace(tmp, path)
