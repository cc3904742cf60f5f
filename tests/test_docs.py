"""The code in the docs runs as written: each page's python blocks, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", ["large_datasets.md", "shapley.md", "../README.md"])
def test_the_examples_of_the_page_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files
    blocks = python_blocks(DOCS / page)
    if page == "../README.md":
        blocks = blocks[:2]  # the quickstarts; the later sketches use the reader's own model
        if "keras" in blocks[1]:
            pytest.importorskip("tensorflow")
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
