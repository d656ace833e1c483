"""What the AWS sources share: boto3 sessions and clients, regions, timeouts, error
translation, argument checks and log redaction.

- One client per process for each (service, region, session, timeout bucket),
  created lazily under a lock (creating clients and sessions is not
  thread-safe; using a client is). Never a new boto3 Session per connection.
- fork(): a child must not use its parent's locks, sessions or clients (a
  parent's thread may have held a lock at fork time; a client's connection
  pool must not be shared across processes). The module lock, iamdb's own
  default Session and every client are re-created in the child; a Session the
  user passed is rebuilt from its description (see :meth:`AwsSource.aws_session`).
- Timeouts: botocore has no per-call timeout, so a call made while a caller
  waits uses a client whose connect/read timeouts and attempts fit the time the
  caller has left (:func:`iamdb.deadline.timeout_for`), rounded up to one of a
  few buckets (:data:`TIMEOUT_BUCKETS`).
- botocore logs, at DEBUG, the canonical request and signature of what it signs
  (an RDS IAM token can be rebuilt from them), request headers (an STS session
  token) and response bodies (``SecretString``). While iamdb makes an AWS call,
  those records are redacted before any handler sees them; other code's AWS
  calls are left alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import re
import threading
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar

from ..credentials import CredentialSource
from ..deadline import timeout_for
from ..errors import ConfigurationError, MissingDependencyError
from ._args import shown

try:
    import boto3
    import boto3.session
    import botocore.config
    import botocore.credentials
    import botocore.exceptions
except ImportError as exc:  # pragma: no cover - exercised in a venv without boto3
    raise MissingDependencyError('iamdb\'s AWS sources need boto3: pip install "iamdb[aws]"') from exc

__all__ = [
    "SDK_ERRORS",
    "AwsSource",
    "client",
    "default_region",
    "describe_aws_error",
    "redacted_logging",
]

#: What the AWS SDK raises; the sources catch these and nothing else.
SDK_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
)

#: The timeout of an AWS call made with no caller waiting (a background refresh).
CALL_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Bucket:
    """The client settings for calls that must end within ``budget`` seconds."""

    budget: float
    connect_timeout: float
    read_timeout: float
    attempts: int


#: Time left to the caller -> the client used, rounded UP to the next bucket.
#: ``attempts * read_timeout`` stays within the bucket (botocore's "standard"
#: retry mode waits well under a second between attempts after a connection error).
TIMEOUT_BUCKETS = (
    Bucket(1.0, connect_timeout=1.0, read_timeout=1.0, attempts=1),
    Bucket(2.0, connect_timeout=1.0, read_timeout=1.0, attempts=2),
    Bucket(5.0, connect_timeout=2.0, read_timeout=2.5, attempts=2),
    Bucket(CALL_TIMEOUT, connect_timeout=3.0, read_timeout=3.0, attempts=3),
)


def bucket_for(seconds: float) -> Bucket:
    """The smallest bucket that gives a call ``seconds`` (the largest one beyond)."""
    for bucket in TIMEOUT_BUCKETS:
        if seconds <= bucket.budget:
            return bucket
    return TIMEOUT_BUCKETS[-1]


def _config(bucket: Bucket) -> botocore.config.Config:
    return botocore.config.Config(
        connect_timeout=bucket.connect_timeout,
        read_timeout=bucket.read_timeout,
        retries={"mode": "standard", "total_max_attempts": bucket.attempts},
    )


class LockTimeout(botocore.exceptions.BotoCoreError):
    """Another thread held iamdb's AWS lock (creating a client) past the caller's deadline."""

    fmt = "waited {seconds:.2g} s for another thread creating an AWS client or session"


_clients: dict[Hashable, Any] = {}
_default_session: Any = None
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A parent's thread may have held the lock at fork time: a new one, and no
    session or client of the parent's."""
    global _default_session, _lock
    _lock = threading.Lock()
    _clients.clear()
    _default_session = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """The module lock, waited for until the caller's deadline at most."""
    lock = _lock
    seconds = timeout_for(CALL_TIMEOUT)
    if not lock.acquire(timeout=seconds):
        raise LockTimeout(seconds=seconds)
    try:
        yield
    finally:
        lock.release()


def default_session() -> Any:
    """iamdb's own boto3 Session for sources given none (boto3's default chain)."""
    session = _default_session
    if session is not None:
        return session
    return _make_default_session()


def _make_default_session() -> Any:
    global _default_session
    with _locked():
        if _default_session is None:
            _default_session = boto3.session.Session()
        return _default_session


def client(service: str, region: str | None, session: Any = None, *, budget: float | None = None) -> Any:
    """The process's client for ``service`` in ``region`` made from ``session``
    (None: iamdb's default Session), for calls that must end within ``budget``
    seconds (None: :data:`CALL_TIMEOUT`)."""
    bucket = bucket_for(CALL_TIMEOUT if budget is None else budget)
    key = (service, region, id(session) if session is not None else None, bucket.budget)
    found = _clients.get(key)
    if found is not None:
        return found
    owner = session if session is not None else default_session()
    with _locked():
        found = _clients.get(key)
        if found is None:
            found = owner.client(service, region_name=region, config=_config(bucket))
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
    """When the session's temporary AWS credentials end (epoch seconds, as botocore
    keeps it), if they do."""
    owner = session if session is not None else default_session()
    credentials = owner.get_credentials()
    expiry = getattr(credentials, "_expiry_time", None)  # RefreshableCredentials only
    if expiry is None:
        return None
    return float(expiry.timestamp())


# -- sessions -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionRecipe:
    """What a user's boto3 Session is made of, as far as it can be made again:
    its profile (if it exists in the config files) and its region."""

    profile: str | None
    region: str | None

    @classmethod
    def of(cls, session: Any) -> SessionRecipe:
        profile = session.profile_name
        # Without a config file, a Session reports the profile "default" that does not exist.
        if profile not in session.available_profiles:
            profile = None
        region = session.region_name
        return cls(profile=profile, region=str(region) if region else None)

    def build(self, previous: Any = None) -> Any:
        """A new Session from this recipe, with the static keys of ``previous`` if it
        had any (keys given to ``boto3.Session``, or read from the environment or a
        credentials file). Nothing of ``previous`` is called: only its plain key
        attributes are read, so that a lock its credentials held does not matter."""
        keys: dict[str, Any] = {}
        resolved = getattr(getattr(previous, "_session", None), "_credentials", None)
        if type(resolved) is botocore.credentials.Credentials:
            keys = {
                "aws_access_key_id": resolved.access_key,
                "aws_secret_access_key": resolved.secret_key,
                "aws_session_token": resolved.token,
            }
        return boto3.session.Session(profile_name=self.profile, region_name=self.region, **keys)


class AwsSource(CredentialSource):
    """What the AWS sources share: an optional user-given ``boto3.Session``.

    A Session is not fork-safe (its refreshable credentials hold a lock, which a
    parent's thread may hold at fork time) and cannot be pickled (Django's
    parallel test runner under spawn). In a forked child and after unpickling,
    the source makes a new Session from the same profile and region (and the
    same static keys after fork), on first use.
    """

    _transient: ClassVar[tuple[str, ...]] = ("_session", "_session_pid")
    _session: Any
    _session_pid: int | None

    def _set_session(self, session: Any) -> None:
        if session is not None and not isinstance(session, boto3.session.Session):
            raise ConfigurationError(
                f"{type(self).__name__}: session must be None or a boto3.session.Session, "
                f"not {shown(session)}"
            )
        self._session_recipe = None if session is None else SessionRecipe.of(session)
        self._session = session
        self._session_pid = os.getpid()

    def _new_transient_state(self) -> None:
        super()._new_transient_state()
        if not hasattr(self, "_session"):  # unpickled: rebuilt on first use
            self._session = None
            self._session_pid = None

    def aws_session(self) -> Any:
        """The boto3 Session to use in this process; None for iamdb's default one."""
        recipe = self._session_recipe
        if recipe is None:
            return None
        if self._session_pid == os.getpid():
            return self._session
        with _locked():
            if self._session_pid != os.getpid():  # unpickled, or in a forked child
                self._session = recipe.build(self._session)
                self._session_pid = os.getpid()
            return self._session


# -- argument checks ------------------------------------------------------------------------

# -- errors -------------------------------------------------------------------------------


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
