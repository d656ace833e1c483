"""Microsoft Entra ID tokens for Azure Database for PostgreSQL and MySQL flexible server."""

from __future__ import annotations

from typing import Any, ClassVar

from ..clock import Clock
from ..engine import RefreshPolicy
from ..errors import ConfigurationError, MissingDependencyError
from ..values import Target
from . import _args, _oauth

try:
    import azure.core.exceptions
    from azure.identity import DefaultAzureCredential
except ImportError as exc:  # pragma: no cover - exercised in a venv without azure-identity
    raise MissingDependencyError('AzureEntraToken needs azure-identity: pip install "iamdb[azure]"') from exc

__all__ = ["SCOPE", "AzureEntraToken"]

#: The scope of a token for Azure Database for PostgreSQL / MySQL (public cloud).
SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


class AzureEntraToken(_oauth.OAuthTokenSource):
    """A Microsoft Entra ID access token for Azure Database for PostgreSQL / MySQL.

    - ``credential``: an azure-identity credential (anything with ``get_token(scope)``):
      ``ManagedIdentityCredential(client_id=...)``, ``WorkloadIdentityCredential()``...
      By default a ``DefaultAzureCredential()``, made once per process, on first use.
    - ``scope``: the token's scope; another cloud's (Azure China, US Government) if needed.
    - ``allow_insecure_transport``: for local tests only (the token is a cleartext password).

    azure-identity hands back its cached token until 5 minutes before it ends: a refresh
    that returns the token already held is not an error, and the next one comes later
    (see :mod:`iamdb.sources._oauth`), so connections do not each cause a call.
    """

    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = (azure.core.exceptions.AzureError,)
    what: ClassVar[str] = "an Entra ID token"
    hint: ClassVar[str] = (
        " (check the identity DefaultAzureCredential finds: managed identity, workload identity, "
        "AZURE_CLIENT_ID/AZURE_TENANT_ID/..., `az login`; or pass credential=)"
    )

    def __init__(
        self,
        *,
        credential: Any = None,
        scope: str = SCOPE,
        allow_insecure_transport: bool = False,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        name = type(self).__name__
        self._set_given(
            credential,
            "an azure-identity credential (with get_token())",
            lambda c: callable(getattr(c, "get_token", None)),
            "credential",
        )
        if not isinstance(scope, str) or not scope or any(ch.isspace() for ch in scope):
            shown = repr(scope) if isinstance(scope, str) else type(scope).__name__
            raise ConfigurationError(
                f"{name}: scope must be a non-empty str without spaces (e.g. {SCOPE!r}), not {shown}"
            )
        self.scope = scope
        self.allow_insecure_transport = _args.check_bool(
            name, "allow_insecure_transport", allow_insecure_transport
        )
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        parts = []
        if self._given is not None:
            parts.append(f"credential={type(self._given).__name__}")
        if self.scope != SCOPE:
            parts.append(f"scope={self.scope!r}")
        return f"AzureEntraToken({', '.join(parts)})"

    def make_default(self) -> Any:
        return DefaultAzureCredential()

    def request_token(self, sdk: Any, target: Target) -> tuple[str, float | None]:
        access = sdk.get_token(self.scope)
        expires_on = getattr(access, "expires_on", None)
        return str(access.token or ""), None if expires_on is None else float(expires_on)
