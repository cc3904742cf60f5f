"""Freed memory kept for reuse on the CPU (``rnnshap/engines/pytorch/memory.py``): after a PyTorch explanation on the
CPU, a block of 30 MiB comes from glibc's heap, not from fresh pages of the kernel, and stays there once freed; with
``RNNSHAP_KEEP_MEMORY=0`` glibc's defaults hold (the block is mapped apart). The values are the same bit for bit.
Each case runs in a process of its own: the setting is the process's."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

SCRIPT = r"""
import ctypes, hashlib, json, torch, rnnshap
from tests.models.torch import RecurrentHead

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
torch.manual_seed(0)
model = RecurrentHead("lstm", 3, 8, 2).eval()
g = torch.Generator().manual_seed(1)
background, X = torch.randn(6, 5, 3, generator=g), torch.randn(4, 5, 3, generator=g)
values = rnnshap.DeepExplainer(model, background).shap_values(X)
block = torch.empty(30 << 18)  # 30 MiB of float32
block.fill_(1.0)
mapped_apart = libc.mallinfo2().hblkhd >= 30 << 20
del block
print(json.dumps({
    "mapped_apart": mapped_apart,
    "free_in_heap": libc.mallinfo2().fordblks >= 30 << 20,
    "values": hashlib.sha256(b"".join(v.tobytes() for v in values)).hexdigest(),
}))
"""


def _run(**given: str) -> dict[str, object]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    unset = ("RNNSHAP_KEEP_MEMORY", "LD_PRELOAD", "GLIBC_TUNABLES")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in unset} | given
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cpu_explanation_keeps_freed_memory_for_the_next_tensor_and_the_values_do_not_move() -> None:
    kept, default = _run(), _run(RNNSHAP_KEEP_MEMORY="0")
    assert default["mapped_apart"] and not default["free_in_heap"]  # glibc's defaults: fresh pages, given back
    assert not kept["mapped_apart"] and kept["free_in_heap"]  # from the heap, and kept there once freed
    assert kept["values"] == default["values"]


def test_a_process_that_tunes_its_own_malloc_is_left_as_it_is() -> None:
    tuned = _run(MALLOC_ARENA_MAX="4")  # (a setting of the user's that does not keep memory itself)
    assert tuned["mapped_apart"] and not tuned["free_in_heap"]
