"""Checks that a model and its inputs can be explained exactly, with errors that say what to do,
and :class:`PreservedState`, which leaves the model as it was found after every pass."""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.modules.module as _module_module
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ...errors import SHAPLEY_DOOR, InputError, ModelStateError, ModelTypeError
from ..base import batch_axis_advice, one_sample_hint

Tensor = torch.Tensor


class PreservedState:
    """The state a forward pass may change, taken before a pass and put back after it.

    A forward pass may write into the model: ``spectral_norm`` in training mode runs a power
    iteration that updates its ``u`` and ``v`` buffers, ``weight_norm`` and the old
    ``spectral_norm`` store the weight they compute as a plain attribute, and a model may cache
    tensors on itself. Every buffer (its values, bit for bit, and the object itself) and every
    tensor-valued attribute of every module is restored after each pass, so that explaining leaves
    the model bit-identical and every pass (reference and input alike) starts from the same state:
    the explained function is the model's forward as it would run next on the model as given.
    Floating parameters are not copied: they are restored as objects, and forward() should not write into
    them; integer parameters (counters: a Keras SeedGenerator's state on the torch backend) get their values
    back. Torch's global generators (CPU, and CUDA where it runs) and those the model holds are put back too,
    so that a draw whose result never reaches the output leaves no trace.
    """

    def __init__(self, model: nn.Module) -> None:
        self.buffers: list[tuple[nn.Module, str, Tensor, Tensor]] = []
        self.parameters: list[tuple[nn.Module, dict[str, Any]]] = []
        self.attributes: list[tuple[nn.Module, dict[str, Tensor]]] = []
        self.counters: list[tuple[Tensor, Tensor]] = []
        #: random number generators the model holds (a draw from one is refused; its state is put back)
        self.generators: list[tuple[torch.Generator, Tensor]] = []
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    self.buffers.append((module, name, buffer, buffer.detach().clone()))
            if module._parameters:
                self.parameters.append((module, dict(module._parameters)))
                # integer parameters are counters, not weights (a Keras SeedGenerator's state on the torch backend,
                # advanced by each call): their values are put back too
                self.counters.extend(
                    (p, p.detach().clone()) for p in module._parameters.values() if p is not None and not p.is_floating_point()
                )
            tensors = {}
            for key, value in vars(module).items():
                if type(value) in _PLAIN:  # (most of a module's attributes; torch.Generator's isinstance runs Python)
                    continue
                if isinstance(value, Tensor):
                    tensors[key] = value
                elif isinstance(value, torch.Generator):
                    self.generators.append((value, value.get_state()))
            self.attributes.append((module, tensors))
        #: torch's global generator: a draw whose result never reaches the output (a dropout mask Keras makes at
        #: inference, see ``draws_matter``) leaves it as it was
        self.torch_random = torch.get_rng_state()
        self.cuda_random = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self, random_state: bool = True) -> None:
        """Put the state back (``random_state``: the generators too, torch's global one and the model's)."""
        compared: list[tuple[Tensor, Tensor]] = []
        for module, name, buffer, saved in self.buffers:
            if module._buffers.get(name) is not buffer:
                module._buffers[name] = buffer
            if buffer.is_meta:  # shapes without values: nothing to put back
                continue
            if buffer.layout != torch.strided:  # sparse (a graph's adjacency): torch.equal does not take it
                if not _same_sparse(buffer, saved):
                    with torch.no_grad():
                        buffer.copy_(saved)
                continue
            if buffer.shape != saved.shape or buffer.dtype != saved.dtype:
                _put_back(buffer, saved)
            else:
                compared.append((buffer, saved))
        # (compared on the device and read once, not once per buffer: nothing changed is the common case; a copy_ of
        # each instead would bump every buffer's version counter, which tells the explainer that the model changed)
        for buffer, saved in _changed(compared):
            _put_back(buffer, saved)
        for module, parameters in self.parameters:
            now = module._parameters
            if now.keys() != parameters.keys() or any(now[key] is not value for key, value in parameters.items()):
                module._parameters.clear()
                module._parameters.update(parameters)
        for counter, saved in self.counters:
            if not counter.is_meta and not torch.equal(counter, saved):
                with torch.no_grad():
                    counter.copy_(saved)
        for module, tensors in self.attributes:
            own = vars(module)
            for key in [k for k, v in own.items() if type(v) not in _PLAIN and isinstance(v, Tensor) and k not in tensors]:
                del own[key]
            own.update(tensors)
        if random_state:
            for generator, state in self.generators:
                generator.set_state(state)
            torch.set_rng_state(self.torch_random)
            if self.cuda_random is not None:
                torch.cuda.set_rng_state_all(self.cuda_random)


#: the exact types of most attributes of a module (flags, sizes, names, its tables of parameters, buffers, submodules
#: and hooks), none of them a tensor or a generator: passed over without an isinstance check
_PLAIN = frozenset({bool, int, float, str, type(None), dict, OrderedDict, list, tuple, set, frozenset})


class AsFunction:
    """``with AsFunction(model):`` the model as the function it computes, for rnnshap's passes: the backward
    hooks of its modules (and the global ones) set aside, and compiled modules run eagerly; everything put
    back afterwards (the same hook dicts: their handles still remove them).

    Backward hooks belong to training (a gradient scaled or clipped, a norm logged): run inside rnnshap's
    passes they would change its multipliers, or crash in its batched backward (``float(g.norm())``).
    Forward hooks that change outputs are part of the function, and run. A module compiled with
    ``torch.compile`` (a wrapper, ``OptimizedModule``, anywhere in the model) or ``module.compile()`` (in place)
    computes what its original module computes: that module runs, seen by the passes, and nothing is compiled."""

    _GLOBALS = ("_global_backward_hooks", "_global_backward_pre_hooks")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.hooks: list[tuple[nn.Module, Any, Any]] = []
        self.globals: dict[str, Any] = {}
        self.compiled: list[tuple[nn.Module, str, Any, bool]] = []

    def __enter__(self) -> AsFunction:
        for module in self.model.modules():
            own = module.__dict__
            if own.get("_backward_hooks") or own.get("_backward_pre_hooks"):
                self.hooks.append((module, module._backward_hooks, module._backward_pre_hooks))
                module._backward_hooks = OrderedDict()
                module._backward_pre_hooks = OrderedDict()
            if own.get("_compiled_call_impl") is not None:  # module.compile()
                self.compiled.append((module, "_compiled_call_impl", own["_compiled_call_impl"], True))
                own["_compiled_call_impl"] = None
            if type(module).__name__ == "OptimizedModule":
                original = compiled_original(module)
                if original is not None:  # torch.compile(module): its forward, the compiled call of the original
                    self.compiled.append((module, "forward", own.get("forward"), "forward" in own))
                    own["forward"] = original.__call__
        for name in self._GLOBALS:
            hooks = getattr(_module_module, name, None)
            if hooks:
                self.globals[name] = hooks
                setattr(_module_module, name, OrderedDict())
        return self

    def __exit__(self, *exc: Any) -> None:
        module_module = _module_module
        for module, hooks, pre_hooks in self.hooks:
            module._backward_hooks = hooks
            module._backward_pre_hooks = pre_hooks
        for module, key, value, had in reversed(self.compiled):
            if had:
                vars(module)[key] = value
            else:
                vars(module).pop(key, None)
        for name, hooks in self.globals.items():
            setattr(module_module, name, hooks)
        self.hooks.clear()
        self.compiled.clear()
        self.globals.clear()


def compiled_original(module: nn.Module) -> nn.Module | None:
    """The original module of a ``torch.compile`` wrapper (``OptimizedModule``), or None."""
    if type(module).__name__ == "OptimizedModule":
        original = vars(module).get("_modules", {}).get("_orig_mod")
        if isinstance(original, nn.Module):
            return original
    return None


def compiled_anywhere(model: nn.Module) -> bool:
    """Whether ``model`` holds a module compiled with ``torch.compile`` or ``module.compile()``."""
    return any(compiled_original(m) is not None or vars(m).get("_compiled_call_impl") is not None for m in model.modules())


def _changed(pairs: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """The (buffer, saved copy) pairs, of equal shapes and dtypes, whose values differ (NaN differs, as for
    ``torch.equal``): one read from each device where none does, one per pair on a device where one does."""
    by_device: dict[torch.device, list[tuple[Tensor, Tensor]]] = {}
    for buffer, saved in pairs:
        by_device.setdefault(buffer.device, []).append((buffer, saved))
    changed = []
    for group in by_device.values():
        if len(group) > 1 and not bool(torch.stack([torch.ne(b, s).any() for b, s in group]).any()):
            continue
        changed += [(b, s) for b, s in group if not torch.equal(b, s)]
    return changed


def _put_back(buffer: Tensor, saved: Tensor) -> None:
    with torch.no_grad():
        if buffer.shape != saved.shape:
            buffer.resize_(saved.shape)
        buffer.copy_(saved)


def _same_sparse(a: Tensor, b: Tensor) -> bool:
    """Whether two sparse tensors hold the same values (compared dense: buffers are small)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.layout != b.layout:
        return False
    try:
        return bool(torch.equal(a.to_dense(), b.to_dense()))
    except RuntimeError:  # a layout without to_dense: assume changed (copy_ puts it back)
        return False


#: torch's functions that draw random numbers (torch.distributions samples through them): the pass names
#: those forward() called in the refusal of a forward whose draws change a generator's state (see ``RandomStates``)
RANDOM_FUNCTIONS = frozenset(
    f
    for f in [
        *(getattr(torch, name, None) for name in (
            "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal", "bernoulli",
            "multinomial", "poisson", "binomial", "_standard_gamma", "_sample_dirichlet", "rrelu", "rrelu_",
        )),
        *(getattr(torch.Tensor, name, None) for name in (
            "uniform_", "normal_", "bernoulli_", "bernoulli", "exponential_", "geometric_", "log_normal_", "cauchy_",
            "random_", "multinomial",
        )),
    ]
    if f is not None
)  # fmt: skip


#: torch's dropout functions, which draw only when training: (function, position of ``training``, its default)
_DROPOUTS: tuple[tuple[Any, int, bool], ...] = tuple(
    (f, position, default)
    for f, position, default in [
        (torch.nn.functional.dropout, 2, True),
        (getattr(torch.nn.functional, "dropout1d", None), 2, True),
        (torch.nn.functional.dropout2d, 2, True),
        (torch.nn.functional.dropout3d, 2, True),
        (torch.nn.functional.alpha_dropout, 2, False),
        (torch.nn.functional.feature_alpha_dropout, 2, False),
        (torch.dropout, 2, True),
        (torch.nn.functional.rrelu, 3, False),
    ]
    if f is not None
)
_TRAINING_NAMES = ("training", "train")


def random_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """Whether ``func(*args, **kwargs)`` draws random numbers: one of :data:`RANDOM_FUNCTIONS`, a dropout
    with ``training`` on (``F.dropout``'s default), or ``F.gumbel_softmax``."""
    if func in RANDOM_FUNCTIONS or func is torch.nn.functional.gumbel_softmax:
        return True
    for f, position, default in _DROPOUTS:
        if func is f:
            kwargs = kwargs or {}
            flag = next((kwargs[k] for k in _TRAINING_NAMES if k in kwargs), args[position] if len(args) > position else default)
            return bool(flag)
    return False


class RandomStates:
    """The global random states a forward may draw from (Python's ``random``, numpy's global
    generator, torch's CPU and CUDA generators): taken before a pass, compared and put back after it.

    A forward whose output is not a function of its inputs (teacher forcing decided by
    ``random.random()``, a sampled head) cannot be attributed: two calls on the same x differ. A
    draw is seen by the state it changes: the global generators', and those of the generators the
    model holds as attributes of its modules. A generator made and seeded inside forward() changes
    no state that outlives the call: its draws are a constant, and the forward a function. The
    pass records which of torch's random functions forward() called
    (``AttributionMode.random_draws``), to name them."""

    def __init__(self, model: nn.Module | None = None) -> None:
        #: generators the model holds as attributes of its modules: torch's, numpy's, Python's
        self.held: list[tuple[str, Any, Any]] = []
        for name, module in (model.named_modules() if model is not None else []):
            for key, value in vars(module).items():
                if type(value) in _PLAIN:  # (no generator)
                    continue
                where = f"{name}.{key}" if name else key
                if isinstance(value, torch.Generator):
                    self.held.append((f"the torch.Generator {where!r}", value, value.get_state()))
                elif isinstance(value, np.random.Generator):
                    self.held.append((f"the numpy Generator {where!r}", value, value.bit_generator.state))
                elif isinstance(value, random.Random):
                    self.held.append((f"the random.Random {where!r}", value, value.getstate()))
        self.python = random.getstate()
        self.numpy: Any = np.random.get_state()
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def drawn(self) -> list[str]:
        """The generators drawn from since the states were taken (each then put back)."""
        sources = []
        for what, generator, state in self.held:
            if isinstance(generator, torch.Generator):
                if not torch.equal(generator.get_state(), state):
                    sources.append(what)
                    generator.set_state(state)
            elif isinstance(generator, np.random.Generator):
                if generator.bit_generator.state != state:
                    sources.append(what)
                    generator.bit_generator.state = state
            elif generator.getstate() != state:
                sources.append(what)
                generator.setstate(state)
        if random.getstate() != self.python:
            sources.append("Python's random module")
            random.setstate(self.python)
        now: Any = np.random.get_state()
        if now[0] != self.numpy[0] or not np.array_equal(now[1], self.numpy[1]) or now[2:] != self.numpy[2:]:
            sources.append("numpy.random (the global generator)")
            np.random.set_state(self.numpy)
        if not torch.equal(torch.get_rng_state(), self.torch):
            sources.append("torch's global random number generator")
            torch.set_rng_state(self.torch)
        if self.cuda is not None:
            cuda = torch.cuda.get_rng_state_all()
            if len(cuda) != len(self.cuda) or any(not torch.equal(a, b) for a, b in zip(cuda, self.cuda, strict=False)):
                sources.append("torch's CUDA random number generator")
                torch.cuda.set_rng_state_all(self.cuda)
        return sources


    def reseed(self, seed: int) -> None:
        """Start every generator taken here from another state (``seed``): the global ones and those the
        model holds. :meth:`drawn` puts them back."""
        for _, generator, _ in self.held:
            if isinstance(generator, torch.Generator):
                generator.manual_seed(seed)
            elif isinstance(generator, np.random.Generator):
                generator.bit_generator.state = np.random.default_rng(seed).bit_generator.state
            else:
                generator.seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)
        if self.cuda is not None:  # (only where CUDA runs: seeding it otherwise would queue a seed for its start)
            torch.cuda.manual_seed_all(seed)


#: the generators a draw of torch's functions changes, as :meth:`RandomStates.drawn` names them
TORCH_SOURCES = ("torch's global random number generator", "torch's CUDA random number generator", "the torch.Generator ")


#: the seeds every generator a forward drew from is started from, one run each, to tell a draw that changes the
#: output from one that never reaches it (stopping at the first run that differs). Sixteen runs: a draw that picks
#: a branch with probability p per call (teacher forcing, stochastic depth in training mode) stays unseen with
#: probability p^16 + (1-p)^16, below 1e-4 for p = 1/2 and 1e-2 for p = 1/4 (more draws per call, less)
DRAW_SEEDS = tuple(12345 + 7919 * k for k in range(16))

#: what :func:`draws_matter` says of a forward whose drawn values it followed into the output but whose outputs were
#: the same under every seed: the draws were not seen to change the output, and the refusal must not say they do
SAME_UNDER_SEEDS = "gave the same outputs, bit for bit,"


def draws_change(run: Callable[[], Any], first: Any, states: RandomStates, what: str) -> str | None:
    """Whether ``run()`` (``what``: the model's forward on fixed inputs, whose result from the generators' states
    in ``states`` is ``first``) gives another result, bit for bit, with every generator started from each of
    :data:`DRAW_SEEDS`: how they differ (for the refusal), or None where every run gives ``first`` (the draws, a
    dropout mask Keras makes and does not use at inference, a stochastic depth decided in eval mode, never reach
    the output). The generators are put back afterwards (``states.drawn()``)."""
    try:
        for seed in DRAW_SEEDS:
            states.reseed(seed)
            try:
                again = run()
            except Exception as failure:  # noqa: BLE001 (a forward that fails elsewhere: judged random)
                return f"{what} failed when run again with its generators seeded {seed} ({type(failure).__name__}: {failure})"
            if not _identical(first, again):
                return (
                    f"{what}, run again with torch's, numpy's and Python's generators (and those the model holds) seeded "
                    f"{seed}, gave outputs that {_difference(first, again)} from those of the first run"
                )
        return None
    finally:
        states.drawn()


def draws_matter(
    model: nn.Module, inputs: list[Tensor], take: Callable[[Any], Any] | None, output: Any, deferred: Any, drawn: Sequence[str]
) -> str | None:
    """How the random draws a pass of ``model`` on ``inputs`` made (``drawn``: the generators whose state changed)
    reach its ``output`` (for the refusal), or None where they do not. A draw of torch's that the pass followed
    into the output (``deferred``, :class:`~.deferred.DeferredRefusals`) reaches it: the reference pass and the
    input pass would pair operations on different draws; the outputs are compared all the same, so that the
    refusal says whether they changed (:data:`SAME_UNDER_SEEDS` where they did not). Any other draw (Python's
    ``random``, numpy's, a torch draw read into a Python bool or never used) reaches it where the model's output on
    ``inputs`` changes with every generator started elsewhere (:func:`draws_change`)."""
    reached = deferred.draws_reaching(output)
    followed = bool(reached) and any(source.startswith(TORCH_SOURCES) for source in drawn)
    states = RandomStates(model)
    state = PreservedState(model)

    def run() -> Any:
        try:
            with torch.no_grad():
                out = model(*[x.clone() for x in inputs])
            return take(out) if take is not None else out
        finally:
            state.restore()

    rows = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else None
    what = f"the model on the {rows} background rows" if rows is not None else "the model on the background"
    try:
        first = run()
    except Exception as failure:  # noqa: BLE001 (judged random: the pass's refusal stands)
        states.drawn()
        return f"{what} failed when run again ({type(failure).__name__}: {failure})"
    differ = draws_change(run, first, states, what)
    if not followed:
        return differ
    into = f"the values drawn by {', '.join(sorted(reached))} flow into its output (the pass followed them there)"
    if differ is not None:
        return f"{into}, and {differ}"
    return (
        f"{into}, though {what} {SAME_UNDER_SEEDS} with its generators seeded {len(DRAW_SEEDS)} ways (the draws may "
        "select or cancel alike, as a ProbSparse attention that keeps every query does): rnnshap's reference and input "
        "passes each draw their own values and would pair operations on different draws"
    )


def _identical(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point() or a.is_complex():
            return bool(((a == b) | (a.isnan() & b.isnan())).all())
        return bool(torch.equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    return False


def _difference(a: Any, b: Any) -> str:
    """How two results :func:`_identical` tells apart differ, in words: "differ by up to 0.31"."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    elif not (isinstance(a, np.ndarray) or isinstance(b, np.ndarray)):
        return f"differ ({type(a).__name__} and {type(b).__name__})"
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"differ in shape ({a.shape} and {b.shape})"
    if a.dtype != b.dtype:
        return f"differ in dtype ({a.dtype} and {b.dtype})"
    with np.errstate(invalid="ignore", over="ignore"):
        gap = np.abs(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64) - b)
    gap = np.where(np.isnan(a) & np.isnan(b), 0.0, np.where(np.isnan(gap), np.inf, gap))
    return f"differ by up to {float(gap.max()):.3g}"


def random_forward_error(sources: Sequence[str], evidence: str) -> ModelStateError:
    """The refusal of a forward that draws random numbers from ``sources`` whose draws matter (``evidence``:
    what was seen or compared, from :func:`draws_matter` or :func:`draws_change`)."""
    if SAME_UNDER_SEEDS in evidence:  # followed into the output, not seen to change it
        return ModelStateError(
            f"forward() draws random numbers ({', '.join(sources)}) and computes its output from them: {evidence}. "
            "Explain a forward that takes no draw: a model with a deterministic option in place of the sampling (for "
            "Informer's ProbSparse attention, attention_type='full'), or draws made once outside forward() and passed "
            "in as constants. The Shapley mode needs only the forward's outputs, which did not change here: "
            "rnnshap.ShapleyExplainer(model, background).shapley_values(x)."
        )
    return ModelStateError(
        f"forward() draws random numbers ({', '.join(sources)}) and they matter: {evidence}. An output that depends "
        "on draws (teacher forcing decided by a draw, noise added, a value sampled from a distribution) is not a "
        "function of the inputs, and no attribution of one call can add up to another. Explain the deterministic function "
        "the model computes at inference: wrap it in an nn.Module whose forward() takes no random decision "
        "(teacher_forcing_ratio=0, the distribution's mean or parameters instead of a sample, no noise), or call "
        "model.eval() if the draws happen in training mode only. The Shapley mode needs a deterministic forward too."
    )


def refuse_scripted(model: nn.Module) -> None:
    """Refuse a TorchScript model or submodule (``jit.script``, ``jit.trace``, ``jit.freeze``,
    ``optimize_for_inference``) by name, before anything reads its attributes (a frozen module has no
    ``training``)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"the submodule {name!r}" if name else "the model"
            raise ModelStateError(
                f"{where} is a TorchScript module ({type(module).__name__}). Its operations run inside "
                "the TorchScript interpreter, out of rnnshap's sight, so attributions through it would "
                "be silently wrong. Explain the original Python nn.Module instead. " + SHAPLEY_DOOR
            )


def meta_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` with parameters or buffers on the meta device (shapes without values)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if any(p.is_meta for p in module.parameters(recurse=False)) or any(b.is_meta for b in module.buffers(recurse=False))
    ]


def check_meta(model: nn.Module, run: Callable[[], Any]) -> None:
    """Refuse a model whose parameters or buffers on the meta device are read: ``run()`` (its forward on a
    few background rows) fails or returns meta tensors. A meta skeleton called through
    ``torch.func.functional_call`` with real weights (torch.func's ensembling recipe) never reads its own:
    it runs, and is explained."""
    found = meta_modules(model)
    if not found:
        return
    name, module = found[0]
    where = f"the submodule {name!r}" if name else "the model"
    error = ModelStateError(
        f"{where} ({type(module).__name__}) has parameters or buffers on the meta device: they have "
        "shapes but no values, so the model cannot run. Materialize and load the weights first "
        "(model.to_empty(device='cpu') then model.load_state_dict(...))."
    )
    state = PreservedState(model)
    try:
        with torch.no_grad():
            out = run()
    except (NotImplementedError, RuntimeError) as failure:
        raise error from failure
    finally:
        state.restore()
    from torch.utils._pytree import tree_flatten

    if any(isinstance(t, Tensor) and t.is_meta for t in tree_flatten(out)[0]):
        raise error


def check_model(model: Any) -> None:
    """Refuse models rnnshap cannot see into or whose forward pass is random."""
    if not isinstance(model, nn.Module):
        raise ModelTypeError(
            f"The PyTorch engine takes a torch.nn.Module, not {type(model).__name__} (rnnshap.DeepExplainer picks the "
            "engine of a Keras model or a Flax NNX module itself). Wrap a function in an nn.Module whose forward() calls it."
        )
    refuse_scripted(model)
    for name, module in model.named_modules():
        where = f"the submodule {name!r}" if name else "the model"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            raise ModelStateError(
                f"{where} ({type(module).__name__}) was built with track_running_stats=False, so it normalizes "
                "with the mean and variance of the batch even in eval mode: one sample's output depends on the "
                "other samples of the batch, and no attribution can add up. Give it running statistics "
                "(track_running_stats=True, estimated on training data) or replace it with a normalization "
                "within each sample (nn.LayerNorm, nn.GroupNorm)."
            )
        if module.training and has_active_randomness(module):
            raise ModelStateError(
                f"{where} ({type(module).__name__}) is in training mode with active dropout or batch "
                "statistics, which make the output random or couple the samples of a batch, so no "
                "attribution can add up. Call model.eval() before explaining."
            )


def has_active_randomness(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.RNNBase):
        return module.dropout > 0 and module.num_layers > 1
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return False


def model_device_and_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of the model's parameters, or None where it has none or several."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and not t.is_meta]
    devices = {t.device for t in tensors}
    dtypes = {t.dtype for t in tensors}
    device = devices.pop() if len(devices) == 1 else None
    dtype = tensors[0].dtype if len(dtypes) == 1 else (tensors[0].dtype if tensors else None)
    return device, dtype


def as_tensors(
    value: Any,
    what: str,
    multi_input: bool,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> list[Tensor]:
    """Turn ``value`` (a tensor, an array, or a list/tuple of them; a ``tf.data.Dataset`` of batches) into
    checked tensors."""
    from ..keras.datasets import dataset_rows, is_dataset

    if is_dataset(value):
        value = dataset_rows(value, what)
        if isinstance(value, list) and len(value) == 1 and not multi_input:
            value = value[0]  # (a dataset whose elements are a tuple of one input)
    candidates = [value] + list(value) if isinstance(value, (list, tuple)) else [value]
    packed = [v for v in candidates if isinstance(v, PackedSequence)]
    if packed:
        raise InputError(
            f"{what} is a PackedSequence, which has no batch dimension to pair samples with references. Give "
            "rnnshap the padded tensor, (batch, time, features), and the lengths as a second (integer) input, "
            "and pack inside forward(): nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, "
            "enforce_sorted=False). Integer inputs that feed no embedding are context, used as given."
        )
    if isinstance(value, dict):
        return [_as_tensor(value, what, device, dtype)]  # (refused there, with what to do)
    if multi_input:
        if not isinstance(value, (list, tuple)):
            raise InputError(
                f"The background was a list (one tensor per model input), so {what} must be a list or "
                f"tuple too, not {type(value).__name__}."
            )
        items: Sequence[Any] = value
    else:
        if isinstance(value, (list, tuple)):
            raise InputError(
                f"The background was a single tensor, so {what} must be a single tensor or array, not a "
                f"{type(value).__name__}. For a model with several inputs, pass the background as a list too."
            )
        items = [value]
    if multi_input and len(items) == 0:
        raise InputError(f"{what} is an empty list; give one tensor per model input")
    return [_as_tensor(item, f"{what}[{i}]" if multi_input else what, device, dtype) for i, item in enumerate(items)]


def _as_tensor(value: Any, what: str, device: torch.device | None, dtype: torch.dtype | None) -> Tensor:
    """A checked tensor on the model's device. Floating inputs take the model's dtype; integer and
    boolean inputs (lengths, masks) are context: they keep their dtype and get no attribution."""
    if not isinstance(value, Tensor):
        if isinstance(value, dict):
            keys = list(value)
            raise InputError(
                f"{what} is a dict of inputs ({', '.join(map(repr, keys[:6]))}), and the background was not. For a model "
                "called with a dict (forward(batch: dict)), give the background as a dict too (one tensor per key): the "
                "values then come as a list, one array per key in the background's order. For a model of several "
                "positional inputs, give a list of tensors."
            )
        if isinstance(value, torch.utils.data.DataLoader) or (
            not hasattr(value, "__array__") and not hasattr(value, "__len__") and hasattr(value, "__iter__")
        ):
            raise InputError(
                f"{what} is a {type(value).__name__}, an iterable of batches: give the tensor itself. For a DataLoader "
                "that yields (inputs, labels), torch.cat([x for x, _ in loader]) (a few hundred rows are a background); "
                "explainer.summarize(loader) explains a whole loader batch by batch."
            )
        try:
            array = np.asarray(value)
        except Exception as error:  # noqa: BLE001 - report any conversion failure the same way
            raise InputError(f"{what} cannot be turned into an array: {error}") from error
        if array.dtype == object or array.dtype.kind in "USV":
            raise InputError(f"{what} has dtype {array.dtype}; give numbers (a float tensor or array)")
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # Ray's batches, memory maps: torch warns on a read-only buffer; it is only read
            array = array.copy()
        value = torch.from_numpy(array)
    tensor = value.detach()
    if tensor.is_inference():  # made under torch.inference_mode(): a normal copy, which autograd can take
        with torch.inference_mode(False):
            tensor = tensor.clone()
    if tensor.is_meta:
        raise InputError(
            f"{what} is on the meta device: it has a shape but no values. Give real data (on the CPU or the model's device)."
        )
    if tensor.is_complex():
        raise InputError(f"{what} is complex ({tensor.dtype}); rnnshap explains real-valued inputs")
    if tensor.dim() == 0:
        raise InputError(f"{what} is a scalar; inputs need a leading batch dimension")
    if tensor.shape[0] == 0:
        raise InputError(f"{what} is empty (its first dimension, the batch, has size 0)")
    if tensor.is_floating_point() and bool(torch.isinf(tensor).any()):  # (NaN: a missing value, see rules/missing.py)
        bad = torch.isinf(tensor).nonzero()[0].tolist()
        raise InputError(f"{what} contains infinite values (first at index {tuple(bad)}); attributions of them are undefined")
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if device is not None and tensor.device != device:
        tensor = tensor.to(device)
    return tensor


def check_matching(inputs: list[Tensor], background: list[Tensor], what: str = "X") -> None:
    """Inputs and background must agree in count, kind (floating or not) and in every dimension but
    the batch. A floating input whose dtype differs from its background's takes the background's
    dtype (``inputs`` is updated in place): for a model with floating parameters both already have
    the model's dtype, and a model without any computes in the dtype of what it is given. ``what``: the
    name of ``inputs`` in messages ("X", "background")."""
    if len(inputs) != len(background):
        raise InputError(f"The model was given {len(background)} background input(s) but {len(inputs)} input(s) to explain")
    n = inputs[0].shape[0]
    for i, (x, b) in enumerate(zip(inputs, background, strict=False)):
        if x.shape[1:] != b.shape[1:]:
            raise InputError(
                f"Input {i} has shape {tuple(x.shape)} but its background has shape {tuple(b.shape)}: all "
                f"dimensions after the first (the batch) must agree{one_sample_hint(what, tuple(x.shape), tuple(b.shape[1:]))}"
            )
        if x.shape[0] != n:
            raise InputError(
                f"All inputs need the same number of samples (their first axis, the batch): {what} input 0 has {n}, input "
                f"{i} has {x.shape[0]}. {batch_axis_advice([tuple(t.shape) for t in inputs], 'torch')}"
            )
        if x.device != b.device:
            raise InputError(f"Input {i} is on {x.device} but its background is on {b.device}")
        if x.is_floating_point() != b.is_floating_point():
            raise InputError(
                f"Input {i} is {str(x.dtype).replace('torch.', '')} but its background is "
                f"{str(b.dtype).replace('torch.', '')}. "
                + (
                    "The background is floating point, so the model takes numbers there: pass the input as "
                    "floating point too (x.float())."
                    if b.is_floating_point()
                    else "The background is integer or bool (token ids, lengths or masks): pass the input with "
                    "the same kind of values."
                )
            )
        if x.is_floating_point() and x.dtype != b.dtype:
            inputs[i] = x.to(b.dtype)
