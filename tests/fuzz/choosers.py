"""Where the fuzzer's choices come from: hypothesis (shrinkable, for pytest) or a seeded random.Random (the census).

Every choice point has a name; an option is left out when ``"name=option"`` is in ``exclude`` (a
grammar element with a known defect, see ``tests/test_fuzz.py::KNOWN_DEFECTS``).
"""

from __future__ import annotations

import random
from typing import Any, Sequence


class Chooser:
    def __init__(self, exclude: frozenset[str] = frozenset()) -> None:
        self.exclude = exclude

    def allowed(self, name: str, option: Any) -> bool:
        return f"{name}={option}" not in self.exclude

    def one(self, name: str, options: Sequence[Any]) -> Any:
        kept = [o for o in options if self.allowed(name, o)]
        if not kept:
            raise ValueError(f"every option of {name} is excluded")
        return self._pick(kept)

    def flag(self, name: str, allowed: bool = True) -> bool:
        """False, or True where ``allowed`` and not excluded."""
        if not allowed or not self.allowed(name, True):
            return False
        return bool(self._pick([False, True]))

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def _pick(self, options: Sequence[Any]) -> Any:
        raise NotImplementedError


class HypothesisChooser(Chooser):
    def __init__(self, data: Any, exclude: frozenset[str] = frozenset()) -> None:
        super().__init__(exclude)
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        from hypothesis import strategies as st

        return int(self.data.draw(st.integers(lo, hi)))

    def _pick(self, options: Sequence[Any]) -> Any:
        from hypothesis import strategies as st

        return self.data.draw(st.sampled_from(list(options)))


class RandomChooser(Chooser):
    def __init__(self, seed: int, exclude: frozenset[str] = frozenset()) -> None:
        super().__init__(exclude)
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def _pick(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(list(options))
