"""What the neuralforecast door reads of a model: its name, its outputs, its distribution, an IQLoss model's quantiles,
and whether the door takes it (:func:`supported`)."""

from __future__ import annotations

from typing import Any, Sequence

#: the window tensors neuralforecast's networks read, in the order they are explained
WINDOW_KEYS = ("insample_y", "insample_mask", "futr_exog", "hist_exog", "stat_exog")


def model_name(model: Any) -> str:
    alias = getattr(model.hparams, "alias", None) if hasattr(model, "hparams") else None
    return str(alias) if alias else type(model).__name__


def is_distribution(model: Any) -> bool:
    return bool(getattr(model.loss, "is_distribution_output", False))


def n_outputs(model: Any) -> int:
    """How many outputs ``outputs=`` indexes: the distribution's parameters, else the loss's outputs."""
    if is_distribution(model):
        return len(model.loss.param_names)
    return len(model.loss.output_names)


#: the mean of each distribution neuralforecast's recurrent rollout feeds back, from its parameters
MEANS = {
    "Normal": lambda args: args[0],
    "StudentT": lambda args: args[1],  # df = 3 + softplus(...) > 1
    "Poisson": lambda args: args[0],
    "Bernoulli": lambda args: args[0],
    "NegativeBinomial": lambda args: args[0] * args[1] / (1 - args[1]),
}


def distribution_mean(distribution: str, args: Sequence[Any]) -> Any:
    return MEANS[distribution](args)


#: the quantiles at which ``NeuralForecast.predict`` runs an IQLoss network when asked quantiles= or level=, in its
#: order (it reports ``np.quantile`` over these 11 forecasts: neuralforecast 3.3's core.py, "case 2: IQLoss")
IQ_GRID = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def is_iq(model: Any) -> bool:
    return type(model.loss).__name__ in ("IQLoss", "HuberIQLoss")


def asked_quantiles(quantiles: Sequence[float] | None, level: Sequence[float] | None) -> list[float] | None:
    """The quantiles ``NeuralForecast.predict`` forecasts for ``quantiles=`` / ``level=``, in its column order."""
    if level is not None:
        from neuralforecast.utils import level_to_quantiles

        return [float(q) for q in level_to_quantiles(sorted(set(level)))]
    return None if quantiles is None else [float(q) for q in sorted(set(quantiles))]


def supported(model: Any) -> str | None:
    """None where :func:`explain` takes ``model``, else why not (in neuralforecast's terms)."""
    name = model_name(model)
    if getattr(model, "MULTIVARIATE", False) and is_distribution(model):
        return (
            f"{name} is a multivariate model (MULTIVARIATE=True) with a {type(model.loss).__name__}: rnnshap.neuralforecast "
            "explains multivariate models with point, MQLoss or IQLoss outputs"
        )
    if is_distribution(model):
        loss = model.loss
        if getattr(loss, "distribution", None) in ("ISQF", "Tweedie") or type(loss).__name__ in ("PMM", "GMM", "NBMM"):
            return (
                f"{name} uses {type(loss).__name__}({getattr(loss, 'distribution', '')}), whose parameters have no fixed "
                "per-window mapping rnnshap follows; explain a point, MQLoss/IQLoss or Normal/StudentT/Poisson/"
                "NegativeBinomial DistributionLoss model"
            )
        if model.RECURRENT and getattr(loss, "distribution", None) not in MEANS:
            return f"{name} is recurrent with a {loss.distribution} DistributionLoss, whose mean rnnshap does not roll out"
    return None
