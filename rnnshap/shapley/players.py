"""Players: what a Shapley value is given to, as a map from every input entry to a player id.

A coalition S of players builds a row of the model's batch from an explained sample x and a
background row r: every entry whose player is in S takes x's value, every other entry r's. Entries
of a context input (lengths, masks: ``None`` in the map) always take x's value, as in DeepSHAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

#: the named kinds of players
NAMED = ("steps", "features", "cells")


@dataclass
class Players:
    """Player ids per input, each shaped like one sample of the input (``None``: a context input)."""

    #: per input: an int64 array of player ids in ``[0, count)``, or None for a context input
    ids: list[np.ndarray | None]
    #: the number of players, P
    count: int
    #: "steps", "windows", "features", "cells" or "mask"
    kind: str

    def coalition_rows(self, masks: np.ndarray, x: list[np.ndarray], r: list[np.ndarray]) -> list[np.ndarray]:
        """Rows of the model's batch: ``masks`` (m, P) bool, ``x`` one sample per input (no batch
        axis), ``r`` per input (m, *shape), the background row of each coalition. Entry e of row i
        takes x where its player is in coalition i, else r."""
        rows = []
        for ids, xs, rs in zip(self.ids, x, r, strict=True):
            if ids is None:
                rows.append(np.broadcast_to(xs, (masks.shape[0], *xs.shape)).copy())
            else:
                rows.append(np.where(masks[:, ids], xs[None], rs))
        return rows

    def per_player(self, per_entry: list[np.ndarray]) -> np.ndarray:
        """Sums of per-entry values over each player's entries: ``per_entry[t]`` (m, *shape_t) →
        (m, P)."""
        m = per_entry[0].shape[0]
        total = np.zeros((m, self.count))
        for ids, values in zip(self.ids, per_entry, strict=True):
            if ids is None:
                continue
            flat = values.reshape(m, -1)
            for player in range(self.count):  # a loop over players keeps memory at one input's size
                chosen = ids.reshape(-1) == player
                if chosen.any():
                    total[:, player] += flat[:, chosen].sum(1)
        return total


def resolve(
    players: Any,
    shapes: Sequence[tuple[int, ...]],
    attributed: Sequence[bool],
    tokens: Sequence[bool],
    axes: Sequence[int | None] | None = None,
    why: Sequence[str] | None = None,
    windows: int | None = None,
) -> Players:
    """The :class:`Players` of the ``players`` argument for inputs of per-sample ``shapes``.

    ``attributed[t]``: input t gets values (False: context, used as given). ``tokens[t]``: input t
    holds token ids, one token per position (its last axis is time). ``axes[t]``: the axis of one
    sample of input t that is time (None: not known, ``why[t]`` says why); players along time or
    features on an input of more than one axis whose time axis is not known are refused.
    ``windows=k``: with ``players="steps"``, one player per k consecutive steps (the last window shorter)."""
    count = len(shapes)
    known = list(axes) if axes is not None else [None] * count
    reasons = list(why) if why is not None else ["the model's layout is not known"] * count
    if windows is not None:
        if isinstance(windows, bool) or not isinstance(windows, (int, np.integer)) or windows < 1:
            raise InputError(f"windows must be a positive number of steps per player, got {windows!r}")
        if not (isinstance(players, str) and players == "steps"):
            raise InputError(f"windows= groups consecutive time steps into players: it needs players='steps', not {players!r}")
    if isinstance(players, str):
        if players not in NAMED:
            raise InputError(
                f"players={players!r}: give 'steps', 'features', 'cells', or an integer array of player ids shaped like one "
                "sample's input"
            )
        if players == "cells":
            return _cells(shapes, attributed)
        return _axis(players, shapes, attributed, tokens, known, reasons, windows)
    return _mask(players, shapes, attributed)


def _ambiguous(kind: str, t: int, shape: tuple[int, ...], reason: str) -> InputError:
    dims = ", ".join(map(str, shape))
    return InputError(
        f"players={kind!r} needs to know which axis of input {t}, shaped (N, {dims}), is time, and {reason}. "
        "Give time_axis=1 for (N, T, F) (rnnshap's, Keras's and torch's recurrent layout) or time_axis=2 for "
        "(N, channels, T) (aeon's and sktime's panels, torch's Conv1d); rnnshap does not guess."
    )


def _axis(
    kind: str,
    shapes: Sequence[tuple[int, ...]],
    attributed: Sequence[bool],
    tokens: Sequence[bool],
    axes: Sequence[int | None],
    why: Sequence[str],
    windows: int | None,
) -> Players:
    """Players along the time axis ("steps": each step's whole feature vector; ``windows``: k steps
    each) or the feature axis ("features": one feature at every step) of every attributed input."""
    ids: list[np.ndarray | None] = []
    count = None
    for t, shape in enumerate(shapes):
        if not attributed[t]:
            ids.append(None)
            continue
        if kind == "steps":
            if tokens[t]:
                if len(shape) != 1:
                    raise InputError(
                        f"players='steps' needs token input {t} shaped (N, T); it is (N, {', '.join(map(str, shape))})"
                    )
                axis = 0
            elif len(shape) == 1:
                axis = 0  # one value per step: (N, T)
            elif len(shape) == 0:
                raise InputError(
                    f"players='steps' needs input {t} to have a time axis; it holds one value per sample. Make it context "
                    "(ShapleyExplainer(..., context=[index])) if it is a length or an index."
                )
            elif axes[t] is None:
                raise _ambiguous(kind, t, shape, why[t])
            else:
                axis = int(axes[t])  # type: ignore[arg-type]
            steps = shape[axis]
            step_ids = np.arange(steps) if windows is None else np.arange(steps) // int(windows)
            axis_size = int(step_ids[-1]) + 1 if steps else 0
            view = [1] * len(shape)
            view[axis] = steps
            grid = np.broadcast_to(step_ids.reshape(view), shape)
        else:
            if tokens[t]:
                raise InputError(
                    f"players='features' does not apply to token input {t}: a token is one feature. Use players='steps' "
                    "(one player per token position) or an integer array of player ids."
                )
            if len(shape) == 1:
                axis_size, grid = shape[0], np.arange(shape[0])
            elif len(shape) == 2:
                if axes[t] is None:
                    raise _ambiguous(kind, t, shape, why[t])
                feature_axis = 1 - int(axes[t])  # type: ignore[arg-type]
                axis_size = shape[feature_axis]
                view = [1, 1]
                view[feature_axis] = axis_size
                grid = np.broadcast_to(np.arange(axis_size).reshape(view), shape)
            else:
                raise InputError(
                    f"players='features' needs input {t} shaped (N, F) or (N, T, F); it is (N, {', '.join(map(str, shape))}). "
                    "Give player ids as an integer array shaped like one sample, or players='cells'."
                )
        if count is not None and axis_size != count:
            what = "windows" if windows is not None else kind
            raise InputError(
                f"players={kind!r}: the inputs disagree on the number of {what} ({count} and {axis_size} in input {t}). "
                "Give player ids as a list of integer arrays, one per input."
            )
        count = axis_size
        ids.append(np.ascontiguousarray(grid).astype(np.int64))
    if count is None:
        raise InputError("every input is context (lengths, masks): there are no players to give values to")
    return Players(ids, int(count), "windows" if windows is not None else kind)


def _cells(shapes: Sequence[tuple[int, ...]], attributed: Sequence[bool]) -> Players:
    """One player per entry of every attributed input, numbered input by input."""
    ids: list[np.ndarray | None] = []
    start = 0
    for t, shape in enumerate(shapes):
        if not attributed[t]:
            ids.append(None)
            continue
        size = int(np.prod(shape, dtype=np.int64))
        ids.append(np.arange(start, start + size, dtype=np.int64).reshape(shape))
        start += size
    if start == 0:
        raise InputError("every input is context (lengths, masks): there are no players to give values to")
    return Players(ids, start, "cells")


def _mask(players: Any, shapes: Sequence[tuple[int, ...]], attributed: Sequence[bool]) -> Players:
    """Player ids given as an integer array per input (Captum's ``feature_mask``); one id may span
    inputs. The ids are renumbered 0..P-1 in sorted order."""
    given = list(players) if isinstance(players, (list, tuple)) else [players]
    if len(given) != len(shapes):
        raise InputError(
            f"players: {len(given)} player-id array(s) for a model with {len(shapes)} input(s); give one per input "
            "(None for a context input)"
        )
    arrays: list[np.ndarray | None] = []
    for t, (mask, shape) in enumerate(zip(given, shapes, strict=True)):
        if mask is None:
            arrays.append(None)
            continue
        if not attributed[t]:
            raise InputError(
                f"players: input {t} is context (lengths, masks, indices: used as given for the sample and its "
                "references alike), so its entries cannot be players. Give None for it."
            )
        array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"players: the player ids of input {t} must be an integer array, not {array.dtype}")
        if array.shape == (1, *shape):
            array = array[0]  # Captum's feature_mask has a batch axis of 1
        if array.shape != tuple(shape):
            raise InputError(
                f"players: the player ids of input {t} have shape {array.shape}, but one sample of the input has shape "
                f"{tuple(shape)}; give one integer id per entry of one sample"
            )
        arrays.append(array.astype(np.int64))
    present = [a for a in arrays if a is not None]
    if not present:
        raise InputError("players: every input is None (context): there are no players to give values to")
    unique = np.unique(np.concatenate([a.reshape(-1) for a in present]))
    ids: list[np.ndarray | None] = [None if a is None else np.searchsorted(unique, a).astype(np.int64) for a in arrays]
    for t, a in enumerate(ids):
        if a is None and attributed[t]:
            ids[t] = None  # an attributed input left out of the players follows the explained sample
    return Players(ids, int(unique.size), "mask")
