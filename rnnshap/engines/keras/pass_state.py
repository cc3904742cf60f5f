"""What one dual pass carries, and what the walker, the layer table and the recurrent layers share.

- :class:`Run`: the state of one pass (the gradient's marks, token embeddings, masks met, the probe's refusals);
- :class:`TokenDual`: the integer token ids of a model input, which only an Embedding consumes;
- :class:`Walker`: the walker's own functions (``walker.py``), handed to the layer rules that run
  layers inside them (nested models, ``TimeDistributed``, traced ``call()``), so that no rule
  imports the walker;
- the refusals: :func:`refusal` lists layers by name, :func:`unsupported` refuses one,
  :func:`unsupported_in` refuses one or, in the probe that lists every refusal of a model, records
  it and goes on.

Package-internal: the modules of ``rnnshap.engines.keras`` use these; users never see them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from keras import ops
from keras import tree as keras_tree

from . import dual
from .backend import Marks, Tensor, is_tensor
from .dual import Dual
from .private import drop_keras_mask


class Run:
    """What one dual pass collects: the gradient's marks (``backend.Marks``), the embeddings that token inputs reach, and which
    pairs read their reference with the masks the model itself computes on that reference.

    Masks are computed on the input side and used on both (see ``walker.call_layer``). Wherever a mask
    is computed from values, the mask the reference would get is computed too: ``agree`` marks the
    rows (pairs) where every such mask is the same on both sides, whose reference side is then the
    model's own function of the reference (``None``: no mask was computed from values, every row).
    """

    def __init__(self, marks: Marks | None, rows: int) -> None:
        self.marks = marks
        self.rows = rows
        self.embedded: list[tuple[int, Tensor, Tensor]] = []  # (input index, input side, reference side)
        self.agree: Tensor | None = None
        #: the probe collects every refusal here instead of raising at the first (see unsupported_in)
        self.collect: list[tuple[str, str]] | None = None
        #: the traced layers (Lambda, custom call()) the pass is inside, outermost first, for refusals
        self.scope: list[str] = []
        #: ``(copies, samples, references)`` when the rows are that grid of pairs, sample-major (the
        #: input side of a row depends on its sample only, the reference side on its reference only)
        self.grid: tuple[int, int, int] | None = None
        #: a Keras mask has been met: the reference side of a row is read with its input's mask, so
        #: it depends on the sample too, and recurrent layers run on every row (see fused.py)
        self.masked = False
        #: plain tensors the pass computed from masks (by id, held): any other plain tensor a layer gets
        #: is a constant of the model's graph (``ops.zeros((n, units))`` as a cell's initial state)
        self.from_masks: dict[int, Tensor] = {}

    def computed_from_masks(self, out: Any) -> Any:
        for t in keras_tree.flatten(out):
            if is_tensor(t):
                self.from_masks[id(t)] = t
        return out

    def compare(self, mask_x: Any, mask_r: Any) -> None:
        """Record, per row, whether the input side's mask ``mask_x`` equals the reference side's ``mask_r``.
        (A mask computed on the input side is read on the reference side too: see ``masked``.)"""
        if mask_x is mask_r:
            return
        self.masked = True
        same: Tensor
        if mask_x is None or mask_r is None or not hasattr(mask_x, "shape") or mask_x.shape != mask_r.shape:
            same = ops.zeros((self.rows,), "bool")
        elif len(mask_x.shape) == 0 or mask_x.shape[0] != self.rows:
            same = ops.full((self.rows,), ops.all(ops.equal(mask_x, mask_r)))
        else:
            equal = ops.equal(mask_x, mask_r)
            same = ops.all(equal, axis=tuple(range(1, len(equal.shape)))) if len(equal.shape) > 1 else equal
        self.agree = same if self.agree is None else ops.logical_and(self.agree, same)


class TokenDual(Dual):
    """Integer token ids of model input ``index``; only an Embedding may consume them."""

    __slots__ = ("index",)

    def __init__(self, x: Tensor, r: Tensor, index: int) -> None:
        super().__init__(x, r)
        self.index = index


class Walker(NamedTuple):
    """The walker's entry points (``walker.py``), for rules that run the layers inside a layer."""

    #: ``call_layer(layer, run, *args, **kwargs)``: one layer, nested model or keras op on Duals
    call_layer: Callable[..., Any]
    #: ``run_model(model, inputs, run)``: a Functional, Sequential or subclassed model on Duals
    run_model: Callable[..., Any]


# -- values ---------------------------------------------------------------------------------------
def flat(values: Any) -> list[Any]:
    """The leaves of nested lists and tuples."""
    if isinstance(values, (list, tuple)):
        return [item for v in values for item in flat(v)]
    return [values]


def bare(t: Tensor) -> Tensor:
    """``t`` without the Keras mask a real layer call attached to it (the Duals carry masks)."""
    return drop_keras_mask(t)


def plain(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The layer itself on each side (for the probe that lists refusals; never attributed)."""
    x = layer(*dual.side(args, 0), **dual.side(kwargs, 0))
    r = layer(*dual.side(args, 1), **dual.side(kwargs, 1))
    return keras_tree.map_structure(lambda a, b: Dual(bare(a), bare(b)), x, r)


# -- refusals -------------------------------------------------------------------------------------
def no_tokens(layer: Any, *values: Any) -> None:
    """Refuse token ids (a :class:`TokenDual`) among ``values``: only an Embedding reads them."""
    for value in values:
        if isinstance(value, TokenDual):
            raise integer_input_error(value.index, layer)


def integer_input_error(index: int, layer: Any) -> Exception:
    from ...errors import InputError

    error = InputError(
        f"Input {index} holds integers and reaches layer {layer.name!r} ({type(layer).__name__}) directly: rnnshap "
        "treats integer inputs as token ids, attributed at the Embedding that reads them. Pass numbers to attribute "
        "to as floating point (and declare the keras.Input floating)."
    )
    error.input_index = index  # type: ignore[attr-defined]  # the engine reads it to treat the input as numbers
    return error


def unsupported(layer: Any, why: str) -> Exception:
    """The refusal of one layer (or op), by name."""
    return refusal([(f"{layer.name} ({type(layer).__name__})", why)])


def refusal(ops: list[tuple[str, str]]) -> Exception:
    """An UnsupportedOperationError for Keras layers, listing each one by name."""
    from ...errors import UnsupportedOperationError

    error = UnsupportedOperationError(ops)
    lines = "\n".join(f"  - {name}: {why}" for name, why in ops)
    error.args = (
        f"rnnshap cannot attribute {len(ops)} layer(s) of this Keras model exactly:\n{lines}\n"
        "rnnshap refuses rather than return attributions that do not add up. Supported: Dense, EinsumDense, "
        "Conv1D/2D/3D, Embedding, Activation/ReLU/Softmax, LSTM/GRU/SimpleRNN, RNN over their cells or "
        "StackedRNNCells, Bidirectional, Masking, Attention, AdditiveAttention, MultiHeadAttention, LayerNormalization, "
        "GroupNormalization, Normalization, linear reshaping, pooling (average, max, global max), merging and dropout "
        "layers, Multiply of two inputs, keras ops (rnnshap/engines/keras/kops.py), Lambda layers and Layer/Model "
        "subclasses whose call() traces into those, and Functional/Sequential models of them.",
    )
    return error


def unsupported_in(layer: Any, run: Run, why: str, fallback: Callable[[], Any]) -> Any:
    """Refuse ``layer`` (an op or layer without a rule) by name, or, in the probe that lists every
    refusal of a model (``run.collect``), record it and go on with ``fallback()`` (its values on
    both sides; the probe's attributions are never used)."""
    own = f"{layer.name} ({type(layer).__name__})"
    name = " > ".join(run.scope if run.scope and run.scope[-1] == own else [*run.scope, own])
    if run.collect is None:
        raise refusal([(name, why)])
    entry = (name, why)
    if entry not in run.collect:
        run.collect.append(entry)
    return fallback()
