"""Checks of the sources' constructor arguments, shared by every source (no SDK imported):
a bad argument is a :class:`ConfigurationError` that names the source, the argument and what
it must be, and shows the value only when it is a short plain value."""

from __future__ import annotations

import math
import re
from typing import Literal, overload

from ..errors import ConfigurationError

_REGION_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def shown(value: object) -> str:
    """A bad argument as a message shows it: a short repr of a plain value, else its type."""
    if value is None or isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return type(value).__name__


def bad_argument(owner: str, name: str, allowed: str, value: object) -> ConfigurationError:
    return ConfigurationError(f"{owner}: {name} must be {allowed}, not {shown(value)}")


def check_region(owner: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and _REGION_NAME.fullmatch(value)):
        return value
    raise bad_argument(owner, "region", "None or an AWS region name such as 'eu-west-1'", value)


@overload
def check_word(owner: str, name: str, value: object, *, optional: Literal[False] = False) -> str: ...
@overload
def check_word(owner: str, name: str, value: object, *, optional: bool) -> str | None: ...
def check_word(owner: str, name: str, value: object, *, optional: bool = False) -> str | None:
    """A non-empty str without whitespace (a host, a secret id, a key); None if optional."""
    if (value is None and optional) or (
        isinstance(value, str) and value and not any(ch.isspace() for ch in value)
    ):
        return value
    allowed = "a non-empty str without spaces"
    raise bad_argument(owner, name, f"None or {allowed}" if optional else allowed, value)


def check_port(owner: str, name: str, value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536):
        return value
    raise bad_argument(owner, name, "None or a port number (an int from 1 to 65535)", value)


def check_bool(owner: str, name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise bad_argument(owner, name, "True or False", value)


def check_seconds(owner: str, name: str, value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise bad_argument(owner, name, "a finite number of seconds > 0", value)
