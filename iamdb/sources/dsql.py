"""Aurora DSQL: a signed ``DbConnect`` / ``DbConnectAdmin`` token as the password."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from ..clock import Clock
from ..engine import RefreshPolicy
from ..errors import ConfigurationError
from ..values import Target
from . import _args
from .rds import SignedToken, Signing

#: The longest token DSQL accepts (one week), in seconds.
MAX_EXPIRES_IN = 604800

#: The database user whose tokens are ``DbConnectAdmin`` tokens.
ADMIN = "admin"

# <cluster id>.dsql.<region>.on.aws (and dsql-<suffix> for PrivateLink endpoint names).
_ENDPOINT = re.compile(
    r"\.dsql(?:-[a-z0-9]+)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.on\.aws\.?$", re.IGNORECASE
)


def region_from_host(host: str) -> str | None:
    """The AWS region in an Aurora DSQL cluster endpoint name, or None for any other host."""
    match = _ENDPOINT.search(host.strip())
    return match.group("region").lower() if match else None


class AuroraDsqlToken(SignedToken):
    """An Aurora DSQL authentication token for the connection's HOST (PostgreSQL only).

    - ``region``: the cluster's AWS region. By default it is read from the cluster
      endpoint name in HOST (or ``signing_host``), else boto3's configured region.
    - ``expires_in``: how many seconds a token is valid (1 to 604800, default 900).
      A token is reused until shortly before then, and never past the end of the
      temporary AWS credentials that signed it.
    - ``session``: a ``boto3.Session``; by default boto3's default credential chain.
    - ``signing_host``: the cluster endpoint name the token is signed for when HOST
      is another name (a PrivateLink endpoint's DNS name); with libpq's ``hostaddr``
      in OPTIONS, HOST stays the cluster name and needs no ``signing_host``.
    - ``allow_insecure_transport``: for local tests only.

    USER ``admin`` gets ``DbConnectAdmin`` tokens, any other role ``DbConnect`` tokens.
    """

    service: ClassVar[str] = "dsql"
    #: The databases it serves (the system checks report any other ENGINE: iamdb.E005).
    vendors: ClassVar[tuple[str, ...]] = ("postgresql",)
    endpoint_kind: ClassVar[str] = "a cluster endpoint name (<id>.dsql.<region>.on.aws)"

    def __init__(
        self,
        region: str | None = None,
        *,
        expires_in: float = 900,
        session: Any = None,
        signing_host: str | None = None,
        allow_insecure_transport: bool = False,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        name = type(self).__name__
        self.region = _args.check_region(name, region)
        self.expires_in = _check_expires_in(name, expires_in)
        self.signing_host = _args.check_word(name, "signing_host", signing_host, optional=True)
        self.allow_insecure_transport = _args.check_bool(
            name, "allow_insecure_transport", allow_insecure_transport
        )
        self._set_session(session)
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        parts = [repr(self.region)] if self.region else []
        if self.expires_in != 900:
            parts.append(f"expires_in={self.expires_in}")
        if self.signing_host:
            parts.append(f"signing_host={self.signing_host!r}")
        return f"AuroraDsqlToken({', '.join(parts)})"

    def endpoint(self, target: Target) -> tuple[str, int]:
        # DSQL signs no port: the port only tells cache entries apart.
        return self.signing_host or target.host, target.port or 5432

    def region_from_endpoint(self, host: str) -> str | None:
        return region_from_host(host)

    def check_target(self, target: Target) -> None:
        if target.vendor not in self.vendors:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} signs tokens for Aurora DSQL, which speaks "
                "PostgreSQL only: set ENGINE to 'iamdb.backends.postgresql' (this entry's engine is "
                f"{target.vendor or 'not PostgreSQL'})"
            )
        super().check_target(target)

    def signed_for(self, signing: Signing, target: Target) -> str:
        return f"{target.user}@{signing.host} ({_action(target.user)})"

    def sign(self, client: Any, signing: Signing, target: Target) -> tuple[str, float]:
        generate = (
            client.generate_db_connect_admin_auth_token
            if target.user == ADMIN
            else client.generate_db_connect_auth_token
        )
        # X-Amz-Date holds whole seconds, and DSQL counts ExpiresIn from it: the token ends
        # up to a second before expires_in from now (a short expires_in would otherwise be
        # handed out past its end).
        started = self._clock.time()
        token = generate(Hostname=signing.host, Region=signing.region, ExpiresIn=self.expires_in)
        return str(token), self.expires_in - started % 1.0


def _action(user: str) -> str:
    return "DbConnectAdmin" if user == ADMIN else "DbConnect"


def _check_expires_in(owner: str, value: object) -> int:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and float(value).is_integer()
        and 0 < value <= MAX_EXPIRES_IN
    ):
        return int(value)
    raise _args.bad_argument(
        owner, "expires_in", f"a whole number of seconds from 1 to {MAX_EXPIRES_IN}", value
    )
