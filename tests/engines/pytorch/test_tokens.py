"""Integer inputs: token ids, numbers and context, whatever integer operations bring them where they
are used.

The references are independent of rnnshap's bookkeeping of integers: the same function written two
ways (the integer operation applied to the ids before the embedding, or the same operation applied
to the embedding's output, which rnnshap sees as ordinary floating-point operations; an integer
feature cast to float inside the model, or given as a float), a float64 copy of the model, and
additivity against the model's own outputs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnshap

from ...conftest import assert_additive, model_outputs
from ...models.torch import Composite

V, D, T = 11, 3, 6
BOS = 1
Tensor = torch.Tensor
F64 = torch.float64


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-12) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.abs(b).max()), 1e-300))


def _explain(model: nn.Module, background: object, X: object, **kwargs: object) -> np.ndarray:
    return rnnshap.DeepExplainer(model, background, **kwargs).shap_values(X)  # type: ignore[arg-type]


# -- 1. token ids moved before the embedding -------------------------------------------------------------
PERMUTATION = torch.tensor([0, 0, 3, 2, 5, 1])  # with a repeat: position 0 feeds two steps, position 4 none

#: name → (move applied to the ids, the same move applied to the embedding's output (N, T, D))
MOVES: dict[str, tuple[Callable[[Tensor, nn.Embedding], Tensor], Callable[[Tensor, nn.Embedding], Tensor]]] = {
    "flip": (lambda t, emb: emb(t.flip(1)), lambda t, emb: emb(t).flip(1)),
    "shift_right_with_bos": (
        lambda t, emb: emb(F.pad(t[:, :-1], (1, 0), value=BOS)),
        lambda t, emb: torch.cat([emb.weight[BOS].expand(t.shape[0], 1, D), emb(t)[:, :-1]], 1),
    ),
    # (T, pairs) before the embedding: with as many pairs as steps, the shapes coincide
    "transpose": (lambda t, emb: emb(t.t()).transpose(0, 1), lambda t, emb: emb(t)),
    "roll": (lambda t, emb: emb(t.roll(2, 1)), lambda t, emb: emb(t).roll(2, 1)),
    "index_select": (lambda t, emb: emb(t.index_select(1, PERMUTATION)), lambda t, emb: emb(t).index_select(1, PERMUTATION)),
    "gather": (
        lambda t, emb: emb(t.gather(1, PERMUTATION.expand_as(t))),
        lambda t, emb: emb(t).gather(1, PERMUTATION[None, :, None].expand(t.shape[0], T, D)),
    ),
    "masked_fill_then_cast": (
        lambda t, emb: emb(t.masked_fill(torch.arange(T) == 4, BOS).int()),
        lambda t, emb: torch.where((torch.arange(T) == 4)[None, :, None], emb.weight[BOS], emb(t)),
    ),
}


def moved(move: Callable[[Tensor, nn.Embedding], Tensor]) -> nn.Module:
    return Composite(lambda m, tokens: m.out(m.gru(m.move(tokens, m.emb))[0][:, -1]),
                     move=move, emb=nn.Embedding(V, D), gru=nn.GRU(D, 4, batch_first=True), out=nn.Linear(4, 2))  # fmt: skip


def _twins(before: Callable, after: Callable) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = moved(before).double().eval()
    b = moved(after).double().eval()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("move", list(MOVES))
def test_ids_moved_before_the_embedding_are_attributed_to_their_input_positions(move: str) -> None:
    ids_first, embedding_first = _twins(*MOVES[move])
    background, X = torch.randint(0, V, (3, T)), torch.randint(0, V, (2, T))  # 2 x 3 pairs = T
    moved = _explain(ids_first, background, X)
    reference = _explain(embedding_first, background, X)
    _close(moved, reference)
    assert_additive(moved, ids_first, X, background, torch.float64)
    if move == "shift_right_with_bos":
        assert np.abs(moved[:, -1]).max() == 0.0  # the last token is shifted out
    if move in ("index_select", "gather"):
        assert np.abs(moved[:, 4]).max() == 0.0  # position 4 is never selected


def columns_head(m: nn.Module, x0: Tensor, x1: Tensor) -> Tensor:
    return m.out(m.lstm(torch.cat([m.embs[0](x0), m.embs[1](x1)], -1))[0][:, -1])


def categorical_columns(separate: bool = False) -> nn.Module:
    """Categorical columns of one integer input, each through its own embedding (as
    pytorch-forecasting does with ``x[..., i]``), or (``separate``) the same columns as separate inputs."""
    return Composite(columns_head if separate else lambda m, x: columns_head(m, x[..., 0], x[..., 1]),
                     embs=nn.ModuleList([nn.Embedding(V, 2), nn.Embedding(5, 3)]), lstm=nn.LSTM(5, 4, batch_first=True),
                     out=nn.Linear(4, 2))  # fmt: skip


def _categoricals(n: int) -> Tensor:
    return torch.stack([torch.randint(0, V, (n, T)), torch.randint(0, 5, (n, T))], -1)


def test_categorical_columns_indexed_inside_the_model_equal_separate_inputs() -> None:
    torch.manual_seed(1)
    model = categorical_columns().double().eval()
    separate = categorical_columns(separate=True).double().eval()
    separate.load_state_dict(model.state_dict())
    background, X = _categoricals(4), _categoricals(3)
    values = _explain(model, background, X)  # (3, T, 2 columns, 2 outputs)
    columns = _explain(separate, [background[..., 0], background[..., 1]], [X[..., 0], X[..., 1]])
    _close(values[:, :, 0], columns[0])
    _close(values[:, :, 1], columns[1])
    assert_additive(values, model, X, background, torch.float64)


# -- 2. embedding bags, tables indexed by ids --------------------------------------------------------------
def _reduce(e: Tensor, mode: str) -> Tensor:
    return {"sum": lambda: e.sum(1), "mean": lambda: e.mean(1), "max": lambda: e.amax(1)}[mode]()


def bags(m: nn.Module, tokens: Tensor) -> Tensor:
    n = tokens.shape[0]
    if m.reference:
        e = F.embedding(tokens, m.bag.weight)
        if m.layout == "2d":
            return m.out(_reduce(e, m.mode))
        empty = torch.zeros(n, D, dtype=e.dtype)
        return m.out(torch.cat([empty, _reduce(e[:, :2], m.mode), _reduce(e[:, 2:], m.mode)], 1))
    if m.layout == "2d":
        return m.out(m.bag(tokens))
    starts = torch.arange(n) * T
    offsets = torch.stack([starts, starts, starts + 2], 1).reshape(-1)
    return m.out(m.bag(tokens.reshape(-1), offsets).reshape(n, 3 * D))


def bag(mode: str, layout: str, reference: bool = False) -> nn.Module:
    """``nn.EmbeddingBag`` on (N, T) ids: 2-D bags, or flattened with offsets cutting every row into
    an empty bag, a bag of 2 and a bag of T - 2; or (reference) ``nn.Embedding`` and the reduction."""
    return Composite(bags, mode=mode, layout=layout, reference=reference, bag=nn.EmbeddingBag(V, D, mode=mode),
                     out=nn.Linear(3 * D if layout == "offsets" else D, 2))  # fmt: skip


@pytest.mark.parametrize("layout", ["2d", "offsets"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_attributes_every_token(mode: str, layout: str) -> None:
    torch.manual_seed(2)
    model = bag(mode, layout).double().eval()
    reference = bag(mode, layout, reference=True).double().eval()
    reference.load_state_dict(model.state_dict())
    background, X = torch.randint(0, V, (4, T)), torch.randint(0, V, (3, T))
    values = _explain(model, background, X)
    assert values.shape == (3, T, 2)
    _close(values, _explain(reference, background, X))
    assert_additive(values, model, X, background, torch.float64)


def weighted_bag(reference: bool = False) -> nn.Module:
    """EmbeddingBag with per-sample weights, or (``reference``) the same sum written with F.embedding."""
    return Composite(
        lambda m, tokens, weights: m.out((F.embedding(tokens, m.bag.weight) * weights.unsqueeze(-1)).sum(1))
        if m.reference else m.out(m.bag(tokens, per_sample_weights=weights)),
        reference=reference, bag=nn.EmbeddingBag(V, D, mode="sum"), out=nn.Linear(D, 2),
    )  # fmt: skip


def test_embedding_bag_with_per_sample_weights_that_are_inputs() -> None:
    torch.manual_seed(3)
    model = weighted_bag().double().eval()
    reference = weighted_bag(reference=True).double().eval()
    reference.load_state_dict(model.state_dict())
    background = [torch.randint(0, V, (4, T)), torch.rand(4, T, dtype=torch.float64)]
    X = [torch.randint(0, V, (3, T)), torch.rand(3, T, dtype=torch.float64)]
    values = _explain(model, background, X)
    expected = _explain(reference, background, X)
    for v, e in zip(values, expected, strict=True):
        _close(v, e)
    assert np.abs(values[0]).max() > 0 and np.abs(values[1]).max() > 0
    assert_additive(values, model, X, background, torch.float64)


def masked_bag(m: nn.Module, tokens: Tensor, keep: Tensor) -> Tensor:
    e = F.embedding(tokens, m.bag.weight) * keep.unsqueeze(-1)
    if m.mode == "sum":
        return m.out(e.sum(1))
    return m.out(e.sum(1) / keep.sum(1, keepdim=True).clamp(min=1))


def padded_bag(mode: str, masked: bool = False) -> nn.Module:
    """EmbeddingBag with padding_idx=0, or (``masked``) the same with the padding mask given as an input."""
    return Composite(masked_bag if masked else lambda m, tokens: m.out(m.bag(tokens)), mode=mode,
                     bag=nn.EmbeddingBag(V, D, mode=mode, padding_idx=0), out=nn.Linear(D, 2))  # fmt: skip


def _padded_tokens(n: int) -> Tensor:
    tokens = torch.randint(1, V, (n, T))
    tokens[0, 3:] = 0
    if n > 1:
        tokens[1, :] = 0  # all padding: an empty bag
    return tokens


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_bag_padding_is_the_explained_samples(mode: str) -> None:
    torch.manual_seed(4)
    model = padded_bag(mode).double().eval()
    masked = padded_bag(mode, masked=True).double().eval()
    masked.load_state_dict(model.state_dict())
    background, X = _padded_tokens(4), _padded_tokens(3)
    values = _explain(model, background, X)
    keep = X != 0
    expected = _explain(masked, [background, background != 0], [X, keep])
    _close(values, expected[0])
    assert np.abs(values[~keep.numpy()]).max() == 0.0  # padding gets exactly 0
    # adds up to f(x) minus the mean over the background of the model with the sample's padding
    base = np.mean([model_outputs(masked, [background[j : j + 1].expand_as(X), keep]) for j in range(4)], axis=0)
    np.testing.assert_allclose(values.sum(1), model_outputs(model, X) - base, rtol=0, atol=1e-10)


def look_up(m: nn.Module, tokens: Tensor) -> Tensor:
    e = {
        "module": lambda: m.emb(tokens),
        "weight_index": lambda: m.emb.weight[tokens],
        "functional": lambda: F.embedding(tokens, m.emb.weight),
        "index_select": lambda: m.emb.weight.index_select(0, tokens.reshape(-1)).reshape(*tokens.shape, D),
    }[m.how]()
    return m.out(m.gru(e)[0][:, -1])


def lookup(how: str = "module", forward: Callable[..., Tensor] = look_up, positions: bool = False) -> nn.Module:
    """Ids → embedding (looked up as ``how`` says) → GRU → Linear; ``forward``: another forward over the same
    parts (``look_up(m, tokens)`` the lookup's own); ``positions``: a position embedding ``pos`` after them."""
    return Composite(forward, how=how, emb=nn.Embedding(V, D), gru=nn.GRU(D, 4, batch_first=True), out=nn.Linear(4, 2),
                     **({"pos": nn.Embedding(T, D)} if positions else {}))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_token_only_model_is_checked_at_the_tolerance_of_the_dtype_it_computes_in(dtype: torch.dtype) -> None:
    """Its only input is int64: the additivity tolerance is that of the embeddings and the GRU."""
    model = lookup("module").to(dtype).eval()
    explainer = rnnshap.DeepExplainer(model, torch.randint(0, V, (3, T)))
    assert explainer.engine.dtype == str(dtype).replace("torch.", "")


def indexed_by_input() -> nn.Module:
    """Reads the GRU's state at the step an integer input names (the last of each sequence)."""
    return Composite(lambda m, x, last: m.out(m.gru(x)[0][torch.arange(x.shape[0]), last]),
                     gru=nn.GRU(2, 4, batch_first=True), out=nn.Linear(4, 1))  # fmt: skip


def test_an_integer_input_used_as_an_index_is_context() -> None:
    torch.manual_seed(8)
    model = indexed_by_input().double().eval()
    background = [torch.randn(3, T, 2, dtype=torch.float64), torch.full((3,), T - 1)]
    X = [torch.randn(2, T, 2, dtype=torch.float64), torch.tensor([2, 4])]
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert not np.any(values[1])  # context: used as given, not attributed
    for row, last in enumerate(X[1].tolist()):
        assert not np.any(values[0][row, last + 1 :])  # steps after it are unread
        assert np.abs(values[0][row, : last + 1]).max() > 0
    with torch.no_grad():  # the references are read at the explained sample's index
        base = torch.stack([model(background[0][j : j + 1].expand_as(X[0]), X[1]) for j in range(3)]).mean(0)
        gap = (model(*X) - base).numpy()
    np.testing.assert_allclose(values[0].reshape(2, -1, 1).sum(1), gap, rtol=0, atol=1e-12)


@pytest.mark.parametrize("how", ["weight_index", "functional", "index_select"])
def test_every_form_of_lookup_is_an_embedding(how: str) -> None:
    torch.manual_seed(5)
    model = lookup(how).double().eval()
    reference = lookup("module").double().eval()
    reference.load_state_dict(model.state_dict())
    background, X = torch.randint(0, V, (4, T)), torch.randint(0, V, (3, T))
    values = _explain(model, background, X)
    _close(values, _explain(reference, background, X))
    assert_additive(values, model, X, background, torch.float64)


# -- 3. integers used as numbers ---------------------------------------------------------------------------
NUMBER_USES: dict[str, Callable[[Tensor], Tensor]] = {
    "double": lambda x: x.double(),
    "to": lambda x: x.to(torch.float64),
    "arithmetic": lambda x: x * torch.tensor(0.5, dtype=torch.float64) + 1.0,
    "true_division": lambda x: x / torch.tensor(4.0, dtype=torch.float64),
    "joined_to_floats": lambda x: torch.cat([x[:, :2], torch.ones(x.shape[0], 3, dtype=torch.float64) * x[:, 2:]], 1),
}


def counts(use: Callable[[Tensor], Tensor]) -> nn.Module:
    return Composite(lambda m, x: m.mlp(m.use(x)), use=use, mlp=nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)))


@pytest.mark.parametrize("use", list(NUMBER_USES))
def test_integer_features_cast_inside_the_model_are_attributed_as_numbers(use: str) -> None:
    torch.manual_seed(6)
    model = counts(NUMBER_USES[use]).double().eval()
    background, X = torch.randint(0, 9, (5, 5)), torch.randint(0, 9, (3, 5))
    values = _explain(model, background, X)
    as_floats = _explain(model, background.double(), X.double())  # the same model given floats
    _close(values, as_floats)
    assert np.abs(values).max() > 0
    assert_additive(values, model, X, background, torch.float64)


def calendar() -> nn.Module:
    """A float sequence and an integer calendar index per step, joined by cat inside the model."""
    return Composite(lambda m, x, day: m.out(m.lstm(torch.cat([x, day.unsqueeze(-1)], -1))[0][:, -1]),
                     lstm=nn.LSTM(3, 4, batch_first=True), out=nn.Linear(4, 1))  # fmt: skip


def test_integer_index_joined_to_a_float32_sequence_matches_a_float64_copy() -> None:
    torch.manual_seed(7)
    model = calendar().eval()
    background = [torch.randn(4, T, 2), torch.randint(0, 7, (4, T))]
    X = [torch.randn(3, T, 2), torch.randint(0, 7, (3, T))]
    values = _explain(model, background, X)
    assert np.abs(values[1]).max() > 0
    assert_additive(values, model, X, background, torch.float32)
    copy = calendar().double().eval()
    copy.load_state_dict(model.state_dict())
    as_floats = _explain(copy, [b.double() for b in background], [x.double() for x in X])
    _close(values[0], as_floats[0], rtol=1e-4)
    _close(values[1], as_floats[1], rtol=1e-4)


def number_and_lengths() -> nn.Module:
    return Composite(
        lambda m, x, lengths: m.out(m.gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))[1][-1])
        / lengths.unsqueeze(-1).float(),
        gru=nn.GRU(2, 3, batch_first=True), out=nn.Linear(3, 1),
    )  # fmt: skip


def test_an_input_used_as_a_number_and_as_lengths_or_tokens_is_refused() -> None:
    with pytest.raises(rnnshap.InputError, match="used as a number"):
        rnnshap.DeepExplainer(number_and_lengths().eval(), [torch.randn(3, T, 2), torch.tensor([T, 2, 3])])

    both = lookup("module", lambda m, tokens: look_up(m, tokens) + tokens.double().mean(1, keepdim=True))
    with pytest.raises(rnnshap.InputError, match="both as token ids"):
        rnnshap.DeepExplainer(both.double().eval(), torch.randint(0, V, (3, T)))


# -- 4. metadata, integer casts, masks made from the ids ---------------------------------------------------
def inspecting(m: nn.Module, tokens: Tensor) -> Tensor:
    """Reads the ids' metadata and casts them between integer types before the embedding."""
    n, t = tokens.shape
    assert tokens.size(0) == n == len(tokens) and tokens.dim() == tokens.ndim == 2
    assert tokens.dtype == torch.int64 and tokens.device.type == "cpu"
    positions = m.pos(torch.arange(tokens.size(1), device=tokens.device))
    e = m.emb(tokens.int().long()) + positions
    return m.out(m.gru(e.reshape(n, t, D))[0][:, -1])


def not_inspecting(m: nn.Module, tokens: Tensor) -> Tensor:
    e = m.emb(tokens) + m.pos.weight
    return m.out(m.gru(e)[0][:, -1])


def test_reading_metadata_and_integer_casts_are_not_uses() -> None:
    torch.manual_seed(8)
    model = lookup("module", inspecting, positions=True).double().eval()
    plain = lookup("module", not_inspecting, positions=True).double().eval()
    plain.load_state_dict(model.state_dict())
    background, X = torch.randint(0, V, (4, T)), torch.randint(0, V, (3, T))
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.token_inputs == [0]
    values = explainer.shap_values(X)
    _close(values, _explain(plain, background, X))
    assert_additive(values, model, X, background, torch.float64)


def masked_body(m: nn.Module, ids: Tensor, keep: Tensor, lengths: Tensor) -> Tensor:
    e = m.emb(ids)
    if m.packed:
        return m.out(m.gru(pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False))[1][-1])
    states = m.gru(e)[0]
    scores = m.score(states).squeeze(-1).masked_fill(~keep, -1e9)
    return m.out((torch.softmax(scores, 1).unsqueeze(-1) * states).sum(1))


def masks_from_the_ids(m: nn.Module, tokens: Tensor) -> Tensor:
    keep = tokens != 0
    return masked_body(m, torch.where(tokens >= V, BOS, tokens), keep, keep.sum(1))


def masks_given(m: nn.Module, tokens: Tensor, keep: Tensor, lengths: Tensor) -> Tensor:
    return masked_body(m, m.remap[tokens], keep, lengths)


def self_masked(packed: bool, given: bool = False) -> nn.Module:
    """Unknown ids and padding handled from the ids themselves: ``where(ids >= V, UNK, ids)`` before
    the embedding, a padding mask ``ids != 0`` on the attention scores, and lengths
    ``(ids != 0).sum(1)`` for packing. The reference (``given``) maps unknown ids with an integer
    table (a buffer) and takes the mask and the lengths as context inputs."""
    remap = torch.arange(V + 3)
    remap[V:] = BOS
    return Composite(masks_given if given else masks_from_the_ids, packed=packed, emb=nn.Embedding(V, D),
                     gru=nn.GRU(D, 4, batch_first=True), score=nn.Linear(4, 1), out=nn.Linear(4, 2),
                     remap=nn.Buffer(remap))  # fmt: skip


def _right_padded(n: int) -> Tensor:
    tokens = torch.randint(1, V + 3, (n, T))  # ids >= V are unknown words
    for i in range(n):
        tokens[i, T - 1 - i % 3 :] = 0
    return tokens


@pytest.mark.parametrize("packed", [False, True])
def test_masks_made_from_the_ids_are_the_explained_samples(packed: bool) -> None:
    torch.manual_seed(9)
    model = self_masked(packed).double().eval()
    given = self_masked(packed, given=True).double().eval()
    given.load_state_dict(model.state_dict())
    background, X = _right_padded(4), _right_padded(3)

    def context(t: Tensor) -> list[Tensor]:
        return [t, t != 0, (t != 0).sum(1)]

    values = _explain(model, background, X)
    expected = _explain(given, context(background), context(X))
    _close(values, expected[0])
    assert all(np.abs(v).max() == 0 for v in expected[1:])
    assert np.abs(values[(X == 0).numpy()]).max() == 0.0  # padding gets exactly 0
    # adds up to f(x) minus the mean over the background of the model run with the sample's mask and lengths
    base = np.mean([model_outputs(given, [background[j : j + 1].expand_as(X), *context(X)[1:]]) for j in range(4)], axis=0)
    np.testing.assert_allclose(values.sum(1), model_outputs(model, X) - base, rtol=0, atol=1e-9)


def padded_by_input(m: nn.Module, tokens: Tensor, present: Tensor) -> Tensor:
    """Padding given as a second integer input (0/1), applied to the ids before the embedding; or
    (reference) given as a boolean input."""
    pad = present == 0 if present.dtype != torch.bool else ~present
    return look_up(m, tokens.masked_fill(pad, 0))


def test_an_integer_mask_input_applied_to_the_ids_is_context() -> None:
    torch.manual_seed(10)
    model = lookup("module", padded_by_input).double().eval()
    background = [torch.randint(0, V, (4, T)), torch.ones(4, T, dtype=torch.int64)]
    X = [torch.randint(0, V, (3, T)), (torch.arange(T) < torch.tensor([[6], [4], [2]])).long()]
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.token_inputs == [0]
    values = explainer.shap_values(X)
    as_bool = _explain(model, [background[0], background[1].bool()], [X[0], X[1].bool()])
    _close(values[0], as_bool[0])
    assert np.abs(values[1]).max() == 0 and np.abs(values[0][X[1].numpy() == 0]).max() == 0
    base = np.mean([model_outputs(model, [background[0][j : j + 1].expand_as(X[0]), X[1]]) for j in range(4)], axis=0)
    np.testing.assert_allclose(values[0].sum(1), model_outputs(model, X) - base, rtol=0, atol=1e-10)


def masked_mean(m: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """The mean of x over the steps an integer 0/1 mask input keeps, the mask made boolean as ``m.how`` says."""
    keep = {
        "!= 0": lambda: mask != 0,
        "bool()": mask.bool,
        "to(bool)": lambda: mask.to(torch.bool),
        "type(bool)": lambda: mask.type(torch.bool),
    }[m.how]()
    w = keep[..., None].to(x.dtype)
    return m.head((x * w).sum(1) / w.sum(1))


@pytest.mark.parametrize("how", ["!= 0", "bool()", "to(bool)", "type(bool)"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_an_integer_mask_made_boolean_by_a_cast_is_context(how: str, dtype: torch.dtype) -> None:
    """``mask.bool()`` is ``mask != 0``: a comparison, so the mask is context (found by the fuzzer:
    it was attributed as a number, φ up to 0.11, the references run with their own masks)."""
    torch.manual_seed(0)
    model = Composite(masked_mean, how=how, head=nn.Linear(2, 1)).double().eval()
    background = [torch.randn(2, 4, 2, dtype=F64), torch.ones(2, 4, dtype=dtype)]
    X = [torch.randn(2, 4, 2, dtype=F64), torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=dtype)]
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert np.abs(values[1]).max() == 0 and np.abs(values[0][X[1].numpy() == 0]).max() == 0
    base = np.mean([model_outputs(model, [background[0][j : j + 1].expand_as(X[0]), X[1]]) for j in range(2)], axis=0)
    np.testing.assert_allclose(values[0].sum((1, 2)), model_outputs(model, X) - base, rtol=0, atol=1e-12)


def attend(m: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    h = m.emb(ids)
    return m.head(m.mha(h, h, h, key_padding_mask=~mask.bool(), need_weights=False)[0][:, -1])


def tokens_attention() -> nn.Module:
    return Composite(attend, emb=nn.Embedding(5, 4), mha=nn.MultiheadAttention(4, 1, batch_first=True), head=nn.Linear(4, 1))


def test_a_key_padding_mask_cast_from_an_integer_input_is_context() -> None:
    """``key_padding_mask=~mask.bool()`` (uint8 mask): was refused as 'does not depend on the inputs'."""
    torch.manual_seed(0)
    model = tokens_attention().double().eval()
    background = [torch.randint(0, 5, (3, 4)), torch.ones(3, 4, dtype=torch.uint8)]
    # the last step, the query, is kept
    X = [torch.randint(0, 5, (2, 4)), torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.uint8)]
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert np.abs(values[1]).max() == 0 and np.abs(values[0][X[1].numpy() == 0]).max() == 0
    base = np.mean([model_outputs(model, [background[0][j : j + 1].expand_as(X[0]), X[1]]) for j in range(3)], axis=0)
    np.testing.assert_allclose(values[0].sum(1), model_outputs(model, X) - base, rtol=0, atol=1e-12)


# -- integer operations that cannot be followed ------------------------------------------------------------
@pytest.mark.parametrize(
    ("prepare", "name"),
    [
        (lambda t: torch.sort(t, 1).values, "torch.sort"),
        (lambda t: (t + t.roll(1, 1)) % V, "add"),
    ],
)
def test_integer_operations_that_lose_the_positions_are_refused_by_name(prepare: Callable[[Tensor], Tensor], name: str) -> None:
    prepared = lookup("module", lambda m, tokens: look_up(m, prepare(tokens)))
    with pytest.raises(rnnshap.InputError, match=name):
        rnnshap.DeepExplainer(prepared.eval(), torch.randint(0, V, (3, T)))


def _masked_steps(m: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    return m.out(m.gru(m.emb(ids) * mask.unsqueeze(-1))[0][:, -1])


def test_an_integer_mask_used_as_a_number_is_said_and_as_bool_it_is_context() -> None:
    """An int64 0/1 mask multiplied into the activations (Mamba's attention_mask) is a number to rnnshap, which says
    so and how to make it context; given as torch.bool it is context, and a masked step's token gets exactly 0."""
    torch.manual_seed(0)
    model = Composite(_masked_steps, emb=nn.Embedding(V, D), gru=nn.GRU(D, 4, batch_first=True), out=nn.Linear(4, 2)).eval()
    ids_b, ids_x = torch.randint(0, V, (4, T)), torch.randint(0, V, (2, T))
    mask_b, mask_x = torch.ones(4, T, dtype=torch.long), torch.ones(2, T, dtype=torch.long)
    mask_x[:, :2] = 0
    with pytest.warns(UserWarning, match="Input 1 is an integer tensor of 0s and 1s"):
        rnnshap.DeepExplainer(model, [ids_b, mask_b])
    explainer = rnnshap.DeepExplainer(model, [ids_b, mask_b.bool()])
    values = explainer.shap_values([ids_x, mask_x.bool()])  # (its additivity checked against each sample's own base)
    assert np.abs(values[0][:, :2]).max() == 0.0 and np.abs(values[1]).max() == 0.0
    assert np.abs(values[0][:, 2:]).max() > 0.0
