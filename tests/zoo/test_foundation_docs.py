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


def test_the_readmes_foundation_lines_run_as_printed() -> None:
    """README.md's foundation block, as printed, on a tiny Chronos-Bolt that forecasts 12 steps: it hands chronos a
    tensor (predict_quantiles asserts one), and its check holds to float32 rounding, not ``==``."""
    pytest.importorskip("chronos")
    import numpy as np

    from . import foundation_models

    readme = (PAGE.parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "rnnshap.foundation.explain" in b)
    series = np.random.default_rng(0).standard_normal(200).cumsum() + 40.0
    namespace: dict[str, object] = {
        "pipeline": foundation_models.bolt(prediction_length=12),
        "context": np.stack([series[150:182], series[160:192]]),  # (n, L) numpy, as explain takes it
        "earlier_windows": np.stack([series[s : s + 32] for s in (0, 40, 80)]),
    }
    exec(compile(block, "README.md, foundation", "exec"), namespace)  # noqa: S102
    result, own = namespace["result"], namespace["own"]
    assert result.values.shape == (2, 32, 12, 3)  # type: ignore[attr-defined]
    gap = float(namespace["gap"])  # type: ignore[arg-type]
    assert gap <= 256 * float(np.finfo(np.float32).eps) * float(np.abs(own.numpy()).max())  # type: ignore[attr-defined]
