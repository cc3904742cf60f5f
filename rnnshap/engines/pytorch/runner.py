"""One pass of the engine over the model: :func:`run_pass` sets up an :class:`AttributionMode`
(``passes.py``) for the reference pass or the input pass, routes the modules that have a rule of their
own through it (:class:`ModuleRules`), runs ``model(*inputs)`` under it, puts the model's state back,
and raises what the pass found: refused operations, a forward that draws random numbers or updates
buffers from its inputs, an output that is not a tensor the explained inputs reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ...errors import InputError, ModelStateError, UnsupportedOperationError
from ...rules.base import PairGrid, Rule
from ...rules.registry import RuleRegistry
from ..base import Block
from .functions import routed_functions
from .passes import AttributionMode
from .randomness import RandomStates, draws_matter, random_forward_error
from .state import AsFunction, PreservedState
from .tape import Tape
from .tracking import RefusedNow

Tensor = torch.Tensor


class ModuleRules:
    """Routes calls of modules that have a module-level rule through the mode, and undoes it.

    The module's ``forward`` is shadowed by an instance attribute for the duration of a pass and
    the attribute is deleted afterwards, which leaves the module exactly as it was.
    """

    def __init__(self, model: nn.Module, registry: RuleRegistry) -> None:
        # (no module walk where the registry holds no module rule, as rnnshap's own holds none)
        modules = model.modules() if registry.modules else ()
        self.targets = [(m, rule) for m in modules if (rule := registry.module_rule(m)) is not None]
        self._patched: list[tuple[nn.Module, bool, Any]] = []

    def install(self, mode: AttributionMode) -> None:
        for module, rule in self.targets:
            had_own = "forward" in module.__dict__
            original = module.forward

            def routed(*args: Any, _m: nn.Module = module, _f: Any = original, _r: Rule = rule, **kwargs: Any) -> Any:
                return mode.module_call(_m, _f, _r, args, kwargs)

            self._patched.append((module, had_own, module.__dict__.get("forward")))
            module.forward = routed  # type: ignore[method-assign]

    def remove(self) -> None:
        for module, had_own, previous in reversed(self._patched):
            if had_own:
                module.forward = previous  # type: ignore[method-assign]
            else:
                del module.forward
        self._patched.clear()


@dataclass(frozen=True)
class PassSettings:
    """What one pass is asked to do besides running ``model(*inputs)`` (see :func:`run_pass`).

    - ``replay``: the input pass (True: each operation takes its entry from the tape and runs through its
      rule) or the reference pass (False: the tape is recorded);
    - ``follow``: the integer inputs to follow (token ids, numbers or context; see discrete.py);
    - ``pairs``: how the batch is made of (sample, reference) pairs, when it is (see :class:`PairGrid`);
    - ``shadows``: in the reference pass, the explained samples' values of followed inputs (the masks
      made from them are taken from the explained samples);
    - ``take``: picks the explained tensor of a result with several, inside the pass (engines/outputs.py);
    - ``sample_masks``: float inputs the model masks by comparing them with values → (the explained
      samples' values, those values): those comparisons read the samples' values;
    - ``state``: the model's state taken before the pass (one taken for several passes in a row, each of
      which restores it), else taken by the pass;
    - ``watch_random``: refuse a forward that draws random numbers (the constructor's probe).
    """

    replay: bool
    follow: Sequence[int] = ()
    pairs: PairGrid | None = None
    shadows: Mapping[int, Tensor] | None = None
    take: Callable[[Any], Any] | None = None
    sample_masks: Mapping[int, tuple[Tensor, frozenset[float]]] | None = None
    state: PreservedState | None = None
    watch_random: bool = False


def run_pass(
    model: nn.Module, inputs: list[Tensor], registry: RuleRegistry, tape: Tape, settings: PassSettings
) -> tuple[Tensor, AttributionMode]:
    """Run ``model(*inputs)`` as the reference pass or the input pass (``settings.replay``), with the rules of
    ``registry``, recording or replaying ``tape``, as ``settings`` asks (see :class:`PassSettings`).
    Returns the output and the mode, which holds the attribution leaves of the integer inputs and what was
    learned about them.
    """
    mode = AttributionMode(registry, tape, settings.replay, settings.pairs)
    module_rules = ModuleRules(model, registry)
    state = settings.state
    if state is None:
        state = PreservedState(model)  # a forward may write into buffers (spectral_norm in training mode)
    randoms = None
    if settings.watch_random:
        mode.random_draws = []
        randoms = RandomStates(model)
        given = [x.clone() for x in inputs]  # (to run again with other draws, see draws_matter)
    module_rules.install(mode)
    stopped = False
    try:
        with torch.enable_grad(), routed_functions(mode), AsFunction(model), mode:
            mode.track(inputs)
            mode.batch_rows = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else None
            for index, (values, value) in (settings.sample_masks or {}).items():
                mode.sample_masks[inputs[index]] = (values, value)
            for index in settings.follow:
                mode.follow_discrete(index, inputs[index], None if settings.shadows is None else settings.shadows.get(index))
            output = model(*inputs)
            if settings.take is not None:
                output = settings.take(output)
        written = [name for name, buffer in model.named_buffers() if mode.is_tracked(buffer)] if settings.watch_random else []
    except RefusedNow:
        stopped = True  # (raised below with the pass's other refusals)
    finally:
        drawn = randoms.drawn() if randoms is not None else []  # (before the state is restored: it resets held generators)
        mode.drew = bool(drawn)
        module_rules.remove()
        state.restore()
    if stopped:
        mode.raise_if_unsupported()
    evidence = draws_matter(model, given, settings.take, output, mode.deferred, drawn) if drawn else None
    if evidence is not None:  # (named with the random functions)
        error = random_forward_error(sorted(set(mode.random_draws or ())) + drawn, evidence)
        error.eval_may_help = True  # type: ignore[attr-defined]  # (see model_forms.in_eval_mode)
        raise error
    if mode.deferred.pending:
        mode.refuse_deferred(output)
    if written:
        error = ModelStateError(
            f"forward() writes values computed from its inputs into the buffer(s) {', '.join(map(repr, written))} (running "
            "statistics updated in place), so each call changes the function the next call computes, and the output of a "
            "batch depends on the batches before it. rnnshap explains the model as it is: stop the update when not "
            "training (if self.training: ...), or keep the statistics out of forward(). The model is left as given."
        )
        error.eval_may_help = True  # type: ignore[attr-defined]
        raise error
    mode.raise_if_unsupported()
    if settings.replay:
        tape.check_consumed()
    if isinstance(output, torch.distributions.Distribution):
        raise InputError(
            f"The model returns a distribution ({type(output).__name__}), not a tensor: rnnshap explains numbers the model "
            "computes. Explain the distribution's parameters or summaries: wrap the model in an nn.Module whose forward() "
            "returns them, e.g. `d = model(x); return torch.cat([d.mean, d.stddev], -1)` (or d.loc, d.scale, d.logits, "
            "d.probs), then pick one with output= or outputs=. Drawing a sample is random and cannot be explained."
        )
    if not isinstance(output, Tensor):
        raise TypeError(
            f"The model returned {type(output).__name__}; rnnshap explains models that return a tensor, or a "
            "list, tuple or dict of tensors (DeepExplainer(..., output=i_or_name) picks one). Wrap the model "
            "in an nn.Module whose forward() returns the tensor to explain."
        )
    if output.is_complex():
        raise InputError(
            f"The model returns a complex tensor ({output.dtype}): rnnshap explains real numbers. Explain its real and "
            "imaginary parts: wrap the model in an nn.Module whose forward() returns torch.view_as_real(out) (or "
            "torch.cat([out.real, out.imag], -1)), or its magnitude written as torch.sqrt(out.real ** 2 + out.imag ** 2)."
        )
    if not mode.is_tracked(output):
        raise UnsupportedOperationError(
            [("the model's output", "it does not depend on the explained inputs through operations rnnshap can see", "output")]
        )
    return output, mode


@dataclass(frozen=True)
class PairPass:
    """What one input pass over a block's pairs takes (see :meth:`~.engine.TorchEngine.attribute`)."""

    block: Block
    #: the input side of every pair, per input (floating ones requiring grad: the attributed leaves)
    leaves: list[Tensor]
    #: the reference side of every pair, per input
    references: list[Tensor]
    #: the reference pass's tape, which the input pass consumes
    tape: Tape
    grid: PairGrid
    #: the model's state, put back after each pass
    state: PreservedState
    #: the explained outputs' columns, per pair
    chosen_columns: Tensor

    def parts(self) -> tuple[Block, list[Tensor], list[Tensor], Tape, PairGrid, PreservedState, Tensor]:
        return self.block, self.leaves, self.references, self.tape, self.grid, self.state, self.chosen_columns


__all__ = ["ModuleRules", "PairPass", "PassSettings", "run_pass"]
