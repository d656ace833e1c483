"""The package's metadata against what is tested, without building it (scripts/package builds).

The classifiers name exactly the Django series and Python versions of the test matrix in
scripts/bootstrap; the extras cover every SDK iamdb's errors tell users to install; the docs
site's nav lists every page in docs/.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trove_classifiers
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import iamdb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]  # type: ignore[no-any-return]


def matrix() -> list[tuple[str, str]]:
    """(Django series, Python version) of each entry of scripts/bootstrap's matrix."""
    text = (ROOT / "scripts" / "bootstrap").read_text()
    entries = re.findall(r'^\s*[\w-]+\)\s*django="Django>=([\d.]+),<[\d.]+";\s*pyver=([\d.]+)', text, re.M)
    assert len(entries) >= 3, f"the matrix in scripts/bootstrap was not understood: {entries}"
    return entries


def classifiers(prefix: str) -> set[str]:
    found = {c.removeprefix(prefix) for c in pyproject()["classifiers"] if c.startswith(prefix)}
    return {c for c in found if re.fullmatch(r"\d+\.\d+", c)}


def test_django_classifiers_are_exactly_the_tested_series() -> None:
    assert classifiers("Framework :: Django :: ") == {django for django, _ in matrix()}


def test_python_classifiers_are_exactly_the_tested_versions() -> None:
    assert classifiers("Programming Language :: Python :: ") == {python for _, python in matrix()}


def test_lower_bounds_are_the_oldest_tested() -> None:
    oldest_python = min((Version(python) for _, python in matrix()))
    oldest_django = min((Version(django) for django, _ in matrix()))
    assert pyproject()["requires-python"] == f">={oldest_python}"
    (django,) = [Requirement(r) for r in pyproject()["dependencies"] if Requirement(r).name == "Django"]
    assert django.specifier == SpecifierSet(f">={oldest_django}")


def test_every_classifier_is_known_to_pypi() -> None:
    meta = pyproject()
    unknown = [c for c in meta["classifiers"] if c not in trove_classifiers.classifiers]
    assert unknown == []
    for heading in ("Development Status :: ", "Intended Audience :: ", "Operating System :: "):
        assert any(c.startswith(heading) for c in meta["classifiers"]), heading
    # `license` is an SPDX expression: PEP 639 forbids a License classifier beside it.
    assert meta["license"] == "BSD-3-Clause"
    assert not [c for c in meta["classifiers"] if c.startswith("License ::")]


def test_extras_cover_every_sdk_iamdb_asks_for() -> None:
    extras = pyproject()["optional-dependencies"]
    runtime = {"mysql", "postgresql", "aws", "vault", "gcp", "azure", "otel"}
    assert runtime <= extras.keys()
    (everything,) = [Requirement(r) for r in extras["all"]]
    assert everything.name == "iamdb" and everything.extras == runtime
    # Every `pip install "iamdb[...]"` in iamdb's messages (errors and checks' hints) names an extra.
    named = set()
    for path in (ROOT / "iamdb").rglob("*.py"):
        for group in re.findall(r"iamdb\[([a-z,]+)\]", path.read_text()):
            named.update(group.split(","))
    assert named, "no iamdb[...] install hint was found in iamdb/"
    assert named <= extras.keys(), named - extras.keys()
    drivers = {Requirement(r).name.lower() for extra in runtime for r in extras[extra]}
    assert {
        "mysqlclient",
        "psycopg",
        "psycopg-pool",
        "boto3",
        "hvac",
        "google-auth",
        "azure-identity",
        "opentelemetry-api",
    } <= drivers


def test_the_version_is_pep440_and_read_by_setuptools() -> None:
    version = Version(iamdb.__version__)
    assert str(version) == iamdb.__version__  # normalised, as PyPI shows it
    assert not version.is_postrelease and version.local is None
    assert "version" in pyproject()["dynamic"]


@pytest.mark.parametrize("name", ["py.typed", "apps.py", "management/commands/iamdb.py"])
def test_files_the_wheel_must_hold_exist(name: str) -> None:
    # scripts/package checks the built wheel holds them; this catches a rename early.
    assert (ROOT / "iamdb" / name).is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["iamdb"]


def nav_pages(nav: list[Any]) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_the_docs_site_lists_every_page_once() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    on_disk = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(pages) == on_disk
    assert len(pages) == len(set(pages))
    assert config["strict"] is True
