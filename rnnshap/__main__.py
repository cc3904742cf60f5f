"""``python -m rnnshap demo`` (and the ``rnnshap`` console script)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        from . import __version__

        print(f"rnnshap {__version__}")
        raise SystemExit(0)
    if not argv or argv[0] != "demo":
        print(
            "usage: rnnshap demo [--samples N] [--layer lstm|gru|bidirectional] [--seed S] [--device D] [--epochs E] "
            "[--background B] [--out FOLDER] [--no-report]\n       rnnshap --version"
        )
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from .demo import main as demo

    demo(argv[1:])


if __name__ == "__main__":
    main()
