"""shap's and Captum's own DeepLIFT test suites, run against rnnshap.

rnnshap promises that code written for ``shap.DeepExplainer`` or for Captum's ``DeepLift`` /
``DeepLiftShap`` moves by changing one import. This script checks that promise with the peers' own
tests, at pinned versions, without copying their code into this repository:

- shap: ``tests/explainers/test_deep.py`` (and shap's ``tests/conftest.py``, for its fixtures) of
  shap 0.51.0, with ``shap.DeepExplainer`` replaced by ``rnnshap.DeepExplainer``;
- Captum: ``tests/attr/test_deeplift_basic.py`` and ``test_deeplift_classification.py`` of the
  pinned commit, with ``DeepLift`` and ``DeepLiftShap`` replaced by ``rnnshap.captum``'s. Their
  helpers (``captum.testing``) come from the installed captum.

The test files come from, in this order: a local checkout or git directory given with
``--shap-source`` / ``--captum-source`` (a bare mirror is read with ``git show <commit>:<path>``);
GitHub at the pinned commits; for shap, the PyPI sdist of the pinned version (``pip download``),
which ships its tests. Captum's sdist does not ship its tests: without GitHub, give a checkout.

The swap is a pytest plugin written next to the fetched files (see ``PLUGIN``); it also puts
synthetic data of the same shape where shap's tests download a data set
(``sklearn.datasets.fetch_california_housing``). Each suite runs in its own pytest process; the
script prints every test's outcome and the counts, and exits non-zero if a test fails other than
the one expected failure: Captum's ``test_reusable_modules`` expects an error for a model that
reuses a module, which rnnshap explains correctly instead (docs/captum.md).

    python benchmarks/conformance.py                      # GitHub, else the PyPI sdist (shap)
    python benchmarks/conformance.py --shap-source ~/src/shap --captum-source ~/src/captum
    python benchmarks/conformance.py --only shap --keras-backend torch
    python benchmarks/conformance.py --only shap -- -x   # arguments after -- go to pytest
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import urllib.request
import xml.etree.ElementTree as ElementTree
from pathlib import Path

SHAP_VERSION = "0.51.0"
#: the commit of shap's tag v0.51.0
SHAP_COMMIT = "03a6cd101aee0c706cad1568419bfa9d3c4f494c"
SHAP_FILES = ["tests/conftest.py", "tests/explainers/test_deep.py"]
#: captum's main branch when captum 0.9.0 was current (2025-10-02)
CAPTUM_COMMIT = "faac08773131888714b15709b28494ebeea7f6eb"
CAPTUM_FILES = ["tests/attr/test_deeplift_basic.py", "tests/attr/test_deeplift_classification.py"]
REPOSITORIES = {"shap": ("shap/shap", SHAP_COMMIT, SHAP_FILES), "captum": ("pytorch/captum", CAPTUM_COMMIT, CAPTUM_FILES)}
#: failures that are expected, with the reason
EXPECTED_FAILURES = {
    "test_reusable_modules": "Captum raises for a model that reuses a module; rnnshap explains it correctly",
}

PLUGIN = textwrap.dedent(
    '''
    """Swaps rnnshap in for shap's DeepExplainer and Captum's DeepLift / DeepLiftShap (written by
    rnnshap's benchmarks/conformance.py)."""
    import numpy as np

    import rnnshap
    import rnnshap.captum


    def _california_housing(*args, return_X_y=False, **kwargs):
        """Synthetic data shaped like sklearn's California housing (the tests download it)."""
        rs = np.random.RandomState(0)
        X = rs.normal(size=(20640, 8))
        y = X @ rs.normal(size=8) + 0.1 * rs.normal(size=20640)
        if return_X_y:
            return X, y
        raise NotImplementedError("the conformance run supplies (X, y) only")


    try:
        import sklearn.datasets

        sklearn.datasets.fetch_california_housing = _california_housing
    except ImportError:
        pass
    try:
        import shap

        shap.DeepExplainer = rnnshap.DeepExplainer
    except ImportError:
        pass
    try:
        import captum.attr
        import captum.attr._core.deep_lift as deep_lift

        deep_lift.DeepLift = captum.attr.DeepLift = rnnshap.captum.DeepLift
        deep_lift.DeepLiftShap = captum.attr.DeepLiftShap = rnnshap.captum.DeepLiftShap
    except ImportError:
        pass
    '''
)


def _from_source(source: Path, commit: str, path: str) -> bytes:
    """A file of a checkout (``source/path``) or of a git directory at ``commit``."""
    if (source / path).is_file():
        return (source / path).read_bytes()
    done = subprocess.run(["git", f"--git-dir={source}", "show", f"{commit}:{path}"], capture_output=True, check=False)
    if done.returncode != 0:
        done = subprocess.run(["git", "-C", str(source), "show", f"{commit}:{path}"], capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path} is neither in {source} nor in its git history at {commit}: {done.stderr.decode()[-300:]}")
    return done.stdout


def _from_github(repository: str, commit: str, path: str) -> bytes:
    url = f"https://raw.githubusercontent.com/{repository}/{commit}/{path}"
    with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 (a fixed https address)
        return bytes(response.read())


def _from_sdist(name: str, version: str, paths: list[str], scratch: Path) -> dict[str, bytes]:
    """The files of the PyPI sdist of ``name==version``, fetched with pip (no build, no dependencies)."""
    command = [
        sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps", "--no-binary", name, "-d", str(scratch), "-q"
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    archives = sorted(scratch.glob(f"{name}-{version}.tar.gz"))
    if not archives:
        raise SystemExit(f"pip download of the {name} {version} sdist failed: {done.stderr[-500:]}")
    files = {}
    with tarfile.open(archives[0]) as archive:
        for path in paths:
            member = archive.extractfile(f"{name}-{version}/{path}")
            if member is None:
                raise SystemExit(f"the {name} {version} sdist has no {path}")
            files[path] = member.read()
    return files


def fetch(suite: str, source: Path | None, scratch: Path) -> tuple[dict[str, bytes], str]:
    """The suite's test files and where they came from."""
    repository, commit, paths = REPOSITORIES[suite]
    if source is not None:
        return {path: _from_source(source, commit, path) for path in paths}, f"{source} @ {commit[:10]}"
    try:
        return {path: _from_github(repository, commit, path) for path in paths}, f"github.com/{repository} @ {commit[:10]}"
    except OSError as error:
        reason = f"GitHub unreachable ({error})"
    if suite == "shap":
        return _from_sdist("shap", SHAP_VERSION, paths, scratch), f"PyPI sdist shap {SHAP_VERSION} ({reason})"
    raise SystemExit(f"{reason}, and Captum's sdist ships no tests: give a checkout with --captum-source")


def run(
    suite: str, files: dict[str, bytes], root: Path, pytest_args: list[str], seed: int, keras_backend: str | None
) -> list[tuple[str, str, str]]:
    """Run the suite under the plugin; (test, outcome, message) per test."""
    where = root / suite
    for path, content in files.items():
        target = where / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    (root / "rnnshap_conformance.py").write_text(PLUGIN)
    report = root / f"{suite}.xml"
    repository = Path(__file__).resolve().parents[1]
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(repository), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "3"
    }
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    command = [
        sys.executable, "-m", "pytest", "-p", "rnnshap_conformance", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
        "--rootdir", str(where)
    ]
    if suite == "shap":
        command += ["--random-seed", str(seed)]
    command += [str(where / path) for path in files if Path(path).name.startswith("test_")] + pytest_args
    subprocess.run(command, cwd=where, env=env, check=False)
    outcomes = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.get("name", "?")
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (found.get("message") or "").splitlines()[0][:140] if found.get("message") else ""
                break
        outcomes.append((name, outcome, message))
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shap-source", type=Path, help="a shap checkout or git directory (default: GitHub, else the PyPI sdist)"
    )
    parser.add_argument("--captum-source", type=Path, help="a captum checkout or git directory (default: GitHub)")
    parser.add_argument("--only", choices=sorted(REPOSITORIES), help="run one suite")
    parser.add_argument("--seed", type=int, default=0, help="shap's --random-seed (default 0)")
    parser.add_argument(
        "--keras-backend", choices=["tensorflow", "torch"], help="run shap's Keras tests on this backend (KERAS_BACKEND)"
    )
    parser.add_argument("--keep", type=Path, help="fetch and run in this directory and keep it (default: a temporary one)")
    parser.add_argument("pytest_args", nargs="*", help="after --: more arguments for pytest")
    args = parser.parse_args()
    unexpected = 0
    with tempfile.TemporaryDirectory(prefix="rnnshap-conformance-") as temporary:
        root = args.keep or Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        for suite in [args.only] if args.only else ["shap", "captum"]:
            files, origin = fetch(suite, getattr(args, f"{suite}_source"), root)
            outcomes = run(suite, files, root, args.pytest_args, args.seed, args.keras_backend)
            counts = {
                kind: sum(1 for _, outcome, _ in outcomes if outcome == kind) for kind in ("passed", "failed", "error", "skipped")
            }
            backend = f", Keras backend {args.keras_backend}" if args.keras_backend and suite == "shap" else ""
            print(f"\n== {suite}: {origin}{backend}")
            for name, outcome, message in outcomes:
                expected = outcome in ("failed", "error") and name in EXPECTED_FAILURES
                unexpected += outcome in ("failed", "error") and not expected
                note = f" (expected: {EXPECTED_FAILURES[name]})" if expected else (
                    f"  {message}" if message and outcome != "passed" else ""
                )
                print(f"   {outcome:8} {name}{note}")
            print(
                f"== {suite}: {counts['passed']} passed, {counts['failed'] + counts['error']} failed, {counts['skipped']} skipped"
            )
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
