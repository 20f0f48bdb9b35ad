"""Reading landscape files: the :class:`Landscape` surface and :func:`read_landscape`.

Needs numpy and h5py only -- neither torch nor the compute package
:mod:`geomkit.geometry` -- so :mod:`geomkit.plot` draws a file without loading them.
Writing (resumable, shardable) is :mod:`geomkit.geometry.landscape.storage`; the layout
is described there.  Files of the reference tool (no ``format`` tag, no ``done`` mask)
read too: a point counts as done when its loss is finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geomkit.errors import ResultFileError

from . import LANDSCAPE_FORMAT, open_h5
from ._h5 import attr

__all__ = ["LANDSCAPE_FORMAT", "Landscape", "read_landscape"]


@dataclass(frozen=True, eq=False)
class Landscape:
    """A (possibly partial) loss surface.

    ``loss``/``acc``/``done`` are shaped ``[len(y), len(x)]`` (``[len(x)]`` for a
    line); ``acc`` is in percent; points not ``done`` hold NaN.  ``attrs`` holds the
    run's spec and provenance; ``seconds`` the evaluation time of this run.
    """

    xcoordinates: np.ndarray
    ycoordinates: np.ndarray | None
    loss: np.ndarray
    acc: np.ndarray
    done: np.ndarray
    attrs: dict = field(default_factory=dict)
    seconds: float = 0.0
    path: str | None = None

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def center_loss(self) -> float:
        """Loss at the grid point nearest to the origin."""
        j = int(np.argmin(np.abs(self.xcoordinates)))
        if self.ycoordinates is None:
            return float(self.loss[j])
        i = int(np.argmin(np.abs(self.ycoordinates)))
        return float(self.loss[i, j])


def read_landscape(path: str | Path) -> Landscape:
    """Open a landscape file (complete or not) as a :class:`Landscape`.

    Raises:
        ResultFileError: one line: missing, not HDF5, damaged, or no
            ``xcoordinates``/``train_loss``.
    """
    path = Path(path)
    if not path.exists():
        raise ResultFileError(f"landscape file {path} does not exist")
    with open_h5(path, "r") as f:
        if "xcoordinates" not in f or "train_loss" not in f:
            raise ResultFileError(f"{path} has no xcoordinates/train_loss; not a landscape file")
        x = f["xcoordinates"][...]
        y = f["ycoordinates"][...] if "ycoordinates" in f else None
        loss = f["train_loss"][...]
        acc = f["train_acc"][...] if "train_acc" in f else np.full(loss.shape, np.nan)
        done = f["done"][...].astype(bool) if "done" in f else np.isfinite(loss)
        attrs = {k: attr(f, k) for k in f.attrs}
    return Landscape(
        x,
        y,
        loss,
        acc,
        done,
        attrs=attrs,
        seconds=float(attrs.get("compute_seconds", 0.0) or 0.0),
        path=str(path),
    )
