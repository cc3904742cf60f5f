"""Where DeepSHAP's time goes on the foundation forecasters, phase by phase, against the same phases of torch.

For tiny Chronos-2 (attention along time and, for its groups, along the batch), TinyTimeMixer (MLP
mixers) and TiRex (sLSTM blocks, the recurrence in bfloat16), built from their own config classes, on real
windows of statsmodels' CO2 series:

- the floor: a forward without gradients on the references, a forward with gradients on the inputs, and one
  backward per forecast output (batched as rnnshap batches it), over the same (sample, reference) pairs;
- rnnshap's ``DeepExplainer.shap_values`` split into the same phases: the reference pass (kept across calls for a
  background it has seen), the input pass through the rules, the backward; and its total.

Each number is the minimum of ``--repeats`` runs (the machine may be shared). Usage::

    python benchmarks/profile_foundation_phases.py                 # both models, 16 / 64 / 128 pairs
    python benchmarks/profile_foundation_phases.py --models ttm --pairs 64 --profile   # + torch.profiler's top ops

``--door`` measures the foundation door instead (``rnnshap.foundation``, bench_foundation.py's models, windows and
background; ``--size published``: the published checkpoints' sizes), in CPU time: a first ``explain()`` and a later
``ForecastExplainer`` call split into the reference passes, the checks that rows are computed alone, the plain
forward that vets a kept reference pass, the input pass, the backward and the rest, beside the per-output floor's
forward and backward on the same pairs::

    python benchmarks/profile_foundation_phases.py --door --size published --door-models TinyTimeMixer
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any, Callable

os.environ.setdefault("USE_TF", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import rnnshap  # noqa: E402
import rnnshap.engines.pytorch.engine as engine_module  # noqa: E402

L, SAMPLES = 64, 4


def windows() -> np.ndarray:
    import statsmodels.api as sm

    series = sm.datasets.co2.load_pandas().data["co2"].interpolate().to_numpy()
    return np.stack([series[i : i + L] for i in range(0, 2000, 40)]).astype(np.float32)


def chronos2() -> nn.Module:
    from chronos.chronos2.config import Chronos2CoreConfig
    from chronos.chronos2.model import Chronos2Model

    chronos = dict(
        context_length=L, output_patch_size=8, input_patch_size=8, input_patch_stride=8, quantiles=[0.1, 0.5, 0.9],
        use_reg_token=True, use_arcsinh=True, max_output_patches=2,
    )
    config = Chronos2CoreConfig(
        d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout_rate=0.0, chronos_config=chronos
    )
    model = Chronos2Model(config).eval()

    class Forecast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, context: torch.Tensor) -> torch.Tensor:
            return self.model(context, num_output_patches=2).quantile_preds.flatten(1)

    return Forecast()


def tinytimemixer() -> nn.Module:
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    config = TinyTimeMixerConfig(
        context_length=L, prediction_length=16, patch_length=8, patch_stride=8, num_input_channels=1, d_model=32,
        num_layers=2, decoder_num_layers=2, decoder_d_model=16, dropout=0.0, head_dropout=0.0,
    )
    model = TinyTimeMixerForPrediction(config).eval()

    class Forecast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, context: torch.Tensor) -> torch.Tensor:
            return self.model(past_values=context[..., None]).prediction_outputs.flatten(1)

    return Forecast()


def tirex() -> nn.Module:
    from tirex.models.tirex import TiRexZero

    config = dict(
        input_patch_size=8, output_patch_size=8, quantiles=[0.1, 0.5, 0.9], input_ff_dim=64,
        block_kwargs=dict(embedding_dim=32, num_heads=2, num_blocks=2, ffn_proj_factor=2.0),
    )
    model = TiRexZero("torch", config, train_ctx_len=L)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    model.eval()

    class Forecast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, context: torch.Tensor) -> torch.Tensor:
            return self.model._forecast_tensor(context, prediction_length=16).flatten(1)

    return Forecast()


MODELS: dict[str, Callable[[], nn.Module]] = {"chronos2": chronos2, "ttm": tinytimemixer, "tirex": tirex}
PHASES = ("reference pass", "input pass (rules)", "backward (k outputs)", "total")


def floor(f: nn.Module, X: torch.Tensor, background: torch.Tensor) -> dict[str, float]:
    grads = engine_module.grads_per_output
    pairs_x, pairs_r = X.repeat_interleave(len(background), 0), background.repeat(len(X), 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        f(pairs_r)
    t1 = time.perf_counter()
    x = pairs_x.clone().requires_grad_(True)
    out = f(x).reshape(x.shape[0], -1)
    t2 = time.perf_counter()
    grads(out, [x])
    t3 = time.perf_counter()
    return dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True))


def deepshap(explainer: Any, X: torch.Tensor) -> dict[str, float]:
    spent: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    run_pass, grads = engine_module.run_pass, engine_module.grads_per_output

    def timed_pass(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return run_pass(*args, **kwargs)
        finally:
            spent["input pass (rules)" if args[4].replay else "reference pass"] += time.perf_counter() - t

    def timed_grads(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return grads(*args, **kwargs)
        finally:
            spent["backward (k outputs)"] += time.perf_counter() - t

    engine_module.run_pass, engine_module.grads_per_output = timed_pass, timed_grads
    try:
        t = time.perf_counter()
        explainer.shap_values(X, check_additivity=False)
        spent["total"] = time.perf_counter() - t
    finally:
        engine_module.run_pass, engine_module.grads_per_output = run_pass, grads
    return spent


def door_phases(names: list[str], size: str, repeats: int, windows: int) -> None:
    """The door's phases (see the module's docstring), CPU time, minimum of ``repeats`` runs each."""
    import collections
    import contextlib
    import sys
    from pathlib import Path
    from unittest import mock

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_foundation as bench

    warnings.filterwarnings("ignore")  # (torch.func's fallback for unfold_backward, the libraries' own)

    if size == "published":
        bench.PUBLISHED_RUN, bench.L = True, 512
    series = bench.co2() if bench.PUBLISHED_RUN else bench.sunspots()
    checks_class = engine_module.ModelChecks
    spent: collections.Counter[str] = collections.Counter()
    inner: list[float] = []

    def timed(owner: Any, name: str, label: Callable[[tuple[Any, ...]], str]) -> Any:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            inner.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                took, nested = time.process_time() - start, inner.pop()
                spent[label(args)] += took - nested
                if inner:
                    inner[-1] += took

        return mock.patch.object(owner, name, wrapper)

    phases = [
        timed(engine_module, "run_pass", lambda a: "input pass" if a[4].replay else "reference passes"),
        timed(engine_module, "grads_per_output", lambda a: "backward"),
        timed(checks_class, "rows_independent", lambda a: "rows checks"),
        timed(checks_class, "rows_alone", lambda a: "rows checks"),
        timed(engine_module.KeptReferencePasses, "computes", lambda a: "vetting forward"),
    ]
    print(f"torch {torch.__version__}, one thread, CPU time, minimum of {repeats} runs; {size} sizes, {windows} windows x 16")
    print("| model | call | reference passes | rows checks | vetting forward | input pass | backward | rest | total |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        model = (bench.PUBLISHED if bench.PUBLISHED_RUN else bench.MODELS)[name]()
        starts = np.linspace(1000 if bench.PUBLISHED_RUN else 160, len(series) - bench.L, windows).astype(int)
        context = np.stack([series[s : s + bench.L] for s in starts])
        background = bench.background_windows(series)
        levels = bench.explained_levels(model)
        explainer = rnnshap.foundation.ForecastExplainer(model, background=background)
        calls = {
            "explain()": lambda: rnnshap.foundation.explain(
                model, context, prediction_length=bench.H, background=background, quantile_levels=levels
            ),
            "later call": lambda: explainer.explain(context, prediction_length=bench.H, quantile_levels=levels),
        }
        with contextlib.ExitStack() as stack:
            for patch in phases:
                stack.enter_context(patch)
            for label, call in calls.items():
                call()
                runs = []
                for _ in range(repeats):
                    spent.clear()
                    start = time.process_time()
                    call()
                    total = time.process_time() - start
                    runs.append({**spent, "rest": total - sum(spent.values()), "total": total})
                cells = [
                    min(run.get(k, 0.0) for run in runs) * 1e3
                    for k in ("reference passes", "rows checks", "vetting forward", "input pass", "backward", "rest", "total")
                ]
                print(f"| {name} | {label} | " + " | ".join(f"{c:.1f} ms" for c in cells) + " |", flush=True)
        adapter = bench.adapter_for(model)
        module = adapter.module(bench.H, adapter.levels(levels))
        x = torch.tensor(np.repeat(context, len(background), axis=0), dtype=torch.float32)
        extra = [torch.as_tensor(np.repeat(c, len(background), axis=0)) for c in adapter.context_inputs(context)]
        forward, backward = [], []
        for _ in range(repeats):
            plain = mock.patch.object(torch, "no_grad", contextlib.nullcontext)
            with plain, mock.patch.object(torch.Tensor, "detach", bench._same):
                inputs = x.clone().requires_grad_(True)
                start = time.process_time()
                out = module(inputs, *extra).reshape(len(inputs), -1)
                middle = time.process_time()
                k = out.shape[1]
                seeds = torch.eye(k, dtype=out.dtype)[:, None, :].expand(k, *out.shape).contiguous()
                torch.func.vmap(lambda v, out=out, inputs=inputs: torch.autograd.grad(out, inputs, v, retain_graph=True))(seeds)
                forward.append(middle - start)
                backward.append(time.process_time() - middle)
        f, b = min(forward) * 1e3, min(backward) * 1e3
        print(f"| {name} | floor: forward + backward per output | | | | {f:.1f} ms (forward) | {b:.1f} ms | | {f + b:.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--pairs", nargs="+", type=int, default=[16, 64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operations of one call")
    parser.add_argument("--door", action="store_true", help="the foundation door's phases instead (see above)")
    parser.add_argument("--door-models", default="TinyTimeMixer,MOMENT", help="--door: bench_foundation.py's model names")
    parser.add_argument("--size", choices=("small", "published"), default="small", help="--door: bench_foundation.py's sizes")
    parser.add_argument("--windows", type=int, default=4, help="--door: explained windows (each against 16 references)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.door:
        door_phases([m.strip() for m in args.door_models.split(",")], args.size, args.repeats, args.windows)
        return
    data = windows()
    print(f"torch {torch.__version__}, {args.threads} thread(s), minimum of {args.repeats} runs, {SAMPLES} samples explained")
    print("| model | pairs | outputs k | phase | torch (floor) | rnnshap DeepSHAP | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        f = MODELS[name]()
        for pairs in args.pairs:
            X = torch.from_numpy(data[:SAMPLES])
            background = torch.from_numpy(data[SAMPLES : SAMPLES + pairs // SAMPLES])
            explainer = rnnshap.DeepExplainer(f, background)
            explainer.shap_values(X, check_additivity=False)  # (warm: the kept reference pass, torch's caches)
            floors = [floor(f, X, background) for _ in range(args.repeats)]
            shaps = [deepshap(explainer, X) for _ in range(args.repeats)]
            best_floor = {p: min(run[p] for run in floors) for p in PHASES}
            best_shap = {p: min(run[p] for run in shaps) for p in PHASES}
            with torch.no_grad():
                k = f(X[:1]).numel()
            for phase in PHASES:
                a, b = best_floor[phase], best_shap[phase]
                ratio = f"{b / a:.2f}x" if a > 0 else "-"
                print(f"| {name} | {pairs} | {k} | {phase} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {ratio} |", flush=True)
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    explainer.shap_values(X, check_additivity=False)
                print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
