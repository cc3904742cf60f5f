"""rnnshap.darts.ShapExplainer against darts' own ShapExplainer, interleaved in one run on the same models.

Data: the yearly sunspot numbers bundled with statsmodels (a dependency of darts; 309 years, no
download), scaled to [0, 1] with darts' ``Scaler``. Models: a darts ``RNNModel`` (LSTM) and
``BlockRNNModel`` (GRU), fitted here on the first 200 years.

**Speed**: 49 forecasts explained against darts' 50 background windows (every horizon of the output
chunk), wall time per explained forecast:

- darts' ``ShapExplainer`` with its default method (shap's PermutationExplainer, ``max_evals=500``) at
  its default ``batch_size`` (the model's, 32) and at ``batch_size=2048``;
- rnnshap's DeepSHAP (``method="deepshap"``) and Shapley mode (``method="shapley"``, default budget).

The four run round-robin (a slowdown of the shared machine hits them all alike), median of ``--repeats``.

**Faithfulness**: a setting small enough to enumerate (8 lag players: the target window, no covariates)
has exact Shapley values, ``rnnshap``'s ``shapley_values`` at a budget covering every coalition against
every background window (2^8 · 50 rows per forecast). Against them, the median over the 49 forecasts of
the relative L2 distance ‖φ − φ*‖ / ‖φ*‖ (over the lag players and horizons) of darts' sampler (shap's
PermutationExplainer at ``max_evals`` = 17, 51, 153: its rows counted as they reach the model) and of
rnnshap's Shapley mode at the same number of rows per forecast (``budget``), plus DeepSHAP (3 rows per
background window, no sampling).

Run from the repository root (a few minutes on 2 cores)::

    python benchmarks/bench_forecasting_darts.py             # median of 3
    python benchmarks/bench_forecasting_darts.py --repeats 1 --quick
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch


def quiet() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("darts").setLevel(logging.ERROR)
    logging.getLogger("shap").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def sunspots() -> Any:
    """The yearly sunspot numbers (statsmodels' bundled copy), scaled to [0, 1] by darts' Scaler."""
    import pandas as pd
    import statsmodels.api as sm
    from darts import TimeSeries
    from darts.dataprocessing.transformers import Scaler

    frame = sm.datasets.sunspots.load_pandas().data
    series = TimeSeries.from_times_and_values(
        pd.date_range(
            start="1700", periods=len(frame), freq="YS"
        ), frame["SUNACTIVITY"].to_numpy(np.float32), columns=["sunspots"]
    )
    return Scaler().fit_transform(series)


TRAINER = dict(
    pl_trainer_kwargs=dict(
        enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, accelerator="cpu"
    ),
    random_state=0, batch_size=32,
)  # fmt: skip


def build(kind: str, L: int, hidden: int, epochs: int, series: Any) -> Any:
    from darts.models import BlockRNNModel, RNNModel

    torch.manual_seed(0)
    if kind == "RNNModel":
        model = RNNModel(input_chunk_length=L, model="LSTM", hidden_dim=hidden, training_length=L + 4, n_epochs=epochs, **TRAINER)
    else:
        model = BlockRNNModel(
            input_chunk_length=L, output_chunk_length=3, model="GRU", hidden_dim=hidden, n_epochs=epochs, **TRAINER
        )
    model.fit(series[:200], verbose=False)
    return model


class RowCounter:
    """Counts the rows darts' torch adapter passes to the model (shap's evaluations times its background)."""

    def __init__(self) -> None:
        from darts.explainability.shap_adapters.torch_shap_adapter import TorchShapAdapter

        self.cls, self.original, self.rows = TorchShapAdapter, TorchShapAdapter._func_wrapper, 0
        counter = self

        def counted(adapter: Any, x_np: np.ndarray) -> np.ndarray:
            counter.rows += x_np.shape[0]
            return counter.original(adapter, x_np)

        TorchShapAdapter._func_wrapper = counted  # type: ignore[method-assign]

    def close(self) -> None:
        self.cls._func_wrapper = self.original  # type: ignore[method-assign]


def windows(series: Any, L: int, count: int, start: int) -> Any:
    """A slice of ``series`` with exactly ``count`` forecast windows of length L (darts' inference dataset
    with overlap_end makes one per start from L to the slice's end)."""
    return series[start : start + L + count - 1]


def darts_explainer(model: Any, background: Any, **kwargs: Any) -> Any:
    from darts.explainability import ShapExplainer as DartsShapExplainer

    np.random.seed(0)
    return DartsShapExplainer(model, background, test_stationarity=False, **kwargs)


def rnnshap_explainer(model: Any, background: Any, **kwargs: Any) -> Any:
    from rnnshap.darts import ShapExplainer

    return ShapExplainer(model, background, **kwargs)


def values_of(result: Any, horizons: int) -> np.ndarray:
    """(forecasts, features, horizons) from a darts ShapExplainabilityResult."""
    return np.stack([result.get_explanation(h).values() for h in range(1, horizons + 1)], axis=-1)


def recipe_call(model: Any, adapter_explainer: Any, foreground: Any) -> tuple[Callable[[], Any], Callable[[], None]]:
    """docs/recipes.md's path on the same windows: the fitted module's forward in the predict stage
    wrapped by hand, ``rnnshap.DeepExplainer`` on the adapter's background and foreground window tensors
    (built outside the timed call: this is the cost of the values alone)."""
    from darts.utils.data.torch_datasets.utils import ModuleStage, PLModuleInput
    from torch import nn

    import rnnshap

    class Recipe(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, past_target: torch.Tensor) -> torch.Tensor:
            x_in = PLModuleInput(past_target=past_target, stage=ModuleStage.PREDICT)
            return self.module(x_in).prediction.flatten(1)

    adapter = adapter_explainer.explainer
    X = adapter._windows(adapter.create_shap_input(foreground, None, None, input_type="foreground")[0])
    recipe = Recipe(model.model).eval()
    explainer = rnnshap.DeepExplainer(recipe, adapter.background_windows[0])
    tiled = X[0].repeat_interleave(adapter.background_windows[0].shape[0], dim=0)

    def native() -> None:
        """The floor: one forward of the network on the (forecast, background window) pairs and one batched
        backward of each of its outputs (what any gradient method pays to explain every horizon)."""
        x = tiled.clone().requires_grad_(True)
        out = recipe(x)
        eye = torch.eye(out.shape[1], dtype=out.dtype)[:, None, :].expand(out.shape[1], *out.shape)
        torch.autograd.grad(out, x, eye, is_grads_batched=True)

    return (lambda: explainer.shap_values(X[0])), native


def speed(models: dict[str, Any], series: Any, L: int, repeats: int, n_forecasts: int, n_background: int) -> list[dict[str, Any]]:
    rows = []
    background = windows(series, L, n_background, 0)
    foreground = windows(series, L, n_forecasts, 220)
    for name, model in models.items():
        calls: dict[str, Callable[[], Any]] = {}
        explainers = {
            "darts ShapExplainer, batch_size default": darts_explainer(model, background),
            "darts ShapExplainer, batch_size=2048": darts_explainer(model, background, batch_size=2048),
            "rnnshap DeepSHAP": rnnshap_explainer(model, background),
            "rnnshap Shapley mode (default budget)": rnnshap_explainer(model, background, method="shapley", random_state=0),
        }
        for label, ex in explainers.items():
            calls[label] = (lambda ex=ex: ex.explain(foreground))
        recipe, native = recipe_call(model, explainers["rnnshap DeepSHAP"], foreground)
        calls["rnnshap recipe path (network + wrapper, DeepExplainer)"] = recipe
        calls["floor: native forward + backward on the same pairs"] = native
        times: dict[str, list[float]] = {label: [] for label in calls}
        for call in calls.values():  # warm-up
            call()
        for _ in range(repeats):
            for label, call in calls.items():
                start = time.perf_counter()
                call()
                times[label].append(time.perf_counter() - start)
        ms = {label: 1000 * statistics.median(t) / n_forecasts for label, t in times.items()}
        for label, value in ms.items():
            rows.append(dict(model=name, method=label, ms=value))
        print(f"{name}: " + ", ".join(f"{k}: {v:.2f} ms" for k, v in ms.items()), flush=True)
    return rows


def faithfulness(
    models: dict[str, Any], series: Any, L: int, n_forecasts: int, n_background: int, evals: list[int]
) -> list[dict[str, Any]]:
    import shap  # noqa: F401  (darts' explainer needs it)

    out = []
    background = windows(series, L, n_background, 0)
    foreground = windows(series, L, n_forecasts, 220)
    for name, model in models.items():
        k = model.output_chunk_length
        exact_ex = rnnshap_explainer(model, background, method="shapley", budget=2**L * n_background)
        exact = values_of(exact_ex.explain(foreground), k)
        assert np.all(exact_ex.last_attribution.exact), "the reference must be enumerated"

        def distance(values: np.ndarray) -> float:
            num = np.linalg.norm((values - exact).reshape(len(exact), -1), axis=1)
            return float(np.median(num / np.linalg.norm(exact.reshape(len(exact), -1), axis=1)))

        deep = values_of(rnnshap_explainer(model, background).explain(foreground), k)
        out.append(dict(model=name, rows=3 * n_background, method="rnnshap DeepSHAP", distance=distance(deep)))
        for max_evals in evals:
            counter = RowCounter()
            try:
                ex = darts_explainer(model, background, batch_size=2048)
                counter.rows = 0
                darts_values = values_of(ex.explain(foreground, max_evals=max_evals), k)
            finally:
                counter.close()
            rows = counter.rows // n_forecasts
            out.append(dict(
                model=name, rows=rows, method=f"darts ShapExplainer (permutation, max_evals={max_evals})",
                distance=distance(darts_values)
            ))
            ours = rnnshap_explainer(model, background, method="shapley", budget=rows, random_state=0)
            ours_values = values_of(ours.explain(foreground), k)
            used = int(np.max(ours.last_attribution.n_evals))
            assert used <= rows, (used, rows)
            out.append(dict(
                model=name, rows=rows, method=f"rnnshap Shapley mode (budget={rows}, used {used})", distance=distance(ours_values)
            ))
        for row in out[-(1 + 2 * len(evals)) :]:
            print(
                f"{name}: {row['method']}: rows/forecast {row['rows']}, median rel. L2 to exact {row['distance']:.2e}", flush=True
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    series = sunspots()
    epochs = 2 if args.quick else 20
    models = {kind: build(kind, 12, 32, epochs, series) for kind in ("RNNModel", "BlockRNNModel")}
    speed_rows = speed(models, series, 12, args.repeats, 49, 50)
    small = {kind: build(kind, 8, 16, epochs, series) for kind in ("RNNModel", "BlockRNNModel")}
    faith_rows = faithfulness(small, series, 8, 49, 50, [17, 51, 153])

    print("\n### Speed: 49 forecasts, 50 background windows (L=12, hidden 32), ms per explained forecast\n")
    print("| model | method | ms / forecast | darts' default ÷ this | darts' batch_size=2048 ÷ this |")
    print("|---|---|---:|---:|---:|")
    for name in models:
        mine = {r["method"]: r["ms"] for r in speed_rows if r["model"] == name}
        base, fast = mine["darts ShapExplainer, batch_size default"], mine["darts ShapExplainer, batch_size=2048"]
        for method, ms in mine.items():
            print(f"| {name} | {method} | {ms:.2f} | {base / ms:.0f}x | {fast / ms:.1f}x |")
    print(
        "\n### Faithfulness: median relative L2 to the exact Shapley values of 8 lag players "
        "(49 forecasts, 50 background windows)\n"
    )
    print("| model | rows / forecast | method | median rel. L2 to exact |")
    print("|---|---:|---|---:|")
    for r in faith_rows:
        print(f"| {r['model']} | {r['rows']} | {r['method']} | {r['distance']:.2e} |")


if __name__ == "__main__":
    main()
