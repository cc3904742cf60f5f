"""Attribution rules: the multipliers that replace local derivatives in the backward pass.

Rule classes (for :func:`rnnshap.register_rule`):

- :class:`Linear`: the ordinary gradient, exact for operations linear in their inputs.
- :class:`Rescale`: m = (f(x) − f(r)) / (x − r) for elementwise operations of one input.
- :class:`Shapley`: exact Shapley values over up to four input-dependent elementwise operands.
- :class:`Bilinear`: operations linear in each of two operands (matmul), gradient at midpoints.
- :class:`Multilinear`: einsum and chains of matmuls over up to four input-dependent operands (exact Shapley).
- :class:`Softmax`, :class:`LogSoftmax`, :class:`LogSumExp`, :class:`LayerNorm`, :class:`RMSNorm`,
  :class:`GroupNorm`, :class:`Glu`, :class:`Lerp`, :class:`Variance`, :class:`Deviation`,
  :class:`Normalize`, :class:`LogCumSumExp`: by decomposition into exact parts (-inf masks included).
- :class:`Comparison`, :class:`Where`: ``where(x >= 0, f(x), g(x))`` as one piecewise function.
- :class:`MaxPool`, :class:`MaxReduction`: shap's max-pool rule.

Building blocks for rules of your own: :func:`rescale`, :func:`shapley`, :func:`product`,
:func:`with_multipliers`, :func:`routed_max`. Each takes input-side and reference-side tensors
and returns the input-side result whose gradient is the rule's multiplier.
"""

from .base import Constant, EvalOnly, Linear, OpCall, PairGrid, Refuse, Rule
from .composite import Deviation, Glu, Lerp, LogCumSumExp, Normalize, Variance
from .elementwise import Bilinear, Multilinear, Product, Rescale, Shapley, product, rescale, shapley, with_multipliers
from .gates import Comparison, Where
from .maxima import MaxPool, MaxReduction, routed_max
from .registry import register_rule
from .structured import GroupNorm, LayerNorm, LogSoftmax, LogSumExp, RMSNorm, Softmax

__all__ = [
    "Bilinear", "Comparison", "Constant", "Deviation", "EvalOnly", "Glu", "GroupNorm", "LayerNorm", "Lerp", "Linear",
    "LogCumSumExp", "LogSoftmax", "LogSumExp", "MaxPool", "MaxReduction", "Multilinear", "Normalize", "OpCall",
    "PairGrid", "Product", "RMSNorm", "Refuse", "Rescale", "Rule", "Shapley", "Softmax", "Variance", "Where", "product",
    "register_rule", "rescale", "routed_max", "shapley", "with_multipliers",
]
