"""The iamdb exception tree, mapped onto Django's.

``IamdbError`` is the root. Configuration mistakes are also
``django.core.exceptions.ImproperlyConfigured``; failures at connect time are
also ``django.db.utils.OperationalError``, so code that already handles
Django's errors keeps working. When iamdb translates another exception (an
SDK's, a driver's, a user's callable's), that exception is chained as
``__cause__``, without the stack frames beneath it (:func:`secret_free`): an
SDK's frames hold tokens in their local variables, and Django's debug page
prints every frame's locals. No message ever contains a secret.
"""

from __future__ import annotations

import contextlib

from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError


class IamdbError(Exception):
    """Root of every error raised by iamdb."""

    #: Whether trying again later may succeed (a network fault, a sealed Vault).
    retryable: bool = False


class ConfigurationError(IamdbError, ImproperlyConfigured):
    """The settings or a source's arguments are wrong; retrying cannot help."""


class CredentialError(IamdbError, OperationalError):
    """A credential could not be obtained when a connection was made."""

    retryable = True


class MissingDependencyError(ConfigurationError):
    """An optional SDK is not installed; the message names the extra to install."""


def describe(exc: BaseException) -> str:
    """A one-line description of ``exc``: its type and first line of message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def secret_free(exc: BaseException) -> BaseException:
    """``exc`` without the stack frames it was raised through, along its whole chain.

    The exception's type and message are kept (they name what failed); the
    frames are not: an SDK's or a driver's frames hold passwords and tokens
    in their local variables, and Django's technical 500 page shows them.
    Use as ``raise CredentialError(...) from secret_free(exc)``.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        if getattr(current, "_pgconn", None) is not None:
            # psycopg keeps the finished connection, whose repr shows its password.
            with contextlib.suppress(AttributeError):
                current._pgconn = None  # type: ignore[attr-defined]
        pending.extend((current.__cause__, current.__context__))
    return exc
