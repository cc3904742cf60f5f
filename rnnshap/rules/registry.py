"""Which rule applies to which operation or module.

Operations are keyed by the function object that ``torch.overrides.TorchFunctionMode`` sees:
``torch.sigmoid``, ``torch.Tensor.sigmoid``, ``torch.nn.functional.relu`` and so on, so the
module, functional and method forms of one operation share one rule. In-place forms
(``x.relu_()``, ``F.relu(x, inplace=True)``, ``x *= y``) are mapped to their out-of-place form by
the engine before the lookup. Modules are keyed by class; the most specific registered class wins.

Anything not listed here and applied to an input-dependent tensor is refused by name.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import BINARY, ELEMENTWISE
from ..recurrent.rules import recurrent_rules
from .base import Constant, EvalOnly, Identity, Linear, Rule
from .catalog import binary_op_rules, catalog_op_rules, extra_op_rules, structured_op_rules
from .composite import Quotient
from .elementwise import AddedProduct, Bilinear, Multilinear, Product, Shapley
from .maxima import MaxPool
from .refusals import refusal_op_rules, tensor_methods
from .structured import BatchNormAtInference

OpKey = Any  # a function object, or ("getter", attribute name) for tensor properties


def _namespaces() -> list[Any]:
    return [torch, torch.Tensor, F, torch.special, torch._C._nn, torch.nn.functional, torch.linalg, torch.fft]


def forms(*names: str) -> list[Any]:
    """Every function object reachable under these names in torch's namespaces."""
    found: list[Any] = []
    for name in names:
        for namespace in _namespaces():
            fn = getattr(namespace, name, None)
            if fn is not None and callable(fn) and not any(fn is f for f in found):
                found.append(fn)
    return found


def op_name(func: Any) -> str:
    """A readable name for an operation: ``torch.Tensor.mul``, ``torch.nn.functional.relu``."""
    if isinstance(func, tuple):
        return f"torch.Tensor.{func[1]}"
    self_obj = getattr(func, "__self__", None)
    if type(func).__name__ == "method-wrapper" and self_obj is not None:
        return f"torch.Tensor.{getattr(self_obj, '__name__', '?')}"
    name = getattr(func, "__name__", repr(func))
    qualname = getattr(func, "__qualname__", name)
    module = getattr(func, "__module__", None)
    if qualname.startswith(("TensorBase.", "Tensor.", "_TensorBase.")):
        return f"torch.Tensor.{name}"
    if qualname.startswith("_VariableFunctionsClass."):
        return f"torch.{name}"
    if module in ("torch._C._nn", "torch.nn.functional") or module is None and hasattr(F, name):
        return f"torch.nn.functional.{name}"
    if module:
        return f"{module}.{name}"
    return name


def op_key(func: Any) -> OpKey:
    """The registry key of an intercepted function (property getters are keyed by name)."""
    if type(func).__name__ == "method-wrapper" and getattr(func, "__name__", "") == "__get__":
        return ("getter", getattr(func.__self__, "__name__", "?"))
    return func


def _argument(call: Any, name: str, position: int, default: Any) -> Any:
    """An argument of a call by keyword or position (C builtins have no inspectable signature)."""
    if name in call.kwargs:
        return call.kwargs[name]
    args = call.args
    return args[position] if len(args) > position else default


def _dropout_active(call: Any) -> bool:
    default = "alpha" not in getattr(call.fn, "__name__", "")  # F.alpha_dropout defaults to training=False
    training = _argument(call, "training", 2, None)
    if training is None:
        training = _argument(call, "train", 2, default)
    return bool(training) and float(_argument(call, "p", 1, 0.5)) > 0.0


def _batch_norm_active(call: Any) -> bool:
    return bool(_argument(call, "training", 5, False))


LINEAR_OPS = (
    # arithmetic that is linear in every input-dependent operand jointly
    "add", "sub", "subtract", "neg", "negative", "positive", "__add__", "__radd__", "__sub__",
    "__rsub__", "__neg__", "__pos__", "rsub",
    # reductions and scans
    "sum", "mean", "cumsum", "diff", "trace",
    # joining, splitting and indexing
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack",
    "split", "split_with_sizes", "chunk", "unbind", "tensor_split", "hsplit", "vsplit",
    "__getitem__", "__setitem__", "narrow", "select", "index_select", "gather", "take_along_dim",
    "masked_fill", "masked_select", "where", "index_add", "index_copy", "scatter", "scatter_add",
    "index_put", "masked_scatter", "diagonal", "diag", "diag_embed", "tril", "triu",
    # shape
    "reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "ravel", "squeeze",
    "unsqueeze", "transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t",
    "contiguous", "clone", "expand", "expand_as", "broadcast_to", "repeat", "tile",
    "repeat_interleave", "flip", "fliplr", "flipud", "roll", "rot90", "unfold", "fold",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "atleast_1d", "atleast_2d",
    "atleast_3d", "__iter__", "__reversed__",
    # dtype and device moves between floating types
    "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda",
    # layers that are affine in their input (weights are parameters, not input-dependent)
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "pad", "interpolate", "upsample",
    "upsample_nearest", "upsample_bilinear", "grid_sample", "embedding", "embedding_bag",
    "identity", "real",
    # the Fourier transforms and the complex views: linear over the reals (a complex value is followed through
    # linear operations only: see AttributionMode's refusal of any other operation on one)
    "fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "rfftn", "irfftn", "hfft",
    "ihfft", "hfft2", "ihfft2", "hfftn", "ihfftn", "fftshift", "ifftshift", "conj", "conj_physical", "resolve_conj",
    "resolve_neg", "imag", "view_as_real", "view_as_complex", "complex",
)

BILINEAR_OPS = (
    "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "einsum", "outer", "ger", "dot",
    "inner", "vdot", "tensordot", "kron", "bilinear",
)

CONSTANT_OPS = (
    "zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
    "new_full", "new_tensor", "new",
)

# elementwise operations of one and two operands: the operation table (rnnshap/operations.py)
SMOOTH_BINARY = tuple(name for entry in BINARY if entry.smooth and entry.rule == "shapley" for name in entry.torch)
#: the torch names of the smooth ones (with the smooth binary ones): floating-point operations that take integers as numbers
SMOOTH_UNARY = (*(name for entry in ELEMENTWISE if entry.smooth for name in entry.torch_names), *SMOOTH_BINARY)
DIVISION = ("div", "divide", "true_divide", "__truediv__", "__div__")
REVERSE_DIVISION = ("__rtruediv__", "__rdiv__")
POWER = tuple(name for entry in BINARY if entry.rule == "power" for name in entry.torch)
#: the piecewise ones: maximum, minimum, fmax, fmin (and arctan2, hypot)
EXTREMA = tuple(name for entry in BINARY if not entry.smooth for name in entry.torch)


def default_op_rules() -> dict[OpKey, Rule]:
    """The built-in table: operation → rule."""
    table: dict[OpKey, Rule] = {}

    def put(names: Iterable[str], rule: Rule) -> None:
        for fn in forms(*names):
            table[fn] = rule

    put(LINEAR_OPS, Linear())
    put(BILINEAR_OPS, Bilinear())
    put(("addmm", "baddbmm", "addbmm", "addmv", "addr"), AddedProduct())  # beta·input + alpha·(a @ b)
    put(CONSTANT_OPS, Constant())
    # the operation table (rnnshap/operations.py), read by every engine: unary, binary, structured
    table.update(catalog_op_rules(forms))
    put(("mul", "multiply", "__mul__", "__rmul__"), Product())
    put(DIVISION, Quotient())
    put(REVERSE_DIVISION, Quotient(reverse=True))
    table.update(binary_op_rules(forms))
    table.update(structured_op_rules(forms))  # softmax, norms, reductions, orderings, picks
    for dims in (1, 2, 3):
        with_indices = getattr(F, f"max_pool{dims}d_with_indices")
        for fn in forms(f"max_pool{dims}d", f"max_pool{dims}d_with_indices"):
            table[fn] = MaxPool(with_indices, dims)
        adaptive = getattr(F, f"adaptive_max_pool{dims}d_with_indices")
        for fn in forms(f"adaptive_max_pool{dims}d", f"adaptive_max_pool{dims}d_with_indices"):
            table[fn] = MaxPool(adaptive, dims)
    dropout = EvalOnly(_dropout_active, "dropout in training mode")
    put(("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"), dropout)
    put(("batch_norm",), BatchNormAtInference(_batch_norm_active, "batch norm with batch statistics (training mode)"))
    put(("detach",), Identity())  # the same function, the path kept (.item(), .data, detach_: refusals.py)
    for attribute in ("T", "mT", "H", "mH", "real", "imag"):
        table[("getter", attribute)] = Linear()
    for fn in (torch._pack_padded_sequence, torch._pad_packed_sequence):
        table[fn] = Linear()  # their integer outputs (batch sizes, lengths) come from the lengths, not the data
    put(("einsum", "multi_dot", "chain_matmul"), Multilinear())  # any number of input-dependent operands
    put(("clamp", "clip", "clamp_min", "clamp_max"), Shapley(smooth=False))  # exact over value and tensor bounds
    # writing into a buffer: linear in what is written (the buffer becomes tracked: see engines/pytorch/passes.py)
    for fn in tensor_methods("copy_"):
        table[fn] = Linear()
    for fn in tensor_methods("zero_"):
        table[fn] = Constant()
    table.update(refusal_op_rules(forms))  # rnnshap/rules/refusals.py: operations refused by name, with advice
    table.update(extra_op_rules(forms))  # rnnshap/rules/catalog.py
    table.update(recurrent_rules())  # torch.lstm, gru, rnn_* and their cells: rnnshap/recurrent/rules.py
    return table


def _validate_target(target: Any) -> None:
    if isinstance(target, type) and issubclass(target, nn.Module):
        return
    if inspect.isfunction(target) and not _is_torch_callable(target):
        raise TypeError(
            f"{getattr(target, '__qualname__', target)} is a plain python function: rnnshap sees "
            "torch operations, not python functions, so a rule for it would never apply. Wrap the "
            "function in an nn.Module and register the rule for that module class instead."
        )
    if not callable(target):
        raise TypeError(f"register_rule takes an nn.Module subclass or a torch function, not {target!r}")


def _is_torch_callable(fn: Any) -> bool:
    module = getattr(fn, "__module__", "") or ""
    return module.startswith("torch")


class RuleRegistry:
    """Rules for operations (by function object) and for modules (by class)."""

    def __init__(self, ops: dict[OpKey, Rule] | None = None, modules: dict[type, Rule] | None = None) -> None:
        self.ops: dict[OpKey, Rule] = dict(ops or {})
        self.modules: dict[type, Rule] = dict(modules or {})
        #: how many times a rule was registered or removed: what an engine kept with the rules (reference passes,
        #: traced programs) is kept only while it stays the same
        self.changes = 0

    def register(self, target: Any, rule: Rule) -> RuleHandle:
        """Use ``rule`` for ``target`` (an nn.Module subclass or a torch function)."""
        if not isinstance(rule, Rule):
            raise TypeError(f"rule must be an rnnshap.rules.Rule instance, got {rule!r}")
        _validate_target(target)
        table: dict[Any, Rule] = self.modules if isinstance(target, type) and issubclass(target, nn.Module) else self.ops
        key = target if table is self.modules else op_key(target)
        previous = table.get(key)
        table[key] = rule
        self.changes += 1
        return RuleHandle(self, table, key, previous, rule)

    def op_rule(self, func: Any) -> Rule | None:
        rule = self.ops.get(func)  # (asked on every operation of a pass: a getter's key is looked up only for getters)
        if rule is None and type(func).__name__ == "method-wrapper":
            return self.ops.get(op_key(func))
        return rule

    def module_rule(self, module: nn.Module) -> Rule | None:
        for cls in type(module).__mro__:
            rule = self.modules.get(cls)
            if rule is not None:
                return rule
        return None

    def merged(self, overrides: dict[Any, Rule] | None) -> RuleRegistry:
        """A copy of this registry with ``overrides`` registered on top."""
        copy = RuleRegistry(self.ops, self.modules)
        for target, rule in (overrides or {}).items():
            copy.register(target, rule)
        return copy


class RuleHandle:
    """Undoes one registration; also a context manager (``with register_rule(...):``)."""

    def __init__(self, registry: RuleRegistry, table: dict[Any, Rule], key: Any, previous: Rule | None, rule: Rule) -> None:
        self._registry, self._table, self._key, self._previous, self._rule = registry, table, key, previous, rule

    def remove(self) -> None:
        if self._table.get(self._key) is not self._rule:
            return
        if self._previous is None:
            del self._table[self._key]
        else:
            self._table[self._key] = self._previous
        self._registry.changes += 1

    def __enter__(self) -> RuleHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


DEFAULT_REGISTRY = RuleRegistry(default_op_rules())


def register_rule(target: Any, rule: Rule) -> RuleHandle:
    """Register ``rule`` for a module class or a torch function, for every explainer.

    A rule for a module class takes precedence over the rules of the operations inside the
    module: the module is then attributed as one operation. Returns a handle whose ``remove()``
    undoes the registration; the handle is also a context manager.
    """
    return DEFAULT_REGISTRY.register(target, rule)
