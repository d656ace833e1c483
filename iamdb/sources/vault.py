"""Database credentials from Vault's (or OpenBao's) database secrets engine.

A dynamic role (``<mount>/creds/<role>``) issues a user name and password
under a lease. The lease is renewed while Vault allows it; when it cannot be
extended any more (its max TTL) a new one is issued, and connections made
with the old one are retired before Vault revokes it (revocation statements
may end their sessions). Leases die with the Vault token that created them,
so a credential never outlives its token; the token is renewed, or replaced
by logging in again when the auth method can (AppRole, Kubernetes).

A static role (``static=True``, ``<mount>/static-creds/<role>``) gives an
existing user whose password Vault rotates; it is read again when the
returned ``ttl`` runs out, and whenever the database refuses it.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ..credentials import Credential, CredentialSource, Target
from ..engine import Clock, RefreshPolicy
from ..errors import ConfigurationError, CredentialError, MissingDependencyError
from ..errors import describe as describe_error

try:
    import hvac
    import requests
    from hvac import exceptions as vault_errors
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingDependencyError(
        'iamdb.sources.VaultDatabaseCredentials needs hvac: pip install "iamdb[vault]"'
    ) from exc

from ._vault_auth import AppRoleAuth, KubernetesAuth, TokenAuth, VaultAuth

__all__ = [
    "AppRoleAuth",
    "KubernetesAuth",
    "TokenAuth",
    "VaultAuth",
    "VaultCredential",
    "VaultDatabaseCredentials",
    "VaultStats",
]

logger = logging.getLogger("iamdb")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class VaultCredential(Credential):
    """A credential from Vault, with the id of its lease (None for a static role)."""

    lease_id: str | None = None


@dataclasses.dataclass
class VaultStats:
    """What this process asked of Vault (for tests, benchmarks and monitoring)."""

    leases_issued: int = 0
    leases_renewed: int = 0
    static_reads: int = 0
    logins: int = 0
    token_renewals: int = 0


@dataclasses.dataclass
class _Token:
    generation: int
    expires_at: float | None  # None: never (a root token)
    renewable: bool
    ttl: float  # the increment to ask for when renewing


@dataclasses.dataclass
class _Lease:
    lease_id: str
    username: str
    password: str
    duration: float  # as first granted: the increment asked for on renewal
    renewable: bool
    expires_at: float | None
    generation: int  # of the token that created it
    final: bool = False  # reached its max TTL, or may not be renewed by us


# Sources that revoke their leases when the process exits.
_revoke_at_exit: weakref.WeakSet[VaultDatabaseCredentials] = weakref.WeakSet()


@atexit.register
def _revoke_all_at_exit() -> None:
    for source in list(_revoke_at_exit):
        source.revoke_leases()


class VaultDatabaseCredentials(CredentialSource):
    """User name and password from a Vault database secrets engine role.

    - ``role``: the role name; ``mount_point``: where the engine is mounted;
      ``static``: a static role (an existing user whose password Vault rotates).
    - ``client``: an ``hvac.Client`` to use. Without one, a client is built from
      ``url``/``namespace``/``verify`` or, like the Vault CLI, from
      ``VAULT_ADDR``, ``VAULT_NAMESPACE``, ``VAULT_CACERT`` (``VAULT_CAPATH``,
      ``VAULT_SKIP_VERIFY``), with ``timeout`` seconds for each request.
    - ``auth``: how to get a Vault token: :class:`TokenAuth` (the default: the
      client's token, else ``VAULT_TOKEN``, else ``~/.vault-token``),
      :class:`AppRoleAuth` or :class:`KubernetesAuth`, which log in again when
      the token ends.
    - ``revoke_at_exit``: revoke this process's leases when it exits, so that
      short-lived workers leave no database users behind (their open sessions
      are ended too when the revocation statements say so).
    """

    issues_username: ClassVar[bool] = True
    _transient: ClassVar[tuple[str, ...]] = ("_client", "_token", "_lease", "_issued", "_lock", "stats")

    _client: Any
    _token: _Token | None
    _lease: _Lease | None
    _issued: dict[str, float | None]
    _lock: threading.RLock
    stats: VaultStats

    def __init__(
        self,
        role: str,
        *,
        mount_point: str = "database",
        static: bool = False,
        client: Any = None,
        auth: VaultAuth | None = None,
        url: str | None = None,
        namespace: str | None = None,
        verify: bool | str | None = None,
        timeout: float = 5.0,
        revoke_at_exit: bool = False,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(role, str) or not role.strip("/"):
            raise ConfigurationError("VaultDatabaseCredentials needs a role name")
        if not isinstance(mount_point, str) or not mount_point.strip("/"):
            raise ConfigurationError("VaultDatabaseCredentials: mount_point must be a non-empty str")
        if auth is not None and not isinstance(auth, VaultAuth):
            raise ConfigurationError(
                "VaultDatabaseCredentials: auth must be TokenAuth, AppRoleAuth or KubernetesAuth, "
                f"not {type(auth).__name__}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError("VaultDatabaseCredentials: timeout must be a number > 0")
        if client is not None and (url or namespace or verify is not None):
            raise ConfigurationError(
                "VaultDatabaseCredentials: give either client or url/namespace/verify, not both"
            )
        self.role = role.strip("/")
        self.mount_point = mount_point.strip("/")
        self.static = bool(static)
        self.timeout = float(timeout)
        self.revoke_at_exit = bool(revoke_at_exit)
        self._given_client = client
        self._client_pid = os.getpid()
        if client is not None:
            self.url = str(client.url)
            self.namespace: str | None = None
            self.verify: bool | str = True
            self.auth = auth or TokenAuth(client.token or None)
        else:
            self.url = url or os.environ.get("VAULT_ADDR") or "https://127.0.0.1:8200"
            self.namespace = namespace or os.environ.get("VAULT_NAMESPACE") or None
            self.verify = _verify_from_env() if verify is None else verify
            self.auth = auth or TokenAuth()
        super().__init__(refresh=refresh, clock=clock)

    # -- the source interface ----------------------------------------------------------

    def describe(self) -> str:
        kind = ", static=True" if self.static else ""
        return (
            f"VaultDatabaseCredentials(role={self.role!r}, mount_point={self.mount_point!r}{kind}, "
            f"addr={self.url!r})"
        )

    @property
    def path(self) -> str:
        """The Vault path read for credentials."""
        return f"{self.mount_point}/{'static-creds' if self.static else 'creds'}/{self.role}"

    def fetch(self, target: Target) -> Credential:
        with self._lock:
            self._ensure_token(target)
            if self.static:
                return self._read_static(target)
            lease = self._lease
            if lease is not None and self._may_renew(lease):
                credential = self._renew_lease(target, lease)
                if credential is not None:
                    return credential
            return self._issue(target)

    def revoke_leases(self) -> int:
        """Revoke the leases this process obtained that have not ended yet, and
        forget the cached credential. Returns how many were revoked.

        Their database users are dropped and, if the role's revocation
        statements say so, their open sessions ended: call it when the
        process has finished with the database (``revoke_at_exit`` does so at exit).
        """
        with self._lock:
            now = self._clock()
            live = [lease_id for lease_id, end in self._issued.items() if end is None or end > now]
            self._issued.clear()
            self._lease = None
        revoked = 0
        for lease_id in live:
            try:
                self._vault().sys.revoke_lease(lease_id)
                revoked += 1
            except Exception as exc:
                logger.warning("iamdb: %s: could not revoke a lease: %s", self.describe(), _reason(exc, self))
        self.invalidate()
        if revoked:
            logger.info("iamdb: %s: revoked %d lease(s)", self.describe(), revoked)
        return revoked

    def _new_transient_state(self) -> None:
        self._client = None
        self._token = None
        self._lease = None
        self._issued = {}
        self._lock = threading.RLock()
        self.stats = VaultStats()
        if self._given_client is not None and self._client_pid != os.getpid():
            # A forked (or unpickled) copy of the caller's client: don't share the
            # parent's keep-alive sockets.
            self._given_client.adapter.session = requests.Session()
            self._client_pid = os.getpid()
        if self.revoke_at_exit:
            _revoke_at_exit.add(self)

    # -- the Vault token ---------------------------------------------------------------

    def _vault(self) -> Any:
        client = self._client
        if client is None:
            client = self._given_client or hvac.Client(
                url=self.url,
                token="",  # not None: hvac would read VAULT_TOKEN itself
                verify=self.verify,
                namespace=self.namespace,
                timeout=self.timeout,  # type: ignore[arg-type]  # requests takes float seconds
            )
            self._client = client
        return client

    def _ensure_token(self, target: Target) -> None:
        """Make sure the token lives long enough: renew it, or log in again."""
        token = self._token
        if token is None:
            self._authenticate(target)
            return
        if token.expires_at is None:
            return
        now = self._clock()
        remaining = token.expires_at - now
        if remaining >= max(token.ttl / 2, 2 * self._refresh_policy.safety_margin):
            return
        if token.renewable and remaining > 0:
            granted = self._renew_token(target, token)
            if granted is not None:
                token.expires_at = max(token.expires_at, now + granted)
                if self._useful(granted, token.ttl):
                    return
        if self.auth.can_login:
            self._login(target)
        elif remaining <= 0:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()}: the Vault token has expired and "
                f"{self.auth.describe()} cannot replace it (AppRoleAuth or KubernetesAuth can log in again)"
            )

    def _authenticate(self, target: Target) -> None:
        if self.auth.can_login:
            self._login(target)
            return
        token = self.auth.initial_token()
        if not token:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()}: no Vault token: set VAULT_TOKEN, "
                "or give auth=TokenAuth(...), AppRoleAuth(...) or KubernetesAuth(...)"
            )
        client = self._vault()
        client.token = token
        now = self._clock()
        data = self._call(target, "looking up the Vault token", lambda: client.auth.token.lookup_self())[
            "data"
        ]
        ttl = float(data.get("ttl") or 0)
        self._token = _Token(
            generation=self._next_generation(),
            expires_at=now + ttl if ttl else None,
            renewable=bool(data.get("renewable")),
            ttl=float(data.get("period") or data.get("creation_ttl") or ttl),
        )

    def _login(self, target: Target) -> None:
        client = self._vault()
        now = self._clock()
        try:
            auth = self.auth.login(client)
        except Exception as exc:
            raise self._error(target, f"logging in with {self.auth.describe()}", exc) from exc
        client.token = auth["client_token"]
        duration = float(auth.get("lease_duration") or 0)
        self._token = _Token(
            generation=self._next_generation(),
            expires_at=now + duration if duration else None,
            renewable=bool(auth.get("renewable")),
            ttl=duration,
        )
        self.stats.logins += 1
        logger.info("iamdb: %s: logged in to Vault (token TTL %g s)", self.describe(), duration)

    def _renew_token(self, target: Target, token: _Token) -> float | None:
        client = self._vault()
        try:
            response = client.auth.token.renew_self(increment=max(int(token.ttl), 1))
        except vault_errors.VaultError as exc:
            # Vault answered but would not renew (past the token's max TTL, revoked,
            # not renewable): the caller logs in again when the auth method can.
            logger.info("iamdb: %s: the Vault token was not renewed: %s", self.describe(), _reason(exc, self))
            return None
        except Exception as exc:
            raise self._error(target, "renewing the Vault token", exc) from exc
        self.stats.token_renewals += 1
        return float(response["auth"].get("lease_duration") or 0)

    def _next_generation(self) -> int:
        return (self._token.generation if self._token else 0) + 1

    # -- dynamic roles -----------------------------------------------------------------

    def _issue(self, target: Target) -> Credential:
        now = self._clock()
        response, username, password = self._read(target)
        duration = float(response.get("lease_duration") or 0)
        assert self._token is not None
        lease = _Lease(
            lease_id=str(response.get("lease_id") or ""),
            username=username,
            password=password,
            duration=duration,
            renewable=bool(response.get("renewable")),
            expires_at=now + duration if duration else None,
            generation=self._token.generation,
        )
        self._lease = lease
        self.stats.leases_issued += 1
        if lease.lease_id:
            self._issued = {k: end for k, end in self._issued.items() if end is None or end > now}
            self._issued[lease.lease_id] = lease.expires_at
        logger.info("iamdb: %s: new database user %s (lease of %g s)", self.describe(), username, duration)
        return self._credential(lease, now)

    def _may_renew(self, lease: _Lease) -> bool:
        token = self._token
        return (
            lease.renewable
            and not lease.final
            and token is not None
            and lease.generation == token.generation
            and (lease.expires_at is None or lease.expires_at > self._clock())
        )

    def _renew_lease(self, target: Target, lease: _Lease) -> Credential | None:
        """Extend ``lease``; None when it cannot be extended usefully (then a new one is issued)."""
        client = self._vault()
        now = self._clock()
        try:
            response = client.sys.renew_lease(lease.lease_id, increment=max(int(lease.duration), 1))
        except (vault_errors.InvalidRequest, vault_errors.Forbidden, vault_errors.InvalidPath) as exc:
            # Gone (revoked, or Vault lost it), not renewable, or not allowed to us.
            logger.info("iamdb: %s: lease not renewed: %s", self.describe(), _reason(exc, self))
            lease.final = True
            return None
        except Exception as exc:
            raise self._error(target, "renewing the lease", exc) from exc
        self.stats.leases_renewed += 1
        granted = float(response.get("lease_duration") or 0)
        if granted < lease.duration:
            lease.final = True  # capped by the max TTL: the next refresh issues a new lease
        if lease.expires_at is not None:
            lease.expires_at = max(lease.expires_at, now + granted)
            self._issued[lease.lease_id] = lease.expires_at
        if not self._useful(granted, lease.duration):
            return None
        return self._credential(lease, now)

    def _credential(self, lease: _Lease, issued_at: float) -> Credential:
        """The credential for ``lease``: it ends with the lease or with its token."""
        end = lease.expires_at
        token = self._token
        if token is not None and token.generation == lease.generation and token.expires_at is not None:
            end = token.expires_at if end is None else min(end, token.expires_at)
        return VaultCredential(
            password=lease.password,
            username=lease.username,
            expires_at=end,
            sessions_end_at=end,
            issued_at=issued_at,
            lease_id=lease.lease_id or None,
        )

    def _useful(self, seconds: float, nominal: float) -> bool:
        """Whether a lease (or token) extended by ``seconds`` is worth keeping."""
        return seconds >= nominal / 2 and seconds > self._refresh_policy.safety_margin + 0.5

    # -- static roles ------------------------------------------------------------------

    def _read_static(self, target: Target) -> Credential:
        now = self._clock()
        response, username, password = self._read(target)
        ttl = float((response.get("data") or {}).get("ttl") or 0)
        self.stats.static_reads += 1
        # Read again when Vault rotates the password (at least a second apart:
        # a rotation due now may take a moment). A refused login reads at once.
        return VaultCredential(
            password=password, username=username, refresh_after=now + max(ttl, 1.0), issued_at=now
        )

    def _read(self, target: Target) -> tuple[Any, str, str]:
        """Read ``self.path``: Vault's response, the user name and the password."""
        database = self._vault().secrets.database
        read = database.get_static_credentials if self.static else database.generate_credentials
        response = self._call(
            target, f"reading {self.path}", lambda: read(name=self.role, mount_point=self.mount_point)
        )
        data = (response or {}).get("data") or {}
        username, password = data.get("username"), data.get("password")
        if not isinstance(username, str) or not username or not isinstance(password, str) or not password:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()}: {self.path} returned no username/password"
            )
        return response, username, password

    # -- errors ------------------------------------------------------------------------

    def _call(self, target: Target, doing: str, request: Callable[[], T]) -> T:
        """Run one request; on "permission denied", log in again once if the auth method can
        (the token may have been revoked). Every failure becomes a CredentialError."""
        try:
            return request()
        except vault_errors.Forbidden as exc:
            if not self.auth.can_login:
                raise self._error(target, doing, exc) from exc
            first: BaseException = exc
        except Exception as exc:
            raise self._error(target, doing, exc) from exc
        logger.info("iamdb: %s: permission denied, logging in again", self.describe())
        self._login(target)
        try:
            return request()
        except Exception as exc:
            raise self._error(target, doing, exc) from first

    def _error(self, target: Target, doing: str, exc: BaseException) -> CredentialError:
        return CredentialError(f"database {target.alias!r}: {self.describe()}: {doing}: {_reason(exc, self)}")


def _reason(exc: BaseException, source: VaultDatabaseCredentials) -> str:
    """Why a request failed, in a few words, without any secret."""
    if isinstance(exc, requests.exceptions.Timeout):
        return f"Vault did not answer within {source.timeout:g} s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "cannot connect to Vault"
    if isinstance(exc, vault_errors.VaultDown):
        return "Vault is sealed or unavailable"
    if isinstance(exc, vault_errors.Forbidden):
        return "permission denied (no policy allows it, or the token expired or was revoked)"
    if isinstance(exc, vault_errors.VaultError):
        errors = [str(e).strip() for e in (exc.errors or []) if str(e).strip()]
        text = "; ".join(errors) if errors else str(exc).split(", on ")[0]
        return f"Vault answered: {' '.join(text.split())}"
    if isinstance(exc, OSError):  # e.g. KubernetesAuth's JWT file
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return describe_error(exc)


def _verify_from_env() -> bool | str:
    """TLS verification as the Vault CLI reads it from the environment."""
    if os.environ.get("VAULT_SKIP_VERIFY", "").lower() in ("1", "true", "yes"):
        return False
    return os.environ.get("VAULT_CACERT") or os.environ.get("VAULT_CAPATH") or True
