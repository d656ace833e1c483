"""The iamdb exception tree, mapped onto Django's.

``IamdbError`` is the root. Configuration mistakes are also
``django.core.exceptions.ImproperlyConfigured``; failures at connect time are
also ``django.db.utils.OperationalError``, so code that already handles
Django's errors keeps working. The original exception is always chained as
``__cause__``. No message ever contains a secret.
"""

from __future__ import annotations

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
