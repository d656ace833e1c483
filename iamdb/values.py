"""The values every part of iamdb passes around: a credential and its target.

A leaf module: it imports neither the engine nor any source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .errors import ConfigurationError

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class SecretStr(str):
    """A str whose ``repr()`` hides it: a password in a dict, a tuple or a frame's
    locals shows as ``'***'`` (Django's debug page prints ``repr()`` of every local).
    ``str()``, formatting, comparison and the drivers see the value itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Credential:
    """An immutable user name and password, with what is known of their lifetime.

    The times are wall-clock seconds since the epoch (``time.time()``), as
    servers give them. The engine converts each one to its monotonic clock
    once, when the credential is fetched, and decides on monotonic time from
    then on: a later step of the wall clock changes nothing.

    - ``expires_at``: logins with this credential fail afterwards (an IAM token,
      the end of a Vault lease). iamdb never hands it out past that moment.
    - ``refresh_after``: a fresh copy should be fetched from then on, although
      this one still works (a rotating secret that is re-read every few minutes).
    - ``sessions_end_at``: connections opened with it are ended by the server
      then (a revoked Vault lease); iamdb retires them before that moment.
    - ``issued_at``: when it was obtained (set by the engine when absent).

    ``repr()`` and ``str()`` never show the password, and ``password`` is a
    :class:`SecretStr`, whose own ``repr()`` hides it too.
    """

    password: str
    username: str | None = None
    expires_at: float | None = None
    refresh_after: float | None = None
    sessions_end_at: float | None = None
    issued_at: float | None = None

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}", "password='***'"]
        for name in ("expires_at", "refresh_after", "sessions_end_at"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:.0f}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__

    def __post_init__(self) -> None:
        if type(self.password) is str:
            object.__setattr__(self, "password", SecretStr(self.password))

    def replace(self, **changes: Any) -> Credential:
        """A copy with some fields changed (the value itself never changes)."""
        return dataclasses.replace(self, **changes)


Endpoint = tuple[str, "int | None"]


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a credential is used: one database entry of ``settings.DATABASES``.

    Sources that sign for a host (RDS IAM) read ``host``, ``port`` and ``user``;
    the others ignore it. ``options`` is a read-only view of ``OPTIONS``;
    ``repr()`` shows its keys only (it may hold ``sslpassword``).

    ``endpoints`` lists the (host, port) pairs of a multi-host setting
    (libpq's ``HOST "h1,h2"``, ``PORT "5432,5433"``), one pair otherwise;
    :meth:`single` gives the target for one of them.
    """

    alias: str = "default"
    vendor: str = ""
    host: str = ""
    port: int | None = None
    user: str = ""
    name: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _EMPTY, compare=False, hash=False)
    endpoints: tuple[Endpoint, ...] = dataclasses.field(default=(), compare=False, hash=False)

    def __repr__(self) -> str:
        keys = ", ".join(sorted(str(key) for key in self.options))
        return (
            f"Target(alias={self.alias!r}, vendor={self.vendor!r}, host={self.host!r}, port={self.port!r}, "
            f"user={self.user!r}, name={self.name!r}, options=[{keys}])"
        )

    @property
    def multi_host(self) -> bool:
        return len(self.endpoints) > 1

    def single(self, host: str, port: int | None) -> Target:
        """This target narrowed to one of its endpoints."""
        return dataclasses.replace(self, host=host, port=port, endpoints=((host, port),))

    @classmethod
    def from_settings(
        cls, settings_dict: Mapping[str, Any], *, alias: str = "default", vendor: str = "", source: str = ""
    ) -> Target:
        """The target of one ``DATABASES`` entry; ``source`` (its description) is named in errors."""
        where = f"database {alias!r}: " + (f"{source}: " if source else "")
        user = settings_dict.get("USER") or ""
        host = settings_dict.get("HOST") or ""
        for key, value in (("USER", user), ("HOST", host)):
            if not isinstance(value, str):
                what = "the database user name" if key == "USER" else "a host name (several: comma-separated)"
                raise ConfigurationError(
                    f"{where}{key} must be a str, not {type(value).__name__}: set {key} to {what}"
                )
        ports = _ports(settings_dict.get("PORT"), where)
        hosts = [h.strip() for h in host.split(",")] if "," in host else [host]
        if len(ports) > 1 and len(ports) != len(hosts):
            raise ConfigurationError(
                f"{where}PORT lists {len(ports)} ports for {len(hosts)} host(s) in HOST; "
                "give one port, or one per host"
            )
        if len(ports) <= 1:
            ports = ports * len(hosts) or [None] * len(hosts)
        return cls(
            alias=alias,
            vendor=vendor,
            host=host,
            port=ports[0] if len(hosts) == 1 else None,
            user=user,
            name=str(settings_dict.get("NAME") or ""),
            options=MappingProxyType(dict(settings_dict.get("OPTIONS") or {})),
            endpoints=tuple(zip(hosts, ports, strict=True)),
        )


def _ports(value: object, where: str) -> list[int | None]:
    """PORT as Django accepts it: empty, an int, or a str of one or more comma-separated numbers."""
    if value is None or value == "":
        return []
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigurationError(
            f"{where}PORT must be a port number (int or str), not {type(value).__name__}"
        )
    parts = str(value).split(",")
    ports: list[int | None] = []
    for part in parts:
        text = part.strip()
        if not text and len(parts) > 1:
            ports.append(None)  # libpq: an empty entry means the default port
            continue
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ConfigurationError(
                f"{where}PORT {value!r} is not a port number (1-65535, or a comma-separated "
                "list of them, one per host in HOST)"
            )
        ports.append(int(text))
    return ports
