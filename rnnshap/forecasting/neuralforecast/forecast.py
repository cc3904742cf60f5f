"""The function explained for one batch of windows of a neuralforecast model: its point forecast (an IQLoss model's
asked quantiles as predict reports them), or its distribution's parameters in the data's units (a recurrent model
rolled out with the distribution's mean fed back)."""

from __future__ import annotations

from typing import Any, Sequence

from .models import IQ_GRID, WINDOW_KEYS, distribution_mean


class ForecastBuilder:
    """Builds the module ``f(*windows) -> (n, k)`` explained for one batch of windows of one model."""

    def __init__(
        self, model: Any, y_idx: Any, horizons: list[int], outputs: list[int], present: list[str], series: list[int],
        iq_quantiles: list[float] | None = None,
    ) -> None:
        self.model, self.y_idx, self.horizons, self.outputs, self.present = model, y_idx, horizons, outputs, present
        #: the explained series of a multivariate model ([0] for a univariate one)
        self.series = series
        #: an IQLoss model asked quantiles= / level=: those quantiles, each ``np.quantile`` (linear) over the network's
        #: forecasts at :data:`IQ_GRID`, as ``NeuralForecast.predict`` reports them (the outputs then index them)
        self.iq_quantiles = iq_quantiles

    def point_module(self) -> Any:
        """The forecast in the network's scaled units (the scaler neutralized by the caller): (n, H·S·O), horizon-major,
        then series (one for a univariate model), then output.

        A multivariate model's ``stat_exog`` is one ``[n_series, S]`` table for the whole batch in neuralforecast; here
        each window carries its own copy (``[n, n_series, S]``) and the network runs window by window, so that the
        copy of each window is attributed."""
        import torch
        from torch import nn

        parent = self

        class Forecast(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = parent.model

            def forward(self, *windows: Any) -> Any:
                batch = parent._batch(windows)
                if parent.model.MULTIVARIATE and batch["stat_exog"] is not None:
                    rows = []
                    for r in range(batch["stat_exog"].shape[0]):
                        one = {k: None if v is None else v[r] if k == "stat_exog" else v[r : r + 1] for k, v in batch.items()}
                        rows.append(self.one(one))
                    return torch.cat(rows)
                return self.one(batch)

            def one(self, batch: dict[str, Any]) -> Any:
                model = self.net
                step = model._predict_step_recurrent_batch if model.RECURRENT else model._predict_step_direct_batch
                if parent.iq_quantiles is not None:
                    y_hat = self.iq(step, batch)
                else:
                    # (n, H, n_outputs), MQLoss direct: (n, H, 1, Q); multivariate: (n, H, n_series[, Q])
                    y_hat = step(y_idx=parent.y_idx, **batch)
                n_series = model.n_series if model.MULTIVARIATE else 1
                y_hat = y_hat.reshape(y_hat.shape[0], y_hat.shape[1], n_series, -1)
                y_hat = y_hat[:, parent.horizons][:, :, parent.series][:, :, :, parent.outputs]
                return y_hat.reshape(y_hat.shape[0], -1)

            def iq(self, step: Any, batch: dict[str, Any]) -> Any:
                """The asked quantiles as predict reports them: the network run at each quantile of
                :data:`IQ_GRID` (the quantile an input of its IQN head), then ``np.quantile``'s linear interpolation
                over those forecasts, written as ``torch.quantile`` (sort and interpolation: exact rules).
                (n, H[, n_series], Q)"""
                loss, kept = self.net.loss, self.net.loss.q
                try:
                    forecasts = []
                    for q in IQ_GRID:
                        loss.update_quantile(q=[q])
                        forecasts.append(step(y_idx=parent.y_idx, **batch).reshape(batch["insample_y"].shape[0], -1))
                finally:
                    loss.update_quantile(q=[kept])
                grid = torch.stack(forecasts, dim=-1)  # (n, H·n_series, 11)
                quantiles = list(parent.iq_quantiles or ())
                asked = torch.tensor(quantiles, dtype=grid.dtype, device=grid.device)
                y_hat = torch.quantile(grid, asked, dim=-1, interpolation="linear")  # (Q, n, H·n_series)
                n_series = self.net.n_series if self.net.MULTIVARIATE else 1
                return y_hat.permute(1, 2, 0).reshape(grid.shape[0], -1, n_series, len(quantiles))

        return Forecast()

    def distribution_module(self, loc: Any, scale: Any) -> Any:
        """The distribution's parameters in the data's units for one window (its loc, scale fixed): (n, H·O)."""
        import torch
        from torch import nn

        parent = self

        class Parameters(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = parent.model

            def forward(self, *windows: Any) -> Any:
                batch = parent._batch(windows)
                model = self.net
                n = batch["insample_y"].shape[0]
                where = {"loc": loc.expand(n, *loc.shape[1:]), "scale": scale.expand(n, *scale.shape[1:])}
                if model.RECURRENT:
                    params = parent._rollout(batch, where)
                else:
                    output = model.loss.domain_map(model(batch))
                    args = model.loss.scale_decouple(output=output, **where)
                    params = torch.stack([a.reshape(n, a.shape[1]) for a in args], dim=-1)  # (n, H, P)
                return params[:, parent.horizons][:, :, parent.outputs].reshape(n, -1)

        return Parameters()

    def _rollout(self, batch: dict[str, Any], where: dict[str, Any]) -> Any:
        """``_predict_step_recurrent_batch`` with a DistributionLoss, the sampling left out: each step's
        distribution parameters, the distribution's mean (scaled) fed back as the next input. (n, H, P)"""
        import torch

        model = self.model
        loss, L = model.loss, model.input_size
        model.rnn_state, model.maintain_state, model.h = None, True, 1
        try:
            steps = []
            y = batch["insample_y"][:, :L]
            mask = None if batch["insample_mask"] is None else batch["insample_mask"][:, :L]
            for tau in range(model.predict_horizon):
                def exog(key: str) -> Any:
                    x = batch[key]
                    if x is None or key == "stat_exog":
                        return x
                    return x[:, :L] if tau == 0 else x[:, L + tau - 1].unsqueeze(1)

                windows = {
                    "insample_y": y, "insample_mask": mask, "futr_exog": exog("futr_exog"), "hist_exog": exog("hist_exog"),
                    "stat_exog": batch["stat_exog"],
                }  # fmt: skip
                args = loss.scale_decouple(output=loss.domain_map(model(windows)), **where)
                steps.append(torch.stack([a.reshape(a.shape[0], -1)[:, -1] for a in args], dim=-1))  # (n, P)
                mean = distribution_mean(loss.distribution, args)
                y, mask = model.scaler.scaler(mean, where["loc"], where["scale"]), None
            return torch.stack(steps, dim=1)
        finally:
            model.maintain_state, model.rnn_state, model.h = False, None, model.horizon_backup

    def _batch(self, windows: Sequence[Any]) -> dict[str, Any]:
        batch: dict[str, Any] = {key: None for key in WINDOW_KEYS}
        batch.update(zip(self.present, windows, strict=True))
        return batch
