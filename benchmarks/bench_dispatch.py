"""What one explanation costs in dispatched operations, host syncs and time, against its floor.

For each model, ``S`` samples against ``R`` references, the explainer built and called once before (the steady
state: a kept explainer, the same shapes), with ``check_additivity=False``:

- ``ops``: operations torch's profiler records in one ``shap_values`` call (every event, views included, as
  ``torch.profiler`` counts them), and ``per step`` their growth per time step of the sequence where the
  model has one (measured at two lengths);
- ``kernels``: of those, the operations that compute and call no other that does (no views, no wrappers): what
  a GPU would launch, and ``per step`` their growth per time step;
- ``syncs``: host synchronisations in the call: ``aten::_local_scalar_dense`` (``.item()``, ``bool(t)``,
  ``int(t)``), ``aten::equal`` and ``aten::nonzero`` (each one stalls a GPU until its queue has run), and ``as on a
  device`` those of the same call with the formulas' ``surely_*`` tests answering unread, as they do on an
  accelerator (on the CPU they read values to skip work, which costs nothing there);
- ``ms``: the median wall time of ``--repeats`` calls;

and the same of the floor, native forward + one backward per output on the same ``S x R`` pairs (the tiled
inputs, ``torch.autograd.grad`` of each output column), with the ratios rnnshap / floor.

    python benchmarks/bench_dispatch.py                   # the models of the issue, tiny sizes
    python benchmarks/bench_dispatch.py --size published  # hidden 128, 16 x 16 pairs
    python benchmarks/bench_dispatch.py --models lstm gru --device cuda
    python benchmarks/bench_dispatch.py --against /tmp/base    # each model in this tree and in another, alternately
    python benchmarks/bench_dispatch.py --models lstm --grow   # samples, references, outputs doubled in turn
    python benchmarks/bench_dispatch.py --first                # the first call (fresh processes) against the steady one
    python benchmarks/bench_dispatch.py --first --paths capture  # the same of compile="capture" (its capture included)
    python benchmarks/bench_dispatch.py --door --against /tmp/base  # Captum's door: its first and later calls
    python benchmarks/bench_dispatch.py --paths compile        # intercepted, traced and compiled calls (compile=)
    python benchmarks/bench_dispatch.py --paths capture        # intercepted and captured calls (compile="capture")
    python benchmarks/bench_dispatch.py --device cuda --calls 80  # the default (compile="auto" there) over 80 calls
    python benchmarks/bench_dispatch.py --calls 90 --mode auto    # compile="auto" on the CPU, every model, over 90 calls

PatchTST (transformers) and TinyTimeMixer (granite-tsfm) are built tiny from their libraries' config classes, as
the zoo tests build them, tsai's InceptionTimePlus (``inception``) from its constructor, and in torch the fully
convolutional network (``fcn``: convolutions and batch norms, as tsai's and aeon's FCN) and InceptionTime
(``inceptiontime``: tsai's InceptionTimePlus module by module, for where tsai does not install); a model whose library
is missing is skipped (tsai pins scikit-learn < 1.8, outside the constraints file: install it apart,
tests/zoo/test_tsai.py; its torchvision needs a CUDA build of torch).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

#: the source tree whose rnnshap is measured: this one, or RNNSHAP_TREE (set by ``--against`` for the other)
sys.path.insert(0, os.environ.get("RNNSHAP_TREE") or str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402
from rnnshap.engines import cuda_graphs  # noqa: E402

SYNCS = ("aten::_local_scalar_dense", "aten::equal", "aten::nonzero")


class Head(nn.Module):
    """A recurrent layer (batch first) and a linear head on the last step."""

    def __init__(self, layer: nn.Module, hidden: int, outputs: int) -> None:
        super().__init__()
        self.layer, self.head = layer, nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out[:, -1])


class CellLoop(nn.Module):
    """An ``nn.LSTMCell`` run step by step in a Python loop, a linear head on the last state."""

    def __init__(self, features: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.cell, self.head, self.hidden = nn.LSTMCell(features, hidden), nn.Linear(hidden, outputs), hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


class Forecaster(nn.Module):
    """A Hugging Face-style forecaster (``past_values`` in, ``prediction_outputs`` out) as a function of (N, T, F):
    its first ``outputs`` forecast steps of the first channel."""

    def __init__(self, model: nn.Module, outputs: int) -> None:
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(past_values=x).prediction_outputs[:, : self.outputs, 0]


def forecaster(name: str, steps: int, hidden: int, features: int, outputs: int) -> nn.Module:
    """A tiny PatchTST (transformers) or TinyTimeMixer (granite-tsfm) from its library's config class, patches of 10
    steps over a context of ``steps``, width ``hidden``."""
    if name == "patchtst":
        from transformers import PatchTSTConfig, PatchTSTForPrediction

        config = PatchTSTConfig(
            num_input_channels=features, context_length=steps, patch_length=10, patch_stride=10, prediction_length=8,
            d_model=hidden, num_attention_heads=4, num_hidden_layers=2, ffn_dim=2 * hidden, dropout=0.0,
            attention_dropout=0.0, ff_dropout=0.0, head_dropout=0.0,
        )  # fmt: skip
        return Forecaster(PatchTSTForPrediction(config), outputs)
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    config = TinyTimeMixerConfig(
        context_length=steps, patch_length=10, patch_stride=10, prediction_length=8, num_input_channels=features,
        d_model=hidden, num_layers=2, decoder_num_layers=2, decoder_d_model=hidden // 2,
    )  # fmt: skip
    return Forecaster(TinyTimeMixerForPrediction(config), outputs)


class ChannelsFirst(nn.Module):
    """A model on (N, channels, T), as tsai's take, as a function of (N, T, channels)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.transpose(1, 2))


class FCN(nn.Module):
    """The fully convolutional network of Wang et al. (2017), as tsai's ``FCN`` and aeon's ``FCNClassifier`` build it:
    three blocks of ``Conv1d`` (kernels 8, 5, 3; ``hidden``, ``2 hidden``, ``hidden`` filters: the paper's 128, 256,
    128 at the published size), ``BatchNorm1d`` and ReLU, the mean over time, a linear head; on (N, T, channels)."""

    def __init__(self, features: int, hidden: int, outputs: int) -> None:
        super().__init__()
        widths, blocks = (features, hidden, 2 * hidden, hidden), []
        for i, kernel in enumerate((8, 5, 3)):
            blocks += [nn.Conv1d(widths[i], widths[i + 1], kernel, padding="same"), nn.BatchNorm1d(widths[i + 1]), nn.ReLU()]
        self.body, self.head = nn.Sequential(*blocks), nn.Linear(hidden, outputs)
        generator = torch.Generator().manual_seed(0)
        for norm in self.body[1::3]:  # (running statistics of a trained model, not the fresh 0 and 1)
            norm.running_mean.normal_(generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.transpose(1, 2)).mean(-1))


class InceptionModule(nn.Module):
    """One Inception module of InceptionTime (Ismail Fawaz et al., 2020), as tsai's ``InceptionModulePlus`` builds it: a
    1x1 bottleneck (where the input is not already ``nf`` wide), convolutions of kernels 39, 19 and 9 on it, a max-pool
    of 3 then a 1x1 convolution on the input, the four side by side, a batch norm, and a ReLU (``act``)."""

    def __init__(self, ni: int, nf: int, act: bool) -> None:
        super().__init__()
        self.bottleneck = nn.Conv1d(ni, nf, 1, bias=False) if ni != nf else nn.Identity()
        self.convs = nn.ModuleList(nn.Conv1d(nf, nf, k, padding="same", bias=False) for k in (39, 19, 9))
        self.pooled = nn.Sequential(nn.MaxPool1d(3, stride=1, padding=1), nn.Conv1d(ni, nf, 1, bias=False))
        self.norm, self.act = nn.BatchNorm1d(4 * nf), nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        narrow = self.bottleneck(x)
        return self.act(self.norm(torch.cat([conv(narrow) for conv in self.convs] + [self.pooled(x)], 1)))


class InceptionTime(nn.Module):
    """InceptionTime (tsai's default model, ``InceptionTimePlus``, written in torch where tsai does not install): six
    Inception modules of ``nf`` filters a branch (tsai's 32 at the published size), a residual connection around each
    three (a 1x1 convolution and a batch norm where the width changes, else a batch norm; added, then a ReLU), the mean
    over time and a linear head (tsai's head pools with ``AdaptiveAvgPool1d``: the same mean); on (N, T, channels).
    Running statistics set away from 0 and 1, as a trained model's."""

    def __init__(self, features: int, nf: int, outputs: int) -> None:
        super().__init__()
        width = 4 * nf
        self.modules_ = nn.ModuleList(InceptionModule(features if d == 0 else width, nf, act=d % 3 != 2) for d in range(6))
        self.shortcuts = nn.ModuleList([
            nn.Sequential(nn.Conv1d(features, width, 1, bias=False), nn.BatchNorm1d(width)) if features != width
            else nn.BatchNorm1d(width),
            nn.BatchNorm1d(width),
        ])  # fmt: skip
        self.head = nn.Linear(width, outputs)
        generator = torch.Generator().manual_seed(0)
        for norm in (m for m in self.modules() if isinstance(m, nn.BatchNorm1d)):
            norm.running_mean.normal_(generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = residual = x.transpose(1, 2)
        for d, module in enumerate(self.modules_):
            x = module(x)
            if d % 3 == 2:
                x = residual = torch.relu(x + self.shortcuts[d // 3](residual))
        return self.head(x.mean(-1))


def inception(steps: int, hidden: int, features: int, outputs: int) -> nn.Module:
    """tsai's InceptionTimePlus (its default model: 6 Inception modules) from its own constructor, ``hidden // 4``
    filters a branch (tsai's default of 32 at the published size)."""
    from tsai.models.InceptionTimePlus import InceptionTimePlus

    return ChannelsFirst(InceptionTimePlus(features, outputs, seq_len=steps, nf=hidden // 4))


def build(name: str, hidden: int, features: int, outputs: int, steps: int) -> nn.Module:
    if name == "inception":
        return inception(steps, hidden, features, outputs)
    if name in ("patchtst", "ttm"):
        return forecaster(name, steps, hidden, features, outputs)
    if name == "lstm":
        return Head(nn.LSTM(features, hidden, batch_first=True), hidden, outputs)
    if name == "gru":
        return Head(nn.GRU(features, hidden, batch_first=True), hidden, outputs)
    if name == "rnn":
        return Head(nn.RNN(features, hidden, batch_first=True), hidden, outputs)
    if name == "transformer":
        layer = nn.TransformerEncoderLayer(features, 2, hidden, dropout=0.0, batch_first=True)
        return Head(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), features, outputs)
    if name == "cell":
        return CellLoop(features, hidden, outputs)
    if name == "fcn":
        return FCN(features, hidden, outputs)
    if name == "inceptiontime":
        return InceptionTime(features, hidden // 4, outputs)
    raise SystemExit(f"unknown model {name!r}")


#: operations that move no data (views, metadata, allocation, dispatch wrappers): no kernel on a device
NO_KERNEL = frozenset({
    "aten::as_strided", "aten::resolve_conj", "aten::resolve_neg", "aten::view", "aten::_unsafe_view",
    "aten::_reshape_alias", "aten::reshape", "aten::select", "aten::slice", "aten::unbind", "aten::split",
    "aten::split_with_sizes", "aten::chunk", "aten::narrow", "aten::t", "aten::transpose", "aten::expand",
    "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::detach", "detach", "detach_", "aten::detach_",
    "aten::alias", "aten::unflatten", "aten::flatten", "aten::empty", "aten::empty_strided", "aten::lift_fresh",
    "aten::is_same_size", "aten::to", "aten::expand_as", "aten::view_as", "aten::contiguous", "aten::result_type",
    "aten::cudnn_is_acceptable", "aten::movedim", "aten::empty_like", "aten::matmul", "aten::linear", "aten::dropout",
    "aten::resize_", "aten::_has_compatible_shallow_copy_type", "aten::new_empty", "aten::new_empty_strided",
    "aten::unsafe_split", "aten::unsafe_chunk", "aten::is_nonzero",
})  # fmt: skip


def _computes(event: object) -> bool:
    name = event.name  # type: ignore[attr-defined]
    wrapper = name.startswith(("autograd::", "torch::autograd", "rnnshap::")) or "Backward" in name
    if name.startswith("cu"):  # (CUDA's runtime and driver calls: a kernel's launch computes, a query does not)
        return "LaunchKernel" in name
    return name not in NO_KERNEL and not wrapper


def _kernel(event: object) -> bool:
    """An operation that computes and calls no other operation that does: what a device would launch (a matrix
    product is one, however many dispatch levels vmap or ``matmul`` wrap around it)."""

    def below(e: object) -> bool:
        return any(_computes(c) or below(c) for c in e.cpu_children)  # type: ignore[attr-defined]

    return _computes(event) and not below(event)


def count(call: Callable[[], object]) -> tuple[int, int, int]:
    """(events, kernels, host syncs) torch's profiler records in one call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    events = prof.events()
    names = collections.Counter(e.name for e in events)
    return sum(names.values()), sum(map(_kernel, events)), sum(names[s] for s in SYNCS)


def timed(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def floor_of(model: nn.Module, tiled: torch.Tensor, outputs: int | None = None) -> Callable[[], object]:
    """The floor: the model's forward on the tiled pairs and one backward per output (its first ``outputs``). On CUDA
    its recurrent layers run in training mode, where alone cuDNN has their backward (no dropout here: the same
    function)."""
    recurrent = [m for m in model.modules() if isinstance(m, nn.RNNBase)] if tiled.is_cuda else []

    def floor() -> object:
        for m in recurrent:
            m.train()
        try:
            out = model(tiled)
            k = out.shape[1] if outputs is None else outputs
            return [torch.autograd.grad(out[:, i].sum(), tiled, retain_graph=True) for i in range(k)]
        finally:
            for m in recurrent:
                m.eval()

    return floor


def seeded(name: str, steps: int, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model ``name`` (eval mode), its background and the explained samples, from seed 0."""
    torch.manual_seed(0)
    model = build(name, args.hidden, args.features, args.outputs, steps).to(device).eval()
    background = torch.randn(args.references, steps, args.features, device=device)
    return model, background, torch.randn(args.samples, steps, args.features, device=device)


def measure(name: str, steps: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    model, background, X = seeded(name, steps, args, device)
    explainer = rnnshap.DeepExplainer(model, background, compile=False)

    def explain() -> object:
        return explainer.shap_values(X, check_additivity=False)

    tiled = X.repeat_interleave(args.references, 0).requires_grad_(True)

    floor = floor_of(model, tiled)

    explain(), floor()  # the first call (and the explainer's kept passes) aside: the steady state
    explain()  # (and the second, which on a CUDA device captures a long reverse recurrence as a CUDA graph)
    ops, kernels, syncs = count(explain)
    # the host reads an accelerator would make: on the CPU the formulas' surely_* tests read values to skip work (a
    # read costs nothing there); on a device they answer False unread (formulas/torch_ops.readable), as set here
    from rnnshap.formulas import torch_ops

    unread = getattr(torch_ops, "values_unread", None)
    readable = getattr(torch_ops, "readable", None)
    device_syncs = syncs
    if unread is not None:
        with unread():
            device_syncs = count(explain)[2]
    elif readable is not None:  # (an older tree)
        torch_ops.readable = lambda t: False  # type: ignore[assignment]
        try:
            device_syncs = count(explain)[2]
        finally:
            torch_ops.readable = readable
    floor_ops, floor_kernels, floor_syncs = count(floor)
    return {
        "ops": ops, "kernels": kernels, "syncs": syncs, "device_syncs": device_syncs, "ms": timed(explain, args.repeats, device),
        "floor_ops": floor_ops, "floor_kernels": floor_kernels, "floor_syncs": floor_syncs,
        "floor_ms": timed(floor, args.repeats, device),
    }  # fmt: skip


SIZES = {  # hidden, features, samples, references, outputs, time steps
    "tiny": (32, 8, 8, 8, 3, (50, 200)),
    "published": (128, 8, 16, 16, 3, (50, 200)),
}


def rows_of(name: str, lengths: tuple[int, ...], args: argparse.Namespace, tree: str) -> list[dict[str, float]]:
    """One row per length of ``name``: measured here, or with ``tree``'s rnnshap in a process of its own."""
    if not tree:
        return [{"steps": steps, **measure(name, steps, args, torch.device(args.device))} for steps in lengths]
    command = [sys.executable, __file__, "--json", "--models", name, "--size", args.size, "--repeats", str(args.repeats)]
    command += ["--device", args.device, "--outputs", str(args.outputs)]
    command += ["--threads", str(args.threads)] if args.threads else []
    done = subprocess.run(command, env={**os.environ, "RNNSHAP_TREE": tree}, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    if rows and "skipped" in rows[0]:
        raise ImportError(rows[0]["skipped"])
    return rows


def first_call(name: str, steps: int, args: argparse.Namespace, side: str) -> dict[str, float]:
    """In a fresh process (``--first-side``): ``side`` "rnnshap" times building the explainer, its first call and a
    second (steady); "floor" times the floor's first call and a second, and a plain forward on the pairs (steady)."""
    device = torch.device(args.device)
    model, background, X = seeded(name, steps, args, device)

    def clock(call: Callable[[], object]) -> float:
        return timed(call, 1, device)

    if side == "rnnshap":
        import importlib

        built: list[object] = []
        # the modules the first explainer of a process imports (the engine's, which rnnshap imports lazily, and numpy's
        # random generator, which its determinism check draws from): once a process, apart from the build
        ms = {"imports": clock(lambda: [importlib.import_module(m) for m in ("rnnshap.engines.pytorch.engine", "numpy.random")])}
        given = {"compile": "capture"} if args.paths == "capture" else {}
        ms["build"] = clock(lambda: built.append(rnnshap.DeepExplainer(model, background, **given)))
        explainer = built[0]
        ms["first"] = clock(lambda: explainer.shap_values(X))  # type: ignore[attr-defined]
        ms["steady"] = timed(lambda: explainer.shap_values(X), args.repeats, device)  # type: ignore[attr-defined]
        # a second explainer of the same model in the same process: what each explainer pays, apart from what the
        # process pays once (torch's and rnnshap's lazy set-up, memory touched for the first time)
        ms["build_again"] = clock(lambda: built.append(rnnshap.DeepExplainer(model, background, **given)))
        ms["first_again"] = clock(lambda: built[1].shap_values(X))  # type: ignore[attr-defined]
        return ms
    tiled = X.repeat_interleave(args.references, 0).requires_grad_(True)

    floor = floor_of(model, tiled)

    ms = {"floor_first": clock(floor), "floor_steady": timed(floor, args.repeats, device)}
    with torch.no_grad():
        ms["forward"] = timed(lambda: model(tiled), args.repeats, device)
    return ms


def first_calls(args: argparse.Namespace, steps: int, trees: list[str]) -> None:
    """The first call against the steady state, each model and side in a fresh process, with Python's compiled modules
    kept as a user's machine keeps them: the modules rnnshap's first explainer imports (``imports``, once a process,
    not counted in the ratios), building the explainer, its first call, the steady call, and what the
    first call (with the build) costs beyond the steady one, in plain forwards on the pairs; the same of a second
    explainer of the model built after them in the same process (what every explainer pays, without what a process
    pays once); the floor's first and
    steady calls beside (its first call pays torch's own one-time set-up, which rnnshap's build pays in its place)."""
    header = (
        "| model | T | imports ms | build ms | first call ms | steady ms | (build + first - steady) / forward "
        "| a second explainer: build + first ms | its (build + first - steady) / forward "
        "| floor first ms | floor steady ms | (build + first) / floor first |"
    )
    header = "| tree " + header if trees != [""] else header

    def env(tree: str) -> dict[str, str]:
        """A user's process: Python's compiled modules written and read (a setting that turns them off, as some CI
        machines set, would compile every imported module's source in every process), rnnshap from ``tree``."""
        kept = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**kept, "RNNSHAP_TREE": tree} if tree else kept

    for tree in trees:  # compiled once, before any process is timed
        subprocess.run([sys.executable, "-c", "import rnnshap.engines.pytorch.engine"], env=env(tree), check=True,
                       cwd=tree or None, capture_output=True)  # fmt: skip
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, tree in [(name, tree) for name in args.models for tree in trees]:  # (trees alternately, each model)
        m: dict[str, float] = {}
        for side in ("rnnshap", "floor"):
            command = [sys.executable, __file__, "--first-side", side, "--models", name, "--size", args.size]
            command += ["--repeats", str(args.repeats), "--device", args.device, "--outputs", str(args.outputs)]
            command += ["--paths", args.paths] if args.paths == "capture" and side == "rnnshap" else []
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env(tree))
            if done.returncode:
                print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode} |")
                break
            m.update(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            extra = (m["build"] + m["first"] - m["steady"]) / m["forward"]
            again = m["build_again"] + m["first_again"]
            again_extra = (again - m["steady"]) / m["forward"]
            print(
                (f"| {tree} " if tree else "")
                + f"| {name} | {steps} | {m['imports']:.1f} | {m['build']:.1f} "
                f"| {m['first']:.1f} | {m['steady']:.1f} | {extra:.1f} | {again:.1f} | {again_extra:.1f} | "
                f"{m['floor_first']:.1f} | {m['floor_steady']:.1f} | {(m['build'] + m['first']) / m['floor_first']:.2f}x |"
            )


def door(name: str, steps: int, args: argparse.Namespace) -> dict[str, float]:
    """Captum's door (``rnnshap.captum.DeepLiftShap``) on one model, one output (``target=0``, Captum's call): the
    floor (native forward + one backward on the pairs), a kept explainer's steady call of that output, a fresh door
    object's first call (it builds an explainer) and the same object's later calls with the same baselines (median),
    whether those gave the first call's values bit for bit."""
    from rnnshap.captum import DeepLiftShap

    device = torch.device(args.device)
    model, background, X = seeded(name, steps, args, device)
    tiled = X.repeat_interleave(args.references, 0).requires_grad_(True)

    floor = floor_of(model, tiled, outputs=1)

    explainer = rnnshap.DeepExplainer(model, background, compile=False)

    def steady() -> object:
        return explainer.shap_values(X, outputs=[0], check_additivity=False)

    floor(), steady(), steady()
    made: list[DeepLiftShap] = []

    def fresh() -> object:
        made.append(DeepLiftShap(model))
        return made[-1].attribute(X, baselines=background, target=0)

    fresh()  # (the process's first door call aside)
    got: list[torch.Tensor] = []
    first = timed(lambda: got.append(fresh()), 1, device)  # type: ignore[func-returns-value]

    def later() -> object:
        got.append(made[-1].attribute(X, baselines=background, target=0))
        return got[-1]

    times: dict[str, list[float]] = {"floor": [], "steady": [], "later": []}
    for _ in range(args.repeats):  # (alternately: the machine's drift shared)
        for key, call in (("floor", floor), ("steady", steady), ("later", later)):
            times[key].append(timed(call, 1, device))
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {**medians, "first": first, "same": float(all(torch.equal(g, got[0]) for g in got))}


def doors(args: argparse.Namespace, steps: int, trees: list[str]) -> None:
    """:func:`door` for each model, in this tree or each of ``trees`` in its own process, alternately."""
    header = "| model | T | floor ms | explainer steady ms | door first call ms | door later call ms | later / floor "
    header += "| later values the first's |"
    header = "| tree " + header if trees != [""] else header
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, tree in [(name, tree) for name in args.models for tree in trees]:
        try:
            if tree:
                command = [sys.executable, __file__, "--door", "--json", "--models", name, "--size", args.size]
                command += ["--repeats", str(args.repeats), "--device", args.device, "--outputs", str(args.outputs)]
                command += ["--threads", str(args.threads)] if args.threads else []
                environment = {**os.environ, "RNNSHAP_TREE": tree}
                done = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
                m = json.loads(done.stdout.strip().splitlines()[-1])
                if "skipped" in m:
                    raise ImportError(m["skipped"])
            else:
                m = door(name, steps, args)
        except ImportError as missing:
            print(f"| {name} | skipped: {missing} |")
            continue
        print(
            (f"| {tree} " if tree else "")
            + f"| {name} | {steps} | {m['floor']:.1f} | {m['steady']:.1f} | {m['first']:.1f} | {m['later']:.1f} | "
            f"{m['later'] / m['floor']:.2f}x | {'yes' if m['same'] else 'no'} |"
        )


def calls(args: argparse.Namespace, steps: int) -> None:
    """``--calls N``: one explainer of the default (``compile=None``: ``"auto"`` on a CUDA device and, on the CPU, for a
    Python loop of recurrent cells; intercepted otherwise) and one with ``compile=False``, each called N times on the
    same samples, alternately, in one process, beside the floor: every call's wall time summed, the median of the last
    ten, the call that traced (``auto``) and what it took, and the values of the two explainers compared bit for bit at
    every call. ``--mode auto``: ``compile="auto"`` in the default's place (what the default would do on any model)."""
    device = torch.device(args.device)
    other = 'compile="auto"' if args.mode == "auto" else "the default"
    print(
        f"| model | T | calls | floor ms | compile=False: all calls s | its last ten, median ms | {other}: all calls s "
        f"| its last ten, median ms | traced at call | that call s | {other}'s path at the end | values |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        try:
            model, background, X = seeded(name, steps, args, device)
        except ImportError as missing:
            print(f"| {name} | skipped: {missing} |")
            continue
        floor = floor_of(model, X.repeat_interleave(args.references, 0).requires_grad_(True))
        floor_ms = timed(floor, args.repeats, device)
        explainers = {
            "off": rnnshap.DeepExplainer(model, background, compile=False),
            "default": rnnshap.DeepExplainer(model, background, **({"compile": "auto"} if args.mode == "auto" else {})),
        }
        times: dict[str, list[float]] = {key: [] for key in explainers}
        traced_at, same = None, True
        for call in range(args.calls):
            values = {}
            for key, explainer in explainers.items():

                def explain(e: rnnshap.DeepExplainer = explainer, k: str = key) -> None:
                    values[k] = e.shap_values(X, check_additivity=False)

                times[key].append(timed(explain, 1, device) / 1e3)
            same = same and all(np.array_equal(a, b) for a, b in zip(values["off"], values["default"], strict=True))
            done = ("traced:", "compiled:", "intercepted: traced, but")
            if traced_at is None and explainers["default"].pass_path.startswith(done):
                traced_at = call + 1
        last = {key: 1e3 * statistics.median(t[-10:]) for key, t in times.items()}
        path = explainers["default"].pass_path.replace("|", "/")
        print(
            f"| {name} | {steps} | {args.calls} | {floor_ms:.1f} | {sum(times['off']):.2f} | {last['off']:.1f} "
            f"| {sum(times['default']):.2f} | {last['default']:.1f} | {traced_at or '-'} "
            f"| {times['default'][traced_at - 1] if traced_at else 0.0:.2f} | {path[:160]} "
            f"| {'identical' if same else 'DIFFER'} |"
        )


def paths(args: argparse.Namespace, steps: int) -> None:
    """Each model's steady call intercepted (``compile=False``), as a traced program (``"trace"``) and compiled
    (``True``, unless ``--paths trace``), against the floor, in one process: what tracing and compiling cost once (the
    second call, which traces), the steady time of each, the largest difference of the compiled values from the
    intercepted ones (relative to the largest value), and the path the compiled explainer took."""
    device = torch.device(args.device)
    # (label, compile=, whether CUDA graphs are replayed): on CUDA the traced program without and with its CUDA graph
    modes: list[tuple[str, object, str]] = [("traced", "trace", "0" if device.type == "cuda" else "1")]
    if args.paths == "capture":  # the forward captured once and run on pairs (engines/pytorch/captured.py)
        # (and written with its backward as one program at the second call: engines/pytorch/captured_program.py)
        modes = [("captured", "capture", "1"), ("captured as one program", "capture", "1")]
    if device.type == "cuda" and args.paths != "capture":
        modes.append(("traced as a CUDA graph", "trace", "1"))
    if args.paths == "compile":
        modes.append(("compiled", True, "1"))
    header = "| model | T | floor ms | intercepted ms | " + " | ".join(f"{label} ms | its second call s" for label, _, _ in modes)
    header += " | max diff / max | path |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.models:
        try:
            model = build(name, args.hidden, args.features, args.outputs, steps).to(device).eval()
        except ImportError as missing:
            print(f"| {name} | skipped: {missing} |")
            continue
        torch.manual_seed(0)
        background = torch.randn(args.references, steps, args.features, device=device)
        X = torch.randn(args.samples, steps, args.features, device=device)
        tiled = X.repeat_interleave(args.references, 0).requires_grad_(True)

        floor = floor_of(model, tiled)

        floor()
        intercepted = rnnshap.DeepExplainer(model, background, compile=False)
        want = intercepted.shap_values(X, check_additivity=False)
        steady = timed(lambda: intercepted.shap_values(X, check_additivity=False), args.repeats, device)
        cells = [f"{timed(floor, args.repeats, device):.1f}", f"{steady:.1f}"]
        diff, path = 0.0, ""
        for label, mode, graphs in modes:
            cuda_graphs.REPLAY = graphs == "1"
            explainer = rnnshap.DeepExplainer(model, background, compile=mode)
            if label == "captured as one program":  # (written at the plan's third call, timed as the second)
                explainer.engine._captured.write_after = 2  # type: ignore[attr-defined]
                explainer.shap_values(X, check_additivity=False)
            explainer.shap_values(X, check_additivity=False)
            second = timed(lambda: explainer.shap_values(X, check_additivity=False), 1, device) / 1e3  # noqa: B023
            try:
                got = explainer.shap_values(X)  # (additivity checked)
            except rnnshap.AdditivityError as error:  # (a result: the path's values against the intercepted ones still)
                got = explainer.shap_values(X, check_additivity=False)
                print(f"| {name} | {steps} | additivity: {str(error).split('; ')[0]} |")
            steady = timed(lambda: explainer.shap_values(X, check_additivity=False), args.repeats, device)  # noqa: B023
            cells += [f"{steady:.1f}", f"{second:.1f}"]
            diff = float(np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(np.asarray(want)).max())
            path = explainer.pass_path
        cuda_graphs.REPLAY = True
        print(f"| {name} | {steps} | " + " | ".join(cells) + f" | {diff:.1e} | {path} |")


def grow(name: str, steps: int, args: argparse.Namespace) -> None:
    """How the cost grows: ``name`` at ``steps`` with the samples, the references and the outputs doubled in turn,
    time and kernels against the size's own (and the floor's growth beside)."""
    print("| model | T | grown | samples | references | outputs | ms | x base | kernels | x base | floor ms | x base |")
    print("|" + "---|" * 12)
    base = None
    for grown in ("none", "samples", "references", "outputs"):
        sized = argparse.Namespace(**vars(args))
        if grown != "none":
            setattr(sized, grown, 2 * getattr(args, grown))
        m = measure(name, steps, sized, torch.device(args.device))
        base = base or m
        print(
            f"| {name} | {steps} | {grown} | {sized.samples} | {sized.references} | {sized.outputs} | {m['ms']:.1f} | "
            f"{m['ms'] / base['ms']:.2f} | {m['kernels']:,} | {m['kernels'] / base['kernels']:.2f} | {m['floor_ms']:.1f} | "
            f"{m['floor_ms'] / base['floor_ms']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = ["lstm", "gru", "rnn", "transformer", "cell", "patchtst", "ttm", "fcn", "inceptiontime", "inception"]
    parser.add_argument("--models", nargs="+", default=models)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    parser.add_argument("--against", default="", help="another source tree: each model measured in both, alternately")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # (rows as JSON lines, for --against)
    parser.add_argument("--grow", action="store_true", help="the first model with samples, references, outputs doubled in turn")
    parser.add_argument("--first", action="store_true", help="the first call against the steady one, in fresh processes")
    parser.add_argument("--calls", type=int, default=None, help="the default explainer over N calls against compile=False")
    parser.add_argument(
        "--mode", choices=("default", "auto"), default="default", help='with --calls: compile="auto" in the default\'s place'
    )
    parser.add_argument("--door", action="store_true", help="Captum's door (DeepLiftShap): its first and later calls, one output")
    parser.add_argument("--length", type=int, default=None, help="with --paths or --calls: the length (the size's first)")
    parser.add_argument(
        "--paths", choices=("trace", "compile", "capture"),
        help="intercepted, traced (and compiled, with 'compile'), or captured calls against the floor",
    )
    parser.add_argument("--outputs", type=int, default=None, help="the outputs explained (the size's own: 3)")
    parser.add_argument("--first-side", choices=("rnnshap", "floor"), help=argparse.SUPPRESS)  # (one side of --first)
    args = parser.parse_args()
    outputs = args.outputs
    args.hidden, args.features, args.samples, args.references, args.outputs, lengths = SIZES[args.size]
    args.outputs = outputs or args.outputs
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.first_side:
        try:
            print(json.dumps(first_call(args.models[0], lengths[0], args, args.first_side)))
        except ImportError as missing:
            raise SystemExit(f"skipped: {missing}") from missing
        return
    if args.json and args.door:
        try:
            print(json.dumps(door(args.models[0], lengths[0], args)))
        except ImportError as missing:
            print(json.dumps({"skipped": str(missing)}))
        return
    if args.json:
        for name in args.models:
            try:
                print("\n".join(json.dumps(row) for row in rows_of(name, lengths, args, "")))
            except ImportError as missing:
                print(json.dumps({"skipped": str(missing)}))
        return
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; {args.size}: hidden {args.hidden}, "
        f"{args.samples} samples x {args.references} references, {args.outputs} outputs, median of {args.repeats}"
    )
    if args.grow:
        grow(args.models[0], lengths[0], args)
        return
    this = str(Path(rnnshap.__file__).resolve().parents[1])
    trees = [this, str(Path(args.against).resolve())] if args.against else [""]
    if args.first:
        first_calls(args, lengths[0], trees)
        return
    if args.door:
        doors(args, lengths[0], trees)
        return
    if args.paths:
        paths(args, args.length or lengths[0])
        return
    if args.calls:
        calls(args, args.length or lengths[0])
        return
    header = (
        "| model | T | ops | floor ops | ops / floor | ops per step | kernels | floor kernels | kernels per step | syncs "
        "| syncs as on a device | floor syncs | ms | floor ms | time / floor |"
    )
    header = "| tree " + header if args.against else header
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.models:
        for tree in trees:  # (with --against: each tree in its own process, one model at a time, alternately)
            try:
                rows = rows_of(name, lengths, args, tree)
            except ImportError as missing:
                print(f"| {name} | skipped: {missing} |")
                break
            first, last = rows[0], rows[-1]
            per_step, kernels_per_step = ((last[c] - first[c]) / (last["steps"] - first["steps"]) for c in ("ops", "kernels"))
            for m in rows:
                print(
                    (f"| {tree} " if tree else "")
                    + f"| {name} | {m['steps']} | {m['ops']:,} | {m['floor_ops']:,} | {m['ops'] / m['floor_ops']:.1f}x | "
                    f"{per_step:.1f} | {m['kernels']:,} | {m['floor_kernels']:,} | {kernels_per_step:.1f} | {m['syncs']} | "
                    f"{m.get('device_syncs', '')} | "
                    f"{m['floor_syncs']} | {m['ms']:.1f} | {m['floor_ms']:.1f} | {m['ms'] / m['floor_ms']:.2f}x |"
                )


if __name__ == "__main__":
    main()
