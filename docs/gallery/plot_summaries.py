"""
Summaries over a whole data set
===============================

What this shows: ``explainer.summarize`` streams a data set through the explainer batch by batch and
keeps a mergeable summary (mean absolute φ, mean φ, a uniform sample of per-sample values) instead of every
attribution: global importance of the digits LSTM over 1,000 digits, drawn from the summary.
"""

import torch

import rnnshap
from rnnshap import plots
from rnnshap.demo import RowReader, load_digits

torch.manual_seed(0)
images, labels = load_digits()
x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
model = RowReader("lstm")
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(15):
    for batch in torch.randperm(797).split(128):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x_all[batch]), y_all[batch]).backward()
        optimizer.step()
model.eval()
explainer = rnnshap.DeepExplainer(model, x_all[:20])


def batches():  # any iterable of batches: a generator, a DataLoader of inputs, ...
    for start in range(797, 1797, 250):
        yield x_all[start : start + 250]


summary = explainer.summarize(batches(), outputs=[0], sample_size=200, seed=0)
print(summary)
print("mean absolute φ per row and pixel for class 0:", summary.mean_abs.shape)

# %%
# Global importance for class 0, from the summary
# -----------------------------------------------
importance = plots.global_importance(summary, output=0)
