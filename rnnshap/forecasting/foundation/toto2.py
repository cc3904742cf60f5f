"""toto-2's Toto 2 (``toto2.model.Toto2Model``, toto-2 2.0.0): ``model.forecast(inputs, horizon)``.

``forecast`` takes ``{"target": (b, variates, L), "target_mask": bool, "series_ids": (b, variates)}`` (``L`` whole
patches) and returns every quantile, ``(Q, b, variates, H)``: the causal patch scaler over the observed steps (the
mask of the context's last patch forced True), ``asinh`` of the scaled context, the transformer, and past its first
output patches the rollout that feeds the median back, patch by patch.

Each window is one series (one variate, ``series_ids`` 0), or, given ``(n, V, L)``, V variates of one series (every
variate's forecast reads every variate's context); a missing value (NaN) is given as ``target_mask`` False with
the value 0. DeepSHAP explains ``forecast`` itself on those inputs, the mask a context input (the explained window's
for it and its references alike): a missing step is no player and gets exactly 0. The columns are the quantile levels
of its output head.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import ObservedMaskAdapter, net_module, quantile_columns, variate_columns


class Toto2Adapter(ObservedMaskAdapter):
    distribution = "toto-2"
    label = "Toto 2"
    drops = "NaN (target_mask False, the value 0)"
    multivariate = True

    def __init__(self, model: Any) -> None:
        from toto2.model import Toto2Model

        if not isinstance(model, Toto2Model):
            raise InputError(f"rnnshap.foundation takes toto2's Toto2Model; got {type(model).__name__}")
        super().__init__(model)

    def patch_length(self) -> int:
        return int(self.model.config.patch_size)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        return list(quantile_columns(self.model.output_head.knots, requested, self.label))

    def torch_modules(self) -> list[Any]:
        return [self.model]

    def _index(self, level: Any) -> int:
        trained = [float(q) for q in self.model.output_head.knots]
        return min(range(len(trained)), key=lambda j: abs(trained[j] - float(level)))

    def _check_length(self, L: int) -> None:
        patch = self.patch_length()
        if L % patch:
            raise InputError(
                f"{self.label}'s forecast takes contexts of whole patches of {patch} steps; the context has {L}. Give "
                f"windows of a multiple of {patch} steps (or pad their front with NaN: unobserved steps, exactly 0)"
            )

    def _inputs(self, x: Any, observed: Any) -> dict[str, Any]:
        """The inputs of windows ``x`` with the observed mask: (n, L), one variate each, or flat multivariate windows
        (n, V·L), the V variates of one series (``series_ids`` 0)."""
        import torch

        target = self.shaped(x)
        return {
            "target": target,
            "target_mask": self.shaped(observed),
            "series_ids": torch.zeros(target.shape[:2], dtype=torch.long, device=x.device),
        }

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        import torch

        self._check_length(windows.shape[1] // max(1, self.variates))
        device = next(self.model.parameters()).device
        x, observed = self.observed_tensors(windows, torch.float32, device)
        with torch.no_grad():
            quantiles = self.model.forecast(self._inputs(x, observed), prediction_length)  # (Q, n, V, H)
        out = quantiles[..., :prediction_length].permute(1, 2, 3, 0)
        return variate_columns(out.double().cpu().numpy(), levels, self._index)

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        self._check_length(windows.shape[1] // max(1, self.variates))
        return super().deepshap_windows(windows)

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        import torch

        adapter = self

        def forward(net: Any, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
            quantiles = net.forecast(adapter._inputs(x, observed), prediction_length)
            out = quantiles[..., :prediction_length].permute(1, 2, 3, 0)
            return variate_columns(out, levels, adapter._index).reshape(x.shape[0], -1)

        doc = "``Toto2Model.forecast`` of windows (n, L) or (n, V·L) with their observed mask: (n, H·C)."
        return net_module(self.model, forward, doc)
