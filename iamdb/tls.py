"""Whether settings make TLS mandatory and verified: one set of rules for the system checks
and for every token source (a token is a password sent in cleartext inside TLS)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError
from .values import Target

logger = logging.getLogger("iamdb")

# TLS modes, as libpq and mysqlclient spell them.
_PG_MANDATORY = frozenset({"require", "verify-ca", "verify-full"})
_PG_VERIFIED = frozenset({"verify-ca", "verify-full"})
_MYSQL_MANDATORY = frozenset({"REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"})
_MYSQL_UNVERIFIED = frozenset({"DISABLED", "PREFERRED", "REQUIRED"})

#: What to set, per vendor, in messages and hints.
HOW = {
    "postgresql": "set OPTIONS['sslmode'] to 'verify-full' (with 'sslrootcert', the server's CA bundle)",
    "mysql": (
        "set OPTIONS['ssl'] = {'ca': <the server's CA bundle>} and OPTIONS['ssl_mode'] = 'VERIFY_IDENTITY'"
    ),
}


def transport(vendor: str, options: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether ``OPTIONS`` make TLS mandatory, and whether it verifies the server's
    certificate: ``(mandatory, verified)``. A pure function (no logging, no raising);
    ``(True, True)`` for a vendor it does not know.

    PostgreSQL: ``sslmode`` (libpq's default is ``prefer``). MySQL: an ``ssl`` dict or a
    mandatory ``ssl_mode`` makes TLS mandatory (unless ``ssl_mode`` is ``DISABLED`` or
    ``PREFERRED``), and a CA (``ca``/``capath``) verifies unless ``ssl_mode`` is ``REQUIRED``.
    """
    if vendor == "postgresql":
        mode = str(options.get("sslmode") or "prefer").lower()
        return mode in _PG_MANDATORY, mode in _PG_VERIFIED
    if vendor == "mysql":
        mode = str(options.get("ssl_mode") or "").upper()
        ssl = options.get("ssl")
        has_ssl = isinstance(ssl, Mapping) and bool(ssl)
        has_ca = isinstance(ssl, Mapping) and bool(ssl.get("ca") or ssl.get("capath"))
        mandatory = (mode in _MYSQL_MANDATORY or has_ssl) and mode not in {"DISABLED", "PREFERRED"}
        return mandatory, mandatory and has_ca and mode not in _MYSQL_UNVERIFIED
    return True, True


def check_transport(target: Target, where: str, *, allow_insecure: bool) -> None:
    """Refuse settings that could send a token without TLS; warn when TLS does not verify."""
    mandatory, verified = transport(target.vendor, target.options)
    how = HOW.get(target.vendor, "")
    if not mandatory:
        if allow_insecure:
            logger.warning("iamdb: %s sends a token without mandatory TLS (allow_insecure_transport)", where)
            return
        raise ConfigurationError(
            f"{where}: a token is a password sent in cleartext, and these settings do not make TLS "
            f"mandatory: {how} (allow_insecure_transport=True is for local tests only)"
        )
    if not verified:
        logger.warning("iamdb: %s: TLS does not verify the server's certificate: %s", where, how)
