"""tsai 1.0.1: InceptionTimePlus (tsai's default model) and mWDN, built tiny from tsai's own constructors.

Their forward draws ``random.random()`` for stochastic depth (``keep_prob[i] > random.random() or not
self.training``) in eval mode too; the draw never reaches the output, so they are explained.
Truth: the model's own outputs (additivity in float64 and float32).

tsai 1.0.1 pins scikit-learn < 1.8, which the constraints file does not allow (scikit-learn 1.9.1): it is not
in the ``zoo`` extra, and this file is skipped where tsai is not installed.
"""

from __future__ import annotations

import random

import pytest
import torch

import rnnshap

from ..conftest import assert_additive

pytest.importorskip("tsai.models.InceptionTimePlus")
from tsai.models.InceptionTimePlus import InceptionTimePlus  # noqa: E402
from tsai.models.mWDN import mWDN  # noqa: E402

BUILDS = {
    "InceptionTimePlus": (lambda: InceptionTimePlus(3, 2, seq_len=12, nf=4, depth=3), 12),
    "mWDN": (lambda: mWDN(3, 2, seq_len=16, levels=2), 16),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(BUILDS))
def test_tsai_model_drawing_in_eval_mode_is_exact_against_its_outputs(name: str, dtype: torch.dtype) -> None:
    build, length = BUILDS[name]
    torch.manual_seed(0)
    model = build().to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    background, X = torch.randn(8, 3, length, generator=g, dtype=dtype), torch.randn(4, 3, length, generator=g, dtype=dtype)
    state = random.getstate()
    with torch.no_grad():
        model(X)
    assert random.getstate() != state  # (the forward draws from Python's random module in eval mode)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, dtype)
