"""Progress bars over long runs (tqdm, an optional extra)."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Iterable, Sequence, TypeVar

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


class Counter:
    """A progress bar counted by hand (``update(k)``, ``close()``): a tqdm bar, or nothing."""

    def __init__(self, bar: Any = None) -> None:
        self.bar = bar

    def update(self, count: int) -> None:
        if self.bar is not None and count:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_counter(total: int, enabled: bool | None, *, desc: str = "rnnshap", unit: str = "row") -> Counter:
    """A :class:`Counter` up to ``total`` when ``enabled``; ``None``: only when stderr is a terminal. Without
    tqdm there is no bar (a warning if asked for)."""
    explicit = enabled is not None
    if enabled is None:
        try:
            enabled = sys.stderr is not None and sys.stderr.isatty()
        except (AttributeError, ValueError):
            enabled = False
    if not enabled:
        return Counter()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if explicit:
            warnings.warn(
                "progress=True needs tqdm (pip install 'rnnshap[progress]'); running without a progress bar", stacklevel=3
            )
        return Counter()
    return Counter(tqdm(total=total, desc=desc, unit=unit, unit_scale=True))
