"""How :class:`~iamdb.sources.vault.VaultDatabaseCredentials` gets its Vault token.

An auth method either hands over a token (:class:`TokenAuth`) or logs in and
gets a new one (:class:`AppRoleAuth`, :class:`KubernetesAuth`). Only the
latter can replace a token that expired, reached its maximum TTL or was
refused. None of them shows a secret in its ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigurationError

#: Where Kubernetes mounts a pod's service account token.
KUBERNETES_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def check_str(cls: str, name: str, value: object, allowed: str, *, secret: bool = False) -> None:
    """Raise ConfigurationError unless ``value`` is a non-empty str. The message names
    the class, the argument and what is allowed; a ``secret`` value is never shown."""
    if isinstance(value, str) and value.strip():
        return
    if isinstance(value, str):
        got = "an empty string" if not value else "only whitespace"
    else:
        got = type(value).__name__
    if not secret and isinstance(value, str):
        got = f"{got} ({value!r})" if value else got
    raise ConfigurationError(f"{cls}: {name} must be a non-empty str ({allowed}), not {got}")


class VaultAuth:
    """Base class of the auth methods."""

    #: Whether :meth:`login` can get a new token (when the current one ends).
    can_login: ClassVar[bool] = True

    def initial_token(self) -> str | None:
        """A token to start with, without logging in (None: log in first)."""
        return None

    def login(self, client: Any) -> Mapping[str, Any]:
        """Log in with ``client`` and return Vault's ``auth`` block
        (``client_token``, ``lease_duration``, ``renewable``)."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return self.describe()


class TokenAuth(VaultAuth):
    """A token given as is: ``token``, else ``VAULT_TOKEN``, else the Vault CLI's
    ``~/.vault-token``. It can be renewed while renewable, never replaced."""

    can_login: ClassVar[bool] = False

    def __init__(self, token: str | None = None) -> None:
        if token is not None:
            check_str("TokenAuth", "token", token, "a Vault token, or None to read VAULT_TOKEN", secret=True)
        self._token = token

    def initial_token(self) -> str | None:
        if self._token:
            return self._token
        env = os.environ.get("VAULT_TOKEN")
        if env:
            return env
        path = Path.home() / ".vault-token"
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    def login(self, client: Any) -> Mapping[str, Any]:  # pragma: no cover - guarded by can_login
        raise NotImplementedError("a token cannot log in")

    def describe(self) -> str:
        return "TokenAuth(given)" if self._token else "TokenAuth(env)"


class AppRoleAuth(VaultAuth):
    """AppRole: ``role_id`` and ``secret_id`` exchanged for a token at ``auth/<mount_point>/login``."""

    def __init__(self, role_id: str, secret_id: str | None = None, *, mount_point: str = "approle") -> None:
        check_str("AppRoleAuth", "role_id", role_id, "the AppRole's role id")
        if secret_id is not None:
            check_str(
                "AppRoleAuth",
                "secret_id",
                secret_id,
                "a secret id, or None for a role without one",
                secret=True,
            )
        check_str("AppRoleAuth", "mount_point", mount_point, "where the AppRole method is mounted")
        self.role_id = role_id
        self._secret_id = secret_id
        self.mount_point = mount_point.strip("/")

    def login(self, client: Any) -> Mapping[str, Any]:
        response = client.auth.approle.login(
            role_id=self.role_id, secret_id=self._secret_id, mount_point=self.mount_point, use_token=False
        )
        return dict(response["auth"])

    def describe(self) -> str:
        return f"AppRoleAuth(mount_point={self.mount_point!r})"


class KubernetesAuth(VaultAuth):
    """Kubernetes: the pod's service account JWT, read from ``jwt_path`` at each
    login (projected tokens rotate), exchanged at ``auth/<mount_point>/login``."""

    def __init__(
        self, role: str, *, jwt_path: str = KUBERNETES_JWT_PATH, mount_point: str = "kubernetes"
    ) -> None:
        check_str("KubernetesAuth", "role", role, "the Vault role bound to the service account")
        check_str("KubernetesAuth", "jwt_path", jwt_path, "the path of the service account token file")
        check_str("KubernetesAuth", "mount_point", mount_point, "where the Kubernetes method is mounted")
        self.role = role
        self.jwt_path = jwt_path
        self.mount_point = mount_point.strip("/")

    def login(self, client: Any) -> Mapping[str, Any]:
        jwt = Path(self.jwt_path).read_text().strip()
        response = client.auth.kubernetes.login(
            role=self.role, jwt=jwt, use_token=False, mount_point=self.mount_point
        )
        return dict(response["auth"])

    def describe(self) -> str:
        return f"KubernetesAuth(role={self.role!r}, mount_point={self.mount_point!r})"
