"""Database credentials from Vault's (or OpenBao's) database secrets engine.

A dynamic role (``<mount>/creds/<role>``) issues a user name and password
under a lease. The lease is renewed while Vault allows it; when it cannot be
extended any more (its max TTL), when the database refuses its password, or
when it is gone (revoked), a new one is issued (a refused one is revoked a
little later, in the background). Connections made with an old
lease are retired before it ends (revocation statements may end their
sessions): :meth:`VaultDatabaseCredentials.sessions_end` tells the backend
when, by lease id. Leases die with the Vault token that created them, so a
credential never outlives its token; the token is renewed, or replaced by
logging in again when the auth method can (AppRole, Kubernetes) and Vault
really refused it. A transient failure (sealed, 5xx, rate limit, network) is
logged and retried later; the current lease stays in use while it is valid.

A static role (``static=True``, ``<mount>/static-creds/<role>``) gives an
existing user whose password Vault rotates; it is read again when the
returned ``ttl`` runs out, and whenever the database refuses it.

All bookkeeping is on the source's monotonic clock; the wall clock is read
only to fill a credential's (wall-clock) time fields.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from ..clock import Clock
from ..credentials import Credential, CredentialSource, Target
from ..deadline import timeout_for
from ..engine import RefreshPolicy
from ..errors import ConfigurationError, CredentialError, MissingDependencyError, secret_free
from ..errors import describe as describe_error

try:
    import hvac
    import requests
    from hvac import exceptions as vault_errors
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingDependencyError(
        'iamdb.sources.VaultDatabaseCredentials needs hvac: pip install "iamdb[vault]"'
    ) from exc

from ._vault_auth import AppRoleAuth, KubernetesAuth, TokenAuth, VaultAuth, check_str

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

#: What a request to Vault can raise: Vault's answers, and the transport's failures.
_REQUEST_ERRORS = (vault_errors.VaultError, requests.exceptions.RequestException)
#: What logging in can raise besides: KubernetesAuth reads its JWT file.
_LOGIN_ERRORS = (*_REQUEST_ERRORS, OSError)
#: Vault's answers that refuse a token or a lease for good (403, 401, and 400 "invalid":
#: expired, revoked, past its max TTL, not renewable).
_REFUSALS = (vault_errors.Forbidden, vault_errors.Unauthorized, vault_errors.InvalidRequest)
#: A 500 that refuses for good too: renewing a token in its last second.
_FINAL_500 = ("past the max ttl", "cannot renew", "not renewable")
#: Ended leases are remembered this long (for sessions_end), then forgotten.
_FORGET_AFTER = 3600.0


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class VaultCredential(Credential):
    """A credential from Vault, with the id of its lease (None for a static role)."""

    lease_id: str | None = None


@dataclasses.dataclass
class VaultStats:
    """What this process asked of Vault (for tests, benchmarks and monitoring)."""

    leases_issued: int = 0
    leases_renewed: int = 0
    leases_revoked: int = 0
    static_reads: int = 0
    logins: int = 0
    token_renewals: int = 0
    token_renewal_failures: int = 0  # transient: the token was kept


class _Token:
    """A Vault token and what is known of its life (times on the monotonic clock)."""

    __slots__ = ("ends", "generation", "renewable", "ttl", "value")

    def __init__(self, value: str, generation: int, ends: float | None, renewable: bool, ttl: float) -> None:
        self.value = value
        self.generation = generation
        self.ends = ends  # None: never (a root token)
        self.renewable = renewable
        self.ttl = ttl  # the increment to ask for when renewing

    def __repr__(self) -> str:
        return (
            f"_Token(value='***', generation={self.generation}, ends={self.ends!r}, "
            f"renewable={self.renewable}, ttl={self.ttl:g})"
        )


class _Lease:
    """A dynamic role's lease: its user, password and life (times on the monotonic clock)."""

    __slots__ = (
        "duration",
        "ends",
        "final",
        "lease_id",
        "password",
        "pid",
        "refused",
        "renewable",
        "revoke_at",
        "revoked",
        "token",
        "username",
    )

    def __init__(
        self,
        lease_id: str,
        username: str,
        password: str,
        duration: float,
        renewable: bool,
        ends: float | None,
        token: _Token,
    ) -> None:
        self.lease_id = lease_id
        self.username = username
        self.password = password
        self.duration = duration  # as first granted: the increment asked for on renewal
        self.renewable = renewable
        self.ends = ends  # None: never (no lease duration)
        self.token = token  # the token that created it: the lease dies with it
        self.pid = os.getpid()  # the process that obtained it (and may revoke it at exit)
        self.final = False  # reached its max TTL, or may not be renewed by us
        self.refused = False  # the database refused its password: replace it, revoke it
        self.revoke_at: float | None = None  # when this source revokes it (refused, replaced)
        self.revoked = False  # by this source

    def end(self) -> float | None:
        """When it ends (monotonic): with its own end, or its token's, whichever is first."""
        ends, token_ends = self.ends, self.token.ends
        if token_ends is None:
            return ends
        return token_ends if ends is None else min(ends, token_ends)

    def sessions_end(self) -> float | None:
        """When its sessions end (monotonic): at its end, or when this source revokes it."""
        end, revoke_at = self.end(), self.revoke_at
        if revoke_at is None:
            return end
        return revoke_at if end is None else min(end, revoke_at)

    def __repr__(self) -> str:
        flags = "".join(f", {name}=True" for name in ("final", "refused", "revoked") if getattr(self, name))
        return (
            f"_Lease(lease_id={self.lease_id!r}, username={self.username!r}, password='***', "
            f"duration={self.duration:g}, ends={self.ends!r}, generation={self.token.generation}{flags})"
        )


class _Read:
    """What reading a role's credentials returned (the password hidden from ``repr``)."""

    __slots__ = ("duration", "lease_id", "password", "renewable", "ttl", "username")

    def __init__(
        self, username: str, password: str, lease_id: str, duration: float, renewable: bool, ttl: float
    ):
        self.username = username
        self.password = password
        self.lease_id = lease_id
        self.duration = duration  # the lease's (dynamic role)
        self.renewable = renewable
        self.ttl = ttl  # until Vault rotates the password (static role)

    @classmethod
    def of(cls, response: Any) -> _Read | None:
        """From Vault's response; None when it holds no user name and password."""
        response = response if isinstance(response, dict) else {}
        data = response.get("data") or {}
        username, password = data.get("username"), data.get("password")
        if not isinstance(username, str) or not username or not isinstance(password, str) or not password:
            return None
        return cls(
            username,
            password,
            lease_id=str(response.get("lease_id") or ""),
            duration=float(response.get("lease_duration") or 0),
            renewable=bool(response.get("renewable")),
            ttl=float(data.get("ttl") or 0),
        )

    def __repr__(self) -> str:
        return f"_Read(username={self.username!r}, password='***', lease_id={self.lease_id!r})"


class _DeadlineSession(requests.Session):
    """The source's own HTTP session: each request's timeout is the source's
    ``timeout``, cut to the deadline of the fetch running on this thread."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = timeout_for(self.default_timeout)
        return super().request(*args, **kwargs)


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
      ``VAULT_SKIP_VERIFY``), with ``timeout`` seconds for each request (less
      when the connection attempt's deadline is nearer).
    - ``auth``: how to get a Vault token: :class:`TokenAuth` (the default: the
      client's token, else ``VAULT_TOKEN``, else ``~/.vault-token``),
      :class:`AppRoleAuth` or :class:`KubernetesAuth`, which log in again when
      the token ends or is refused.
    - ``revoke_at_exit``: revoke this process's leases when it exits, so that
      short-lived workers leave no database users behind (their open sessions
      are ended too when the revocation statements say so).
    """

    issues_username: ClassVar[bool] = True
    #: Seconds between replacing a refused lease and revoking it: queries running on
    #: connections made with it may finish (revoking may end their sessions), and
    #: those connections are retired at their next request boundary meanwhile.
    revoke_grace: float = 5.0
    _transient: ClassVar[tuple[str, ...]] = ("_client", "_token", "_lease", "_leases", "_lock", "stats")

    _client: Any
    _token: _Token | None
    _lease: _Lease | None
    _leases: dict[str, _Lease]
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
        name = type(self).__name__
        check_str(name, "role", role, "the role's name")
        check_str(name, "mount_point", mount_point, "where the database secrets engine is mounted")
        if not role.strip("/") or not mount_point.strip("/"):
            raise ConfigurationError(f"{name}: role and mount_point must be more than slashes")
        for flag, value in (("static", static), ("revoke_at_exit", revoke_at_exit)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name}: {flag} must be True or False, not {type(value).__name__}")
        if auth is not None and not isinstance(auth, VaultAuth):
            kind = type(auth).__name__
            del auth  # a token given as a str: not a local of the raising frame
            raise ConfigurationError(
                f"{name}: auth must be TokenAuth, AppRoleAuth or KubernetesAuth, not {kind}"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError(
                f"{name}: timeout must be a finite number of seconds > 0, not {timeout!r}"
            )
        if client is not None:
            if not isinstance(client, hvac.Client):
                raise ConfigurationError(
                    f"{name}: client must be an hvac.Client, not {type(client).__name__}"
                )
            if url is not None or namespace is not None or verify is not None:
                raise ConfigurationError(f"{name}: give either client or url/namespace/verify, not both")
        if url is not None:
            _check_url(name, "url", url)
        if namespace is not None:
            check_str(name, "namespace", namespace, "a Vault Enterprise namespace, or None")
        if verify is not None and not isinstance(verify, bool):
            check_str(name, "verify", verify, "True, False, or the path of a CA bundle")
        self.role = role.strip("/")
        self.mount_point = mount_point.strip("/")
        self.static = static
        self.timeout = float(timeout)
        self.revoke_at_exit = revoke_at_exit
        self._given_client = client
        self._pid = os.getpid()
        if client is not None:
            self.url = str(client.url)
            self.namespace: str | None = None
            self.verify: bool | str = True
            self.auth = auth or TokenAuth(client.token or None)
        else:
            env_url = os.environ.get("VAULT_ADDR") or "https://127.0.0.1:8200"
            self.url = url if url is not None else _check_url(name, "VAULT_ADDR", env_url)
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
        with self._locked(target):
            self._ensure_token(target)
            if self.static:
                return self._read_static(target)
            lease = self._lease
            if lease is not None and self._may_renew(lease):
                credential = self._renew_lease(target, lease)
                if credential is not None:
                    return credential
            credential = self._issue(target)
            if lease is not None and lease.refused and lease.revoke_at is None:
                self._revoke_later(lease)
            return credential

    def invalidate(self, target: Target | None = None, *, password: str | None = None) -> None:
        """Forget the cached credential. With the ``password`` the database refused, a
        dynamic role's lease with that password is not renewed again: the next fetch
        issues a new lease and revokes the refused one. Without a password the next
        fetch issues a new lease too, but the current one is left to end (other
        processes may use it). A static role is read again."""
        lease = self._lease
        if lease is not None and (password is None or password == lease.password):
            # One attribute each: no lock needed, never waits for a fetch.
            if password is None:
                lease.final = True
            else:
                lease.refused = True
        super().invalidate(target, password=password)

    def sessions_end(self, target: Target, credential: Credential) -> float | None:
        """When sessions opened with ``credential`` end (monotonic): the end of its
        lease as known now (a renewal extends it), of the token that created it, or
        the moment this source revokes it (a refused lease: :attr:`revoke_grace`
        after it was replaced), whichever is first. None for a static role
        (rotating its password ends no session) and for a lease this process does
        not know."""
        lease_id = getattr(credential, "lease_id", None)
        if not lease_id:
            return None
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.sessions_end()

    def revoke_leases(self) -> int:
        """Revoke the leases this process obtained that have not ended yet, and
        forget the cached credential. Returns how many were revoked.

        Their database users are dropped and, if the role's revocation
        statements say so, their open sessions ended: call it when the
        process has finished with the database (``revoke_at_exit`` does so at exit).
        Leases inherited from a parent process (before ``fork()``) are left alone.
        """
        revoked = 0
        try:
            with self._locked(None):
                now = self._clock.monotonic()
                pid = os.getpid()
                live = [
                    lease
                    for lease in self._leases.values()
                    if lease.pid == pid and not lease.revoked and (lease.end() or math.inf) > now
                ]
                self._lease = None
                for lease in live:
                    revoked += self._revoke(lease)
        except CredentialError as exc:
            logger.warning("iamdb: %s: leases not revoked: %s", self.describe(), exc)
        self.invalidate()
        if revoked:
            logger.info("iamdb: %s: revoked %d lease(s)", self.describe(), revoked)
        return revoked

    def _new_transient_state(self) -> None:
        pid = os.getpid()
        # In a forked child the cached credentials stay (the engine keeps them), so
        # the leases and token behind them stay too: only locks and clients are new.
        forked = pid != self._pid and hasattr(self, "_leases")
        self._lock = threading.RLock()
        self._client = None
        self.stats = VaultStats()
        if not forked:
            self._token = None
            self._lease = None
            self._leases = {}
        if self._given_client is not None and pid != self._pid:
            # A forked (or unpickled) copy of the caller's client: don't share the
            # parent's keep-alive sockets, nor the locks of its connection pools.
            self._given_client.adapter.session = _fresh_session(self._given_client.adapter.session)
        self._pid = pid
        if self.revoke_at_exit:
            _revoke_at_exit.add(self)

    # -- locking and the client --------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, target: Target | None) -> Iterator[None]:
        """Hold the source's lock, waiting no longer than the current deadline allows
        (a fetch makes a few requests of ``timeout`` seconds each at most)."""
        wait = timeout_for(4 * self.timeout)
        if not self._lock.acquire(timeout=wait):
            where = f"database {target.alias!r}: " if target is not None else ""
            raise CredentialError(
                f"{where}{self.describe()}: another thread has been talking to Vault for more than "
                f"{wait:g} s; try again, and check that Vault answers within timeout={self.timeout:g} s"
            )
        try:
            yield
        finally:
            self._lock.release()

    def _vault(self) -> Any:
        client = self._client
        if client is None:
            client = self._given_client or hvac.Client(
                url=self.url,
                token="",  # not None: hvac would read VAULT_TOKEN itself
                verify=self.verify,
                namespace=self.namespace,
                timeout=self.timeout,  # type: ignore[arg-type]  # requests takes float seconds
                session=_DeadlineSession(self.timeout),
            )
            if self._token is not None:  # a forked child: the parent's token
                client.token = self._token.value
            self._client = client
        return client

    # -- the Vault token ---------------------------------------------------------------

    def _ensure_token(self, target: Target) -> None:
        """Make sure the token lives long enough: renew it, or log in again."""
        token = self._token
        if token is None:
            self._authenticate(target)
            return
        if token.ends is None:
            return
        now = self._clock.monotonic()
        remaining = token.ends - now
        if remaining >= max(token.ttl / 2, 2 * self._refresh_policy.safety_margin):
            return
        if token.renewable and remaining > 0:
            try:
                granted = self._renew_token(token)
            except _REQUEST_ERRORS as exc:
                if not _refused(exc):
                    # Sealed, 5xx, rate limited, network: not a refusal. A new login would
                    # orphan the live lease (a new token cannot renew it); keep this token.
                    self.stats.token_renewal_failures += 1
                    logger.warning(
                        "iamdb: %s: could not renew the Vault token (%s); still using it (%.0f s left), "
                        "trying again at the next refresh",
                        self.describe(),
                        _reason(exc, self),
                        remaining,
                    )
                    return
                logger.info(
                    "iamdb: %s: Vault refused to renew the token: %s", self.describe(), _reason(exc, self)
                )
            else:
                token.ends = max(token.ends, now + granted)
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
        # No local variable holds the token while requests run: an error's
        # traceback (shown by Django's debug page) carries the frames' locals.
        token = _Token(self.auth.initial_token() or "", self._next_generation(), None, False, 0.0)
        if not token.value:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()}: no Vault token: set VAULT_TOKEN, "
                "or give auth=TokenAuth(...), AppRoleAuth(...) or KubernetesAuth(...)"
            )
        client = self._vault()
        client.token = token.value
        now = self._clock.monotonic()
        response = self._call(target, "looking up the Vault token", lambda: client.auth.token.lookup_self())
        data = (response or {}).get("data") or {}
        ttl = float(data.get("ttl") or 0)
        token.ends = now + ttl if ttl else None
        token.renewable = bool(data.get("renewable"))
        token.ttl = float(data.get("period") or data.get("creation_ttl") or ttl)
        self._token = token

    def _login(self, target: Target) -> None:
        client = self._vault()
        now = self._clock.monotonic()
        try:
            auth = self.auth.login(client)
        except _LOGIN_ERRORS as exc:
            raise self._error(target, f"logging in with {self.auth.describe()}", exc) from secret_free(exc)
        value = auth.get("client_token")
        if not isinstance(value, str) or not value:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()}: logging in with {self.auth.describe()}: "
                "Vault returned no client token"
            )
        client.token = value
        duration = float(auth.get("lease_duration") or 0)
        self._token = _Token(
            value,
            generation=self._next_generation(),
            ends=now + duration if duration else None,
            renewable=bool(auth.get("renewable")),
            ttl=duration,
        )
        self.stats.logins += 1
        logger.info("iamdb: %s: logged in to Vault (token TTL %g s)", self.describe(), duration)

    def _renew_token(self, token: _Token) -> float:
        """Ask Vault to extend the token; the seconds granted. Raises what hvac raises."""
        response = self._vault().auth.token.renew_self(increment=max(int(token.ttl), 1))
        self.stats.token_renewals += 1
        return float(((response or {}).get("auth") or {}).get("lease_duration") or 0)

    def _next_generation(self) -> int:
        return (self._token.generation if self._token else 0) + 1

    # -- dynamic roles -----------------------------------------------------------------

    def _issue(self, target: Target) -> Credential:
        now = self._clock.monotonic()
        read = self._read(target)
        assert self._token is not None
        lease = _Lease(
            lease_id=read.lease_id,
            username=read.username,
            password=read.password,
            duration=read.duration,
            renewable=read.renewable,
            ends=now + read.duration if read.duration else None,
            token=self._token,
        )
        self._lease = lease
        self.stats.leases_issued += 1
        if lease.lease_id:
            self._leases = {
                lease_id: known
                for lease_id, known in self._leases.items()
                if (known.end() or math.inf) > now - _FORGET_AFTER
            }
            self._leases[lease.lease_id] = lease
        logger.info(
            "iamdb: %s: new database user %s (lease of %g s)", self.describe(), lease.username, lease.duration
        )
        return self._credential(lease, now)

    def _may_renew(self, lease: _Lease) -> bool:
        token = self._token
        end = lease.end()
        return (
            lease.renewable
            and not lease.final
            and not lease.refused
            and token is lease.token
            and (end is None or end > self._clock.monotonic())
        )

    def _renew_lease(self, target: Target, lease: _Lease) -> Credential | None:
        """Extend ``lease``; None when it cannot be extended usefully (then a new one is issued)."""
        client = self._vault()
        now = self._clock.monotonic()
        try:
            response = client.sys.renew_lease(lease.lease_id, increment=max(int(lease.duration), 1))
        except (*_REFUSALS, vault_errors.InvalidPath) as exc:
            # Gone (revoked, or Vault lost it), not renewable, or not allowed to us.
            logger.info("iamdb: %s: lease not renewed: %s", self.describe(), _reason(exc, self))
            lease.final = True
            return None
        except _REQUEST_ERRORS as exc:
            # Transient: the engine keeps the current credential while it is usable.
            raise self._error(target, "renewing the lease", exc) from secret_free(exc)
        self.stats.leases_renewed += 1
        granted = float((response or {}).get("lease_duration") or 0)
        if granted < lease.duration:
            lease.final = True  # capped by the max TTL: the next refresh issues a new lease
        if lease.ends is not None:
            lease.ends = max(lease.ends, now + granted)
        if not self._useful(granted, lease.duration):
            return None
        return self._credential(lease, now)

    def _revoke_later(self, lease: _Lease) -> None:
        """Revoke the refused ``lease`` after :attr:`revoke_grace` seconds, in a timer
        thread: never in the request that replaced it, never failing one."""
        lease.revoke_at = self._clock.monotonic() + self.revoke_grace
        timer = threading.Timer(self.revoke_grace, self._revoke_refused)
        timer.daemon = True
        timer.start()

    def _revoke_refused(self) -> None:
        try:
            with self._locked(None):
                for lease in list(self._leases.values()):
                    if lease.revoke_at is not None and not lease.revoked:
                        self._revoke(lease)
        except CredentialError as exc:
            logger.warning("iamdb: %s: a refused lease was not revoked: %s", self.describe(), exc)

    def _revoke(self, lease: _Lease) -> int:
        """Revoke ``lease``, best effort: a failure is logged, never raised. 1 if revoked."""
        try:
            self._vault().sys.revoke_lease(lease.lease_id)
        except _REQUEST_ERRORS as exc:
            logger.warning(
                "iamdb: %s: could not revoke the lease of %s: %s",
                self.describe(),
                lease.username,
                _reason(exc, self),
            )
            return 0
        # Its sessions end now (if the revocation statements end them).
        lease.ends = self._clock.monotonic()
        lease.final = lease.revoked = True
        self.stats.leases_revoked += 1
        logger.info("iamdb: %s: revoked the lease of %s", self.describe(), lease.username)
        return 1

    def _credential(self, lease: _Lease, now: float) -> Credential:
        """The credential for ``lease`` at monotonic ``now``: it ends with the lease or with its token."""
        end = lease.end()
        wall = self._clock.time()
        end_at = None if end is None else wall + (end - now)
        return VaultCredential(
            password=lease.password,
            username=lease.username,
            expires_at=end_at,
            sessions_end_at=end_at,
            issued_at=wall,
            lease_id=lease.lease_id or None,
        )

    def _useful(self, seconds: float, nominal: float) -> bool:
        """Whether a lease (or token) extended by ``seconds`` is worth keeping."""
        return seconds >= nominal / 2 and seconds > self._refresh_policy.safety_margin + 0.5

    # -- static roles ------------------------------------------------------------------

    def _read_static(self, target: Target) -> Credential:
        read = self._read(target)
        self.stats.static_reads += 1
        wall = self._clock.time()
        # Read again when Vault rotates the password (at least a second apart:
        # a rotation due now may take a moment). A refused login reads at once.
        return VaultCredential(
            password=read.password,
            username=read.username,
            refresh_after=wall + max(read.ttl, 1.0),
            issued_at=wall,
        )

    def _read(self, target: Target) -> _Read:
        """Read ``self.path``: the user name, the password and their lease."""
        database = self._vault().secrets.database
        read = database.get_static_credentials if self.static else database.generate_credentials
        response = self._call(
            target, f"reading {self.path}", lambda: read(name=self.role, mount_point=self.mount_point)
        )
        result = _Read.of(response)
        del response  # holds the password: not in this frame's locals if we raise below
        if result is None:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()}: {self.path} returned no username/password"
            )
        return result

    # -- errors ------------------------------------------------------------------------

    def _call(self, target: Target, doing: str, request: Callable[[], T]) -> T:
        """Run one request; on "permission denied", log in again once if the auth method can
        (the token may have been revoked). Every failure becomes a CredentialError."""
        try:
            return request()
        except vault_errors.Forbidden as exc:
            if not self.auth.can_login:
                raise self._error(target, doing, exc) from secret_free(exc)
            first: BaseException = exc
        except _REQUEST_ERRORS as exc:
            raise self._error(target, doing, exc) from secret_free(exc)
        logger.info("iamdb: %s: permission denied, logging in again", self.describe())
        self._login(target)
        try:
            return request()
        except _REQUEST_ERRORS as exc:
            secret_free(first)
            raise self._error(target, doing, exc) from secret_free(exc)

    def _error(self, target: Target, doing: str, exc: BaseException) -> CredentialError:
        return CredentialError(f"database {target.alias!r}: {self.describe()}: {doing}: {_reason(exc, self)}")


def _refused(exc: BaseException) -> bool:
    """Whether Vault refused for good (log in again), rather than failed for now (try again
    later): sealed, 5xx, rate limited, or no answer are transient."""
    if isinstance(exc, _REFUSALS):
        return True
    if isinstance(exc, vault_errors.InternalServerError):
        text = " ".join(str(error) for error in (exc.errors or [])).lower()
        return any(words in text for words in _FINAL_500)
    return False


def _reason(exc: BaseException, source: VaultDatabaseCredentials) -> str:
    """Why a request failed, in a few words, without any secret."""
    if isinstance(exc, requests.exceptions.Timeout):
        return f"Vault did not answer in time (timeout={source.timeout:g} s, or the connection's deadline)"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS (SSL) with Vault failed (check url's scheme, verify= or VAULT_CACERT)"
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


def _fresh_session(old: requests.Session) -> requests.Session:
    """A new session with ``old``'s settings (not its connection pools or their locks)."""
    new: requests.Session = (
        _DeadlineSession(old.default_timeout) if isinstance(old, _DeadlineSession) else requests.Session()
    )
    new.headers = requests.structures.CaseInsensitiveDict(old.headers)
    new.auth, new.proxies, new.verify, new.cert = old.auth, old.proxies, old.verify, old.cert
    new.trust_env, new.max_redirects = old.trust_env, old.max_redirects
    return new


def _check_url(cls: str, name: str, value: object) -> str:
    check_str(cls, name, value, "the Vault address, http(s)://host:port")
    assert isinstance(value, str)
    if not value.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"{cls}: {name} must be the Vault address, http(s)://host:port, not {value!r}"
        )
    return value


def _verify_from_env() -> bool | str:
    """TLS verification as the Vault CLI reads it from the environment."""
    if os.environ.get("VAULT_SKIP_VERIFY", "").lower() in ("1", "true", "yes"):
        return False
    return os.environ.get("VAULT_CACERT") or os.environ.get("VAULT_CAPATH") or True
