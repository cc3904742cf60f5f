"""Progress bars over long runs (tqdm, an optional extra)."""

from __future__ import annotations

import sys
import warnings
from typing import Iterable, Sequence, TypeVar

T = TypeVar("T")


def progress_bar(
    items: Sequence[T], enabled: bool | None, *, desc: str = "rnnshap", unit: str = "batch", total: int | None = None
) -> Iterable[T]:
    """``items`` wrapped in a tqdm progress bar when ``enabled``; ``None``: only when stderr is a
    terminal and there is more than one item. Without tqdm there is no bar (a warning if asked for)."""
    explicit = enabled is not None
    if enabled is None:
        try:
            enabled = len(items) > 1 and sys.stderr is not None and sys.stderr.isatty()
        except (AttributeError, ValueError):  # stderr replaced by an object without isatty, or closed
            enabled = False
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if explicit:
            warnings.warn(
                "progress=True needs tqdm (pip install 'rnnshap[progress]'); running without a progress bar", stacklevel=3
            )
        return items
    return tqdm(items, total=total if total is not None else len(items), desc=desc, unit=unit)  # closes itself when the loop ends
