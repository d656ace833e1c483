"""iamdb: Django database backends for short-lived and rotating credentials."""

from __future__ import annotations

from .credentials import Credential, CredentialSource, Target
from .engine import RefreshPolicy
from .errors import ConfigurationError, CredentialError, IamdbError, MissingDependencyError

__version__ = "0.1.0.dev0"

__all__ = [
    "ConfigurationError",
    "Credential",
    "CredentialError",
    "CredentialSource",
    "IamdbError",
    "MissingDependencyError",
    "RefreshPolicy",
    "Target",
    "__version__",
]
