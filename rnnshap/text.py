"""Token attributions for a causal language model: its next-token logit, or the log-probability of each token of a
continuation, over the tokens before it.

>>> from rnnshap.text import explain_text
>>> ex = explain_text(model, tokenizer, "The cat sat on the", " mat")   # doctest: +SKIP
>>> shap.plots.text(ex)                                                 # doctest: +SKIP

The players are token positions: each token of the prompt, and each token of the continuation before the one
scored. The reference replaces a token by a reference token (the tokenizer's pad token by default: the model reads
"nothing said here"), so each value is a token's part of the score's move from the reference text's score to the
prompt's. DeepSHAP (the default) adds up to that move exactly and gives every token after the scored position exactly
0 (a causal model does not read it); ``method="shapley"`` gives Shapley values of the same game, exact where the
``budget`` covers every coalition, estimates otherwise (a warning says so; docs/shapley.md). Any ``*ForCausalLM``
of transformers is taken (any module called as ``model(input_ids=ids, use_cache=False)`` returning ``.logits``); the
model runs without its cache, or with its own default where it cannot run without (RecurrentGemma of transformers
4.x). The prompt and the continuation are tokenized apart, without special tokens: the ids
scored are the continuation's own tokens.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from .errors import InputError

Tensor = torch.Tensor


class TokenScores(torch.nn.Module):
    """The scores a :func:`explain_text` explains, as a function of the token ids ``(N, L)``: at each scored position
    ``p`` the log-probability of the token ``targets[j]`` (``log_probabilities``), or its logit."""

    def __init__(
        self,
        model: torch.nn.Module,
        positions: Sequence[int],
        targets: Sequence[int],
        log_probabilities: bool,
        call: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.log_probabilities = model, log_probabilities
        self.positions, self.targets = list(positions), list(targets)
        #: the keyword arguments of the model's call beside the ids (``use_cache=False`` by default: :func:`_call`)
        self.call = {"use_cache": False} if call is None else call

    def forward(self, ids: Tensor) -> Tensor:
        logits = self.model(input_ids=ids, **self.call).logits[:, self.positions]  # (N, K, vocabulary)
        if self.log_probabilities:
            logits = torch.log_softmax(logits, dim=-1)
        index = torch.tensor(self.targets, device=logits.device).expand(logits.shape[0], -1).unsqueeze(-1)
        return logits.gather(-1, index).squeeze(-1)


def _call(model: torch.nn.Module, ids: Tensor) -> tuple[dict[str, Any], Tensor]:
    """How the model is called beside the ids: without its cache (``use_cache=False``), or with its own default where it
    cannot run without (RecurrentGemma of transformers 4.x sets up its recurrent state only with the cache); and its
    logits on ``ids`` so called."""
    with torch.no_grad():
        try:
            return {"use_cache": False}, model(input_ids=ids, use_cache=False).logits
        except Exception as error:  # noqa: BLE001 (tried with the model's own default; its failure, if any, is the first)
            try:
                return {}, model(input_ids=ids).logits
            except Exception:  # noqa: BLE001
                raise error from None


def _token_id(tokenizer: Any, reference: str | int) -> int:
    """The reference token: an id, or the name of one of the tokenizer's special tokens ("pad", "eos", "bos",
    "unk", "mask")."""
    if isinstance(reference, (int, np.integer)):
        return int(reference)
    token = getattr(tokenizer, f"{reference}_token_id", None)
    if token is None and reference == "pad":  # (GPT-2's and Llama's tokenizers have none: their end of text instead)
        token = getattr(tokenizer, "eos_token_id", None)
    if token is None:
        raise InputError(
            f"reference={reference!r}: the tokenizer has no {reference} token. Give a token id (reference=0), or the "
            "name of a special token it has (pad, eos, bos, unk, mask)."
        )
    return int(token)


def _tokens(tokenizer: Any, text: str) -> tuple[list[int], list[str]]:
    """The ids of ``text`` and each token's piece of it, the whitespace before it included (so that the pieces joined
    give the text back, as ``shap.plots.text`` joins them); a tokenizer without offsets: each token decoded."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids, [tokenizer.decode([t]) for t in ids]
    ids, pieces, start = list(encoded["input_ids"]), [], 0
    for _, end in offsets:
        pieces.append(text[start:end])
        start = max(start, end)
    return ids, pieces


def explain_text(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    continuation: str | None = None,
    *,
    target: str | int | None = None,
    reference: str | int | Sequence[Sequence[int]] = "pad",
    method: str = "deepshap",
    budget: int | None = None,
) -> Any:
    """A ``shap.Explanation`` of a causal language model's score over the tokens of ``prompt`` (and of
    ``continuation`` before each scored token), which ``shap.plots.text`` and ``shap.plots.bar`` draw.

    Args:
        model: a ``*ForCausalLM`` of transformers (any module called as ``model(input_ids=ids, use_cache=False)``
            with ``.logits``), in eval mode.
        tokenizer: its tokenizer (called on text, without special tokens added).
        prompt: the text before the scored tokens.
        continuation: with a continuation, each of its tokens' log-probability given everything before it is an
            output (named by the token); players are the prompt's tokens and the continuation's before the last.
            Without one, the next token's logit after the prompt (``target``: a token's text or id; default the
            model's most likely next token).
        reference: the token a player takes when it is absent: an id, or a special token's name ("pad", the
            default, the end-of-text token where the tokenizer has no pad token; else "eos", "bos", "unk", "mask");
            or reference rows of token ids, as many as the explained tokens each (several references: the mean over
            them, as DeepSHAP's background).
        method: "deepshap" (exact decomposition, additivity at float precision) or "shapley" (the Shapley mode, exact
            where ``budget`` covers every coalition).
        budget: the Shapley mode's rows per sample (see :meth:`rnnshap.DeepExplainer.shapley_values`).

    Returns:
        ``shap.Explanation`` with ``values`` (tokens,) for one output, (tokens, outputs) for a continuation of two
        tokens or more;
        ``data`` the tokens' text; ``base_values`` the reference's scores.
    """
    try:
        import shap
    except ImportError as error:
        raise ImportError("explain_text returns a shap.Explanation and needs shap: pip install 'rnnshap[shap]'") from error

    from .explainer import DeepExplainer

    if method not in ("deepshap", "shapley"):
        raise InputError(f"method={method!r}: 'deepshap' or 'shapley'")
    prompt_ids, prompt_pieces = _tokens(tokenizer, prompt)
    cont_ids, cont_pieces = _tokens(tokenizer, continuation) if continuation else ([], [])
    if not prompt_ids or (continuation is not None and not cont_ids):
        raise InputError("explain_text needs a prompt and a continuation of one token or more")
    if cont_ids and target is not None:
        raise InputError("target= names the next token without a continuation; with one, its tokens are the targets")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids = prompt_ids + cont_ids[:-1]  # (the players; the last continuation token is scored, never read)
    call, logits = _call(model, torch.tensor([ids], device=device))
    if cont_ids:
        positions, targets = list(range(len(prompt_ids) - 1, len(ids))), cont_ids
        names = cont_pieces
    else:
        last = logits[0, -1]
        if target is None:
            chosen = int(last.argmax())
        elif isinstance(target, str):
            encoded = tokenizer(target, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise InputError(f"target={target!r} is {len(encoded)} tokens: give one token, or a continuation")
            chosen = int(encoded[0])
        else:
            chosen = int(target)
        positions, targets, names = [len(ids) - 1], [chosen], [tokenizer.decode([chosen])]
    scores = TokenScores(model, positions, targets, log_probabilities=bool(cont_ids), call=call)
    if isinstance(reference, (str, int, np.integer)):
        background = torch.full((1, len(ids)), _token_id(tokenizer, reference), dtype=torch.long, device=device)
    else:
        background = torch.as_tensor(np.asarray(reference), dtype=torch.long, device=device)
        if background.ndim != 2 or background.shape[1] != len(ids):
            raise InputError(f"reference rows of token ids must be (references, {len(ids)}); got {tuple(background.shape)}")
    X = torch.tensor([ids], device=device)
    explainer = DeepExplainer(scores, background)
    tokens = (prompt_pieces + cont_pieces)[: len(ids)]
    base = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)
    if method == "deepshap":
        values = np.asarray(explainer.shap_values(X))[0]  # (tokens, outputs)
    else:
        estimate = explainer.shapley_values(X, "steps", budget, random_state=0)
        if not np.all(estimate.exact):
            warnings.warn(
                f"explain_text: the budget does not cover every coalition of {len(ids)} tokens: the values are estimates "
                f"(largest standard error {float(np.max(estimate.stderr)):.3g}); a larger budget= makes them exact",
                stacklevel=2,
            )
        values = np.asarray(estimate.values)[0].reshape(len(ids), -1)
    values = values.reshape(len(ids), len(targets))
    if len(targets) == 1:
        return shap.Explanation(values[:, 0], base_values=float(base[0]), data=np.array(tokens, dtype=object),
                                feature_names=tokens, output_names=names)  # fmt: skip
    return shap.Explanation(values, base_values=base, data=np.array(tokens, dtype=object), feature_names=tokens,
                            output_names=names)  # fmt: skip


__all__ = ["TokenScores", "explain_text"]
