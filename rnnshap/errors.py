"""Errors raised by rnnshap. Each one says what went wrong and what to do about it."""

from __future__ import annotations

from typing import Sequence


class RnnShapError(Exception):
    """Base class of every error rnnshap raises on purpose."""


class UnsupportedOperationError(RnnShapError, TypeError):
    """The model applies operations to input-dependent tensors that rnnshap has no exact rule for.

    All such operations found in one forward pass are listed together, so that a user can deal
    with every one of them at once.
    """

    def __init__(self, ops: Sequence[tuple[str, str]]) -> None:
        self.ops = list(ops)
        lines = [f"  - {name}: {why}" for name, why in self.ops]
        message = (
            f"rnnshap cannot attribute {len(self.ops)} operation(s) of this model exactly:\n"
            + "\n".join(lines)
            + "\nrnnshap refuses rather than return attributions that do not add up. To go on, "
            "give each operation a rule, for example\n"
            "    rnnshap.register_rule(torch.special.erf, rnnshap.rules.Rescale())\n"
            "or, for a whole module, rnnshap.register_rule(MyLayer, rnnshap.rules.Rescale()) "
            "(a module rule replaces the decomposition of its inside); see docs/custom_rules.md."
        )
        super().__init__(message)


class AdditivityError(RnnShapError, AssertionError):
    """The attributions do not sum to f(x) - E[f(r)] within the tolerance of the dtype."""


class TapeMismatchError(RnnShapError, RuntimeError):
    """The reference pass and the input pass of the model ran different operations.

    This happens when the model's control flow depends on the values of its input (a branch
    on ``x.sum() > 0``, lengths computed from the data) or on randomness.
    """


class ModelStateError(RnnShapError, ValueError):
    """The model is in a state that cannot be explained exactly (train-mode dropout, TorchScript)."""


class InputError(RnnShapError, ValueError):
    """Inputs or background do not fit the model or each other."""
