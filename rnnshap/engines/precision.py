"""float32 computed as float32 while rnnshap runs a model, whatever the process's TensorFloat-32 settings.

On an NVIDIA GPU since Ampere, cuDNN computes its convolutions and recurrent layers at TensorFloat-32 by default,
and XLA and TensorFlow their float32 products: the operands rounded to 10 bits of mantissa. A model's outputs then
miss the multipliers' exact algebra by about 1e-3 of their scale (seen on an H200: the additivity check raised on
every recurrent model), so no attribution could add up to them at float32's precision. :func:`float32_in_full`, part
of :func:`rnnshap.engines.base.normal_mode`, turns that off for the duration of a call:

- torch >= 2.9: each operation's ``fp32_precision`` (cuBLAS's and cuDNN's, and oneDNN's on the CPU, where a user may
  have set "bf16") to "ieee"; and cuDNN's old switch (``torch.backends.cudnn.allow_tf32``) to False where it still
  reads (the process has not mixed the old and new switches), so that it reads inside too (a model's own
  ``torch.backends.cudnn.flags(...)``);
- torch < 2.9: the two ``allow_tf32`` flags and the float32 matrix-product precision;
- TensorFlow (where imported): its TF32 switch; JAX (where imported and computing on an accelerator):
  ``jax.default_matmul_precision("float32")`` (thread-local in JAX; a jitted function is compiled once more under it).

Every switch is set back to its own value after, the raw one included (an operation's "none" reads its backend's).
torch's and TensorFlow's switches are the process's: the first of concurrent calls (threads) sets them, the last
sets them back, under one lock; meanwhile another thread's model computes in full too.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Iterator

#: torch's switches of float32 precision (torch >= 2.9) set to "ieee", as (backend, operation) of
#: ``_get_fp32_precision_getter``: each operation's, and each backend's ("all"), which an operation's "none" reads (a
#: model's own ``torch.backends.cudnn.flags(...)`` sets cuDNN's operations back to "none" as it leaves)
SWITCHES = tuple((b, op) for b in ("cuda", "mkldnn") for op in ("all", "matmul", "conv", "rnn"))

_LOCK = threading.Lock()
#: the calls inside :func:`float32_in_full` now, and what the first of them found, to set back when the last leaves
_USERS = 0
_FOUND: list[Any] = []


@contextlib.contextmanager
def float32_in_full() -> Iterator[None]:
    """Every float32 product of torch, TensorFlow and JAX in IEEE float32 inside, the switches as they were after."""
    global _USERS
    jax = sys.modules.get("jax")
    with _LOCK:
        if _USERS == 0:
            _FOUND[:] = [_torch_in_full(sys.modules.get("torch")), _tf_in_full(sys.modules.get("tensorflow"))]
        _USERS += 1
    try:
        with jax.default_matmul_precision("float32") if jax is not None and jax_accelerated(jax) else contextlib.nullcontext():
            yield
    finally:
        with _LOCK:
            _USERS -= 1
            if _USERS == 0:
                for restore in _FOUND:
                    restore()
                _FOUND.clear()


def jax_accelerated(jax: Any) -> bool:
    """Whether JAX computes on an accelerator, where XLA's default precision rounds float32 products (TF32 on a GPU,
    bfloat16 passes on a TPU). On the CPU it computes them in full, and the setting, part of every jitted function's
    cache key, would only compile each of the model's operations once more."""
    try:
        return bool(jax.default_backend() != "cpu")
    except Exception:  # noqa: BLE001 (JAX imported in the process but without a backend that starts: it runs nothing)
        return False


def _nothing() -> None:
    return None


def _torch_in_full(torch: Any) -> Any:
    """torch's switches to IEEE float32; returns what sets them back."""
    if torch is None:
        return _nothing
    C = torch._C
    if not hasattr(C, "_get_fp32_precision_getter"):  # torch < 2.9: the old switches only
        cudnn, cublas, matmul = C._get_cudnn_allow_tf32(), C._get_cublas_allow_tf32(), torch.get_float32_matmul_precision()
        C._set_cudnn_allow_tf32(False)
        C._set_cublas_allow_tf32(False)

        def restore_old() -> None:
            C._set_cublas_allow_tf32(cublas)
            torch.set_float32_matmul_precision(matmul)
            C._set_cudnn_allow_tf32(cudnn)

        return restore_old
    get, put = C._get_fp32_precision_getter, C._set_fp32_precision_setter
    raw = {switch: get(*switch) for switch in SWITCHES}
    try:
        allowed: bool | None = C._get_cudnn_allow_tf32()
    except RuntimeError:  # (the process mixed the old and the new switches: the old one no longer reads)
        allowed = None
    if allowed is not None:  # cuDNN's old switch too, so that it still reads inside (a model's own cudnn.flags(...))
        C._set_cudnn_allow_tf32(False)
    for switch in SWITCHES:
        put(*switch, "ieee")

    def restore() -> None:
        if allowed is not None:
            C._set_cudnn_allow_tf32(allowed)
        for switch, value in raw.items():
            put(*switch, value)

    return restore


def _tf_in_full(tf: Any) -> Any:
    """TensorFlow's TF32 switch off; returns what sets it back."""
    config = getattr(getattr(tf, "config", None), "experimental", None)
    if config is None or not config.tensor_float_32_execution_enabled():
        return _nothing
    config.enable_tensor_float_32_execution(False)
    return lambda: config.enable_tensor_float_32_execution(True)
