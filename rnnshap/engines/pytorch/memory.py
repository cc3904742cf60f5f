"""Freed memory kept for reuse on the CPU: what a caching allocator does for a GPU, asked of glibc's ``malloc``.

An explanation's pass holds tensors a plain forward never holds: the rules' secants and their backward over
attention scores, (pairs x heads, T, T) entries each, tens of megabytes apiece. torch's CPU allocator takes each
from ``malloc``, and glibc's defaults give blocks above a dynamic threshold fresh pages from the kernel and hand
the freed top of the heap back: every such tensor is then zero-filled page by page on its first write. For a
2-layer TransformerEncoder at T = 200 (64 pairs, one thread) that was a third of the call (``docs/performance.md``).

:func:`keep_freed_memory` sets, once per process, before the first PyTorch explanation on the CPU runs, glibc's
``mallopt`` parameters so that freed blocks stay in the heap for the next tensor: blocks up to 32 MiB (glibc's
largest threshold) come from the heap, the heap is returned to the kernel only above 1 GiB free at its top, and
grows by 256 MiB at a time. The process then keeps about its largest explanation's memory (as PyTorch's CUDA
caching allocator keeps a GPU's), which a later explanation reuses. Values do not change: where memory comes from
is not arithmetic. Nothing happens on another C library (macOS, Windows, musl), where the environment tunes malloc
itself (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``, a preloaded allocator such as jemalloc), or with
``RNNSHAP_KEEP_MEMORY=0`` (read at the first explanation). :func:`release_memory` gives the free memory back at once.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

#: glibc's ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: (parameter, value): blocks up to 32 MiB from the heap (glibc's maximum on 64-bit), the heap trimmed above 1 GiB
#: free at its top, grown 256 MiB at a time. Set one at a time, the mmap threshold stops adapting: all three together.
SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20))

_state: dict[str, Any] = {"asked": False, "kept": False}


def _glibc() -> Any:
    """The process's C library where it is glibc (mallopt, malloc_trim), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _tuned_already() -> bool:
    """Whether the process's malloc was tuned by its environment (``MALLOC_*_``, glibc's malloc tunables) or another
    allocator was preloaded (jemalloc, tcmalloc): then it is left as it is."""
    env = os.environ
    return any(k.startswith("MALLOC_") for k in env) or "glibc.malloc" in env.get("GLIBC_TUNABLES", "") or "LD_PRELOAD" in env


def keep_freed_memory() -> bool:
    """Keep freed memory for reuse (the module's docstring), once per process; whether it is kept."""
    if not _state["asked"]:
        _state["asked"] = True
        libc = None if os.environ.get("RNNSHAP_KEEP_MEMORY", "1") == "0" or _tuned_already() else _glibc()
        if libc is not None:
            _state["kept"] = all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
    return bool(_state["kept"])


def release_memory() -> bool:
    """Give the heap's free memory back to the kernel now (glibc's ``malloc_trim``); whether any was given."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


__all__ = ["keep_freed_memory", "release_memory"]
