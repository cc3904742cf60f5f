"""The rule interface: what an attribution rule receives and must return.

A rule replaces one operation during the input pass. It receives an :class:`OpCall` that holds
the operation, its arguments on the input side and the same arguments on the reference side,
and returns the operation's output on the input side, built so that backpropagating through it
multiplies by the rule's DeepLIFT multipliers instead of the local derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.utils._pytree import TreeSpec, tree_unflatten


@dataclass(frozen=True)
class PairGrid:
    """How the batch of a pass is made of (sample, reference) pairs.

    Row ``p`` pairs sample ``p // references`` with reference ``p % references``, for ``samples``
    consecutive samples. On the input side a row therefore repeats its sample's values
    ``references`` times; on the reference side the rows cycle through the references, unless
    something sample-specific (a context input such as lengths) entered the computation. Rules
    may use this to compute on the distinct rows only, after checking that the rows really repeat.
    """

    samples: int
    references: int
    #: where the rules' checks that rows repeat wait for the end of the pass (see :meth:`defer`): the flags
    #: of the pass, read once after it; None: each check is read at once
    deferred: list[torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def pairs(self) -> int:
        return self.samples * self.references

    def defer(self, *checks: torch.Tensor) -> None:
        """Assume the rows repeat as the grid says and keep ``checks``, that test on the device (0-d bools), for
        :meth:`all_held`: read at once each would stop the pass until the device has caught up (a host sync, per
        call of a recurrent cell in a Python loop: per time step). The engine reads all of a pass's checks once
        after it and runs the passes again, each check read at once, where one failed."""
        assert self.deferred is not None, "a grid without deferred checks reads each at once"
        self.deferred.extend(checks)

    def all_held(self) -> bool:
        """Whether every deferred check of the pass held (one host sync for all of them)."""
        return not self.deferred or bool(held_everywhere(self.deferred))


def held_per_device(checks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Whether every 0-d bool of ``checks`` is True: one boolean tensor per device they lie on, reduced there, unread
    (no copy between devices: a traced pass stays a program a CUDA graph can replay)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for check in checks:
        by_device.setdefault(check.device, []).append(check)
    return [torch.stack(c).all() for c in by_device.values()]


def held_everywhere(checks: list[torch.Tensor]) -> torch.Tensor:
    """One boolean tensor, unread: :func:`held_per_device`'s where the checks lie on one device (read then with one
    host sync), else each device's copied to the CPU and joined (a model split across devices)."""
    reduced = held_per_device(checks)
    if len(reduced) == 1:
        return reduced[0]
    return torch.stack([torch.ones((), dtype=torch.bool)] + [r.cpu() for r in reduced]).all()


@dataclass
class OpCall:
    """One call of an operation, seen on both the input and the reference side.

    ``leaves`` are the flattened ``(args, kwargs)`` of the input side and ``ref_leaves`` those of
    the reference side; they differ only at the positions in ``tracked``, the tensors that depend
    on the explained input. Everything else (parameters, masks, python numbers) is shared.
    A call is not changed once made (its arguments are rebuilt from the leaves once and kept).
    """

    fn: Callable[..., Any]
    name: str
    leaves: list[Any]
    ref_leaves: list[Any]
    spec: TreeSpec
    tracked: tuple[int, ...]
    #: the pair structure of the batch, when the explainer runs whole samples (None: unknown)
    pairs: PairGrid | None = None
    #: ``(len(args), keyword names)`` when every argument is a leaf, which lets the arguments be
    #: rebuilt without ``tree_unflatten`` (the engine sets it; None: use ``spec``)
    layout: tuple[int, tuple[str, ...]] | None = field(default=None, repr=False, compare=False)
    #: the operation's output on the reference side, when the engine kept it from the reference
    #: pass (None: not kept; a rule that needs it computes it, ``evaluate(references)``)
    ref_output: Any = field(default=None, repr=False, compare=False)
    _sides: list[Any] = field(default_factory=lambda: [None, None], init=False, repr=False, compare=False)

    @classmethod
    def flat(
        cls,
        fn: Callable[..., Any],
        name: str,
        leaves: list[Any],
        spec: TreeSpec,
        tracked: tuple[int, ...],
        pairs: PairGrid | None,
        layout: tuple[int, tuple[str, ...]] | None,
    ) -> OpCall:
        """The call with both sides equal (the engine fills in the reference side later)."""
        return cls(fn, name, leaves, leaves, spec, tracked, pairs, layout)

    def with_references(self, ref_leaves: list[Any], ref_output: Any = None) -> OpCall:
        """This call with ``ref_leaves`` as its reference side (and ``ref_output`` as its output there)."""
        call = OpCall(self.fn, self.name, self.leaves, ref_leaves, self.spec, self.tracked, self.pairs, self.layout, ref_output)
        call._sides[0] = self._sides[0]
        return call

    def _unflatten(self, leaves: list[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        layout = self.layout
        if layout is None:
            args, kwargs = tree_unflatten(leaves, self.spec)
            return tuple(args), kwargs
        count, names = layout
        return tuple(leaves[:count]), dict(zip(names, leaves[count:], strict=True))

    def _side(self, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.layout is None:  # containers among the arguments: fresh ones on every access, as before
            return self._unflatten(self.ref_leaves if index else self.leaves)
        side = self._sides[index]
        if side is None:
            side = self._sides[index] = self._unflatten(self.ref_leaves if index else self.leaves)
        return side

    @property
    def args(self) -> tuple[Any, ...]:
        return self._side(0)[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self._side(0)[1])

    @property
    def ref_args(self) -> tuple[Any, ...]:
        return self._side(1)[0]

    @property
    def ref_kwargs(self) -> dict[str, Any]:
        return dict(self._side(1)[1])

    @property
    def inputs(self) -> list[torch.Tensor]:
        """The input-dependent tensor operands, input side."""
        return [self.leaves[i] for i in self.tracked]

    @property
    def references(self) -> list[torch.Tensor]:
        """The input-dependent tensor operands, reference side (same order as ``inputs``)."""
        return [self.ref_leaves[i] for i in self.tracked]

    def is_tracked_value(self, value: Any) -> bool:
        """Whether ``value`` is one of the input-dependent operands."""
        return any(value is self.leaves[i] for i in self.tracked)

    def reference_of(self, value: Any, default: Any = None) -> Any:
        """The reference side of ``value`` if it is one of the input-dependent operands, else ``default``."""
        for i in self.tracked:
            if self.leaves[i] is value:
                return self.ref_leaves[i]
        return default

    def tracked_positions(self) -> tuple[int, ...]:
        """Positional-argument index of each tracked leaf (-1 for keyword or nested leaves)."""
        args = self.args
        positions = []
        for leaf_index in self.tracked:
            leaf = self.leaves[leaf_index]
            positions.append(next((i for i, a in enumerate(args) if a is leaf), -1))
        return tuple(positions)

    def evaluate(self, players: Sequence[torch.Tensor]) -> Any:
        """Call the operation with the tracked operands replaced by ``players``.

        Untracked operands keep their (shared) values, so ``evaluate(inputs)`` is the input-side
        output and ``evaluate(references)`` the reference-side output.
        """
        leaves = list(self.leaves)
        for i, player in zip(self.tracked, players, strict=False):
            leaves[i] = player
        args, kwargs = self._unflatten(leaves)
        return self.fn(*args, **kwargs)


class Rule:
    """Base class of attribution rules.

    Subclasses implement :meth:`attribute`. A rule may declare that, for some patterns of which
    operands are input-dependent, the operation is linear in them (a product with a constant), in
    which case the engine passes the ordinary gradient and records nothing.
    """

    #: a linear rule whose :meth:`attribute` gives the ordinary gradient as an autograd node of its own, where torch's
    #: backward kernel is slow (:class:`~rnnshap.rules.structured.BatchNormAtInference`): the engine calls it in the
    #: input pass, for a call that is not in place, and runs the operation as it is elsewhere
    attaches_gradient = False

    def is_linear(self, call: OpCall) -> bool:  # noqa: ARG002 - part of the interface
        """Whether the ordinary gradient is exact for this call."""
        return False

    def attribute(self, call: OpCall) -> Any:
        """Return the input-side output of ``call`` with the rule's multipliers as its gradient."""
        raise NotImplementedError

    def reference(self, call: OpCall) -> Any:
        """The operation's output in the reference pass (``call`` holds the reference operands).

        The default runs the operation; a rule may compute the same value faster, for example on
        the distinct rows of ``call.pairs`` only.
        """
        return call.fn(*call.args, **call.kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Rule):
    """The operation is linear in its input-dependent operands: the ordinary gradient is exact."""

    def is_linear(self, call: OpCall) -> bool:
        return True

    def attribute(self, call: OpCall) -> Any:
        return call.evaluate(call.inputs)


class Identity(Rule):
    """An operation whose value is its input but which cuts the autograd graph (``detach``).

    It changes how a model trains, not the function it computes: ``x - x.mean().detach()`` is
    ``x - x.mean()`` as a function of the input. The rule passes its input on with the path kept,
    so the attribution follows the function (as for reversible instance norm's detached
    statistics, or ``x + (f(x) - x).detach()``, which is ``f(x)``).
    """

    def attribute(self, call: OpCall) -> Any:
        (x,) = call.inputs
        return x.view_as(x)


class Constant(Rule):
    """The result does not depend on the values of the input-dependent operands (``zeros_like``)."""

    def is_linear(self, call: OpCall) -> bool:
        return True

    def attribute(self, call: OpCall) -> Any:
        return call.evaluate(call.inputs)


class Refuse(Rule):
    """An operation that must never see an input-dependent tensor; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Refuse({self.reason!r})"


class EvalOnly(Linear):
    """Linear at inference (dropout, batch norm with running statistics), refused in training.

    ``is_active(call)`` tells from the call's arguments whether the training behaviour is on.
    """

    def __init__(self, is_active: Callable[[OpCall], bool], what: str) -> None:
        self.is_active = is_active
        self.what = what
