"""
A language model's next words: which words of the prompt the Mamba read
=======================================================================

What this shows: ``rnnshap.text.explain_text`` explains a causal language model of transformers (here a Mamba, a
state-space model that reads the text as a recurrence) over the tokens of a prompt: each token's part of the
log-probability of a continuation. The model is trained here, for a few seconds, on the Zen of Python, which every
Python ships (``import this``), with a word-level tokenizer made from its words: no download. DeepSHAP's values add
up to the log-probability's move from the reference (every token the pad token) exactly, and the tokens after a
scored word get exactly 0; the Shapley mode gives the exact Shapley values of the same score beside them.
"""

import codecs
import contextlib
import io

import matplotlib.pyplot as plt
import numpy as np
import shap
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from rnnshap.text import explain_text

# %%
# The text and its tokenizer
# --------------------------
# The Zen's nineteen aphorisms, one a line, in lower case, with "." and "," words of their own.
with contextlib.redirect_stdout(io.StringIO()):  # (importing it prints it)
    import this
zen = codecs.decode(this.s, "rot13").lower().splitlines()[2:]
lines = [line.replace(".", " .").replace(",", " ,").replace("!", " !").replace("--", " ") for line in zen if line]
words = sorted({w for line in lines for w in line.split()})
vocabulary = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
word_level = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
word_level.pre_tokenizer, word_level.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece()
tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
)
print(len(lines), "lines,", len(vocabulary), "tokens;", lines[0])

# %%
# A tiny Mamba, trained on it
# ---------------------------
# Two layers of width 32 from transformers' own config class (random initial weights from a fixed seed), trained
# to predict each next word of a line, the lines padded to one length (the padding's positions not scored).
ids = [tokenizer(line, add_special_tokens=False)["input_ids"] + [vocabulary["[EOS]"]] for line in lines]
length = max(map(len, ids))
batch = torch.tensor([row + [vocabulary["[PAD]"]] * (length - len(row)) for row in ids])
labels = batch.masked_fill(batch == vocabulary["[PAD]"], -100)

torch.manual_seed(0)
config = transformers.MambaConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=2, state_size=8)
model = transformers.MambaForCausalLM(config)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(150):
    optimizer.zero_grad()
    loss = model(input_ids=batch, labels=labels).loss
    loss.backward()
    optimizer.step()
model.eval()
print(f"training loss {loss.item():.3f} (a word among {len(vocabulary)}: {np.log(len(vocabulary)):.2f} at random)")

# %%
# Explain the continuation of a line
# ----------------------------------
# ``explain_text`` scores each word of the continuation given everything before it: the players are the prompt's
# words and the continuation's before the last, each in turn replaced by the pad token.
prompt, continuation = "errors should never pass", " silently ."
ex = explain_text(model, tokenizer, prompt, continuation)
print(ex.output_names, ex.values.shape)
print({word: round(float(v), 3) for word, v in zip(ex.data, ex.values[:, 0], strict=True)})

# the values add up to the log-probabilities' move from the padded prompt, from the model's own forward
prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
scored = tokenizer(continuation, add_special_tokens=False)["input_ids"]
row = prompt_ids + scored[:-1]


def log_probabilities(tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits[0].double()
    first = len(prompt_ids) - 1
    return np.array([float(torch.log_softmax(logits[first + j], -1)[t]) for j, t in enumerate(scored)])


moved = log_probabilities(row) - log_probabilities([vocabulary["[PAD]"]] * len(row))
print("sum of the values:", ex.values.sum(0).round(6), " the model's move:", moved.round(6))

# %%
# The words of the prompt, coloured by their part of each scored word's log-probability (``shap.plots.text``;
# the word "silently" after the prompt gets exactly 0 for itself: it is read after its own score).


class HTML:
    """Shown as HTML on this page (and in a notebook)."""

    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html


HTML(shap.plots.text(ex[:, 0], display=False))

# %%
# DeepSHAP and the Shapley values of every coalition
# --------------------------------------------------
# The next word's logit after a shorter prompt, by DeepSHAP and by the Shapley mode with a budget that covers all
# 2^4 coalitions of its four words (exact Shapley values of the model's own forward, its words replaced by the pad
# token). They are two attributions of one score, and need not agree word by word: DeepSHAP follows the model's
# computation from the padded prompt to this one, the Shapley values average each word's effect over every set of
# the others. Both add up to the same move of the logit.
short = "beautiful is better than"
deep = explain_text(model, tokenizer, short, target="ugly")
exact = explain_text(model, tokenizer, short, target="ugly", method="shapley", budget=10**4)
print(f"DeepSHAP sums to {deep.values.sum():.5f}, the Shapley values to {exact.values.sum():.5f}")
positions = np.arange(len(deep.data))
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(positions - 0.2, deep.values, 0.4, label="DeepSHAP")
ax.bar(positions + 0.2, exact.values, 0.4, label="Shapley (every coalition)")
ax.set_xticks(positions, [w.strip() for w in deep.data])
ax.set_ylabel('part of the logit of "ugly"')
ax.axhline(0, color="black", linewidth=0.5)
ax.legend()
fig.tight_layout()
plt.show()
