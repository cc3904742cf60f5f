"""xlstm: ``xLSTMBlockStack`` of mLSTM and sLSTM blocks (native PyTorch backends: the mLSTM's
``parallel_stabilized_simple``, the sLSTM's ``backend="vanilla"``) and ``xLSTMLarge`` with the
native kernels of mlstm_kernels (chunkwise, sequence and step).

Not here:

- ``xLSTMBlockStack.step`` (one step at a time): the library's own forward + backward fails on it
  (an in-place write into a tensor autograd saved), so it cannot be explained by any gradient method.
- sLSTM ``backend="cuda"`` and the triton kernels: they need a GPU.
- ``xLSTMLarge`` with the ``parallel--native_*`` kernels: in ``mode="inference"`` they assert that no
  initial state is given (``c_initial is not supported``), which that mode always passes, and in
  ``mode="train"`` xlstm 2.0.6 unpacks their single tensor as ``(h, state)``.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_causal, check, params, steps

pytest.importorskip("xlstm")
from xlstm import (  # noqa: E402
    FeedForwardConfig,
    mLSTMBlockConfig,
    mLSTMLayerConfig,
    sLSTMBlockConfig,
    sLSTMLayerConfig,
    xLSTMBlockStack,
    xLSTMBlockStackConfig,
)

T, F, E = 6, 3, 8

#: the sLSTM's vanilla pointwise step (xlstm/blocks/slstm/src/vanilla/slstm.py) branches in Python
#: on ``if torch.all(n == 0.0)`` (true at the first step only, for every row alike): followed, and
#: kept on the tape (tests/engines/pytorch/test_engine_reliability.py::test_a_branch_that_every_row_takes_alike_is_followed)


def _stack(kind: str) -> xLSTMBlockStack:
    mlstm = mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=2, qkv_proj_blocksize=2, num_heads=2))
    slstm = sLSTMBlockConfig(
        slstm=sLSTMLayerConfig(backend="vanilla", num_heads=2, conv1d_kernel_size=2, bias_init="powerlaw_blockdependent"),
        feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
    )
    blocks = {
        "mLSTM": dict(mlstm_block=mlstm, slstm_at=[]),
        "sLSTM": dict(slstm_block=slstm, slstm_at="all"),
        "mixed": dict(mlstm_block=mlstm, slstm_block=slstm, slstm_at=[1]),
    }[kind]
    return xLSTMBlockStack(xLSTMBlockStackConfig(context_length=T, num_blocks=2, embedding_dim=E, **blocks))


def stack(kind: str) -> Composite:
    """Linear embedding of the features, the library's block stack, a linear readout at two steps: (N, 2)."""
    return Composite(lambda m, x: m.head(m.stack(m.embed(x)))[:, steps(T), 0], embed=nn.Linear(F, E), stack=_stack(kind),
                     head=nn.Linear(E, 1))  # fmt: skip


def _read_large(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = m.lm(ids)
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits[:, steps(T), 0]


def large(chunkwise_kernel: str, mode: str, chunk_size: int, kernel_dtype: str = "float32") -> Composite:
    """``xLSTMLarge`` on token ids, the logit of token 0 at two steps: (N, 2)."""
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    config = xLSTMLargeConfig(
        embedding_dim=E, num_heads=2, num_blocks=2, vocab_size=11, chunk_size=chunk_size,
        chunkwise_kernel=chunkwise_kernel, sequence_kernel="native_sequence__native", step_kernel="native",
        mode=mode, return_last_states=mode == "train", autocast_kernel_dtype=kernel_dtype,
        norm_reduction_force_float32=kernel_dtype == "float32",
        ffn_round_up_to_multiple_of=8,
    )  # fmt: skip
    return Composite(_read_large, lm=xLSTMLarge(config))


def _stack_case(kind: str) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        return Case(stack(kind).eval(), [torch.randn(N_BACKGROUND, T, F)], [torch.randn(N_EXPLAINED, T, F)])

    return build


def _large_case(kernel: str, mode: str, chunk_size: int) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        model = large(kernel, mode, chunk_size).eval()
        # the float64 copy computes its kernels and norms in float64 too (the library casts them to
        # its autocast_kernel_dtype and to float32 whatever the parameters' dtype); the kernel with a
        # custom backward has no float64 version, so that copy runs the same chunkwise forward with
        # autograd's backward (the float32 model is the one with the custom autograd.Function)
        kernel64 = kernel.replace("native_custbw", "native_autograd")
        model64 = large(kernel64, mode, chunk_size, kernel_dtype="float64")
        model64.load_state_dict(model.state_dict())
        return Case(model, [torch.randint(0, 11, (N_BACKGROUND, T))], [torch.randint(0, 11, (N_EXPLAINED, T))], model64)

    return build


ZOO = {
    "xLSTMBlockStack-mLSTM": Spec(_stack_case("mLSTM"), slow=True),  # (the mixed stack's first block is an mLSTM)
    "xLSTMBlockStack-sLSTM-vanilla": Spec(_stack_case("sLSTM")),
    "xLSTMBlockStack-mixed": Spec(_stack_case("mixed")),
    "xLSTMLarge-chunkwise-inference": Spec(_large_case("chunkwise--native_autograd", "inference", 4)),
    "xLSTMLarge-chunkwise-train": Spec(_large_case("chunkwise--native_custbw", "train", 3)),
}


@pytest.mark.parametrize("name", params(ZOO))
def test_zoo(name: str) -> None:
    """Exact (and causal: output t gets exactly 0 from every later step), or refused by name."""
    result = check(ZOO[name])
    if ZOO[name].refused is None:
        assert_causal(result.values[0], T, name)


def test_mlstm_backend_alone_is_exact() -> None:
    """The chunkwise native kernel itself (inference mode, a sequence that is not a multiple of the
    chunk size, so it is padded) is exact: xLSTMLarge's failure above comes from its layer norm."""
    from mlstm_kernels.torch.backend_module import mLSTMBackend, mLSTMBackendConfig

    from .harness import assert_exact

    heads, dim = 2, 4

    def read(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        z = m.project(x).reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)
        q, k, v = z[..., :dim], z[..., dim : 2 * dim], z[..., 2 * dim : 3 * dim]
        h, _ = m.backend(q=q, k=k, v=v, i=z[..., -2], f=z[..., -1])
        return h[:, :, -1].flatten(1)

    torch.manual_seed(0)
    config = mLSTMBackendConfig(
        chunkwise_kernel="chunkwise--native_autograd", mode="inference", chunk_size=4, autocast_kernel_dtype="float32"
    )
    backend = Composite(read, project=nn.Linear(F, heads * (3 * dim + 2)), backend=mLSTMBackend(config))
    assert_exact(Case(backend.eval(), [torch.randn(N_BACKGROUND, T - 1, F)], [torch.randn(N_EXPLAINED, T - 1, F)]))
