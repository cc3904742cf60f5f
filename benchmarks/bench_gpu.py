"""rnnshap on an accelerator against native forward+backward and Captum, at realistic sizes.

For each configuration (``CONFIGS``: batches of 256-4096 (input, reference) pairs, T = 50-500, hidden
128-512, LSTM and GRU) on one device, cuDNN on, the model in eval mode as users explain it, this times as
the median of ``--repeats`` runs after a warm-up (``torch.cuda.synchronize`` around each):

1. ``native``: one forward + backward of the model on the tiled pairs, ``model(tiled).sum().backward()``
   with respect to the input: the floor for any method that needs a gradient per pair. cuDNN's RNN backward
   runs in training mode only, so the floor runs the same model with ``train()`` (it has no dropout: the
   same function). On CUDA also ``native, IEEE float32``: the same at the precision rnnshap runs the model in
   (TF32 off, which exact values need), its ratio to the first;
2. ``rnnshap``: ``DeepExplainer(model, background, batch_size >= pairs).shap_values(X)`` with the
   additivity check on, the model in eval mode (the explainer built outside the timed region); on CUDA where Triton
   imports also ``step by step``: the same with the recurrences' Triton kernels off
   (``rnnshap.recurrent.persistent.MODE = None``);
3. ``captum DeepLiftShap`` and ``captum IG-50`` (Integrated Gradients, 50 steps, one call per background
   row): where they run. In eval mode both need cuDNN's RNN backward and fail; the error is printed.

and prints seconds, the ratio to ``native``, the relative additivity error
``max |Σφ − (f(x) − E f)| / max |f(x) − E f|`` and the peak device memory. Also checked on every run: the
model's device, parameters and cuDNN's settings are left as they were.

    python benchmarks/bench_gpu.py                 # the first CUDA device (or MPS); all configurations
    python benchmarks/bench_gpu.py --quick         # small sizes: a smoke test
    python benchmarks/bench_gpu.py --device cpu --quick   # the script itself, without an accelerator
    python benchmarks/bench_gpu.py --compile compile     # rnnshap's pass traced (compile="trace") and compiled too
    python benchmarks/bench_gpu.py --profile --only lstm-256-T200   # where one call's device time goes, by kernel kind
    python benchmarks/bench_gpu.py --tiles --only lstm-256-T200     # the recurrence's kernel alone, by its tile sizes
    python benchmarks/bench_gpu.py --throughput 4000 --repeats 2    # sequences a second: batch_size fixed and "auto"
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402
from rnnshap.engines import cuda_graphs  # noqa: E402
from rnnshap.engines.precision import float32_in_full  # noqa: E402
from rnnshap.recurrent import persistent  # noqa: E402


class Recurrent(nn.Module):
    """``LSTM``/``GRU``/``RNN`` (batch_first) → ``Linear(hidden → 2)`` on the last step's output."""

    def __init__(self, kind: str, features: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.rnn = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[kind](features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@dataclass(frozen=True)
class Config:
    name: str
    kind: str
    features: int
    hidden: int
    layers: int
    steps: int
    inputs: int
    references: int

    @property
    def pairs(self) -> int:
        return self.inputs * self.references

    def describe(self) -> str:
        return (
            f"{self.kind}({self.features}→{self.hidden}, {self.layers} layer{'s' if self.layers > 1 else ''}), T = {self.steps}, "
            f"{self.inputs} inputs × {self.references} references = {self.pairs} pairs"
        )


CONFIGS = [
    Config("lstm-128-T50", "LSTM", 32, 128, 1, 50, 64, 64),  # 4096 pairs
    Config("lstm-256-T200", "LSTM", 32, 256, 2, 200, 32, 32),  # 1024 pairs
    Config("gru-256-T200", "GRU", 32, 256, 2, 200, 32, 32),
    Config("rnn-256-T200", "RNN", 32, 256, 2, 200, 32, 32),
    Config("lstm-512-T500", "LSTM", 16, 512, 1, 500, 16, 16),  # 256 pairs
]
QUICK = [Config("lstm-16-T10", "LSTM", 4, 16, 1, 10, 8, 4), Config("gru-16-T10", "GRU", 4, 16, 2, 10, 8, 4)]


def default_device() -> str | None:
    if torch.cuda.is_available():
        return "cuda:0"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


def timed(run: Callable[[], Any], device: str, repeats: int) -> tuple[float, Any]:
    """The median seconds of ``repeats`` runs after one warm-up, and the last result."""
    result = run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_memory(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def additivity_error(values: np.ndarray, model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> float:
    """Against the model's outputs in IEEE float32, the function rnnshap explains (TF32, cuDNN's default for its
    recurrent layers, rounds them to about 1e-3: rnnshap turns it off while it runs the model; docs/performance.md,
    "On a GPU")."""
    with torch.no_grad(), float32_in_full():
        gap = model(x).double().cpu().numpy() - model(background).double().cpu().numpy().mean(0)
    totals = values.reshape(len(x), -1, gap.shape[1]).sum(1)
    return float(np.abs(totals - gap).max() / max(np.abs(gap).max(), 1e-30))


def cudnn_settings() -> tuple[Any, ...]:
    c = torch.backends.cudnn
    return (c.enabled, c.benchmark, c.deterministic)


def _in_full(run: Callable[[], Any]) -> Any:
    with float32_in_full():
        return run()


#: the kinds of device kernel ``--profile`` sums, by a part of their names (the first that matches)
KERNEL_KINDS = (
    ("matrix products", ("gemm", "cutlass", "xmma", "gemv", "splitk", "cublas")),
    ("cuDNN's recurrent kernels", ("rnn", "lstm", "gru", "persist")),
    ("copies and joins", ("copy", "cat", "memcpy", "memset", "fill")),
    ("reductions", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise", "index")),
)


def profiled(run: Callable[[], Any], device: str) -> list[tuple[str, str]]:
    """Where one call's device time goes (``--profile``): its kernels summed by kind, each kind's share, count and
    mean, and the call's wall time against the kernels' total (the rest: launches, Python, waits)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    synchronize(device)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        run()
        synchronize(device)
    wall = time.perf_counter() - start
    kinds: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.name.lower()
        kind = next((k for k, parts in KERNEL_KINDS if any(p in name for p in parts)), "other")
        kinds.setdefault(kind, []).append(event.device_time_total / 1e6)
    total = sum(sum(times) for times in kinds.values())
    launches = sum(map(len, kinds.values()))
    rows = [("  profiled", f"{wall:9.4f} s wall (profiler on); device kernels {total:.4f} s, {launches} launches")]
    for kind, times in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
        share, mean = (sum(times) / total if total else 0.0), 1e6 * sum(times) / len(times)
        rows.append((f"    {kind}", f"{sum(times):9.4f} s {share:6.1%}   {len(times):6d} kernels, {mean:6.1f} us each"))
    return rows


def run_config(
    config: Config, device: str, repeats: int, compile_modes: tuple[Any, ...] = (), profile: bool = False, peers: bool = True
) -> list[tuple[str, str]]:
    gc.collect()  # (what the last configuration left in reference cycles freed: each peak of memory is its own)
    torch.manual_seed(0)
    model = Recurrent(config.kind, config.features, config.hidden, config.layers).to(device).eval()
    x = torch.randn(config.inputs, config.steps, config.features, device=device)
    background = torch.randn(config.references, config.steps, config.features, device=device)
    tiled = x.repeat_interleave(config.references, 0)
    rows: list[tuple[str, str]] = []

    def native() -> None:
        model.train()  # (cuDNN's RNN backward runs in training mode only; no dropout: the same function)
        try:
            leaf = tiled.clone().requires_grad_(True)
            model(leaf).sum().backward()
        finally:
            model.eval()
            model.zero_grad(set_to_none=True)

    reset_peak(device)
    floor, _ = timed(native, device, repeats)
    rows.append(("native fwd+bwd", f"{floor:9.4f} s   1.00x   {'':>9}   {_memory(device)}"))
    if device.startswith("cuda"):  # the floor at the precision rnnshap runs the model in (TF32 off: its values exact)
        full, _ = timed(lambda: _in_full(native), device, repeats)
        rows.append(("native, IEEE float32", f"{full:9.4f} s {full / floor:6.2f}x   {'':>9}   {_memory(device)}"))

    before = ([p.detach().clone() for p in model.parameters()], str(next(model.parameters()).device), cudnn_settings())
    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(config.pairs, 2048), compile=False)  # intercepted
    reset_peak(device)
    seconds, values = timed(lambda: np.asarray(explainer.shap_values(x)), device, repeats)
    error = additivity_error(values, model, x, background)
    rows.append(("rnnshap", f"{seconds:9.4f} s {seconds / floor:6.2f}x   {error:9.1e}   {_memory(device)}"))
    if persistent.MODE is not None and persistent.available() and device.startswith("cuda"):
        # (the same without the recurrences' Triton kernels: step by step, each replayed as a CUDA graph)
        persistent.MODE = None
        try:
            reset_peak(device)
            steps, values = timed(lambda: np.asarray(explainer.shap_values(x)), device, repeats)
        finally:
            persistent.MODE = "cuda"
        error = additivity_error(values, model, x, background)
        rows.append(("  step by step", f"{steps:9.4f} s {steps / floor:6.2f}x   {error:9.1e}   {_memory(device)}"))
    if profile:
        rows += profiled(lambda: explainer.shap_values(x), device)
    after = ([p.detach() for p in model.parameters()], str(next(model.parameters()).device), cudnn_settings())
    untouched = all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True)) and before[1:] == after[1:]
    if not untouched:
        rows.append(("  (!)", "the model or cuDNN's settings changed"))
    for mode, graphs in [(m, g) for m in compile_modes for g in (("0", "1") if m == "trace" and "cuda" in device else ("1",))]:
        # (--compile: the pass as a traced program, on CUDA without and with its CUDA graph, and compiled; traced at the
        # second call)
        cuda_graphs.REPLAY = graphs == "1"
        program = rnnshap.DeepExplainer(model, background, batch_size=max(config.pairs, 2048), compile=mode)
        program.shap_values(x)
        synchronize(device)
        start = time.perf_counter()
        program.shap_values(x)  # (traces, and compiles or captures)
        synchronize(device)
        once = time.perf_counter() - start
        reset_peak(device)
        seconds, values = timed(lambda: np.asarray(program.shap_values(x)), device, repeats)  # noqa: B023
        error = additivity_error(values, model, x, background)
        name = f"rnnshap compile={mode!r}" + (", no CUDA graph" if graphs == "0" else "")
        # (a CUDA graph's own memory pool, reserved at its capture, is not in the peak measured after it)
        pool = " + its graph's pool" if "CUDA graph" in program.pass_path and "not a CUDA graph" not in program.pass_path else ""
        rows.append((name, f"{seconds:9.4f} s {seconds / floor:6.2f}x   {error:9.1e}   {_memory(device)}{pool}"))
        rows.append((f"  ({once:.1f} s once)", program.pass_path[-110:]))
    cuda_graphs.REPLAY = True
    if not peers:
        return rows

    try:
        from captum.attr import DeepLiftShap, IntegratedGradients
    except ImportError:
        rows.append(("captum", "not installed"))
        return rows

    def deeplift() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = [DeepLiftShap(model).attribute(x, baselines=background, target=t) for t in range(2)]
        return torch.stack(parts, -1).detach().cpu().numpy()

    def integrated_gradients() -> np.ndarray:
        parts = []
        for t in range(2):
            total = torch.zeros_like(x)
            for r in range(config.references):
                total += IntegratedGradients(model).attribute(x, baselines=background[r : r + 1], target=t, n_steps=50)
            parts.append(total / config.references)
        return torch.stack(parts, -1).detach().cpu().numpy()

    for name, method in (("captum DeepLiftShap", deeplift), ("captum IG-50", integrated_gradients)):
        reset_peak(device)
        try:
            seconds, values = timed(method, device, max(1, repeats // 2))
        except Exception as error:  # noqa: BLE001 - a peer's failure is a result
            rows.append((name, f"fails: {type(error).__name__}: {str(error).splitlines()[0][:90]}"))
            continue
        error = additivity_error(values, model, x, background)
        rows.append((name, f"{seconds:9.4f} s {seconds / floor:6.2f}x   {error:9.1e}   {_memory(device)}"))
    return rows


def tile_sweep(config: Config, device: str, repeats: int) -> list[tuple[str, str]]:
    """One layer's reverse recurrence alone, for the config's sizes and the head's 2 outputs: the Triton kernel with each
    of a few tile sizes, and the step-by-step recurrence (replayed as a CUDA graph) in the same run."""
    from rnnshap.recurrent import reverse

    kind = config.kind.lower()
    blocks, coefficient_blocks = persistent._BLOCKS[kind]
    hidden, steps, pairs = config.hidden, config.steps, config.pairs
    torch.manual_seed(0)
    coefficients = 0.5 * torch.randn(steps, pairs, coefficient_blocks * hidden, device=device)
    d_out = torch.randn(2, steps, pairs, hidden, device=device)
    states = tuple(torch.randn(2, pairs, hidden, device=device) for _ in range(2 if kind == "lstm" else 1))
    w_ih = torch.randn(blocks * hidden, config.features, device=device) / hidden**0.5
    w_hh = torch.randn(blocks * hidden, hidden, device=device) / hidden**0.5
    step_by_step = getattr(reverse, f"{kind}_recurrence")
    extra = (None,) if kind == "lstm" else ()
    persistent.MODE = None
    try:
        with float32_in_full():
            args = (coefficients, None, None, d_out, *states, w_ih, w_hh, *extra)
            base, expected = timed(lambda: step_by_step(*args), device, repeats)
    finally:
        persistent.MODE = "cuda"
    rows = [(f"{kind} step by step", f"{base * 1e3:9.2f} ms   1.00x")]
    chosen = (persistent.TILE, persistent.INNER, persistent.WARPS, persistent._rows_per_program)
    for tile, inner, warps, size in [(64, 32, 4, None), (32, 32, 4, None), (64, 16, 4, None), (128, 32, 4, None),
                                     (128, 32, 8, None), (64, 32, 8, None), (64, 64, 4, None), (64, 32, 4, 32)]:  # fmt: skip
        persistent.TILE, persistent.INNER, persistent.WARPS = tile, inner, warps
        if size is not None:
            persistent._rows_per_program = lambda rows, dev, size=size: size
        try:
            seconds, got = timed(lambda: persistent.recurrence(kind, coefficients, d_out, states, w_ih, w_hh), device, repeats)
            off = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, expected, strict=True))
            rows.append((f"  tile {tile}, inner {inner}, {warps} warps, rows {size or 'auto'}",
                         f"{seconds * 1e3:9.2f} ms {seconds / base:6.2f}x   max rel. difference {off:.1e}"))  # fmt: skip
        except Exception as error:  # noqa: BLE001 (a tile size the compiler refuses is a result)
            rows.append((f"  tile {tile}, inner {inner}, {warps} warps", f"fails: {type(error).__name__}: {str(error)[:80]}"))
        finally:
            persistent.TILE, persistent.INNER, persistent.WARPS, persistent._rows_per_program = chosen
    return rows


def throughput(device: str, samples: int, repeats: int) -> Iterator[tuple[str, str]]:
    """An LSTM(32→128) classifier at T = 100 against 100 references: sequences explained a second at fixed blocks and
    at ``batch_size="auto"`` (blocks sized from the device's memory, halved where one runs out of it)."""
    torch.manual_seed(0)
    model = Recurrent("LSTM", 32, 128, 1).to(device).eval()
    background = torch.randn(100, 100, 32, device=device)
    x = torch.randn(samples, 100, 32, device=device)
    for size in (8192, "auto", 65536):  # (each row as it is measured)
        explainer = rnnshap.DeepExplainer(model, background, batch_size=size)
        gc.collect()
        reset_peak(device)
        try:
            seconds, values = timed(lambda: np.asarray(explainer.shap_values(x)), device, repeats)  # noqa: B023
        except torch.cuda.OutOfMemoryError as error:
            yield f"batch_size={size!r}", f"out of memory: {str(error).splitlines()[0][:80]}"
            continue
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        error = additivity_error(values, model, x, background)
        rate = f"{samples / seconds:8.0f} sequences/s"
        yield f"batch_size={size!r}", f"{seconds:9.3f} s   {rate}   {error:9.1e}   {_memory(device)}"


def _memory(device: str) -> str:
    peak = peak_memory(device)
    return f"{peak:8.0f} MiB" if peak is not None else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda:0, cuda:1, mps or cpu (default: the first accelerator)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="configuration names")
    parser.add_argument(
        "--compile", choices=("trace", "compile"), help="rnnshap's pass as a traced program too (and compiled, with 'compile')"
    )
    parser.add_argument("--profile", action="store_true", help="where one intercepted call's device time goes, by kernel kind")
    parser.add_argument("--tiles", action="store_true", help="the recurrence's Triton kernel alone, by its tile sizes")
    parser.add_argument("--no-peers", action="store_true", help="without Captum's rows")
    parser.add_argument("--throughput", type=int, metavar="SAMPLES", help="sequences a second, fixed blocks against 'auto'")
    args = parser.parse_args(argv)
    device = args.device or default_device()
    if device is None:
        print("No CUDA or MPS device here: nothing to measure (give --device cpu to run the script on the CPU).")
        return 2
    if args.throughput:
        print(f"LSTM(32→128) classifier, T = 100, 100 references, {args.throughput} samples; median of {args.repeats}")
        for method, line in throughput(device, args.throughput, args.repeats):
            print(f"  {method:<22}{line}", flush=True)
        return 0
    configs = QUICK if args.quick else CONFIGS
    if args.only:
        configs = [c for c in configs if c.name in args.only]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    cudnn = torch.backends.cudnn.version() if device.startswith("cuda") else None
    print(f"device: {name} ({device}); torch {torch.__version__}, cuDNN {cudnn}, rnnshap {rnnshap.__version__}, "
          f"Python {platform.python_version()}; median of {args.repeats} runs after a warm-up")  # fmt: skip
    print(f"{'method':<22}{'seconds':>11} {'vs native':>9} {'additivity':>11} {'peak memory':>12}")
    for config in configs:
        print(f"\n{config.name}: {config.describe()}")
        modes: tuple[Any, ...] = () if not args.compile else ("trace",) if args.compile == "trace" else ("trace", True)
        if args.tiles:
            rows = tile_sweep(config, device, args.repeats)
        else:
            rows = run_config(config, device, args.repeats, modes, args.profile, not args.no_peers)
        for method, line in rows:
            print(f"  {method:<20}{line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
