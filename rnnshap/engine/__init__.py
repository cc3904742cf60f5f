"""The engine: a reference pass that records, an input pass that replays through the rules."""

from .passes import AttributionMode, run_pass
from .tape import Tape, TapeEntry

__all__ = ["AttributionMode", "Tape", "TapeEntry", "run_pass"]
