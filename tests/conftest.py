"""Shared helpers for the rnnshap test suite.

Everything here is an *independent* reference: model outputs are computed by calling the model
directly, never through rnnshap, so that a test comparing rnnshap's attributions with them can
fail.
"""

from __future__ import annotations

import os

# transformers (pulled in by the foundation forecasters: chronos, granite-tsfm, timesfm) reaches for its TensorFlow side
# whenever shap asks whether a model is a transformers model (shap.Explainer's is_transformers_lm), and fails under
# Keras 3 without tf-keras. The suite runs shap as a peer beside those libraries: keep transformers on torch.
os.environ.setdefault("USE_TF", "0")

# Keras on JAX (KERAS_BACKEND=jax): JAX computes float64 as float32 unless x64 is on, so the suite's float64 models
# would be float32 models there. The suite runs JAX with x64, as a user who declares float64 must (docs/keras.md);
# tests/engines/keras/test_keras_jax_without_tensorflow.py checks the engine on a JAX without x64 (float64 declared,
# float32 computed).
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault("JAX_ENABLE_X64", "1")

from pathlib import Path  # noqa: E402
from typing import Callable, Iterator, Sequence, Union  # noqa: E402

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from .keras_process import KerasProcess

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]

# Derandomised by default so that a run is reproducible; HYPOTHESIS_PROFILE=thorough explores more.
settings.register_profile(
    "rnnshap",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=500,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rnnshap"))

# The suite's models are small and their tensors tiny: torch's intra-op threads cost more than they
# give. On 2 shared cores a GRU over 500 steps took 5.8 s a call with 2 threads and 0.05-0.18 s with
# one. One thread here, and in the processes the tests start (Keras on torch, Ray and Spark workers);
# RNNSHAP_TEST_THREADS sets another number.
TEST_THREADS = int(os.environ.get("RNNSHAP_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(TEST_THREADS))
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(TEST_THREADS))  # read when TensorFlow starts (a test module imports it later)

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--trace-every-pass", action="store_true",
        help="run every PyTorch explainer's input passes as traced programs, traced at the first call (CI's traced stage)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--trace-every-pass"):
        from rnnshap.engines.pytorch import traced

        traced.EVERY_PASS = True


#: the Keras engine's suite: marked ``keras`` (selected with -m keras, a CI stage of its own on each Keras backend)
KERAS_SUITE = Path(__file__).parent / "engines" / "keras"


@pytest.hookimpl(tryfirst=True)  # (before -m selects by the markers)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Keras engine's suite (:data:`KERAS_SUITE`) marked ``keras``; ``@pytest.mark.tensorflow_only(reason=...)``
    (pyproject.toml): skipped where Keras runs another backend (KERAS_BACKEND=jax), with its reason; a use without a
    reason is an error on every backend."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    for item in items:
        if KERAS_SUITE in item.path.parents:
            item.add_marker(pytest.mark.keras)
        marker = item.get_closest_marker("tensorflow_only")
        if marker is None:
            continue
        reason = marker.kwargs.get("reason")
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.tensorflow_only needs reason=... (why it is TensorFlow's)")
        if backend != "tensorflow":
            item.add_marker(pytest.mark.skip(reason=f"TensorFlow only: {reason}"))


def in_turn(cases: Sequence[object]) -> list[object]:
    """``cases`` for ``pytest.mark.parametrize`` with every other one marked slow: the default run takes half of an
    exhaustive grid (arrange ``cases`` so that each value of each axis falls in that half), the slow run the rest. A
    case is a tuple of the values of several argnames (the value of a single argname must not be a tuple)."""
    return [
        pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=[pytest.mark.slow] if i % 2 else [])
        for i, case in enumerate(cases)
    ]


def eps(dtype: object) -> float:
    """The machine epsilon of a torch dtype, a numpy dtype or a dtype name ("float32")."""
    name = getattr(dtype, "__name__", None) or str(dtype).removeprefix("torch.")  # np.float32 is a class
    return float(torch.finfo(getattr(torch, name)).eps)  # torch knows bfloat16, numpy does not


#: Float tolerances are in units of the dtype's eps, relative to max(1, |what is compared|):
#: values of order one (activations, outputs) carry an absolute rounding error of a few eps per
#: operation, larger values a relative one.
#:
#: ROUNDING_ULPS: the same float computation done twice in another way (another batch size or
#: order, another kernel: oneDNN or not, AVX-512 or not, another framework) differs by rounding
#: only. The models here are a few layers deep and a few dozen wide: a few dozen roundings on the
#: longest path, so 64 eps (7.6e-6 in float32) has margin on any CPU and is far below any error
#: of substance (a wrong row, a wrong mean: 1e-2 and more).
ROUNDING_ULPS = 64

#: additivity tolerances of the issue: |Σφ − Δ| ≤ TOL·max(1, |Δ|), about 84 eps in float32 (a
#: backward pass adds roundings of its own to those of the forward)
ADDITIVITY_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

#: float32 attributions against the same model's float64 ones, relative to max|φ|: the secants
#: (f(x) − f(r))/(x − r) of the rules lose digits where x − r is small (eps·|f|/|x − r|), so the
#: bound is 2^13 eps (1e-3), far below the size of an error of substance (a wrong rule: 1e-1).
FLOAT32_VS_FLOAT64 = 2**13 * float(np.finfo(np.float32).eps)


def additivity_tol(dtype: object) -> float:
    """:data:`ADDITIVITY_TOL` for a torch dtype, a numpy dtype or a dtype name."""
    return ADDITIVITY_TOL[{eps(d): d for d in ADDITIVITY_TOL}[eps(dtype)]]


def secant_rounding_tol(dtype: object) -> float:
    """Two computations of the same attributions in another order (blocks of pairs, a fused path):
    a rounding difference of eps in a Rescale quotient's numerator is divided by its Δx, which the
    rule allows down to eps**(1/3) (below it takes the midpoint derivative), so eps**(2/3) relative
    to the size of the numbers computed: 2.4e-5 in float32, 3.7e-11 in float64."""
    return eps(dtype) ** (2 / 3)


def rounding_tol(dtype: object, ulps: float = ROUNDING_ULPS) -> float:
    """``ulps`` eps of ``dtype``: a relative tolerance for use with :func:`assert_rounding_close`."""
    return ulps * eps(dtype)


def assert_rounding_close(actual: object, expected: object, dtype: object, ulps: float = ROUNDING_ULPS, what: str = "") -> None:
    """|actual − expected| ≤ ulps·eps(dtype)·max(1, |expected|), element by element: two computations
    of the same float quantity that may differ by rounding only."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    excess = np.abs(a - b) / np.maximum(1.0, np.abs(b))
    tol = rounding_tol(dtype, ulps)
    worst = float(excess.max()) if excess.size else 0.0
    assert worst <= tol, f"{what}: |a − b| / max(1, |b|) = {worst:.3g} > {ulps:g} eps of {dtype} ({tol:.3g})"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    np.random.seed(0)


def as_list(x: object) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def model_outputs(model: torch.nn.Module, inputs: object) -> np.ndarray:
    """The model's outputs on ``inputs`` (a tensor or a list of tensors), as float64 ``(n, k)``."""
    tensors = [torch.as_tensor(t).clone() for t in as_list(inputs)]  # a model may modify its input in place
    with torch.no_grad():
        out = model(*tensors)
    return out.reshape(out.shape[0], -1).detach().to(torch.float64).cpu().numpy()


def output_gap(model: torch.nn.Module, X: object, background: object) -> np.ndarray:
    """f(x) − mean_r f(r) for every sample and output, float64 ``(n, k)``, computed directly."""
    return model_outputs(model, X) - model_outputs(model, background).mean(0, keepdims=True)


def phi_totals(values: ArrayOrList, n: int, k: int) -> np.ndarray:
    """Σφ over every input feature (and every input of a multi-input model): ``(n, k)``."""
    total = np.zeros((n, k))
    for v in as_list(values):
        v = np.asarray(v, dtype=np.float64)
        total += v.reshape(n, -1, k).sum(1)
    return total


def additivity_excess(values: ArrayOrList, model: torch.nn.Module, X: object, background: object) -> np.ndarray:
    """|Σφ − Δ| / max(1, |Δ|) per (sample, output)."""
    gap = output_gap(model, X, background)
    n, k = gap.shape
    return np.abs(phi_totals(values, n, k) - gap) / np.maximum(1.0, np.abs(gap))


def assert_additive(values: ArrayOrList, model: torch.nn.Module, X: object, background: object, dtype: torch.dtype) -> float:
    """Assert the issue's additivity tolerance; return the worst relative error."""
    excess = additivity_excess(values, model, X, background)
    worst = float(excess.max())
    tol = ADDITIVITY_TOL[dtype]
    assert worst <= tol, f"additivity error {worst:.3g} > {tol:g} (worst at {np.unravel_index(excess.argmax(), excess.shape)})"
    return worst


def relative_to_max(a: ArrayOrList, b: ArrayOrList) -> float:
    """max|a − b| / max|b| over every array of a (list of) array(s)."""
    diff = max(
        float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
        for x, y in zip(as_list(a), as_list(b), strict=True)
    )
    scale = max(float(np.abs(np.asarray(y, np.float64)).max()) for y in as_list(b))
    return diff / max(scale, np.finfo(np.float64).tiny)


def assert_adds_up_to(predicted: object, outputs: object, dtype: object, what: str = "E[f] + Σφ against f(x)") -> None:
    """E[f] + Σφ against the model's own f(x): the additivity tolerance, relative to max(1, |f(x)|)."""
    assert_rounding_close(predicted, outputs, dtype, ulps=additivity_tol(dtype) / eps(dtype), what=what)


@pytest.fixture(scope="session")
def keras_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], KerasProcess]]:
    """``keras_process(backend).run(script, *args)``: ``script`` run as ``python -c script args`` with
    ``KERAS_BACKEND=backend``, in one process per backend for the whole session (tests/keras_process.py)."""
    started: dict[str, KerasProcess] = {}
    folder = tmp_path_factory.mktemp("keras-process")

    def get(backend: str) -> KerasProcess:
        if backend not in started:
            started[backend] = KerasProcess(backend, folder / f"{backend}.stderr")
        return started[backend]

    yield get
    for process in started.values():
        process.close()
