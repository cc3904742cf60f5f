"""The release files agree with each other: one version, one licence."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

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


def test_the_library_doors_are_reached_from_the_package_and_imported_only_when_used() -> None:
    """The README writes ``rnnshap.neuralforecast.explain(nf)`` after ``import rnnshap``: each door into another
    library is an attribute of the package, imported (with its library) on first use, never by ``import rnnshap``."""
    import subprocess
    import sys

    doors = ["aeon", "captum", "darts", "foundation", "neuralforecast", "pytorch_forecasting", "ray", "sktime"]
    script = (
        "import sys, rnnshap\n"
        f"doors = {doors!r}\n"
        "assert not [d for d in doors if f'rnnshap.{d}' in sys.modules], sys.modules.keys()\n"
        "assert 'darts' not in sys.modules and 'aeon' not in sys.modules\n"
        "assert rnnshap.foundation.explain is sys.modules['rnnshap.foundation'].explain\n"
        "assert callable(rnnshap.neuralforecast.explain)\n"
        "try:\n    rnnshap.no_such_door\nexcept AttributeError as error:\n    assert 'no_such_door' in str(error)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_each_door_extra_installs_what_its_readme_line_needs() -> None:
    """``pip install -e '.[darts]'`` alone must run darts' torch models (BlockRNNModel needs darts' torch extra:
    pytorch-lightning), ``'.[aeon]'`` alone aeon's deep learners (Keras models on TensorFlow); the test environment
    hid both, the zoo extra bringing them."""
    from packaging.requirements import Requirement

    extras = _pyproject()["project"]["optional-dependencies"]

    def named(extra: str) -> dict[str, Requirement]:
        return {Requirement(r).name: Requirement(r) for r in extras[extra]}

    assert "torch" in named("darts")["darts"].extras
    assert {"tensorflow-cpu", "keras"} <= named("aeon").keys()
    assert named("aeon")["tensorflow-cpu"].specifier == named("tf")["tensorflow-cpu"].specifier
    # the foundation extra installs beside transformers 5: granite-tsfm (whose release for torch 2.13 pins transformers
    # 4.56) is an extra of its own, foundation-ttm
    assert "granite-tsfm" not in named("foundation") and "granite-tsfm" in named("foundation-ttm")
    assert named("foundation")["transformers"].specifier.contains("5.0.0")
