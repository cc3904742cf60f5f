"""What the adapters of chronos' two pipelines (Chronos-Bolt in ``chronos.py``, Chronos-2 in ``chronos2.py``) share."""

from __future__ import annotations

from typing import Any

from .adapters import Adapter


class ChronosPipelineAdapter(Adapter):
    """What the adapters of chronos' pipelines share: the pipeline's model, its context length and patch size."""

    distribution = "chronos-forecasting"
    drops = "NaN"
    pipeline: Any

    def context_length(self) -> int:
        return int(self.pipeline.model_context_length)

    def patch_length(self) -> int:
        return int(self.pipeline.model.chronos_config.input_patch_size)

    def torch_modules(self) -> list[Any]:
        return [self.pipeline.model]
