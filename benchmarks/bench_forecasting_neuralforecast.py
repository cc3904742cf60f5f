"""rnnshap.neuralforecast.explain against neuralforecast's own NeuralForecast.explain, interleaved in one run.

Two settings on the same fitted models, AirPassengersPanel (bundled with neuralforecast):

- **speed**: 16 series (the two airlines at 8 scales), input window L = 24, horizon h = 12, future, historic
  and static exogenous; LSTM (recurrent=True), GRU, MLP, NHITS, TFT, trained briefly. neuralforecast's
  default explainer (IntegratedGradients: it skips the recurrent LSTM) against rnnshap's DeepSHAP and
  Shapley mode (default budget). Wall time per explained forecast (one window, all h steps), the
  neuralforecast pipeline (windows, scaling, predict) included on both sides.
- **faithfulness**: 2 series, L = 6, h = 3, the target only (12 players: 6 lags and their availability
  mask), where the exact Shapley values of neuralforecast's game (the zero reference, one player per
  window entry, as its Captum explainers use) are enumerated by rnnshap (budget 2^12). Distance of each
  method to them (median relative L2 over windows and horizon steps) at its number of network rows per
  window: neuralforecast's ShapleyValueSampling (25 permutations, 25·12 rows per horizon step) against
  rnnshap's Shapley mode at the same rows per window (for all h steps at once), DeepSHAP and IG.

Run: ``python benchmarks/bench_forecasting_neuralforecast.py [--repeats 3] [--steps 100]``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings
from typing import Any, Callable

import pandas as pd
import torch

from rnnshap.neuralforecast import explain

QUIET = dict(enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, random_seed=0)


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def panel(n_scales: int, h: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """AirPassengersPanel's two airlines at ``n_scales`` scales: history, future exogenous (h steps), statics."""
    from neuralforecast.utils import AirPassengersPanel, AirPassengersStatic

    frames, statics = [], []
    for k in range(n_scales):
        f = AirPassengersPanel.copy()
        f["y"] = f["y"] * (1 + 0.25 * k)
        f["y_[lag12]"] = f["y_[lag12]"] * (1 + 0.25 * k)
        f["unique_id"] = f["unique_id"] + f"_{k}"
        s = AirPassengersStatic.copy()
        s["unique_id"] = s["unique_id"] + f"_{k}"
        frames.append(f)
        statics.append(s)
    full = pd.concat(frames, ignore_index=True)
    cut = full.ds.sort_values().unique()[-12]
    df = full[full.ds < cut].reset_index(drop=True)
    futr = full[full.ds >= cut].drop(columns="y").groupby("unique_id").head(h).reset_index(drop=True)
    return df, futr, pd.concat(statics, ignore_index=True)


def only(nf: Any, model: Any) -> Any:
    sub = copy.copy(nf)
    sub.models = [model]
    return sub


def name_of(model: Any) -> str:
    return type(model).__name__


def timed(calls: dict[str, Callable[[], Any]], repeats: int, warm: bool = True) -> dict[str, float]:
    """Median seconds per call, round-robin after a warm-up round (a slow moment hits every method alike)."""
    for call in calls.values() if warm else ():
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(repeats: int, steps: int) -> list[str]:
    from neuralforecast import NeuralForecast
    from neuralforecast.models import GRU, LSTM, MLP, NHITS, TFT

    L, H = 24, 12
    df, futr, static = panel(32, H)
    n = df.unique_id.nunique()
    exog = dict(futr_exog_list=["trend"], hist_exog_list=["y_[lag12]"], stat_exog_list=["airline1"])
    kw = dict(h=H, input_size=L, max_steps=steps, scaler_type="standard", **exog, **QUIET)
    models = [
        LSTM(encoder_hidden_size=32, decoder_hidden_size=32, recurrent=True, **kw),
        GRU(encoder_hidden_size=32, decoder_hidden_size=32, **kw),
        MLP(hidden_size=64, num_layers=2, **kw),
        NHITS(mlp_units=[[64, 64]] * 3, **kw),
        TFT(hidden_size=16, n_head=2, **kw),
    ]
    torch.manual_seed(0)
    nf = NeuralForecast(models=models, freq="ME")
    nf.fit(df, static_df=static)
    rows = [
        f"Speed: {n} series, L={L}, h={H}, future + historic + static exogenous, {steps} training steps; seconds per explained "
        f"forecast (one window, all {H} horizon steps), median of {repeats} interleaved rounds, neuralforecast's predict "
        "pipeline "
        "included on both sides.",
        "",
        "| model | nf.predict alone | nf.explain (IntegratedGradients) | rnnshap DeepSHAP | IG / DeepSHAP | rnnshap Shapley "
        "mode |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        sub = only(nf, model)
        calls: dict[str, Callable[[], Any]] = {
            "predict": lambda sub=sub: sub.predict(futr_df=futr, static_df=static, verbose=False),
            "deepshap": lambda sub=sub: explain(sub, futr_df=futr, static_df=static, verbose=False),
        }
        if not model.RECURRENT:
            calls["ig"] = lambda sub=sub: sub.explain(futr_df=futr, static_df=static, verbose=False)
        t = timed(calls, repeats)
        # the Shapley mode (default budget: 16x DeepSHAP's cost, at least 20 walk pairs over the 109 players) once
        t |= timed({"shapley": lambda sub=sub: explain(
            sub, futr_df=futr, static_df=static, method="shapley", random_state=0, verbose=False
        )}, 1, warm=False)
        ig = t.get("ig")
        label = name_of(model) + (" (recurrent)" if model.RECURRENT else "")
        ig_cell = "skipped (recurrent)" if ig is None else f"{ig / n * 1e3:.1f} ms"
        ratio = "—" if ig is None else f"{ig / t['deepshap']:.0f}x"
        rows.append(
            f"| {label} | {t['predict'] / n * 1e3:.2f} ms | {ig_cell} | {t['deepshap'] / n * 1e3:.2f} ms | {ratio} | "
            f"{t['shapley'] / n * 1e3:.1f} ms |"
        )
        print(rows[-1], flush=True)
    return rows


def relative_l2(values: torch.Tensor, exact: torch.Tensor) -> float:
    """Median over windows and horizon steps of ||values − exact|| / ||exact|| (target and mask players)."""
    v = values[:, :, 0, 0].reshape(values.shape[0], values.shape[1], -1).double()
    e = exact[:, :, 0, 0].reshape(exact.shape[0], exact.shape[1], -1).double()
    return float(torch.median((v - e).norm(dim=-1) / e.norm(dim=-1).clamp_min(1e-12)))


def faithfulness(repeats: int, steps: int, seeds: int) -> list[str]:
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM, MLP

    L, H = 6, 3
    df, _, _ = panel(1, H)
    df = df[["unique_id", "ds", "y"]]
    n = df.unique_id.nunique()
    kw = dict(h=H, input_size=L, max_steps=steps, scaler_type="standard", **QUIET)
    models = [LSTM(encoder_hidden_size=16, decoder_hidden_size=16, recurrent=True, **kw), MLP(hidden_size=32, num_layers=2, **kw)]
    torch.manual_seed(0)
    nf = NeuralForecast(models=models, freq="ME")
    nf.fit(df)
    rows = [
        f"Faithfulness: {n} series, L={L}, h={H}, the target only (players: every target and mask entry of the window, "
        f"{2 * L} for MLP, {2 * (L + H)} for the recurrent LSTM's L + h window), zero reference; "
        f"median relative L2 to the exact Shapley values (rnnshap, budget 2^players), over windows, horizon steps and "
        f"{seeds} seeds; rows: network rows per window (per horizon step for Captum's, for all {H} at once for rnnshap's); "
        "seconds per window, median of interleaved rounds.",
        "",
        "| model | method | rows per window | rel. L2 to exact | time per window |",
        "|---|---|---:|---:|---:|",
    ]
    for model in models:
        sub = only(nf, model)
        players = 2 * explain(sub, verbose=False)[1][name_of(model)]["insample"].shape[-2]  # target and mask entries
        svs_rows = 25 * players  # captum's ShapleyValueSampling default: 25 permutations of the players
        _, exact = explain(sub, method="shapley", budget=2**players, verbose=False)
        exact_values = exact[name_of(model)]["insample"]
        assert bool(torch.all(exact[name_of(model)]["insample_stderr"] == 0)), "the enumeration did not run"
        calls: dict[str, Callable[[], Any]] = {
            "nf ShapleyValueSampling": lambda sub=sub: sub.explain(explainer="ShapleyValueSampling", verbose=False),
            "rnnshap Shapley mode": lambda sub=sub: explain(
                sub, method="shapley", budget=svs_rows, random_state=0, verbose=False
            ),
            "rnnshap DeepSHAP": lambda sub=sub: explain(sub, verbose=False),
        }
        if not model.RECURRENT:
            calls["nf IntegratedGradients"] = lambda sub=sub: sub.explain(verbose=False)
        t = timed(calls, repeats)
        errors: dict[str, list[float]] = {k: [] for k in calls}
        for seed in range(seeds):
            torch.manual_seed(seed)
            errors["nf ShapleyValueSampling"].append(relative_l2(
                sub.explain(explainer="ShapleyValueSampling", verbose=False)[1][name_of(model)]["insample"], exact_values
            ))
            ours = explain(
                sub, method="shapley", budget=svs_rows, random_state=seed, verbose=False
            )[1][name_of(model)]["insample"]
            errors["rnnshap Shapley mode"].append(relative_l2(ours, exact_values))
        errors["rnnshap DeepSHAP"].append(relative_l2(explain(sub, verbose=False)[1][name_of(model)]["insample"], exact_values))
        if "nf IntegratedGradients" in calls:
            errors["nf IntegratedGradients"].append(
                relative_l2(sub.explain(verbose=False)[1][name_of(model)]["insample"], exact_values)
            )
        cost = {
            "nf ShapleyValueSampling": f"{svs_rows} per step",
            "rnnshap Shapley mode": f"{svs_rows} for all steps",
            "rnnshap DeepSHAP": "3",
            "nf IntegratedGradients": "50 per step",
        }
        label = name_of(model) + (" (recurrent)" if model.RECURRENT else "")
        for key in calls:
            rows.append(f"| {label} | {key} | {cost[key]} | {statistics.median(errors[key]):.4f} | {t[key] / n * 1e3:.1f} ms |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="training steps per model")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the sampled estimators (faithfulness)")
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(1)
    out = speed(args.repeats, args.steps)
    out += ["", *faithfulness(args.repeats, args.steps, args.seeds)]
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
