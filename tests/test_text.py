"""rnnshap.text: a causal language model's scores explained over its tokens. Tiny language models of transformers
(GPT-2, Llama and the recurrent and state-space families of tests/zoo/test_language_models.py, built from their config
classes) and a word-level tokenizer, all built here (no download): DeepSHAP adds up to the scores the model's own
forward gives, later tokens get exactly 0, and the Shapley mode equals Shapley values enumerated over every coalition of
tokens through the model's own forward; shap.plots.text draws the result."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rnnshap.errors import InputError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
shap = pytest.importorskip("shap")

from rnnshap.text import explain_text  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[EOS]", *"the a cat dog sat ran on under mat rug and slept".split()]


#: the language models the door is tried on: GPT-2 first (the module's own), then the families of the zoo's test
TEXT_FAMILIES = ["GPT2", "Llama", "Mamba", "Mamba2", "RecurrentGemma", "Rwkv", "Jamba", "Bamba", "Zamba2", "Lfm2", "xLSTM",
                 "Qwen3Next", "Mixtral"]


@pytest.fixture(scope="module", params=TEXT_FAMILIES)
def lm(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, object]:
    vocabulary = {w: i for i, w in enumerate(WORDS)}
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="[UNK]"))
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    word_level.decoder = tokenizers.decoders.WordPiece()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )
    from .zoo.test_language_models import FAMILIES, MIXTURES, _config

    model_class, settings = {**FAMILIES, **MIXTURES}[request.param]
    config = _config(request.param, **{**settings, "vocab_size": len(WORDS)})
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    if request.param in MIXTURES and not hasattr(model, "set_experts_implementation"):
        pytest.skip(f"transformers {transformers.__version__}'s experts loop over the experts hit, refused by name")
    return model, tokenizer


def _log_probabilities(model: torch.nn.Module, ids: list[int], scored: list[int], first: int) -> np.ndarray:
    """log p(scored[j] | ids[: first + j + 1]) from the model's own forward, in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return np.array([float(torch.log_softmax(logits[first + j], -1)[t]) for j, t in enumerate(scored)])


def test_a_continuation_adds_up_to_its_log_probabilities_and_later_tokens_get_exactly_zero(lm) -> None:
    model, tokenizer = lm
    ex = explain_text(model, tokenizer, "the cat sat on the", " mat and")
    prompt = tokenizer("the cat sat on the", add_special_tokens=False)["input_ids"]
    scored = tokenizer(" mat and", add_special_tokens=False)["input_ids"]
    ids = prompt + scored[:-1]
    pad = [tokenizer.pad_token_id] * len(ids)
    assert ex.values.shape == (len(ids), 2) and list(ex.data) == ["the", " cat", " sat", " on", " the", " mat"]
    moved = _log_probabilities(model, ids, scored, len(prompt) - 1) - _log_probabilities(model, pad, scored, len(prompt) - 1)
    bound = 64 * np.finfo(np.float32).eps * max(1.0, np.abs(moved).max())
    np.testing.assert_allclose(ex.values.sum(0), moved, rtol=0, atol=bound)
    # "mat" is read after "mat"'s own log-probability: exactly 0, or where the model's own log-probability moves with it
    # (transformers 4's Zamba2: its chunked scan, by 1e-8 of the logits' scale, in float64 too) no more than it moves
    first, given = len(prompt) - 1, _log_probabilities(model, ids, scored, len(prompt) - 1)[0]
    read = max(abs(_log_probabilities(model, [*ids[:-1], word], scored, first)[0] - given) for word in range(len(WORDS)))
    later = np.abs(ex.values[len(prompt) :, 0]).max()
    assert later <= read, (later, read)  # (0 where the model does not read it)
    html = shap.plots.text(ex[:, 0], display=False)
    assert all(word in html for word in ("cat", "sat"))
    assert ex.output_names == [" mat", " and"]  # (each piece with the space before it: the text joins back)


def test_the_shapley_mode_equals_shapley_values_over_every_coalition_of_tokens(lm) -> None:
    model, tokenizer = lm
    prompt = "a dog ran under"
    ex = explain_text(model, tokenizer, prompt, target="the", method="shapley", budget=10**4)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer("the", add_special_tokens=False)["input_ids"][0]
    n, pad = len(ids), tokenizer.pad_token_id

    def value(coalition: tuple[int, ...]) -> float:
        row = [t if i in coalition else pad for i, t in enumerate(ids)]
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([row])).logits[0, -1, target].double())

    want = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for s in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                want[i] += weight * (value((*s, i)) - value(s))
    np.testing.assert_allclose(ex.values, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_a_reference_the_tokenizer_lacks_is_refused_with_advice(lm) -> None:
    model, tokenizer = lm
    with pytest.raises(InputError, match="no mask token.*reference=0"):
        explain_text(model, tokenizer, "the cat", "sat", reference="mask")
