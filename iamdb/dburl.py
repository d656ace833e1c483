"""Database URLs: ``iamdb.parse_database_url(url, **overrides)`` returns a ``DATABASES`` entry.

``postgresql+rds-iam://app@db.example.com:5432/shop?region=eu-west-1&sslmode=verify-full``
gives ``ENGINE "iamdb.backends.postgresql"`` and ``PASSWORD RdsIamToken(region="eu-west-1")``;
plain ``postgresql://user:password@host/name`` gives the same backend with a string password.
Every mistake is an :class:`~iamdb.errors.ConfigurationError` raised here, when the URL is
parsed, whose message shows the URL with its password replaced by ``***``.

If dj-database-url is installed, importing this module registers the ``+rds-iam``,
``+secretsmanager`` and ``+vault`` schemes with it, so ``dj_database_url.parse()`` understands
them too.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import django

from .errors import ConfigurationError, MissingDependencyError, secret_free

__all__ = ["parse_database_url", "register_with_dj_database_url"]

# scheme base -> (vendor, ENGINE)
_BASES: dict[str, tuple[str, str]] = {
    "postgresql": ("postgresql", "iamdb.backends.postgresql"),
    "postgres": ("postgresql", "iamdb.backends.postgresql"),
    "postgis": ("postgresql", "iamdb.backends.gis.postgis"),
    "mysql": ("mysql", "iamdb.backends.mysql"),
    "mysqlgis": ("mysql", "iamdb.backends.gis.mysql"),
}

_SOURCES = ("rds-iam", "secretsmanager", "vault")

_PASSWORD_KEYS = frozenset({"password", "passwd", "sslpassword"})

# libpq's connection keywords that may go to OPTIONS (host, port, dbname, user and password
# belong in the URL itself).
_LIBPQ_KEYS = frozenset(
    [
        "hostaddr",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "sslnegotiation",
        "requiressl",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslkeylogfile",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    ]
)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_MYSQL_SSL = {
    "ssl_ca": "ca",
    "ssl_cert": "cert",
    "ssl_key": "key",
    "ssl_capath": "capath",
    "ssl_cipher": "cipher",
}
_MYSQL_SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
_MYSQL_INTS = frozenset({"connect_timeout", "read_timeout", "write_timeout"})
_MYSQL_BOOLS = frozenset({"compress", "local_infile"})
_MYSQL_TEXTS = frozenset(
    {"charset", "collation", "init_command", "sql_mode", "unix_socket", "auth_plugin", "read_default_file",
     "read_default_group"}
)  # fmt: skip
_MYSQL_ISOLATION = ("read uncommitted", "read committed", "repeatable read", "serializable")

# Keys that name what the URL itself says: refused in the query for clarity.
_IN_THE_URL = {
    "postgresql": frozenset({"host", "port", "dbname", "user", "password"}),
    "mysql": frozenset({"host", "port", "db", "database", "user", "passwd", "password"}),
}


_ENCODE_HINT = " (percent-encode '/', '?', '#' and '@' in a user name or password)"


class _Bad(Exception):
    """A problem found in the URL; turned into a ConfigurationError showing the URL."""


# -- values ---------------------------------------------------------------------------------


def _text(key: str, value: str) -> str:
    if not value:
        raise _Bad(f"the parameter {key!r} is empty")
    return value


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise _Bad(f"the parameter {key!r} must be true or false, not {value!r}")


def _int(key: str, value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise _Bad(f"the parameter {key!r} must be a whole number >= 0, not {value!r}")
    return int(value)


def _float(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        raise _Bad(f"the parameter {key!r} must be a number of seconds >= 0, not {value!r}")
    return number


def _choice(key: str, value: str, choices: Iterable[str]) -> str:
    if value not in choices:
        raise _Bad(f"the parameter {key!r} must be one of {', '.join(choices)}, not {value!r}")
    return value


# -- sources --------------------------------------------------------------------------------

# source -> (module, class, positional parameter or None, {parameter: (keyword, converter)})
_Converter = Callable[[str, str], Any]
_SOURCE_PARAMS: dict[str, tuple[str, str, str | None, dict[str, tuple[str, _Converter]]]] = {
    "rds-iam": (
        "iamdb.sources.rds",
        "RdsIamToken",
        None,
        {
            "region": ("region", _text),
            "signing_host": ("signing_host", _text),
            "signing_port": ("signing_port", _int),
        },
    ),
    "secretsmanager": (
        "iamdb.sources.secretsmanager",
        "SecretsManagerSecret",
        "secret",
        {
            "secret": ("secret_id", _text),
            "region": ("region", _text),
            "version_stage": ("version_stage", _text),
            "username_key": ("username_key", _text),
            "password_key": ("password_key", _text),
            "ttl": ("ttl", _float),
        },
    ),
    "vault": (
        "iamdb.sources.vault",
        "VaultDatabaseCredentials",
        "role",
        {"role": ("role", _text), "mount": ("mount_point", _text), "static": ("static", _bool)},
    ),
}


def _make_source(source: str, params: dict[str, str]) -> Any:
    module, name, positional, known = _SOURCE_PARAMS[source]
    if positional is not None and positional not in params:
        raise _Bad(f"the {source} scheme needs the parameter {positional!r}")
    kwargs = {known[key][0]: known[key][1](key, value) for key, value in params.items()}
    args = [kwargs.pop(known[positional][0])] if positional is not None else []
    cls = getattr(importlib.import_module(module), name)  # the SDK is imported only for this scheme
    return cls(*args, **kwargs)


# -- options --------------------------------------------------------------------------------


def _postgresql_option(key: str, value: str, options: dict[str, Any], known_only: bool) -> None:
    if key == "sslmode":
        options[key] = _choice(key, value, _SSLMODES)
    elif key == "server_side_binding":
        options[key] = _bool(key, value)
    elif key == "assume_role":
        options[key] = _text(key, value)
    elif key == "pool":
        if _bool(key, value):
            if django.VERSION < (5, 1):
                raise _Bad("pool=true needs Django 5.1 or later")
            options["pool"] = True
    elif key in _LIBPQ_KEYS or not known_only:
        options[key] = value
    else:
        raise _Bad(f"unknown parameter {key!r}")


def _mysql_option(key: str, value: str, options: dict[str, Any], known_only: bool) -> None:
    if key in _MYSQL_SSL:
        options.setdefault("ssl", {})[_MYSQL_SSL[key]] = _text(key, value)
    elif key == "ssl_mode":
        options[key] = _choice(key, value, _MYSQL_SSL_MODES)
    elif key == "isolation_level":
        options[key] = _choice(key, value, _MYSQL_ISOLATION)
    elif key in _MYSQL_INTS:
        options[key] = _int(key, value)
    elif key in _MYSQL_BOOLS:
        options[key] = _bool(key, value)
    elif key in _MYSQL_TEXTS or not known_only:
        options[key] = value
    else:
        raise _Bad(f"unknown parameter {key!r}")


def _conn_max_age(key: str, value: str) -> int | None:
    return None if value.lower() == "none" else _int(key, value)


_DJANGO_KEYS: dict[str, tuple[str, _Converter]] = {
    "conn_max_age": ("CONN_MAX_AGE", _conn_max_age),
    "conn_health_checks": ("CONN_HEALTH_CHECKS", _bool),
    "disable_server_side_cursors": ("DISABLE_SERVER_SIDE_CURSORS", _bool),
}


# -- the URL --------------------------------------------------------------------------------


def _split_scheme(scheme: str) -> tuple[str, str, str | None]:
    """``(vendor, ENGINE, source or None)`` for ``scheme``."""
    base, plus, source = scheme.lower().partition("+")
    if base not in _BASES or (plus and source not in _SOURCES):
        known = ", ".join(sorted(_BASES)) + " (each also with +" + ", +".join(_SOURCES) + ")"
        raise _Bad(f"unknown scheme {scheme!r}; known schemes: {known}")
    vendor, engine = _BASES[base]
    return vendor, engine, source if plus else None


def _build(
    scheme: str,
    user: str,
    password: str | None,
    host: str,
    port: int | None,
    name: str,
    query: list[tuple[str, str]],
) -> dict[str, Any]:
    """The DATABASES entry for a URL's decoded parts; raises :class:`_Bad`."""
    vendor, engine, source = _split_scheme(scheme)
    if source is not None and password:
        raise _Bad(f"a URL with the {source} scheme takes no password (the source supplies it)")
    if source == "rds-iam" and not user:
        raise _Bad("the rds-iam scheme needs a user name (USER@HOST)")
    if not host:
        raise _Bad("the URL has no host")
    if not name:
        raise _Bad("the URL has no database name")
    if "/" in name:
        raise _Bad("the database name must be one path segment")
    entry: dict[str, Any] = {
        "ENGINE": engine,
        "NAME": name,
        "USER": user,
        "PASSWORD": password or "",
        "HOST": host,
        "PORT": port if port is not None else "",
    }
    options: dict[str, Any] = {}
    source_params: dict[str, str] = {}
    known = _SOURCE_PARAMS[source][3] if source is not None else {}
    seen: set[str] = set()
    for key, value in query:
        if key in seen:
            raise _Bad(f"the parameter {key!r} is given twice")
        seen.add(key)
        if key in known:
            source_params[key] = value
        elif key in _DJANGO_KEYS:
            setting, convert = _DJANGO_KEYS[key]
            entry[setting] = convert(key, value)
        elif key in _IN_THE_URL[vendor]:
            raise _Bad(f"the parameter {key!r} belongs in the URL itself, not in its query")
        elif vendor == "postgresql":
            _postgresql_option(key, value, options, known_only=source is not None)
        else:
            if key == "pool":
                raise _Bad("pool=true is for PostgreSQL only (Django has no MySQL pool)")
            _mysql_option(key, value, options, known_only=source is not None)
    if options:
        entry["OPTIONS"] = options
    if source is not None:
        entry["PASSWORD"] = _make_source(source, source_params)
    return entry


def _shown(url: str) -> str:
    """``url`` with any password (in the user info or the query) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if ":" in url and "@" in url else url
    # The user info ends at the last "@": a password may hold "/", "?", "#" or "@" unencoded.
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = userinfo.partition(":")[0] + ":***@" + after
    base, question, query = rest.partition("?")
    if question:
        pairs = []
        for pair in query.split("&"):
            key = unquote(pair.partition("=")[0]).lower()
            pairs.append(f"{pair.partition('=')[0]}=***" if key in _PASSWORD_KEYS else pair)
        rest = base + "?" + "&".join(pairs)
    return f"{scheme}://{rest}"


def _host_and_port(netloc: str) -> tuple[str, str] | None:
    """``(host, port text)`` from the part of ``netloc`` after the user info, None if malformed."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            return None
        return host, tail[1:]
    host, _, port = hostport.partition(":")
    return host, port


def _parse(url: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise _Bad(f"a database URL is a str, not {type(url).__name__}")
    try:
        split = urlsplit(url.strip())
    except ValueError:
        split = None
    # Raised outside the except block: urllib's message may quote part of a password.
    if split is None:
        raise _Bad("the URL cannot be parsed")
    if "://" not in url:
        raise _Bad("the URL has no scheme:// prefix")
    if split.fragment:
        raise _Bad("the URL has a '#' fragment (percent-encode '#' in a password as %23)")
    hostport = _host_and_port(split.netloc)
    if hostport is None:
        raise _Bad("the URL's host cannot be parsed" + _ENCODE_HINT)
    host, port_text = hostport
    port: int | None = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _Bad("the URL's port is not a number from 1 to 65535" + _ENCODE_HINT)
        port = int(port_text)
    if "@" in split.path:
        # "u:1234/rest@host" reads as host "u", port 1234: an unencoded "/" in a password.
        raise _Bad("the database name holds '@'" + _ENCODE_HINT)
    userinfo = split.netloc.rpartition("@")[0]
    user, colon, password = userinfo.partition(":")
    query = parse_qsl(split.query, keep_blank_values=True)
    return _build(
        split.scheme,
        unquote(user),
        unquote(password) if colon else None,
        unquote(host),
        port,
        unquote(split.path[1:]),
        query,
    )


def _apply_overrides(entry: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if key != key.upper():
            raise _Bad(
                f"the override {key!r} is not a DATABASES key (those are capitals: CONN_MAX_AGE, TEST, ...)"
            )
        if key == "OPTIONS" and isinstance(value, Mapping):
            entry["OPTIONS"] = {**entry.get("OPTIONS", {}), **value}
        else:
            entry[key] = value
    return entry


def _raise(problem: _Bad, shown: str, cause: BaseException | None = None) -> ConfigurationError:
    if isinstance(cause, MissingDependencyError):  # kept as such: its message names the extra
        error: ConfigurationError = MissingDependencyError(f"{cause} (for the database URL {shown})")
    else:
        error = ConfigurationError(f"{problem} in the database URL {shown}")
    error.__cause__ = secret_free(cause) if cause is not None else None
    error.__suppress_context__ = True
    return error


def parse_database_url(url: str, **overrides: Any) -> dict[str, Any]:
    """A ``DATABASES`` entry for ``url``; ``overrides`` update it (``OPTIONS`` key by key).

    Raises :class:`~iamdb.errors.ConfigurationError` (an ``ImproperlyConfigured``) for any
    mistake, with the URL shown without its password.
    """
    problem: _Bad | None = None
    cause: ConfigurationError | None = None
    try:
        entry = _apply_overrides(_parse(url), overrides)
    except _Bad as exc:
        problem = exc
    except ConfigurationError as exc:  # a source's constructor refused an argument
        problem, cause = _Bad(f"the source refused its arguments ({exc})"), exc
    if problem is not None:
        raise _raise(problem, _shown(url) if isinstance(url, str) else "", cause)
    return entry


# -- dj-database-url ------------------------------------------------------------------------


def _query_from_options(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """dj-database-url's parsed query back to text (it turned "5" into 5 and "true" into True)."""
    query: list[tuple[str, str]] = []
    for key, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            query.append((str(key), text))
    return query


def _dj_postprocess(scheme: str) -> Callable[[dict[str, Any]], None]:
    def postprocess(config: dict[str, Any]) -> None:
        query = _query_from_options(config.get("OPTIONS") or {})
        port = config.get("PORT") or None
        try:
            entry = _build(
                scheme,
                config.get("USER") or "",
                config.get("PASSWORD") or None,
                config.get("HOST") or "",
                int(port) if port is not None else None,
                config.get("NAME") or "",
                query,
            )
        except _Bad as exc:
            problem, cause = exc, None
        except ConfigurationError as exc:
            problem, cause = _Bad(f"the source refused its arguments ({exc})"), exc
        else:
            entry.setdefault("OPTIONS", {})  # dj-database-url merges its own options into it
            config.clear()
            config.update(entry)
            return
        shown = "{}://{}{}@{}:{}/{}?{}".format(
            scheme,
            quote(config.get("USER") or ""),
            ":***" if config.get("PASSWORD") else "",
            config.get("HOST") or "",
            port or "",
            quote(config.get("NAME") or ""),
            "&".join(f"{k}={'***' if k.lower() in _PASSWORD_KEYS else v}" for k, v in query),
        )
        raise _raise(problem, shown, cause)

    return postprocess


def register_with_dj_database_url() -> list[str]:
    """Teach ``dj_database_url.parse()`` the ``+rds-iam``, ``+secretsmanager`` and ``+vault``
    schemes; returns the schemes registered (none if dj-database-url is not installed)."""
    if importlib.util.find_spec("dj_database_url") is None:
        return []
    dj_database_url: Any = importlib.import_module("dj_database_url")
    schemes = []
    for base, (_, engine) in _BASES.items():
        for source in _SOURCES:
            scheme = f"{base}+{source}"
            dj_database_url.register(scheme, engine)(_dj_postprocess(scheme))
            schemes.append(scheme)
    return schemes


register_with_dj_database_url()
