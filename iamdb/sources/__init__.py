"""Credential sources. The SDK-backed ones are imported on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .callable import CallableSource

if TYPE_CHECKING:
    from .azure import AzureEntraToken
    from .cloudsql import CloudSqlIamToken
    from .dsql import AuroraDsqlToken
    from .file import FileSecret
    from .rds import RdsIamToken
    from .secretsmanager import SecretsManagerSecret
    from .smagent import SecretsManagerAgentSecret
    from .vault import VaultDatabaseCredentials

_LAZY = {
    "AuroraDsqlToken": ".dsql",
    "AzureEntraToken": ".azure",
    "CloudSqlIamToken": ".cloudsql",
    "FileSecret": ".file",
    "RdsIamToken": ".rds",
    "SecretsManagerAgentSecret": ".smagent",
    "SecretsManagerSecret": ".secretsmanager",
    "VaultDatabaseCredentials": ".vault",
}

__all__ = [
    "AuroraDsqlToken",
    "AzureEntraToken",
    "CallableSource",
    "CloudSqlIamToken",
    "FileSecret",
    "RdsIamToken",
    "SecretsManagerAgentSecret",
    "SecretsManagerSecret",
    "VaultDatabaseCredentials",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
