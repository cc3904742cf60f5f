"""The dispatch from a foundation model to its :class:`~rnnshap.forecasting.foundation.adapters.Adapter`, by the
module its class comes from (no library imported first), its library's version checked."""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from .. import check_version
from .adapters import Adapter, library_missing


def adapter_class(model: Any) -> type[Adapter] | None:
    """The adapter for ``model``'s type, by the module its class comes from (no library imported first)."""
    modules = [getattr(c, "__module__", "") or "" for c in type(model).__mro__]
    root = {m.split(".")[0] for m in modules}
    if "tsfm_public" in root:
        from .tinytimemixer import TinyTimeMixerAdapter

        return TinyTimeMixerAdapter
    if "timesfm3" in root:
        from .timesfm3 import TimesFM3Adapter

        return TimesFM3Adapter
    if "timesfm" in root:
        from .timesfm import TimesFMAdapter

        return TimesFMAdapter
    if "chronos" in root:
        from .chronos import chronos_adapter

        return chronos_adapter(model)
    if "tirex" in root:
        from .tirex import TiRexAdapter

        return TiRexAdapter
    if "uni2ts" in root:
        from .moirai2 import Moirai2Adapter

        return Moirai2Adapter
    if "toto2" in root:
        from .toto2 import Toto2Adapter

        return Toto2Adapter
    if "toto" in root:
        from .toto import TotoAdapter

        return TotoAdapter
    if "momentfm" in root:
        from .moment import MomentAdapter

        return MomentAdapter
    return None


SUPPORTED = (
    "a chronos ChronosBoltPipeline or Chronos2Pipeline (or the model inside), a tirex model (tirex.load_model), a timesfm "
    "TimesFM_2p5_200M_torch compiled with its ForecastConfig, a timesfm3 TimesFM3Forecaster, a granite-tsfm "
    "TinyTimeMixerForPrediction, a momentfm MOMENTPipeline (task_name='forecasting'), a uni2ts Moirai2Forecast, a toto "
    "TotoForecaster (or its Toto), a toto2 Toto2Model"
)


def adapter_for(model: Any) -> Adapter:
    """The :class:`Adapter` of ``model`` (its library's version checked), or an InputError naming what is taken."""
    cls = adapter_class(model)
    if cls is None:
        raise InputError(
            f"rnnshap.foundation.explain takes {SUPPORTED}; got {type(model).__module__}.{type(model).__name__}. "
            "For another torch forecaster use rnnshap.DeepExplainer on a module from context windows to its forecast "
            "(docs/recipes.md)"
        )
    try:
        check_version(cls.distribution)
    except ModuleNotFoundError as error:  # no package metadata, and no module of the distribution's name
        if not cls.extra:
            raise
        raise library_missing(cls, error) from error
    return cls(model)
