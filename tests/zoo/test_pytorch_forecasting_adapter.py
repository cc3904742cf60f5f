"""rnnshap.pytorch_forecasting.explain: pytorch-forecasting's models explained per named variable.

The truths are independent of the adapter: pytorch-forecasting's own ``model.predict`` (the values
of each forecast plus its base value add up to it, in the user's units), the recipe path of
docs/recipes.md (the network's forward on the batch tensors, explained by ``rnnshap.DeepExplainer``)
on the same windows, Shapley values enumerated here by brute force, and what a model cannot read
(exactly 0). Models are tiny and untrained (one is fitted for one short epoch): exactness does not
depend on training.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import subprocess
import sys
import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_forecasting")
import pandas as pd  # noqa: E402
from pytorch_forecasting import (  # noqa: E402
    Baseline,
    DecoderMLP,
    DeepAR,
    NBeats,
    NHiTS,
    RecurrentNetwork,
    TemporalFusionTransformer,
    TiDEModel,
    TimeSeriesDataSet,
)
from pytorch_forecasting.data import EncoderNormalizer, GroupNormalizer  # noqa: E402

import rnnshap  # noqa: E402
from rnnshap.errors import InputError, UnsupportedOperationError  # noqa: E402
from rnnshap.pytorch_forecasting import ForecastExplanation, explain  # noqa: E402

from ..models.torch import Composite  # noqa: E402

L, H = 5, 3  # encoder and decoder lengths
WINDOWS = [0, 7, 13]  # the explained windows
N_BACKGROUND = 6
#: the explained forecasts (a float64 copy of the model, the adapter's default) against predict's float32
#: ones, relative to max(1, |forecast|): float32 rounding of the forward (tests/conftest.py ADDITIVITY_TOL)
TOL32 = 1e-5
TOL64 = 1e-10


def _frame(series: int = 4, length: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "series": np.repeat([f"s{i}" for i in range(series)], length),
        "time_idx": np.tile(np.arange(length), series),
        "value": rng.normal(size=series * length).cumsum() * 0.3 + 5.0,
        "temp": rng.normal(size=series * length),
        "weekday": np.tile([str(d % 7) for d in range(length)], series),
        "group": np.repeat(["a", "a", "b", "b"], length),
    })  # fmt: skip


def _dataset(
    frame: pd.DataFrame | None = None, *, categoricals: bool = True, known: bool = True, **kwargs: Any
) -> TimeSeriesDataSet:
    extra: dict[str, Any] = (
        dict(time_varying_known_categoricals=["weekday"], static_categoricals=["group"]) if categoricals else {}
    )
    kwargs.setdefault("target_normalizer", GroupNormalizer(groups=["series"]))
    kwargs.setdefault("min_encoder_length", L)
    return TimeSeriesDataSet(
        _frame() if frame is None else frame, time_idx="time_idx", target="value", group_ids=["series"],
        max_encoder_length=L, max_prediction_length=H, min_prediction_length=H,
        time_varying_unknown_reals=["value"], time_varying_known_reals=["temp"] if known else [], **extra, **kwargs,
    )  # fmt: skip


def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _predict(model: Any, data: Any, mode: str = "raw") -> np.ndarray:
    """pytorch-forecasting's own predict, (windows, H, K), in the adapter's output order."""
    _quiet()
    kwargs = {"n_samples": None} if isinstance(model, DeepAR) else {}
    out = model.predict(data, mode=mode, **kwargs, trainer_kwargs=dict(logger=False, enable_checkpointing=False))
    prediction = (out["prediction"] if mode == "raw" else out).detach().numpy()
    if isinstance(model, DeepAR):  # its raw prediction repeats target_scale in front of (loc, scale)
        prediction = prediction[..., 2:]
    return prediction.reshape(prediction.shape[0], H, -1)[WINDOWS]


MODELS: dict[str, tuple[Callable[[TimeSeriesDataSet], Any], dict[str, Any]]] = {
    "RecurrentNetwork-LSTM": (lambda d: RecurrentNetwork.from_dataset(d, hidden_size=6, rnn_layers=2, cell_type="LSTM"), {}),
    "RecurrentNetwork-GRU": (lambda d: RecurrentNetwork.from_dataset(d, hidden_size=6, rnn_layers=1, cell_type="GRU"), {}),
    "DeepAR": (lambda d: DeepAR.from_dataset(d, hidden_size=6, rnn_layers=2), {}),
    "TFT": (
        lambda d: TemporalFusionTransformer.from_dataset(d, hidden_size=8, attention_head_size=2, hidden_continuous_size=4),
        {},
    ),
    "TFT-reals": (
        lambda d: TemporalFusionTransformer.from_dataset(d, hidden_size=8, attention_head_size=2, hidden_continuous_size=4),
        {"categoricals": False},
    ),
    "NBeats": (lambda d: NBeats.from_dataset(d, widths=[8, 8]), {"categoricals": False, "known": False}),
    "NHiTS": (lambda d: NHiTS.from_dataset(d, hidden_size=8), {}),
    "DecoderMLP": (lambda d: DecoderMLP.from_dataset(d, hidden_size=8), {}),
    "TiDE": (lambda d: TiDEModel.from_dataset(d, hidden_size=8), {}),
}
#: models whose forecast for step j reads the known inputs of later decoder steps (an MLP over the whole future)
NOT_CAUSAL = ("NHiTS", "TiDE")
#: explain's options per model in the zoo: DeepAR's steps after the first are explained only on the explicit
#: opt-in to its teacher-forced decoder (what predict(n_samples=None) runs), which reads the realized future target
EXPLAIN: dict[str, dict[str, Any]] = {"DeepAR": {"teacher_forced": True}}


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[Any, TimeSeriesDataSet, ForecastExplanation]]:
    """Every model, its data set and its explanation (DeepSHAP, mode="raw"), built once."""
    _quiet()
    out = {}
    for name, (make, options) in MODELS.items():
        torch.manual_seed(0)
        data = _dataset(**options)
        model = make(data)
        out[name] = (model, data, explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, **EXPLAIN.get(name, {})))
    return out


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_values_add_up_to_the_librarys_own_predict(zoo: Any, name: str) -> None:
    model, data, result = zoo[name]
    truth = _predict(model, data)
    assert result.prediction.shape == truth.shape
    assert _relative(result.prediction, truth) <= 4 * np.finfo(np.float32).eps, "the explained forecast is predict's"
    assert _relative(result.total() + result.base_values, truth) <= TOL32
    read = result.decoder if name == "DecoderMLP" else result.encoder  # DecoderMLP reads the decoder's inputs only
    assert np.abs(read).max() > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_adds_up_at_float64_precision(zoo: Any, name: str) -> None:
    """The values add up to the explained (float64) forecast to 1e-10; the float32 gap to predict
    above is the forward's rounding."""
    _, _, result = zoo[name]
    assert _relative(result.total() + result.base_values, result.prediction) <= TOL64


@pytest.mark.parametrize("name", ["RecurrentNetwork-LSTM", "NBeats"])
def test_in_the_models_own_float32(zoo: Any, name: str) -> None:
    """dtype=None explains the model itself, in float32: DeepSHAP's own float32 check holds."""
    model, data, result = zoo[name]
    own = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, dtype=None)
    assert _relative(own.total() + own.base_values, _predict(model, data)) <= 1e-5
    assert float(np.abs(own.encoder - result.encoder).max()) <= 1e-4 * max(1.0, float(np.abs(result.encoder).max()))


def test_names_and_shapes(zoo: Any) -> None:
    _, _, result = zoo["TFT"]
    n, K = len(WINDOWS), 7
    assert result.output_names == ["q0.02", "q0.1", "q0.25", "q0.5", "q0.75", "q0.9", "q0.98"]
    assert result.time_varying_variables == ["weekday", "temp", "value"]
    assert result.static_variables == ["group"]
    assert result.encoder.shape == (n, L, 3, H, K) and result.decoder.shape == (n, H, 3, H, K)
    assert result.static.shape == (n, 1, H, K) and result.target_scale.shape == (n, H, K)
    assert list(result.index["time_idx"]) == list(
        _dataset().x_to_index(_dataset()._collate_fn([_dataset()[i] for i in WINDOWS])[0])["time_idx"]
    )
    assert np.abs(result.static).max() > 0, "the static categorical is read"
    _, _, deepar = zoo["DeepAR"]
    assert deepar.output_names == ["loc", "scale"]


@pytest.mark.parametrize("name", list(MODELS))
def test_what_the_model_cannot_read_gets_exactly_zero(zoo: Any, name: str) -> None:
    """The target after the forecast start is never read (DeepAR: its first step, the default; its
    teacher-forced later steps are the opt-in tested below); the decoders of the recurrent models, TFT
    and DecoderMLP are causal (the forecast for step j reads no known input after j); NBeats reads no
    decoder input at all, DecoderMLP no encoder input."""
    model, data, result = zoo[name]
    if name == "DeepAR":
        result = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, horizons=[0])
    target = result.time_varying_variables.index("value")
    assert not result.decoder[:, :, target].any(), f"{name}: the target in the decoder"
    for position, j in enumerate(result.horizons):
        if name not in NOT_CAUSAL:
            assert not result.decoder[:, j + 1 :, :, position].any(), f"{name}: known inputs after step {j}, horizon {j}"
    if name == "NBeats":
        assert not result.decoder.any()
    if name == "DecoderMLP":
        assert not result.encoder.any()


def test_deepar_steps_after_the_first_are_refused_unless_teacher_forced(zoo: Any) -> None:
    """DeepAR's n_samples=None decoder is teacher-forced: its parameters for step j >= 1 read the realized
    target at decoder step j - 1 (not DeepAR's forecast, which feeds back its own draws). Refused by
    default; horizons=[0] (the first step, which reads no future) is exact and equals predict's; the
    opt-in teacher_forced=True explains the teacher-forced function, which reads the future target."""
    model, data, forced = zoo["DeepAR"]
    with pytest.raises(InputError, match="teacher-forced") as error:
        explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND)
    assert "horizons=[0]" in str(error.value) and "teacher_forced=True" in str(error.value)
    with pytest.raises(InputError, match="teacher-forced"):
        explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, horizons=[0, 1], mode="prediction")
    first = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, horizons=[0])
    assert first.prediction.shape == (len(WINDOWS), 1, 2) and list(first.horizons) == [0]
    assert _relative(first.total() + first.base_values, _predict(model, data)[:, :1]) <= TOL32
    target = first.time_varying_variables.index("value")
    assert not first.decoder[:, :, target].any()
    # the opt-in: the step-1 parameters read the realized target of decoder step 0 (the leak the default refuses)
    assert list(forced.horizons) == [0, 1, 2]
    assert np.abs(forced.decoder[:, 0, target, 1]).max() > 0


def test_baseline_closed_form() -> None:
    """pytorch-forecasting's Baseline repeats the last observed value (a linear model): each forecast
    step's value sits on the last encoder step of the target, and equals that value minus its mean
    over the background windows; everything else gets exactly 0."""
    _quiet()
    data = _dataset()
    result = explain(Baseline(), data, windows=WINDOWS, n_background=N_BACKGROUND)
    assert _relative(result.total() + result.base_values, _predict(Baseline(), data)) <= TOL32
    target = result.time_varying_variables.index("value")
    rng = np.random.default_rng(0)  # the adapter's default background: N_BACKGROUND of data's windows, seed 0
    background = np.sort(rng.choice(len(data), size=N_BACKGROUND, replace=False))
    batch, _ = data._collate_fn([data[int(i)] for i in [*background, *WINDOWS]])
    last_values = batch["encoder_target"][:, L - 1].double().numpy()
    expected = last_values[N_BACKGROUND:] - last_values[:N_BACKGROUND].mean()
    for h in range(H):
        np.testing.assert_allclose(result.encoder[:, L - 1, target, h, 0], expected, rtol=0, atol=1e-12)
    others = result.encoder.copy()
    others[:, L - 1, target] = 0
    assert not others.any() and not result.decoder.any() and not result.static.any() and not result.target_scale.any()


def _recipe_values(model: Any, data: TimeSeriesDataSet, result: ForecastExplanation) -> list[np.ndarray]:
    """docs/recipes.md's path: the network's forward on the batch tensors (lengths made inside the
    wrapper), rnnshap.DeepExplainer, the same background and windows."""
    keys = ["encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "target_scale"]

    def forecast(m: nn.Module, *tensors: torch.Tensor) -> torch.Tensor:
        n = tensors[0].shape[0]
        x = dict(zip(keys, tensors, strict=True))
        x["encoder_lengths"] = torch.full((n,), L, dtype=torch.long)
        x["decoder_lengths"] = torch.full((n,), H, dtype=torch.long)
        return m.network(x)["prediction"].reshape(n, -1)

    rng = np.random.default_rng(0)
    background = np.sort(rng.choice(len(data), size=N_BACKGROUND, replace=False))
    batch, _ = data._collate_fn([data[int(i)] for i in [*background, *WINDOWS]])
    tensors = [batch[k].double() if batch[k].is_floating_point() else batch[k] for k in keys]
    wrapper = Composite(forecast, network=copy.deepcopy(model).double()).eval()
    explainer = rnnshap.DeepExplainer(wrapper, [t[:N_BACKGROUND] for t in tensors])
    return list(explainer.shap_values([t[N_BACKGROUND:] for t in tensors]))


@pytest.mark.parametrize("name", ["RecurrentNetwork-GRU", "TFT"])
def test_equals_the_recipe_path(zoo: Any, name: str) -> None:
    model, data, result = zoo[name]
    recipe = _recipe_values(model, data, result)
    for key, values in zip(["encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "target_scale"], recipe, strict=True):
        ours = result.raw[key]
        assert ours.shape == values.shape, key
        scale = max(1.0, float(np.abs(values).max()))
        assert float(np.abs(ours - values).max()) <= 1e-10 * scale, key
    # and per variable: the encoder's reals are the recipe's columns
    temp = data.reals.index("temp")
    np.testing.assert_allclose(result.encoder[:, :, result.time_varying_variables.index("temp")].reshape(len(WINDOWS), L, -1),
                               recipe[0][:, :, temp], rtol=0, atol=1e-10)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float64", None])
def test_model_is_unchanged(zoo: Any, dtype: str | None) -> None:
    """Parameters, buffers and training flags are bit-identical after explaining (a model left in
    training mode stays there)."""
    model, data, _ = zoo["TFT"]
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    explain(model, data, windows=[0], n_background=3, dtype=dtype, check_additivity=dtype == "float64")
    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    model.eval()


@pytest.mark.parametrize("name", ["RecurrentNetwork-LSTM", "TFT"])
def test_prediction_mode_is_predicts_point_forecast(zoo: Any, name: str) -> None:
    model, data, _ = zoo[name]
    result = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, mode="prediction")
    truth = _predict(model, data, mode="prediction")
    assert result.output_names == ["value"]
    assert _relative(result.total() + result.base_values, truth) <= TOL32


def test_deepar_distribution_mean_is_the_affine_map_of_its_loc(zoo: Any) -> None:
    """mode="prediction" of DeepAR: the Normal's mean in the user's units, center + scale · loc,
    from predict's raw parameters (closed form; every step: the teacher-forced opt-in, as
    predict(n_samples=None) runs it); sampling is never explained."""
    model, data, _ = zoo["DeepAR"]
    result = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, mode="prediction", teacher_forced=True)
    raw = (
        model.predict(data, mode="raw", n_samples=None, trainer_kwargs=dict(logger=False))["prediction"].detach().numpy()[WINDOWS]
    )
    distribution = model.loss.map_x_to_distribution(torch.as_tensor(raw))  # the library's own distribution
    mean = distribution.base_dist.mean
    for transform in distribution.transforms:
        mean = transform(mean)
    mean = mean.numpy()
    assert _relative(result.total() + result.base_values, mean[..., None]) <= TOL32
    with pytest.raises(InputError, match="samples the quantiles"):
        explain(model, data, windows=[0], mode="quantiles")


def test_horizons_explains_the_chosen_steps_only(zoo: Any) -> None:
    """horizons=[2]: the forecast of step 2 alone, predict's, added up; the accessors take the step's
    own number and refuse the steps not explained."""
    model, data, _ = zoo["RecurrentNetwork-GRU"]
    result = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND, horizons=[-1])
    assert list(result.horizons) == [H - 1] and result.prediction.shape == (len(WINDOWS), 1, 1)
    assert result.encoder.shape == (len(WINDOWS), L, 3, 1, 1) and result.decoder.shape == (len(WINDOWS), H, 3, 1, 1)
    assert _relative(result.total() + result.base_values, _predict(model, data)[:, H - 1 :]) <= TOL32
    assert result.importance("encoder", horizon=H - 1) == result.importance("encoder")
    assert set(result.to_dataframe()["horizon"]) == {H - 1}
    with pytest.raises(InputError, match="horizon 0 was not explained"):
        result.over_time(horizon=0)


@pytest.mark.parametrize("normalizer", ["encoder", "log", "softplus"])
def test_other_target_normalizers_add_up_to_predict(normalizer: str) -> None:
    """EncoderNormalizer (the scale comes from the window) and a log transformation (a fixed
    nonlinear map after the network, explained through)."""
    _quiet()
    torch.manual_seed(0)
    target = EncoderNormalizer() if normalizer == "encoder" else GroupNormalizer(groups=["series"], transformation=normalizer)
    data = _dataset(categoricals=False, target_normalizer=target)
    model = RecurrentNetwork.from_dataset(data, hidden_size=6, rnn_layers=1)
    result = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND)
    assert _relative(result.total() + result.base_values, _predict(model, data)) <= TOL32


@pytest.mark.parametrize("name", ["RecurrentNetwork-GRU", "TFT-reals"])
def test_variable_encoder_lengths_add_up_to_predict(name: str) -> None:
    """Windows with encoders of 3 to 5 steps: the lengths are context (each reference runs with the
    window's lengths), the padding (in front: the encoder axis is right-aligned) gets exactly 0."""
    _quiet()
    torch.manual_seed(0)
    data = _dataset(categoricals=False, min_encoder_length=3)
    model = MODELS[name][0](data)
    result = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND)
    assert len(set(result.encoder_lengths.tolist())) > 1
    assert _relative(result.total() + result.base_values, _predict(model, data)) <= TOL32
    for i, length in enumerate(result.encoder_lengths):
        assert not result.encoder[i, : L - length].any()
        assert np.abs(result.encoder[i, L - 1]).max() > 0, "the last observed step is read"


def test_shorter_encoders_are_labelled_at_their_own_lags() -> None:
    """Baseline repeats the last observed target: for windows of every encoder length (3 to 5), the
    whole of each forecast's value (predict's forecast minus the base value) sits on the target at
    step -1, in ``encoder``, ``to_dataframe`` and ``over_time``; every other step gets exactly 0."""
    _quiet()
    data = _dataset(min_encoder_length=3)
    windows = [i for i in range(len(data)) if i % 3 == 0]
    batch, _ = data._collate_fn([data[i] for i in windows])
    assert sorted(set(batch["encoder_lengths"].tolist())) == [3, 4, 5]
    result = explain(Baseline(), data, windows=windows, n_background=N_BACKGROUND)
    np.testing.assert_array_equal(result.encoder_lengths, batch["encoder_lengths"].numpy())
    truth = Baseline().predict(data, mode="raw", trainer_kwargs=dict(logger=False))["prediction"].detach().numpy()[windows]
    assert _relative(result.prediction[..., 0], truth) <= TOL32
    whole = result.prediction - result.base_values  # (n, H, K)
    target = result.time_varying_variables.index("value")
    np.testing.assert_allclose(result.encoder[:, L - 1, target], whole, rtol=0, atol=1e-12)
    others = result.encoder.copy()
    others[:, L - 1, target] = 0
    assert not others.any()
    frame = result.to_dataframe(horizon=1)
    encoder = frame[frame["part"] == "encoder"]
    assert set(encoder.loc[encoder["value"] != 0, "step"]) == {-1}
    last = encoder[(encoder["step"] == -1) & (encoder["variable"] == "value")].sort_values("window")
    np.testing.assert_allclose(last["value"].to_numpy(), whole[:, 1, 0], rtol=0, atol=1e-12)
    for i in range(len(windows)):
        steps = result.over_time(sample=i, horizon=1)
        assert steps.shape == (L + H,) and not np.delete(steps, L - 1).any()
        np.testing.assert_allclose(steps[L - 1], whole[i, 1, 0], rtol=0, atol=1e-12)
    mean = result.over_time()
    assert not np.delete(mean, L - 1).any()
    np.testing.assert_allclose(mean[L - 1], np.abs(whole).mean(), rtol=0, atol=1e-12)


def test_fitted_model_and_the_data_forms() -> None:
    """A model fitted for one short epoch; a dataloader and a data frame give the windows predict
    gives for them."""
    import lightning.pytorch as pl

    _quiet()
    torch.manual_seed(0)
    data = _dataset()
    model = RecurrentNetwork.from_dataset(data, hidden_size=6, rnn_layers=1, learning_rate=0.01)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.fit(model, train_dataloaders=data.to_dataloader(train=True, batch_size=8))
    loader = data.to_dataloader(train=False, batch_size=4)
    from_loader = explain(model, loader, windows=WINDOWS, n_background=N_BACKGROUND)
    from_data = explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND)
    np.testing.assert_array_equal(from_loader.encoder, from_data.encoder)
    frame_background = explain(model, data, background=_frame(), windows=WINDOWS, n_background=N_BACKGROUND)
    np.testing.assert_array_equal(frame_background.encoder, from_data.encoder)  # a data frame background: all its windows
    frame = _frame()
    last = explain(model, frame, n_background=N_BACKGROUND)  # one window per series, the last: as predict(frame)
    truth = model.predict(frame, mode="raw", trainer_kwargs=dict(logger=False))["prediction"].detach().numpy()
    assert _relative(last.total() + last.base_values, truth) <= TOL32


def _brute_force_shapley(
    model: Any, data: TimeSeriesDataSet, window: int, background: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Shapley values of NBeats' players (the encoder's cells and target_scale's two entries)
    for v(S) = mean over r of f(x on S, r elsewhere), by enumerating every coalition."""
    batch, _ = data._collate_fn([data[i] for i in [*background, window]])
    enc, scale = batch["encoder_cont"], batch["target_scale"]
    P = L + 2

    def f(mask: tuple[int, ...]) -> np.ndarray:
        on = torch.tensor(mask, dtype=torch.bool)
        e = torch.where(on[:L, None], enc[-1:], enc[:-1])
        s = torch.where(on[L:], scale[-1:], scale[:-1])
        x = {"encoder_cont": e, "target_scale": s, "encoder_lengths": batch["encoder_lengths"][:-1]}
        with torch.no_grad():
            return model(x)["prediction"].double().mean(0).reshape(-1).numpy()

    v = {mask: f(mask) for mask in itertools.product((0, 1), repeat=P)}
    phi = np.zeros((P, H))
    for i in range(P):
        for mask, value in v.items():
            if mask[i]:
                continue
            s = sum(mask)
            weight = math.factorial(s) * math.factorial(P - s - 1) / math.factorial(P)
            phi[i] += weight * (v[mask[:i] + (1,) + mask[i + 1 :]] - value)
    return phi, v[(0,) * P]


def test_shapley_mode_at_full_budget_is_the_enumerated_shapley_value(zoo: Any) -> None:
    model, data, _ = zoo["NBeats"]
    rng = np.random.default_rng(0)
    background = sorted(int(i) for i in rng.choice(len(data), size=4, replace=False))
    result = explain(model, data, windows=[7], n_background=4, method="shapley", budget=4 * 2 ** (L + 2 + 2 * H), random_state=0)
    truth, base = _brute_force_shapley(model.eval(), data, 7, background)
    assert result.exact is not None and result.exact.all()
    assert result.stderr is not None and not result.stderr["encoder"].any()
    target = result.time_varying_variables.index("value")
    np.testing.assert_allclose(result.encoder[0, :, target, :, 0], truth[:L], atol=1e-5)
    np.testing.assert_allclose(result.target_scale[0, :, 0], truth[L:].sum(0), atol=1e-5)
    np.testing.assert_allclose(result.base_values[0, :, 0], base, atol=1e-5)
    assert _relative(result.total() + result.base_values, _predict(model, data)[1:2]) <= TOL32


def test_shapley_mode_estimates_with_standard_errors(zoo: Any) -> None:
    model, data, deepshap = zoo["RecurrentNetwork-GRU"]
    result = explain(model, data, windows=WINDOWS[:1], n_background=N_BACKGROUND, method="shapley", budget=400, random_state=0)
    assert result.method == "shapley" and result.stderr is not None
    assert result.stderr["encoder"].shape == result.encoder.shape and result.stderr["encoder"].max() > 0
    assert _relative(result.total() + result.base_values, _predict(model, data)[:1]) <= TOL32  # efficient walks


def test_plot_interpretation(zoo: Any, tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    _, _, result = zoo["TFT"]
    figs = result.plot_interpretation(output="q0.5")
    assert set(figs) == {"static_variables", "encoder_variables", "decoder_variables", "time"}
    one = result.plot_interpretation(sample=0, horizon=1)
    one["time"].savefig(tmp_path / "time.png")
    importance = result.importance("decoder", output="q0.5")
    assert list(importance) == ["weekday", "temp"]  # TFT's decoder variables: the known ones
    frame = result.to_dataframe(horizon=0, output="q0.5")
    assert np.isclose(frame["value"].sum(), (result.total() - 0)[:, 0, 3].sum())


# -- bad input, in pytorch-forecasting's terms ----------------------------------------------------------
def test_a_data_set_the_model_was_not_built_from_is_refused(zoo: Any) -> None:
    model, _, _ = zoo["TFT"]
    with pytest.raises(InputError, match="from_dataset"):
        explain(model, _dataset(categoricals=False))


def test_series_shorter_than_the_window_are_refused(zoo: Any) -> None:
    model, _, _ = zoo["TFT"]
    with pytest.raises(InputError, match=f"min_encoder_length \\+ min_prediction_length = {L} \\+ {H}"):
        explain(model, _frame(length=L + H - 2))


def test_unsupported_models_are_refused_by_name(zoo: Any) -> None:
    _, data, _ = zoo["TFT"]
    with pytest.raises(UnsupportedOperationError, match="Linear") as error:
        explain(nn.Linear(2, 2), data)
    assert "ShapleyExplainer" in str(error.value)
    with pytest.raises(InputError, match="from_dataset"):
        explain(TemporalFusionTransformer, data)


def test_bad_arguments(zoo: Any) -> None:
    model, data, result = zoo["TFT"]
    with pytest.raises(InputError, match="mode"):
        explain(model, data, mode="samples")
    with pytest.raises(InputError, match="windows"):
        explain(model, data, windows=[len(data)])
    with pytest.raises(InputError, match="windows must be integer indices"):
        explain(model, data, windows=[0.5])
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(InputError, match="n_background must be a positive integer"):
            explain(model, data, windows=[0], n_background=bad)
    with pytest.raises(InputError, match="horizons"):
        explain(model, data, windows=[0], horizons=[H])
    with pytest.raises(InputError, match="horizons must be integer"):
        explain(model, data, windows=[0], horizons=[0.5])
    with pytest.raises(InputError, match="teacher_forced"):
        explain(model, data, windows=[0], teacher_forced=True)
    with pytest.raises(InputError, match="method"):
        explain(model, data, method="kernel")
    with pytest.raises(InputError, match="horizon 3 out of range"):
        result.importance("encoder", horizon=3)
    with pytest.raises(InputError, match="not one of the explained outputs"):
        result.importance("encoder", output="q0.33")


def test_importing_rnnshap_does_not_import_pytorch_forecasting() -> None:
    code = "import sys, rnnshap, rnnshap.pytorch_forecasting; assert 'pytorch_forecasting' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_model_whose_float64_copy_does_not_run_is_explained_in_its_own_dtype_and_meets_its_own_refusal() -> None:
    """xLSTMTime with an sLSTM makes its state in float32, which the float64 copy's weights meet (torch's raw
    "mat1 and mat2 must have the same dtype" before): the copy is left, said in a warning, and the model in its own
    dtype meets what rnnshap refuses of it by name."""
    from pytorch_forecasting.models import xLSTMTime

    _quiet()
    torch.manual_seed(0)
    data = _dataset(categoricals=False)
    model = xLSTMTime.from_dataset(data, input_size=2, output_size=1, hidden_size=8, xlstm_type="slstm", num_layers=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="mixes the rows"):
            explain(model, data, windows=WINDOWS, n_background=N_BACKGROUND)
    said = [str(w.message) for w in caught if "float64 copy does not run" in str(w.message)]
    assert said and "same dtype" in said[0], [str(w.message) for w in caught][:5]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # (the model itself untouched)
