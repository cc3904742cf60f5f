"""Count outcomes over many drawn models: ``python -m tests.fuzz.census torch 300 [--exclude-known]``.

Draws with a seeded random.Random (not hypothesis), every grammar element enabled unless
``--exclude-known``; prints one line per defect or refusal kind, then the totals.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["torch", "keras"])
    parser.add_argument("n", type=int)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--exclude-known", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    from .choosers import RandomChooser

    if args.which == "torch":
        from . import torch_grammar as grammar
    else:
        from . import keras_grammar as grammar  # type: ignore[no-redef]
    exclude: frozenset[str] = frozenset()
    if args.exclude_known:
        from tests.test_fuzz import KNOWN_DEFECTS_KERAS, KNOWN_DEFECTS_TORCH

        exclude = frozenset(KNOWN_DEFECTS_TORCH if args.which == "torch" else KNOWN_DEFECTS_KERAS)
    checked: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    examples: dict[str, int] = {}
    t0 = time.time()
    for seed in range(args.start, args.start + args.n):
        spec = grammar.draw_spec(RandomChooser(seed, exclude))
        try:
            outcome = grammar.evaluate(spec)
        except Exception as error:  # noqa: BLE001
            print(f"[{seed}] GRAMMAR ERROR {type(error).__name__}: {error}\n  {spec!r}", flush=True)
            counts["grammar error"] += 1
            continue
        counts[outcome.status] += 1
        checked.update(outcome.checks)
        if outcome.status != "exact":
            key = (
                outcome.status
                + ": "
                + outcome.detail.split(":")[0][:60]
                + (": " + outcome.detail.split(":")[1][:80] if outcome.status == "refused" else "")
            )
            key = re.sub(r"_\d+ \(", " (", key)  # keras layer names: max_pooling1d_3 -> max_pooling1d
            kinds[key] += 1
            examples.setdefault(key, seed)
            if outcome.status == "defect" or args.verbose:
                print(f"[{seed}] {outcome}", flush=True)
    print(f"\n{args.n} models in {time.time() - t0:.0f}s: {dict(counts)}")
    print(f"exact models on which a zero property was checked: {dict(checked)}")
    for key, count in kinds.most_common():
        print(f"  {count:4d}  {key}   (first: seed {examples[key]})")


if __name__ == "__main__":
    main()
    sys.exit(0)
