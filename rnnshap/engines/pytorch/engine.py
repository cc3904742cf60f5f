"""The PyTorch engine: blocks of (sample, reference) pairs through the reference tape.

For each block, the reference pass runs the model on the reference side of every pair (recording
the operands of each nonlinear operation), the input pass replays it on the input side through the
rules, and one backward pass per selected output (batched) gives the multipliers.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any, Callable, Iterator, Mapping, NoReturn

import numpy as np
import torch
from torch import nn

from ...errors import InputError, RnnShapError, TapeMismatchError, UnsupportedOperationError
from ...rules.base import PairGrid, Rule
from ...rules.missing import tracking_missing_values
from ...rules.registry import DEFAULT_REGISTRY, RuleRegistry
from ...rules.selection import topk_of_every_position
from ..base import Block, BlockResult, Engine
from ..outputs import OutputChoice, OutputLayout, output_parts
from .discrete import CONTEXT, MASK, NUMBER, TOKEN
from .keras_on_torch import KerasModule
from .passes import AttributionMode
from .runner import PassSettings, run_pass
from .safety import (
    PreservedState,
    RandomStates,
    as_tensors,
    check_matching,
    check_meta,
    check_model,
    model_device_and_dtype,
)
from .tape import Tape, TapeEntry, batch_axis, repeat_along

Tensor = torch.Tensor


class TorchEngine(Engine):
    """DeepSHAP for an ``nn.Module`` (see :mod:`rnnshap.engines.pytorch.passes`)."""

    name = "pytorch"
    gives_multipliers = True

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        rules: Mapping[Any, Rule] | None = None,
        output: OutputChoice = None,
        input_names: list[Any] | None = None,
    ) -> None:
        check_model(model)
        self.model = model
        #: the keys of a model called with a dict of inputs (``model`` is then ``DictInputs``), else None
        self.input_names = input_names
        #: which output tensor is explained (``output=``), and where each sits in the output vector
        self.outputs = OutputLayout(output)
        self.registry: RuleRegistry = DEFAULT_REGISTRY.merged(dict(rules)) if rules else DEFAULT_REGISTRY
        self.multi_input = isinstance(data, (list, tuple))
        #: a Python list of Python lists or numbers (``bg.tolist()``), read as one input per item
        self._nested_list = self.multi_input and len(data) > 0 and all(isinstance(d, (list, tuple, int, float)) for d in data)
        self.device, self.model_dtype = model_device_and_dtype(model)
        self.background = as_tensors(data, "background", self.multi_input, self.device, self.model_dtype)
        check_matching(self.background, self.background, "background")
        check_meta(model, lambda: model(*[b[:2].clone() for b in self.background]))
        self.references = int(self.background[0].shape[0])
        #: float inputs whose comparison with a value is a mask taken from the explained sample on both sides
        #: of its pairs (index → the value: a Keras Masking on the torch backend, see keras_on_torch.py)
        self.masked_inputs: dict[int, frozenset[float]] = model.masked_inputs if isinstance(model, KerasModule) else {}
        # The background runs as a reference pass, which also finds unsupported operations now and
        # tells which integer inputs are token ids (they feed an embedding), numbers (cast to float)
        # and context (see passes.discrete). Boolean inputs are masks: always context.
        integer_inputs = [i for i, b in enumerate(self.background) if not b.is_floating_point() and b.dtype != torch.bool]
        outputs, probe = self._probe(integer_inputs)
        #: integer inputs a comparison reads into a mask (lengths: `arange(T) < lengths[:, None]`), other
        #: than token ids: metadata, context wherever they are used (a cast to float included), so not followed
        self.compared_inputs = sorted(i for i, u in probe.discrete.uses.items() if MASK in u and TOKEN not in u)
        if self.compared_inputs:
            integer_inputs = [i for i in integer_inputs if i not in self.compared_inputs]
            outputs, probe = self._probe(integer_inputs)
        if probe.discrete.unfollowable and len(integer_inputs) > 1:
            # Positions were lost where integers of several inputs met (ids.masked_fill(mask == 0, pad)
            # with `mask` an integer input). Context inputs are not followed when attributing, so
            # tell each input's role alone, and probe again following the attributed ones only.
            alone = {i: self._probe([i])[1].discrete for i in integer_inputs}
            attributed = [i for i, d in alone.items() if i in d.unfollowable or {TOKEN, NUMBER} & set(d.uses.get(i, {}))]
            if attributed != integer_inputs:
                outputs, probe = self._probe(attributed)
        uses = probe.discrete.uses
        for index in sorted(uses):
            _check_integer_uses(index, uses[index], probe.discrete.unfollowable.get(index))
        #: integer inputs attributed per token at the embedding they feed
        self.token_inputs = sorted(i for i in uses if TOKEN in uses[i])
        #: integer inputs cast to floating point: attributed as numbers at the cast
        self.number_inputs = sorted(i for i in uses if NUMBER in uses[i])
        self.followed_inputs = sorted(self.token_inputs + self.number_inputs)
        if not self.followed_inputs and not any(b.is_floating_point() for b in self.background):
            raise InputError(
                "No input is floating point, feeds an embedding or is cast to floating point, so there is nothing to attribute to"
            )
        if outputs.dim() == 0 or outputs.shape[0] != self.references:
            raise InputError(
                f"The model maps {self.references} background rows to an output of shape "
                f"{tuple(outputs.shape)}; rnnshap needs the output's first dimension to be the batch."
            )
        self.output_shape = tuple(outputs.shape[1:])
        # the least precise dtype the model computes input-dependent values in (a float64 model that
        # casts to float32 inside, as Keras' matmul on torch does, adds up to float32 precision only)
        computed = [d for d in probe.dtypes if d.is_floating_point] or [self.model_dtype or outputs.dtype]
        least = max(computed, key=lambda d: torch.finfo(d).eps)
        if probe.unordered_topks:
            self._check_unordered_topk(outputs, probe.unordered_topks, torch.finfo(least).eps)
        self._check_rows_independent(torch.finfo(least).eps, outputs)
        self.background_outputs = numpy(outputs).astype(np.float64)
        _check_missing_values_handled(self.background, outputs.reshape(self.references, -1), "background")
        self.dtype = str(least).replace("torch.", "")
        given = [d for d in [self.model_dtype, *(b.dtype for b in self.background)] if d is not None and d.is_floating_point]
        #: where the model computes in a less precise dtype than its parameters and inputs (Keras' matmul on
        #: torch casts float64 to float32): said by the additivity check's report
        self.precision_note: str | None = None
        if given and torch.finfo(least).eps > min(torch.finfo(d).eps for d in given):
            most = min(given, key=lambda d: torch.finfo(d).eps)
            self.precision_note = (
                f"The model's parameters and inputs are {str(most).replace('torch.', '')}, but it computes in {self.dtype} "
                f"inside (first at {probe.dtype_origins.get(least, 'an operation')}): its attributions add up to {self.dtype} "
                f"precision, and the check uses {self.dtype}'s tolerance."
            )
        #: the tapes and outputs of reference passes on distinct references, by (r0, r1, the context's bytes) (see
        #: _distinct_reference_pass)
        self._kept_tapes: dict[Any, tuple[list[TapeEntry], Tensor, int]] = {}
        #: blocks whose reference pass is not kept (over the bytes allowed, or no plain forward gives its outputs)
        self._unkept: set[Any] = set()
        #: kept tapes not yet vetted by a plain forward (the constructor's reference pass, see ``_keep``)
        self._unchecked: set[Any] = set()
        #: during a call of the front door (:meth:`call`), the kept tapes vetted (or recorded) in it; None outside one,
        #: where every block vets what it reuses
        self._vetted: set[Any] | None = None
        #: kept tapes over the bytes kept between calls, held for the first call only (the constructor's reference
        #: pass, which that call would run again: see ``_keep``)
        self._first_call_only: set[Any] = set()
        #: kept tapes whose plain forward gives the pass's outputs with autograd recording (see ``_computes``)
        self._vetted_with_grad: set[Any] = set()
        #: context inputs (not floating point, not followed: masks, lengths), taken from the explained sample on both
        #: sides of its pairs
        self.context_inputs = [
            i for i, b in enumerate(self.background) if not b.is_floating_point() and i not in self.followed_inputs
        ]
        #: whether a block's reference pass may run on its references alone and be kept for later blocks and calls
        #: (where its samples share their context inputs' values): for a block of one sample that pass is the
        #: pairs' own; for several, see :attr:`distinct_references`
        self._distinct_allowed = not self.followed_inputs and not self.masked_inputs
        #: whether the model lays out its rows so that a tape repeats for several samples (``_rows_alone``, run
        #: where a block of several samples first asks: an explanation of one window never pays for it)
        self._rows_laid_out: bool | None = None
        if self._distinct_allowed and not self.context_inputs and not probe.drew and not probe.random_draws:
            # the probe ran the reference pass on every background row: the tape of the block of all references
            # (kept unchecked: its first reuse runs the plain forward that vets a kept tape, but in a call of a door that
            # built the explainer just before; over the bytes kept between calls, held for the first call only)
            self._keep(Block(0, 0, 0, self.references), (), probe.tape, outputs, None, first_call=True)

    @property
    def distinct_references(self) -> bool:
        """Whether a block of several samples runs its reference pass on its distinct references only, the tape then
        repeated for its samples (see ``_rows_alone``, checked on first use); set to False, every block runs its
        reference pass on its pairs."""
        if self._distinct_allowed and self._rows_laid_out is None:
            self._rows_laid_out = self._rows_alone()
        return self._distinct_allowed and bool(self._rows_laid_out)

    @distinct_references.setter
    def distinct_references(self, value: bool) -> None:
        self._distinct_allowed = self._distinct_allowed and value

    def _rows_alone(self) -> bool:
        """Whether the reference pass may run on a block's distinct references, its tape then repeated
        along each operand's batch axis for the input pass (``Tape.repeats``): the model must compute
        every row alone, and lay each operand out with the batch's rows as whole blocks along one axis
        (a time-major fold of batch and time would not be). Checked on the values: run on a few
        background rows and on the same rows twice over (two samples' pairs), every operand the
        second pass records must be the first one's repeated so, and so must the output. The rows are
        a few background rows slightly perturbed, so that rows that are equal (all zero baselines) or
        constant along an axis cannot hide a wrong layout (context inputs, masks and lengths, are the
        rows' own, unperturbed)."""
        m = min(self.references, 4)
        if m < 2:
            return False
        generator = torch.Generator(device="cpu").manual_seed(0)

        def perturbed(b: Tensor) -> Tensor:
            if not b.is_floating_point():  # context (masks, lengths): the rows' own values
                return b[:m]
            spread = 0.01 * (float(b.nan_to_num().std()) if b.numel() > 1 else 0.0) + 1e-3  # (NaN: missing values)
            noise = torch.randn(b[:m].shape, generator=generator, dtype=torch.float64)
            return b[:m] + (spread * noise).to(b.dtype).to(b.device)

        rows = [perturbed(b) for b in self.background]
        try:
            with torch.no_grad():
                once, twice = Tape(), Tape()
                copies = [r.clone() for r in rows]
                out_once, _ = run_pass(self.model, copies, self.registry, once, PassSettings(replay=False, take=self._take))
                doubled = [r.repeat(2, *[1] * (r.dim() - 1)) for r in rows]
                grid = PairGrid(2, m)
                out_twice, _ = run_pass(
                    self.model, doubled, self.registry, twice,
                    PassSettings(replay=False, pairs=grid, take=self._take),
                )
        except Exception:  # noqa: BLE001 (then every pair runs as before; the probe has vetted the model)
            return False
        if len(once.entries) != len(twice.entries) or not _repeats(out_once, out_twice, 0):
            return False
        for a, b in zip(once.entries, twice.entries, strict=True):
            if a.key != b.key or a.tracked != b.tracked or len(a.references or ()) != len(b.references or ()):
                return False
            if not a.tracked:  # a decision: the same on both
                if not all(torch.equal(x, y) for x, y in zip(a.references or (), b.references or (), strict=True)):
                    return False
                continue
            axes = [batch_axis(x, y, 2) for x, y in zip(a.shapes, b.shapes, strict=True)]
            pairs = zip(a.references or (), b.references or (), axes, strict=True)
            if -1 in axes or not all(_repeats(x, y, axis) for x, y, axis in pairs):
                return False
            if a.output is None or b.output is None or a.output.shape != a.shapes[0]:
                continue
            if not _repeats(a.output, b.output, axes[0]):
                return False
        return True

    def _check_unordered_topk(self, probed: Tensor, names: set[str], eps: float) -> None:
        """Refuse a model whose output depends on the order of a ``topk`` of every position unsorted (``names``).
        rnnshap's passes take its positions in their own order (rules/selection.py), one of the orders torch may
        return: ``probed``, the probe's outputs on the background, are the model's in that order. The model's own
        forward (torch's order) and one with the positions reversed must give them again, up to the rounding of 1e3
        ``eps`` (as the rows check allows); otherwise the output reads the order, and no order is the model's."""
        state, randoms = PreservedState(self.model), RandomStates(self.model)

        def run(reverse: bool | None) -> Any:
            try:
                with torch.no_grad(), (contextlib.nullcontext() if reverse is None else _UnorderedTopk(reverse)):
                    return self._take(self.model(*[b.clone() for b in self.background]))
            finally:
                state.restore()

        try:
            for reverse, order in ((None, "torch's"), (True, "the reversed")):
                try:
                    out = run(reverse)
                except Exception:  # noqa: BLE001 (a model that fails here: the passes report what fails)
                    return
                if isinstance(out, Tensor) and out.shape == probed.shape and _repeats_close(out, probed, eps):
                    continue
                gap = float((out - probed).abs().max()) if isinstance(out, Tensor) and out.shape == probed.shape else None
                how = f"differ by up to {gap:.3g}" if gap is not None else "differ"
                why = (
                    "with sorted=False it returns every position in an order torch does not specify, and the model's output "
                    f"depends on that order (the outputs of the {self.references} background rows in {order} order and in "
                    f"the positions' own {how}): use sorted=True, or make the output independent of the order"
                )
                raise UnsupportedOperationError([(name, why, "selection") for name in sorted(names)])
        finally:
            randoms.drawn()  # (the generators put back: a forward that draws, checked not to matter before)

    def _check_rows_independent(self, eps: float, probed: Tensor) -> None:
        """Refuse a model whose output for one row depends on the other rows of the batch: run on (up
        to 64 of) the background's rows in reverse order, its outputs must be the reversed outputs, and
        run in two halves, the outputs of the whole, up to rounding (1e3 ``eps`` of the least precise dtype the
        model computes in or of its output's, relative to the outputs' scale: float32 kernels that sum in another
        order for another batch are allowed, in a float64 model that computes in float32 too). A
        recurrent layer without ``batch_first`` given (batch, time, features) reads axis 0 as time, and row
        b's output then depends on rows 0..b; a statistic over the batch (a mean) is the same in either
        order and differs between the halves. Before refusing, both orders run again: a forward whose outputs change
        from call to call is not judged here (four plain forwards where the rows pass, six where they do not).

        Most models pass, and for them one forward's worth of rows is enough: the reversed rows run in two halves,
        and their outputs are compared with ``probed``, the probe's outputs on the whole background (a row-mixing
        model changes them by either test); only where they differ do the two tests above run apart, to say which
        one fails.

        Those tolerances are floored at an output scale of 1 (kernels round relative to the values they sum, which can
        be larger than the outputs), so a coupling smaller than 1e3 ``eps`` in absolute terms passes them: where the
        outputs compared are not that close relative to their own scale, a third test keeps the batch size (the same
        kernels): the first half of the rows kept and the others replaced, the kept rows' outputs must come again, up to
        1e3 ``eps`` of the outputs' scale (transformers' Autoformer with two heads moved its forecasts by 3e-3 of their
        scale of 0.03 this way)."""
        m = min(self.references, 64)
        if m < 2:
            return
        rows = [b[:m] for b in self.background]
        order = torch.arange(m - 1, -1, -1, device=rows[0].device)
        state = PreservedState(self.model)

        def run(index: Tensor | None, part: slice | None = None) -> Any:
            try:
                with torch.no_grad():
                    picked = [r if index is None else r[index] for r in rows]
                    return self._take(self.model(*[(p if part is None else p[part]).clone() for p in picked]))
            finally:
                state.restore()

        if m == self.references and probed.shape[:1] == (m,):
            try:
                apart = torch.cat([run(order, part) for part in (slice(0, m // 2), slice(m // 2, m))])
            except Exception:  # noqa: BLE001 (the tests apart say whether the model runs on fewer rows)
                apart = None
            if isinstance(apart, Tensor) and apart.shape == probed.shape and _repeats_close(probed[order], apart, eps):
                if _close_to_scale(probed[order], apart, eps):
                    return
                coupled = self._coupled_at_the_same_size(run, m, eps)
                if coupled is None:
                    return
                self._refuse_mixed_rows(m, *coupled)
        try:
            ahead, reversed_ = run(None), run(order)
        except Exception:  # noqa: BLE001 (a model that fails on fewer rows: the passes report what fails)
            return
        if not all(isinstance(o, Tensor) and o.shape == ahead.shape for o in (ahead, reversed_)):
            return
        if ahead.dim() == 0 or ahead.shape[0] != m:
            return

        def deterministic() -> bool:
            """Whether each order gives its outputs again (asked only before refusing: a forward that changes from
            call to call is not judged here)."""
            try:
                again = [run(order), run(None)]
            except Exception:  # noqa: BLE001
                return False
            alike = all(isinstance(o, Tensor) and o.shape == ahead.shape for o in again)
            return alike and _repeats_close(ahead, again[1], eps) and _repeats_close(reversed_, again[0], eps)

        if not _repeats_close(ahead[order], reversed_, eps):
            if not deterministic():
                return
            differ = (ahead[order] - reversed_).reshape(m, -1).abs().amax(1)
            row, how = int(order[int(differ.argmax())]), "in reverse order"
        else:
            try:  # (a model that cannot run fewer rows: the order is checked alone)
                halves = [run(None, part) for part in (slice(0, m // 2), slice(m // 2, m))]
            except Exception:  # noqa: BLE001
                return
            if not all(isinstance(h, Tensor) and h.shape[1:] == ahead.shape[1:] for h in halves):
                return
            apart = torch.cat(halves)
            if apart.shape != ahead.shape:
                return
            if _repeats_close(apart, ahead, eps):
                if _close_to_scale(apart, ahead, eps) and _close_to_scale(ahead[order], reversed_, eps):
                    return
                coupled = self._coupled_at_the_same_size(run, m, eps)
                if coupled is None:
                    return
                self._refuse_mixed_rows(m, *coupled)
            # the halves differ: a sum whose terms are far larger than the outputs (an ill-conditioned model) rounds
            # otherwise in the kernels of another batch size; not refused where a float64 copy runs the halves alike
            moved = float((apart - ahead).abs().nan_to_num(0.0).max())
            if self._halves_agree_in_float64(m, moved) or not deterministic():
                return
            row, how = int((apart - ahead).reshape(m, -1).abs().amax(1).argmax()), f"in two halves of {m // 2} and {m - m // 2}"
        self._refuse_mixed_rows(m, row, how)

    def _halves_agree_in_float64(self, m: int, moved: float) -> bool:
        """Whether what moved the outputs of the model's first ``m`` background rows by up to ``moved`` between running
        them whole and in two halves (the test of :meth:`_check_rows_independent` they failed) is rounding: a float64
        copy of a model that computes in a less precise dtype moves them by a millionth of that or less (rounding
        shrinks with the dtype's ε, by 2e-9 from float32; a row that reads another does not). Kernels sum in another
        order for another batch size, and in a sum whose terms are far larger than the outputs (weights of 1e6 that
        cancel) that moves the outputs by far more than their own ε. False where the model computes in float64
        already, or its copy cannot be cast or run."""
        if self.model_dtype is None or self.model_dtype == torch.float64:
            return False
        try:
            model = copy.deepcopy(self.model).double()
            rows = [b[:m].double() if b.is_floating_point() else b[:m] for b in self.background]
            with torch.no_grad():
                whole = self._take(model(*[r.clone() for r in rows]))
                parts = [self._take(model(*[r[part].clone() for r in rows])) for part in (slice(0, m // 2), slice(m // 2, m))]
        except Exception:  # noqa: BLE001 (not shown to be rounding: refused as the halves say)
            return False
        if not all(isinstance(t, Tensor) for t in (whole, *parts)):
            return False
        halves = torch.cat(parts)
        return halves.shape == whole.shape and float((halves - whole).abs().nan_to_num(0.0).max()) <= 1e-6 * moved

    @staticmethod
    def _coupled_at_the_same_size(run: Callable[..., Any], m: int, eps: float) -> tuple[int, str] | None:
        """The third test of :meth:`_check_rows_independent`: ``run(index)`` (the model on the background rows picked by
        ``index``) with the first half of ``m`` rows kept and the others replaced by the first ones, the batch size the
        same. (the row whose output changed, how the rows were run) where the kept rows' outputs move by more than 1e3
        ``eps`` of the outputs' scale and the model gives its outputs again run twice; else None."""
        k = (m + 1) // 2
        try:
            whole = run(None)
            replaced = run(torch.cat([torch.arange(k), torch.arange(m - k)]).to(whole.device))
        except Exception:  # noqa: BLE001 (the passes report what fails)
            return None
        if not (isinstance(whole, Tensor) and isinstance(replaced, Tensor)) or whole.shape != replaced.shape:
            return None
        if whole.dim() == 0 or whole.shape[0] != m or _close_to_scale(replaced[:k], whole[:k], eps):
            return None
        try:
            again = run(None)
        except Exception:  # noqa: BLE001
            return None
        if not (isinstance(again, Tensor) and again.shape == whole.shape and _close_to_scale(again, whole, eps)):
            return None  # (a forward that changes from call to call is not judged here)
        row = int((replaced[:k] - whole[:k]).reshape(k, -1).abs().amax(1).argmax())
        return row, f"with rows {k} to {m - 1} replaced by rows 0 to {m - k - 1} (the same batch size)"

    def _refuse_mixed_rows(self, m: int, row: int, how: str) -> NoReturn:
        """Raise the refusal of a model whose output for ``row`` changed when its ``m`` background rows ran ``how``."""
        seq_first = [
            f"{name!r} ({type(module).__name__})"
            for name, module in self.model.named_modules()
            if isinstance(module, nn.RNNBase) and not module.batch_first
        ]
        advice = (
            f" The model has recurrent layers without batch_first: {', '.join(seq_first)}. Such a layer reads axis 0 of its "
            "input as time: build it with batch_first=True, or transpose inside forward() (x.transpose(0, 1)) so that "
            "axis 0 of the data given to rnnshap is the batch."
            if seq_first
            else " Check which axis the model reads as time (a recurrent layer without batch_first reads axis 0), "
            "that no layer normalizes over the batch, and that no layer folds the batch with another axis and unfolds it "
            "in another order (transformers' Autoformer with more than one attention head repeats each sample's delays "
            "heads-major along its batch-major (batch · heads) axis: build it with one head)."
        )
        raise InputError(
            f"The model mixes the rows of axis 0 of its input: its output for one row depends on the other rows of the "
            f"batch (run on {m} background rows {how}, the output for row {row} changes). rnnshap reads axis 0 "
            "as the batch, and the attributions of a sample need its output to be a function of that sample alone."
            + advice
        )

    def _distinct_reference_pass(self, block: Block, context: list[Tensor], state: PreservedState) -> tuple[Tape, Tensor]:
        """The reference pass on the block's distinct references: its tape (to be consumed by one
        input pass) and its outputs. ``context``: the values of the context inputs (:attr:`context_inputs`),
        one row each, shared by the block's samples, which every reference takes.

        With distinct references it depends on the model, those background rows and the context only, so it is
        kept (up to :data:`KEPT_TAPE_BYTES` in all) and reused by later blocks and calls with the
        same rows and context. Reused only while the model's parameters and buffers are the ones it was recorded on
        (the front door, seeing :meth:`model_version` change, calls :meth:`refresh_background_outputs`, which drops
        every kept tape) and a plain forward of those rows (a fraction of a pass's cost: no operation is intercepted)
        still gives the kept outputs bit for bit (a changed attribute that forward() reads, or a background changed
        in place, change them, and the pass runs again). An attribute change that moves what the pass records but
        not one bit of the references' outputs is not seen (the additivity check then fails): call
        ``explainer.engine.forget_reference_passes()`` after such a change. ``state``: the model's state, taken
        before (each pass and plain forward here restores it)."""
        key = _kept_key(block, context)
        vetted = self._vetted
        if key not in self._unkept:
            kept = self._kept_tapes.get(key)
            if kept is not None:
                entries, outputs, _ = kept
                if vetted is not None and key in vetted:
                    return Tape(list(entries)), outputs
                if self._computes(block, context, outputs, state):
                    self._unchecked.discard(key)
                    if vetted is not None:
                        vetted.add(key)
                    return Tape(list(entries)), outputs
                del self._kept_tapes[key]
                if key in self._unchecked:  # the constructor's pass, never vetted: a plain forward does not give
                    self._unkept.add(key)  # a pass's outputs (a fast path: torch's fused transformer layers)
        # (copies: forward() may work in place on its inputs)
        outputs, _ = run_pass(
            self.model, self._distinct_rows(block, context), self.registry, tape := Tape(),
            PassSettings(replay=False, take=self._take, state=state),
        )  # fmt: skip
        # kept unchecked: its first reuse in a later call runs the plain forward that vets a kept tape (a call that
        # never reuses it, explain() on one block, pays no plain forward)
        self._keep(block, context, tape, outputs, None)
        if vetted is not None:
            vetted.add(key)
        return tape, outputs

    @contextlib.contextmanager
    def call(self, just_built: bool = False) -> Iterator[None]:
        # the kept reference passes are vetted once a call (see _distinct_reference_pass); a just-built explainer's
        # are its constructor's, recorded on the model as it is
        self._vetted = set(self._kept_tapes) if just_built else set()
        try:
            yield
        finally:
            self._vetted = None
            self._release_held()

    def _release_held(self) -> None:
        """Drop the tapes held for the first call only (over the bytes kept between calls: see ``_keep``)."""
        for key in self._first_call_only:
            self._kept_tapes.pop(key, None)
            self._unchecked.discard(key)
            self._unkept.add(key)
        self._first_call_only.clear()

    def forget_reference_passes(self) -> None:
        """Drop every kept reference pass: the next call runs its reference passes afresh (see
        ``_distinct_reference_pass``)."""
        self._kept_tapes.clear()
        self._unkept.clear()
        self._unchecked.clear()
        self._first_call_only.clear()
        self._vetted_with_grad.clear()
        if self._vetted is not None:
            self._vetted.clear()

    def _distinct_rows(self, block: Block, context: list[Tensor]) -> list[Tensor]:
        """Copies of the block's distinct references, the context inputs at ``context``'s values (one row, repeated)."""
        given = dict(zip(self.context_inputs, context, strict=True))
        n = block.r1 - block.r0
        return [
            given[t].expand(n, *given[t].shape[1:]).clone() if t in given else b[block.r0 : block.r1].clone()
            for t, b in enumerate(self.background)
        ]

    def _shared_context(self, inputs: list[Tensor], block: Block) -> list[Tensor] | None:
        """The context inputs' values of the block's first sample (one row each), where every sample of the block
        has the same (then their pairs' references all take them), else None."""
        shared = []
        for t in self.context_inputs:
            rows = inputs[t][block.s0 : block.s1]
            first = rows[:1]
            if not torch.equal(rows, first.expand_as(rows)):
                return None
            shared.append(first)
        return shared

    def _keep(
        self, block: Block, context: Any, tape: Tape, outputs: Tensor, state: PreservedState | None, first_call: bool = False
    ) -> None:
        """Keep the reference pass ``tape`` on the block's distinct references (and its ``outputs``) for later blocks
        and calls, where it fits the bytes kept and a plain forward gives its outputs bit for bit (checked here with
        ``state``, the model's state taken before; with None, unchecked until its first reuse). ``context``: the
        context inputs' values the pass ran with (see ``_distinct_reference_pass``). ``first_call``: over the bytes
        kept, held until the end of the first call all the same (the memory it takes is taken now, and that call
        would take it again to run the same pass)."""
        key = _kept_key(block, context)
        if key in self._unkept:
            return
        size = _tape_bytes(tape) + outputs.numel() * outputs.element_size()
        over = size + self._kept_bytes() > KEPT_TAPE_BYTES
        if (over and not first_call) or (state is not None and not self._computes(block, context, outputs, state)):
            self._unkept.add(key)  # (over the bytes kept, or a plain forward does not give the pass's outputs)
        else:
            if over:
                self._first_call_only.add(key)
            # (the input pass replaces the entries it takes in tape's own list)
            self._kept_tapes[key] = (list(tape.entries), outputs, size)
            if state is None:
                self._unchecked.add(key)

    def _kept_bytes(self) -> int:
        """The bytes of the tapes kept between calls (a tape held for the first call only is not counted)."""
        return sum(size for key, (_, _, size) in self._kept_tapes.items() if key not in self._first_call_only)

    def _computes(self, block: Block, context: list[Tensor], outputs: Tensor, state: PreservedState) -> bool:
        """Whether a plain forward of the block's references (with ``context``) gives ``outputs`` bit for bit (see
        ``_distinct_reference_pass``); the model's state is restored to ``state`` (taken before).

        The forward runs without autograd first and, where that misses, once with it: torch's transformer layers take
        a fused fast path when nothing is recorded for autograd (``nn.TransformerEncoderLayer``,
        ``nn.MultiheadAttention`` in eval mode), whose outputs differ in their last bits from the layer's own
        operations, which the pass runs; with autograd recording (the parameters require grad) they run those. Which
        one gave the outputs is remembered for the block, so that a later vet runs one forward."""
        key = _kept_key(block, context)
        for grad in (False, True) if key not in self._vetted_with_grad else (True,):
            try:
                with torch.set_grad_enabled(grad):
                    now = self._take(self.model(*self._distinct_rows(block, context)))
            except Exception:  # noqa: BLE001 (the pass runs and reports what fails)
                return False
            finally:
                state.restore()
            same = isinstance(now, Tensor) and now.shape == outputs.shape and now.dtype == outputs.dtype
            if same and bool(torch.equal(now, outputs)):
                if grad:
                    self._vetted_with_grad.add(key)
                return True
        return False

    def _take(self, out: Any) -> Any:
        """The explained output tensor of the model's result (see :mod:`rnnshap.engines.outputs`)."""
        if isinstance(out, Tensor) and self.outputs.choice is None:
            return out
        leaf = self.outputs.leaf(out, lambda t: isinstance(t, Tensor))
        if leaf is not None:
            return leaf
        flat, names = output_parts(out)
        if not flat or not all(isinstance(t, Tensor) for t in flat):
            return out  # run_pass says what the model returned
        return self.outputs.take(
            flat,
            names or getattr(self.model, "output_names", None),
            lambda t: t.shape,
            lambda parts: torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1),
        )

    def _probe(self, follow: list[int]) -> tuple[Tensor, AttributionMode]:
        """Run the model on the background as a reference pass, following the integer inputs ``follow``."""
        try:
            with torch.no_grad():  # copies: a forward() that works in place must not rewrite the background
                copies = [b.clone() for b in self.background]
                masks = {t: (copies[t], value) for t, value in self.masked_inputs.items()}
                return run_pass(
                    self.model, copies, self.registry, Tape(),
                    PassSettings(replay=False, follow=follow, take=self._take, sample_masks=masks, watch_random=True),
                )
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            if isinstance(error, RnnShapError):
                raise
            failure = self._plain_failure()
            if failure is not None:  # the model fails on the background without rnnshap too
                raise InputError(self._misfit(failure)) from error
            if not follow:
                raise
            raise InputError(
                f"The model failed on the background ({error}). Input(s) {follow} are integers: rnnshap treats "
                "integer inputs as token ids (when they feed an embedding), numbers (when cast to floating point) "
                "or context such as lengths and masks (used as given)."
            ) from error

    def _plain_failure(self) -> BaseException | None:
        """The model's own error on the background, run as it is (without rnnshap), or None."""
        try:
            with torch.no_grad():
                self.model(*[b.clone() for b in self.background])
        except Exception as error:  # noqa: BLE001 - any failure of the model is reported as it is
            return error
        return None

    def _misfit(self, error: BaseException) -> str:
        """What to say when the background does not fit the model: what reached it, and the model's message."""
        shapes = ", ".join(f"{tuple(b.shape)} {str(b.dtype).replace('torch.', '')}" for b in self.background)
        count = len(self.background)
        message = (
            f"The background was run through the model as {count} input{'s' if count > 1 else ''} "
            f"of shape{'s' if count > 1 else ''} {shapes}, "
            f"and the model failed: {type(error).__name__}: {error}"
        )
        if self._nested_list:
            message += (
                f". The background is a Python list of Python lists, read as a list of {count} inputs (one per model "
                "input, as for a model with several inputs). For a model with one input, pass one array: "
                "np.asarray(background) or torch.tensor(background)"
            )
        elif any(b.dim() == 2 and b.is_floating_point() for b in self.background):
            message += (
                ". A 2-D input is (batch, features). If the model expects (batch, time, features) and the 2-D array "
                "is one sequence, add the batch dimension: x[None] (and background[None]) for one sample"
            )
        return message + "."

    # -- inputs -----------------------------------------------------------------------------------
    def inputs(self, X: Any, what: str) -> list[Tensor]:
        if isinstance(X, dict) and self.input_names is not None:
            if set(X) != set(self.input_names):
                raise InputError(
                    f"{what} has the keys {sorted(map(str, X))}, the background {sorted(map(str, self.input_names))}: "
                    "give the same inputs"
                )
            X = [X[k] for k in self.input_names]
        tensors = as_tensors(X, what, self.multi_input, self.device, self.model_dtype)
        check_matching(tensors, self.background, what)
        return tensors

    def predict(self, inputs: list[Tensor]) -> np.ndarray:
        state = PreservedState(self.model)  # explaining never changes the model, ranking outputs included
        try:
            with torch.no_grad():
                out = self._take(self.model(*inputs))
        finally:
            state.restore()
        return numpy(out.reshape(inputs[0].shape[0], -1)).astype(np.float64)

    def model_version(self) -> Any:
        """Every parameter and buffer of the model, by identity and version counter: an optimizer
        step, ``load_state_dict`` or a write under ``no_grad()`` bumps a version, replacing one
        changes an identity (see :meth:`Engine.model_version`)."""
        version = []
        for t in [*self.model.parameters(), *self.model.buffers()]:
            try:
                version.append((id(t), t._version))
            except RuntimeError:  # an inference tensor has no version counter: its identity only
                version.append((id(t), -1))
        return tuple(version)

    def refresh_background_outputs(self) -> None:
        # the model changed (trained, loaded, replaced): kept reference passes were recorded on another model, even
        # where the references' outputs, which vet them, happen not to move
        self.forget_reference_passes()
        # copies: a forward() that works in place must not rewrite the background
        self.background_outputs = self.predict([b.clone() for b in self.background]).reshape(self.references, *self.output_shape)
        _check_missing_values_handled(self.background, self.background_outputs.reshape(self.references, -1), "background")

    def to_numpy(self, inputs: list[Tensor]) -> list[np.ndarray]:
        return [numpy(x) for x in inputs]

    def ranks(self, selected: np.ndarray) -> Tensor:
        return torch.from_numpy(selected)

    # -- attribution ------------------------------------------------------------------------------
    def attribute(
        self, inputs: list[Tensor], block: Block, columns: np.ndarray, per_pair: bool = False, multipliers: bool = False
    ) -> BlockResult:
        """Σ over the block's references of multiplier × (x − r), for each selected output (each
        pair's own with ``per_pair``; the multipliers themselves with ``multipliers``)."""
        s, n_refs, k = block.samples, block.references, columns.shape[1]
        device = inputs[0].device
        sample = torch.arange(block.s0, block.s1, device=device).repeat_interleave(n_refs)
        ref = torch.arange(block.r0, block.r1, device=device).repeat(s)
        # rules may compute on the distinct rows of each side, their checks of the rows read after the passes
        grid = PairGrid(s, n_refs, deferred=[])
        # context inputs (integer inputs that are neither token ids nor numbers: lengths, masks) take
        # the explained sample's values on both sides; token ids and numbers are compared with the
        # background's, and the masks made from them are the explained sample's (their shadows)
        followed = self.followed_inputs
        references = [
            b[ref] if b.is_floating_point() or t in followed else x[sample]
            for t, (x, b) in enumerate(zip(inputs, self.background, strict=True))
        ]
        shadows = {t: inputs[t][sample] for t in followed}
        leaves = [x[sample].requires_grad_(True) if x.is_floating_point() else x[sample] for x in inputs]
        chosen_columns = torch.from_numpy(columns).to(device).repeat_interleave(n_refs, dim=0)
        # the context inputs' values where the block's samples share them (their references all take them), else None
        context = self._shared_context(inputs, block)
        # (one sample: the pass on the references is the pairs' own, kept across calls; several: see distinct_references)
        distinct = n_refs > 1 and context is not None and (self._distinct_allowed if s == 1 else self.distinct_references)
        if self._first_call_only and not (distinct and _kept_key(block, context) in self._first_call_only):
            self._release_held()  # (a block that does not take the tape held for the first call: it is not taken)
        # both sides of a pair compare the explained sample's values where the model masks by them
        masks = {t: (inputs[t][sample], value) for t, value in self.masked_inputs.items()}
        state = PreservedState(self.model)  # taken once: every pass and plain forward below restores it
        # (at most three times: a layout the check at construction missed runs every pair; rows a cell's deferred
        # check assumed repeat, and did not, run the passes again with each check read at once)
        while True:
            if grid.deferred is not None:
                grid.deferred.clear()  # (the checks of a pass run again do not count)
            with torch.no_grad():
                if distinct:
                    # the reference pass runs on the block's references once, and the tape repeats them
                    # for the pairs; it depends on nothing else, so a later block or call reuses it
                    assert context is not None
                    tape, ref_outputs = self._distinct_reference_pass(block, context, state)
                else:  # forward() may work in place on its inputs: copies
                    ref_outputs, _ = run_pass(
                        self.model, [r.clone() for r in references], self.registry, tape := Tape(),
                        PassSettings(
                            replay=False,
                            follow=followed,
                            pairs=grid,
                            shadows=shadows,
                            take=self._take,
                            sample_masks=masks,
                            state=state,
                        ),
                    )
            if distinct:
                tape.repeats = s
                # a kept tape keeps its entries repeated for s samples too, where that fits the bytes kept
                key = _kept_key(block, context)
                tape.keeps_repeats = (
                    key in self._kept_tapes
                    and key not in self._first_call_only
                    and (s + 1) * self._kept_bytes() <= KEPT_TAPE_BYTES
                )
                ref_outputs = repeat_along(ref_outputs, 0, s)
            try:
                with torch.enable_grad(), tracking_missing_values() as missing:  # (rules/missing.py: masked-out NaN entries)
                    # NaN in the pairs: every multiplier rule's backward stops 0 · NaN, also where the model masks them by a
                    # comparison (where(x == x, f(x), 0)) rather than by a missing-value rule, which would mark the pass
                    missing.seen = _holds_nan(leaves) or _holds_nan(references)
                    copies = [leaf.clone() for leaf in leaves]
                    pass_masks = {t: (copies[t], value) for t, value in self.masked_inputs.items()}
                    outputs, mode = run_pass(
                        self.model, copies, self.registry, tape,
                        PassSettings(
                            replay=True, follow=followed, pairs=grid, take=self._take, sample_masks=pass_masks, state=state
                        ),
                    )
            except TapeMismatchError:
                if not distinct:
                    raise
                # the layout check missed a layout (or a pass takes another path on the pairs): every pair, from now on
                self.distinct_references = distinct = False
                continue
            if grid.all_held():  # (the one host sync of the rows' checks)
                break
            # a side's rows did not repeat as the grid says (something sample-specific entered the reference side):
            # the passes again, each check read at once (a side whose rows do not repeat keeps them all)
            grid = PairGrid(s, n_refs)
        with torch.enable_grad():
            flat = outputs.reshape(outputs.shape[0], -1)
            _check_missing_values_handled(leaves, flat.detach(), "X", n_refs, block.s0)
            chosen = flat.gather(1, chosen_columns)
            attributed_leaves = [leaf for leaf in leaves if leaf.requires_grad] + [e.leaf for e in mode.embedded]
            grads = _grads_per_output(chosen, attributed_leaves)

        def per_sample(contribution: Tensor) -> np.ndarray:
            """(k, pairs, *shape) → Σ over each sample's references, (k, s, *shape) in float64
            ((k, s, n_refs, *shape) with ``per_pair``)."""
            pairs = contribution.to(torch.float64).reshape(k, s, n_refs, *contribution.shape[2:])
            return (pairs if per_pair else pairs.sum(2)).detach().cpu().numpy()

        sums = [np.zeros((k, s, *((n_refs,) if per_pair else ()), *x.shape[1:])) for x in inputs]
        attributed = iter(grads)
        for t, (leaf, reference) in enumerate(zip(leaves, references, strict=True)):
            if leaf.requires_grad:
                grad = next(attributed)
                contribution = _contribution(grad, leaf.detach(), reference)  # (the multipliers alone are refused alike)
                sums[t] += per_sample(grad if multipliers else contribution)
        if mode.embedded:
            # every embedding output and cast of an integer input: its contribution per input position
            # (summed over the embedding's vector) is added to the position its ids name (0: none)
            integers = mode.discrete
            per_position = torch.zeros(k, integers.size + 1, dtype=torch.float64, device=device)
            for entry, grad in zip(mode.embedded, attributed, strict=True):
                part = grad * (entry.leaf.detach() - entry.reference)
                if entry.feature_dims:
                    part = part.sum(tuple(range(-entry.feature_dims, 0)))
                per_position.index_add_(1, entry.ids.reshape(-1), part.reshape(k, -1).to(torch.float64))
            for t in followed:
                start = 1 + integers.offsets[t]
                x = inputs[t]
                rows = per_position[:, start : start + sample.numel() * (x.numel() // x.shape[0])]
                sums[t] += per_sample(rows.reshape(k, sample.numel(), *x.shape[1:]))
        model_outputs = numpy(flat.detach()).astype(np.float64).reshape(s, n_refs, -1)[:, 0]
        ref_sums = numpy(ref_outputs.reshape(flat.shape)).astype(np.float64).reshape(s, n_refs, -1).sum(1)
        return BlockResult(sums, model_outputs, ref_sums)


def _kept_key(block: Block, context: Any) -> tuple[Any, ...]:
    """The key of a kept reference pass: the block's references and the context inputs' values it ran with."""
    return (block.r0, block.r1, *((str(c.dtype), tuple(c.shape), c.cpu().numpy().tobytes()) for c in context))


def _holds_nan(tensors: list[Tensor]) -> bool:
    return any(t.is_floating_point() and bool(torch.isnan(t).any()) for t in tensors)


def _check_missing_values_handled(inputs: list[Tensor], outputs: Any, what: str, step: int = 1, first: int = 0) -> None:
    """Refuse missing values (NaN) in ``inputs`` that the model does not handle: its output is NaN for their rows
    (every ``step``-th row of ``outputs`` is one of ``inputs``' rows, the first of them row ``first``)."""
    if not _holds_nan(inputs):
        return
    finite = torch.isfinite(outputs) if isinstance(outputs, Tensor) else torch.from_numpy(np.isfinite(outputs))
    rows = (~finite.reshape(finite.shape[0], -1).all(1)).nonzero()
    if rows.numel():
        row = first + int(rows[0]) // step
        raise InputError(
            f"{what} holds missing values (NaN) that the model does not handle: its output is NaN for row {row}. "
            "rnnshap attributes missing values the model masks (nanmean, nan_to_num, torch.where(isnan(x), ...), the "
            "mask as a feature), exactly; fill these before explaining, or let the model mask them"
        )


def _contribution(grad: Tensor, x: Tensor, reference: Tensor) -> Tensor:
    """multiplier × (x − r); where a value is missing (NaN, or an infinity) on both sides its difference is 0, and
    where nothing downstream depends on an entry (multiplier 0) its contribution is 0, never 0 · NaN. A missing
    value on one side of a pair that the output depends on is refused by name."""
    delta = x - reference
    if bool(torch.isfinite(delta).all()):
        return grad * delta
    delta = torch.where((x == reference) | (torch.isnan(x) & torch.isnan(reference)), 0.0, delta)
    contribution = (grad * delta).masked_fill(grad == 0, 0.0)
    if not bool(torch.isfinite(contribution).all()):
        raise UnsupportedOperationError([(
            "a missing value (NaN or inf) of the explained inputs or the background",
            "the output depends on an entry that is missing on one side of a pair only: its difference has no size",
            "missing",
        )])
    return contribution


#: autograd's engine as ``torch.autograd.grad`` runs it after checking its arguments (see :func:`_backward`)
_ENGINE_RUN_BACKWARD = getattr(torch.autograd.graph, "_engine_run_backward", None)

#: the most bytes of reference tapes an engine keeps for later blocks and calls
KEPT_TAPE_BYTES = 64 * 2**20


def _tape_bytes(tape: Tape) -> int:
    """The bytes of the tensors ``tape``'s entries hold."""
    size = 0
    for entry in tape.entries:
        for t in [*(entry.references or ()), *(() if entry.output is None else (entry.output,))]:
            size += t.numel() * t.element_size()
    return size


def _check_integer_uses(index: int, uses: dict[str, str], lost: str | None) -> None:
    """Refuse an integer input whose uses cannot all be attributed exactly (see passes.discrete)."""
    token, number, mask, context = (uses.get(kind) for kind in (TOKEN, NUMBER, MASK, CONTEXT))
    if lost is not None:
        raise InputError(
            f"Input {index} (integers): {lost}, an integer operation whose result rnnshap cannot follow back to "
            "the input's positions (it follows shape, indexing, padding, concatenation and elementwise operations "
            "on integers). Apply that operation after the embedding or after casting to floating point, or pass "
            "its result to the model as a separate input."
        )
    if token and number:
        raise InputError(
            f"Input {index} is used both as token ids (by {token}) and as a number (cast to floating point by "
            f"{number}); rnnshap attributes an integer input one way. Pass a copy of it as a second input: "
            "a floating-point tensor for the number."
        )
    role = f"holds token ids (they feed {token})" if token else f"is used as a number (cast to floating point by {number})"
    if (token or number) and context:
        advice = (
            "build the mask or lengths from a comparison (`ids != pad`, `(ids != pad).sum(1)`): masks made from "
            "token ids are taken from the explained sample on both sides"
            if token
            else "pass its values as lengths or indices in a separate integer input, which is then context"
        )
        raise InputError(
            f"Input {index} {role}, and {context} also uses its values directly (as lengths, indices or in a "
            "reduction). Those values differ between the input and its reference, and that use cannot be "
            f"attributed. Either {advice}, or pass them to the model as a separate integer input: integer inputs "
            "that are neither token ids nor numbers are context, used as given by the explained sample."
        )
    if number and mask:
        raise InputError(
            f"Input {index} {role}, and {mask} compares its values: a comparison is a step of the number that "
            "rnnshap cannot attribute. Pass the mask to the model as a separate (boolean) input, which is context."
        )


def _repeats(once: Tensor, twice: Tensor, axis: int) -> bool:
    """Whether ``twice`` is ``once`` repeated twice along ``axis``, up to the rounding of kernels that
    may sum in another order for another number of rows."""
    if not isinstance(once, Tensor) or not isinstance(twice, Tensor):
        return False
    repeated = repeat_along(once, axis, 2)
    if repeated.shape != twice.shape:
        return False
    if repeated.dtype == twice.dtype and torch.equal(repeated, twice):  # (equal: close, without the scale's work)
        return True
    if not (repeated.is_floating_point() or repeated.is_complex()):
        return False
    scale = float(twice.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if twice.numel() else 0.0
    rtol = 1e3 * torch.finfo(twice.dtype).eps if twice.is_floating_point() else 1e-12
    return torch.allclose(repeated, twice, rtol=rtol, atol=rtol * max(1.0, scale), equal_nan=True)


class _UnorderedTopk(torch.overrides.TorchFunctionMode):
    """``topk`` of every position unsorted returns the positions in their own order, or reversed (``reverse``): two of
    the orders torch may return (see ``Engine._check_unordered_topk``)."""

    def __init__(self, reverse: bool) -> None:
        super().__init__()
        self.reverse = reverse

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in (torch.topk, Tensor.topk) or not topk_of_every_position(args, kwargs):
            return func(*args, **kwargs)
        operand = args[0]
        dim = int(args[2] if len(args) > 2 else kwargs.get("dim", -1)) % operand.dim()
        n = operand.shape[dim]
        order = torch.arange(n, device=operand.device)
        if self.reverse:
            order = order.flip(0)
        shape = [1] * operand.dim()
        shape[dim] = n
        indices = order.reshape(shape).expand(operand.shape).contiguous()
        return torch.return_types.topk((operand.gather(dim, indices), indices))


def _close_to_scale(a: Tensor, b: Tensor, eps: float = 0.0) -> bool:
    """:func:`_repeats_close` with the tolerance relative to ``b``'s own scale, not floored at 1."""
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype and torch.equal(a, b):
        return True
    if not (a.is_floating_point() or a.is_complex()):
        return False
    scale = float(b.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if b.numel() else 0.0
    rtol = 1e3 * max(torch.finfo(b.dtype).eps, eps)
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True))


def _repeats_close(a: Tensor, b: Tensor, eps: float = 0.0) -> bool:
    """Whether ``a`` and ``b`` are equal up to the rounding of kernels that sum in another order (in ``b``'s
    dtype, or in a less precise one of ``eps`` the model computes in)."""
    if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b):  # (equal: close, without the scale's work)
        return True
    if not (a.is_floating_point() or a.is_complex()):
        return False
    scale = float(b.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if b.numel() else 0.0
    rtol = 1e3 * max(torch.finfo(b.dtype).eps, eps)
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, scale), equal_nan=True))


def numpy(t: Tensor) -> np.ndarray:
    """``t`` as a numpy array; bfloat16, which numpy lacks, as float32."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _grads_per_output(chosen: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    """Gradients of every column of ``chosen`` w.r.t. ``leaves``: shape (k, *leaf.shape) each.

    All columns go through one batched backward pass, not one per output: ``torch.func.vmap`` over
    the backward, whose batching rules run each operation once on all K (the rules' own backward
    functions included: a matrix product of K × rows). autograd's ``is_grads_batched`` uses torch's
    older vmap, which runs a matrix product or an ``addcmul`` once per output and joins the results
    (1.5–2× slower at K = 10); it is the fallback where ``torch.func`` cannot batch the backward.
    (``torch.autograd.grad`` given ``grad_outputs`` imports torch's symbolic shapes and sympy on its first use in a
    process, to compare their sizes: 0.3-0.4 s of a first call, which the floor's backward of a scalar does not pay.
    One output starts from the scalar Σ chosen, whose gradient is the same ones; several give their one-hot rows
    to autograd's engine as ``autograd.grad`` does after that check, see :func:`_backward`.)
    """
    k = chosen.shape[1]
    if k == 1:
        grads = torch.autograd.grad(chosen.sum(), leaves, allow_unused=True)
        return [_or_zeros(g, leaf).unsqueeze(0) for g, leaf in zip(grads, leaves, strict=True)]
    eye = torch.eye(k, dtype=chosen.dtype, device=chosen.device)
    grad_outputs = eye[:, None, :].expand(k, *chosen.shape).contiguous()
    try:
        with warnings.catch_warnings():  # an operation without a batching rule runs once per output, as before
            warnings.filterwarnings(
                "ignore", message="There is a performance drop because we have not yet implemented the batching rule"
            )

            def column(v: Tensor) -> tuple[Tensor, ...]:
                grads = _backward(chosen, v, leaves)
                return tuple(_or_zeros(g, leaf) for g, leaf in zip(grads, leaves, strict=True))

            grads = torch.func.vmap(column)(grad_outputs)
    except RuntimeError:  # an operation of the backward that torch.func cannot batch
        grads = torch.autograd.grad(chosen, leaves, grad_outputs, is_grads_batched=True, allow_unused=True)
    return [_or_zeros(g, leaf, k) for g, leaf in zip(grads, leaves, strict=True)]


def _backward(output: Tensor, grad: Tensor, leaves: list[Tensor]) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(output, leaves, grad, retain_graph=True, allow_unused=True)``, ``grad`` of ``output``'s
    shape and dtype, without the size check that imports sympy (see :func:`_grads_per_output`): autograd's engine
    run as ``autograd.grad`` runs it, where this torch has that function (``torch.autograd.graph``, torch >= 2.4)."""
    if _ENGINE_RUN_BACKWARD is not None:
        try:  # (torch's private function, its arguments as torch 2.4-2.13 take them: grads, keep and create graph,
            # inputs, allow unreachable, accumulate)
            grads = _ENGINE_RUN_BACKWARD((output,), (grad,), True, False, tuple(leaves), True, False)
        except TypeError:  # (another torch that takes them otherwise: the public call)
            pass
        else:
            if isinstance(grads, tuple) and len(grads) == len(leaves):
                return grads
    return torch.autograd.grad(output, leaves, grad, retain_graph=True, allow_unused=True)


def _or_zeros(grad: Tensor | None, leaf: Tensor, k: int | None = None) -> Tensor:
    if grad is not None:
        return grad
    shape = leaf.shape if k is None else (k, *leaf.shape)
    return torch.zeros(shape, dtype=leaf.dtype, device=leaf.device)
