"""The PyTorch engine's checks of the model, run as it is built (:class:`ModelChecks`): that it computes every row of
the batch alone (the rows check), that its output does not read the order of an unsorted ``topk``, that its rows are
laid out so that a tape on distinct references repeats for several samples, the integer inputs' uses and the missing
values it does not handle, and what to say where the background does not fit it."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, NoReturn

import numpy as np
import torch
from torch import nn

from ...errors import InputError, UnsupportedOperationError
from ...rules.base import PairGrid
from ...rules.registry import RuleRegistry
from ...rules.selection import topk_of_every_position
from .discrete import CONTEXT, MASK, NUMBER, TOKEN
from .randomness import RandomStates
from .runner import PassSettings, run_pass
from .state import PreservedState
from .tape import Tape, batch_axis, repeat_along

Tensor = torch.Tensor

#: the largest float64 copy of a model the rows check makes to tell rounding from rows that read each other
FLOAT64_COPY_BYTES = 1 << 30


class ModelChecks:
    """A PyTorch model's checks on its background, run as its engine is built. ``take``: the explained output tensor of
    the model's result (the engine's); ``nested_list``: whether the background was given as a Python list of lists
    (said where it does not fit the model)."""

    def __init__(
        self,
        model: nn.Module,
        background: list[Tensor],
        registry: RuleRegistry,
        take: Callable[[Any], Any],
        model_dtype: torch.dtype | None,
        nested_list: bool,
    ) -> None:
        self.model = model
        self.background = background
        self.registry = registry
        self.take = take
        self.model_dtype = model_dtype
        self.nested_list = nested_list
        self.references = int(background[0].shape[0])

    def rows_alone(self) -> bool:
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
                out_once, _ = run_pass(self.model, copies, self.registry, once, PassSettings(replay=False, take=self.take))
                doubled = [r.repeat(2, *[1] * (r.dim() - 1)) for r in rows]
                grid = PairGrid(2, m)
                out_twice, _ = run_pass(
                    self.model, doubled, self.registry, twice,
                    PassSettings(replay=False, pairs=grid, take=self.take),
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

    def unordered_topk(self, names: set[str], eps: float, rows: list[Tensor] | None = None) -> None:
        """Refuse a model whose output depends on the order of an unsorted ``topk`` (``names``), on ``rows`` (the model's
        inputs: the background where None). rnnshap's passes take its picks in one of the orders torch may return
        (rules/selection.py: every position in the positions' own order, fewer in the ranks' order). The model's own
        forward (torch's order), and ones with two picks of rnnshap's order swapped and with all of them rotated (which
        together reach every permutation), must give the outputs of rnnshap's order again, up to the rounding of 1e3
        ``eps`` (as the rows check allows); otherwise the output reads the order, and no order is the model's. At
        16-bit precision (``eps``) that rounding hides an order read: refused alike, with the advice to explain the
        model in float32."""
        if eps > torch.finfo(torch.float32).eps:
            why = (
                "with sorted=False it returns its picks in an order torch does not specify, and at the model's 16-bit "
                "precision rnnshap cannot tell whether its output reads that order (the rounding hides it): explain the "
                "model in float32 (model.float() and float32 inputs), or use sorted=True"
            )
            raise UnsupportedOperationError([(name, why, "selection") for name in sorted(names)])
        state, randoms = PreservedState(self.model), RandomStates(self.model)
        given = self.background if rows is None else rows
        what = f"the {self.references} background rows" if rows is None else f"the {given[0].shape[0]} samples explained"

        def run(order: str | None) -> Any:
            try:
                with torch.no_grad(), (contextlib.nullcontext() if order is None else _UnorderedTopk(order)):
                    return self.take(self.model(*[b.clone() for b in given]))
            finally:
                state.restore()

        try:
            try:
                ours = run("rnnshap")
            except Exception:  # noqa: BLE001 (a model that fails here: the passes report what fails)
                return
            for order, said in ((None, "torch's"), ("swap", "two of rnnshap's swapped"), ("rotate", "rnnshap's rotated")):
                try:
                    out = run(order)
                except Exception:  # noqa: BLE001
                    return
                if isinstance(out, Tensor) and out.shape == ours.shape and _repeats_close(out, ours, eps):
                    continue
                gap = float((out - ours).abs().max()) if isinstance(out, Tensor) and out.shape == ours.shape else None
                how = f"differ by up to {gap:.3g}" if gap is not None else "differ"
                why = (
                    "with sorted=False it returns its picks in an order torch does not specify, and the model's output "
                    f"depends on that order (the outputs of {what} in {said} order and in rnnshap's {how}): use "
                    "sorted=True, or make the output independent of the order"
                )
                raise UnsupportedOperationError([(name, why, "selection") for name in sorted(names)])
        finally:
            randoms.drawn()  # (the generators put back: a forward that draws, checked not to matter before)

    def rows_independent(self, eps: float, probed: Tensor) -> None:
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
        run = self._runs_on_rows(m)
        order = torch.arange(m - 1, -1, -1, device=self.background[0].device)
        if m == self.references and probed.shape[:1] == (m,) and self._rows_pass_at_once(run, order, probed, eps):
            return
        mixed = self._mixed_row(run, order, eps)
        if mixed is not None:
            self._refuse_mixed_rows(m, *mixed)

    def _runs_on_rows(self, m: int) -> Callable[..., Any]:
        """The model's explained output on the background's first ``m`` rows, picked by an index and cut to a part, its
        state put back after each run (see :meth:`rows_independent`)."""
        rows = [b[:m] for b in self.background]
        state = PreservedState(self.model)

        def run(index: Tensor | None, part: slice | None = None) -> Any:
            try:
                with torch.no_grad():
                    picked = [r if index is None else r[index] for r in rows]
                    return self.take(self.model(*[(p if part is None else p[part]).clone() for p in picked]))
            finally:
                state.restore()

        return run

    def _rows_pass_at_once(self, run: Callable[..., Any], order: Tensor, probed: Tensor, eps: float) -> bool:
        """Both tests of :meth:`rows_independent` in one forward's worth of rows: the reversed rows in two halves against
        ``probed``; True where the rows pass, False where the tests must run apart (refused here where the third test
        finds the rows coupled)."""
        m = int(order.shape[0])
        try:
            apart = torch.cat([run(order, part) for part in (slice(0, m // 2), slice(m // 2, m))])
        except Exception:  # noqa: BLE001 (the tests apart say whether the model runs on fewer rows)
            return False
        if not (isinstance(apart, Tensor) and apart.shape == probed.shape and _repeats_close(probed[order], apart, eps)):
            return False
        if not _close_to_scale(probed[order], apart, eps):
            coupled = self._coupled_at_the_same_size(run, m, eps)
            if coupled is not None:
                self._refuse_mixed_rows(m, *coupled)
        return True

    def _mixed_row(self, run: Callable[..., Any], order: Tensor, eps: float) -> tuple[int, str] | None:
        """The tests of :meth:`rows_independent` apart: a row whose output moved and how it was run, or None where the
        rows pass (or the model cannot be judged: it fails on fewer rows, or its outputs change from call to call)."""
        m = int(order.shape[0])
        try:
            ahead, reversed_ = run(None), run(order)
        except Exception:  # noqa: BLE001 (a model that fails on fewer rows: the passes report what fails)
            return None
        if not all(isinstance(o, Tensor) and o.shape == ahead.shape for o in (ahead, reversed_)):
            return None
        if ahead.dim() == 0 or ahead.shape[0] != m:
            return None

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
                return None
            differ = (ahead[order] - reversed_).reshape(m, -1).abs().amax(1)
            return int(order[int(differ.argmax())]), "in reverse order"
        try:  # (a model that cannot run fewer rows: the order is checked alone)
            halves = [run(None, part) for part in (slice(0, m // 2), slice(m // 2, m))]
        except Exception:  # noqa: BLE001
            return None
        if not all(isinstance(h, Tensor) and h.dim() > 0 and h.shape[1:] == ahead.shape[1:] for h in halves):
            return None  # (also a model that squeezes a batch of one row away: the passes run several rows)
        apart = torch.cat(halves)
        if apart.shape != ahead.shape:
            return None
        if _repeats_close(apart, ahead, eps):
            if _close_to_scale(apart, ahead, eps) and _close_to_scale(ahead[order], reversed_, eps):
                return None
            return self._coupled_at_the_same_size(run, m, eps)
        # the halves differ: a sum whose terms are far larger than the outputs (an ill-conditioned model) rounds
        # otherwise in the kernels of another batch size; not refused where a float64 copy runs the halves alike
        moved = float((apart - ahead).abs().nan_to_num(0.0).max())
        if not deterministic() or self._halves_agree_in_float64(m, moved):
            return None
        return int((apart - ahead).reshape(m, -1).abs().amax(1).argmax()), f"in two halves of {m // 2} and {m - m // 2}"

    def _halves_agree_in_float64(self, m: int, moved: float) -> bool:
        """Whether what moved the outputs of the model's first ``m`` background rows by up to ``moved`` between running
        them whole and in two halves (the test of :meth:`rows_independent` they failed) is rounding: a float64
        copy of a model that computes in a less precise dtype moves them by a millionth of that or less (rounding
        shrinks with the dtype's ε, by 2e-9 from float32; a row that reads another does not). Kernels sum in another
        order for another batch size, and in a sum whose terms are far larger than the outputs (weights of 1e6 that
        cancel) that moves the outputs by far more than their own ε. False where the model computes in float64
        already, its copy cannot be cast or run, or its float64 copy would take over :data:`FLOAT64_COPY_BYTES` (the
        copy is made only here, where the model is otherwise refused)."""
        if self.model_dtype is None or self.model_dtype == torch.float64:
            return False
        held = [*self.model.parameters(), *self.model.buffers()]
        if sum(t.numel() * 8 for t in held if t.is_floating_point()) > FLOAT64_COPY_BYTES:
            return False
        try:
            model = copy.deepcopy(self.model).double()
            rows = [b[:m].double() if b.is_floating_point() else b[:m] for b in self.background]
            with torch.no_grad():
                whole = self.take(model(*[r.clone() for r in rows]))
                parts = [self.take(model(*[r[part].clone() for r in rows])) for part in (slice(0, m // 2), slice(m // 2, m))]
        except Exception:  # noqa: BLE001 (not shown to be rounding: refused as the halves say)
            return False
        if not all(isinstance(t, Tensor) for t in (whole, *parts)):
            return False
        halves = torch.cat(parts)
        return halves.shape == whole.shape and float((halves - whole).abs().nan_to_num(0.0).max()) <= 1e-6 * moved

    @staticmethod
    def _coupled_at_the_same_size(run: Callable[..., Any], m: int, eps: float) -> tuple[int, str] | None:
        """The third test of :meth:`rows_independent`: ``run(index)`` (the model on the background rows picked by
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

    def plain_failure(self) -> BaseException | None:
        """The model's own error on the background, run as it is (without rnnshap), or None."""
        try:
            with torch.no_grad():
                self.model(*[b.clone() for b in self.background])
        except Exception as error:  # noqa: BLE001 - any failure of the model is reported as it is
            return error
        return None

    def misfit(self, error: BaseException) -> str:
        """What to say when the background does not fit the model: what reached it, and the model's message."""
        shapes = ", ".join(f"{tuple(b.shape)} {str(b.dtype).replace('torch.', '')}" for b in self.background)
        count = len(self.background)
        message = (
            f"The background was run through the model as {count} input{'s' if count > 1 else ''} "
            f"of shape{'s' if count > 1 else ''} {shapes}, "
            f"and the model failed: {type(error).__name__}: {error}"
        )
        if self.nested_list:
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


def holds_nan(*groups: list[Tensor]) -> list[bool]:
    """Whether each group of tensors holds a NaN: one host read for all of them (one per device where they lie on
    several)."""
    by_device: dict[torch.device, dict[int, list[Tensor]]] = {}
    for g, tensors in enumerate(groups):
        for t in tensors:
            if t.is_floating_point():
                by_device.setdefault(t.device, {}).setdefault(g, []).append(torch.isnan(t).any())
    found = [False] * len(groups)
    for device, flags in by_device.items():
        # (each group's flag a bit of one integer, read with one .item(): what a device counts as one sync)
        held = torch.stack([torch.stack(f).any() for f in flags.values()]).long()
        read = int((held << torch.arange(len(flags), device=device)).sum())
        for i, g in enumerate(flags):
            found[g] = found[g] or bool(read >> i & 1)
    return found


def check_missing_values_handled(inputs: list[Tensor], outputs: Any, what: str, step: int = 1, first: int = 0) -> None:
    """Refuse missing values (NaN) in ``inputs`` that the model does not handle: its output is NaN for their rows
    (every ``step``-th row of ``outputs`` is one of ``inputs``' rows, the first of them row ``first``)."""
    if not holds_nan(inputs)[0]:
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


def check_integer_uses(index: int, uses: dict[str, str], lost: str | None) -> None:
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
    """An unsorted ``topk`` returns its picks in rnnshap's order (``order`` "rnnshap": every position in the positions'
    own order, fewer in the ranks'), with its first two swapped ("swap"), or rotated by one ("rotate"): orders torch
    may return (see ``ModelChecks.unordered_topk``)."""

    def __init__(self, order: str) -> None:
        super().__init__()
        self.order = order

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in (torch.topk, Tensor.topk) or bool(args[4] if len(args) > 4 else kwargs.get("sorted", True)):
            return func(*args, **kwargs)
        operand = args[0]
        dim = int(args[2] if len(args) > 2 else kwargs.get("dim", -1)) % operand.dim()
        if topk_of_every_position(args, kwargs):
            n = operand.shape[dim]
            shape = [1] * operand.dim()
            shape[dim] = n
            indices = torch.arange(n, device=operand.device).reshape(shape).expand(operand.shape).contiguous()
            values = operand.gather(dim, indices)
        else:
            values, indices = func(*args[:4], **{key: v for key, v in kwargs.items() if key != "sorted"}, sorted=True)
        k = values.shape[dim]
        if self.order == "swap" and k > 1:
            order = torch.arange(k, device=values.device)
            order[:2] = order[:2].flip(0)
            values, indices = values.index_select(dim, order), indices.index_select(dim, order)
        elif self.order == "rotate":
            values, indices = values.roll(1, dim), indices.roll(1, dim)
        return torch.return_types.topk((values, indices))


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
