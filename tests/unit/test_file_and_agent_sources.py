"""FileSecret and SecretsManagerAgentSecret without a database: the change check, the race
with a Kubernetes symlink swap, parsing, argument checks, refreshNow after a refusal."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from iamdb import ConfigurationError, CredentialError, Target
from iamdb.sources import FileSecret, SecretsManagerAgentSecret
from iamdb.sources import file as file_module
from tests.fakeclock import FakeClock

USER = Target(alias="default", user="app")


def kubernetes_volume(root: Path, password: str) -> Path:
    """A secret volume as the kubelet lays it out: name -> ..data/name, ..data -> ..<timestamp>."""
    root.mkdir()
    (root / "..2026_01_01_00_00_00.1").mkdir()
    (root / "..2026_01_01_00_00_00.1" / "password").write_text(password)
    os.symlink("..2026_01_01_00_00_00.1", root / "..data")
    os.symlink("..data/password", root / "password")
    return root / "password"


def swap(root: Path, password: str, name: str) -> None:
    """The kubelet's update: a new directory, ..data renamed over, the old directory removed."""
    old = os.readlink(root / "..data")
    (root / name).mkdir()
    (root / name / "password").write_text(password)
    os.symlink(name, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")
    shutil.rmtree(root / old)


def test_a_stat_per_connection_not_a_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "password"
    path.write_text("pw-first-1234\n")
    source = FileSecret(path)
    opened: list[str] = []
    real_open = open

    def counting_open(name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    for _ in range(50):
        assert source.get_password(USER) == "pw-first-1234"
    assert opened == [str(path)]
    os.replace(_written(tmp_path / "next", "pw-second-5678\n"), path)  # an atomic replace
    assert source.get_password(USER) == "pw-second-5678"
    assert len(opened) == 2
    assert source.phase(USER) == "fresh"


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_race_with_a_symlink_swap_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path is resolved into the old directory; the kubelet swaps ..data and removes
    that directory before the file is opened. The read resolves the link again."""
    root = tmp_path / "volume"
    path = kubernetes_volume(root, "pw-old-1234")
    clock = FakeClock()
    source = FileSecret(path, clock=clock)
    real_realpath = os.path.realpath
    swaps = iter(["..2026_01_01_00_01_00.2"])

    def resolve_then_swap(name: Any, *args: Any, **kwargs: Any) -> str:
        resolved: str = real_realpath(name, *args, **kwargs)
        for directory in swaps:  # once: between resolving and opening
            swap(root, "pw-new-5678", directory)
        return resolved

    monkeypatch.setattr(os.path, "realpath", resolve_then_swap)
    assert source.get_password(USER) == "pw-new-5678"
    assert clock.slept == [0.002]  # one short wait on the source's clock, then the new file

    # Control: without the retry, the same race is a "does not exist" error.
    monkeypatch.setattr(file_module, "READ_ATTEMPTS", 1)
    swaps = iter(["..2026_01_01_00_02_00.3"])
    other = FileSecret(path, clock=clock)
    with pytest.raises(CredentialError, match="does not exist"):
        other.get_password(USER)


def test_a_missing_file_is_not_retried(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(CredentialError, match="does not exist"):
        FileSecret(tmp_path / "nothing", clock=clock).get_password(USER)
    assert clock.slept == []


@pytest.mark.parametrize(
    ("content", "format", "password", "username"),
    [
        ("pw-text-1234\n", "auto", "pw-text-1234", None),
        ("pw-text-1234\r\n", "text", "pw-text-1234", None),
        ("pw-text-1234", "text", "pw-text-1234", None),
        (" pw with spaces \n", "auto", " pw with spaces ", None),
        ('{"username": "u1", "password": "pw-json-1234"}\n', "auto", "pw-json-1234", "u1"),
        ('{"password": "pw-json-1234"}', "json", "pw-json-1234", None),
        (
            '{"username": "u1", "password": "pw-json-1234"}',
            "text",
            '{"username": "u1", "password": "pw-json-1234"}',
            None,
        ),
        ('"a JSON string"', "auto", '"a JSON string"', None),
    ],
)
def test_formats(tmp_path: Path, content: str, format: str, password: str, username: str | None) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    credential = FileSecret(path, format=format).get_credentials(USER)
    assert credential.password == password and credential.username == username


def test_custom_keys(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(json.dumps({"login": "u2", "secret": "pw-custom-1234", "password": "not this"}))
    credential = FileSecret(path, username_key="login", password_key="secret").get_credentials(USER)
    assert (credential.username, credential.password) == ("u2", "pw-custom-1234")


def test_a_refusal_reads_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("pw-first-1234")
    clock = FakeClock()
    source = FileSecret(path, clock=clock)
    assert source.get_password(USER) == "pw-first-1234"
    clock.advance(1)
    source.invalidate(USER, password="pw-first-1234")
    assert source.get_password(USER) == "pw-first-1234"
    assert source._cache.fetches == 2


def test_a_file_that_appears_is_read_at_once(tmp_path: Path) -> None:
    """After a failed read the engine backs off; a change of the file ends that at once."""
    path = tmp_path / "password"
    clock = FakeClock()
    source = FileSecret(path, clock=clock)
    for _ in range(3):
        with pytest.raises(CredentialError):
            source.get_password(USER)
    assert source._cache.fetches == 1  # backing off: no read per connection either
    path.write_text("pw-late-1234")
    assert source.get_password(USER) == "pw-late-1234"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"path": ""}, "FileSecret: path must be a non-empty str or path-like, not ''"),
        ({"path": 3}, "FileSecret: path must be a non-empty str or path-like, not 3"),
        ({"path": "/x", "format": "yaml"}, "FileSecret: format must be 'auto', 'text' or 'json', not 'yaml'"),
        (
            {"path": "/x", "password_key": ""},
            "FileSecret: password_key must be a non-empty str without spaces",
        ),
        (
            {"path": "/x", "username_key": "a b"},
            "FileSecret: username_key must be a non-empty str without spaces",
        ),
    ],
)
def test_bad_file_arguments(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        FileSecret(**kwargs)
    assert str(info.value).startswith(expected)


def test_describe_names_the_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert repr(FileSecret("db/password")) == f"FileSecret({str(tmp_path / 'db' / 'password')!r})"
    assert repr(FileSecret("/run/pw", format="json")) == "FileSecret('/run/pw', format='json')"


# -- SecretsManagerAgentSecret ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"secret_id": ""}, "secret_id must be a non-empty str without spaces"),
        ({"secret_id": "s", "endpoint": "localhost:2773"}, "endpoint must be an http(s) URL"),
        ({"secret_id": "s", "endpoint": "http://localhost:2773/?x=1"}, "endpoint must be an http(s) URL"),
        ({"secret_id": "s", "ttl": 0}, "ttl must be a finite number of seconds > 0, not 0"),
        ({"secret_id": "s", "ttl": float("nan")}, "ttl must be a finite number of seconds > 0, not nan"),
    ],
)
def test_bad_agent_arguments(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SecretsManagerAgentSecret(**kwargs)
    assert str(info.value).startswith("SecretsManagerAgentSecret: " + expected)


def test_agent_urls_and_describe() -> None:
    source = SecretsManagerAgentSecret(
        "arn:aws:secretsmanager:eu-west-1:1:secret:prod/db-AbC", endpoint="http://h:1/"
    )
    assert (
        source.url()
        == "http://h:1/secretsmanager/get?secretId=arn%3Aaws%3Asecretsmanager%3Aeu-west-1%3A1%3Asecret%3Aprod%2Fdb-AbC"
    )
    assert source.url(refresh_now=True).endswith("&refreshNow=true")
    assert repr(source) == (
        "SecretsManagerAgentSecret('arn:aws:secretsmanager:eu-west-1:1:secret:prod/db-AbC', endpoint='http://h:1')"
    )


def test_only_a_refusal_of_the_current_password_asks_for_refresh_now() -> None:
    source = SecretsManagerAgentSecret("s")
    source.invalidate(USER)  # not a refusal (no password): the agent's cache is fine
    assert source._refresh_now is False
    source.invalidate(USER, password="pw-refused-1234")  # nothing cached: a refusal of the current one
    assert source._refresh_now is True


def test_neither_source_needs_an_sdk() -> None:
    """No extra: both import and work with boto3 and hvac absent."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('boto3', 'botocore', 'hvac', 'google', 'azure'): sys.modules[name] = None\n"
        "from iamdb.sources import FileSecret, SecretsManagerAgentSecret\n"
        "FileSecret('/x'); SecretsManagerAgentSecret('s')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_the_engine_discards_only_the_credential_it_is_told() -> None:
    """CredentialCache.discard: what FileSecret calls when the file changed. Threads that
    saw the same change discard one credential, not the one another thread just read."""
    from iamdb import Credential
    from iamdb.engine import CredentialCache

    clock = FakeClock()
    cache = CredentialCache(clock=clock)
    first = Credential(password="pw-first-1234")
    second = Credential(password="pw-first-1234", username="same-password-new-user")
    fetched = iter([first, second])
    assert cache.get(None, lambda: next(fetched)) is first
    cache.discard(None, Credential(password="pw-first-1234"))  # equal, but not the cached object
    assert cache.peek(None) is first
    cache.discard(None, first)
    assert cache.peek(None) is None and cache.phase(None).value == "empty"
    assert cache.get(None, lambda: next(fetched)) is second
    assert clock.slept == []  # not a refusal: no refetch spacing
    cache.discard(None, first)  # a late thread: the new credential stays
    assert cache.peek(None) is second
