"""tirex-ts' TiRex (``tirex.load_model(...)``: a ``TiRexZero``): ``model.forecast(context, prediction_length)``.

``forecast`` pads series of different lengths with NaN (missing) and calls ``_forecast_quantiles`` under
``torch.inference_mode``, which runs ``_forecast_tensor``: per output patch, the context cut or NaN-padded to
``train_ctx_len`` steps, a ``StandardScaler`` with ``nanmean`` (a floor of ``|loc| + 1e-5`` where the spread is
0), the ``isnan`` mask as a feature beside each patch, the sLSTM blocks (computing in bfloat16 on the ``torch``
backend), and for longer horizons the context extended by NaN patches. DeepSHAP explains ``_forecast_tensor``
itself (outside ``inference_mode``, whose tensors cannot enter a graph): the values add up to the forecast to
bfloat16's precision, as the model computes it. A missing value is NaN, as tirex takes it.

``precision="float32"`` explains a float32 twin instead: the same weights, with the sLSTM cell's recurrence run
in float32. tirex' torch backend casts the cell's input, state and recurrent kernel to bfloat16 in one place
(``sLSTMCell._impl_torch``; ``slstm_forward`` then computes in the kernel's dtype, its pointwise gates in
float32); the twin replaces that method on each cell, for the call only, by the same code without the casts, so
the library's own ``forecast()`` and the explained function are the twin's, and the values add up to its
forecast to float32 precision.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from ...errors import InputError
from .adapters import Adapter, net_module, quantile_columns


class TiRexAdapter(Adapter):
    distribution = "tirex-ts"
    label = "TiRex"
    drops = "NaN"
    agreement = 2.0**-7  # the sLSTM computes in bfloat16: its rounding moves with the rows batched together
    precisions = ("bfloat16", "float32")
    twin_note = "the sLSTM's recurrence in float32, its weights the model's"

    def __init__(self, model: Any) -> None:
        from tirex.models.tirex import TiRexZero

        if not isinstance(model, TiRexZero):
            raise InputError(f"rnnshap.foundation takes tirex' TiRexZero (tirex.load_model); got {type(model).__name__}")
        if any(getattr(block.slstm_layer.slstm_cell, "backend", "torch") != "torch" for block in model.blocks):
            raise InputError(
                "TiRex with backend='cuda' runs xlstm's fused CUDA kernels, which rnnshap cannot follow; load it with "
                "tirex.load_model(..., backend='torch')"
            )
        super().__init__(model)

    @contextlib.contextmanager
    def computing_in(self, precision: str) -> Iterator[None]:
        if precision == "bfloat16":
            yield
            return
        cells = [block.slstm_layer.slstm_cell for block in self.model.blocks]
        for cell in cells:
            cell._impl_torch = _float32_recurrence(cell)
        self.agreement = Adapter.agreement  # float32 throughout: the library's call and the module agree as closely
        try:
            yield
        finally:
            del self.agreement
            for cell in cells:
                cell.__dict__.pop("_impl_torch", None)

    def context_length(self) -> int:
        return int(self.model.config.train_ctx_len)

    def patch_length(self) -> int:
        return int(self.model.config.input_patch_size)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        return list(quantile_columns(self.model.config.quantiles, requested, self.label))

    def torch_modules(self) -> list[Any]:
        return [self.model]

    def _indices(self, levels: list[Any]) -> list[int]:
        trained = [float(q) for q in self.model.config.quantiles]
        return [min(range(len(trained)), key=lambda j: abs(trained[j] - q)) for q in levels]

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        import torch

        quantiles, _ = self.model.forecast(torch.as_tensor(windows, dtype=torch.float32), prediction_length=prediction_length)
        return quantiles.double().cpu().numpy()[..., self._indices(levels)]

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return windows  # NaN is tirex' missing value: its mask is a feature, its value 0

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        import torch

        columns = self._indices(levels)

        def forward(net: Any, x: torch.Tensor) -> torch.Tensor:
            quantiles = net._forecast_tensor(x, prediction_length).swapaxes(1, 2)
            return quantiles[..., columns].reshape(x.shape[0], -1)

        return net_module(self.model, forward, "``_forecast_tensor(x, prediction_length)`` with quantiles last: (n, H·Q).")


def _float32_recurrence(cell: Any) -> Any:
    """tirex' ``sLSTMCell._impl_torch`` for ``cell`` without its casts to bfloat16: input, state and recurrent kernel
    stay float32 (``slstm_forward`` computes in the kernel's dtype)."""
    import torch

    def impl(input: torch.Tensor, state: torch.Tensor) -> Any:
        config = cell.config
        input = input.to(dtype=torch.float32)
        state = state.to(dtype=torch.float32)
        kernel = cell._recurrent_kernel_.to(dtype=torch.float32)
        bias = cell._bias_.to(dtype=torch.float32)
        input = input.view(input.shape[0], input.shape[1], -1)
        bias = bias.reshape(config.num_heads, config.num_gates, config.head_dim).permute(1, 0, 2).reshape(-1)
        return cell._impl_forward_torch(input, state, kernel, bias)

    return impl
