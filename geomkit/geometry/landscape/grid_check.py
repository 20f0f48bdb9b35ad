"""What a landscape grid will cost, known before anything is loaded or written.

A grid ``MIN:MAX:NUM`` per axis is cheap to type and easy to get wrong by orders of
magnitude (``-1:1:100000000`` is a 2.3 GiB file and ~12 days of forward passes).
:func:`grid_cost` estimates the points, the file, the memory and a rough time;
:func:`check_grid` refuses a grid whose result arrays cannot fit in memory, and one above
:data:`MAX_POINTS` or :data:`MAX_FILE_BYTES` unless ``allow_large`` (``--yes``) is given.

The estimates follow the layout of :mod:`.storage`: ``train_loss`` and ``train_acc``
(float64) and ``done`` (bool) over the whole grid in every file, shard or not, plus the
coordinates; while a file is computed the point indices, their coordinates and the
results are held in memory at once (~:data:`MEMORY_BYTES_PER_POINT`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from geomkit.data.spec import available_memory, format_bytes
from geomkit.errors import SpecError

#: Points above which a grid is refused unless ``allow_large``.
MAX_POINTS = 1_000_000
#: File size above which a grid is refused unless ``allow_large``.
MAX_FILE_BYTES = 1 << 30
#: Bytes per point in the file: train_loss and train_acc (float64), done (bool).
FILE_BYTES_PER_POINT = 8 + 8 + 1
#: Bytes per point held in memory while a file is computed (indices, coordinates, flags
#: and results at once; a rough upper estimate).
MEMORY_BYTES_PER_POINT = 64
#: Example forward passes per second assumed for the time estimate: a tiny model on a fast
#: device (vit-tiny on 8x8 digits reaches ~6e3 on one busy CPU core), so real runs of
#: larger models take longer.
EXAMPLES_PER_SECOND = 1e5


@dataclass(frozen=True)
class GridCost:
    """The estimated cost of one landscape grid.

    Attributes:
        shape: ``(len(x),)`` or ``(len(y), len(x))``.
        points: grid points.
        file_bytes: size of the HDF5 file (results and coordinates; without the stored
            directions, which are two copies of the model's parameters).
        memory_bytes: memory held while it is computed.
        forward_examples: example forward passes (``points * samples``; ``None`` without
            ``samples``).
        seconds: rough time at :data:`EXAMPLES_PER_SECOND` (``None`` without ``samples``).
    """

    shape: tuple[int, ...]
    points: int
    file_bytes: int
    memory_bytes: int
    forward_examples: int | None
    seconds: float | None

    def describe(self) -> str:
        """``2,601 points (a 51x51 grid): a ~44 KiB file, ~163 KiB of memory, 2.7e+06
        example forward passes (~27 s at 100,000 examples/s)``."""
        if len(self.shape) == 1:
            what = f"a line of {self.shape[0]}"
        else:
            what = f"a {self.shape[1]}x{self.shape[0]} grid"
        text = (f"{self.points:,} points ({what}): a ~{format_bytes(self.file_bytes)} "
                f"file, ~{format_bytes(self.memory_bytes)} of memory")
        if self.forward_examples is not None and self.seconds is not None:
            text += (f", {self.forward_examples:.1e} example forward passes "
                     f"(~{format_seconds(self.seconds)} at {EXAMPLES_PER_SECOND:,.0f} "
                     "examples/s)")
        return text


def format_seconds(s: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``12 days``, ``3.2 years``."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            v = s / size
            return f"{v:.2g} {unit}" if v < 10 else f"{v:,.0f} {unit}"
    return f"{s:.0f} s"


def _axis(r: Any, name: str) -> int:
    try:
        lo, hi, num = r
    except (TypeError, ValueError):
        raise SpecError(f"grid {name} must be (min, max, num), got {r!r}", param=name) from None
    whole = isinstance(num, numbers.Real) and not isinstance(num, bool) and math.isfinite(num)
    if not whole or not float(num).is_integer() or num < 1:
        raise SpecError(f"grid {name} needs a whole number of points NUM >= 1, got {num!r}",
                        param=name)
    return int(num)


def grid_cost(x: Any, y: Any = None, *, samples: int | None = None,
              shards: int = 1) -> GridCost:
    """The cost of the grid ``x`` (and ``y``; ``None`` for a line), each ``(min, max, num)``
    (a :class:`~geomkit.geometry.landscape.Grid` may be passed as ``x``).

    ``samples``: examples the loss is averaged over at each point (for the time);
    ``shards``: the number of shards the grid is split into (each computes ``1/shards`` of
    the points but writes a file of the whole grid's shape).
    """
    if hasattr(x, "x") and hasattr(x, "y"):  # a Grid
        x, y = x.x, x.y
    nx = _axis(x, "x")
    ny = None if y is None else _axis(y, "y")
    shape = (nx,) if ny is None else (ny, nx)
    points = math.prod(shape)
    file_bytes = points * FILE_BYTES_PER_POINT + 8 * sum(shape)
    memory_bytes = points * MEMORY_BYTES_PER_POINT
    forward = seconds = None
    if samples is not None:
        forward = points * int(samples)
        seconds = forward / max(int(shards), 1) / EXAMPLES_PER_SECOND
    return GridCost(shape, points, file_bytes, memory_bytes, forward, seconds)


def check_grid(x: Any, y: Any = None, *, samples: int | None = None, shards: int = 1,
               allow_large: bool = False, available: int | None = None) -> GridCost:
    """:func:`grid_cost`, refusing a grid that cannot or should not be computed.

    Raises:
        SpecError: the grid's arrays need more memory than is available now (always), or
            it has more than :data:`MAX_POINTS` points or a file above
            :data:`MAX_FILE_BYTES` and ``allow_large`` is false (``param="allow_large"``).
    """
    cost = grid_cost(x, y, samples=samples, shards=shards)
    avail = available_memory() if available is None else available
    if avail is not None and cost.memory_bytes > avail:
        raise SpecError(
            f"the grid needs ~{format_bytes(cost.memory_bytes)} of memory, more than the "
            f"{format_bytes(avail)} available now: {cost.describe()}; use a smaller NUM"
        )
    if not allow_large and (cost.points > MAX_POINTS or cost.file_bytes > MAX_FILE_BYTES):
        raise SpecError(
            f"the grid is above the limit of {MAX_POINTS:,} points or a "
            f"{format_bytes(MAX_FILE_BYTES)} file: {cost.describe()}; use a smaller NUM, "
            "or pass allow_large to compute it anyway",
            param="allow_large",
        )
    return cost
