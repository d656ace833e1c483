"""Google Cloud SQL IAM database authentication: an OAuth2 access token as the password."""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from ..clock import Clock
from ..engine import RefreshPolicy
from ..errors import ConfigurationError, MissingDependencyError
from ..values import Target
from . import _args, _oauth

try:
    import google.auth
    import google.auth.credentials
    import google.auth.exceptions
    import google.auth.transport.requests
except ImportError as exc:  # pragma: no cover - exercised in a venv without google-auth[requests]
    raise MissingDependencyError(
        'CloudSqlIamToken needs google-auth with requests: pip install "iamdb[gcp]"'
    ) from exc

__all__ = ["SCOPE", "CloudSqlIamToken"]

#: The OAuth2 scope Cloud SQL requires of a login token.
SCOPE = "https://www.googleapis.com/auth/sqlservice.login"

_SA_SUFFIX = ".gserviceaccount.com"


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport, each call's timeout cut to the caller's deadline."""

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        limit = _oauth.call_timeout()
        timeout = limit if timeout is None else min(float(timeout), limit)
        return super().__call__(  # type: ignore[no-untyped-call]
            url, method=method, body=body, headers=headers, timeout=timeout, **kwargs
        )


class CloudSqlIamToken(_oauth.OAuthTokenSource):
    """A Google OAuth2 access token with the ``sqlservice.login`` scope, for Cloud SQL IAM
    database authentication (PostgreSQL and MySQL).

    - ``credentials``: ``google.auth.credentials.Credentials`` to use (a service account key,
      impersonated credentials), scoped to ``sqlservice.login`` if they need scopes. By
      default ``google.auth.default(scopes=[SCOPE])``, made once per process.
    - ``allow_insecure_transport``: for local tests only (the token is a cleartext password).

    The source refreshes the credentials itself when the engine asks (ahead of the token's
    own expiry), not when google-auth would (which calls a token stale 3 min 45 s early).
    USER is the IAM user as Cloud SQL names it: ``sa@project.iam`` on PostgreSQL, ``sa`` on
    MySQL, for the service account ``sa@project.iam.gserviceaccount.com``.
    """

    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = (google.auth.exceptions.GoogleAuthError,)
    what: ClassVar[str] = "a Cloud SQL IAM token"
    hint: ClassVar[str] = (
        " (check google.auth.default()'s credentials: GOOGLE_APPLICATION_CREDENTIALS, "
        "`gcloud auth application-default login`, or the VM's service account; or pass credentials=)"
    )
    _transient: ClassVar[tuple[str, ...]] = ("_transport",)

    _transport: Any

    def __init__(
        self,
        *,
        credentials: Any = None,
        allow_insecure_transport: bool = False,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        name = type(self).__name__
        self._set_given(
            credentials,
            "google.auth.credentials.Credentials",
            lambda c: isinstance(c, google.auth.credentials.Credentials),
            "credentials",
        )
        self.allow_insecure_transport = _args.check_bool(
            name, "allow_insecure_transport", allow_insecure_transport
        )
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        given = self._given
        return (
            f"CloudSqlIamToken(credentials={type(given).__name__})"
            if given is not None
            else ("CloudSqlIamToken()")
        )

    def _new_transient_state(self) -> None:
        super()._new_transient_state()
        self._transport = None

    def make_default(self) -> Any:
        credentials, _project = google.auth.default(scopes=[SCOPE], request=self.transport())
        return credentials

    def prepare(self, given: Any) -> Any:
        return google.auth.credentials.with_scopes_if_required(given, [SCOPE])  # type: ignore[no-untyped-call]

    def transport(self) -> Any:
        """This process's HTTP transport (a requests Session of its own, made again after fork)."""
        transport = self._transport
        if transport is None:
            transport = self._transport = _TimedRequest()
        return transport

    def check_target(self, target: Target) -> None:
        super().check_target(target)
        user = target.user
        if user.lower().endswith(_SA_SUFFIX):
            short = user[: -len(_SA_SUFFIX)]
            expected = short if target.vendor == "postgresql" else short.split("@", 1)[0]
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()}: USER {user!r} is a service account's "
                f"email; Cloud SQL names its database user {expected!r} on "
                f"{'PostgreSQL' if target.vendor == 'postgresql' else 'MySQL'}: set USER to that"
            )

    def request_token(self, sdk: Any, target: Target) -> tuple[str, float | None]:
        with self._sdk_lock:  # one refresh of these credentials at a time in this source
            sdk.refresh(self.transport())
            token, expiry = sdk.token, sdk.expiry
        return str(token or ""), _epoch(expiry)


def _epoch(expiry: datetime.datetime | None) -> float | None:
    """google-auth's expiry (a naive datetime in UTC) as epoch seconds."""
    if expiry is None:
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.timezone.utc)
    return expiry.timestamp()
