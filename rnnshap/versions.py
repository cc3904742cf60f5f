"""The library versions rnnshap was verified on, checked in one place.

Every door that reads private parts of another library (the Keras engine, the forecasting adapters, the
classifier adapters) keeps its own table of verified release series, ``(lowest, first not verified)``, from the
versions pinned in ``constraints/cpu-torch.txt``, and calls :func:`check_version` with it: the installed version,
or an :class:`UnverifiedVersionError` naming it, the verified series and what to do instead.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import Callable

from .errors import RnnShapError

#: a verified release series: ``(lowest, first not verified)``, e.g. ``((3, 15), (3, 16))`` for 3.15.x
Series = tuple[tuple[int, ...], tuple[int, ...]]

#: the other names a library is published under (darts ships as u8darts too, with the same module)
ALSO_PUBLISHED_AS = {"darts": ("u8darts",)}


class UnverifiedVersionError(RnnShapError, ImportError):
    """The installed library is outside the versions rnnshap's door to it was verified on."""


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "0.48.1" -> (0, 48, 1); "3.3.0rc1" -> (3, 3, 0)."""
    numbers = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def installed(distribution: str) -> str:
    """The installed version of ``distribution``, from whichever of its distribution names is installed, else its
    module's ``__version__`` (a source tree without metadata)."""
    for name in (distribution, *ALSO_PUBLISHED_AS.get(distribution, ())):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    module = importlib.import_module(distribution.replace("-", "_"))
    version = getattr(module, "__version__", None)
    if not isinstance(version, str):
        raise UnverifiedVersionError(f"the version of the installed {distribution} cannot be read (no package metadata)")
    return version


def check_version(
    distribution: str,
    verified: Series,
    *,
    door: str,
    reads: str,
    advice: str,
    version: str | None = None,
    error: type[UnverifiedVersionError] = UnverifiedVersionError,
    named: bool = False,
) -> str:
    """The installed version of ``distribution`` (or ``version``), or ``error`` naming it and the ``verified`` series.

    The message: "rnnshap's ``door`` was verified on ``distribution`` X.Y.x (constraints/cpu-torch.txt) and ``reads``;
    V is installed. Install 'distribution>=X.Y,<X.Z', or ``advice``" (``named``: "``distribution`` V is installed")."""
    found = version if version is not None else installed(distribution)
    low, high = verified
    if not low <= release(found) < high:
        floor, ceiling = ".".join(map(str, low)), ".".join(map(str, high))
        raise error(
            f"rnnshap's {door} was verified on {distribution} {floor}.x (constraints/cpu-torch.txt) and {reads}; "
            f"{distribution + ' ' if named else ''}{found} is installed. Install '{distribution}>={floor},<{ceiling}', "
            f"or {advice}"
        )
    return found


def checker(verified: dict[str, Series], *, reads: str, advice: str) -> Callable[[str], str]:
    """A door family's ``check_version(distribution)``: :func:`check_version` against its table ``verified`` (by
    distribution), its message saying the door ``reads`` the library's private parts and ``advice``."""

    def check(distribution: str) -> str:
        """The installed version of ``distribution`` (a key of the door's ``VERIFIED``), or an
        :class:`UnverifiedVersionError` naming it and the versions the adapter was verified on."""
        return check_version(distribution, verified[distribution], door=f"{distribution} adapter", reads=reads, advice=advice)

    return check
