"""The code in the docs runs as written: each page's python blocks, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


# large_datasets.md starts Ray
@pytest.mark.parametrize(
    "page",
    [
        pytest.param("large_datasets.md", marks=pytest.mark.cluster),
        "tutorial.md", "shapley.md", "metrics.md", "jax.md", "../README.md",
    ],  # fmt: skip
)
def test_the_examples_of_the_page_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files
    blocks = python_blocks(DOCS / page)
    if page == "../README.md":
        blocks = blocks[:2]  # the quickstarts; the later sketches use the reader's own model
        if "keras" in blocks[1]:
            pytest.importorskip("tensorflow")
    if page == "jax.md":
        pytest.importorskip("flax")
    if page == "metrics.md":
        pytest.importorskip("quantus")
    assert blocks, f"{page} has no python examples"
    if any("import ray" in block for block in blocks):
        pytest.importorskip("ray.data")
        import ray

        if ray.is_initialized():
            ray.shutdown()
    namespace: dict[str, object] = {"__name__": f"docs_{Path(page).stem}"}  # not importable: Ray pickles its functions by value
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{page}, example {number}", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            raise AssertionError(f"example {number} of docs/{page} fails: {error!r}\n{block}") from error



def _free_names(block: str) -> set[str]:
    """Names a block reads that it neither assigns, imports nor finds among the builtins."""
    import ast
    import builtins

    tree = ast.parse(block)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    read = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return read - bound


def test_the_sktime_example_of_the_classifiers_page_stands_alone() -> None:
    """A reader who uses sktime alone runs its example without aeon's before it: it loads its own data."""
    blocks = [block for block in python_blocks(DOCS / "classifiers.md") if "from sktime" in block]
    assert len(blocks) == 1
    assert not _free_names(blocks[0])
    assert _free_names("y = f(X)") == {"f", "X"}  # the check sees a name read from elsewhere


#: the distribution that installs each module docs/foundation.md's examples import
DISTRIBUTIONS = {
    "chronos": "chronos-forecasting", "momentfm": "momentfm", "statsmodels": "statsmodels", "timesfm": "timesfm",
    "timesfm3": "timesfm", "tirex": "tirex-ts", "transformers": "transformers", "tsfm_public": "granite-tsfm",
}  # fmt: skip


def test_the_foundation_extra_installs_what_the_foundation_page_imports() -> None:
    """Each library docs/foundation.md's examples import comes with the ``foundation`` extra, or the page says how to
    install it: another extra it names (TinyTimeMixer's granite-tsfm, whose transformers pin the foundation extra
    leaves out: ``rnnshap[foundation-ttm]``), or a ``pip install`` of its own (MOMENT's momentfm, whose pins no extra
    can hold)."""
    import ast
    import sys
    import tomllib

    page = (DOCS / "foundation.md").read_text()
    imported = set()
    for block in python_blocks(DOCS / "foundation.md"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"numpy", "torch", "rnnshap"}
    assert third_party <= DISTRIBUTIONS.keys(), third_party - DISTRIBUTIONS.keys()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def installs(extra: str) -> set[str]:
        return {re.split(r"[<>=!~\[ ]", requirement)[0] for requirement in extras[extra]}

    missing = {DISTRIBUTIONS[m] for m in third_party} - installs("foundation")
    named = {extra for extra in extras if f"rnnshap[{extra}]" in page}
    assert all(f"pip install {name}" in page or any(name in installs(e) for e in named) for name in missing), missing


def test_the_tsai_example_of_the_classifiers_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/classifiers.md's tsai block as written (its own additivity assert included), where tsai imports: tsai
    1.0.1 pins scikit-learn < 1.8 against the constraints' 1.9.1, so it is in no extra and installed by hand."""
    blocks = [block for block in python_blocks(DOCS / "classifiers.md") if "from tsai" in block]
    assert len(blocks) == 1, f"{len(blocks)} tsai examples on docs/classifiers.md"
    pytest.importorskip("tsai.models.InceptionTimePlus")
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(blocks[0], "classifiers.md, tsai example", "exec"), {"__name__": "docs_classifiers_tsai"})
    except Exception as error:  # pragma: no cover - the message is the point
        raise AssertionError(f"the tsai example of docs/classifiers.md fails: {error!r}\n{blocks[0]}") from error


ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[list[str]]:
    return [[line for line in block.splitlines() if line.strip()] for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def _recipe(makefile: str, target: str) -> list[str]:
    """The recipe lines of ``target`` in a Makefile (the tab-indented lines after its rule)."""
    lines = makefile.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_the_readme_makes_the_demo_and_runs_every_stage_ci_runs() -> None:
    """From a fresh clone, two commands on the README's first screen: ``make demo`` makes a virtual environment with
    the CPU build of torch installed first and runs the demo; ``make test`` runs ``.ci/run``, CI's own script, which
    makes a fresh virtual environment the same way and ends with the default stage."""
    readme = (ROOT / "README.md").read_text()
    first = _bash_blocks(readme)[0]
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    assert readme.index("make demo") < 1500  # on the first screen
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) \?= (.*)$", makefile, flags=re.M))
    assert variables["TORCH_INDEX"].endswith("/whl/cpu")  # the CPU build
    environment = _recipe(makefile, "$(VENV)/.installed-demo")
    assert "-m venv" in environment[0], environment  # a fresh virtual environment first
    torch_line = next(i for i, line in enumerate(environment) if "$(TORCH) --index-url $(TORCH_INDEX)" in line)
    package_line = next(i for i, line in enumerate(environment) if "-e '.[plot]' -c $(CONSTRAINTS)" in line)
    assert torch_line < package_line  # torch first, then rnnshap held to it by the constraints
    assert _recipe(makefile, "demo") == ["$(VENV)/bin/python -m rnnshap demo"]
    assert _recipe(makefile, "test") == ["bash .ci/run"]  # every stage CI runs, no more, no fewer
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert any(line.startswith("python3 -m venv") for line in ci[:3])
    pin = next(line for line in ci if "pip install" in line and "torch==" in line)
    assert variables["TORCH"] in pin  # the Makefile's torch is CI's
    assert ci[-1] == "python -m pytest -q -n 2"  # the default stage last


def test_the_readme_names_every_option_of_the_demo() -> None:
    from rnnshap import demo

    text = (ROOT / "README.md").read_text()
    options = re.findall(r"add_argument\(\s*\"(--[a-z-]+)\"", Path(demo.__file__).read_text())
    assert len(options) >= 8
    missing = [option for option in options if f"`{option}" not in text]
    assert not missing, f"the README's demo options miss {missing}"


def test_the_readme_interactions_line_runs_on_the_quickstart_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's shapley_interactions line, as written, on the quickstart's model: with the
    default budget it runs the rows its comment says."""
    pytest.importorskip("shapiq")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(DOCS / "../README.md")
    quickstart = next(block for block in blocks if "class Classifier" in block)
    line = next(line for block in blocks for line in block.splitlines() if "shapley_interactions(" in line)
    namespace: dict[str, object] = {"__name__": "docs_readme_interactions"}
    exec(compile(quickstart.split("from rnnshap import plots")[0], "README.md, quickstart", "exec"), namespace)
    exec(compile(line, "README.md, shapley_interactions", "exec"), namespace)
    result = namespace["interactions"]
    said = int(re.search(r"about ([\d,]+) model rows", "\n".join(blocks)).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert 0 < int(result.n_evals.max()) <= said + 200  # (v of the empty and full coalitions: 2 × 100 rows)
