"""Recurrent, state-space and transformer language models of transformers, built tiny from their config classes (no
weights download): DeepSHAP of next-token logits over the input token ids adds up to the model's own logits, and the
tokens after the explained position get exactly 0 (a causal model does not read them: a property additivity cannot
see). A model whose own backward fails (a state written in place after it was read) is refused by name, with advice
that, followed, gives exact values. A family missing from the installed transformers skips (Qwen3-Next needs 5.x: CI
runs this file against the newest release too, .ci/newest.sh)."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch

import rnnshap
from rnnshap.errors import ModelStateError, UnsupportedOperationError

from ..models.torch import Composite, Function

transformers = pytest.importorskip("transformers")

V, T, POSITION = 64, 8, 4


def _config(name: str, **settings: Any) -> Any:
    config = getattr(transformers, f"{name}Config", None)
    if config is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name}Config")
    return config(**settings)


#: each family: (its model class's name, its config's settings)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "GPT2": ("GPT2LMHeadModel", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=32)),
    "Llama": ("LlamaForCausalLM", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=64)),
    "Mamba": ("MambaForCausalLM", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=4, expand=2)),
    "Mamba2": ("Mamba2ForCausalLM", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=4, expand=2,
                                         num_heads=4, head_dim=16, n_groups=1, chunk_size=4)),
    "RecurrentGemma": ("RecurrentGemmaForCausalLM", dict(vocab_size=V, hidden_size=32, num_hidden_layers=3,
                                                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                                         lru_width=32, attention_window_size=8, head_dim=16)),
    "Rwkv": ("RwkvForCausalLM", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                     intermediate_size=64, context_length=32, use_cache=False)),
    # hybrids of state-space or convolution layers with attention, and xLSTM's mLSTM (its chunkwise and step forms)
    "Jamba": ("JambaForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, num_experts=1, num_experts_per_tok=1,
                                       attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                       expert_layer_offset=1, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2,
                                       mamba_dt_rank=4, use_mamba_kernels=False)),
    "Bamba": ("BambaForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, attn_layer_indices=[1],
                                       mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=4, mamba_d_conv=4,
                                       mamba_expand=2, mamba_chunk_size=4)),
    "Zamba2": ("Zamba2ForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         layers_block_type=["mamba", "hybrid"], num_attention_heads=2, num_key_value_heads=2,
                                         n_mamba_heads=4, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, chunk_size=4,
                                         adapter_rank=8, use_mamba_kernels=False)),
    "Lfm2": ("Lfm2ForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, layer_types=["conv", "full_attention"],
                                     conv_L_cache=3, block_auto_adjust_ff_dim=False)),
    "xLSTM": ("xLSTMForCausalLM", dict(vocab_size=V, hidden_size=32, embedding_dim=32, num_hidden_layers=2, num_heads=2,
                                       qk_dim_factor=0.5, v_dim_factor=1.0, chunk_size=2, mode="train",
                                       chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                                       step_kernel="native", use_cache=False)),
    # Gated DeltaNet's chunked form solves a triangular system (rules/triangular.py); its mixture of experts in the batched form
    "Qwen3Next": ("Qwen3NextForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                               linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=8,
                                               linear_value_head_dim=8, moe_intermediate_size=16,
                                               shared_expert_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                                               layer_types=["linear_attention", "full_attention"])),
}  # fmt: skip


def _language_model(family: str) -> torch.nn.Module:
    model_class, settings = FAMILIES[family]
    config = _config(family, **settings)
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config).eval()


def _next_token_logits(model: torch.nn.Module, **call: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits of the first three tokens of the vocabulary after the token at :data:`POSITION`."""
    return lambda ids: model(input_ids=ids, **call).logits[:, POSITION, :3]


def _held(model: torch.nn.Module) -> torch.nn.Module:
    """The next-token logits of :func:`_next_token_logits` from a module that holds ``model`` (as a user's head does)."""
    return Composite(lambda m, ids: m.lm(input_ids=ids).logits[:, POSITION, :3], lm=model)


@pytest.mark.parametrize("family", FAMILIES)
def test_next_token_logits_add_up_and_later_tokens_get_exactly_zero(family: str) -> None:
    head = _held(_language_model(family))
    g = torch.Generator().manual_seed(1)
    background, X = torch.randint(0, V, (3, T), generator=g), torch.randint(0, V, (2, T), generator=g)
    values = rnnshap.DeepExplainer(head, background).shap_values(X)  # (2, T, 3)
    with torch.no_grad():
        f_x, f_r = head(X).double().numpy(), head(background).double().numpy()
    scale = np.abs(np.concatenate([f_x, f_r])).max()
    bound = 64 * torch.finfo(torch.float32).eps * scale  # (float32 sums over a few dozen operations per logit)
    np.testing.assert_allclose(values.sum(1), f_x - f_r.mean(0), rtol=0, atol=bound)
    # a causal model does not read later tokens: exactly 0; where its logits move with them (a chunked scan: Zamba2's in
    # transformers 4 by 1e-8 of its scale, in float64 too, Qwen3-Next's in 5 by its float32 rounding), no more than that
    later, read = np.abs(values[:, POSITION + 1 :]).max(), _reads_later_tokens(head, X, background)
    assert later <= read, (family, later, read)
    assert np.abs(values[:, : POSITION + 1]).max() > 0


def _reads_later_tokens(head: torch.nn.Module, X: torch.Tensor, background: torch.Tensor) -> float:
    """How far the model's own logits move when each sample's tokens after :data:`POSITION` are each reference's: 0
    where the model does not read them."""
    with torch.no_grad():
        moved = 0.0
        for x in X:
            given = x.repeat(len(background), 1)  # (a batch of the same size: the same kernels)
            swapped = given.clone()
            swapped[:, POSITION + 1 :] = background[:, POSITION + 1 :]
            moved = max(moved, float((head(swapped) - head(given)).abs().max()))
    return moved


def test_a_state_written_in_place_after_it_was_read_is_refused_with_advice_that_works() -> None:
    """transformers' RWKV with its cache writes each layer's state into one tensor in place, after the step read it:
    torch's own backward fails on it in the intercepted pass, and rnnshap says why and what to do (run it without the
    cache); followed, the values add up. The captured pass takes it as it is."""
    if getattr(transformers, "RwkvConfig", None) is None:
        pytest.skip("no RWKV in this transformers")
    model = _language_model("Rwkv")
    background, X = torch.randint(0, V, (3, T)), torch.randint(0, V, (2, T))
    with pytest.raises(ModelStateError, match=r"writes in place into a tensor after .*use_cache=False"):
        rnnshap.DeepExplainer(Function(_next_token_logits(model, use_cache=True)), background).shap_values(X)
    values = rnnshap.DeepExplainer(Function(_next_token_logits(model, use_cache=False)), background).shap_values(X)
    assert np.all(values[:, POSITION + 1 :] == 0.0)
    # the captured pass writes into a copy that takes the state's place from the write on (the reads before it keep
    # theirs): exact with the cache, the values of the forward without it bit for bit
    cached = rnnshap.DeepExplainer(Function(_next_token_logits(model, use_cache=True)), background, compile="capture")
    np.testing.assert_array_equal(cached.shap_values(X), values)
    assert cached.pass_path.startswith("captured"), cached.pass_path


def test_a_plain_state_written_after_a_product_read_it_is_refused_by_name() -> None:
    """The same refusal for a model of torch alone: a product reads a view of a state, then the forward writes into
    that state."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        state = torch.ones(x.shape[0], 4, dtype=x.dtype)
        y = torch.tanh(x) * state[:, :]
        state[:, 0] = 2.0
        return y.sum(1, keepdim=True)

    with pytest.raises(ModelStateError, match="torch.autograd cannot differentiate this forward"):
        rnnshap.DeepExplainer(Function(forward), torch.randn(3, 4)).shap_values(torch.randn(2, 4))


@pytest.mark.slow
def test_mamba_at_130m_size_in_float32_gives_values_that_add_up_within_its_own_rounding() -> None:
    """Mamba-130m's configuration (24 layers of width 768, sequential scan), random weights, 128 tokens, float32: its own
    logit at token 100 moves by about 5e-4 of its scale with the batch the prompt runs in (1e-4 is float32's
    tolerance). The default check gives the values (within the tolerance, or within twice that spread with a warning
    that names it: tests/test_additivity.py), and the tokens after the explained one get exactly 0."""
    if getattr(transformers, "MambaConfig", None) is None:
        pytest.skip("no Mamba in this transformers")
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2,
                                      conv_kernel=4, use_mambapy=False)  # fmt: skip
    model = transformers.MambaForCausalLM(config).eval()
    length, position = 128, 100
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(torch.randint(0, config.vocab_size, (2, length), generator=g))
    head = Function(lambda e: model(inputs_embeds=e, use_cache=False).logits[:, position, :1])
    with torch.no_grad():
        spread = float((head(embeddings) - torch.cat([head(embeddings[:1]), head(embeddings[1:])])).abs().max())
    assert spread > 1e-4 * float(head(embeddings).abs().max())  # (the case this test is for: beyond float32's tolerance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rnnshap.AdditivityWarning)  # (where the sum misses within the spread)
        values = rnnshap.DeepExplainer(head, embeddings[:1]).shap_values(embeddings[1:])  # (1, length, 768, 1)
    assert np.all(values[:, position + 1 :] == 0.0) and np.abs(values[:, : position + 1]).max() > 0


#: mixture-of-experts families of transformers 5, whose experts run in one of several forms (``experts_implementation``)
MIXTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "Mixtral": ("MixtralForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                           num_experts_per_tok=2)),
    "Qwen2Moe": ("Qwen2MoeForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                                             shared_expert_intermediate_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1, num_experts=4,
                                             num_experts_per_tok=2)),
    "Olmoe": ("OlmoeForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2)),
    # routers that pick their experts by topk(sorted=False): taken in the ranks' order (rules/selection.py)
    "DeepseekV2": ("DeepseekV2ForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
                                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                                 n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                                                 first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=16,
                                                 qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)),
    "Glm4Moe": ("Glm4MoeForCausalLM", dict(vocab_size=V, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                                           first_k_dense_replace=0, n_group=1, topk_group=1)),
}  # fmt: skip


def _mixture(family: str) -> torch.nn.Module:
    """A mixture-of-experts family of :data:`MIXTURES`, built tiny; skipped where transformers has one form of experts."""
    model_class, settings = MIXTURES[family]
    config = _config(family, **settings)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    if not hasattr(model, "set_experts_implementation"):
        pytest.skip(f"transformers {transformers.__version__} has one form of experts")
    return model


@pytest.mark.parametrize("form", ["grouped_mm", "eager", "batched_mm"])
@pytest.mark.parametrize("family", MIXTURES)
def test_a_mixture_of_experts_in_each_form_of_its_experts_adds_up_and_later_tokens_get_exactly_zero(
    family: str, form: str
) -> None:
    """The router's top-k picks send each token to some experts (the input's and the reference's picks differ); the
    experts' forms compute the same function: sorted by expert with grouped products ("grouped_mm", transformers' default
    on the CPU), a loop over the experts hit ("eager"), or each token's experts' weights gathered ("batched_mm"). The
    values add up in each, the tokens after the explained one get exactly 0, every form gives the batched form's values,
    and the model's own form is as given afterwards."""
    model = _mixture(family)
    g = torch.Generator().manual_seed(1)
    background, X = torch.randint(0, V, (3, T), generator=g), torch.randint(0, V, (2, T), generator=g)
    head = _held(model)
    values = {}
    for each in (form, "batched_mm"):
        model.set_experts_implementation(each)
        values[each] = rnnshap.DeepExplainer(head, background).shap_values(X)
        assert set(model.get_experts_implementation().values()) == {each}  # (the model's own form, as given)
    with torch.no_grad():
        f_x, f_r = head(X).double().numpy(), head(background).double().numpy()
    scale = np.abs(np.concatenate([f_x, f_r])).max()
    bound = 64 * torch.finfo(torch.float32).eps * scale
    np.testing.assert_allclose(values[form].sum(1), f_x - f_r.mean(0), rtol=0, atol=bound)
    assert np.all(values[form][:, POSITION + 1 :] == 0.0)
    assert np.abs(values[form][:, : POSITION + 1]).max() > 0
    np.testing.assert_array_equal(values[form], values["batched_mm"])
    model.set_experts_implementation(form)
    captured = rnnshap.DeepExplainer(head, background, compile="capture")  # (the router's picks on the captured pass)
    ulps = 4 * torch.finfo(torch.float32).eps * np.abs(values[form]).max()  # (the graph's kernels may sum otherwise)
    np.testing.assert_allclose(captured.shap_values(X), values[form], rtol=0, atol=ulps)
    if family not in ("DeepseekV2", "Glm4Moe"):  # (their rotary embeddings' complex views, a group's picks scattered)
        assert captured.pass_path.startswith("captured"), captured.pass_path


def test_a_router_that_fills_the_groups_it_leaves_out_with_minus_infinity_adds_up_and_later_tokens_get_exactly_zero() -> None:
    """GLM-4.5's (and DeepSeek-V3's) router with groups of experts (``n_group > 1``) scatters the groups it picks into a
    mask and, in transformers 5, fills the others' scores with -inf before its top-k: where the groups differ between an
    input and its reference, the pick's change goes to the groups' step (the limit of finite fills:
    tests/rules/test_scattered_picks.py). The values add up, later tokens get exactly 0, and the captured pass gives
    the same values."""
    model_class, settings = MIXTURES["Glm4Moe"]
    config = _config("Glm4Moe", **{**settings, "n_routed_experts": 8, "n_group": 4, "topk_group": 2})
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    if not hasattr(model, "set_experts_implementation"):
        pytest.skip(f"transformers {transformers.__version__} has one form of experts")
    model.set_experts_implementation("batched_mm")
    g = torch.Generator().manual_seed(1)
    background, X = torch.randint(0, V, (3, T), generator=g), torch.randint(0, V, (2, T), generator=g)
    head = _held(model)
    values = rnnshap.DeepExplainer(head, background).shap_values(X)
    with torch.no_grad():
        f_x, f_r = head(X).double().numpy(), head(background).double().numpy()
    bound = 64 * torch.finfo(torch.float32).eps * np.abs(np.concatenate([f_x, f_r])).max()
    np.testing.assert_allclose(values.sum(1), f_x - f_r.mean(0), rtol=0, atol=bound)
    assert np.all(values[:, POSITION + 1 :] == 0.0) and np.abs(values[:, : POSITION + 1]).max() > 0
    captured = rnnshap.DeepExplainer(head, background, compile="capture")
    ulps = 4 * torch.finfo(torch.float32).eps * np.abs(values).max()
    np.testing.assert_allclose(captured.shap_values(X), values, rtol=0, atol=ulps)


def test_experts_hidden_in_a_closure_are_refused_with_advice_that_works() -> None:
    """A model the explainer cannot see into (a function closing over it) keeps its experts' grouped form: refused by
    name with the advice to give the model as a module, or to switch the form; followed, the values add up."""
    model = _mixture("Mixtral")
    model.set_experts_implementation("grouped_mm")
    background, X = torch.randint(0, V, (3, T)), torch.randint(0, V, (2, T))
    hidden = Function(_next_token_logits(model))
    with pytest.raises(UnsupportedOperationError, match=r'grouped_mm form(.|\n)*set_experts_implementation\("batched_mm"\)'):
        rnnshap.DeepExplainer(hidden, background).shap_values(X)
    given = rnnshap.DeepExplainer(_held(model), background).shap_values(X)
    model.set_experts_implementation("batched_mm")
    switched = rnnshap.DeepExplainer(hidden, background).shap_values(X)
    with torch.no_grad():
        f_x, f_r = hidden(X).double().numpy(), hidden(background).double().numpy()
    bound = 64 * torch.finfo(torch.float32).eps * np.abs(np.concatenate([f_x, f_r])).max()
    for values in (given, switched):
        np.testing.assert_allclose(values.sum(1), f_x - f_r.mean(0), rtol=0, atol=bound)
    np.testing.assert_array_equal(given, switched)


def test_experts_whose_form_changes_after_the_explainer_was_made_are_still_explained_in_the_batched_form() -> None:
    """The explainer keeps the experts' configs, not their form: a form set later (grouped_mm, eager) is switched at
    each pass, and put back after it."""
    model = _mixture("Mixtral")
    background, X = torch.randint(0, V, (3, T)), torch.randint(0, V, (2, T))
    model.set_experts_implementation("batched_mm")
    explainer = rnnshap.DeepExplainer(_held(model), background)
    batched = explainer.shap_values(X)
    for form in ("grouped_mm", "eager"):
        model.set_experts_implementation(form)
        np.testing.assert_array_equal(explainer.shap_values(X), batched)
        assert set(model.get_experts_implementation().values()) == {form}
