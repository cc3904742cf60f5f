"""uni2ts' Moirai 2 (``uni2ts.model.moirai2.Moirai2Forecast``, uni2ts 2.0.0): ``model.predict(past_target)``.

``predict`` takes a list of numpy series and returns numpy ``(n, Q, H)``: per series it marks the missing values
(NaN) unobserved (``past_observed_target``) and fills them with its ``CausalMeanImputation`` (the last value carried
forward, then each missing step the mean of the steps before it), keeps the last ``context_length`` steps (the
earlier ones get exact zeros) or pads the front of a shorter series with its first value, marked ``past_is_pad``,
and runs the forecaster's ``forward`` under ``no_grad``: the packed scaler over the observed steps, the transformer,
and past its first predicted patches the rollout that feeds every quantile back and takes ``torch.quantile`` of the
results. The horizon is the forecaster's ``prediction_length``; another is forecast under the library's own
``hparams_context(prediction_length=H)``.

DeepSHAP explains ``forward`` itself on the windows laid out as ``predict`` lays them out: per missing pattern the
leading missing steps stripped (a shorter series, as a list of series of different lengths is given), the
imputation (a linear map fixed by the pattern, taken from the library's own imputation), the observed mask, the cut
or the padding with ``past_is_pad``. A leading missing step is no player (exactly 0), nor is a gap. The columns are
the model's quantile levels. One target variate per series (``target_dim=1``).

Past covariates (``covariates={"past_covariates": {name: (n, L)}}``: ``predict``'s ``past_feat_dynamic_real``, each
series' ``(L, C)``) are explained as inputs beside the target: ``predict`` cuts them to the last ``context_length``
steps with the target (the earlier ones exact zeros) or pads their front with their first value, and ``forward``
reads them as variates of their own (their own scaling, their patches beside the target's). Their values are in
``result.covariates``, ``(n, L, H, Q)`` each. Not explained, refused by name: several target variates (uni2ts 2.0.0's
own ``predict`` fails for ``target_dim > 1``: its padding of a context shorter than ``context_length`` fills one
column, and past the first predicted patches its rollout raises an einops error), covariates known into the future
(``feat_dynamic_real``), missing values with covariates and the dropped game with covariates.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import Adapter, net_module, quantile_columns, variate_columns
from .inputs import past_covariates


def _leading(missing: np.ndarray) -> int:
    """The leading missing steps of a window (a shorter series' padding); all of them where nothing is observed."""
    return int(np.cumprod(missing).sum())


class Moirai2Adapter(Adapter):
    distribution = "uni2ts"
    label = "Moirai 2"
    drops = "NaN (leading NaNs: a shorter series, padded with past_is_pad; inner NaNs unobserved, imputed by predict)"
    past_covariates = True
    one_variate_why = (
        " (uni2ts 2.0.0's own predict fails for target_dim > 1: its padding of a context shorter than context_length "
        "fills one column, and past the first predicted patches its rollout raises an einops error); past covariates "
        "beside one target are taken as covariates={'past_covariates': {name: (n, L)}}"
    )

    def __init__(self, model: Any) -> None:
        from uni2ts.model.moirai2 import Moirai2Forecast

        if not isinstance(model, Moirai2Forecast):
            raise InputError(
                f"rnnshap.foundation takes uni2ts' Moirai2Forecast (Moirai 2); got {type(model).__name__}. For Moirai 1 "
                "(MoiraiForecast, which samples from a mixture distribution) use rnnshap.DeepExplainer on a module "
                "returning the distribution's parameters (docs/recipes.md)"
            )
        hp = model.hparams
        if hp.target_dim != 1 or hp.feat_dynamic_real_dim:
            why = Moirai2Adapter.one_variate_why if hp.target_dim != 1 else ""
            raise InputError(
                f"Moirai2Forecast with target_dim={hp.target_dim}, feat_dynamic_real_dim={hp.feat_dynamic_real_dim}: "
                "rnnshap.foundation explains one target variate without covariates known into the future (with past "
                f"covariates, past_feat_dynamic_real, given as covariates={{'past_covariates': ...}}){why}; use "
                "rnnshap.ShapleyExplainer on a function calling predict, or build it with target_dim=1 and "
                "feat_dynamic_real_dim=0"
            )
        super().__init__(model)

    def context_length(self) -> int:
        return int(self.model.hparams.context_length)

    def patch_length(self) -> int:
        return int(self.model.module.patch_size)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        return list(quantile_columns(self.model.module.quantile_levels, requested, self.label))

    def torch_modules(self) -> list[Any]:
        return [self.model]

    def _indices(self, levels: list[Any]) -> list[int]:
        trained = [float(q) for q in self.model.module.quantile_levels]
        return [min(range(len(trained)), key=lambda j: abs(trained[j] - q)) for q in levels]

    def past_covariates_of(self, covariates: Any, background: Any, n: int, L: int, H: int, method: str) -> Any:
        out = past_covariates(
            self.label, covariates, background, n, L, H, method,
            "predict's feat_dynamic_real (known into the future) is cut by its own padding to the context's "
            "context_length steps, the future with it; give the covariate's past only, or use rnnshap.ShapleyExplainer "
            "on a function calling predict",
        )  # fmt: skip
        if len(out[0]) > 1 and L < self.context_length():
            raise InputError(
                f"covariates: {len(out[0])} past covariates with a context of {L} steps, shorter than Moirai 2's "
                f"context_length ({self.context_length()}): uni2ts 2.0.0's own predict pads a short context's "
                "past_feat_dynamic_real with one column and raises for more (ValueError: could not broadcast). Give one "
                "covariate, or contexts of at least context_length steps"
            )
        return out

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        if self.variates:  # one target, then its past covariates: predict's past_feat_dynamic_real
            rows = self.shaped(windows)
            with self.model.hparams_context(prediction_length=prediction_length):
                out = self.model.predict([r[0].copy() for r in rows], past_feat_dynamic_real=[r[1:].T.copy() for r in rows])
            forecast = np.asarray(out, dtype=np.float64).transpose(0, 2, 1)[:, None]  # (m, 1, H, Q)
            return variate_columns(forecast, levels, lambda q: self._indices([q])[0])
        series = []
        for row in windows:  # a window's leading NaNs: a shorter series (as a list of series is given to predict)
            k = _leading(np.isnan(row))
            series.append(row[k:].copy() if k < row.size else row.copy())
        with self.model.hparams_context(prediction_length=prediction_length):
            out = self.model.predict(series)  # (n, Q, H)
        return np.asarray(out, dtype=np.float64).transpose(0, 2, 1)[..., self._indices(levels)]

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        if self.variates and np.isnan(windows).any():
            raise InputError(
                "Moirai 2 with covariates: the target or a covariate holds NaN (missing values), which predict pads and "
                "imputes per series on its own; give them without missing values, or use rnnshap.ShapleyExplainer on a "
                "function calling predict"
            )
        return np.nan_to_num(windows, nan=0.0)  # a missing step is never read (stripped, or imputed from the others)

    def module_for(self, prediction_length: int, levels: list[Any], missing: np.ndarray) -> Any:
        if self.variates:
            return self._covariates_module(prediction_length, levels)
        return self.module(prediction_length, levels, missing)

    def _covariates_module(self, prediction_length: int, levels: list[Any]) -> Any:
        """``forward`` on flat windows (n, (1 + C)·R) of one target and C past covariates (R <= context_length
        steps each, no missing value), laid out as ``predict`` lays them out: each padded in front with its own first
        value (the target's padding marked ``past_is_pad``), every step observed."""
        import torch

        H, count = prediction_length, self.variates
        columns = self._indices([level for _, level in levels])
        C = self.context_length()

        def forward(net: Any, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            x = x.reshape(n, count, -1)
            length = x.shape[-1]
            if length < C:
                x = torch.cat([x[..., :1].expand(n, count, C - length), x], dim=-1)
            pad = torch.arange(C, device=x.device)[None].expand(n, -1) < C - length
            observed = torch.ones(n, C, 1, dtype=torch.bool, device=x.device)
            covariates = x[:, 1:].transpose(1, 2)  # (n, C, covariates)
            with net.hparams_context(prediction_length=H):
                out = net(
                    past_target=x[:, 0, :, None], past_observed_target=observed, past_is_pad=pad,
                    past_feat_dynamic_real=covariates,
                    past_observed_feat_dynamic_real=torch.ones_like(covariates, dtype=torch.bool),
                )  # fmt: skip
            return out.transpose(1, 2)[..., columns].reshape(n, -1)

        doc = "``Moirai2Forecast.forward`` on one target and its past covariates, flat (n, (1 + C)·R) -> (n, H·Q)."
        return net_module(self.model, forward, doc)

    def module(self, prediction_length: int, levels: list[Any], missing: np.ndarray | None = None) -> Any:
        import torch
        from uni2ts.transform.imputation import CausalMeanImputation

        H = prediction_length
        columns = self._indices(levels)
        C = self.context_length()
        if missing is None:
            missing = np.zeros(0, dtype=bool)
        k = _leading(missing)
        if k == missing.size and k:  # nothing observed: predict takes the whole window, all unobserved
            k = 0
        gaps = missing[k:]
        impute = None
        if gaps.any():  # predict's imputation, an affine map for this pattern: taken from the library's own function
            length = gaps.size
            basis = np.concatenate([np.zeros((1, length)), np.eye(length)])
            filled = []
            for row in basis:
                given = np.where(gaps, np.nan, row)[:, None]
                filled.append(np.asarray(CausalMeanImputation()(given), dtype=np.float64).reshape(-1))
            offset = filled[0]
            impute = (
                torch.as_tensor(np.stack(filled[1:]) - offset, dtype=torch.float32),  # (from, to)
                torch.as_tensor(offset, dtype=torch.float32),
            )
        observed_steps = torch.as_tensor(~gaps)

        def forward(net: Any, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            x = x[:, k:]  # the leading missing steps: a shorter series
            observed = observed_steps.to(x.device)[None].expand(x.shape[0], -1) if gaps.size else None
            if impute is not None:
                x = x @ impute[0].to(x.device) + impute[1].to(x.device)
            length = x.shape[1]
            if observed is None:
                observed = torch.ones(n, length, dtype=torch.bool, device=x.device)
            if length >= C:  # the last context_length steps, or the front padded with the first value
                target, seen = x[:, length - C :], observed[:, length - C :]
                pad = torch.zeros(n, C, dtype=torch.bool, device=x.device)
            else:
                target = torch.cat([x[:, :1].expand(n, C - length), x], dim=1)
                seen = torch.cat([observed[:, :1].expand(n, C - length), observed], dim=1)
                pad = torch.arange(C, device=x.device)[None].expand(n, -1) < C - length
            with net.hparams_context(prediction_length=H):
                out = net(past_target=target[..., None], past_observed_target=seen[..., None], past_is_pad=pad)
            return out.transpose(1, 2)[..., columns].reshape(n, -1)

        doc = "``Moirai2Forecast.forward`` on the windows laid out as ``predict`` lays them out: (n, L) -> (n, H·Q)."
        return net_module(self.model, forward, doc)
