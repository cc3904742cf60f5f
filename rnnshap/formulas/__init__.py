r"""Every rule's formula, written once against a small array namespace.

The engines differ in how they trace a model and how they attach a multiplier to their framework's
autodiff (custom ``torch.autograd.Function`` objects on PyTorch, the dual's ``attach`` on Keras); the
formulas that give the multipliers are the same math on either. They are written here once, each
as a function of an array namespace ``xp`` (the first argument) and plain arrays, in the manner of
the array API standard's ``array_namespace``, Keras 3's ``keras.ops`` and einops' backends:

- :mod:`~rnnshap.formulas.namespace`: what a namespace provides (:class:`~rnnshap.formulas.namespace.Ops`),
  only what the formulas use;
- :mod:`~rnnshap.formulas.torch_ops`: the namespace on ``torch`` (the PyTorch engine), whose members
  are torch's own functions wherever their meaning is the namespace's, so a formula runs the same
  float operations, in the same order, as one written with ``torch.*`` directly;
- :mod:`~rnnshap.formulas.keras_ops`: the namespace on ``keras.ops`` (the Keras engine on TensorFlow
  and on JAX), imported only where Keras is;
- :mod:`~rnnshap.formulas.secant`: the Rescale rule's secant slopes in closed form (sqrt, rsqrt,
  square, reciprocal, exp, log, expm1, log1p, their rescaled forms, powers), the closed-form secants
  of sigmoid and tanh from their two results, and the Rescale multiplier from a quotient and a
  derivative (threshold, midpoint, kinks, 0 where nothing moves), and the secant of sigmoid and tanh in its two
  forms (the where-form, the PyTorch fused layers' branch-free blend);
- :mod:`~rnnshap.formulas.pairs`: the two-player rules (the midpoint rule of a product, the
  normalizations' scale-weighted rule) and the multipliers of log Σ exp and of a routed maximum;
- :mod:`~rnnshap.formulas.orderings`: which position decides a rank of a sort, a top-k or a pick, and the two
  parts of a selection by a picked index;
- :mod:`~rnnshap.formulas.marks`: the roots and inverse roots of a normalization written by hand, and which of
  their products and quotients take the scale-weighted rule (each engine maps its own operation names to them);
- :mod:`~rnnshap.formulas.recurrence`: the reverse-time multiplier recurrence of the fused LSTM, GRU and Elman
  layers, one step of each and the loop (the PyTorch engine's ``recurrent/reverse.py`` and the Keras engine's
  ``engines/keras/fused.py`` run it).

A formula returns multipliers (or values) from arrays that carry no gradient; attaching them is the
engine's. Python operators (``+``, ``*``, ``/``, comparisons) are used as every array library
defines them; anything else goes through ``xp``.
"""

from __future__ import annotations

from typing import Any, Callable

from .namespace import Ops


def bind(formula: Callable[..., Any], xp: Ops, name: str | None = None) -> Callable[..., Any]:
    """``formula`` with its namespace fixed: ``bind(exp_slope, TORCH)(x, r)`` is ``exp_slope(TORCH, x, r)``.

    The bound function keeps the formula's name (``name`` overrides it) and docstring, and pickles as the formula
    and namespace it binds."""
    return BoundFormula(formula, xp, name or formula.__name__)


class BoundFormula:
    """A formula with its namespace fixed (:func:`bind`)."""

    def __init__(self, formula: Callable[..., Any], xp: Ops, name: str) -> None:
        self.formula, self.xp = formula, xp
        self.__name__ = self.__qualname__ = name
        self.__doc__ = formula.__doc__

    def __call__(self, *args: Any) -> Any:
        return self.formula(self.xp, *args)

    def __reduce__(self) -> tuple[Any, ...]:
        return bind, (self.formula, self.xp, self.__name__)

    def __repr__(self) -> str:
        return f"<formula {self.__name__}>"


__all__ = ["Ops", "bind"]
