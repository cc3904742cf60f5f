"""
A token model: which words moved the prediction
===============================================

What this shows: integer token ids that feed an embedding are attributed per token, at the
embedding. A GRU reads short reviews made of a small vocabulary and learns that "not" flips the word
after it; ``plots.token_html`` colours each token of a review by its attribution.
"""

import numpy as np
import torch
from torch import nn

import rnnshap
from rnnshap import plots

vocabulary = ["<pad>", "the", "film", "was", "good", "bad", "not", "very", "plot", "acting"]
positive, negative, negation = 4, 5, 6
rng = np.random.default_rng(0)


def review() -> tuple[list[int], int]:
    words = list(rng.choice([1, 2, 3, 7, 8, 9], size=7))
    position = int(rng.integers(1, 6))
    sentiment = int(rng.integers(2))
    words[position] = positive if sentiment else negative
    if rng.random() < 0.5:  # "not good" is negative, "not bad" positive
        words[position - 1] = negation
        sentiment = 1 - sentiment
    return words, sentiment


data = [review() for _ in range(3000)]
ids = torch.tensor([words for words, _ in data])
targets = torch.tensor([label for _, label in data])


class Reader(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(vocabulary), 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, ids):  # (N, T) token ids
        return self.head(self.gru(self.embed(ids))[0][:, -1])


torch.manual_seed(0)
model = Reader()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(15):
    for batch in torch.randperm(2500).split(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(ids[batch]), targets[batch]).backward()
        optimizer.step()
model.eval()
with torch.no_grad():
    print(f"held-out accuracy: {(model(ids[2500:]).argmax(1) == targets[2500:]).float().mean():.3f}")

# %%
# Explain against padding: every token is compared with "no word"
# ---------------------------------------------------------------
explainer = rnnshap.DeepExplainer(model, torch.zeros(1, 7, dtype=torch.long))
x = ids[2500:2504]
values = explainer.shap_values(x)  # (4, 7, 2): one value per token and class
print(explainer.token_inputs, values.shape)


class HTML:
    """Shown as HTML on this page (and in a notebook)."""

    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html


tokens = [[vocabulary[i] for i in row] for row in x.tolist()]
HTML("".join(plots.token_html(tokens[i], values, sample=i, output=1) for i in range(4)))
