"""iamdb: Django database backends for short-lived and rotating credentials."""

from __future__ import annotations

from .credentials import CredentialSource
from .dburl import parse_database_url
from .engine import RefreshPolicy
from .errors import ConfigurationError, CredentialError, IamdbError, MissingDependencyError
from .values import Credential, Target

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
    "parse_database_url",
]
