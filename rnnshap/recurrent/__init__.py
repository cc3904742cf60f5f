"""Exact attribution through recurrent layers and cells (LSTM, GRU, Elman RNN).

``rules.py`` parses the fused torch ops, ``fused.py`` holds one autograd Function per layer (the
fast path), ``reverse.py`` their reverse-time recurrences (custom operators that take the outputs'
axis of a vmap as a plain leading axis; each step written once in ``rnnshap/formulas/recurrence.py``),
``decomposed.py`` the same layers step by step through the elementwise rules (the cross-check),
``weights.py`` the weight layout. The rule registry takes the recurrent ops' rules from
:func:`recurrent_rules` when it builds its table (``rnnshap/rules/registry.py``), whatever is imported first.
"""

from .cell_step import CellStepAttribution, explain_cell_step
from .rules import RecurrentCell, RecurrentLayer, recurrent_rules

__all__ = ["CellStepAttribution", "RecurrentCell", "RecurrentLayer", "explain_cell_step", "recurrent_rules"]
