"""RDS and Aurora IAM database authentication: a signed, 15-minute token as the password."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Hashable, Mapping
from typing import Any

from ..credentials import Credential, Target
from ..engine import Clock, RefreshPolicy
from ..errors import ConfigurationError, CredentialError
from . import _aws

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

_PG_MANDATORY_TLS = {"require", "verify-ca", "verify-full"}
_PG_VERIFIED = {"verify-ca", "verify-full"}
_MYSQL_MANDATORY_TLS = {"REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"}
_MYSQL_VERIFIED = {"VERIFY_CA", "VERIFY_IDENTITY"}


def region_from_host(host: str) -> str | None:
    """The AWS region in an RDS/Aurora endpoint name, or None for any other host."""
    match = _ENDPOINT.search(host.strip())
    return match.group("region").lower() if match else None


class RdsIamToken(_aws.AwsSource):
    """An RDS IAM authentication token for the connection's HOST, PORT and USER.

    - ``region``: the AWS region of the database. By default it is read from an
      RDS/Aurora endpoint name in HOST (or ``signing_host``), else boto3's
      configured region.
    - ``signing_host`` / ``signing_port``: the endpoint the token is signed for,
      when the connection goes through a proxy, a tunnel or a CNAME. HOST is
      never resolved or rewritten.
    - ``session``: a ``boto3.Session`` (a profile, an assumed role); by
      default boto3's default credential chain.
    - ``allow_insecure_transport``: for local tests only. Without it, the
      settings must make TLS mandatory, since the token is sent as a cleartext
      password.

    A token is reused by every connection to the same endpoint and user until
    shortly before its 15 minutes end, and never past the end of the temporary
    AWS credentials that signed it.
    """

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
        if signing_port is not None and (not isinstance(signing_port, int) or not 0 < signing_port < 65536):
            raise ConfigurationError(f"RdsIamToken: signing_port must be a port number, not {signing_port!r}")
        self.region = region
        self.signing_host = signing_host
        self.signing_port = signing_port
        self.allow_insecure_transport = bool(allow_insecure_transport)
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

    def region_for(self, target: Target) -> str:
        region = (
            self.region or region_from_host(self.endpoint(target)[0]) or _aws.default_region(self._session)
        )
        if not region:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} cannot tell the AWS region: pass region=, "
                "use an RDS endpoint name as HOST or signing_host, or configure boto3's region "
                "(AWS_DEFAULT_REGION or the profile's region)"
            )
        return region

    def cache_key(self, target: Target) -> Hashable:
        host, port = self.endpoint(target)
        return (host.lower(), port, target.user, self.region_for(target))

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
        if target.vendor == "mysql" and _MYSQLDB_IMPORTED_FIRST and not _mariadb_client():
            raise ConfigurationError(
                f"{where}: MySQLdb was imported before iamdb.sources, so Oracle's libmysqlclient was loaded "
                "without LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1 and cannot send the token; set that variable "
                "in the environment or import iamdb.sources first"
            )

    # -- tokens -----------------------------------------------------------------------

    def fetch(self, target: Target) -> Credential:
        host, port = self.endpoint(target)
        region = self.region_for(target)
        now = self._clock()
        try:
            rds = _aws.client("rds", region, self._session)
            with _aws.redacted_logging():
                token = rds.generate_db_auth_token(
                    DBHostname=host, Port=port, DBUsername=target.user, Region=region
                )
            aws_expiry = _aws.credentials_expiry(self._session)
        except Exception as exc:
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} could not sign a token for "
                f"{target.user}@{host}:{port} in {region}: {_aws.describe_aws_error(exc)}"
            ) from None
        expires_at = now + TOKEN_LIFETIME
        if aws_expiry is not None:
            # Map the credentials' wall-clock end onto this source's clock.
            expires_at = min(expires_at, now + (aws_expiry - time.time()))
        return Credential(password=str(token), expires_at=expires_at, issued_at=now)


def check_transport(target: Target, where: str, *, allow_insecure: bool) -> None:
    """Refuse settings that could send a token without TLS; warn when TLS does not verify."""
    options: Mapping[str, Any] = target.options
    if target.vendor == "postgresql":
        mode = str(options.get("sslmode") or "prefer").lower()
        mandatory, verified = mode in _PG_MANDATORY_TLS, mode in _PG_VERIFIED
        how = "set OPTIONS['sslmode'] to 'verify-full' (with 'sslrootcert')"
    elif target.vendor == "mysql":
        mode = str(options.get("ssl_mode") or "").upper()
        ssl = options.get("ssl")
        has_ssl = isinstance(ssl, Mapping) and bool(ssl)
        has_ca = isinstance(ssl, Mapping) and bool(ssl.get("ca") or ssl.get("capath"))
        mandatory = (mode in _MYSQL_MANDATORY_TLS or has_ssl) and mode not in {"DISABLED", "PREFERRED"}
        verified = has_ca and mode not in {"REQUIRED"}
        how = "set OPTIONS['ssl'] = {'ca': <RDS CA bundle>} and OPTIONS['ssl_mode'] = 'VERIFY_IDENTITY'"
    else:
        return
    if not mandatory:
        if allow_insecure:
            logger.warning("iamdb: %s sends a token without mandatory TLS (allow_insecure_transport)", where)
            return
        raise ConfigurationError(
            f"{where}: an IAM token is a password sent in cleartext, and these settings do not make TLS "
            f"mandatory: {how} (allow_insecure_transport=True is for local tests only)"
        )
    if not verified:
        logger.warning("iamdb: %s: TLS does not verify the server's certificate: %s", where, how)


def _mariadb_client() -> bool:
    """Whether MySQLdb is built on MariaDB Connector/C (which needs no environment variable)."""
    try:
        import MySQLdb

        info = str(MySQLdb.get_client_info())
    except Exception:  # pragma: no cover - no MySQLdb at all
        return True
    # MariaDB Connector/C reports its own 3.x version or a "-MariaDB" server version.
    return "mariadb" in info.lower() or info.startswith("3.")
