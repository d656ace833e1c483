"""moto's server on a free 127.0.0.1 port: a real HTTP endpoint for Secrets Manager.

The product finds it the way it finds AWS: through boto3's configuration
(``AWS_ENDPOINT_URL_SECRETS_MANAGER``), which :meth:`MotoServer.environ` gives.
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.services.postgres import free_port
from tests.services.process import stop_process


def _moto_command() -> list[str]:
    beside = Path(sys.executable).with_name("moto_server")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("moto_server")
    return [found] if found else [sys.executable, "-m", "moto.server"]


class MotoServer:
    region = "us-east-1"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        self.process = subprocess.Popen(
            [*_moto_command(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)

    def environ(self) -> dict[str, str]:
        """What points boto3 (and so iamdb) at this server."""
        return {
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.url,
            "AWS_ENDPOINT_URL_STS": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
        }

    def admin_client(self) -> Any:
        """A Secrets Manager client for the tests themselves (creating, rotating secrets).

        botocore logs each request body at DEBUG, the ``SecretString`` a test writes
        included: those records of the admin client's calls are dropped, so that the
        logs the tests scan hold what iamdb's own calls log, and nothing else."""
        import boto3

        client = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=self.region
        ).client("secretsmanager", endpoint_url=self.url)
        _quiet_loggers()
        return _AdminClient(client)


_admin_call: contextvars.ContextVar[bool] = contextvars.ContextVar("moto_admin_call", default=False)


class _DuringAdminCalls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _admin_call.get()


_filter = _DuringAdminCalls()


def _quiet_loggers() -> None:
    """Drop, on this thread, the botocore and urllib3 records of an admin call."""
    names = {"urllib3.connectionpool"}
    names |= {name for name in logging.Logger.manager.loggerDict if name.startswith("botocore")}
    for name in names:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


class _AdminClient:
    """A boto3 client whose calls log nothing (see :meth:`MotoServer.admin_client`)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def quiet(*args: Any, **kwargs: Any) -> Any:
            token = _admin_call.set(True)
            try:
                return attribute(*args, **kwargs)
            finally:
                _admin_call.reset(token)

        return quiet
