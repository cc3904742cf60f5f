"""Freed memory kept for reuse on the CPU (``rnnshap/engines/pytorch/memory.py``): an explanation's second call takes
no fresh pages from the kernel, and the process's blocks up to 32 MiB come from glibc's heap and stay there once
freed; with ``RNNSHAP_KEEP_MEMORY=0`` glibc's defaults hold. The values are the same bit for bit. Each case runs in a
process of its own: the setting is the process's."""

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
import ctypes, hashlib, json, resource, torch, rnnshap
from torch import nn
from tests.models.torch import Composite

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
model = Composite(lambda m, x: m.head(m.layer(x)[:, -1]), layer=layer, head=nn.Linear(4, 2)).eval()
g = torch.Generator().manual_seed(1)
background, X = torch.randn(6, 400, 4, generator=g), torch.randn(6, 400, 4, generator=g)  # scores: 36 x 2 x 400 x 400
explainer = rnnshap.DeepExplainer(model, background)
mapped_during = []  # (bytes mapped apart by malloc while the layer's outputs, and the rules' 40 MB scores, are held)
model.layer.register_forward_hook(lambda *_: mapped_during.append(libc.mallinfo2().hblkhd))
for _ in range(2):  # (the heap takes its shape in the first calls)
    explainer.shap_values(X, check_additivity=False)
faults = []  # (fresh pages from the kernel, per call)
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    values = explainer.shap_values(X, check_additivity=False)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

def mapped_apart(mib, fill=True):
    block = torch.empty(mib << 18)  # (float32)
    if fill:
        block.fill_(1.0)
    return libc.mallinfo2().hblkhd >= mib << 20

small, large = mapped_apart(30), mapped_apart(2048, fill=False)  # (2 GiB, more than the heap holds free; untouched)
print(json.dumps({
    "faults": faults, "mapped_during": max(mapped_during), "small_mapped_apart": small, "large_mapped_apart": large,
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


def test_a_cpu_explanation_reuses_freed_memory_and_the_values_do_not_move() -> None:
    """Steady calls of an explanation whose rules hold tensors of 46 MB (attention scores of 36 pairs x 2 heads x 400
    x 400) hold them in the heap, where freed tensors are, not mapped apart (fresh pages from the kernel, zero-filled
    one by one), and so take almost no fresh pages: 540,000 page faults a call with glibc's defaults here, a handful
    kept (some thousands, up to 45,000 seen, in a call where the heap grows or moves its free blocks, which the layout
    of the heap decides, not rnnshap: the median of three calls is compared). After them, a block of 30 MiB
    comes from the heap (kept there once freed), and one larger than the heap holds free is mapped apart, as glibc
    does (blocks are kept from the heap only during an explanation). A process that tunes its own malloc (here
    ``MALLOC_ARENA_MAX``, which keeps nothing itself) is left as it is."""
    kept, default, tuned = _run(), _run(RNNSHAP_KEEP_MEMORY="0"), _run(MALLOC_ARENA_MAX="4")
    assert kept["mapped_during"] < 40 << 20 <= min(default["mapped_during"], tuned["mapped_during"])
    median = {name: sorted(run["faults"])[1] for name, run in (("kept", kept), ("default", default), ("tuned", tuned))}
    assert 20 * median["kept"] < min(median["default"], median["tuned"]), (kept, default, tuned)
    assert not kept["small_mapped_apart"] and kept["large_mapped_apart"] and kept["free_in_heap"]
    assert default["large_mapped_apart"]
    assert kept["values"] == default["values"] == tuned["values"]


def test_blocks_mapped_apart_are_allowed_again_after_a_block_that_raised_and_after_nested_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kept_memory`` sets ``M_MMAP_MAX`` to 0 when the outermost block starts and puts glibc's default back when it
    ends, whether it returned or raised (a refusal); nested blocks (an explanation inside another's) change nothing."""
    import torch

    from rnnshap.engines.pytorch import memory

    class FakeLibc:
        def __init__(self) -> None:
            self.calls: list[tuple[int, int]] = []

        def mallopt(self, parameter: int, value: int) -> int:
            self.calls.append((parameter, value))
            return 1

    libc = FakeLibc()
    monkeypatch.setitem(memory._state, "asked", True)
    monkeypatch.setitem(memory._state, "libc", libc)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError), memory.kept_memory(cpu):
        with memory.kept_memory(cpu):
            pass
        raise ValueError("a refusal")
    with memory.kept_memory(torch.device("meta")):  # (another device: nothing)
        pass
    assert libc.calls == [(memory._M_MMAP_MAX, 0), (memory._M_MMAP_MAX, memory._DEFAULT_MMAP_MAX)]
