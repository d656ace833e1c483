"""What the AWS sources share: boto3 clients, regions, error translation, log redaction.

- One client per process for each (service, region, session), created lazily
  under a lock (creating clients and sessions is not thread-safe; using a
  client is). A forked child starts with none and creates its own: a client's
  connection pool must not be shared across processes. Never a new boto3
  Session per connection.
- botocore logs, at DEBUG, the canonical request and signature of what it signs
  (an RDS IAM token can be rebuilt from them), request headers (an STS session
  token) and response bodies (``SecretString``). While iamdb makes an AWS call,
  those records are redacted before any handler sees them; other code's AWS
  calls are left alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import threading
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar

from ..credentials import CredentialSource
from ..errors import MissingDependencyError

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError as exc:  # pragma: no cover - exercised in a venv without boto3
    raise MissingDependencyError('iamdb\'s AWS sources need boto3: pip install "iamdb[aws]"') from exc

__all__ = ["AwsSource", "client", "default_region", "describe_aws_error", "redacted_logging"]

#: Timeouts for calls made while a database connection waits: botocore's
#: default of 60 s each would hold a request far longer than a login.
#: Retries: botocore's "standard" mode, 3 attempts (an unreachable endpoint
#: fails within a few seconds).
CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=5,
    read_timeout=10,
    retries={"mode": "standard", "total_max_attempts": 3},
)

_clients: dict[Hashable, Any] = {}
_default_session: Any = None
_lock = threading.Lock()


def _forget_clients() -> None:
    global _default_session
    _clients.clear()
    _default_session = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_clients)


def default_session() -> Any:
    """iamdb's own boto3 Session for sources given none (boto3's default chain)."""
    global _default_session
    with _lock:
        if _default_session is None:
            _default_session = boto3.session.Session()
        return _default_session


def new_session(profile_name: str | None) -> Any:
    """A boto3 Session for a profile (re-creating a source's session after unpickling)."""
    return boto3.session.Session(profile_name=profile_name)


class AwsSource(CredentialSource):
    """What the AWS sources share: an optional ``boto3.Session``, kept across pickling.

    A Session cannot be pickled (Django's parallel test runner under spawn): it is
    dropped and re-created from its profile name in the new process.
    """

    _transient: ClassVar[tuple[str, ...]] = ("_session",)
    _session: Any

    def _set_session(self, session: Any) -> None:
        profile = getattr(session, "profile_name", None) if session is not None else None
        # Without a config file, a Session reports the profile "default" that does not exist.
        self._session_profile = profile if profile in getattr(session, "available_profiles", ()) else None
        self._explicit_session = session is not None
        self._session = session

    def _new_transient_state(self) -> None:
        if getattr(self, "_explicit_session", False) and getattr(self, "_session", None) is None:
            self._session = new_session(self._session_profile)
        elif not hasattr(self, "_session"):
            self._session = None


def client(service: str, region: str | None, session: Any = None) -> Any:
    """The process's client for ``service`` in ``region`` made from ``session``."""
    key = (service, region, id(session) if session is not None else None)
    found = _clients.get(key)
    if found is not None:
        return found
    owner = session if session is not None else default_session()
    with _lock:
        found = _clients.get(key)
        if found is None:
            found = owner.client(service, region_name=region, config=CLIENT_CONFIG)
            # Keep the session alive with its client, so that its id() is not reused.
            found._iamdb_session = owner
            _clients[key] = found
            _install_redaction()
        return found


def default_region(session: Any = None) -> str | None:
    """The region boto3 would use on its own (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
    owner = session if session is not None else default_session()
    region = owner.region_name
    return str(region) if region else None


def credentials_expiry(session: Any = None) -> float | None:
    """When the session's temporary AWS credentials end (epoch seconds), if they do."""
    owner = session if session is not None else default_session()
    credentials = owner.get_credentials()
    expiry = getattr(credentials, "_expiry_time", None)  # RefreshableCredentials only
    if expiry is None:
        return None
    return float(expiry.timestamp())


def describe_aws_error(exc: BaseException) -> str:
    """A one-line, secret-free account of an SDK error, with a hint where one helps."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return (
            "no AWS credentials found (boto3's default chain: environment variables, "
            "shared config and credentials files, container or instance role; or pass session=)"
        )
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return "no AWS region configured"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        message = error.get("Message", "")
        operation = getattr(exc, "operation_name", "")
        return f"{operation} failed: {code}: {message}".strip().rstrip(":")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"could not connect to the AWS endpoint {exc.kwargs.get('endpoint_url', '')}".strip()
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


# -- log redaction ------------------------------------------------------------------------

_in_iamdb_call: contextvars.ContextVar[bool] = contextvars.ContextVar("iamdb_aws_call", default=False)

REDACTED = "<redacted by iamdb>"

#: Loggers whose DEBUG records carry what was signed or received.
_LEAKY_LOGGERS = ("botocore.auth", "botocore.endpoint", "botocore.parsers", "botocore.signers")

# A second line of defence for every other botocore/urllib3 record during our calls.
_SECRET_PATTERNS = re.compile(
    r"(X-Amz-Signature=|X-Amz-Security-Token=|Signature=|X-Amz-Security-Token['\"]?:\s*b?['\"]|"
    r"SecretString['\"]?:\s*['\"]|SecretBinary['\"]?:\s*['\"])[^&,'\"\s]*",
    re.IGNORECASE,
)


class _RedactingFilter(logging.Filter):
    """Redacts the DEBUG records botocore emits during iamdb's own AWS calls."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _in_iamdb_call.get():
            return True
        if record.name in _LEAKY_LOGGERS and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(REDACTED for _ in args)
        else:
            message = record.getMessage()
            cleaned = _SECRET_PATTERNS.sub(lambda m: m.group(1) + REDACTED, message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        if record.exc_info and record.name in _LEAKY_LOGGERS:
            record.exc_info = None
            record.exc_text = None
        return True


_filter = _RedactingFilter()
_filtered: set[str] = set()


def _install_redaction() -> None:
    """Attach the filter to every botocore logger that exists (they are made at import)."""
    names = set(_LEAKY_LOGGERS) | {"urllib3.connectionpool"}
    names |= {name for name in logging.Logger.manager.loggerDict if name.startswith("botocore.")}
    for name in names - _filtered:
        logging.getLogger(name).addFilter(_filter)
        _filtered.add(name)


@contextlib.contextmanager
def redacted_logging() -> Iterator[None]:
    """Within this block, botocore's DEBUG records on this thread hide secrets."""
    _install_redaction()
    token = _in_iamdb_call.set(True)
    try:
        yield
    finally:
        _in_iamdb_call.reset(token)
