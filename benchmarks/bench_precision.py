"""What TensorFloat-32 does to an explanation on a GPU, per framework (PyTorch, and Flax on JAX where it is installed).

On an NVIDIA GPU since Ampere, cuDNN computes its recurrent layers and convolutions at TF32 by default, and XLA its
float32 products: their operands rounded to 10 bits of mantissa. rnnshap runs the model in IEEE float32 instead
(``rnnshap/engines/precision.py``). For an LSTM model on the device this prints:

- ``TF32 vs float32``: how far the model's own outputs at the framework's default precision are from its outputs in
  IEEE float32 (relative to the largest);
- ``additivity``: Σ values against f(x) − E f in IEEE float32, relative to the largest |f(x) − E f|;
- ``at the default``: the same with rnnshap's own switch taken away (the model run at the framework's default), where
  the additivity check raised before rnnshap ran the model in IEEE float32.

    python benchmarks/bench_precision.py            # on the first GPU
    python benchmarks/bench_precision.py --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402
from rnnshap.engines import precision  # noqa: E402


@contextlib.contextmanager
def framework_default() -> Any:
    """rnnshap's calls without its float32 switches (``engines/precision.py``): the model at the framework's default."""
    saved = precision.float32_in_full
    precision.float32_in_full = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        precision.float32_in_full = saved


def report(name: str, model: Callable[[np.ndarray], np.ndarray], in_full: Callable[[], Any], explained: Any,
           background: np.ndarray, x: np.ndarray) -> None:  # fmt: skip
    default = model(x)
    with in_full():
        full, full_background = model(x), model(background)
    gap = full - full_background.mean(0)
    tf32 = float(np.abs(default - full).max() / np.abs(full).max())

    def additivity() -> str:
        try:
            values = np.asarray(rnnshap.DeepExplainer(explained, background).shap_values(x))
        except rnnshap.AdditivityError as error:
            return f"raised: {str(error)[:110]}..."
        except Exception as error:  # noqa: BLE001 - another failure is a result too (a newer JAX's jaxpr, say)
            return f"fails: {type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"
        return f"{np.abs(values.reshape(len(x), -1, gap.shape[1]).sum(1) - gap).max() / np.abs(gap).max():.1e}"

    ours = additivity()
    with framework_default():
        theirs = additivity()
    print(f"| {name} | {tf32:.1e} | {ours} | {theirs} |")


def torch_case(device: str) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    lstm, head = nn.LSTM(5, 64, num_layers=2, batch_first=True).to(device).eval(), nn.Linear(64, 3).to(device).eval()

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    model = Head()
    rng = np.random.default_rng(0)
    background, x = (rng.normal(size=(n, 40, 5)).astype(np.float32) for n in (16, 8))

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(a, device=device)).double().cpu().numpy()

    report(f"PyTorch nn.LSTM on {device}", run, precision.float32_in_full, model, background, x)


def flax_case() -> None:
    try:
        import jax
        import jax.numpy as jnp
        from flax import nnx
    except ImportError as error:
        print(f"| Flax | not installed ({error}) | | |")
        return

    class Forecaster(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.rnn = nnx.RNN(nnx.LSTMCell(5, 64, rngs=rngs))
            self.head = nnx.Linear(64, 3, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.head(self.rnn(x)[:, -1])

    model = Forecaster(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    background, x = (rng.normal(size=(n, 40, 5)).astype(np.float32) for n in (16, 8))
    platform = jax.devices()[0].platform
    report(f"Flax nnx.LSTMCell on {platform}", lambda a: np.asarray(model(jnp.asarray(a)), dtype=np.float64),
           lambda: jax.default_matmul_precision("float32"), model, background, x)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="torch's device (default: cuda where there is one)")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print("| model | TF32 vs float32 | additivity (rnnshap) | at the framework's default |\n|---|---|---|---|")
    torch_case(device)
    flax_case()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
