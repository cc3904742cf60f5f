"""Two source trees of rnnshap in one run: has a refactor changed the speed?

Runs each benchmark against tree A and tree B in turn (A, B, A, B, ... so that the machine's load falls on
both alike), each run in its own process: the tree's own copy of the benchmark (each puts its tree first on
``sys.path``), with ``PYTHONPATH`` set to the tree as well. It reads from each output the ratio that matters,
rnnshap's time over its floor measured in the same process:

- ``bench_recurrent.py``: the ``× native`` column of the ``rnnshap DeepExplainer`` row, per config;
- ``bench_keras.py``: the ``compiled`` ratio (rnnshap over a compiled ``tf.GradientTape`` forward+backward);
- ``bench_throughput.py``: the ``rnnshap / floor`` column, per case.

It prints, per figure, the median over rounds for A and for B and B / A. Ratios to a floor measured
beside them cancel most of the machine's drift; what is left is the noise to read B / A against: run a tree
against itself (``compare_trees.py . .``) to see it.

    python benchmarks/compare_trees.py /tmp/base . --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: benchmark → (arguments, how to read its figures: a function of stdout → {name: ratio})
BENCHES = {
    "bench_recurrent": ["--skip-peers", "--repeats", "5"],
    "bench_keras": ["--steps", "50", "--samples", "16", "--background", "10", "--repeats", "5"],
    "bench_throughput": ["--repeats", "3"],
}


def _figures(bench: str, out: str) -> dict[str, float]:
    found: dict[str, float] = {}
    if bench == "bench_recurrent":
        config = None
        for line in out.splitlines():
            head = re.match(r"### Config (\S+):", line)
            if head:
                config = head.group(1)
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if config and cells[0] == "rnnshap DeepExplainer" and len(cells) >= 4:
                found[f"recurrent {config}"] = float(cells[3])
    elif bench == "bench_keras":
        match = re.search(r"ratio: \S+ eager, ([\d.]+)x compiled", out)
        if match:
            found["keras compiled"] = float(match.group(1))
    else:
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 5 and cells[4].endswith("x") and cells[0] != "case":
                found[f"throughput {cells[0]}"] = float(cells[4].rstrip("x"))
    return found


def _loads_from(tree: Path) -> None:
    """The tree's benchmarks import the tree's rnnshap (not an installed copy, not the other tree)."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); import rnnshap; print(rnnshap.__file__)"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree):
        raise RuntimeError(f"{tree}'s benchmarks would import rnnshap from {where}")


def _run(tree: Path, bench: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, str(tree / "benchmarks" / f"{bench}.py"), *BENCHES[bench]]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=True)
    figures = _figures(bench, done.stdout)
    if not figures:
        raise RuntimeError(f"no figures read from {bench} on {tree}:\n{done.stdout[-2000:]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="tree A (say, the code before a change)")
    parser.add_argument("b", type=Path, help="tree B (the code after it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--benches", default=",".join(BENCHES), help="comma-separated subset of " + ", ".join(BENCHES))
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for tree in trees.values():
        _loads_from(tree)
    figures: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    for bench in args.benches.split(","):
        for round_ in range(args.rounds):
            for label, tree in trees.items():
                for name, value in _run(tree, bench).items():
                    figures[label].setdefault(name, []).append(value)
            print(f"  {bench}: round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"A = {trees['A']}\nB = {trees['B']}\nrnnshap over its floor, median of {args.rounds} rounds\n")
    print("| figure | A | B | B / A |\n|---|---:|---:|---:|")
    for name, values in figures["A"].items():
        a, b = statistics.median(values), statistics.median(figures["B"].get(name, [float("nan")]))
        print(f"| {name} | {a:.2f}x | {b:.2f}x | {b / a:.2f} |")


if __name__ == "__main__":
    main()
