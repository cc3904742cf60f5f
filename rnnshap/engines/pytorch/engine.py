"""The PyTorch engine: blocks of (sample, reference) pairs through the reference tape.

For each block, the reference pass runs the model on the reference side of every pair (recording
the operands of each nonlinear operation), the input pass replays it on the input side through the
rules, and one backward pass per selected output (batched) gives the multipliers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ...errors import InputError, RnnShapError, TapeMismatchError
from ...rules.base import PairGrid, Rule
from ...rules.missing import tracking_missing_values
from ...rules.registry import DEFAULT_REGISTRY, RuleRegistry
from ..base import RTOL, TINY, Block, BlockResult, Engine, check_mode
from ..outputs import OutputChoice, OutputLayout, output_parts
from . import traced
from .captured import CapturedPasses
from .captured_tokens import Lookup, token_contributions
from .checks import ModelChecks, check_integer_uses, check_missing_values_handled, holds_nan
from .discrete import MASK, NUMBER, TOKEN
from .gradients import chosen_gradients, contribution, differentiable_forward
from .kept import KeptReferencePasses, kept_key
from .keras_on_torch import KerasModule
from .model_forms import LayerForm
from .passes import AttributionMode
from .reads import ForwardReads
from .runner import PairPass, PassSettings, run_pass
from .safety import as_tensors, check_matching, check_meta, check_model, model_device_and_dtype
from .state import PreservedState, python_state, tensor_version
from .tape import Tape, repeat_along
from .traced import NotThisCall, TracedPasses, has_hooks, waited

Tensor = torch.Tensor


#: the most runs of a block's intercepted passes (:meth:`TorchEngine._intercepted`): the first, and one again for each
#: reason to (a traced program that failed, a layout missed, a deferred check that did not hold)
_RUNS = 4


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
        layer: LayerForm | None = None,
    ) -> None:
        check_model(model)
        self.model = model
        #: ``(model, layer)``: the model split at the layer (``model`` is then ``layer.split``), whose inputs are the
        #: layer's tensors made from the model's own inputs (model_forms.py); else None
        self.layer_form = layer
        if layer is not None:
            self.attributes_model_inputs, self.side = False, layer.side
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
        #: the explained output tensor of the model's result (a function of the model and the output chosen alone: the
        #: engine's collaborators hold it without holding the engine)
        self._take = functools.partial(take_output, self.outputs, model)
        #: the checks of the model on the background (rows alone, unordered topk, what to say where it does not fit)
        self.checks = ModelChecks(model, self.background, self.registry, self._take, self.model_dtype, self._nested_list)
        #: float inputs whose comparison with a value is a mask taken from the explained sample on both sides
        #: of its pairs (index → the value: a Keras Masking on the torch backend, see keras_on_torch.py)
        self.masked_inputs: dict[int, frozenset[float]] = model.masked_inputs if isinstance(model, KerasModule) else {}
        outputs, probe = self._probe_roles()
        #: calls of recurrent cells in one reference pass: a Python loop of cells where many (see compile_passes)
        self._cell_calls = sum(e.key in traced.CELLS for e in probe.tape.entries)
        self._check_explainable(outputs)
        self.output_shape = tuple(outputs.shape[1:])
        least = self._computed_dtype(probe, outputs)
        #: the unsorted topk calls the passes take in rnnshap's order, and the eps of the least precise dtype the model
        #: computes in: the order check runs on the background here, and on each block's samples (:meth:`attribute`)
        self._unordered = (frozenset(probe.unordered_topks), torch.finfo(least).eps)
        if probe.unordered_topks:
            self.checks.unordered_topk(set(probe.unordered_topks), torch.finfo(least).eps)
        self.checks.rows_independent(torch.finfo(least).eps, outputs)
        self.background_outputs = numpy(outputs).astype(np.float64)
        check_missing_values_handled(self.background, outputs.reshape(self.references, -1), "background")
        self._passes(probe, outputs)
        if layer is not None:
            layer.check_cut(*layer.background_cut, self._take)

    def _check_explainable(self, outputs: Tensor) -> None:
        """Refuse a model with no input to attribute to, or whose output's first dimension is not the batch."""
        if not self.followed_inputs and not any(b.is_floating_point() for b in self.background):
            raise InputError(
                "No input is floating point, feeds an embedding or is cast to floating point, so there is nothing to attribute to"
            )
        if outputs.dim() == 0 or outputs.shape[0] != self.references:
            raise InputError(
                f"The model maps {self.references} background rows to an output of shape "
                f"{tuple(outputs.shape)}; rnnshap needs the output's first dimension to be the batch."
            )

    def _passes(self, probe: AttributionMode, outputs: Tensor) -> None:
        """The state of the passes a call runs: intercepted until :meth:`compile_passes` says otherwise, the reference
        passes kept between calls (the probe's, on every background row, kept for the first call)."""
        #: the input passes as programs (``compile=``, see :meth:`compile_passes`), or None: intercepted
        self._traced: TracedPasses | None = None
        #: ``compile="capture"``: the forward captured once per input signature and run on pairs (captured.py)
        self._captured: CapturedPasses | None = None
        self._intercepted_path = "intercepted (compile=False)"
        #: context inputs (not floating point, not followed: masks, lengths), taken from the explained sample on both
        #: sides of its pairs
        self.context_inputs = [
            i for i, b in enumerate(self.background) if not b.is_floating_point() and i not in self.followed_inputs
        ]
        #: the reference passes on distinct references kept for later blocks and calls
        self.kept = KeptReferencePasses(self.model, self.background, self.context_inputs, self._take)
        #: whether a block's reference pass may run on its references alone and be kept for later blocks and calls
        #: (where its samples share their context inputs' values): for a block of one sample that pass is the
        #: pairs' own; for several, see :attr:`distinct_references`
        self._distinct_allowed = not self.followed_inputs and not self.masked_inputs
        #: whether the model lays out its rows so that a tape repeats for several samples (``checks.rows_alone``, run
        #: where a block of several samples first asks: an explanation of one window never pays for it)
        self._rows_laid_out: bool | None = None
        #: whether the rules' checks wait for the end of a pass (:meth:`PairGrid.defer`: a cell's rows, a softmax's
        #: path), one read for all; after a call where one failed and the passes ran again, each is read at once
        self._defer_checks = True
        if self._distinct_allowed and not self.context_inputs and not probe.drew and not probe.random_draws:
            # the probe ran the reference pass on every background row: the tape of the block of all references
            # (kept unchecked: its first reuse runs the plain forward that vets a kept tape, but in a call of a door that
            # built the explainer just before; over the bytes kept between calls, held for the first call only)
            self.kept.keep(Block(0, 0, 0, self.references), (), probe.tape, outputs, None, first_call=True)

    def _computed_dtype(self, probe: AttributionMode, outputs: Tensor) -> torch.dtype:
        """The least precise dtype the model computes input-dependent values in (a float64 model that casts to float32
        inside, as Keras' matmul on torch does, adds up to float32 precision only): set as :attr:`dtype`, with
        :attr:`precision_note` where it is less precise than the model's parameters and inputs."""
        computed = [d for d in probe.dtypes if d.is_floating_point] or [self.model_dtype or outputs.dtype]
        least = max(computed, key=lambda d: torch.finfo(d).eps)
        self.dtype = str(least).replace("torch.", "")
        given = [d for d in [self.model_dtype, *(b.dtype for b in self.background)] if d is not None and d.is_floating_point]
        #: where the model computes in a less precise dtype than its parameters and inputs: said by the additivity
        #: check's report
        self.precision_note: str | None = None
        if given and torch.finfo(least).eps > min(torch.finfo(d).eps for d in given):
            most = min(given, key=lambda d: torch.finfo(d).eps)
            self.precision_note = (
                f"The model's parameters and inputs are {str(most).replace('torch.', '')}, but it computes in {self.dtype} "
                f"inside (first at {probe.dtype_origins.get(least, 'an operation')}): its attributions add up to {self.dtype} "
                f"precision, and the check uses {self.dtype}'s tolerance."
            )
        return least

    def _probe_roles(self) -> tuple[Tensor, AttributionMode]:
        """Run the background as a reference pass (see :meth:`_probe`), which also finds unsupported operations now, and
        tell each integer input's role: token ids, numbers, or context (:attr:`compared_inputs`, :attr:`token_inputs`,
        :attr:`number_inputs`, :attr:`followed_inputs`). The probe's outputs and pass mode, following the attributed
        integer inputs."""
        # Which integer inputs are token ids (they feed an embedding), numbers (cast to float)
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
            check_integer_uses(index, uses[index], probe.discrete.unfollowable.get(index))
        #: integer inputs attributed per token at the embedding they feed
        self.token_inputs = sorted(i for i in uses if TOKEN in uses[i])
        #: integer inputs cast to floating point: attributed as numbers at the cast
        self.number_inputs = sorted(i for i in uses if NUMBER in uses[i])
        self.followed_inputs = sorted(self.token_inputs + self.number_inputs)
        self._say_masks_taken_as_numbers()
        return outputs, probe

    def _say_masks_taken_as_numbers(self) -> None:
        """A warning for each integer input attributed as a number whose background holds only 0 and 1: an attention or
        padding mask given as int64 (as tokenizers give it) and multiplied into the model's values is a number to
        rnnshap, its 0/1 entries attributed like any feature; as ``torch.bool`` it is context, taken from the explained
        sample on both sides of its pairs (padded steps then get exactly 0)."""
        for i in self.number_inputs:
            values = self.background[i]
            if values.numel() and bool(((values == 0) | (values == 1)).all()):
                warnings.warn(
                    f"Input {i} is an integer tensor of 0s and 1s that the model uses as a number (cast to floating point), "
                    "so rnnshap attributes it as a number. If it is a mask (padding, attention), pass it as torch.bool "
                    "(mask.bool()) in the background and the explained inputs: a boolean input is context, taken from the "
                    "explained sample on both sides of its pairs.",
                    stacklevel=4,
                )

    def _distinct_reference_pass(self, block: Block, context: list[Tensor], state: PreservedState) -> tuple[Tape, Tensor]:
        """The reference pass on the block's distinct references: its tape (to be consumed by one
        input pass) and its outputs. ``context``: the values of the context inputs (:attr:`context_inputs`),
        one row each, shared by the block's samples, which every reference takes.

        With distinct references it depends on the model, those background rows and the context only, so it is
        kept (up to :data:`.kept.KEPT_TAPE_BYTES` in all) and reused by later blocks and calls with the
        same rows and context. Reused only while the model's parameters and buffers are the ones it was recorded on
        (the front door, seeing :meth:`model_version` change, calls :meth:`refresh_background_outputs`, which drops
        every kept tape) and a plain forward of those rows (a fraction of a pass's cost: no operation is intercepted)
        still gives the kept outputs bit for bit (a changed attribute that forward() reads, or a background changed
        in place, change them, and the pass runs again). An attribute change that moves what the pass records but
        not one bit of the references' outputs is not seen (the additivity check then fails): call
        ``explainer.engine.forget_reference_passes()`` after such a change. ``state``: the model's state, taken
        before (each pass and plain forward here restores it)."""
        kept = self.kept.reuse(block, context, state)
        if kept is not None:
            return kept
        # (copies: forward() may work in place on its inputs)
        outputs, _ = run_pass(
            self.model, self.kept.distinct_rows(block, context), self.registry, tape := Tape(),
            PassSettings(replay=False, take=self._take, state=state),
        )  # fmt: skip
        # kept unchecked: its first reuse in a later call runs the plain forward that vets a kept tape (a call that
        # never reuses it, explain() on one block, pays no plain forward)
        self.kept.keep(block, context, tape, outputs, None, recorded_now=True)
        return tape, outputs

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
            failure = self.checks.plain_failure()
            if failure is not None:  # the model fails on the background without rnnshap too
                raise InputError(self.checks.misfit(failure)) from error
            if not follow:
                raise
            raise InputError(
                f"The model failed on the background ({error}). Input(s) {follow} are integers: rnnshap treats "
                "integer inputs as token ids (when they feed an embedding), numbers (when cast to floating point) "
                "or context such as lengths and masks (used as given)."
            ) from error

    # -- inputs -----------------------------------------------------------------------------------
    def inputs(self, X: Any, what: str) -> list[Tensor]:
        form = self.layer_form
        converted = None if form is None else form.layer_inputs(X, what, self._take)
        if form is None or converted is None:
            return self._inputs(X, what)
        result = self._inputs(converted, what)
        form.remember(result)
        return result

    def take(self, inputs: list[Any], start: int, stop: int) -> list[Any]:  # type: ignore[override]
        part = [x[start:stop] for x in inputs]
        if self.layer_form is not None:
            self.layer_form.remember(part)  # (a block of layer tensors: taken as they are by inputs)
        return part

    def _inputs(self, X: Any, what: str) -> list[Tensor]:
        """``X`` as the model's inputs: tensors of the background's dtype and device, matching it."""
        if isinstance(X, dict) and self.input_names is not None:
            if set(X) != set(self.input_names):
                raise InputError(
                    f"{what} has the keys {sorted(map(str, X))}, the background {sorted(map(str, self.input_names))}: "
                    "give the same inputs"
                )
            X = [X[k] for k in self.input_names]
        device, dtype = model_device_and_dtype(self.model)
        if dtype is not None and self.model_dtype is not None and (dtype, device) != (self.model_dtype, self.device):
            now = f"{str(dtype).replace('torch.', '')} on {device}"
            then = f"{str(self.model_dtype).replace('torch.', '')} on {self.device}"
            raise InputError(
                f"The model's parameters are {now} now, but this explainer was built for the model in {then} (its "
                f"background, kept reference passes and checks are): build a new explainer for the model as it is, "
                f"with the background in the same dtype and on the same device, rnnshap.DeepExplainer(model, "
                f"background.to(device, dtype))"
            )
        tensors = as_tensors(X, what, self.multi_input, self.device, self.model_dtype)
        check_matching(tensors, self.background, what)
        return tensors

    def background_rows(self) -> list[Tensor]:
        return [b.clone() for b in self.background]  # (a forward() that works in place must not rewrite the background)

    def predict(self, inputs: list[Tensor]) -> np.ndarray:
        state = PreservedState(self.model)  # explaining never changes the model, ranking outputs included
        try:
            with torch.no_grad():
                out = self._take(self.model(*inputs))
        finally:
            state.restore()
        return numpy(out.reshape(inputs[0].shape[0], -1)).astype(np.float64)

    def outputs_moved(self, inputs: list[Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
        if self.context_inputs or self.masked_inputs:
            return None  # (a pair's reference side takes the sample's context: the background alone is another function)
        n = int(inputs[0].shape[0])
        alone = self.predict(inputs), self.predict(self.background_rows())
        together = self.predict([torch.cat([x, b]) for x, b in zip(inputs, self.background, strict=True)])
        return np.abs(together[:n] - alone[0]), np.abs(together[n:] - alone[1])

    def compile_passes(self, mode: Any) -> None:
        """``compile=``: False, the input pass intercepted at every call; ``"trace"``, traced once per input shapes
        into a program of aten operations and run as one (the same values bit for bit); ``"auto"``, traced once a
        slot's intercepted passes have taken about what tracing it takes, and kept where it runs faster; True, that
        program compiled by ``torch.compile`` (see :mod:`.traced`). None (the default): ``"auto"`` where the
        background is on a CUDA device, where a program is replayed as one CUDA graph, and on the CPU for a model
        that calls recurrent cells in a Python loop (:data:`.traced.CELL_LOOP` calls a pass or more); else False
        (on the CPU a program pays for a Python loop of cells only, docs/performance.md; on another device nothing
        has measured it)."""
        given = check_mode(mode)
        if mode == "capture":
            self._captured, self._traced = CapturedPasses(self.model, self.registry, frozenset(self.number_inputs)), None
            return
        if mode is None:
            device = self.background[0].device.type
            mode = "auto" if device == "cuda" or (device == "cpu" and self._cell_calls >= traced.CELL_LOOP) else False
        if mode is False and traced.EVERY_PASS:
            mode = "trace"
        self._traced = None if mode is False else TracedPasses(mode, by_default=given is None)
        self._intercepted_path = "intercepted (compile=False)" if given is False else traced.DEFAULT_INTERCEPTED

    @property
    def pass_path(self) -> str:
        if self._captured is not None:
            return self._captured.path
        return self._intercepted_path if self._traced is None else self._traced.path

    def model_version(self) -> Any:
        """Every parameter and buffer of the model, by identity and version counter (an optimizer step,
        ``load_state_dict`` or a write under ``no_grad()`` bumps a version, replacing one changes an identity), and how
        many times the rules were registered or removed (see :meth:`Engine.model_version`)."""
        version: list[Any] = [self.registry.changes]
        for t in [*self.model.parameters(), *self.model.buffers()]:
            version.append((id(t), tensor_version(t)))
        return tuple(version)

    @property
    def distinct_references(self) -> bool:
        """Whether a block of several samples runs its reference pass on its distinct references only, the tape then
        repeated for its samples (see :meth:`ModelChecks.rows_alone`, checked on first use); set to False, every block
        runs its reference pass on its pairs."""
        if self._distinct_allowed and self._rows_laid_out is None:
            self._rows_laid_out = self.checks.rows_alone()
        return self._distinct_allowed and bool(self._rows_laid_out)

    @distinct_references.setter
    def distinct_references(self, value: bool) -> None:
        self._distinct_allowed = self._distinct_allowed and value

    @contextlib.contextmanager
    def call(self, just_built: bool = False) -> Iterator[None]:
        # the kept reference passes are vetted once a call (see KeptReferencePasses.reuse); a just-built explainer's
        # are its constructor's, recorded on the model as it is
        with self.kept.call(just_built):
            yield

    def forget_reference_passes(self) -> None:
        """Drop every kept reference pass: the next call runs its reference passes afresh (see
        ``_distinct_reference_pass``)."""
        self.kept.forget()
        if self._traced is not None:
            self._traced.forget()  # (their constants are the kept passes' tensors)
        if self._captured is not None:
            self._captured.forget()

    def refresh_background_outputs(self) -> None:
        if self.layer_form is not None:
            self.layer_form.refuse_refresh()
        # the model changed (trained, loaded, replaced): kept reference passes were recorded on another model, even
        # where the references' outputs, which vet them, happen not to move
        self.forget_reference_passes()
        self.background_outputs = self.predict(self.background_rows()).reshape(self.references, *self.output_shape)
        check_missing_values_handled(self.background, self.background_outputs.reshape(self.references, -1), "background")

    def cuda_device(self) -> torch.device | None:
        return self.device if self.device is not None and self.device.type == "cuda" else None

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
        grid = PairGrid(s, n_refs, deferred=[] if self._defer_checks else None)
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
        context = self.kept.shared_context(inputs, block)
        # (one sample: the pass on the references is the pairs' own, kept across calls; several: see distinct_references)
        distinct = n_refs > 1 and context is not None and (self._distinct_allowed if s == 1 else self.distinct_references)
        if self.kept.first_call_only and not (distinct and kept_key(block, context) in self.kept.first_call_only):
            self.kept.release_held()  # (a block that does not take the tape held for the first call: it is not taken)
        # both sides of a pair compare the explained sample's values where the model masks by them
        masks = {t: (inputs[t][sample], value) for t, value in self.masked_inputs.items()}
        if self._unordered[0]:  # (the samples may sit where the background does not show an order read)
            self.checks.unordered_topk(set(self._unordered[0]), self._unordered[1], [x[block.s0 : block.s1] for x in inputs])
        state = PreservedState(self.model)  # taken once: every pass and plain forward below restores it
        with differentiable_forward():
            shared = context if distinct else None
            ran = self._run_captured(leaves, references, grid, chosen_columns, state, (block, inputs), shared)
            if ran is None:
                p = PairPass(block, leaves, references, Tape(), grid, state, chosen_columns)
                ran = self._intercepted(p, inputs, context, distinct, shadows, masks)
        return self._block_result(block, leaves, references, ran, (k, per_pair, multipliers))

    @staticmethod
    def _block_result(
        block: Block,
        leaves: list[Tensor],
        references: list[Tensor],
        ran: tuple[Tensor, list[Tensor], Tensor, dict[int, Tensor]],
        asked: tuple[int, bool, bool],
    ) -> BlockResult:
        """The block's sums from its passes' outputs on the pairs, the gradients of the chosen ones w.r.t. the
        attributed leaves, the outputs on the reference side and each followed integer input's contributions per
        position (``ran``); ``asked``: the number of chosen outputs, ``per_pair`` and ``multipliers``."""
        s, n_refs = block.samples, block.references
        k, per_pair, multipliers = asked
        flat, grads, ref_outputs, per_position = ran

        def per_sample(contribution: Tensor) -> np.ndarray:
            """(k, pairs, *shape) → Σ over each sample's references, (k, s, *shape) in float64
            ((k, s, n_refs, *shape) with ``per_pair``)."""
            pairs = contribution.to(torch.float64).reshape(k, s, n_refs, *contribution.shape[2:])
            return (pairs if per_pair else pairs.sum(2)).detach().cpu().numpy()

        sums = [np.zeros((k, s, *((n_refs,) if per_pair else ()), *x.shape[1:])) for x in leaves]
        attributed = iter(grads)
        for t, (leaf, reference) in enumerate(zip(leaves, references, strict=True)):
            if leaf.requires_grad:
                grad = next(attributed)
                term = contribution(grad, leaf.detach(), reference)  # (the multipliers alone are refused alike)
                sums[t] += per_sample(grad if multipliers else term)
        for t, contributions in per_position.items():  # (token ids and integers used as numbers: each position's)
            sums[t] += per_sample(contributions.reshape(k, *leaves[t].shape))
        model_outputs = numpy(flat.detach()).astype(np.float64).reshape(s, n_refs, -1)[:, 0]
        ref_sums = numpy(ref_outputs.reshape(flat.shape)).astype(np.float64).reshape(s, n_refs, -1).sum(1)
        return BlockResult(sums, model_outputs, ref_sums)

    def _intercepted(
        self,
        p: PairPass,
        inputs: list[Tensor],
        context: list[Tensor] | None,
        distinct: bool,
        shadows: dict[int, Tensor],
        masks: dict[int, tuple[Tensor, frozenset[float]]],
    ) -> tuple[Tensor, list[Tensor], Tensor, dict[int, Tensor]]:
        """The block's passes where the captured one did not run (see :meth:`attribute`): the reference side, then the
        input pass as a traced program or intercepted, and its backward. The outputs on the pairs, the gradients of the
        chosen outputs w.r.t. the attributed leaves, the outputs on the pairs' reference side, and each followed integer
        input's contributions per position (``(k, its elements on the pairs)``). ``p``: the block's pairs (its tape is
        made here); ``context``, ``distinct``, ``shadows``, ``masks``: as :meth:`attribute` made them.

        The passes run again once for each of three reasons at most (each holds once, then no more): a traced program
        that failed midway runs them intercepted; a layout the check at construction missed runs every pair; a check
        the pass deferred that did not hold, a cell's rows or a softmax's path, runs them with each check read at
        once."""
        block, leaves, references, _, grid, state, chosen_columns = p.parts()
        device = chosen_columns.device
        if self._traced is not None:
            self._traced.pending = None  # (a pass waiting to be traced is this call's only: see TracedPasses.took)
        program = self._traced is not None and self._traceable(distinct)
        for _ in range(_RUNS):
            if grid.deferred is not None:
                grid.deferred.clear()  # (the checks of a pass run again do not count)
            tape, ref_outputs = self._reference_side(block, context, distinct, references, grid, shadows, masks, state)
            if program:  # (once a call: the pass as one program, else intercepted below)
                program = False
                cursor = tape.cursor
                samples = [x[block.s0 : block.s1] for x in inputs]
                ran = self._run_traced(context, samples, PairPass(block, leaves, references, tape, grid, state, chosen_columns))
                if ran is not None:
                    return *ran, ref_outputs, {}  # (no embedding: a pass with token inputs is not traced)
                if tape.cursor != cursor:
                    continue  # (a trace that failed took entries of the tape: the reference side again)
                if grid.deferred is not None:
                    grid.deferred.clear()
            try:
                timed = self._traced is not None and self._traced.waiting
                start = waited(device) if timed else 0.0
                done = self._input_side(PairPass(block, leaves, references, tape, grid, state, chosen_columns))
                if timed and done is not None:
                    self._traced.took(waited(device) - start)  # type: ignore[union-attr]
            except TapeMismatchError:
                if not distinct:
                    raise
                if self._traced is not None:
                    self._traced.pending = None  # (the pass on every pair that follows is not the one that waits)
                # the layout check missed a layout (or a pass takes another path on the pairs): every pair, from now on
                self.distinct_references = distinct = False
                continue
            except RnnShapError:
                if not grid.deferred or grid.all_held():
                    raise
                done = None  # (what a rule refused came of a check the pass deferred, which did not hold: again below)
            if done is not None:
                return done[0], done[1], ref_outputs, done[2]
            # a deferred check failed (a side's rows do not repeat: something sample-specific entered the reference side;
            # a softmax's rows are masked throughout): the passes again, each check read at once, as in later calls
            grid = PairGrid(grid.samples, grid.references)
            self._defer_checks = False
        raise AssertionError("rnnshap's intercepted pass ran again for a reason it had already met")

    def _input_side(self, p: PairPass) -> tuple[Tensor, list[Tensor], dict[int, Tensor]] | None:
        """The input pass through ``p.tape`` and its backward (see :meth:`attribute`): the outputs (pairs, n_outputs),
        the gradients of the chosen outputs w.r.t. the attributed leaves, and each followed integer input's
        contributions per position; None where the grid's checks of the rows do not hold (the passes run again)."""
        block, leaves, references, tape, grid, state, chosen_columns = p.parts()
        with torch.enable_grad(), tracking_missing_values() as missing:  # (rules/missing.py: masked-out NaN entries)
            # NaN in the pairs: every multiplier rule's backward stops 0 · NaN, also where the model masks them by a
            # comparison (where(x == x, f(x), 0)) rather than by a missing-value rule, which would mark the pass
            nan_in_leaves, nan_in_references = holds_nan(leaves, references)  # (one host read)
            missing.seen = nan_in_leaves or nan_in_references
            copies = [leaf.clone() for leaf in leaves]
            pass_masks = {t: (copies[t], value) for t, value in self.masked_inputs.items()}
            outputs, mode = run_pass(
                self.model, copies, self.registry, tape,
                PassSettings(
                    replay=True, follow=self.followed_inputs, pairs=grid, take=self._take, sample_masks=pass_masks,
                    state=state,
                ),
            )  # fmt: skip
        if not grid.all_held():  # (the one host sync of the rows' checks)
            return None
        with torch.enable_grad():
            flat = outputs.reshape(outputs.shape[0], -1)
            if nan_in_leaves:
                check_missing_values_handled(leaves, flat.detach(), "X", block.references, block.s0)
            grads, embedded = chosen_gradients(flat, chosen_columns, leaves, [e.leaf for e in mode.embedded])
        return flat, grads, self._per_position(mode, embedded, leaves)

    def _per_position(self, mode: AttributionMode, grads: list[Tensor], leaves: list[Tensor]) -> dict[int, Tensor]:
        """Every embedding output and cast of an integer input of an intercepted pass (``grads``: their gradients): its
        contribution per input position (summed over the embedding's vector), added to the position its ids name, for
        each followed input (``(k, its elements on the pairs)``)."""
        if not mode.embedded:
            return {}
        integers = mode.discrete
        lookups = [Lookup(0, e.leaf, e.reference, e.ids, e.feature_dims) for e in mode.embedded]
        per_position = token_contributions(lookups, grads, {0: integers.size})[0]
        return {t: per_position[:, integers.offsets[t] : integers.offsets[t] + leaves[t].numel()] for t in self.followed_inputs}

    def _run_captured(
        self,
        leaves: list[Tensor],
        references: list[Tensor],
        grid: PairGrid,
        chosen_columns: Tensor,
        state: PreservedState,
        rows: tuple[Block, list[Tensor]],
        context: list[Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor], Tensor, dict[int, Tensor]] | None:
        """``compile="capture"``: the outputs on the pairs, the gradients of the chosen ones w.r.t. the explained leaves,
        the outputs on the pairs' reference side, and each followed integer input's contributions per position (``(k,
        pairs × its elements per sample)``), from the captured graph (captured.py); None where the call runs the intercepted
        pass. The model's state is put back to ``state`` after it. ``rows``: the block and the call's inputs, whose
        samples and references the model's own forward runs to check the graph's outputs on both sides. ``context``:
        where the block's pairs hold its distinct references alike for every sample (see :meth:`attribute`), the
        context inputs' values its samples share (one row each), with which the reference side is then run on those
        references alone; else None."""
        captured = self._captured
        if captured is None:
            return None
        if self.masked_inputs:
            captured.path = "intercepted: a Keras Masking layer's input, whose mask the pass takes from each sample"
            return None
        if has_hooks(self.model):
            captured.path = "intercepted: the model has forward hooks, which the pass runs as they ask"
            return None
        block = rows[0]
        # the model's own outputs on the block's references (with the context its samples share, where they share it:
        # else the reference side depends on the sample): they check the graph's reference side, and vet a reference
        # side kept from an earlier call
        shared = [] if not self.context_inputs else context
        plain = None
        if shared is not None and captured.off is None:
            backgrounds = self.kept.distinct_rows(block, shared, copies=False)  # (each run below copies them)
            plain = self._plain_forward(backgrounds, state)
        alone = (kept_key(block, shared), backgrounds, plain) if context is not None and plain is not None else None
        followed = frozenset(self.followed_inputs)  # (token ids and integers cast to floating point)
        nan_in_leaves, nan_in_references = holds_nan(leaves, references)  # (one host read)
        try:
            nan = nan_in_leaves or nan_in_references
            ran = self._captured_runs(captured, (leaves, references, chosen_columns), grid, followed, alone, state, nan)
        finally:
            state.restore()
        if ran is None:
            return None
        if nan_in_leaves and not bool(torch.isfinite(ran[0].detach()).all()):
            # (NaN among the outputs: the intercepted pass says whether the model leaves them unhandled, by name)
            captured.path = "intercepted: missing values (NaN) reached the outputs of the captured graph"
            return None
        moved = self._captured_outputs_moved(ran[0].detach(), ran[2], grid, rows, state, plain)
        if moved is not None:  # (the graph's interpretation is not the model's function: never answered from it)
            captured.off = f"the captured graph's outputs are not the model's own ({moved})"
            captured.path = f"intercepted: {captured.off}"
            return None
        return ran

    def _captured_runs(
        self,
        captured: CapturedPasses,
        pairs: tuple[list[Tensor], list[Tensor], Tensor],
        grid: PairGrid,
        followed: frozenset[int],
        alone: tuple[Any, list[Tensor], Tensor] | None,
        state: PreservedState,
        nan: bool,
    ) -> tuple[Tensor, list[Tensor], Tensor, dict[int, Tensor]] | None:
        """The captured pass on the pairs (the leaves, their references and each pair's explained columns), run again
        with each check read at once where a check it deferred did not hold (see :meth:`_run_captured`); ``nan``:
        whether the pairs hold NaN."""
        leaves, references, columns = pairs
        with tracking_missing_values() as missing:  # (rules/missing.py: NaN a mask makes inside the model, -inf too)
            missing.seen = nan  # (NaN in the pairs: every multiplier rule's backward stops 0 · NaN, as intercepted)
            try:
                ran = captured.run(leaves, references, grid, self._take, followed, alone, state.restore, columns)
            except RnnShapError:  # (what a rule refused may come of a check it deferred, which did not hold)
                if not grid.deferred or grid.all_held():
                    raise
                ran = None
            if grid.deferred and not grid.all_held():  # (a side's rows, a softmax's path): each check read at once
                state.restore()  # (what the run wrote into the model's buffers)
                grid = PairGrid(grid.samples, grid.references)
                ran = captured.run(leaves, references, grid, self._take, followed, alone, state.restore, columns)
                self._defer_checks = False  # (as in later calls)
        return ran

    def _captured_outputs_moved(
        self,
        outputs: Tensor,
        reference: Tensor,
        grid: PairGrid,
        rows: tuple[Block, list[Tensor]],
        state: PreservedState,
        plain: Tensor | None,
    ) -> str | None:
        """Where the captured graph's outputs on the pairs are not the model's own, in words (else None): its input side
        against a plain forward of the block's samples, and its reference side against ``plain``, the model's outputs
        on the block's references (None where a context input makes the reference side depend on the sample), each
        output within the additivity check's tolerance (:meth:`_gap`). A plain forward of the samples and references
        costs (samples + references) rows, where the pass costs samples x references."""
        block, inputs = rows
        n = grid.references
        samples = [x[block.s0 : block.s1] for x in inputs]
        gap = self._gap(self._plain_forward(samples, state), outputs.reshape(block.samples, n, -1)[:, 0])
        if gap is not None:
            return f"on the samples, by {gap:.2g} of an output's scale"
        gap = None if plain is None else self._gap(plain, reference.reshape(block.samples, n, -1)[0])
        return None if gap is None else f"on the references, by {gap:.2g} of an output's scale"

    def _plain_forward(self, rows: list[Tensor], state: PreservedState) -> Tensor:
        """The model's outputs on copies of ``rows``, without autograd; its state put back to ``state`` after."""
        copies = [x.clone() for x in rows]
        try:
            with torch.no_grad():
                return self._take(self.model(*copies))
        finally:
            state.restore()

    def _traceable(self, distinct: bool) -> bool:
        """Whether a call's input pass may run as a program (``compile=``); where not, the traced passes say why."""
        assert self._traced is not None
        if not distinct:
            why = (
                "the reference pass runs on the reference side of every pair (the block's samples differ in a context "
                "input, or a layout needs every pair), which a program does not keep"
            )
        elif self.followed_inputs:
            why = "token inputs, whose attributions per id the pass gathers as it runs"
        elif self.masked_inputs:
            why = "a Keras Masking layer's input, whose mask the pass takes from each sample"
        else:
            return True
        self._traced.path = f"intercepted: {why}"
        return False

    def _run_traced(self, context: list[Tensor] | None, samples: list[Tensor], p: PairPass) -> tuple[Tensor, list[Tensor]] | None:
        """:meth:`_input_side` as one program (``compile=``, see :mod:`.traced`): the outputs and the gradients, or
        None where the pass runs intercepted this call. A program is kept per input shapes, outputs chosen and kept
        reference pass (its tape's tensors are the program's constants): only where that pass is kept between calls,
        and no forward hook is set (a program would not run it)."""
        traced = self._traced
        assert traced is not None
        block, leaves, chosen_columns = p.block, p.leaves, p.chosen_columns
        kept = self.kept.held(block, context)
        if kept is None:
            traced.path = "intercepted: the reference pass is not kept between calls (its tape is a program's constant)"
            return None
        if has_hooks(self.model):
            traced.path = "intercepted: the model has forward hooks, which a traced program would not run"
            return None
        entries = kept[0]
        slot = (kept_key(block, context), *((x.dtype, tuple(x.shape)) for x in leaves), tuple(chosen_columns.shape))
        # (what the program keeps: the kept pass's tape, the model's Python state, autocast, the default dtype)
        device = chosen_columns.device.type
        version = (id(entries), python_state(self.model), torch.is_autocast_enabled(device), torch.get_default_dtype())

        def region(*tensors: Tensor) -> list[Tensor]:
            pairs = zip(tensors[:-1], leaves, strict=True)
            given = [t.detach().requires_grad_(True) if leaf.requires_grad else t for t, leaf in pairs]
            done = self._input_side(dataclasses.replace(p, leaves=given, chosen_columns=tensors[-1]))
            if done is None:
                raise NotThisCall("a check the pass deferred did not hold while it was traced")
            flat, grads, per_position = done
            if per_position:
                raise RuntimeError("the pass has token inputs")
            return [*grads, flat.detach()]

        def rows(outputs: list[Tensor]) -> Tensor:
            return outputs[-1].reshape(block.samples, block.references, -1)[:, 0]

        ran = traced.run(
            slot, version, entries, region, [*(leaf.detach() for leaf in leaves), chosen_columns],
            lambda outputs: self._forward_now(samples, rows(outputs), p.state),
        )  # fmt: skip
        if ran is None:
            return None
        # a program keeps the model as it was traced: it is used only where the model's forward, run now on the
        # explained samples, reads what it read then (reads.py) and gives the program's outputs within the additivity
        # check's tolerance, output by output
        differed, reads = self._forward_now(samples, rows(ran), p.state)
        if not traced.reads_hold(slot, reads):
            return None
        if differed is not None:
            traced.drop(slot, f"the model's outputs on these inputs moved from the traced program's by {differed:.2g}")
            return None
        return ran[-1], ran[:-1]

    def _forward_now(self, samples: list[Tensor], outputs: Tensor, state: PreservedState) -> tuple[float | None, Any]:
        """A plain forward of ``samples`` as the model is now: how far it lies from ``outputs`` (one row per sample)
        relative to each output's scale, where that is beyond the additivity check's tolerance for the model's dtype
        for some output (else None), and what the forward read (:class:`.reads.ForwardReads`). The model's state is put
        back to ``state`` after it."""
        copies = [x.clone() for x in samples]
        try:
            with torch.no_grad(), ForwardReads(copies) as reads:
                now = self._take(self.model(*copies))
        finally:
            state.restore()
        return self._gap(now, outputs), reads

    def _gap(self, now: Tensor, outputs: Tensor) -> float | None:
        """How far ``outputs`` lie from ``now`` (a plain forward's, one row per sample) relative to each output's scale,
        where that is beyond the additivity check's tolerance for the model's dtype for some output (else None)."""
        now = now.reshape(outputs.shape).to(torch.float64)
        if not now.numel():
            return None
        scale = now.abs().amax(0).clamp_min(TINY.get(self.dtype, torch.finfo(torch.float64).tiny))
        gap = float(((now - outputs.to(torch.float64)).abs().amax(0) / scale).max())
        return None if gap <= RTOL.get(self.dtype, 1e-4) else gap

    def _reference_side(
        self,
        block: Block,
        context: list[Tensor] | None,
        distinct: bool,
        references: list[Tensor],
        grid: PairGrid,
        shadows: dict[int, Tensor],
        masks: dict[int, tuple[Tensor, frozenset[float]]],
        state: PreservedState,
    ) -> tuple[Tape, Tensor]:
        """The block's reference pass (see :meth:`attribute`): its tape and outputs, on the block's distinct references
        with ``distinct`` (the tape then repeated for its samples, see ``_distinct_reference_pass``), else on the
        reference side of every pair (``references``)."""
        s = block.samples
        with torch.no_grad():
            if distinct:
                # the reference pass runs on the block's references once, and the tape repeats them
                # for the pairs; it depends on nothing else, so a later block or call reuses it
                assert context is not None
                tape, ref_outputs = self._distinct_reference_pass(block, context, state)
            else:  # forward() may work in place on its inputs: copies
                ref_outputs, _ = run_pass(
                    self.model,
                    [r.clone() for r in references],
                    self.registry,
                    tape := Tape(),
                    PassSettings(
                        replay=False,
                        follow=self.followed_inputs,
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
            tape.keeps_repeats = self.kept.fit_repeated(block, context, s)
            ref_outputs = repeat_along(ref_outputs, 0, s)
        return tape, ref_outputs


def take_output(outputs: OutputLayout, model: nn.Module, out: Any) -> Any:
    """The explained output tensor (``outputs``: the output chosen) of ``model``'s result ``out`` (see
    :mod:`rnnshap.engines.outputs`)."""
    if isinstance(out, Tensor) and outputs.choice is None:
        return out
    leaf = outputs.leaf(out, lambda t: isinstance(t, Tensor))
    if leaf is not None:
        return leaf
    flat, names = output_parts(out)
    if not flat or not all(isinstance(t, Tensor) for t in flat):
        return out  # run_pass says what the model returned
    return outputs.take(
        flat,
        names or getattr(model, "output_names", None),
        lambda t: t.shape,
        lambda parts: torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1),
    )


def numpy(t: Tensor) -> np.ndarray:
    """``t`` as a numpy array; bfloat16, which numpy lacks, as float32."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
