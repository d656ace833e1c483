"""VaultDatabaseCredentials without a Vault server: configuration, secrets kept
out of repr and pickles, and the missing-dependency message."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from django.core.exceptions import ImproperlyConfigured

from iamdb import ConfigurationError, CredentialError, Target
from iamdb.sources import VaultDatabaseCredentials
from iamdb.sources.vault import AppRoleAuth, KubernetesAuth, TokenAuth, _Lease, _Read, _refused, _Token

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


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"role": ""}, "role"),
        ({"role": "  "}, "role"),
        ({"role": 7}, "role"),
        ({"role": None}, "role"),
        ({"role": "/"}, "role"),
        ({"mount_point": ""}, "mount_point"),
        ({"mount_point": b"database"}, "mount_point"),
        ({"static": "yes"}, "static"),
        ({"static": 1}, "static"),
        ({"revoke_at_exit": "no"}, "revoke_at_exit"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": NAN}, "timeout"),
        ({"timeout": INF}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"auth": "token"}, "auth"),
        ({"client": "http://127.0.0.1:8200"}, "client"),
        ({"url": ""}, "url"),
        ({"url": "127.0.0.1:8200"}, "url"),
        ({"url": 8200}, "url"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": 3}, "namespace"),
        ({"verify": ""}, "verify"),
        ({"verify": 1}, "verify"),
        ({"refresh": {"advisory": 0.5}}, "refresh"),
        ({"clock": lambda: 0.0}, "clock"),
    ],
)
def test_every_bad_argument_names_class_argument_and_what_is_allowed(
    kwargs: dict[str, object], argument: str
) -> None:
    kwargs = {"role": "app", "url": "http://127.0.0.1:1", **kwargs}
    with pytest.raises(ConfigurationError) as info:
        VaultDatabaseCredentials(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("VaultDatabaseCredentials: ") and argument in message
    assert " must " in message  # says what is allowed


def test_vault_addr_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", "vault.example.test:8200")
    with pytest.raises(ConfigurationError, match="VaultDatabaseCredentials: VAULT_ADDR must be"):
        VaultDatabaseCredentials("app")


@pytest.mark.parametrize(
    ("make", "cls", "argument"),
    [
        (lambda: TokenAuth(""), "TokenAuth", "token"),
        (lambda: TokenAuth(123), "TokenAuth", "token"),
        (lambda: AppRoleAuth(""), "AppRoleAuth", "role_id"),
        (lambda: AppRoleAuth(None), "AppRoleAuth", "role_id"),
        (lambda: AppRoleAuth("role-id", ""), "AppRoleAuth", "secret_id"),
        (lambda: AppRoleAuth("role-id", 42), "AppRoleAuth", "secret_id"),
        (lambda: AppRoleAuth("role-id", "s", mount_point=""), "AppRoleAuth", "mount_point"),
        (lambda: KubernetesAuth(""), "KubernetesAuth", "role"),
        (lambda: KubernetesAuth("web", jwt_path=""), "KubernetesAuth", "jwt_path"),
        (lambda: KubernetesAuth("web", mount_point=None), "KubernetesAuth", "mount_point"),
    ],
)
def test_bad_auth_arguments(make: Callable[[], object], cls: str, argument: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    assert str(info.value).startswith(f"{cls}: {argument} must be a non-empty str")


def test_a_secret_argument_is_never_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        AppRoleAuth("role-id", "   ")
    assert "only whitespace" in str(info.value) and "'   '" not in str(info.value)


def test_internal_objects_hide_their_secrets() -> None:
    token = _Token("s.token-value-1", generation=3, ends=1000.0, renewable=True, ttl=60)
    lease = _Lease("database/creds/app/abc", "v-app-1", "lease-password-1", 60, True, 1060.0, token)
    read = _Read("v-app-1", "lease-password-1", "database/creds/app/abc", 60, True, 0)
    auth = AppRoleAuth("role-id", "secret-id-1")
    for obj in (token, lease, read, auth, TokenAuth("s.token-value-1")):
        text = repr(obj) + str(obj)
        assert "s.token-value-1" not in text and "lease-password-1" not in text and "secret-id-1" not in text
    assert "v-app-1" in repr(lease) and "generation=3" in repr(token)  # what is not secret stays visible


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
    assert copy._leases == {} and copy._lease is None


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


def vault_answer(status: int, message: str) -> BaseException:
    """The exception hvac raises for Vault's answer ``status`` with ``message``."""
    import hvac

    try:
        hvac.utils.raise_for_error("PUT", "/v1/auth/token/renew-self", status, errors=[message])
    except hvac.exceptions.VaultError as exc:
        return exc
    raise AssertionError("hvac raised nothing")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (403, "permission denied"),
        (401, "missing client token"),
        (400, "invalid lease ID"),
        (400, "lease is not renewable"),
        # OpenBao's answer to renewing a token in its last second: a 500, yet final.
        (500, "1 error occurred:\n\t* past the max TTL, cannot renew\n\n"),
    ],
)
def test_refusals_are_told_from_transient_errors(status: int, message: str) -> None:
    assert _refused(vault_answer(status, message))


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, "internal error"),
        (502, "bad gateway"),
        (503, "Vault is sealed"),
        (429, 'request path "auth/token/renew-self": rate limit quota exceeded'),
    ],
)
def test_transient_vault_answers_are_not_refusals(status: int, message: str) -> None:
    assert not _refused(vault_answer(status, message))


def test_transport_errors_are_not_refusals() -> None:
    import requests

    assert not _refused(requests.exceptions.ConnectionError("connection refused"))
    assert not _refused(requests.exceptions.ReadTimeout("read timed out"))
