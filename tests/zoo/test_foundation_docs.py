"""docs/foundation.md runs as written: its python blocks, in order, in one namespace (every library it uses)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "foundation.md"


def test_the_examples_of_the_foundation_page_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for library in ("statsmodels", "chronos", "tirex", "timesfm", "tsfm_public", "momentfm", "matplotlib"):
        pytest.importorskip(library)
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 7
    namespace: dict[str, object] = {"__name__": "docs_foundation"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"foundation.md, example {number}", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            raise AssertionError(f"example {number} of docs/foundation.md fails: {error!r}\n{block}") from error
