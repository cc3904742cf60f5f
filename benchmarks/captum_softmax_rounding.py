"""Captum's three float32 softmax classification tests, measured: Captum's DeepLift, rnnshap's, and
the exact values.

Captum's ``test_softmax_classification_batch_zero_baseline``, ``..._multi_baseline`` and
``..._batch_multi_baseline`` require ``|delta| < 0.003`` on ``SoftmaxDeepLiftModel``: all weights
are ones, so every logit is the same sum ``s`` plus its own bias, and the softmax of the
logits is the softmax of the biases, whatever the input. In real arithmetic ``f(x) − f(b)`` is 0
and so are the exact attributions (the float64 model: at most 4e-12). In float32 the logits are
3.1e5 to 1.6e6 on the tests' inputs (``arange``), where one ulp is 0.03 to 0.125: the biases are
rounded onto that grid, and ``f(x) − f(b)`` of the float32 model is that rounding, up to 0.01.

Per test (both targets of the test, 2 and 1), this prints the largest ``|delta|`` of

- Captum's own ``DeepLift`` / ``DeepLiftShap`` (the installed captum);
- ``rnnshap.captum``'s;
- the exact attributions (zeros): ``|f32(x) − f32(b)|``, the float32 model's own rounding;

at the tests' seed (1234, Captum's ``BaseTest.setUp``) and over seeds 0..19, and the product
``ulp(0.1) · max|Δlogit|``: rnnshap's softmax multipliers at the logits are about 0.1 and sum to
0 in real arithmetic; as float32 numbers they sum to a multiple of ulp(0.1) = 7.5e-9, and the
backward pass multiplies that sum by the logits' common change ``Δs`` (the weights are ones).

    python benchmarks/captum_softmax_rounding.py
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from captum.attr import DeepLift, DeepLiftShap
from captum.testing.helpers.basic import set_all_random_seeds
from captum.testing.helpers.classification_models import SoftmaxDeepLiftModel

import rnnshap.captum

#: test name → (number of input values, rows, random baselines, Captum class), as in Captum's file
TESTS = {
    "test_softmax_classification_batch_zero_baseline": (120, 3, False, "DeepLift"),
    "test_softmax_classification_multi_baseline": (40, 1, True, "DeepLiftShap"),
    "test_softmax_classification_batch_multi_baseline": (80, 2, True, "DeepLiftShap"),
}
LIMIT = 0.003  # the tests' bound on |delta|


def _setup(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor | int, torch.nn.Module, str]:
    size, rows, random_baselines, kind = TESTS[name]
    set_all_random_seeds(seed)  # what Captum's BaseTest.setUp does, then the test's own order
    inputs = torch.arange(0.0, float(size)).reshape(rows, 40)
    baselines: torch.Tensor | int = torch.randn(5, 40) if random_baselines else 0
    return inputs, baselines, SoftmaxDeepLiftModel(40, 20, 10), kind


def _delta(library: str, name: str, seed: int) -> float:
    worst = 0.0
    for target in (2, 1):
        inputs, baselines, model, kind = _setup(name, seed)
        classes = {
            "captum": {"DeepLift": DeepLift, "DeepLiftShap": DeepLiftShap},
            "rnnshap": {"DeepLift": rnnshap.captum.DeepLift, "DeepLiftShap": rnnshap.captum.DeepLiftShap}
        }
        chosen = torch.tensor([target] * len(inputs)) if kind == "DeepLift" else torch.tensor(target)
        _, delta = classes[library][kind](model).attribute(
            inputs.requires_grad_(library == "captum"), baselines=baselines, target=chosen, return_convergence_delta=True
        )
        worst = max(worst, float(delta.abs().max()))
    return worst


def _model_rounding(name: str, seed: int) -> tuple[float, float, float]:
    """max |f32(x) − f32(b)|, max |f64(x) − f64(b)| and max |Δlogit| over the pairs and both targets."""
    inputs, baselines, model, _ = _setup(name, seed)
    references = torch.zeros(1, 40) if isinstance(baselines, int) else baselines
    with torch.no_grad():
        change32 = model(inputs)[:, None, :] - model(references)[None, :, :]
        logits = model.lin3(model.relu2(model.lin2(model.relu1(model.lin1(inputs)))))
        logits_ref = model.lin3(model.relu2(model.lin2(model.relu1(model.lin1(references)))))
        model64 = model.double()
        change64 = model64(inputs.double())[:, None, :] - model64(references.double())[None, :, :]
    targets = [2, 1]
    return float(change32[..., targets].abs().max()), float(change64[..., targets].abs().max()), float(
        (logits[:, None] - logits_ref[None]).abs().max()
    )


def main() -> None:
    warnings.filterwarnings("ignore")
    ulp = float(np.spacing(np.float32(0.1)))
    print(f"|delta| must be < {LIMIT}; ulp(0.1) in float32 = {ulp:.2g}\n")
    print(
        "| test | Captum's delta | rnnshap's delta | exact values' delta (f32 rounding) | f64 model's f(x) − f(b) | max "
        "|Δlogit| | ulp(0.1)·max|Δlogit| | passes over seeds 0–19: Captum / rnnshap / exact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in TESTS:
        captum, ours = _delta("captum", name, 1234), _delta("rnnshap", name, 1234)
        rounding32, change64, logit_change = _model_rounding(name, 1234)
        seeds = range(20)
        passes = [sum(value < LIMIT for value in column) for column in zip(
            *((_delta("captum", name, s), _delta("rnnshap", name, s), _model_rounding(name, s)[0]) for s in seeds), strict=True
        )]
        short = name.removeprefix("test_softmax_classification_")
        print(
            f"| {short} | {captum:.4f} | {ours:.4f} | {rounding32:.4f} | {change64:.1e} | {logit_change:.2e} | "
            f"{ulp * logit_change:.4f} | {passes[0]} / {passes[1]} / {passes[2]} |"
        )


if __name__ == "__main__":
    main()
