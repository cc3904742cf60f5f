"""The engine's cost per intercepted operation: what a reference pass and an input pass add to torch.

For a textbook LSTM cell looped in Python (T = 20) and the tiny TinyTimeMixer and Chronos-Bolt of
``bench_foundation.py`` (built from their own config classes, as the foundation door wraps them), run as
the engine runs them (``runner.run_pass``), on 4 windows x 16 references (``--rows pairs``, 64 rows) or on
one row (``--rows one``: tensors so small that what is left is the Python cost of the pass):

- ``ops``: the operations a pass intercepts (counted by a mode that only counts);
- ``plain`` / ``bare mode``: the model's forward without gradients, alone and under that counting mode;
- ``reference``: the reference pass (tape recorded); ``grad forward``: a forward with gradients;
  ``input``: the input pass through the rules, on the reference pass's tape;
- ``µs/op``: (reference - plain) / ops and (input - grad forward) / ops.

Each figure is the least CPU time (one torch thread) over ``--repeats`` calls (and ``--rounds`` processes),
so that the load of a shared machine moves it little. Two trees alternated, each in its own process:

    python benchmarks/bench_per_op.py --against /tmp/base            # A: /tmp/base, B: this tree
    python benchmarks/bench_per_op.py --against /tmp/base --rows one
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("USE_TF", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

HERE = Path(__file__).resolve().parent
REFERENCES = 16


def _loop() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    sys.path.insert(0, str(HERE))
    from bench_loops import TextbookLSTM

    torch.manual_seed(0)
    return TextbookLSTM(16, 32).eval(), torch.randn(4, 20, 16), torch.randn(REFERENCES, 20, 16)


def _foundation(name: str) -> Callable[[], tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    def build() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        sys.path.insert(0, str(HERE))
        import bench_foundation as bf

        from rnnshap.forecasting.foundation import adapter_for

        model = bf.MODELS[name]()
        adapter = adapter_for(model)
        module = adapter.module(bf.H, adapter.levels(None))
        series = bf.sunspots()
        context = np.stack([series[s : s + bf.L] for s in (200, 220, 240, 260)])
        background = np.stack([series[s : s + bf.L] for s in range(0, 160, 10)])
        return module, torch.tensor(context, dtype=torch.float32), torch.tensor(background, dtype=torch.float32)

    return build


CASES = {"loop": _loop, "TinyTimeMixer": _foundation("TinyTimeMixer"), "Chronos-Bolt": _foundation("Chronos-Bolt")}


def best(fn: Callable[[], Any], repeats: int) -> float:
    """The least CPU time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


class _Bare(TorchFunctionMode):
    """A mode that only counts: what intercepting costs in torch itself."""

    count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        _Bare.count += 1
        return func(*args, **(kwargs or {}))


def _run_pass(module: torch.nn.Module, rows: torch.Tensor, registry: Any, tape: Any, replay: bool) -> None:
    from rnnshap.engines.pytorch import runner

    settings = getattr(runner, "PassSettings", None)
    if settings is None:  # (a tree from before PassSettings)
        runner.run_pass(module, [rows.clone()], registry, tape, replay=replay)
    else:
        runner.run_pass(module, [rows.clone()], registry, tape, settings(replay=replay))


def measure(case: str, rows_of: str, repeats: int) -> dict[str, float]:
    """CPU seconds per pass on ``rows_of`` ("pairs": 4 windows x 16 references; "one": one row)."""
    import rnnshap
    from rnnshap.engines.pytorch.tape import Tape

    module, x, background = CASES[case]()
    registry = rnnshap.DeepExplainer(module, background).engine.registry
    rows = x.repeat_interleave(REFERENCES, 0) if rows_of == "pairs" else x[:1].clone()
    tapes: list[Any] = []

    def plain() -> None:
        with torch.no_grad():
            module(rows)

    def bare() -> None:
        with torch.no_grad(), _Bare():
            module(rows)

    def reference() -> None:
        tape = Tape()
        with torch.no_grad():
            _run_pass(module, rows, registry, tape, False)
        tapes.append(tape)

    def with_grad() -> None:
        with torch.enable_grad():
            module(rows.clone().requires_grad_(True))

    def replay() -> None:
        tape = tapes.pop()
        with torch.enable_grad():
            _run_pass(module, rows, registry, tape, True)

    _Bare.count = 0
    bare()
    figures = {"ops": float(_Bare.count), "plain": best(plain, repeats), "bare": best(bare, repeats)}
    figures["reference"] = best(reference, repeats)
    for _ in range(repeats):
        reference()
    figures["grad"] = best(with_grad, repeats)
    figures["input"] = best(replay, repeats)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rows", choices=("pairs", "one"), default="pairs")
    parser.add_argument("--against", help="another tree: both trees measured, alternated, each in its own process")
    parser.add_argument("--rounds", type=int, default=2, help="with --against: alternations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = args.cases.split(",")
    if not args.against:
        for case in cases:
            print(case, json.dumps(measure(case, args.rows, args.repeats)))
        return
    trees = {"A": Path(args.against).resolve(), "B": HERE.parent}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            command = [sys.executable, __file__, "--cases", args.cases, "--rows", args.rows, "--repeats", str(args.repeats)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                case, _, figures = line.partition(" ")
                if case in cases:
                    runs.setdefault((case, label), []).append(json.loads(figures))
    print(f"A = {trees['A']}, B = {trees['B']}; rows: {args.rows}; CPU ms per pass, least of {args.repeats} x {args.rounds}")
    print("| case | ops | plain | bare mode | reference A | reference B | grad forward | input A | input B | "
          "µs/op ref A | ref B | µs/op input A | input B |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        a, b = runs[(case, "A")], runs[(case, "B")]

        def least(key: str, side: list[dict[str, float]]) -> float:
            return min(r[key] for r in side)

        ops = a[0]["ops"]
        plain, grad = least("plain", a + b), least("grad", a + b)
        ref_a, ref_b, in_a, in_b = least("reference", a), least("reference", b), least("input", a), least("input", b)
        per = [(ref_a - plain) / ops, (ref_b - plain) / ops, (in_a - grad) / ops, (in_b - grad) / ops]
        print(f"| {case} | {ops:.0f} | {plain * 1e3:.2f} | {least('bare', a + b) * 1e3:.2f} | {ref_a * 1e3:.2f} | "
              f"{ref_b * 1e3:.2f} | {grad * 1e3:.2f} | {in_a * 1e3:.2f} | {in_b * 1e3:.2f} | "
              + " | ".join(f"{p * 1e6:.1f}" for p in per) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
