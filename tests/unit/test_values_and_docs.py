"""The values (Credential, SecretStr, Target), the error chain, and the docs' claims pinned to tests."""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path

import pytest

from iamdb import ConfigurationError, Credential, Target
from iamdb.errors import secret_free
from iamdb.values import SecretStr

ROOT = Path(__file__).resolve().parents[2]


def test_secret_str_hides_itself_in_containers() -> None:
    credential = Credential(password="hunter2-secret", username="app")
    assert isinstance(credential.password, SecretStr)
    assert credential.password == "hunter2-secret" and str(credential.password) == "hunter2-secret"
    params = {"user": "app", "password": credential.password}
    assert "hunter2" not in repr(params) and "hunter2" not in str(params)
    assert f"{credential.password}" == "hunter2-secret"  # what a driver or a CLI needs


def test_target_repr_shows_option_keys_only() -> None:
    target = Target.from_settings({"HOST": "db", "OPTIONS": {"sslpassword": "passphrase-123456"}})
    assert "passphrase-123456" not in repr(target)
    assert "sslpassword" in repr(target)


@pytest.mark.parametrize(
    ("host", "port", "endpoints"),
    [
        ("db", 5432, (("db", 5432),)),
        ("db", "5432", (("db", 5432),)),
        ("db", "", (("db", None),)),
        ("h1,h2", "5432", (("h1", 5432), ("h2", 5432))),
        ("h1,h2", "5432,5433", (("h1", 5432), ("h2", 5433))),
        ("h1, h2", None, (("h1", None), ("h2", None))),
    ],
)
def test_target_endpoints_from_settings(host: str, port: object, endpoints: tuple[object, ...]) -> None:
    target = Target.from_settings({"HOST": host, "PORT": port})
    assert target.endpoints == endpoints
    assert target.multi_host == (len(endpoints) > 1)


@pytest.mark.parametrize("port", ["x", "70000", "5432,5433,5434", -1, 1.5, ["5432"]])
def test_target_rejects_ports_that_are_not_port_numbers(port: object) -> None:
    with pytest.raises(ConfigurationError, match="database 'reports': PORT"):
        Target.from_settings({"HOST": "h1,h2", "PORT": port}, alias="reports")


def test_secret_free_drops_frames_along_the_chain() -> None:
    def leaky(token: str) -> None:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner

    try:
        leaky("a-token-in-a-frame-local")
    except ValueError as exc:
        error = secret_free(exc)
    assert error.__traceback__ is None and error.__cause__ is not None
    assert error.__cause__.__traceback__ is None
    text = "".join(traceback.format_exception(error))
    assert "outer" in text and "inner" in text and "a-token" not in text


# -- every test named in the docs exists ---------------------------------------------------------

_COMMENT = re.compile(r"<!--(.*?)-->", re.DOTALL)


def _test_names_in_docs() -> dict[str, list[str]]:
    named: dict[str, list[str]] = {}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for comment in _COMMENT.findall(page.read_text()):
            for name in re.findall(r"\btest_\w+", comment):
                named.setdefault(name, []).append(str(page.relative_to(ROOT)))
    return named


def test_docs_pin_their_claims_to_tests_that_exist() -> None:
    named = _test_names_in_docs()
    assert len(named) >= 40, "the docs pin their claims to tests in <!-- test_... --> comments"
    defined = set()
    for path in (ROOT / "tests").rglob("*.py"):
        defined |= set(re.findall(r"^\s*def (test_\w+)", path.read_text(), re.MULTILINE))
    missing = {name: pages for name, pages in named.items() if name not in defined}
    assert missing == {}


def test_pool_extra_requires_the_documented_psycopg_pool() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "psycopg-pool>=3.3" in project["optional-dependencies"]["postgresql"]
    assert "psycopg-pool 3.3 or newer" in (ROOT / "docs" / "backends.md").read_text()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"func": "not callable"}, "needs a callable"),
        ({"ttl": "60"}, "ttl must be a finite number"),
        ({"ttl": None}, "ttl must be a finite number"),
        ({"ttl": True}, "ttl must be a finite number"),
        ({"ttl": float("nan")}, "ttl must be a finite number"),
        ({"ttl": float("inf")}, "ttl must be a finite number"),
        ({"ttl": -1}, "ttl must be a finite number"),
        ({"refresh": {"advisory": 0.5}}, "refresh must be an iamdb.RefreshPolicy"),
        ({"clock": lambda: 0.0}, "clock must be an iamdb.clock.Clock"),
    ],
)
def test_callable_source_arguments_are_validated(kwargs: dict[str, object], match: str) -> None:
    from iamdb.sources import CallableSource

    func = kwargs.pop("func", lambda: "x")
    with pytest.raises(ConfigurationError, match=match) as info:
        CallableSource(func, **kwargs)  # type: ignore[arg-type]
    assert "CallableSource" in str(info.value)
