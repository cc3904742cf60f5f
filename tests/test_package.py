"""The release files agree with each other: one version, one licence."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import tomllib

import rnnshap

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_has_one_source() -> None:
    version = _pyproject()["project"]["version"]
    assert rnnshap.__version__ == importlib.metadata.version("rnnshap") == version
    citation = re.search(r"^version:\s*(\S+)$", (ROOT / "CITATION.cff").read_text(), re.M)
    assert citation is not None and citation.group(1) == version
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text()


def test_licence_file_matches_the_declared_licence() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert importlib.metadata.metadata("rnnshap")["License-Expression"] == "MIT"
