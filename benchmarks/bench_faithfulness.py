"""How far DeepSHAP and the Shapley estimators are from the exact Shapley values, at matched cost.

The game is the one DeepSHAP approximates: v(S) = mean over the background rows r of
f(x on the players in S, r elsewhere). Its exact Shapley values come from enumerating every
coalition against every background row, written here from the definition (not rnnshap's code):

    φ_i = Σ_{S ∌ i} |S|! (P − |S| − 1)! / P! · (v(S ∪ i) − v(S))

Models: the digit classifiers of rnnshap's demo (the bundled UCI digits, 8 rows of 8 pixels read as
8 steps; LSTM, GRU and bidirectional LSTM with hidden 32, trained 40 epochs), 50 background rows
from the training digits, 30 test digits, the predicted class's logit; players: the 8 steps, or
the 8 features (pixel columns). And a synthetic model whose Shapley values are known in closed
form: f(x) = Σ_t a_t s_t + Σ_t b_t s_t s_{t+1} + c s_0 s_3 s_5, with s_t = w · x_t.

Cost is counted in forward rows per explained sample: DeepSHAP's is 3 per (sample, reference)
pair (a forward of each side and a backward), 150 here. At budgets of 1, 2, 4, 8 and 16× that:

- **DeepSHAP**: ``rnnshap.DeepExplainer(...).shap_values`` summed to the players (cost 1×);
- **shapley_values**: ``DeepExplainer.shapley_values`` (DeepSHAP's per-pair values as control
  variate: its cost is part of the budget);
- **shrunk (pooled weight)**: its ``shrunk`` values, DeepSHAP moved towards the estimate by one
  empirical-Bayes weight per call (docs/shapley.md), with the median of its actual error over its
  ``shrunk_rmse`` (printed after the table); **shrunk (per-sample weight)**: the same blend with a
  James–Stein weight per sample, computed here for comparison;
- **ShapleyExplainer**: the forward-only door (f(x) − f(r) split evenly as control variate);
- **permutation**: plain permutation sampling, independent orders and references, written here;
- **shap Permutation**: ``shap.PermutationExplainer`` with a masker that averages the background
  (max_evals = budget / 50 coalitions; it needs at least 2P + 1);
- **Captum SVS**: ``captum.attr.ShapleyValueSampling`` with each background row as baseline in
  turn, ``n_samples`` permutations each where the budget holds at least one per row;
- **IG**: ``captum.attr.IntegratedGradients`` averaged over the background with ``n_steps`` = the
  budget's multiple (a forward and backward per step and pair).

Reported: the median over samples (and seeds) of the relative L2 distance ‖φ̂ − φ‖ / ‖φ‖, and,
for estimators with standard errors, the share of exact values inside φ̂ ± 1.96·SE. And the wall
time of ``shapley_values`` at 4× against ``shap_values`` on the same samples.

    python benchmarks/bench_faithfulness.py                 # everything, a few minutes on 2 cores
    python benchmarks/bench_faithfulness.py --quick         # LSTM steps and the synthetic task
    python benchmarks/bench_faithfulness.py --figure docs/images/shapley_error.png
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402
from rnnshap.demo import RowReader, load_digits  # noqa: E402

MULTIPLES = (1, 2, 4, 8, 16)
SAMPLES, BACKGROUND = 30, 50


# -- models --------------------------------------------------------------------------------------
def digits_model(layer: str, seed: int = 0, epochs: int = 40) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A digit classifier trained as the demo trains it, its background and test digits."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = load_digits()
    order = rng.permutation(len(images))
    test, train = order[:300], order[300:]
    x_train, y_train = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    model = RowReader(layer)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(len(train)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    model.eval()
    background = x_train[torch.from_numpy(rng.choice(len(train), BACKGROUND, replace=False))]
    return model, background, torch.from_numpy(images[test][:SAMPLES])


class Synthetic(nn.Module):
    """f(x) = Σ_t a_t s_t + Σ_t b_t s_t s_{t+1} + c s_0 s_3 s_5, s_t = w · x_t (T = 8 steps)."""

    def __init__(self, features: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(features, generator=g) / features**0.5, requires_grad=False)
        self.a = nn.Parameter(torch.randn(8, generator=g), requires_grad=False)
        self.b = nn.Parameter(torch.randn(7, generator=g), requires_grad=False)
        self.c = 1.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x @ self.w
        pairs = (self.b * s[:, :-1] * s[:, 1:]).sum(1)
        return ((self.a * s).sum(1) + pairs + self.c * s[:, 0] * s[:, 3] * s[:, 5])[:, None]

    def shapley(self, x: torch.Tensor, background: torch.Tensor) -> np.ndarray:
        """The closed form, per sample and step: linear terms a_t (s_t − E r_t); for a product of
        two, ½ (s_a − r_a)(s_b + r_b) to each side averaged over r; for a product of three, to a:
        (s_a − r_a)[r_b r_c / 3 + (s_b r_c + r_b s_c) / 6 + s_b s_c / 3] averaged over r."""
        with torch.no_grad():
            s, r = (x @ self.w).double().numpy(), (background @ self.w).double().numpy()
        a, b = self.a.double().numpy(), self.b.double().numpy()
        phi = a * (s - r.mean(0))
        for t in range(7):
            for i, j in ((t, t + 1), (t + 1, t)):
                phi[:, i] += b[t] * 0.5 * ((s[:, i, None] - r[None, :, i]) * (s[:, j, None] + r[None, :, j])).mean(1)
        for i, j, k in ((0, 3, 5), (3, 0, 5), (5, 0, 3)):
            sj, sk, rj, rk = s[:, j, None], s[:, k, None], r[None, :, j], r[None, :, k]
            phi[:, i] += self.c * (
                (s[:, i, None] - r[None, :, i]) * (rj * rk / 3 + (sj * rk + rj * sk) / 6 + sj * sk / 3)
            ).mean(1)
        return phi


# -- the exact values, from the definition ---------------------------------------------------------
def player_ids(kind: str, shape: tuple[int, int]) -> np.ndarray:
    T, F = shape
    return np.repeat(np.arange(T)[:, None], F, 1) if kind == "steps" else np.repeat(np.arange(F)[None], T, 0)


def exact_shapley(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, background: torch.Tensor, ids: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """(N, P): every coalition against every background row, the definition's weighted sum."""
    P = int(ids.max()) + 1
    coalitions = np.array(list(itertools.product([False, True], repeat=P)))
    index = {tuple(c): i for i, c in enumerate(coalitions)}
    take = torch.from_numpy(coalitions[:, ids])  # (2^P, T, F)
    values = np.zeros((len(x), P))
    for n in range(len(x)):
        with torch.no_grad():
            rows = torch.where(take[:, None], x[n][None, None], background[None])  # (2^P, B, T, F)
            v = f(rows.reshape(-1, *x.shape[1:]))[:, out[n]].double().reshape(len(coalitions), -1).mean(1).numpy()
        for i in range(P):
            for c in coalitions:
                if c[i]:
                    continue
                size = int(c.sum())
                with_i = c.copy()
                with_i[i] = True
                weight = math.factorial(size) * math.factorial(P - size - 1) / math.factorial(P)
                values[n, i] += weight * (v[index[tuple(with_i)]] - v[index[tuple(c)]])
    return values


# -- the estimators ----------------------------------------------------------------------------------
def permutation_sampling(
    f: Callable, x: torch.Tensor, background: torch.Tensor, ids: np.ndarray, out: np.ndarray, rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Plain permutation sampling: independent orders, each against a background row drawn at random."""
    rng = np.random.default_rng(seed)
    P = int(ids.max()) + 1
    walks = max(1, (rows - 1) // (P - 1))
    values, errors = np.zeros((len(x), P)), np.zeros((len(x), P))
    with torch.no_grad():
        f_background = f(background).double().numpy()
    for n in range(len(x)):
        orders = np.stack([rng.permutation(P) for _ in range(walks)])
        refs = rng.integers(0, len(background), walks)
        masks = np.zeros((walks, P + 1, P), dtype=bool)
        for t in range(1, P + 1):
            masks[:, t] = masks[:, t - 1]
            masks[np.arange(walks), t, orders[:, t - 1]] = True
        take = torch.from_numpy(masks[:, :, ids])  # (W, P+1, T, F)
        with torch.no_grad():
            rows_ = torch.where(take, x[n][None, None], background[refs][:, None])
            v = f(rows_.reshape(-1, *x.shape[1:]))[:, out[n]].double().reshape(walks, P + 1).numpy()
        v[:, 0] = f_background[refs, out[n]]
        marginal = np.zeros((walks, P))
        np.put_along_axis(marginal, orders, np.diff(v, axis=1), axis=1)
        values[n] = marginal.mean(0)
        errors[n] = marginal.std(0, ddof=1) / math.sqrt(walks) if walks > 1 else np.inf
    return values, errors


def shap_permutation(
    f: Callable, x: torch.Tensor, background: torch.Tensor, ids: np.ndarray, out: np.ndarray, rows: int
) -> np.ndarray | None:
    import shap

    P = int(ids.max()) + 1
    max_evals = rows // len(background)
    if max_evals < 2 * P + 1:
        return None
    flat_background = background.reshape(len(background), -1).numpy()
    ids_flat = ids.reshape(-1)

    class StepMasker:
        """Players → the background rows with the players' entries set to the sample's."""

        def shape(self, *args: Any) -> tuple[int, int]:
            return len(flat_background), P

        def mask_shapes(self, *args: Any) -> list[tuple[int]]:
            return [(P,)]

        def __call__(self, mask: np.ndarray, row: np.ndarray) -> np.ndarray:
            return (np.where(mask[ids_flat][None], row[None], flat_background),)

    values = np.zeros((len(x), P))
    for n in range(len(x)):

        def model(rows_: np.ndarray, n: int = n) -> np.ndarray:
            with torch.no_grad():
                return f(torch.from_numpy(rows_).reshape(-1, *x.shape[1:]).float())[:, out[n]].double().numpy()

        masker = StepMasker()
        explainer = shap.explainers.Permutation(model, masker)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = explainer(x[n].reshape(1, -1).numpy(), max_evals=max_evals, silent=True)
        values[n] = result.values[0]
    return values


def captum_svs(
    f: Callable, x: torch.Tensor, background: torch.Tensor, ids: np.ndarray, out: np.ndarray, rows: int, seed: int
) -> np.ndarray | None:
    from captum.attr import ShapleyValueSampling

    P = int(ids.max()) + 1
    per_reference = rows // (len(background) * (P + 1))
    if per_reference < 1:
        return None
    torch.manual_seed(seed)
    mask = torch.from_numpy(ids)[None]
    total = torch.zeros(len(x), *x.shape[1:], dtype=torch.float64)
    svs = ShapleyValueSampling(f)
    target = torch.from_numpy(out)
    for r in range(len(background)):
        attribution = svs.attribute(x, baselines=background[r : r + 1], target=target, feature_mask=mask, n_samples=per_reference)
        total += attribution.double()
    per_entry = (total / len(background)).numpy()
    return np.stack([per_entry[:, ids == p][:, 0] for p in range(P)], 1)  # Captum gives each entry its group's value


def captum_ig(
    f: Callable, x: torch.Tensor, background: torch.Tensor, ids: np.ndarray, out: np.ndarray, multiple: int
) -> np.ndarray:
    from captum.attr import IntegratedGradients

    B = len(background)
    inputs = x.repeat_interleave(B, 0)
    baselines = background.repeat(len(x), 1, 1)
    target = torch.from_numpy(out).repeat_interleave(B)
    attribution = IntegratedGradients(f).attribute(
        inputs, baselines=baselines, target=target, n_steps=max(2, multiple), internal_batch_size=4096
    )
    per_entry = attribution.double().reshape(len(x), B, *x.shape[1:]).mean(1).numpy()
    P = int(ids.max()) + 1
    return np.stack([per_entry[:, ids == p].sum(1) for p in range(P)], 1)


# -- the run -------------------------------------------------------------------------------------------
def relative(estimate: np.ndarray, exact: np.ndarray) -> np.ndarray:
    return np.linalg.norm(estimate - exact, axis=1) / np.linalg.norm(exact, axis=1)


def run_case(
    name: str, model: nn.Module, background: torch.Tensor, x: torch.Tensor, kind: str, seeds: int, peers: bool,
    closed_form: np.ndarray | None
) -> list[dict[str, Any]]:
    with torch.no_grad():
        outputs = model(x)
    out = outputs.argmax(1).numpy() if outputs.shape[1] > 1 else np.zeros(len(x), dtype=np.int64)
    ids = player_ids(kind, tuple(x.shape[1:]))
    exact = exact_shapley(model, x, background, ids, out)
    if closed_form is not None:
        print(f"  {name}: enumeration vs closed form, largest difference {np.abs(exact - closed_form).max():.2e}")
    rows_1x = 3 * len(background)
    records: list[dict[str, Any]] = []
    deep = rnnshap.DeepExplainer(model, background)
    forward = rnnshap.ShapleyExplainer(model, background)
    picked = np.arange(len(x))
    values = deep.shap_values(x, check_additivity=False)
    values = values[picked, ..., out] if values.ndim == 4 else values
    ds = np.stack([values[:, ids == p].sum(1) for p in range(int(ids.max()) + 1)], 1)
    records.append(
        {"case": name, "method": "DeepSHAP", "multiple": 1, "error": float(np.median(relative(ds, exact))), "coverage": None}
    )
    for multiple in MULTIPLES:
        rows = multiple * rows_1x
        for method, explainer in (("shapley_values", deep), ("ShapleyExplainer", forward)):
            errors, covered, shrunk, per_sample, rmse_ratio = [], [], [], [], []
            for seed in range(seeds):
                estimate = explainer.shapley_values(x, players=kind, budget=rows, random_state=seed, time_axis=1)
                v = estimate.values[picked, :, out] if estimate.values.ndim == 3 else estimate.values
                se = estimate.stderr[picked, :, out] if estimate.stderr.ndim == 3 else estimate.stderr
                assert (estimate.n_evals <= rows).all()
                errors.extend(relative(v, exact))
                covered.append(np.abs(v - exact) <= 1.96 * se)
                if estimate.shrunk is not None:
                    blend = estimate.shrunk[picked, :, out] if estimate.shrunk.ndim == 3 else estimate.shrunk
                    shrunk.extend(relative(blend, exact))
                    rmse = estimate.shrunk_rmse[picked, out] if estimate.shrunk_rmse.ndim == 2 else estimate.shrunk_rmse
                    rmse_ratio.extend(np.linalg.norm(blend - exact, axis=1) / np.maximum(rmse, 1e-300))
                    # another weight, for comparison: one per sample (James–Stein), not pooled over the call
                    d = estimate.deepshap[picked, :, out] if estimate.deepshap.ndim == 3 else estimate.deepshap
                    g, noise = v - d, (se**2).sum(1)  # per sample, tau^2 nu = max(0, |g|^2 - s)
                    signal = np.maximum(0.0, (g**2).sum(1) - noise)
                    w = np.where(noise == 0, 1.0, signal / np.maximum(signal + noise, 1e-300))
                    per_sample.extend(relative(d + w[:, None] * g, exact))
            records.append({
                "case": name, "method": method, "multiple": multiple, "error": float(np.median(errors)),
                "coverage": float(np.mean(covered))
            })
            if shrunk:
                records.append({"case": name, "method": "shrunk (pooled weight)", "multiple": multiple, "error": float(
                    np.median(shrunk)
                ),
                                "coverage": None, "rmse_ratio": float(np.median(rmse_ratio))})  # fmt: skip
                records.append({
                    "case": name, "method": "shrunk (per-sample weight)", "multiple": multiple,
                    "error": float(np.median(per_sample)), "coverage": None
                })
        errors, covered = [], []
        for seed in range(seeds):
            v, se = permutation_sampling(model, x, background, ids, out, rows, seed)
            errors.extend(relative(v, exact))
            covered.append(np.abs(v - exact) <= 1.96 * se)
        records.append({
            "case": name, "method": "permutation", "multiple": multiple, "error": float(np.median(errors)),
            "coverage": float(np.mean(covered))
        })
        if peers:
            v = shap_permutation(model, x, background, ids, out, rows)
            records.append({
                "case": name, "method": "shap Permutation", "multiple": multiple,
                "error": None if v is None else float(np.median(relative(v, exact))), "coverage": None
            })
            v = captum_svs(model, x, background, ids, out, rows, 0)
            records.append({
                "case": name, "method": "Captum SVS", "multiple": multiple,
                "error": None if v is None else float(np.median(relative(v, exact))), "coverage": None
            })
            v = captum_ig(model, x, background, ids, out, multiple)
            records.append({
                "case": name, "method": "IG", "multiple": multiple, "error": float(np.median(relative(v, exact))),
                "coverage": None
            })
    return records


def timing(model: nn.Module, background: torch.Tensor, x: torch.Tensor, repeats: int = 3) -> tuple[float, float]:
    """Median wall time of shap_values and of shapley_values at 4× (all outputs), same samples."""
    explainer = rnnshap.DeepExplainer(model, background)
    explainer.shap_values(x)
    explainer.shapley_values(x, budget=12 * len(background), random_state=0)
    deep, shapley = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        explainer.shap_values(x)
        deep.append(time.perf_counter() - start)
        start = time.perf_counter()
        explainer.shapley_values(x, budget=12 * len(background), random_state=0)
        shapley.append(time.perf_counter() - start)
    return float(np.median(deep)), float(np.median(shapley))


def table(records: list[dict[str, Any]]) -> str:
    cases = list(dict.fromkeys(r["case"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = []
    for case in cases:
        lines.append(f"\n**{case}** (median relative L2 to exact; 95 % interval coverage in brackets)\n")
        lines.append("| method | " + " | ".join(f"{m}×" for m in MULTIPLES) + " |")
        lines.append("|---|" + "---:|" * len(MULTIPLES))
        for method in methods:
            cells = []
            for m in MULTIPLES:
                found = [r for r in records if r["case"] == case and r["method"] == method and r["multiple"] == m]
                if method == "DeepSHAP":
                    found = [r for r in records if r["case"] == case and r["method"] == method] if m == 1 else []
                if not found or found[0]["error"] is None:
                    cells.append("–")
                    continue
                r = found[0]
                cells.append(f"{r['error']:.3f}" + (f" ({r['coverage']:.0%})" if r["coverage"] is not None else ""))
            if any(c != "–" for c in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(records: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in records))
    columns = min(4, len(cases))
    rows = -(-len(cases) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.0 * rows), squeeze=False)
    styles = {
        "shapley_values": ("C0", "o-"), "ShapleyExplainer": ("C1", "s-"), "permutation": ("C2", "^--"),
        "shap Permutation": ("C4", "v:"), "Captum SVS": ("C5", "d:"), "IG": ("C3", "x-.")
    }
    for ax, case in zip(axes.flat, cases, strict=False):
        for method, (colour, style) in styles.items():
            points = [(
                r["multiple"], r["error"]
            ) for r in records if r["case"] == case and r["method"] == method and r["error"] is not None]
            exact = [m for m, e in points if e < 1e-6]  # exact to rounding (IG on a multilinear function): no place on a log axis
            points = [(m, e) for m, e in points if e >= 1e-6]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=colour, label=method, markersize=4)
            if exact:
                ax.text(
                    0.98, 0.97, f"{method}: exact (0)", transform=ax.transAxes, ha="right", va="top", fontsize=7, color=colour
                )
        deep = [r["error"] for r in records if r["case"] == case and r["method"] == "DeepSHAP"]
        if deep:
            ax.axhline(deep[0], color="k", lw=1, ls="--", label="DeepSHAP (1×)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(MULTIPLES), [f"{m}×" for m in MULTIPLES])
        ax.set_title(case, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(cases) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("cost (× DeepSHAP's)")
    for row in axes:
        row[0].set_ylabel("median relative L2 to exact")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", bbox_to_anchor=(0.98, 0.08), fontsize=8, frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def interactions_section(samples: int = 10, references: int = 20) -> str:
    """Shapley interactions (k-SII and STII of order 2, through shapiq) of the digit LSTM's 8 steps against
    their exact values (every coalition), at budgets of 16 to 128 coalitions: median relative L2 (Frobenius)
    distance of the (P, P) maps, per shapiq's default approximator for the index."""
    model, background, x = digits_model("lstm")
    background, x = background[:references], x[:samples]
    with torch.no_grad():
        out = model(x).argmax(1).numpy()
    explainer = rnnshap.DeepExplainer(model, background)
    lines = [
        "| index | " + " | ".join(f"{c} coalitions ({c * references} rows)" for c in (16, 32, 64, 128)) + " |",
        "|---|" + "---:|" * 4
    ]
    for index in ("k-SII", "STII"):
        cells = []
        exact = [explainer.shapley_interactions(
            x[i : i + 1], index=index, outputs=[int(out[i])]
        ).matrix()[0, :, :, 0] for i in range(samples)]
        for coalitions in (16, 32, 64, 128):
            errors = []
            for i in range(samples):
                for seed in range(3):
                    m = explainer.shapley_interactions(
                        x[i : i + 1], index=index, outputs=[int(out[i])], budget=coalitions * references, random_state=seed
                    ).matrix()[0, :, :, 0]
                    errors.append(np.linalg.norm(m - exact[i]) / np.linalg.norm(exact[i]))
            cells.append(f"{np.median(errors):.3f}")
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="LSTM steps and the synthetic task, one seed, no peers")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--figure", default=None, help="write the error-against-budget figure here")
    parser.add_argument("--interactions", action="store_true", help="only the interactions section (needs shapiq)")
    args = parser.parse_args()
    if args.interactions:
        torch.set_num_threads(1)
        print("Shapley interactions of the digit LSTM's 8 steps (2^8 = 256 coalitions: exact), median relative L2:")
        print(interactions_section())
        return
    torch.set_num_threads(1)
    seeds = 1 if args.quick else args.seeds
    peers = not (args.quick or args.skip_peers)
    records: list[dict[str, Any]] = []
    layers = ["lstm"] if args.quick else ["lstm", "gru", "bidirectional"]
    kinds = ["steps"] if args.quick else ["steps", "features"]
    start = time.perf_counter()
    timings = {}
    for layer in layers:
        model, background, x = digits_model(layer)
        for kind in kinds:
            name = f"digits {layer}, {kind}"
            print(f"{name} ...", flush=True)
            records += run_case(name, model, background, x, kind, seeds, peers, None)
        timings[layer] = timing(model, background, x)
    synthetic = Synthetic().eval()
    g = torch.Generator().manual_seed(1)
    background, x = torch.randn(BACKGROUND, 8, 4, generator=g), torch.randn(SAMPLES, 8, 4, generator=g)
    print("synthetic closed form ...", flush=True)
    records += run_case(
        "synthetic (closed form), steps", synthetic, background, x, "steps", seeds, peers, synthetic.shapley(x, background)
    )
    print(table(records))
    ratios = [r for r in records if r.get("rmse_ratio") is not None]
    if ratios:
        print("\nshrunk: median of (actual L2 error / shrunk_rmse), per case and budget (1 = calibrated, < 1 = conservative):")
        for r in ratios:
            print(f"  {r['case']} {r['multiple']}×: {r['rmse_ratio']:.2f}")
    print("\nwall time, 30 digits × 10 classes, 50 background rows (median of 3):")
    print("| model | shap_values | shapley_values at 4× | ratio |\n|---|---:|---:|---:|")
    for layer, (deep, shapley) in timings.items():
        print(f"| {layer} | {deep:.2f} s | {shapley:.2f} s | {shapley / deep:.1f}× |")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    if args.figure:
        figure(records, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
