"""rnnshap in xai4tsc: DeepSHAP and the Shapley mode as explainers of its runner, the distance to exact as a metric.

xai4tsc (an evaluation framework for time-series classification explanations) loads components it does not ship
from a source file named in its configuration (``class_name`` and ``class_path``, with
``general.allow_external_code: true``). Point ``class_path`` at ``rnnshap/xai4tsc_classes.py`` (its path is
:data:`CLASS_PATH`; ``python -m rnnshap.xai4tsc`` prints the entries to paste)::

    explanation_config:
      explainers:
        - method: rnnshap_deepshap          # exact DeepSHAP, 50 background rows from the training split
          class_name: DeepSHAPExplainer
          class_path: .../rnnshap/xai4tsc_classes.py
          background_data: train_set
        - method: rnnshap_shapley           # the exact Shapley values of 8 windows x 10 background rows
          class_name: ShapleyModeExplainer
          class_path: .../rnnshap/xai4tsc_classes.py
          background_data: train_set
    evaluation_config:
      metrics:
        - metric: Distance to exact
          class_name: DistanceToExactMetric
          class_path: .../rnnshap/xai4tsc_classes.py

What a user had to write around rnnshap is done here: the background drawn from the split the runner resolves
(``background_data: train_set``), the target class of each sample picked out of the per-class values, window values
spread back over their steps, the (N, C, T) layout (time is axis 2), and what xai4tsc's ``Explanation`` has no
field for (standard errors, the exactness flag, DeepSHAP's gap to the Shapley values, the background rows) kept in
``explanation.meta["rnnshap"]``. The metric scores any explainer's values (Captum's, TSHAP's) against the exact
Shapley values of the same game, with the background an rnnshap explainer drew for that model earlier in the run
(or ``background_data``: an array or a ``.npy`` file), and can append every distance, standard error and exactness
flag to a JSON-lines file (``record``) beside the runner's ``metrics.csv``. See docs/metrics.md.

Needs ``pip install xai4tsc`` (Python >= 3.12 declared; see docs/metrics.md for 3.11).
"""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, RnnShapError
from .explainer import DeepExplainer
from .metrics import ENUMERATE_UP_TO, METRICS, check_metric, distance_to_exact, own_targets, spread_to_entries
from .shapley import ShapleyExplainer
from .shapley.estimator import enumeration_rows

try:
    from xai4tsc.evaluation.base import EvaluatorBase
    from xai4tsc.xai.base import ExplainerBase
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "rnnshap.xai4tsc plugs rnnshap into xai4tsc, which is not installed: pip install xai4tsc "
        f"(on Python 3.11: pip install --ignore-requires-python --no-deps xai4tsc, see docs/metrics.md) ({error})"
    ) from error

__all__ = [
    "CLASS_PATH", "DeepSHAPExplainer", "DistanceToExactMetric", "ShapleyModeExplainer", "background_rows", "config_entries",
]  # fmt: skip

#: the file to name as ``class_path`` in xai4tsc's configuration
CLASS_PATH = str(Path(__file__).with_name("xai4tsc_classes.py"))

#: per model explained in this process: the split an rnnshap explainer was given (``background_data``), from which
#: the metric draws the same rows (weakly held: a model that is gone takes its entry with it)
_SPLITS: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()

#: xai4tsc's data layout: (N, C, T), time on axis 2
TIME_AXIS = 2


def background_rows(split: Any, count: int, seed: int = 0) -> np.ndarray:
    """``count`` rows of ``split`` (all where it has fewer), the first ``count`` of one permutation drawn with
    ``seed``: a smaller count takes the first rows of a larger one, so the metric's 10 rows are among DeepSHAP's 50."""
    rows = np.asarray(split, dtype=np.float32)
    if rows.ndim != 3:
        raise InputError(f"background_data must be an (N, C, T) split, got shape {rows.shape}")
    order = np.random.default_rng(seed).permutation(rows.shape[0])[: max(1, int(count))]
    return rows[np.sort(order)]


def _split(background_data: Any, what: str) -> np.ndarray:
    if background_data is None:
        raise InputError(
            f"{what} needs background rows: give background_data: train_set in its entry of the configuration (the "
            "runner resolves it to the training split), or an (N, C, T) array"
        )
    if isinstance(background_data, (str, Path)):
        return np.load(background_data)
    return np.asarray(background_data, dtype=np.float32)


def _on_device(model: Any, rows: np.ndarray) -> Any:
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.as_tensor(np.ascontiguousarray(rows), dtype=torch.float32, device=device)


def _targets(targets: Any, n: int, classes: int) -> np.ndarray:
    if targets is None:
        if classes != 1:
            raise InputError(f"the model has {classes} outputs: rnnshap explains one target class per sample")
        return np.zeros(n, dtype=np.int64)
    wanted = np.broadcast_to(np.asarray(targets, dtype=np.int64).reshape(-1), (n,)).copy()
    if wanted.min() < 0 or wanted.max() >= classes:
        raise InputError(f"targets {sorted(set(wanted.tolist()))}: the model has {classes} outputs")
    return wanted


class _RnnshapExplainer(ExplainerBase):
    explanation_type = "feature_attribution"

    def __init__(self, background_data: Any = None, n_background: int = 50, seed: int = 0, batch_size: int = 2048) -> None:
        self.background_data = background_data
        self.n_background = int(n_background)
        self.seed = int(seed)
        self.batch_size = int(batch_size)

    def _background(self, model: Any) -> np.ndarray:
        split = _split(self.background_data, type(self).__name__)
        _SPLITS[model] = split
        return background_rows(split, self.n_background, self.seed)

    @staticmethod
    def _keep(exp: Any, found: dict[str, Any]) -> None:
        meta = dict(exp.meta or {})
        meta["rnnshap"] = found
        exp.meta = meta


class DeepSHAPExplainer(_RnnshapExplainer):
    """rnnshap's exact DeepSHAP (:class:`rnnshap.DeepExplainer`) as an xai4tsc explainer.

    ``background_data``: the split to draw the background from (``train_set`` in the configuration);
    ``n_background``: how many rows (50); ``seed``: which. ``explanation.meta["rnnshap"]`` keeps the rows, the base
    value and output of each sample's target, and the additivity miss Σφ − (f(x) − E f) per sample.
    """

    # its own __init__: xai4tsc passes configuration parameters only to a class that defines one (build_explainer)
    def __init__(self, background_data: Any = None, n_background: int = 50, seed: int = 0, batch_size: int = 2048) -> None:
        super().__init__(background_data, n_background, seed, batch_size)

    def explain(self, model: Any, exp: Any, device: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        del device, kwargs
        background = self._background(model)
        explainer = DeepExplainer(model, _on_device(model, background), batch_size=self.batch_size)
        x = np.asarray(exp.data, dtype=np.float32)
        classes = int(np.prod(explainer.output_shape, dtype=np.int64))
        wanted = _targets(targets, len(x), classes)
        chosen = sorted(set(wanted.tolist()))
        values = own_targets(np.asarray(explainer.shap_values(_on_device(model, x), outputs=chosen)), chosen, wanted)
        expected = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)[wanted]
        with_torch = _on_device(model, x)
        import torch

        with torch.no_grad():
            outputs = model(with_torch).reshape(len(x), -1).double().cpu().numpy()[np.arange(len(x)), wanted]
        self._keep(
            exp,
            {
                "method": "deepshap",
                "background": background,
                "targets": wanted,
                "base_values": expected,
                "outputs": outputs,
                "additivity_miss": values.reshape(len(x), -1).sum(1) - (outputs - expected),
                "exact": False,  # DeepSHAP's values, not the Shapley values (see the metric for their distance)
            },
        )
        return values.astype(np.float32)


class ShapleyModeExplainer(_RnnshapExplainer):
    """rnnshap's Shapley mode as an xai4tsc explainer: the Shapley values of windows of steps (or of channels),
    exact where every coalition is enumerated, each window's value spread evenly over its steps.

    ``n_windows``: the series cut into this many windows of equal length (8; the last shorter), or
    ``players="channels"``; ``n_background``: background rows (10); ``budget``: rows per sample (None: every
    coalition up to 10 players, else the Shapley mode's default, estimated with standard errors).
    ``explanation.meta["rnnshap"]`` keeps the values per player, their standard errors, ``exact`` per sample,
    DeepSHAP's values on the same players and its gap to the Shapley values (where the model takes DeepSHAP).
    """

    def __init__(
        self,
        background_data: Any = None,
        n_background: int = 10,
        n_windows: int = 8,
        players: str = "steps",
        budget: int | None = None,
        seed: int = 0,
        batch_size: int = 2048,
    ) -> None:
        super().__init__(background_data, n_background, seed, batch_size)
        self.n_windows = int(n_windows)
        self.players = players
        self.budget = budget

    def game(self, length: int) -> dict[str, Any]:
        """The players of the game, as ``shapley_values`` takes them, for series of ``length`` steps."""
        if self.players == "channels":
            return {"players": "features", "windows": None}
        return {"players": "steps", "windows": max(1, math.ceil(length / self.n_windows))}

    def explain(self, model: Any, exp: Any, device: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        del device, kwargs
        background = self._background(model)
        x = np.asarray(exp.data, dtype=np.float32)
        game = self.game(x.shape[-1])
        try:  # DeepExplainer's door also gives DeepSHAP's values on the same players, and their gap
            explainer: Any = DeepExplainer(model, _on_device(model, background), batch_size=self.batch_size)
            classes = int(np.prod(explainer.output_shape, dtype=np.int64))
        except RnnShapError:  # a model DeepSHAP refuses: the Shapley values from its forward alone
            explainer = ShapleyExplainer(model, _on_device(model, background), batch_size=self.batch_size)
            classes = int(explainer.forward.background_outputs.shape[1])
        rows = _on_device(model, x)
        wanted = _targets(targets, len(x), classes)
        chosen = sorted(set(wanted.tolist()))
        plan = ShapleyExplainer(model, _on_device(model, background)).player_ids(
            game["players"], time_axis=TIME_AXIS, windows=game["windows"]
        )
        n, P, B = len(x), plan.count, len(background)
        budget = self.budget
        if budget is None and P <= ENUMERATE_UP_TO:  # every coalition, and room for DeepSHAP's pass (3 rows a pair)
            budget = enumeration_rows(P, B, False) + 3 * B
        estimate = explainer.shapley_values(
            rows, game["players"], budget, outputs=chosen, random_state=self.seed, time_axis=TIME_AXIS,
            windows=game["windows"],
        )  # fmt: skip

        def per_sample(a: Any) -> np.ndarray | None:
            return None if a is None else own_targets(np.asarray(a, dtype=np.float64).reshape(n, P, len(chosen)), chosen, wanted)

        values = per_sample(estimate.values)
        assert values is not None
        self._keep(
            exp,
            {
                "method": "shapley",
                "background": background,
                "targets": wanted,
                "players": estimate.players,
                "windows": game["windows"],
                "values": values,
                "stderr": per_sample(estimate.stderr),
                "exact": np.asarray(estimate.exact, dtype=bool),
                "deepshap": per_sample(estimate.deepshap),
                "deepshap_gap": per_sample(estimate.deepshap_gap),
                "n_evals": np.asarray(estimate.n_evals),
            },
        )
        return spread_to_entries(values, plan).astype(np.float32)


class DistanceToExactMetric(EvaluatorBase):
    """The distance of any explainer's values to the exact Shapley values, as an xai4tsc metric.

    The game: windows of steps (``n_windows``, 8) or channels, ``n_background`` rows (10) of the split an rnnshap
    explainer drew its background from for the same model earlier in the run (the same rows as ``Shapley``'s),
    or of ``background_data`` (an array, or a ``.npy`` file). Each sample is scored on its target (``target``:
    ``"predicted"``, the runner's default, or ``"label"``, the labels the runner passes: for explanations made with
    ``target: label`` or ``all``); rnnshap's own explanations carry theirs. ``metric``: the score returned per sample
    (``cosine``, ``relative_l2``, ``spearman``, ``sign_agreement``, ``top_k_overlap``); ``record``: a JSON-lines file
    to append every distance, the reference's standard errors and exactness, and the explainer's own
    ``meta["rnnshap"]`` (standard errors, DeepSHAP's gap) to, one line per call, with the explainer's name (in lower
    case, as xai4tsc hands it over), the targets and the indices of the series in the runner's test split.
    """

    metric_name = "Distance to exact"

    def __init__(
        self,
        metric: str = "cosine",
        background_data: Any = None,
        n_background: int = 10,
        n_windows: int = 8,
        players: str = "steps",
        budget: int | None = None,
        target: str = "predicted",
        record: str | None = None,
        seed: int = 0,
        batch_size: int = 2048,
    ) -> None:
        check_metric(metric)
        if target not in ("predicted", "label"):
            raise InputError(f"target must be 'predicted' or 'label', not {target!r}")
        self.metric = metric
        self.background_data = background_data
        self.n_background = int(n_background)
        self.shapley = ShapleyModeExplainer(None, n_background, n_windows, players, budget, seed, batch_size)
        self.target = target
        self.record = record
        self.seed = int(seed)
        self.batch_size = int(batch_size)

    def _split(self, model: Any) -> np.ndarray:
        if self.background_data is not None:
            return _split(self.background_data, "Distance to exact")
        if model in _SPLITS:
            return _SPLITS[model]
        raise InputError(
            "Distance to exact needs the background of its game: list an rnnshap explainer (DeepSHAP or Shapley, "
            "with background_data: train_set) before the other explainers of this model, or give the metric "
            "background_data (an (N, C, T) array, or a .npy file of one)"
        )

    def _wanted(self, model: Any, explanation: Any, x: np.ndarray, labels: Any) -> np.ndarray:
        kept = (explanation.meta or {}).get("rnnshap") if isinstance(explanation.meta, dict) else None
        if kept is not None and "targets" in kept and len(kept["targets"]) == len(x):
            return np.asarray(kept["targets"], dtype=np.int64)
        if self.target == "label":
            given = np.asarray(labels)
            if given.ndim > 1:  # one-hot or ordinal rows, as xai4tsc's generate_explanation reads them
                given = given.argmax(1) if given.shape[1] > 1 else given.ravel()
            return given.astype(np.int64).reshape(-1)
        import torch

        with torch.no_grad():
            return model(_on_device(model, x)).reshape(len(x), -1).argmax(1).cpu().numpy().astype(np.int64)

    def evaluate(
        self, model: Any, explanation: Any, data: Any, labels: Any, device: str = "cpu", **kwargs: Any
    ) -> np.ndarray:
        del device, kwargs
        x = np.asarray(data if data is not None else explanation.data, dtype=np.float32)
        values = np.asarray(self.real_attribution(explanation.exp_values), dtype=np.float64)
        if values.shape != x.shape:
            raise InputError(f"Distance to exact scores values shaped like the data {x.shape}, got {values.shape}")
        background = background_rows(self._split(model), self.n_background, self.seed)
        wanted = self._wanted(model, explanation, x, labels)
        game = self.shapley.game(x.shape[-1])
        scores = np.full(len(x), np.nan)
        found: dict[str, Any] = {"metric": self.metric, "explainer": explanation.explainer, "targets": wanted.tolist()}
        if explanation.indices is not None and len(explanation.indices) == len(x):  # the rows of the runner's test split
            found["indices"] = np.asarray(explanation.indices).astype(np.int64).tolist()
        for target in sorted(set(wanted.tolist())):
            rows = np.flatnonzero(wanted == target)
            distance = distance_to_exact(
                values[rows], model, _on_device(model, x[rows]), _on_device(model, background), players=game["players"],
                time_axis=TIME_AXIS, windows=game["windows"], budget=self.shapley.budget, outputs=[target],
                random_state=self.seed, batch_size=self.batch_size,
            )  # fmt: skip
            scores[rows] = getattr(distance, self.metric)
            for name in (*METRICS, "stderr", "reference_noise"):
                found.setdefault(name, [None] * len(x))
                for i, row in enumerate(rows):
                    found[name][row] = np.asarray(getattr(distance, name)[i]).tolist()
            found.setdefault("exact", []).append(bool(distance.exact))
            found["game"] = {"players": distance.game.players, "n_players": distance.game.n_players,
                             "background_rows": distance.game.background_rows, "windows": distance.game.windows}  # fmt: skip
        self.found = found
        if self.record:
            kept = (explanation.meta or {}).get("rnnshap", {}) if isinstance(explanation.meta, dict) else {}
            own = {k: np.asarray(v).tolist() for k, v in kept.items() if k not in ("background", "values") and v is not None}
            with open(self.record, "a", encoding="utf-8") as out:
                out.write(json.dumps({**found, "exact": all(found["exact"]), "explainer_meta": own}) + "\n")
        return scores


def config_entries() -> str:
    """The entries of xai4tsc's configuration that run rnnshap's explainers and metric, with this install's path."""
    return (
        "general:\n  allow_external_code: true\n"
        "explanation_config:\n  explainers:\n"
        f"    - method: rnnshap_deepshap\n      class_name: DeepSHAPExplainer\n      class_path: {CLASS_PATH}\n"
        "      background_data: train_set\n"
        f"    - method: rnnshap_shapley\n      class_name: ShapleyModeExplainer\n      class_path: {CLASS_PATH}\n"
        "      background_data: train_set\n"
        "evaluation_config:\n  metrics:\n"
        f"    - metric: Distance to exact\n      class_name: DistanceToExactMetric\n      class_path: {CLASS_PATH}\n"
    )


if __name__ == "__main__":  # pragma: no cover
    print(config_entries())
