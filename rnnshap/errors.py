"""Errors raised by rnnshap. Each one says what went wrong and what to do about it."""

from __future__ import annotations

from typing import Sequence, Union

#: What to do about a refused operation, by kind. :class:`UnsupportedOperationError` prints the
#: advice of every kind among its operations once, after the list; ``{op}`` is the first such op.
ADVICE: dict[str, str] = {
    "rule": (
        "No rule is registered for {op}. If it is an elementwise function of one input-dependent "
        "tensor, give it the Rescale rule:\n"
        "    rnnshap.register_rule({op}, rnnshap.rules.Rescale())\n"
        "(rnnshap.rules.Shapley() for several input-dependent operands), or register a rule for the "
        "module that contains it: a module rule replaces the decomposition of its inside. See "
        "docs/custom_rules.md."
    ),
    "rule_operands": (
        "No rule is registered for {op}, which takes several input-dependent operands here. If it is an elementwise "
        "function of them, give it the Shapley rule (exact for up to 4 operands):\n"
        "    rnnshap.register_rule({op}, rnnshap.rules.Shapley())\n"
        "or register a rule for the module that contains it: a module rule replaces the decomposition of its "
        "inside. See docs/custom_rules.md."
    ),
    "control": (
        "forward() turns input values into Python values ({op}) to branch or loop on them. The "
        "reference and the input would take different paths, and a decision has no multiplier. Make "
        "the control flow independent of the input's values: pass what the decision needs as a "
        "separate input (integer and bool inputs are context, used as given), or write the branch "
        "as arithmetic that computes both sides (torch.where with a mask that is not computed from "
        "the input, torch.maximum, relu, clamp)."
    ),
    "experts": (
        "{op} runs the experts of a mixture of experts grouped by the experts its router picked (transformers' "
        "grouped_mm form). rnnshap runs transformers' experts in their batched_mm form, the same function written "
        "with exact rules, where it finds them among the modules of the model it is given: give the explainer a "
        "module that holds the language model as an attribute (a closure hides it), or call "
        'model.set_experts_implementation("batched_mm") before explaining.'
    ),
    "comparison": (
        "{op} turns input values into a bool mask: a step of the compared values' difference, attributed "
        "where the mask gates a torch.where(mask, f(x), g(x)) or is cast to floating point first. Write "
        "x * mask as x * mask.to(x.dtype) (the same values). Used otherwise (an index, a count), a mask has "
        "no multiplier: if it is a feature of its own, compute it outside the model and pass it as a "
        "separate bool or integer input (context: used as given, not attributed). To gate values by "
        "their sign or size, torch.where(x >= 0, f(x), g(x)), relu, torch.maximum/minimum and clamp have "
        "exact rules."
    ),
    "step": (
        "{op} is piecewise constant in its input (rounding, floor division, remainder): it jumps, "
        "and its derivative is zero elsewhere, so DeepLIFT has no exact rule for it. Compute the "
        "quantity outside the model and pass it as an input, or, if you accept the secant multiplier "
        "(f(x) - f(r)) / (x - r) across the jumps, register it explicitly:\n"
        "    rnnshap.register_rule({op}, rnnshap.rules.Rescale(smooth=False))"
    ),
    "selection": (
        "{op} selects or orders elements by their input-dependent values, and which elements it "
        "picks differs between the input and its reference. Orderings along one dimension of each "
        "row are attributed exactly: torch.max / torch.min / amax / amin, argmax / argmin, sort, "
        "argsort, topk (sorted), kthvalue, median and quantile with a dimension (their values are routed like "
        "max-pool, rank by rank, and their indices may select with gather, indexing, embedding or "
        "one_hot). Write the selection with one of those, along a dimension other than the batch's."
    ),
    "repeated_write": (
        "{op} writes values at positions of which some repeat, without accumulating: torch keeps one of the values "
        "written there (which one, unspecified) while its gradient reaches every one, so no gradient method explains "
        "it. Write each position once, or accumulate (index_put_(..., accumulate=True), index_add_, scatter_add_)."
    ),
    "infinite_pick": (
        "{op} reads values that are infinite on one side of a pair only. An ordering's picks read directly from a "
        "moving mask's -inf fill (a router's topk over masked_fill(~mask, -inf)) are attributed, as the limit of "
        "finite fills; anything else has no finite multiplier there. Fill with a finite value where the model allows "
        "it (below every score, the picks are the same), or read the picks straight from the masked_fill."
    ),
    "no_grad": (
        "forward() computes on input-dependent tensors in inference mode ({op}): rnnshap "
        "takes its multipliers from a backward pass, and tensors made in inference mode cannot "
        "enter one. Use torch.no_grad() there instead (what it computes is followed as detach() is), "
        "or remove torch.inference_mode() from the path from the input to the output; the explainer "
        "already runs the model without training it."
    ),
    "function": (
        "{op} is a custom torch.autograd.Function whose forward() rnnshap cannot follow through torch "
        "operations (it runs a kernel or library outside torch's Python API, or it fails when run "
        "with gradients enabled). Its backward() gives gradients, not DeepLIFT multipliers, so it is "
        "refused. Write its forward with torch operations, or wrap the call in an nn.Module and "
        "register a rule for that module (rnnshap.register_rule(MyScan, rule))."
    ),
    "attention": (
        "{op} is one of torch's fused attention kernels, called directly. Call nn.MultiheadAttention, "
        "nn.Transformer*Layer or F.scaled_dot_product_attention instead, which rnnshap attributes "
        "exactly, or write the attention out with torch operations (softmax(q @ k.transpose(-2, -1) / "
        "d ** 0.5) @ v), which have exact rules."
    ),
    "detach": (
        "{op} cuts the path from the input to the output in a way rnnshap cannot follow. Write "
        "t.detach() (out of place) instead: rnnshap follows the function through .detach(), which "
        "changes training, not the value the model computes."
    ),
    "escape": (
        "{op} takes input-dependent values out of torch (to numpy or Python), out of rnnshap's "
        "sight. Keep that computation in torch operations."
    ),
    "integer": (
        "{op} turns input-dependent values into integers or bools, a step function whose change has "
        "no multiplier. Keep input-dependent values floating point; integer quantities computed from "
        "the input can be passed as a separate input (context, used as given)."
    ),
    "output": (
        "The model's output does not depend on the explained inputs through torch operations rnnshap "
        "sees: check that forward() uses its inputs, and that they do not leave torch on the way "
        "(numpy, .item(), a kernel outside torch's Python API)."
    ),
    "keras_masking": (
        "{op}: apply Masking to a model input (on the torch backend its comparison then reads the explained "
        "sample's values on both sides of each pair, as rnnshap's Keras engine on TensorFlow does, and masked "
        "steps get exactly 0), or explain the model on the TensorFlow backend (KERAS_BACKEND=tensorflow; save it "
        "and load it there), whose engine follows Keras masks wherever they are made (docs/keras.md)."
    ),
    "stateful": (
        "{op} carries its state from one call to the next. Explain the function of one call from a given state: "
        "build the same model with stateful=False (and no fixed batch size), copy the weights over "
        "(new.set_weights(model.get_weights())), and, where the carried state matters, pass it as an input "
        "(initial_state=...). The model as given is left untouched."
    ),
    "missing": (
        "{op} meets a missing value (NaN) on one side of a pair only: an explained input and a background row "
        "hold NaN at different entries that the model reads, and a missing value has no difference to attribute. "
        "Choose background rows that are missing where the explained inputs are and observed where they are "
        "(real windows of the same series, with the same gaps), or fill the missing values before explaining "
        "(as the model would: its own fill value, or interpolation). Missing values the model never reads "
        "(trimmed context) and missing values at the same entries on both sides are attributed exactly (0)."
    ),
    "reduction": (
        "No rule is registered for {op}, which reduces its input-dependent operand (its result has another "
        "shape): an elementwise rule (Rescale, Shapley) does not fit it. Write the reduction with operations "
        "that have exact rules (sum, mean, amax/amin, logsumexp, var/std, norm, sort, median along a "
        "dimension), or register a rule for the module that contains it: a module rule replaces the "
        "decomposition of its inside. See docs/custom_rules.md."
    ),
    "quantized": (
        "{op} is a quantized kernel (torch.ao.quantization: quantize_dynamic, or a converted static model): it "
        "computes in integers inside one kernel, outside the float operations rnnshap follows, and a fused kernel is "
        "not an elementwise function, so no registered rule fits it. Explain the float model the quantized one was "
        "made from (exact; the two differ by the quantization's rounding), or explain the quantized model itself "
        "in the Shapley mode with rows computed alone (dynamic quantization picks one scale per batch):\n"
        "    rnnshap.ShapleyExplainer(quantized_model, background, batch_size=1).shapley_values(x)"
    ),
    "jax": (
        "rnnshap's JAX engine (Flax models) has no exact rule for {op} on an input-dependent value. Write that step "
        "with the operations it takes (docs/jax.md lists them: sums, products, matrix products, the elementwise "
        "functions of rnnshap's operation table, scans), or explain the model in the Shapley mode (below)."
    ),
    "complex": (
        "rnnshap follows complex values through linear maps (the Fourier transforms of torch.fft, conj, real, "
        "imag, view_as_real and view_as_complex, sums, indexing, products and matrix products with a constant), "
        "products of two of them (bilinear), magnitudes (abs) and the elementwise functions of its table (tanh, exp) "
        "only. Write {op} in real arithmetic on the real and imaginary parts (x.real, x.imag or torch.view_as_real(x), "
        "each a real tensor with exact rules), e.g. the angle as torch.atan2(z.imag, z.real)."
    ),
    "operands": (
        "The rule registered for {op} does not apply to this call (see the reason above): register a "
        "rule that does (rnnshap.rules.Shapley() handles up to 4 input-dependent elementwise operands), "
        "or rewrite the call so that the input-dependent tensors are where the rule expects them."
    ),
}

#: The door that still works where DeepSHAP's decomposition cannot follow a model (said by each such refusal)
SHAPLEY_DOOR = (
    "Shapley values of the same model need only its forward: rnnshap.ShapleyExplainer(model, background)"
    ".shapley_values(x) still works (exact where the budget covers every coalition, with standard errors "
    "otherwise; docs/shapley.md)."
)

#: Said where torch's backward finds a tensor it saved written into by the forward after it was read
WRITTEN_AFTER_READ = (
    "The model's forward writes in place into a tensor after an operation read it for its gradient (torch: "
    "{torch}), so torch.autograd cannot differentiate this forward, nor can DeepSHAP. A cache or a recurrent state "
    "updated in place does this (transformers' RWKV with use_cache=True, whose plain backward fails alike): run the "
    "model without its cache (use_cache=False in its call, or model.config.use_cache = False), or write the state out "
    "of place (state = torch.cat(...) or torch.stack(...) instead of state[..., i] = value). " + SHAPLEY_DOOR
)

#: Said where the model's own forward, with gradients, reads a view that its base's in-place write invalidated
VIEW_WRITTEN_AFTER = (
    "The model's forward writes in place into a tensor after taking views of it with a function that returns several "
    "(split, chunk, unbind), then reads such a view (torch: {torch}), so torch.autograd cannot run this forward with "
    "gradients, nor can DeepSHAP. Take the views after the write (buffer.index_add_(...), then buffer.split(...)), or "
    "write out of place (buffer = buffer.index_add(...)). " + SHAPLEY_DOOR
)

#: Said where a model's own calls on the same rows differ (both doors' checks find it)
RANDOM_MODEL = (
    "The model is random at inference: two calls on the same rows give outputs {gap:.3g} apart. A Dropout or noise "
    "layer called with training=True (MC dropout, often inside a custom layer's call()) or a random operation does "
    "this, and a random function has no fixed attributions to compute. Explain the deterministic model: call such "
    "layers with training=None (they then follow model(x, training=False)), or fix the draws yourself (a model that "
    "takes its dropout masks as inputs) and explain each draw."
)

Op = Union[tuple[str, str], tuple[str, str, str]]


#: the grouped products that transformers' mixtures of experts run their experts with in their grouped form
_GROUPED = frozenset({"_grouped_mm", "grouped_mm", "grouped_mm_fallback"})


def _advice_kind(name: str, kind: str) -> str:
    """A quantized kernel gets quantization's advice, whatever shape of rule its call would have asked for; a grouped
    product, the advice for transformers' experts."""
    parts = name.split(".")  # torch._ops.quantized.linear_dynamic, torch._ops.aten.quantized_lstm
    if parts[-1] in _GROUPED:
        return "experts"
    if kind in ("rule", "rule_operands", "reduction") and (parts[-1].startswith("quantized") or "quantized" in parts[:-1]):
        return "quantized"
    return kind


class RnnShapError(Exception):
    """Base class of every error rnnshap raises on purpose."""


class UnsupportedOperationError(RnnShapError, TypeError):
    """The model applies operations to input-dependent tensors that rnnshap has no exact rule for.

    All such operations found in one forward pass are listed together, so that a user can deal
    with every one of them at once. ``ops`` holds ``(name, reason)`` pairs; each operation may come
    with the kind of advice that fits it (a key of :data:`ADVICE`; ``"rule"`` by default), in
    ``advice``.
    """

    def __init__(self, ops: Sequence[Op]) -> None:
        self.ops: list[tuple[str, str]] = [(op[0], op[1]) for op in ops]
        self.advice: dict[str, str] = {op[0]: _advice_kind(op[0], op[2] if len(op) > 2 else "rule") for op in ops}  # type: ignore[misc]
        lines = [f"  - {name}: {why}" for name, why in self.ops]
        first: dict[str, str] = {}
        for name, kind in self.advice.items():
            first.setdefault(kind if kind in ADVICE else "rule", name)
        advice = [ADVICE[kind].format(op=name) for kind, name in first.items()]
        message = (
            f"rnnshap cannot attribute {len(self.ops)} operation(s) of this model exactly:\n"
            + "\n".join(lines)
            + "\nrnnshap refuses rather than return attributions that do not add up.\n"
            + "\n".join(f"* {text}" for text in advice)
            + ("" if "quantized" in first else "\n* " + SHAPLEY_DOOR)  # its advice names the Shapley door that fits
        )
        super().__init__(message)


class AdditivityError(RnnShapError, AssertionError):
    """The attributions do not sum to f(x) - E[f(r)] within the tolerance of the dtype.

    ``sample`` is the sample the message names (the worst one); ``ill_conditioned`` is True where the values'
    magnitudes sum to so many times the output that the dtype cannot carry their sum to the tolerance.
    """

    def __init__(self, message: str, *, sample: int = -1, ill_conditioned: bool = False) -> None:
        super().__init__(message)
        self.sample, self.ill_conditioned = sample, ill_conditioned


class AdditivityWarning(UserWarning):
    """The attributions add up within the model's own rounding but not within the tolerance of its dtype: its
    outputs for the same rows move with the batch they run in by more than that tolerance (see
    :mod:`rnnshap.additivity`)."""


class TapeMismatchError(RnnShapError, RuntimeError):
    """The reference pass and the input pass of the model ran different operations.

    This happens when the model's control flow depends on the values of its input (a branch
    on ``x.sum() > 0``, lengths computed from the data) or on randomness.
    """


class ModelStateError(RnnShapError, ValueError):
    """The model is in a state that cannot be explained exactly (train-mode dropout, TorchScript, random at inference,
    a forward that writes into a tensor after its gradient read it: a cache updated in place)."""


class InputError(RnnShapError, ValueError):
    """Inputs or background do not fit the model or each other."""


class ModelTypeError(InputError, TypeError):
    """The model is of a kind the explainer does not take (a function given to DeepSHAP, a number): an
    :class:`InputError` that is also the ``TypeError`` it was before."""
