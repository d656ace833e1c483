"""What the sources that read a stored secret share (Secrets Manager, its agent, a file):
turning the secret's text into a credential, and checking their arguments. No SDK here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError
from ..values import Credential

__all__ = ["FORMATS", "parse_secret", "parse_secret_value"]

#: How a secret's text is read: ``auto`` (a JSON object, else the password itself),
#: ``text`` (the password itself), ``json`` (a JSON object, nothing else).
FORMATS = ("auto", "text", "json")


def parse_secret_value(
    response: Mapping[str, Any], *, where: str, username_key: str, password_key: str, user_given: bool
) -> Credential | ConfigurationError:
    """The credential in a GetSecretValue response (from Secrets Manager or its agent), or
    the error to return, as :func:`parse_secret` does."""
    text = response.get("SecretString")
    if not isinstance(text, str):
        return ConfigurationError(
            f"{where}: the secret has no SecretString (binary secrets are not supported)"
        )
    return parse_secret(
        text, where=where, username_key=username_key, password_key=password_key, user_given=user_given
    )


def parse_secret(
    text: str,
    *,
    where: str,
    username_key: str,
    password_key: str,
    user_given: bool,
    format: str = "auto",
    what: str = "secret",
) -> Credential | ConfigurationError:
    """The credential in a secret's ``text``, or the error to raise.

    The error is returned, not raised: the caller raises it after the secret has
    left its frames (Django's debug page shows every frame's locals). ``where``
    starts each message (the alias and the source); no message holds any value
    of the secret, only the names of its keys. ``what`` names the secret in the
    messages ("secret", "file").

    A JSON object gives the password from ``password_key`` and, when present, the
    user name from ``username_key``. Anything else is the password itself (with
    ``format="auto"`` or ``"text"``). ``user_given``: whether USER is set, for a
    secret without a user name.
    """
    data: object = None
    if format != "text":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if format == "json":
                # A position only: the decoder's ``doc`` is the secret itself.
                line, column = exc.lineno, exc.colno
                del exc
                return ConfigurationError(
                    f"{where}: the {what} is not valid JSON (line {line}, column {column}); fix what "
                    "writes it, or set format='text' if it holds the password itself"
                )
        if format == "json" and not isinstance(data, dict):
            return ConfigurationError(
                f"{where}: the {what} is JSON but not an object ({type(data).__name__}); it must be "
                f'{{"{username_key}": ..., "{password_key}": ...}}, or set format=\'text\''
            )
    username: str | None = None
    if isinstance(data, dict):
        password = data.get(password_key)
        if not isinstance(password, str) or not password:
            keys = ", ".join(sorted(str(k) for k in data)) or "none"
            return ConfigurationError(
                f"{where}: the JSON {what} has no non-empty string {password_key!r} key "
                f"(its keys: {keys}); set password_key="
            )
        value = data.get(username_key)
        username = value if isinstance(value, str) and value else None
    else:
        password = text
    if not password:
        return ConfigurationError(f"{where}: the {what} is empty")
    if username is None and not user_given:
        return ConfigurationError(f"{where}: USER is empty and the {what} has no {username_key!r} key")
    return Credential(password=password, username=username)
