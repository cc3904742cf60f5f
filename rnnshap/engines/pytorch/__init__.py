"""The PyTorch engine: a reference pass that records, an input pass that replays through the rules."""
