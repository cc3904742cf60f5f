"""Freed memory kept for reuse on the CPU: what a caching allocator does for a GPU, asked of glibc's ``malloc``.

An explanation's pass holds tensors a plain forward never holds: the rules' secants and their backward over
attention scores, (pairs x heads, T, T) entries each, tens or hundreds of megabytes apiece. torch's CPU allocator
takes each from ``malloc``, and glibc's defaults map a large block apart (fresh pages from the kernel) and give it
back when it is freed: every such tensor is zero-filled page by page on its first write. For a 2-layer
TransformerEncoder at T = 200 (16 x 16 pairs, one thread) that was 2.1-2.2 million page faults and 3.3-4.5 s of the
kernel's time in a 6-7 s call (``docs/performance.md``).

:func:`kept_memory` runs a block of an explanation with glibc's ``mallopt`` set so that freed memory is reused:

- during the block, no block is mapped apart (``M_MMAP_MAX`` 0): every tensor comes from the heap, where the freed
  ones are; after it, large blocks of the rest of the process are mapped apart again, as glibc's default (a value
  the process set itself is not put back). The setting is the process's: other threads' blocks meanwhile come from
  the heap too, and a thread other than the main one (glibc's other arenas) still maps blocks over 64 MiB apart;
- once a process (before its first explanation on the CPU): blocks up to 32 MiB (glibc's largest threshold) come from
  the heap, the heap is given back to the kernel only above 2 GiB free at its top, and grows 256 MiB at a time.

The process then keeps about its largest explanation's memory (as PyTorch's CUDA caching allocator keeps a GPU's),
which the next explanation reuses, and its peak is higher, the heap fragmenting where mapped blocks did not (3.5 GB
against 2.2 GB for that TransformerEncoder); :func:`release_memory` gives the free memory back. Values do not
change: where memory comes from is not arithmetic. Nothing happens on another C library (macOS, Windows, musl), where
the environment tunes malloc itself (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``, a preloaded allocator such as
jemalloc), or with ``RNNSHAP_KEEP_MEMORY=0`` (read at the first explanation).
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

#: glibc's ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
#: (parameter, value), once a process: blocks up to 32 MiB from the heap (glibc's maximum on 64-bit), the heap trimmed
#: above 2 GiB free at its top, grown 256 MiB at a time. Set one at a time, the mmap threshold stops adapting.
SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 256 << 20))
#: glibc's default of ``M_MMAP_MAX`` (blocks mapped apart at once), put back after each block of an explanation
_DEFAULT_MMAP_MAX = 65536

_state: dict[str, Any] = {"asked": False, "libc": None, "depth": 0}
_lock = threading.Lock()


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


def _libc() -> Any:
    """glibc, with the process's settings made, where memory is kept (the module's docstring); else None."""
    if not _state["asked"]:
        _state["asked"] = True
        libc = None if os.environ.get("RNNSHAP_KEEP_MEMORY", "1") == "0" or _tuned_already() else _glibc()
        if libc is not None and all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS):
            _state["libc"] = libc
    return _state["libc"]


@contextmanager
def kept_memory(device: torch.device) -> Iterator[None]:
    """A block of an explanation on ``device`` with freed memory reused (the module's docstring); on another device,
    or where memory is not kept, nothing."""
    libc = _libc() if device.type == "cpu" else None
    if libc is None:
        yield
        return
    with _lock:
        _state["depth"] += 1
        if _state["depth"] == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)


def release_memory() -> bool:
    """Give the free memory of the heap back to the kernel now (glibc's ``malloc_trim``); whether any was given."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


__all__ = ["kept_memory", "release_memory"]
