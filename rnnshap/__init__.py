"""rnnshap: exact DeepSHAP attributions for recurrent neural networks.

>>> import rnnshap
>>> explainer = rnnshap.DeepExplainer(model, background)      # doctest: +SKIP
>>> shap_values = explainer.shap_values(x)                      # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:  # one source for the version: the package metadata (pyproject.toml)
    __version__ = _version("rnnshap")
except _PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    __version__ = "0+unknown"

from . import metrics, plots, recurrent, rules
from .errors import (
    AdditivityError,
    AdditivityWarning,
    InputError,
    ModelStateError,
    RnnShapError,
    TapeMismatchError,
    UnsupportedOperationError,
)
from .explainer import DeepExplainer
from .rules.registry import register_rule
from .shapley import ShapleyEstimate, ShapleyExplainer
from .summary import Summary

#: the doors into other libraries, reached as ``rnnshap.<door>`` and imported (with their library) on first use
_DOORS = frozenset({"aeon", "captum", "darts", "foundation", "neuralforecast", "pytorch_forecasting", "ray", "sktime"})


def __getattr__(name: str) -> object:
    if name in _DOORS:
        from importlib import import_module

        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdditivityError",
    "AdditivityWarning",
    "DeepExplainer",
    "InputError",
    "ModelStateError",
    "RnnShapError",
    "ShapleyEstimate",
    "ShapleyExplainer",
    "Summary",
    "TapeMismatchError",
    "UnsupportedOperationError",
    "metrics",
    "plots",
    "recurrent",
    "register_rule",
    "rules",
]
