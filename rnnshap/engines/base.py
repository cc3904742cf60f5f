"""The contract between the front door (:class:`rnnshap.DeepExplainer`) and an engine.

An engine knows one framework. It checks and converts inputs, runs the model, and turns a block of
(sample, reference) pairs into sums of multiplier × (x − r); it knows nothing of output selection,
batching, additivity, result shapes, Explanations or summaries, which the front door does once for
every engine. Engines never import each other.

Beside the contract, what the front door and every engine share: :func:`blocks` cuts the sample ×
reference grid into the :class:`Block` s an engine runs, :func:`normal_mode` is the context every call into
an engine runs in, :data:`RTOL` the one tolerance table of float checks, and :func:`named_inputs_advice`
the refusal of a list where the background was a dict of named inputs.
"""

from __future__ import annotations

import contextlib
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from . import precision
from .outputs import OutputLayout

#: what ``DeepExplainer(..., compile=)`` takes: the engine's choice (None: ``"auto"`` on a CUDA device and for a Python
#: loop of recurrent cells on the CPU, else intercepted),
#: intercepted passes, programs traced once they pay, traced programs, compiled programs
MODES = (None, False, "auto", "trace", True, "capture")


def check_mode(compile: Any) -> Any:
    """``compile`` if it is one of :data:`MODES`, else an InputError."""
    if not any(compile is mode or (type(compile) is type(mode) and compile == mode) for mode in MODES):
        raise InputError(f'compile= takes None, False, "auto", "trace", True or "capture", got {compile!r}')
    return compile


#: relative tolerance per dtype, written once for every check rnnshap makes of float results: the
#: additivity check (against max(|f(x)|, |E[f]|)) in the front door, and an engine's check that its
#: pass reproduces the model's outputs (against the largest |output|). Rounding stays far below it; a
#: misread operation does not.
RTOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
#: machine epsilon and least normal number per dtype, by name (numpy has no bfloat16; its exponent is float32's)
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
TINY = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}


@dataclass(frozen=True)
class Block:
    """A rectangle of the sample × reference grid: samples ``[s0, s1)`` of a batch of inputs paired
    with background rows ``[r0, r1)``. Its pairs are ordered sample-major: pair ``p`` holds sample
    ``s0 + p // (r1 - r0)`` and reference ``r0 + p % (r1 - r0)``."""

    s0: int
    s1: int
    r0: int
    r1: int

    @property
    def samples(self) -> int:
        return self.s1 - self.s0

    @property
    def references(self) -> int:
        return self.r1 - self.r0

    @property
    def pairs(self) -> int:
        return self.samples * self.references


def blocks(samples: int, references: int, pairs: int) -> list[Block]:
    """The sample × reference grid cut into blocks of at most ``pairs`` pairs: whole samples when
    ``pairs`` holds at least one, otherwise one sample's references a part at a time."""
    if pairs >= references:
        per_block = pairs // references
        return [Block(s, min(s + per_block, samples), 0, references) for s in range(0, samples, per_block)]
    return [Block(s, s + 1, r, min(r + pairs, references)) for s in range(samples) for r in range(0, references, pairs)]


@contextlib.contextmanager
def normal_mode() -> Iterator[None]:
    """The context every call into an engine runs in: how rnnshap runs a model.

    - Outside ``torch.inference_mode()`` where a caller is inside it: the engines take multipliers from a backward
      pass, which tensors made in inference mode cannot enter. The model runs as under ``torch.no_grad()`` all the
      same (no graph is kept, nothing is trained).
    - float32 computed as float32 (:func:`rnnshap.engines.precision.float32_in_full`): a product at TensorFloat-32
      (cuDNN's default for its convolutions and recurrent layers on an NVIDIA GPU, XLA's and TensorFlow's for their
      products there) rounds its operands to 10 bits of mantissa, and the model's outputs miss the multipliers' exact
      algebra by about 1e-3 of their scale.
    """
    torch = sys.modules.get("torch")
    outside = torch.inference_mode(False) if torch is not None and torch.is_inference_mode_enabled() else contextlib.nullcontext()
    with outside, precision.float32_in_full():
        yield


@dataclass
class BlockResult:
    """What an engine returns for one :class:`Block`, in float64 numpy arrays.

    ``sums[i]``: shape ``(k, samples, *input_i_shape)``, Σ over the block's references of
    multiplier × (x − r) for each of the k selected outputs (zeros for a context input).
    ``outputs``: ``(samples, n_outputs)``, the model's outputs on the samples.
    ``reference_outputs``: ``(samples, n_outputs)``, Σ over the block's references of the model's
    outputs on the reference side of each pair (which may depend on the sample: masks, context).
    """

    sums: list[np.ndarray]
    outputs: np.ndarray
    reference_outputs: np.ndarray


class Engine(ABC):
    """One framework's side of DeepSHAP. Set by the constructor of a subclass:"""

    #: a short name for messages: "pytorch", "keras (tensorflow)"
    name: str
    #: whether the model takes a list of inputs (the background was given as a list)
    multi_input: bool
    #: the shape of one sample's output, without the batch axis
    output_shape: tuple[int, ...]
    #: integer inputs attributed per token at the embedding they feed
    token_inputs: list[int]
    #: integer inputs used as numbers (cast to floating point inside the model), attributed as numbers
    number_inputs: list[int] = []
    #: the floating dtype the model computes in, by name ("float32", ...): it sets the additivity tolerance
    dtype: str
    #: the number of background rows
    references: int
    #: the background, per input, in the engine's array type
    background: list[Any]
    #: whether the values are for the model's own inputs (False for shap's (model, layer) form, whose
    #: values are for a layer's input or output): the Shapley mode plays the model's inputs
    attributes_model_inputs: bool = True
    #: what the values are attributed to where ``attributes_model_inputs`` is False: a layer's "input" or
    #: "output" (shap's (model, layer) form; ``layer_output=True``), said in the refusals of the Shapley mode
    side: str = "input"
    #: the model's outputs on the background, float64, shape ``(references, *output_shape)``
    background_outputs: np.ndarray
    #: which output tensor of a model with several is explained (``output=``), and where each sits
    outputs: OutputLayout
    #: the keys of a model called with a dict of inputs (the background was a dict), in the engine's order of
    #: inputs; None for a model of positional inputs. The doors refuse a list where the background was a dict.
    input_names: list[Any] | None = None
    #: where the model computes in a less precise dtype than its parameters and inputs (Keras' matmul on torch
    #: casts float64 to float32): a sentence the additivity check's report starts its causes with; else None
    precision_note: str | None = None
    #: whether :meth:`attribute` gives the multipliers themselves (``multipliers=True``, Captum's
    #: ``multiply_by_inputs=False``); the front door refuses them for an engine that does not
    gives_multipliers: bool = False

    @property
    def pass_path(self) -> str:
        """How the last call's pass ran, in words (a PyTorch model's: intercepted, traced or compiled, and why)."""
        return f"the {self.name} engine's own"

    def compile_passes(self, mode: Any) -> None:
        """``DeepExplainer(..., compile=)``: the PyTorch engine's passes as traced programs; refused elsewhere."""
        if check_mode(mode) is not None and mode is not False:
            raise InputError(
                f"compile= traces a PyTorch model's pass into one program; the {self.name} engine already runs its "
                "pass as one (a tf.function on TensorFlow, jax.jit on JAX): leave compile out"
            )

    @property
    def output_layout(self) -> list[tuple[str, tuple[int, ...], int, int]]:
        """``(name, shape, start, stop)`` per output tensor of a model with several, in the order their
        values are flattened into one output vector (a dict's by sorted key); empty for one tensor."""
        return self.outputs.parts

    @abstractmethod
    def inputs(self, X: Any, what: str) -> list[Any]:
        """``X`` (one array or a list per input) checked against the background and converted to
        the engine's arrays; raises :class:`~rnnshap.InputError` with a clear message."""

    @abstractmethod
    def predict(self, inputs: list[Any]) -> np.ndarray:
        """The model's outputs on ``inputs``, float64, flattened to ``(n, n_outputs)``."""

    @abstractmethod
    def attribute(
        self, inputs: list[Any], block: Block, columns: np.ndarray, per_pair: bool = False, multipliers: bool = False
    ) -> BlockResult:
        """Run the pairs of ``block``; ``columns`` ``(block.samples, k)`` are the flat indices of
        the outputs to attribute for each of its samples. With ``per_pair``, ``sums[i]`` keep each
        pair's values: ``(k, samples, references, *input_i_shape)``. With ``multipliers`` (only asked of an
        engine that :attr:`gives_multipliers`), the multipliers in place of multiplier × (x − r)."""

    @abstractmethod
    def to_numpy(self, inputs: list[Any]) -> list[np.ndarray]:
        """``inputs`` as numpy arrays (the ``data`` of an Explanation)."""

    def model_version(self) -> Any:
        """A value that changes when the model's parameters or buffers are changed in place or
        replaced (fine-tuning the same object after the explainer was built), or None where the
        engine cannot tell: the front door then recomputes ``background_outputs``
        (:meth:`refresh_background_outputs`)."""
        return None

    def refresh_background_outputs(self) -> None:
        """Recompute ``background_outputs`` with the model as it is now."""
        self.background_outputs = self.predict(self.background).reshape(self.references, *self.output_shape)

    def background_moved(self) -> bool:
        """Whether the model's outputs on the background moved from ``background_outputs`` (the model changed where
        :meth:`model_version` does not see: a write through ``.data``, Python state its forward reads); where they
        did, :meth:`refresh_background_outputs` has run."""
        now = self.predict(self.background_rows()).reshape(np.shape(self.background_outputs))
        if np.array_equal(now, np.asarray(self.background_outputs, dtype=np.float64), equal_nan=True):
            return False
        self.refresh_background_outputs()
        return True

    def outputs_moved(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """How far the model's own outputs move with the batch they run in (for the additivity check, where a sum in a
        dtype coarser than float64 misses): ``|f(x)|`` of the samples ``inputs`` and of each background row, each run
        alone against both run as one batch, float64 ``(n, n_outputs)`` and ``(references, n_outputs)``; None where the
        engine does not measure it."""
        return None

    def background_rows(self) -> list[Any]:
        """The background as :meth:`predict` may take it (copies, where a forward may write into its inputs)."""
        return list(self.background)

    @contextlib.contextmanager
    def call(self, just_built: bool = False) -> Iterator[None]:
        """One call of the front door, its blocks run inside. An engine that keeps work between calls (the PyTorch
        engine's reference passes) vets it once a call, not once a block: no other code runs between one call's
        blocks. ``just_built``: the caller built the explainer just before this call, with nothing run in between
        (a door's one-shot call): the work its setup kept needs no vetting."""
        yield

    def cuda_device(self) -> Any:
        """The CUDA device the engine computes on, or None (``batch_size="auto"`` sizes its blocks of pairs from that
        device's memory: :class:`rnnshap.attribution.MemorySizedBlocks`)."""
        return None

    def rows_per_pair(self, outputs: int) -> int:
        """How many rows of the model's batch one pair takes when ``outputs`` outputs are attributed
        (the front door sizes blocks with it so that ``batch_size`` bounds memory)."""
        return 1

    def ranks(self, selected: np.ndarray) -> Any:
        """The ranks ``shap_values(..., ranked_outputs=k)`` returns, in the framework's array type
        (as shap does: a tensor for PyTorch models)."""
        return selected

    @staticmethod
    def rows(inputs: list[Any]) -> int:
        return int(inputs[0].shape[0])

    @staticmethod
    def take(inputs: list[Any], start: int, stop: int) -> list[Any]:
        """Rows ``[start, stop)`` of every input."""
        return [x[start:stop] for x in inputs]


def named_inputs_advice(names: Sequence[Any], what: str) -> str:
    """The refusal of a list where the background was a dict of named inputs."""
    keys = ", ".join(map(str, names))
    return (
        f"{what} is a list, but the background was a dict of named inputs ({keys}): pass {what} as a dict with the "
        "same keys. A list would be read in the background's key order, which need not be the model's."
    )


#: per framework: how a state in a (num_layers, batch, hidden) layout is put batch first, and how sequences of
#: different lengths become one input (:func:`batch_axis_advice`)
_BATCH_FIRST = {
    "torch": (
        "h0.transpose(0, 1), and have forward() turn it back (h0.transpose(0, 1).contiguous()) before the recurrent "
        "layer takes it",
        "torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True) (N, T, F)",
    ),
    "keras": (
        "np.swapaxes(state, 0, 1) (a Keras recurrent layer's initial_state is (batch, units) already)",
        'keras.utils.pad_sequences(sequences, padding="post", dtype="float32") (N, T, F)',
    ),
    "jax": (
        "jnp.swapaxes(state, 0, 1), and have __call__ turn it back where the model reads it in that layout",
        "np.stack([np.pad(s, ((0, T - len(s)), (0, 0))) for s in sequences]) (N, T, F)",
    ),
}


def batch_axis_advice(shapes: Sequence[tuple[int, ...]], framework: str) -> str:
    """What to do where the inputs of a list have different numbers of rows (``shapes``: each input's shape): a
    state in a (num_layers, batch, hidden) layout, or sequences of different lengths read as several inputs.
    ``framework``: "torch", "keras" or "jax", whose calls the advice names."""
    transpose, pad = _BATCH_FIRST[framework]
    n = shapes[0][0]
    counts = sorted({s[0] for s in shapes})
    same_rest = all(len(s) == len(shapes[0]) and s[1:] == shapes[0][1:] for s in shapes)
    state = [i for i, s in enumerate(shapes[1:], 1) if s[0] != n and len(s) >= 2 and s[1] == n]
    if state:
        i = state[0]
        return (
            f"Every input has its batch axis first, initial states too: input {i} of shape {tuple(shapes[i])} "
            f"has the batch ({n}) on its axis 1, torch's (num_layers, batch, hidden) layout of h0. Give it batch "
            f"axis first, {transpose}"
        )
    if same_rest and len(shapes) > 1:
        return (
            f"A list is read as several inputs (one per argument of the model's call), and these were read as "
            f"{len(shapes)} inputs: of one shape but {counts} rows, they look like sequences of different lengths. Give "
            f"one input of sequences: pad them to one length and stack them, {pad}, with the lengths or a mask as "
            "another input where the model reads one"
        )
    return "Every input has its batch axis first (the samples), initial states and masks included"


def one_sample_hint(what: str, shape: tuple[int, ...], row: tuple[int, ...]) -> str:
    """The hint where ``what`` (shaped ``shape``) has the shape of one background row ``row``: its batch axis is
    missing ("" otherwise)."""
    if tuple(shape) != tuple(row):
        return ""
    return (
        f". {what} looks like one sample without its batch axis: give {what}[None] (shape {(1, *tuple(shape))}) to "
        "explain one sample"
    )
