"""What the OAuth access-token sources share (Cloud SQL IAM, Azure Entra ID): a cloud SDK's
credential object, kept per process, asked for a token whose expiry the source tracks itself.

- The SDK's own idea of "still valid" is not used: google-auth calls a token with less than
  3 min 45 s left stale, and MSAL (under azure-identity) hands back the token it cached until
  5 minutes before its end. The source takes the token and its expiry as the SDK reports them,
  and the engine decides when to ask again.
- A credential's lifetime counts from when it was fetched, not from when the token was issued:
  a refresh that returns the token already held (a cached token) gives a credential whose
  windows open again within what is left of the token's life (by default at a quarter of it),
  so the next refresh comes later each time, and soon after the SDK's cache lets the token go,
  a new one is returned. No fetch per connection; no error.
- The SDK object is not fork-safe (locks, HTTP sessions): one made by iamdb is made again in a
  forked child; one the user gave is used, in a child, through a copy made by pickling it
  (no lock or session of the parent's is carried over), or as it is if it cannot be pickled.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from ..credentials import CredentialSource
from ..deadline import timeout_for
from ..errors import ConfigurationError, CredentialError, secret_free
from ..tls import check_transport
from ..values import Credential, Target

logger = logging.getLogger("iamdb")

#: The timeout of an SDK call made with no caller waiting (a background refresh).
CALL_TIMEOUT = 10.0

#: How long a token with no expiry is used before it is asked for again (none should lack one).
NO_EXPIRY_REFRESH = 300.0


def call_timeout() -> float:
    """The timeout of the next SDK call: :data:`CALL_TIMEOUT`, cut to the caller's deadline."""
    return timeout_for(CALL_TIMEOUT)


class OAuthTokenSource(CredentialSource):
    """Base class: an access token from an SDK credential object, used as the password.

    A subclass sets :attr:`sdk_errors` and :attr:`what`, and provides :meth:`make_default`
    (the SDK object iamdb makes when none is given), :meth:`prepare` (what is done to a given
    one, e.g. scoping it), :meth:`request_token` and :meth:`describe`.
    """

    token_per_fetch: ClassVar[bool] = True
    _transient: ClassVar[tuple[str, ...]] = ("_sdk", "_sdk_lock")
    #: The SDK's exception classes: caught and translated, nothing else.
    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: What the token is, for messages ("a Cloud SQL IAM token").
    what: ClassVar[str] = "a token"
    #: What to check when the SDK fails (appended to the error message).
    hint: ClassVar[str] = ""

    allow_insecure_transport: bool
    _given: Any
    _given_pid: int
    _sdk: Any
    _sdk_lock: threading.Lock

    def _set_given(self, given: Any, kind: str, accepted: Callable[[Any], bool], name: str) -> None:
        if given is not None and not accepted(given):
            raise ConfigurationError(
                f"{type(self).__name__}: {name} must be None or {kind}, not {type(given).__name__}"
            )
        self._given = given
        self._given_pid = os.getpid()

    def _new_transient_state(self) -> None:
        super()._new_transient_state()
        self._sdk = None
        self._sdk_lock = threading.Lock()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Unpickled in this process: the given object is this process's own copy.
        self._given_pid = os.getpid()

    # -- what a subclass provides -------------------------------------------------------

    def make_default(self) -> Any:
        """The SDK object used when none was given (made once per process, lazily)."""
        raise NotImplementedError

    def prepare(self, given: Any) -> Any:
        """What is used of a given SDK object (by default, the object itself)."""
        return given

    def request_token(self, sdk: Any, target: Target) -> tuple[str, float | None]:
        """A token from ``sdk`` and when it ends (epoch seconds; None if not told)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------

    def sdk_object(self) -> Any:
        """The SDK object of this process (made on first use, and again after fork)."""
        sdk = self._sdk
        if sdk is not None:
            return sdk
        with self._sdk_lock:
            if self._sdk is None:
                self._sdk = self._make_sdk_object()
            return self._sdk

    def _make_sdk_object(self) -> Any:
        given = self._given
        if given is None:
            return self.make_default()
        if self._given_pid != os.getpid():
            # A forked child: the parent's object may hold a lock a parent's thread held.
            try:
                given = pickle.loads(pickle.dumps(given))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                logger.debug(
                    "iamdb: %s: the given credential cannot be copied in a forked child (%s): "
                    "using the parent's object",
                    self.describe(),
                    type(exc).__name__,
                )
        return self.prepare(given)

    def check_target(self, target: Target) -> None:
        where = f"database {target.alias!r}: {self.describe()}"
        if not target.user:
            raise ConfigurationError(
                f"{where} logs in as USER with {self.what}, and USER is empty: set it to the "
                "database user of the identity (see the source's documentation)"
            )
        check_transport(target, where, allow_insecure=self.allow_insecure_transport)

    def fetch(self, target: Target) -> Credential:
        now = self._clock.time()
        try:
            token, expires_at = self.request_token(self.sdk_object(), target)
        except self.sdk_errors as exc:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} could not get {self.what}: "
                f"{type(exc).__name__}: {_first_line(exc)}{self.hint}"
            ) from secret_free(exc)
        if not isinstance(token, str) or not token:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} got an empty token from the SDK"
            )
        if expires_at is None:
            return Credential(password=token, refresh_after=now + NO_EXPIRY_REFRESH, issued_at=now)
        # The lifetime counts from now, so that a cached token the SDK hands back again
        # gets windows within what is left of its life (see the module's docstring).
        return Credential(password=token, expires_at=float(expires_at), issued_at=now)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= 300 else text[:297] + "..."
