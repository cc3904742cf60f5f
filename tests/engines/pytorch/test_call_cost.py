"""What an explanation costs, structurally: the work a call does beyond its floor (native forward + one backward
per output), counted, not timed (timings are the benchmarks' job: benchmarks/bench_dispatch.py)."""

from __future__ import annotations

import functools
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...models.torch import Composite, RecurrentHead


def _runs_in_a_fresh_process(script: str) -> None:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_first_call_imports_nothing_its_floor_does_not() -> None:
    """The floor's backward (``autograd.grad`` of a scalar) imports nothing; ``autograd.grad`` given ``grad_outputs``
    imports torch's symbolic shapes and sympy on its first use in a process (0.3-0.4 s, 30 times a tiny model's steady
    call). A first call must not pay that for the outputs' one-hot rows."""
    script = (
        "import sys, torch, rnnshap\n"
        "from torch import nn\n"
        "class Head(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lstm = nn.LSTM(3, 8, batch_first=True); self.fc = nn.Linear(8, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.lstm(x)[0][:, -1])\n"
        "torch.manual_seed(0)\n"
        "model = Head().eval()\n"
        "explainer = rnnshap.DeepExplainer(model, torch.randn(4, 6, 3))\n"
        "explainer.shap_values(torch.randn(2, 6, 3))\n"  # two outputs: the batched backward
        "explainer.shap_values(torch.randn(2, 6, 3), outputs=[0])\n"  # one output
        "assert 'sympy' not in sys.modules, 'sympy imported'\n"
    )
    _runs_in_a_fresh_process(script)


def test_a_first_call_through_a_derivative_or_a_selection_imports_nothing_its_floor_does_not() -> None:
    """The rules that take a gradient inside the pass, an activation's derivative where a pair's two points nearly meet
    (a ReLU here; on an accelerator, whose values the formulas do not read, wherever a pair's points might) and a
    selection's backward (``h.gather`` by an ``argmax``), start from their own gradients too: neither may import sympy
    (on an H100 a TransformerEncoder's first call paid 0.5 s for it in its ReLU's derivative)."""
    script = (
        "import sys, torch, rnnshap\n"
        "from torch import nn\n"
        "from rnnshap.formulas.torch_ops import values_unread\n"
        "class Picked(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.a = nn.Linear(4, 6); self.b = nn.Linear(4, 6)\n"
        "    def forward(self, x):\n"
        "        u, h = torch.relu(self.a(x)), self.b(x)\n"
        "        return torch.cat([h.gather(1, u.argmax(1, keepdim=True)), u.sum(1, keepdim=True)], 1)\n"
        "torch.manual_seed(0)\n"
        "model, X = Picked().eval(), torch.randn(3, 4)\n"
        "explainer = rnnshap.DeepExplainer(model, torch.cat([X, torch.randn(3, 4)]))\n"  # pairs whose points meet
        "with values_unread():\n"
        "    explainer.shap_values(X)\n"
        "explainer.shap_values(X)\n"
        "assert 'sympy' not in sys.modules, 'sympy imported'\n"
    )
    _runs_in_a_fresh_process(script)


@pytest.mark.parametrize("batched", [False, True])
def test_gradient_without_the_size_check_is_autograds_bit_for_bit(batched: bool) -> None:
    """``rnnshap.formulas.torch_ops.gradient`` runs autograd's engine as ``torch.autograd.grad`` runs it after its
    size check: the same gradients bit for bit (with ``is_grads_batched`` too), an input the output does not reach
    None, and the graph kept where asked."""
    from rnnshap.formulas.torch_ops import gradient

    generator = torch.Generator().manual_seed(3)
    a = torch.randn(5, 4, generator=generator, requires_grad=True)
    b = torch.randn(4, 3, generator=generator, requires_grad=True)
    unused = torch.randn(2, requires_grad=True)
    out = torch.tanh(a @ b) * torch.sigmoid(a[:, :3])
    grad = torch.randn((7, 5, 3) if batched else (5, 3), generator=generator)
    want = torch.autograd.grad(out, [a, b, unused], grad, retain_graph=True, allow_unused=True, is_grads_batched=batched)
    got = gradient(out, grad, [a, b, unused], retain_graph=True, batched=batched)
    assert got[2] is None and want[2] is None
    for g, w in zip(got[:2], want[:2], strict=True):
        assert g is not None and w is not None and g.shape == w.shape and torch.equal(g, w)
    again = gradient(out, grad, [a], batched=batched)  # the graph was kept; now it is freed
    assert again[0] is not None and torch.equal(again[0], want[0])
    with pytest.raises(RuntimeError):
        gradient(out, grad, [a], batched=batched)


def test_gradient_takes_the_public_call_where_the_engine_is_not_torchs_of_2_4_to_2_13(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where autograd's engine is missing or takes its arguments otherwise (``_engine()`` says False), ``gradient`` is
    ``torch.autograd.grad`` itself; the same values."""
    from rnnshap.formulas import torch_ops

    a = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    grad = torch.ones(4, 3)
    want = torch.autograd.grad(torch.exp(a), [a], grad)[0]
    monkeypatch.setattr(torch_ops, "_ENGINE", False)
    got = torch_ops.gradient(torch.exp(a), grad, [a])[0]
    assert got is not None and torch.equal(got, want)


class _RaisesTypeError(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        _RaisesTypeError.calls += 1
        raise TypeError("a rule's own fault")


def test_a_type_error_inside_a_backward_is_raised_once_not_retried() -> None:
    """``gradient`` decides once how to call autograd's engine; an error inside the backward (a rule's fault) is
    raised as it is, the backward run once."""
    from rnnshap.formulas.torch_ops import gradient

    x = torch.randn(3, requires_grad=True)
    _RaisesTypeError.calls = 0
    with pytest.raises(TypeError, match="a rule's own fault"):
        gradient(_RaisesTypeError.apply(x), torch.ones(3), [x])
    assert _RaisesTypeError.calls == 1


def _metadata_reads(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """tanh(Linear) that reads its input's shape, dtype and device ``m.reads`` times first (``nn.LSTMCell`` reads
    ``input.dim()`` four times a step)."""
    for _ in range(m.reads):
        assert x.dim() == x.ndim == 2 and x.size(1) == x.shape[1] == 4 and x.dtype == torch.float32
        assert x.device.type == "cpu" and x.is_floating_point()
    return torch.tanh(m.lin(x))


def test_reading_a_shape_dtype_or_device_is_not_an_intercepted_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of a tensor's shape, dtype or device reads no value: there is nothing to follow or record, and the
    pass hands it to torch before any of its interception (12 us a read: 2.5 ms of a tiny ``LSTMCell`` loop's call at
    T = 50). The operations a call intercepts do not grow with such reads; the values are those without them."""
    from rnnshap.engines.pytorch.passes import AttributionMode

    seen: list[str] = []
    intercept = AttributionMode.intercept

    def counted(self: AttributionMode, func: object, *args: object, **kwargs: object) -> object:
        seen.append(getattr(func, "__name__", str(func)))
        return intercept(self, func, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AttributionMode, "intercept", counted)
    generator = torch.Generator().manual_seed(1)
    background, X = torch.randn(6, 4, generator=generator), torch.randn(3, 4, generator=generator)
    intercepted, values = [], []
    for reads in (0, 25):
        torch.manual_seed(0)
        explainer = rnnshap.DeepExplainer(Composite(_metadata_reads, reads=reads, lin=nn.Linear(4, 2)).eval(), background)
        explainer.shap_values(X)
        seen.clear()
        values.append(explainer.shap_values(X))
        intercepted.append(list(seen))
    assert intercepted[1] == intercepted[0], intercepted[1]
    assert np.array_equal(values[0], values[1])


def test_one_output_and_several_take_the_same_values() -> None:
    """The one-output backward (from a scalar, the plain recurrence) and the batched one (one-hot rows under vmap,
    the recurrence's operator) give the same values bit for bit."""
    torch.manual_seed(1)
    explainer = rnnshap.DeepExplainer(RecurrentHead("gru", 3, 8, 2, names="gru fc").eval(), torch.randn(5, 7, 3))
    x = torch.randn(3, 7, 3)
    both = explainer.shap_values(x)  # (samples, steps, features, outputs)
    for k in range(2):
        alone = explainer.shap_values(x, outputs=[k])
        assert alone.shape == both.shape[:-1] + (1,)
        assert (alone[..., 0] == both[..., k]).all()


class _Reads(torch.overrides.TorchFunctionMode):
    """Counts the calls that read a tensor's values back to Python (a host sync on an accelerator)."""

    READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "equal", "nonzero", "numpy"})

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.reads += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


class _Buffers(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        for i in range(n):
            self.register_buffer(f"b{i}", torch.randn(3, 4))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def test_the_model_state_is_put_back_with_one_read_however_many_buffers() -> None:
    """After each pass the model's buffers are compared with their copies: read back once for all of them (one host
    sync where nothing changed, the common case), not once per buffer (PatchTST: 25 a pass)."""
    from rnnshap.engines.pytorch.safety import PreservedState

    model = _Buffers(20)
    state = PreservedState(model)
    with _Reads() as spy:
        state.restore()
    assert spy.reads == 1


def test_buffers_written_in_any_way_are_put_back_bit_for_bit() -> None:
    """In place, through ``.data`` (which bumps no version counter), resized, replaced, with NaN: all put back."""
    from rnnshap.engines.pytorch.safety import PreservedState

    model = _Buffers(4)
    before = {name: b.clone() for name, b in model.named_buffers()}
    objects = {name: b for name, b in model.named_buffers()}
    model.b0[0, 0] = float("nan")
    state = PreservedState(model)  # (a NaN held before is the state to put back)
    before["b0"] = model.b0.clone()
    model.b0.fill_(1.0)
    model.b1.data.mul_(2.0)
    model.b2.resize_(5)
    model.b3 = torch.zeros(3, 4)
    model.steps += 1
    state.restore()
    for name, b in model.named_buffers():
        assert b is objects[name]
        assert b.shape == before[name].shape and torch.equal(b.nan_to_num(7.0), before[name].nan_to_num(7.0))


_SYNCS = {"_local_scalar_dense", "equal", "nonzero", "is_nonzero"}


@pytest.mark.parametrize(
    ("family", "most"),
    [("lstm", 8), ("elman", 8), ("lstm cell in a loop", 8), ("transformer encoder", 8), ("gru, two layers, bidirectional", 10)],
)
def test_a_call_on_a_device_reads_the_device_at_most_8_times_at_any_length(family: str, most: int) -> None:
    """Each host read (``.item()``, ``bool(t)``, ``torch.equal``, ``nonzero``) stalls an accelerator until its queue has
    run. A steady call makes at most 8 (the input checks before the pass, the rows' and the contributions' after it),
    the same at every sequence length: counted as on a device (the formulas' value tests answering unread,
    ``values_unread``), on the CPU. A recurrent layer reads whether its rows repeat once per layer and direction (a
    stacked bidirectional GRU four times, a read more than a layer of one direction for each of the other three)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from rnnshap.formulas.torch_ops import values_unread

    from .test_traced import FAMILIES, F

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Reads.count += func.overloadpacket.__name__ in _SYNCS
            return func(*args, **(kwargs or {}))

    counts = []
    for steps in (4, 9):
        torch.manual_seed(0)
        explainer = rnnshap.DeepExplainer(FAMILIES[family]().eval(), torch.randn(5, steps, F))
        X = torch.randn(3, steps, F)
        explainer.shap_values(X, check_additivity=False)  # (the first call aside)
        Reads.count = 0
        with values_unread(), Reads():
            explainer.shap_values(X, check_additivity=False)
        counts.append(Reads.count)
    assert counts[0] == counts[1] and counts[0] <= most, counts


def _device_reads(model: nn.Module, steps: int = 6, features: int = 4) -> int:
    """The host reads of one steady call, counted as on a device (the formulas' value tests answering unread)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from rnnshap.formulas.torch_ops import values_unread

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Reads.count += func.overloadpacket.__name__ in _SYNCS
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    explainer = rnnshap.DeepExplainer(model.eval(), torch.randn(5, steps, features))
    X = torch.randn(3, steps, features)
    explainer.shap_values(X, check_additivity=False)  # (the first call aside)
    with values_unread(), Reads():
        explainer.shap_values(X, check_additivity=False)
    return Reads.count


@pytest.mark.parametrize("kind", ["softmax", "attention"])
def test_softmaxes_read_the_device_once_a_call_however_many(kind: str) -> None:
    """The softmax rule's test of rows masked throughout (which take its longer decomposition) is read with the rows'
    checks after the pass, not at each softmax: a model with four softmaxes, or four attention layers, reads the device
    as often as one with one (TinyTimeMixer has eight, one read each before)."""
    from ...models.torch import Composite

    def model(layers: int) -> nn.Module:
        if kind == "softmax":
            return Composite(
                lambda m, x: m.head(functools.reduce(lambda h, f: torch.softmax(f(h), -1), m.mix, x).flatten(1)),
                mix=nn.ModuleList([nn.Linear(4, 4) for _ in range(layers)]), head=nn.Linear(24, 2),
            )
        layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
        encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        return Composite(lambda m, x: m.head(m.encoder(x)[:, -1]), encoder=encoder, head=nn.Linear(4, 2))

    assert _device_reads(model(4)) == _device_reads(model(1))


def test_a_softmax_whose_rows_are_masked_throughout_gets_the_values_of_reading_at_once() -> None:
    """Where the deferred test fails (a row ``-inf`` throughout on both sides, which the fused node does not handle),
    the call runs its passes again with each test read at once: the values are those of an explainer that never
    deferred, bit for bit, and later calls read at once (no pass run twice a call)."""
    from ...models.torch import Composite

    def masked(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        scores = m.mix(x).masked_fill(torch.arange(x.shape[1])[:, None] == 0, float("-inf"))  # (step 0's row)
        return m.head(torch.softmax(scores, -1).nan_to_num(0.0).flatten(1))

    torch.manual_seed(0)
    model = Composite(masked, mix=nn.Linear(4, 4), head=nn.Linear(24, 2)).eval()
    background, X = torch.randn(5, 6, 4), torch.randn(3, 6, 4)
    deferring, at_once = rnnshap.DeepExplainer(model, background), rnnshap.DeepExplainer(model, background)
    at_once.engine._defer_checks = False
    first = deferring.shap_values(X)
    assert not deferring.engine._defer_checks
    assert np.array_equal(first, at_once.shap_values(X)) and np.array_equal(deferring.shap_values(X), first)


def test_the_nan_checks_of_a_pass_say_which_group_holds_a_nan_in_one_read() -> None:
    """``holds_nan`` answers per group (the explained rows, the references) from one host read, however many tensors
    (70 in a group: more than the bits of one integer) and whatever their types (integer inputs hold no NaN)."""
    from rnnshap.engines.pytorch.checks import holds_nan

    clean, gappy, ids = torch.ones(3), torch.tensor([1.0, float("nan")]), torch.arange(3)
    assert holds_nan([clean] * 70, [gappy]) == [False, True]
    assert holds_nan([clean] * 70 + [gappy], [clean, ids]) == [True, False]
    assert holds_nan([ids], [], [gappy, gappy]) == [False, False, True]
    reads = _Reads()
    with reads:
        holds_nan([clean] * 5 + [gappy], [clean] * 5)
    assert reads.reads == 1
