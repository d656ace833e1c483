"""RDS and Aurora IAM database authentication: a signed, 15-minute token as the password."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from collections.abc import Hashable
from typing import Any, ClassVar

from ..clock import Clock
from ..engine import RefreshPolicy
from ..errors import ConfigurationError, CredentialError, secret_free
from ..tls import check_transport
from ..values import Credential, Target
from . import _args, _aws

logger = logging.getLogger("iamdb")

#: How long RDS accepts a token after it was signed (fixed by AWS).
TOKEN_LIFETIME = 900.0

# Oracle's libmysqlclient sends a cleartext password (what an IAM token is) only
# when this variable is set as the library loads, i.e. before MySQLdb is first
# imported; settings (where this source is made) are loaded before that.
# MariaDB Connector/C and MariaDB's tools always allow it and ignore the variable.
_MYSQLDB_IMPORTED_FIRST = "MySQLdb" in sys.modules and "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN" not in os.environ
os.environ.setdefault("LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN", "1")

# <name>.<id>.<region>.rds.amazonaws.com, .rds.amazonaws.com.cn (China), and the
# GovCloud/ISO partitions, whose region names have the same shape.
_ENDPOINT = re.compile(
    r"\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.rds\.(?:amazonaws\.com(?:\.cn)?|c2s\.ic\.gov|sc2s\.sgov\.gov)\.?$",
    re.IGNORECASE,
)


#: How many targets a source remembers the signing details of (a few per database).
_MAX_TARGETS = 64


def region_from_host(host: str) -> str | None:
    """The AWS region in an RDS/Aurora endpoint name, or None for any other host."""
    match = _ENDPOINT.search(host.strip())
    return match.group("region").lower() if match else None


@dataclasses.dataclass(frozen=True)
class Signing:
    """What a token for one target is signed for, worked out once per target."""

    host: str
    port: int
    region: str
    cache_key: Hashable


class SignedToken(_aws.AwsSource):
    """What RDS IAM and Aurora DSQL tokens share: a SigV4 presigned token, signed
    locally by a boto3 client for one endpoint and region, worked out once per
    target, cached per :meth:`cache_key`, never used past the end of the AWS
    credentials that signed it, sent only over mandatory TLS, and retried once
    when refused (``token_per_fetch``: each fetch signs a new token).

    A subclass sets :attr:`service` and provides :meth:`endpoint`,
    :meth:`region_from_endpoint`, :meth:`sign` and :meth:`describe`.
    """

    token_per_fetch: ClassVar[bool] = True
    _transient: ClassVar[tuple[str, ...]] = ("_signings",)
    #: The boto3 client that signs (``rds``, ``dsql``).
    service: ClassVar[str]
    #: What an endpoint name that tells the region looks like (for the error message).
    endpoint_kind: ClassVar[str]

    region: str | None
    signing_host: str | None
    allow_insecure_transport: bool

    def _new_transient_state(self) -> None:
        # (host, port, user, vendor) -> Signing: the endpoint name is parsed once per target.
        self._signings: dict[tuple[str, int | None, str, str], Signing] = {}
        super()._new_transient_state()

    # -- what a subclass provides -------------------------------------------------------

    def endpoint(self, target: Target) -> tuple[str, int]:
        """The host and port the token is signed for."""
        raise NotImplementedError

    def region_from_endpoint(self, host: str) -> str | None:
        """The region an endpoint name tells, if it does."""
        raise NotImplementedError

    def sign(self, client: Any, signing: Signing, target: Target) -> tuple[str, float]:
        """A new token for ``target`` from the boto3 ``client``, and how many seconds it lives."""
        raise NotImplementedError

    def signed_for(self, signing: Signing, target: Target) -> str:
        """What a token is signed for, as error messages name it."""
        return f"{target.user}@{signing.host}:{signing.port}"

    # -- shared -------------------------------------------------------------------------

    def region_for(self, target: Target) -> str:
        region = (
            self.region
            or self.region_from_endpoint(self.endpoint(target)[0])
            or _aws.default_region(self.aws_session())
        )
        if not region:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} cannot tell the AWS region: pass region=, "
                f"use {self.endpoint_kind} as HOST or signing_host, or configure boto3's region "
                "(AWS_DEFAULT_REGION or the profile's region)"
            )
        return region

    def signing(self, target: Target) -> Signing:
        """The endpoint, region and cache key of ``target``'s tokens (kept per target:
        the hot path of every new connection asks for them)."""
        key = (target.host, target.port, target.user, target.vendor)
        found = self._signings.get(key)
        if found is None:
            host, port = self.endpoint(target)
            region = self.region_for(target)
            found = Signing(host, port, region, (host.lower(), port, target.user, region))
            if len(self._signings) >= _MAX_TARGETS:
                self._signings.clear()
            self._signings[key] = found
        return found

    def cache_key(self, target: Target) -> Hashable:
        return self.signing(target).cache_key

    def check_target(self, target: Target) -> None:
        where = f"database {target.alias!r}: {self.describe()}"
        if not target.user:
            raise ConfigurationError(f"{where} signs a token for USER, which is empty")
        if not self.endpoint(target)[0]:
            raise ConfigurationError(
                f"{where} signs a token for HOST, which is empty (or pass signing_host=)"
            )
        self.region_for(target)
        check_transport(target, where, allow_insecure=self.allow_insecure_transport)

    def fetch(self, target: Target) -> Credential:
        signing = self.signing(target)
        now = self._clock.time()
        try:
            session = self.aws_session()
            client = _aws.client(self.service, signing.region, session)
            # Read before signing, so that no frame below an error holds a token.
            aws_expiry = _aws.credentials_expiry(session)
            with _aws.redacted_logging():
                token, lifetime = self.sign(client, signing, target)
        except _aws.SDK_ERRORS as exc:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} could not sign a token for "
                f"{self.signed_for(signing, target)} in {signing.region}: {_aws.describe_aws_error(exc)}"
            ) from secret_free(exc)
        expires_at = now + lifetime
        if aws_expiry is not None:
            # Both wall-clock times; the engine converts the result to monotonic time once.
            expires_at = min(expires_at, aws_expiry)
        return Credential(password=str(token), expires_at=expires_at, issued_at=now)


class RdsIamToken(SignedToken):
    """An RDS IAM authentication token for the connection's HOST, PORT and USER.

    - ``region``: the AWS region of the database. By default it is read from an
      RDS/Aurora endpoint name in HOST (or ``signing_host``), else boto3's
      configured region.
    - ``signing_host`` / ``signing_port``: the endpoint the token is signed for,
      when the connection goes through a proxy, a tunnel or a CNAME. HOST is
      never resolved or rewritten.
    - ``session``: a ``boto3.Session`` (a profile, an assumed role); by
      default boto3's default credential chain. In a forked child it is made
      again from its profile and region (see :class:`_aws.AwsSource`).
    - ``allow_insecure_transport``: for local tests only. Without it, the
      settings must make TLS mandatory, since the token is sent as a cleartext
      password.

    A token is reused by every connection to the same endpoint and user until
    shortly before its 15 minutes end, and never past the end of the temporary
    AWS credentials that signed it. Each fetch signs a new token, so a refused
    login is retried once (``token_per_fetch``): a wrong IAM policy fails fast.
    """

    service: ClassVar[str] = "rds"
    endpoint_kind: ClassVar[str] = "an RDS endpoint name"

    def __init__(
        self,
        region: str | None = None,
        *,
        signing_host: str | None = None,
        signing_port: int | None = None,
        session: Any = None,
        allow_insecure_transport: bool = False,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        name = type(self).__name__
        self.region = _args.check_region(name, region)
        self.signing_host = _args.check_word(name, "signing_host", signing_host, optional=True)
        self.signing_port = _args.check_port(name, "signing_port", signing_port)
        self.allow_insecure_transport = _args.check_bool(
            name, "allow_insecure_transport", allow_insecure_transport
        )
        self._set_session(session)
        super().__init__(refresh=refresh, clock=clock)

    # -- configuration ----------------------------------------------------------------

    def describe(self) -> str:
        parts = [repr(self.region)] if self.region else []
        if self.signing_host:
            parts.append(f"signing_host={self.signing_host!r}")
        if self.signing_port:
            parts.append(f"signing_port={self.signing_port}")
        return f"RdsIamToken({', '.join(parts)})"

    def endpoint(self, target: Target) -> tuple[str, int]:
        """The host and port the token is signed for."""
        host = self.signing_host or target.host
        port = self.signing_port or target.port or (5432 if target.vendor == "postgresql" else 3306)
        return host, port

    def region_from_endpoint(self, host: str) -> str | None:
        return region_from_host(host)

    def check_target(self, target: Target) -> None:
        super().check_target(target)
        if target.vendor == "mysql" and _MYSQLDB_IMPORTED_FIRST and not _mariadb_client():
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()}: MySQLdb was imported before iamdb.sources, "
                "so Oracle's libmysqlclient was loaded without LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1 and "
                "cannot send the token; set that variable in the environment or import iamdb.sources first"
            )

    # -- tokens -----------------------------------------------------------------------

    def sign(self, client: Any, signing: Signing, target: Target) -> tuple[str, float]:
        token = client.generate_db_auth_token(
            DBHostname=signing.host, Port=signing.port, DBUsername=target.user, Region=signing.region
        )
        return str(token), TOKEN_LIFETIME


def _mariadb_client() -> bool:
    """Whether MySQLdb is built on MariaDB Connector/C (which needs no environment variable)."""
    try:
        import MySQLdb

        info = str(MySQLdb.get_client_info())
    except ImportError:  # pragma: no cover - no MySQLdb at all
        return True
    # MariaDB Connector/C reports its own 3.x version or a "-MariaDB" server version.
    return "mariadb" in info.lower() or info.startswith("3.")
