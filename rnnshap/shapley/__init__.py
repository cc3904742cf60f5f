"""Shapley values with standard errors: from DeepSHAP to the exact Shapley values as the budget grows.

- :mod:`.players`: what a value is given to (time steps, features, cells, a player mask);
- :mod:`.estimator`: the game, enumeration, antithetic permutation walks, control variates, errors;
- :mod:`.door`: the ``shapley_values`` method both doors share, and :class:`ShapleyEstimate`;
- :mod:`.explainer`: :class:`ShapleyExplainer`, the door that needs only the model's forward.
"""

from .door import ShapleyEstimate
from .explainer import ShapleyExplainer

__all__ = ["ShapleyEstimate", "ShapleyExplainer"]
