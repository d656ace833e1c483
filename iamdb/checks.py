"""Django system checks for every ``DATABASES`` entry (``"iamdb"`` in ``INSTALLED_APPS``).

Registered by :class:`iamdb.apps.IamdbConfig` under the tag ``"iamdb"``, so that
``manage.py check`` runs them. They read ``settings.DATABASES`` and never write
into it, never connect and never fetch a credential: each check is offline and
cheap. Every message names the alias as its ``obj`` and says what to change in
its ``hint``. docs/checks.md lists them.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning

from .credentials import CredentialSource, as_source
from .errors import ConfigurationError
from .retry import OPTIONS_KEY, ConnectOptions
from .tls import transport

__all__ = ["TAG", "check_database", "check_databases", "transport"]

#: The tag of iamdb's checks: ``manage.py check --tag iamdb`` runs them alone.
TAG = "iamdb"

#: Django's stock engines and the iamdb engine that replaces each.
STOCK_ENGINES = {
    "django.db.backends.postgresql": "iamdb.backends.postgresql",
    "django.db.backends.mysql": "iamdb.backends.mysql",
    "django.contrib.gis.db.backends.postgis": "iamdb.backends.gis.postgis",
    "django.contrib.gis.db.backends.mysql": "iamdb.backends.gis.mysql",
}

#: iamdb's engines: their vendor, the modules their driver needs (any one of them) and its extra.
ENGINES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "iamdb.backends.postgresql": ("postgresql", ("psycopg", "psycopg2"), "postgresql"),
    "iamdb.backends.gis.postgis": ("postgresql", ("psycopg", "psycopg2"), "postgresql"),
    "iamdb.backends.mysql": ("mysql", ("MySQLdb",), "mysql"),
    "iamdb.backends.gis.mysql": ("mysql", ("MySQLdb",), "mysql"),
}

#: Source classes (by name, anywhere in the MRO) and the SDK module and extra they need.
SOURCE_SDKS: dict[str, tuple[str, str]] = {
    "AuroraDsqlToken": ("boto3", "aws"),
    "AzureEntraToken": ("azure.identity", "azure"),
    "CloudSqlIamToken": ("google.auth", "gcp"),
    "RdsIamToken": ("boto3", "aws"),
    "SecretsManagerSecret": ("boto3", "aws"),
    "VaultDatabaseCredentials": ("hvac", "vault"),
}

#: The oldest psycopg-pool that Django's pool works with when a source gives the credentials.
MIN_PSYCOPG_POOL = (3, 3)


_PG_TLS_HINT = (
    "Set OPTIONS['sslmode'] to 'verify-full' and OPTIONS['sslrootcert'] to the server's CA bundle "
    "(RDS: the RDS CA bundle)."
)
_MYSQL_TLS_HINT = (
    "Set OPTIONS['ssl'] = {'ca': <path of the server's CA bundle>} and "
    "OPTIONS['ssl_mode'] = 'VERIFY_IDENTITY'."
)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken sys.modules entry
        return False


def _distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def _is_source_value(value: object) -> bool:
    """Whether a PASSWORD value is a source (an iamdb source or a callable), not a str."""
    return isinstance(value, CredentialSource) or (
        value is not None and not isinstance(value, str) and callable(value)
    )


def _sdk_of(source: CredentialSource) -> tuple[str, str] | None:
    for cls in type(source).__mro__:
        found = SOURCE_SDKS.get(cls.__name__)
        if found is not None:
            return found
    return None


def check_database(alias: str, entry: Mapping[str, Any]) -> list[CheckMessage]:
    """The messages for one ``DATABASES`` entry (read only)."""
    if not isinstance(entry, Mapping):
        return []
    engine = str(entry.get("ENGINE") or "")
    password = entry.get("PASSWORD")
    options: Mapping[str, Any] = entry.get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        return []
    if engine in STOCK_ENGINES:
        if _is_source_value(password):
            return [
                Error(
                    f"PASSWORD is a credential source but ENGINE is Django's stock {engine!r}, which would "
                    "send the source's description to the database as the password.",
                    hint=f"Set ENGINE to {STOCK_ENGINES[engine]!r}.",
                    obj=alias,
                    id="iamdb.E001",
                )
            ]
        return []
    known = ENGINES.get(engine)
    if known is None:
        return []  # not an iamdb engine: not ours to judge
    vendor, driver_modules, driver_extra = known
    messages: list[CheckMessage] = []
    if not any(_installed(module) for module in driver_modules):
        messages.append(
            Error(
                f"ENGINE {engine!r} needs {' or '.join(driver_modules)}, which is not installed.",
                hint=f'Run: pip install "iamdb[{driver_extra}]"',
                obj=alias,
                id="iamdb.E020",
            )
        )
    try:
        ConnectOptions.from_options(options, alias)
    except ConfigurationError as exc:
        messages.append(
            Error(
                str(exc).removeprefix(f"database {alias!r}: "),
                hint=f"Fix OPTIONS[{OPTIONS_KEY!r}]: a dict of the keys in docs/configuration.md, each a "
                "number of seconds >= 0.",
                obj=alias,
                id="iamdb.E002",
            )
        )
    try:
        source = as_source(password, alias=alias)
    except ConfigurationError as exc:
        messages.append(
            Error(
                str(exc),
                hint="Set PASSWORD to a str, a callable or an iamdb source (iamdb.sources).",
                obj=alias,
                id="iamdb.E003",
            )
        )
        return messages
    if source is None:
        return messages
    messages += _check_source(alias, entry, vendor, options, source)
    return messages


def _check_source(
    alias: str, entry: Mapping[str, Any], vendor: str, options: Mapping[str, Any], source: CredentialSource
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    described = source.describe()
    user = entry.get("USER")
    if not user and not source.issues_username:
        messages.append(
            Error(
                f"USER is empty and {described} does not issue a user name.",
                hint="Set USER to the database user the credential is for.",
                obj=alias,
                id="iamdb.E004",
            )
        )
    vendors = getattr(source, "vendors", None)  # the databases a source serves, if not every one
    if vendors is not None and vendor not in vendors:
        messages.append(
            Error(
                f"{described} serves {' and '.join(vendors)} only, and ENGINE is a {vendor} engine.",
                hint=f"Set ENGINE to {' or '.join(repr(f'iamdb.backends.{v}') for v in vendors)}.",
                obj=alias,
                id="iamdb.E005",
            )
        )
    sdk = _sdk_of(source)
    if sdk is not None and not _installed(sdk[0]):
        messages.append(
            Error(
                f"{described} needs {sdk[0]}, which is not installed.",
                hint=f'Run: pip install "iamdb[{sdk[1]}]"',
                obj=alias,
                id="iamdb.E021",
            )
        )
    if source.token_per_fetch:
        messages += _check_transport(alias, vendor, options, source)
    if vendor == "postgresql" and options.get("pool"):
        messages += _check_pool(alias, described)
    return messages


def _check_transport(
    alias: str, vendor: str, options: Mapping[str, Any], source: CredentialSource
) -> list[CheckMessage]:
    mandatory, verified = transport(vendor, options)
    hint = _PG_TLS_HINT if vendor == "postgresql" else _MYSQL_TLS_HINT
    described = source.describe()
    if not mandatory:
        if getattr(source, "allow_insecure_transport", False) is True:
            return [
                CheckWarning(
                    f"{described} has allow_insecure_transport=True: its token, a password, may be sent "
                    "without TLS.",
                    hint=f"Use it for local tests only. In production remove it and: {hint}",
                    obj=alias,
                    id="iamdb.W012",
                )
            ]
        return [
            Error(
                f"{described} sends a token as a cleartext password, and OPTIONS do not make TLS mandatory.",
                hint=hint,
                obj=alias,
                id="iamdb.E010",
            )
        ]
    if not verified:
        return [
            CheckWarning(
                f"{described} sends a token over TLS that does not verify the server's certificate: "
                "anyone between the application and the database can read it.",
                hint=hint,
                obj=alias,
                id="iamdb.W011",
            )
        ]
    return []


def _check_pool(alias: str, described: str) -> list[CheckMessage]:
    version = _distribution_version("psycopg-pool")
    if version is not None and _version_tuple(version) >= MIN_PSYCOPG_POOL:
        return []
    found = f"psycopg-pool {version} is installed" if version else "psycopg-pool is not installed"
    wanted = ".".join(str(part) for part in MIN_PSYCOPG_POOL)
    return [
        Error(
            f"OPTIONS['pool'] asks for Django's pool with credentials from {described}, which needs "
            f"psycopg-pool {wanted} or newer; {found}.",
            hint=f'Run: pip install "psycopg-pool>={wanted}" (or pip install "iamdb[postgresql]").',
            obj=alias,
            id="iamdb.E030",
        )
    ]


def check_databases(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every entry of ``settings.DATABASES`` (the checks framework's entry point)."""
    from django.conf import settings

    messages: list[CheckMessage] = []
    for alias, entry in settings.DATABASES.items():
        messages += check_database(str(alias), entry)
    return messages


register(check_databases, TAG)
