"""docs/recipes.md runs as written: each library's python blocks, in order, in one namespace, where
the library is installed. rnnshap's own additivity check runs in every ``shap_values`` call."""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"

#: section heading -> the module the section needs
LIBRARIES = {
    "neuralforecast": "neuralforecast",
    "pytorch-forecasting": "pytorch_forecasting",
    "darts": "darts",
    "ncps": "ncps",
    "xlstm": "xlstm",
    "mambapy": "mambapy",
    "mingru-pytorch": "minGRU_pytorch",
    "sb3-contrib": "sb3_contrib",
    "torch_geometric": "torch_geometric",
    "transformers": "transformers",
}


def sections() -> dict[str, list[str]]:
    parts = re.split(r"^## (.+)$", PAGE.read_text(), flags=re.M)
    return {
        title.strip(): re.findall(r"```python\n(.*?)```", body, flags=re.S) for title,
        body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_every_library_has_a_recipe() -> None:
    found = {title: blocks for title, blocks in sections().items() if blocks}
    assert set(found) == set(LIBRARIES)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_the_recipe_runs(library: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec(LIBRARIES[library]) is None:
        pytest.skip(f"{library} is not installed")
    monkeypatch.chdir(tmp_path)  # darts and Lightning may write logs
    namespace: dict[str, object] = {"__name__": f"recipe_{library}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number, block in enumerate(sections()[library], 1):
            try:
                exec(compile(block, f"recipes.md, {library}, example {number}", "exec"), namespace)
            except Exception as error:  # pragma: no cover - the message is the point
                raise AssertionError(f"example {number} of the {library} recipe fails: {error!r}\n{block}") from error
