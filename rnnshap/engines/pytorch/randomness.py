"""Random draws in a forward pass: :class:`RandomStates` (the global generators and the model's own, taken before a
pass, compared and put back after it), which of torch's functions draw (:func:`random_call`), whether the draws a
forward made change its output (:func:`draws_change`, :func:`draws_matter`, run under fixed seeds) and the refusal of
a forward that is random (:func:`random_forward_error`)."""


from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import ModelStateError
from .state import PLAIN_TYPES, PreservedState

Tensor = torch.Tensor


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
                if type(value) in PLAIN_TYPES:  # (no generator)
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


__all__ = [
    "DRAW_SEEDS",
    "RANDOM_FUNCTIONS",
    "SAME_UNDER_SEEDS",
    "TORCH_SOURCES",
    "RandomStates",
    "draws_change",
    "draws_matter",
    "random_call",
    "random_forward_error",
]
