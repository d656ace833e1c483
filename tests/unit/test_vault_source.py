"""VaultDatabaseCredentials without a Vault server: configuration, secrets kept
out of repr and pickles, and the missing-dependency message."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest
from django.core.exceptions import ImproperlyConfigured

from iamdb import CredentialError, Target
from iamdb.sources import VaultDatabaseCredentials
from iamdb.sources.vault import AppRoleAuth, KubernetesAuth, TokenAuth

TOKEN = "s.unit-test-token-value"


def test_importing_without_hvac_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["hvac"] = None  # as if hvac were not installed
        from django.conf import settings
        settings.configure()
        from iamdb import MissingDependencyError
        try:
            from iamdb.sources import VaultDatabaseCredentials
        except MissingDependencyError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "iamdb[vault]"' in result.stdout


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": ""}, "needs a role name"),
        ({"role": "app", "mount_point": ""}, "mount_point"),
        ({"role": "app", "timeout": 0}, "timeout"),
        ({"role": "app", "auth": "token"}, "auth must be"),
    ],
)
def test_bad_arguments_are_improperly_configured(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        VaultDatabaseCredentials(**kwargs)  # type: ignore[arg-type]


def test_client_and_url_together_are_refused() -> None:
    import hvac

    with pytest.raises(ImproperlyConfigured, match="either client or url"):
        VaultDatabaseCredentials("app", client=hvac.Client(url="http://127.0.0.1:1"), url="http://x")


def test_address_and_namespace_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example.test:8200")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    monkeypatch.setenv("VAULT_CACERT", "/etc/ssl/vault-ca.pem")
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    source = VaultDatabaseCredentials("app", mount_point="/db/")
    assert source.url == "https://vault.example.test:8200"
    assert source.namespace == "team-a" and source.verify == "/etc/ssl/vault-ca.pem"
    assert source.path == "db/creds/app"
    assert VaultDatabaseCredentials("app", static=True).path == "database/static-creds/app"
    monkeypatch.setenv("VAULT_SKIP_VERIFY", "true")
    assert VaultDatabaseCredentials("app").verify is False


def test_no_secret_in_repr_or_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    sources = [
        VaultDatabaseCredentials("app", url="http://127.0.0.1:1"),
        VaultDatabaseCredentials("app", url="http://127.0.0.1:1", auth=AppRoleAuth("role-id", "secret-id-1")),
        VaultDatabaseCredentials("app", url="http://127.0.0.1:1", auth=TokenAuth(TOKEN)),
    ]
    for source in sources:
        text = repr(source) + str(source) + repr(source.auth)
        assert TOKEN not in text and "secret-id-1" not in text
        assert "'app'" in text and "http://127.0.0.1:1" in text
    # A token read from the environment is never pickled (a spawned worker reads it again).
    assert TOKEN.encode() not in pickle.dumps(sources[0])
    copy = pickle.loads(pickle.dumps(sources[1]))
    assert copy.role == "app" and copy._client is None and copy._token is None and copy.stats.logins == 0


def test_kubernetes_jwt_file_missing_is_a_clear_error(tmp_path: object) -> None:
    source = VaultDatabaseCredentials(
        "app", url="http://127.0.0.1:1", auth=KubernetesAuth("web", jwt_path="/nonexistent/iamdb/token")
    )
    with pytest.raises(CredentialError) as info:
        source.get_credentials(Target(alias="shop"))
    message = str(info.value)
    assert "'shop'" in message and "KubernetesAuth(role='web'" in message and "FileNotFoundError" in message


def test_missing_token_is_improperly_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token
    source = VaultDatabaseCredentials("app", url="http://127.0.0.1:1")
    with pytest.raises(ImproperlyConfigured, match="no Vault token"):
        source.get_credentials(Target(alias="shop"))
