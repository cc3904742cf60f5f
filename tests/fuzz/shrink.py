"""Greedy shrinking of a defective spec: ``python -m tests.fuzz.shrink torch SEED`` (census seeds).

Tries simpler values field by field (and dropping blocks) while the outcome stays a defect of the
same kind; prints the smallest spec found.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from typing import Any, Callable

SIMPLER: dict[str, list[Any]] = {
    "seed": [0, 1, 2], "T": [2, 3, 4], "width": [1, 2], "vocab": [4, 5], "emb": [1, 2], "embed_form": ["module"],
    "entry": [False], "entry_width": [1, 2], "dummy": ["none"], "move": ["none"], "context": ["none"], "holes": [False],
    "entry_mask": ["none", "masked_fill"], "pool": ["last", "mean", "step"], "k": [1], "head_act": ["none"], "squeeze": [False],
    "n_bg": [1, 2], "n_x": [1, 2], "spread": [1.0], "edge": [False], "static": [0], "batch_size": [0], "dups": [False],
    "tiny": [False], "select": ["all"], "unk": [False], "input": ["float", "tokens"],
    # blocks
    "out": [1, 2], "hidden": [1, 2], "act": ["none"], "num_layers": [1], "bidirectional": [False], "batch_first": [True],
    "proj": [0], "nonlinearity": ["tanh"], "packed": [False], "h0": [False], "residual": [False], "norm": ["layer"],
    "affine": [True, False], "causal": ["none", "masked_fill"], "key_padding": [False], "heads": [1], "carry_mask": [False],
    "state": ["h"], "bias": [True], "dropout": [False], "sort": [False], "chain": [False], "twice": [False], "reverse": [False],
    "key_padding_form": [
        "masked_fill"
    ], "units": [1, 2], "filters": [1, 2], "kernel": [1, 2], "rnns": [], "dense_act": ["linear"],
    "conv": ["none"], "mask": ["none"], "merge": ["concat"], "return_sequences": [False], "go_backwards": [False],
    "reset_after": [True], "activation": ["tanh"], "time_dense": [False],
}  # fmt: skip


def shrink(spec: Any, evaluate: Callable[[Any], Any], same: Callable[[Any], bool], rounds: int = 4) -> Any:
    best = spec

    def ok(candidate: Any) -> bool:
        try:
            outcome = evaluate(candidate)
        except Exception:  # noqa: BLE001  (an invalid combination of the grammar)
            return False
        return outcome.status == "defect" and same(outcome)

    for _ in range(rounds):
        changed = False
        blocks = getattr(best, "blocks", None) or getattr(best, "rnns", None)
        name = "blocks" if hasattr(best, "blocks") else "rnns"
        if blocks and len(blocks) > 1:
            for i in range(len(blocks)):
                candidate = copy.deepcopy(best)
                del getattr(candidate, name)[i]
                if ok(candidate):
                    best, changed = candidate, True
                    break
        for f in dataclasses.fields(best):
            for value in SIMPLER.get(f.name, []):
                if getattr(best, f.name) == value:
                    break
                candidate = dataclasses.replace(copy.deepcopy(best), **{f.name: value})
                if ok(candidate):
                    best, changed = candidate, True
                    break
        for i, block in enumerate(getattr(best, name, None) or []):
            for f in dataclasses.fields(block):
                for value in SIMPLER.get(f.name, []):
                    if getattr(block, f.name) == value:
                        break
                    candidate = copy.deepcopy(best)
                    setattr(getattr(candidate, name)[i], f.name, value)
                    if ok(candidate):
                        best, block, changed = candidate, getattr(candidate, name)[i], True
                        break
        if not changed:
            break
    return best


def main() -> None:
    which, seed = sys.argv[1], int(sys.argv[2])
    from .choosers import RandomChooser

    if which == "torch":
        from . import torch_grammar as grammar
    else:
        from . import keras_grammar as grammar  # type: ignore[no-redef]
    spec = grammar.draw_spec(RandomChooser(seed))
    first = grammar.evaluate(spec)
    print("original:", first)
    if first.status != "defect":
        return
    kind = first.detail.split(":")[0]
    small = shrink(spec, grammar.evaluate, lambda o: o.detail.split(":")[0] == kind)
    print("\nshrunk:", grammar.evaluate(small))


if __name__ == "__main__":
    main()
