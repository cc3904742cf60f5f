"""What an array namespace gives the formulas of :mod:`rnnshap.formulas`: the operations they use, no more.

A namespace is an object with these members. Arguments are arrays of the namespace's library (or
Python numbers where said); the results are arrays of the same library. Elementwise operations
broadcast as the library does. Python's arithmetic and comparison operators on arrays are used
directly, so they are not members; so is indexing (``x[..., None, :]``).

Two members say what a backend can know without a value leaving the device or a trace:
:meth:`Ops.surely_all` and :meth:`Ops.surely_none` return True only where the answer is known and
is yes (an eager backend reads the array; a traced one, TensorFlow in a graph or JAX under ``jit``,
answers False); :meth:`Ops.surely_finite` likewise. A formula uses them to skip work that would not
change a value (a ``where`` whose condition selects nothing), never to choose between two values.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

Array = Any


class Ops(Protocol):
    """The array namespace of the formulas (see the module's docstring)."""

    #: the namespace's name ("torch", "keras")
    name: str

    # -- elementwise functions
    def abs(self, x: Array, /) -> Array: ...
    def exp(self, x: Array, /) -> Array: ...
    def expm1(self, x: Array, /) -> Array: ...
    def log(self, x: Array, /) -> Array: ...
    def log1p(self, x: Array, /) -> Array: ...
    def sqrt(self, x: Array, /) -> Array: ...
    def hypot(self, a: Array, b: Array, /) -> Array:
        """``sqrt(a² + b²)`` without overflow or underflow in the squares."""
        ...

    def rsqrt(self, x: Array, /) -> Array: ...
    def sinh(self, x: Array, /) -> Array: ...
    def atanh(self, x: Array, /) -> Array: ...
    def isfinite(self, x: Array, /) -> Array: ...
    def maximum(self, a: Array, b: Array, /) -> Array: ...
    def minimum(self, a: Array, b: Array, /) -> Array: ...
    def floor(self, x: Array, /) -> Array: ...
    def where(self, condition: Array, a: Array, b: Array, /) -> Array: ...
    def broadcast_to(self, x: Array, shape: Any, /) -> Array: ...
    def shape(self, x: Array, /) -> Any:
        """The shape of ``x``, as :meth:`broadcast_to` takes it (dynamic sizes included, on a traced backend)."""
        ...

    def addcmul(self, c: Array, a: Array, b: Array, value: float, /) -> Array:
        """``c + value · a · b`` (torch's fused ``addcmul``)."""
        ...

    # -- joins and products (the recurrences of rnnshap.formulas.recurrence)
    def concat(self, parts: Sequence[Array], axis: int, /) -> Array:
        """``parts`` joined along ``axis`` (``torch.cat``, ``concatenate``)."""
        ...

    def merge_last(self, x: Array, /) -> Array:
        """``x`` (..., a, b) as (..., a·b), row-major (torch's ``flatten(-2)``)."""
        ...

    def weight_blocks(self, weight: Array, widths: Sequence[int], /, transposed: bool = False) -> Any:
        """The matrix ``W`` (K, N) of :meth:`joined_matmul`, given as ``weight`` (K, N), or as its transpose (N, K)
        where ``transposed`` (a Keras kernel), cut into row blocks of ``widths`` (summing to K), in the form the
        namespace multiplies by: torch keeps the blocks (views), the others the whole weight. Made once, before a
        loop."""
        ...

    def joined_matmul(self, parts: Sequence[Array], weight: Any, add: Array | None = None, /) -> Array:
        """``add + concat(parts, -1) @ W``, ``W`` the matrix of ``weight`` (:meth:`weight_blocks`, one block per
        part, of its width), ``add`` None for nothing. The meaning is one; the rounding is the binding's, each
        keeping its engine's order: torch sums the blocks' products from the left, ``add`` first
        (``add + p_0 @ W_0 + p_1 @ W_1``), without joining the parts (a copy per call); TensorFlow (and the other
        Keras backends, JAX) adds one product of the joined parts to ``add``."""
        ...

    # -- positions along the last axis (the orderings' rule)
    def argmin(self, x: Array, axis: int, /) -> Array: ...
    def argmax(self, x: Array, axis: int, /) -> Array: ...
    def take_last(self, x: Array, index: Array, /) -> Array:
        """``x``'s entries at ``index`` along the last axis (torch's ``gather(-1, ·)``, ``take_along_axis``)."""
        ...

    def put_last(self, index: Array, values: Array, n: int, fill: int, /) -> Array:
        """An integer array of ``index``'s shape with ``n`` on the last axis: ``values`` at the positions
        ``index`` names (distinct along that axis), ``fill`` elsewhere (torch's ``scatter``)."""
        ...

    def arange(self, n: int, like: Array, /) -> Array:
        """0, 1, ..., n − 1 as integers, on ``like``'s device."""
        ...

    def to_float64(self, x: Array, /) -> Array: ...

    # -- new arrays
    def zeros_like(self, x: Array, /) -> Array: ...
    def ones_like(self, x: Array, /) -> Array: ...
    def full_like(self, x: Array, value: float, /) -> Array: ...

    def scalar(self, value: float, like: Array, /) -> Array | float:
        """``value`` as a constant that combines with ``like`` in its dtype (a cached 0-d tensor on torch)."""
        ...

    # -- what an eager backend can tell
    def surely_all(self, mask: Array, /) -> bool: ...
    def surely_none(self, mask: Array, /) -> bool: ...

    def surely_finite(self, x: Array, /) -> bool:
        """True only where every entry of ``x`` is known to be finite (torch: one reduction, its sum)."""
        ...

    def extremes(self, x: Array, /) -> tuple[float, float] | None:
        """The least and greatest entry of a non-empty real ``x``, read (torch: one ``aminmax``); None where the
        backend reads no value (Keras, JAX) or ``x`` is empty."""
        ...

    # -- dtypes
    def eps(self, dtype: Any, /) -> float:
        """The machine epsilon of a floating dtype of the library."""
        ...

    def tiny(self, dtype: Any, /) -> float:
        """The least positive normal number of a floating dtype of the library."""
        ...


__all__ = ["Array", "Ops"]
