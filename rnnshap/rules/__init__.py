"""Attribution rules: the multipliers that replace local derivatives in the backward pass.

Rule classes (for :func:`rnnshap.register_rule`):

- :class:`Linear`: the ordinary gradient, exact for operations linear in their inputs.
- :class:`Rescale`: m = (f(x) − f(r)) / (x − r) for elementwise operations of one input.
- :class:`Shapley`: exact Shapley values over up to four input-dependent elementwise operands.
- :class:`Bilinear`: operations linear in each of two operands (matmul), gradient at midpoints.
- :class:`Softmax`, :class:`LogSoftmax`, :class:`LayerNorm`: by decomposition.
- :class:`MaxPool`, :class:`MaxReduction`: shap's max-pool rule.

Building blocks for rules of your own: :func:`rescale`, :func:`shapley`, :func:`product`,
:func:`with_multipliers`, :func:`routed_max`. Each takes input-side and reference-side tensors
and returns the input-side result whose gradient is the rule's multiplier.
"""

from .base import Constant, EvalOnly, Linear, OpCall, PairGrid, Refuse, Rule
from .elementwise import Bilinear, Product, Rescale, Shapley, product, rescale, shapley, with_multipliers
from .registry import register_rule
from .structured import LayerNorm, LogSoftmax, MaxPool, MaxReduction, Softmax, routed_max

__all__ = [
    "Bilinear", "Constant", "EvalOnly", "LayerNorm", "Linear", "LogSoftmax", "MaxPool", "MaxReduction",
    "OpCall", "PairGrid", "Product", "Refuse", "Rescale", "Rule", "Shapley", "Softmax", "product", "register_rule",
    "rescale", "routed_max", "shapley", "with_multipliers",
]
