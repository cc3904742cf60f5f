"""Are the attributions of a fixed set of PyTorch models bit-identical in two source trees?

A refactor that moves a formula must leave the values of every
PyTorch model unchanged bit for bit: the same float operations in the same order. This script explains
a fixed set of small models (seeded weights and data) and prints, per model, the sha256 of the
attribution's bytes (and of the expected value), so two trees can be compared line by line:

- recurrent: LSTM, GRU, RNN (float32), a bidirectional 2-layer LSTM, an LSTM in float64, LSTM/GRU cells
  looped in Python (and an LSTMCell loop whose rows' checks fail: a context input masks the sequence);
- attention: ``nn.TransformerEncoderLayer`` (layer norm, softmax, GELU), ``nn.MultiheadAttention``;
- normalizations: ``nn.LayerNorm``, ``nn.RMSNorm``, a layer norm written with torch ops (``rsqrt``), batch norm at
  inference (1-d over a transposed input, 2-d; float32, and float64 over 512 channels);
- heads: softmax, log_softmax, logsumexp, max, topk, sort;
- max-pool: 1-d overlapping windows after a convolution, 2-d windows, adaptive; tsai's InceptionTimePlus (when
  tsai is installed), and InceptionTime written in torch (``bench_dispatch.py``'s);
- binary ops of two input-dependent operands (maximum, minimum, pow, fmax, division);
- picked indices: argmax, and its uses gather, index_select from a table, one_hot;
- secant ops: exp, log, sqrt, rsqrt, reciprocal, square, expm1, log1p, exp2, log2, log10, pow (constant
  exponent, constant base), sigmoid, tanh, products, division, at small and large differences;
- the reverse recurrences of ``rnnshap/recurrent/reverse.py`` called directly (masked, packed, with a leading axis);
- ``explain_cell_step`` on an LSTM and a GRU cell;
- foundation models (when the library is installed): a tiny TinyTimeMixer (granite-tsfm) and TiRex;
- Keras on TensorFlow (when both are installed): LSTM and GRU layers through the fused path
  (``rnnshap/engines/keras/fused.py``; each case fails if that path did not run), final output and
  ``return_sequences``, float32 and float64, and one case with blocks of a few steps and the
  coefficients compiled by XLA.

Run it in each tree and compare (``--against`` does both, each in its own process, and exits 1 on any
difference)::

    python benchmarks/identical_values.py --against /tmp/base        # this tree against /tmp/base
    PYTHONPATH=/tmp/base python benchmarks/identical_values.py        # one tree's hashes
    python benchmarks/identical_values.py --only lstm,secant_ops      # a subset (names as printed)

The tree whose ``rnnshap`` is imported is printed first (``PYTHONPATH`` decides it; ``--tree`` too).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _foundation_models() -> Any:
    """tests/zoo/foundation_models.py of this script's own tree (the tiny models the zoo tests build), loaded by path:
    the other tree (``PYTHONPATH``) may not have it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "zoo" / "foundation_models.py"
    spec = importlib.util.spec_from_file_location("foundation_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases() -> dict[str, Callable[[], tuple[Any, ...]]]:
    import torch
    from torch import nn

    import rnnshap
    import rnnshap.foundation

    def explain(model: nn.Module, x: Any, background: Any) -> tuple[Any, ...]:
        explainer = rnnshap.DeepExplainer(model.eval(), background)
        values = explainer.shap_values(x)
        first = explainer.shap_values(x, outputs=[0])  # (one output: a backward without vmap)
        return values, first, np.asarray(explainer.expected_value)

    class Last(nn.Module):
        def __init__(self, rnn: nn.Module, width: int, out: int = 3) -> None:
            super().__init__()
            self.rnn, self.head = rnn, nn.Linear(width, out)

        def forward(self, x: Any) -> Any:
            y, _ = self.rnn(x)
            return self.head(y[:, -1])

    def data(*shape: int, dtype: Any = torch.float32, scale: float = 1.0) -> tuple[Any, Any]:
        return (torch.randn(3, *shape, dtype=dtype) * scale, torch.randn(4, *shape, dtype=dtype) * scale)

    def lstm() -> tuple[Any, ...]:
        torch.manual_seed(0)
        return explain(Last(nn.LSTM(5, 8, batch_first=True), 8), *data(7, 5))

    def gru() -> tuple[Any, ...]:
        torch.manual_seed(1)
        return explain(Last(nn.GRU(5, 8, batch_first=True), 8), *data(7, 5))

    def rnn_tanh() -> tuple[Any, ...]:
        torch.manual_seed(2)
        return explain(Last(nn.RNN(5, 8, batch_first=True), 8), *data(7, 5))

    def bidirectional() -> tuple[Any, ...]:
        torch.manual_seed(3)
        return explain(Last(nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True), 12), *data(6, 5))

    def lstm_float64() -> tuple[Any, ...]:
        torch.manual_seed(4)
        return explain(Last(nn.LSTM(4, 6, batch_first=True), 6).double(), *data(5, 4, dtype=torch.float64))

    class Packed(nn.Module):
        """A packed batch (lengths): the recurrences' masked and active-rows paths."""

        def __init__(self, rnn: nn.Module, width: int) -> None:
            super().__init__()
            self.rnn, self.head = rnn, nn.Linear(width, 3)

        def forward(self, x: Any, lengths: Any) -> Any:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            return self.head(self.rnn(packed)[1][0][-1] if isinstance(self.rnn, nn.LSTM) else self.rnn(packed)[1][-1])

    def packed(rnn: nn.Module, width: int) -> tuple[Any, ...]:
        (x, background), lengths = data(6, 5), torch.tensor([6, 3, 4])
        values, first, expected = explain(Packed(rnn, width), [x, lengths], [background, torch.tensor([6, 6, 2, 5])])
        return (*(np.asarray(v[0]) for v in values), np.asarray(first[0]), expected)  # (the lengths' are 0)

    def lstm_packed() -> tuple[Any, ...]:
        torch.manual_seed(14)
        return packed(nn.LSTM(5, 7, batch_first=True), 7)

    def gru_packed() -> tuple[Any, ...]:
        torch.manual_seed(15)
        return packed(nn.GRU(5, 7, batch_first=True), 7)

    def lstm_projection() -> tuple[Any, ...]:
        torch.manual_seed(16)
        return explain(Last(nn.LSTM(5, 9, proj_size=4, batch_first=True), 4), *data(6, 5))

    def wide() -> tuple[Any, ...]:  # hidden sizes whose rows are no multiple of a vector, more pairs (other BLAS paths)
        torch.manual_seed(17)
        values = [explain(Last(rnn(6, hidden, batch_first=True), hidden), torch.randn(9, 12, 6), torch.randn(11, 12, 6))
                  for rnn in (nn.LSTM, nn.GRU) for hidden in (33, 130)]  # fmt: skip
        return tuple(v for case in values for v in case)

    class Cells(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.gru, self.head = nn.LSTMCell(4, 6), nn.GRUCell(6, 5), nn.Linear(5, 2)

        def forward(self, x: Any) -> Any:
            h = c = x.new_zeros(x.shape[0], 6)
            g = x.new_zeros(x.shape[0], 5)
            for t in range(x.shape[1]):
                h, c = self.lstm(x[:, t], (h, c))
                g = self.gru(h, g)
            return self.head(g)

    def cells() -> tuple[Any, ...]:
        torch.manual_seed(5)
        return explain(Cells(), *data(5, 4))

    class MaskedCells(nn.Module):
        """An LSTMCell loop over a sequence masked by an integer context input: each step's reference side differs
        from sample to sample, so the cells' checks that the rows repeat fail (on the CPU read at once, else after
        the pass, which then runs again)."""

        def __init__(self) -> None:
            super().__init__()
            self.cell, self.head = nn.LSTMCell(3, 5), nn.Linear(5, 2)

        def forward(self, x: Any, scale: Any) -> Any:
            x = x * (torch.arange(x.shape[1]) < scale[:, None] + 2).unsqueeze(-1).to(x.dtype)
            h = c = x.new_zeros(x.shape[0], 5)
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
            return self.head(h)

    def masked_cells() -> tuple[Any, ...]:
        torch.manual_seed(6)
        x, background = data(6, 3)
        explainer = rnnshap.DeepExplainer(MaskedCells().eval(), [background, torch.ones(4, dtype=torch.long)])
        values = explainer.shap_values([x, torch.tensor([1, 2, 3])])
        return np.asarray(values[0]), np.asarray(explainer.expected_value)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True, activation="gelu")
            self.head = nn.Linear(8, 3)

        def forward(self, x: Any) -> Any:
            return torch.softmax(self.head(self.layer(x).mean(1)), -1)

    def transformer() -> tuple[Any, ...]:
        torch.manual_seed(6)
        return explain(Encoder(), *data(5, 8))

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention, self.head = nn.MultiheadAttention(6, 2, batch_first=True), nn.Linear(6, 2)

        def forward(self, x: Any) -> Any:
            y, _ = self.attention(x, x, x)
            return self.head(y[:, -1])

    def attention() -> tuple[Any, ...]:
        torch.manual_seed(7)
        return explain(Attention(), *data(5, 6))

    class Norms(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.rms, self.head = nn.LayerNorm(6), nn.RMSNorm(6), nn.Linear(6, 3)

        def forward(self, x: Any) -> Any:
            c = x - x.mean(-1, keepdim=True)
            handwritten = c * torch.rsqrt((c * c).mean(-1, keepdim=True) + 1e-5)
            return self.head(self.ln(x) + self.rms(x * 2) + handwritten).sum(1)

    def norms() -> tuple[Any, ...]:
        torch.manual_seed(8)
        return explain(Norms(), *data(4, 6))

    class BatchNorms(nn.Module):
        """Batch norm at inference over a transposed (N, L, C), as PatchTST's, and over (N, C, H, W)."""

        def __init__(self, width: int = 6) -> None:
            super().__init__()
            self.wide = nn.Linear(6, width)
            self.bn1, self.bn2, self.head = nn.BatchNorm1d(width), nn.BatchNorm2d(1), nn.Linear(width, 3)
            for bn in (self.bn1, self.bn2):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.1, 3.0)
                bn.weight.data.normal_()

        def forward(self, x: Any) -> Any:
            z = self.wide(x)
            y = torch.tanh(self.bn1(z.transpose(1, 2))).transpose(1, 2) + self.bn2(z[:, None])[:, 0]
            return self.head(y).sum(1)

    def batch_norms() -> tuple[Any, ...]:
        torch.manual_seed(24)
        return explain(BatchNorms(), *data(4, 6))

    def batch_norms_float64() -> tuple[Any, ...]:
        torch.manual_seed(25)
        return explain(BatchNorms(512).double(), *data(4, 6, dtype=torch.float64))

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 6)

        def forward(self, x: Any) -> Any:
            z = self.linear(x) * 3
            parts = [
                torch.softmax(z, -1)[:, :2],
                torch.log_softmax(z, -1)[:, :2],
                torch.logsumexp(z, -1, keepdim=True),
                z.max(-1, keepdim=True).values,
                torch.topk(z, 2, -1).values,
                torch.sort(z, -1).values[:, :2],
            ]
            return torch.cat(parts, -1)

    def heads() -> tuple[Any, ...]:
        torch.manual_seed(9)
        x, background = torch.randn(3, 6), torch.randn(4, 6)
        return explain(Heads(), x, background)

    class SecantOps(nn.Module):
        def forward(self, x: Any) -> Any:
            p = x * x + 0.1  # positive
            parts = [
                torch.exp(x), torch.log(p), torch.sqrt(p), torch.rsqrt(p), torch.reciprocal(p), torch.square(x),
                torch.expm1(x), torch.log1p(p), torch.exp2(x), torch.log2(p), torch.log10(p), p**1.7, p**-0.5,
                p**0.5, p**2, 2.5**x, torch.sigmoid(x), torch.tanh(x), x * torch.sigmoid(x), x / (p + 1),
                torch.pow(p, 3), torch.relu(x), torch.nn.functional.gelu(x), torch.nn.functional.softplus(x),
            ]  # fmt: skip
            return torch.stack([part.sum(-1) for part in parts], -1)

    def secant_ops() -> tuple[Any, ...]:
        torch.manual_seed(10)
        x, background = torch.randn(3, 6), torch.randn(4, 6)
        x[0, :3] = background[0, :3] + torch.tensor([1e-6, 1e-3, 0.0])  # tiny and zero differences
        return explain(SecantOps(), x, background)

    def secant_ops_float64() -> tuple[Any, ...]:
        torch.manual_seed(11)
        x, background = torch.randn(3, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
        x[0, :3] = background[0, :3] + torch.tensor([1e-9, 1e-4, 0.0], dtype=torch.float64)
        return explain(SecantOps(), x, background)

    class BinaryOps(nn.Module):
        def forward(self, x: Any) -> Any:
            p = x * x + 0.1
            parts = [torch.maximum(x, p - 1), torch.minimum(x, -p), torch.pow(p, x), torch.fmax(x, 1 - p), x / p]
            return torch.stack([part.sum(-1) for part in parts], -1)

    def binary_ops() -> tuple[Any, ...]:
        torch.manual_seed(12)
        x, background = torch.randn(3, 6), torch.randn(4, 6)
        x[0, :3] = background[0, :3] + torch.tensor([1e-6, 1e-3, 0.0])
        return explain(BinaryOps(), x, background)

    class Picked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.table = nn.Linear(6, 5), nn.Parameter(torch.randn(5, 3))

        def forward(self, x: Any) -> Any:
            z = self.proj(x)
            idx = z.argmax(-1, keepdim=True)  # a picked index, then its uses
            hot = torch.nn.functional.one_hot(idx[:, 0], 5).float()
            parts = [z.gather(-1, idx), self.table.index_select(0, idx[:, 0]), hot * z]
            return torch.cat(parts, -1)

    def picked() -> tuple[Any, ...]:
        torch.manual_seed(13)
        x, background = torch.randn(3, 6), torch.randn(4, 6)
        return explain(Picked(), x, background)

    class Pools(nn.Module):
        """The max-pool rules: overlapping 1-d windows after a convolution (InceptionTime's), 2-d windows, adaptive."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv1d(4, 6, 3, padding=1), nn.Linear(6 * 9 + 12 + 6 * 2, 3)

        def forward(self, x: Any) -> Any:
            h = torch.relu(self.conv(x))
            parts = [
                nn.functional.max_pool1d(h, 3, stride=1, padding=1), nn.functional.max_pool2d(h[:, None], 2),
                nn.functional.adaptive_max_pool1d(h, 2),
            ]  # fmt: skip
            return self.head(torch.cat([p.flatten(1) for p in parts], 1))

    class MaskedPools(nn.Module):
        """A mask of the sample's on both sides (the reference side's rows then differ per sample), and a 3-d pool
        that returns its indices."""

        def forward(self, x: Any, keep: Any) -> Any:
            h = torch.where(keep[:, None, :], x, 2 * x)
            pooled, _ = nn.functional.max_pool3d(h.view(h.shape[0], 1, 2, 2, -1), 2, return_indices=True)
            return torch.cat([nn.functional.max_pool1d(h, 2).flatten(1), pooled.flatten(1)], 1)

    def pooling() -> tuple[Any, ...]:
        torch.manual_seed(28)
        model, (x, background) = Pools(), data(4, 9)
        one = rnnshap.DeepExplainer(model.eval(), background).shap_values(x[:1])  # (one sample: its own rows)
        keep, keep_bg = torch.rand(3, 8) < 0.5, torch.rand(4, 8) < 0.5
        masked, masked_bg = data(4, 8)
        masked_values = rnnshap.DeepExplainer(MaskedPools(), [masked_bg, keep_bg]).shap_values([masked, keep])[0]
        return (*explain(model, x, background), np.asarray(one), np.asarray(masked_values))

    def inception() -> tuple[Any, ...]:
        """tsai's InceptionTimePlus, tiny (when tsai is installed)."""
        from tsai.models.InceptionTimePlus import InceptionTimePlus

        class ChannelsFirst(nn.Module):
            def __init__(self, model: nn.Module) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: Any) -> Any:
                return self.model(x.transpose(1, 2))

        torch.manual_seed(29)
        return explain(ChannelsFirst(InceptionTimePlus(3, 2, seq_len=12, nf=4)), *data(12, 3))

    def inception_time() -> tuple[Any, ...]:
        """InceptionTime written in torch (``bench_dispatch.py``'s, tsai's modules): max-pools and batch norms at a
        width where the pools' and norms' backward work on tensors of megabytes (3 outputs, and one)."""
        from bench_dispatch import InceptionTime

        torch.manual_seed(30)
        return explain(InceptionTime(3, 16, 3), *data(40, 3))

    def ttm() -> tuple[Any, ...]:
        model = _foundation_models().ttm()
        series = np.sin(np.arange(200) / 5.0) + np.random.default_rng(0).normal(0, 0.1, 200)
        context = np.stack([series[100:116], series[130:146]])
        background = np.stack([series[i : i + 16] for i in (0, 20, 40, 60)])
        result = rnnshap.foundation.explain(model, context, prediction_length=3, background=background)
        return result.values, result.forecast

    def tirex() -> tuple[Any, ...]:
        model = _foundation_models().tirex()
        series = np.sin(np.arange(200) / 5.0) + np.random.default_rng(1).normal(0, 0.1, 200)
        context = np.stack([series[100:116], series[130:146]])
        background = np.stack([series[i : i + 16] for i in (0, 20, 40)])
        result = rnnshap.foundation.explain(model, context, prediction_length=4, background=background)
        return result.values, result.forecast

    def reverse_recurrences() -> tuple[Any, ...]:
        """The reverse recurrences of rnnshap/recurrent/reverse.py called directly: every pair through every step,
        a mask that is no prefix (pairs past their length keep their states), a packed batch's active pairs, a
        leading axis of outputs, an LSTM's projection."""
        from rnnshap.recurrent import reverse

        torch.manual_seed(18)
        steps, pairs, features, hidden, proj = 5, 6, 4, 7, 3
        lengths = torch.tensor([5, 2, 4, 1, 5, 3])
        unsorted = (torch.arange(steps)[:, None] < lengths[None, :])[..., None]  # (T, P, 1), not a prefix
        counts = sorted(lengths.tolist(), reverse=True)
        packed = (torch.arange(pairs)[None, :] < torch.tensor([sum(c > t for c in counts) for t in range(steps)])[:, None])
        active = [int(n) for n in packed.sum(1)]
        layouts = [(None, None), (unsorted, None), (packed[..., None], active)]
        out = []
        for lead in [(), (2,)]:
            for mask, act in layouts:
                for kind, width, h_out in [("lstm", 6, hidden), ("lstm_proj", 6, proj), ("gru", 5, hidden), ("rnn", 1, hidden)]:
                    gates = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn": 1}[kind]
                    coefficients = torch.randn(steps, pairs, width * hidden)
                    d_out, d_h = torch.randn(*lead, steps, pairs, h_out), torch.randn(*lead, pairs, h_out)
                    w_ih, w_hh = torch.randn(gates * hidden, features), torch.randn(gates * hidden, h_out)
                    if kind.startswith("lstm"):
                        w_hr = torch.randn(proj, hidden) if kind == "lstm_proj" else None
                        d_c = torch.randn(*lead, pairs, hidden)
                        out += reverse.lstm_recurrence(coefficients, mask, act, d_out, d_h, d_c, w_ih, w_hh, w_hr)
                    else:
                        recurrence = reverse.gru_recurrence if kind == "gru" else reverse.rnn_recurrence
                        out += recurrence(coefficients, mask, act, d_out, d_h, w_ih, w_hh)
        return tuple(t.numpy() for t in out)

    def cell_step() -> tuple[Any, ...]:
        """explain_cell_step's matrices (rnnshap/recurrent/cell_step.py) of an LSTM and a GRU cell."""
        from rnnshap.recurrent import explain_cell_step

        torch.manual_seed(19)
        x, x_r, h, h_r, c, c_r = (torch.randn(3, size) for size in (4, 4, 5, 5, 5, 5))
        lstm = explain_cell_step(nn.LSTMCell(4, 5), x, (h, c), x_r, (h_r, c_r))
        gru = explain_cell_step(nn.GRUCell(4, 5), x, h, x_r, h_r)
        parts = [*lstm.hidden.values(), *(lstm.cell or {}).values(), lstm.delta_hidden, lstm.delta_cell, *gru.hidden.values()]
        return (*(t.numpy() for t in parts), gru.delta_hidden.numpy())

    def keras_fused(
        layer: str, seed: int, dtype: str = "float32", sequences: bool = False, small_blocks: bool = False
    ) -> tuple[Any, ...]:
        """A Keras model (Input, LSTM or GRU (reset_after), Dense) explained on TensorFlow; raises unless the fused
        path ran for it (an ImportError, reported as skipped, where Keras or TensorFlow is missing)."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras
        import tensorflow as tf  # (the fused path is TensorFlow's)

        try:  # one thread, as torch's: the same reduction order whatever the machine's load
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # (set once, before TensorFlow's first operation)
            pass

        if keras.backend.backend() != "tensorflow":
            raise ImportError("the fused path runs on Keras' TensorFlow backend", name="keras[tensorflow]")
        from rnnshap.engines.keras import fused

        ran: list[str] = []
        saved = {name: getattr(fused, name) for name in ("lstm", "gru", "XLA_ELEMENTS", "_BLOCK_ELEMENTS")}

        def counted(name: str) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                ran.append(name)
                return saved[name](*args)

            return call

        fused.lstm, fused.gru = counted("lstm"), counted("gru")
        if small_blocks:  # blocks of 2 steps of per-pair coefficients, computed by XLA
            fused._BLOCK_ELEMENTS, fused.XLA_ELEMENTS = 2 * 12 * 6 * 6, 0
        try:
            keras.utils.set_random_seed(seed)
            steps, features, units = 7, 4, 6
            recurrent = keras.layers.LSTM if layer == "lstm" else keras.layers.GRU
            head: list[Any] = [keras.layers.Flatten(dtype=dtype)] if sequences else []
            model = keras.Sequential(
                [keras.Input((steps, features), dtype=dtype), recurrent(units, return_sequences=sequences, dtype=dtype),
                 *head, keras.layers.Dense(3, dtype=dtype)]
            )  # fmt: skip
            rng = np.random.default_rng(seed)
            x, background = (rng.normal(size=(n, steps, features)).astype(dtype) for n in (3, 4))
            explainer = rnnshap.DeepExplainer(model, background)
            values = explainer.shap_values(x)
            first = explainer.shap_values(x, outputs=[0])
        finally:
            for name, value in saved.items():
                setattr(fused, name, value)
        if layer not in ran:
            raise RuntimeError(f"the fused path did not run for the Keras {layer} case")
        return np.asarray(values), np.asarray(first), np.asarray(explainer.expected_value)

    return {
        "lstm": lstm,
        "gru": gru,
        "rnn_tanh": rnn_tanh,
        "bidirectional": bidirectional,
        "lstm_float64": lstm_float64,
        "lstm_packed": lstm_packed,
        "gru_packed": gru_packed,
        "lstm_projection": lstm_projection,
        "wide": wide,
        "cells": cells,
        "masked_cells": masked_cells,
        "transformer": transformer,
        "attention": attention,
        "norms": norms,
        "batch_norms": batch_norms,
        "batch_norms_float64": batch_norms_float64,
        "heads": heads,
        "secant_ops": secant_ops,
        "secant_ops_float64": secant_ops_float64,
        "binary_ops": binary_ops,
        "picked": picked,
        "pooling": pooling,
        "inception": inception,
        "inception_time": inception_time,
        "ttm": ttm,
        "tirex": tirex,
        "reverse_recurrences": reverse_recurrences,
        "cell_step": cell_step,
        "keras_lstm": lambda: keras_fused("lstm", 20),
        "keras_gru": lambda: keras_fused("gru", 21),
        "keras_lstm_sequences": lambda: keras_fused("lstm", 22, sequences=True),
        "keras_gru_sequences": lambda: keras_fused("gru", 23, sequences=True),
        "keras_lstm_float64": lambda: keras_fused("lstm", 24, dtype="float64"),
        "keras_gru_float64": lambda: keras_fused("gru", 25, dtype="float64"),
        "keras_lstm_blocks": lambda: keras_fused("lstm", 26, small_blocks=True),
        "keras_gru_blocks": lambda: keras_fused("gru", 27, sequences=True, small_blocks=True),
    }


def hashes(only: list[str] | None) -> dict[str, str]:
    import torch

    torch.set_num_threads(1)  # the same reduction order whatever the machine's load
    out = {}
    for name, case in _cases().items():
        if only and name not in only:
            continue
        try:
            out[name] = _digest(*case())
        except ImportError as error:
            out[name] = f"skipped ({error.name} missing)"
    return out


def _run_tree(tree: str, only: list[str] | None) -> dict[str, str]:
    command = [sys.executable, __file__, "--tree", tree] + (["--only", ",".join(only)] if only else [])
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    lines = [line.split(None, 1) for line in done.stdout.splitlines() if line and not line.startswith("#")]
    return {name: value for name, value in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", help="import rnnshap from this tree (default: as PYTHONPATH and sys.path find it)")
    parser.add_argument("--against", help="compare this tree (the script's own) with another tree, each in its own process")
    parser.add_argument("--only", help="comma-separated case names")
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    if args.against:
        here = str(Path(__file__).resolve().parents[1])
        ours, theirs = _run_tree(here, only), _run_tree(str(Path(args.against).resolve()), only)
        print(f"| case | {args.against} | {here} | same |\n|---|---|---|---|")
        differ = 0
        for name in ours:
            same = ours[name] == theirs.get(name)
            differ += not same
            print(f"| {name} | {theirs.get(name)} | {ours[name]} | {'yes' if same else 'NO'} |")
        print(f"\n{len(ours) - differ} of {len(ours)} identical")
        sys.exit(1 if differ else 0)
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    import rnnshap

    print(f"# rnnshap from {Path(rnnshap.__file__).resolve().parent}")
    for name, value in hashes(only).items():
        print(f"{name} {value}", flush=True)


if __name__ == "__main__":
    main()
