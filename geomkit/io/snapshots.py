"""Snapshots files (``geomkit train --snapshot-every E``): the weights along a run.

Layout (format ``geomkit-snapshots/1``, plain h5py)::

    theta   [n, P] float32   row i: every trainable ``named_parameters`` tensor flattened
                             and concatenated in ``names`` order; chunks (1, <=2^18) so a
                             block of columns of all rows reads without the rest
    step    [n]    int64     optimizer steps taken when the row was kept
    epoch   [n]    int64     epochs completed (0 = the initial weights)
    attrs:  format, names, shapes (JSON), n_params, model (registry name), model_kwargs
            (JSON), every_epochs, initial, dtype, provenance (JSON)

Written by :class:`geomkit.train.snapshots.SnapshotWriter` (the whole file replaced
atomically at every snapshot), read by the trajectory-PCA landscapes
(:mod:`geomkit.geometry.landscape.trajectory`) without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomkit.errors import ResultFileError

from . import (
    atomic_h5,
    attr,
    get_json_attr,
    open_h5,
    register_format,
    set_json_attr,
    set_provenance,
)

__all__ = ["SNAPSHOTS_FILE", "SNAPSHOTS_FORMAT", "Snapshots", "read_snapshots",
           "snapshots_path", "write_snapshots"]

SNAPSHOTS_FORMAT = register_format("geomkit-snapshots/1", "snapshots file",
                                   "`geomkit train --snapshot-every`")
#: the file's name inside a run directory
SNAPSHOTS_FILE = "snapshots.h5"
#: most columns in one HDF5 chunk of ``theta`` (1 MiB of float32)
CHUNK_COLUMNS = 1 << 18


def snapshots_path(run: str | Path) -> Path:
    """``RUN/snapshots.h5`` for a run directory, else ``run`` itself (a snapshots file)."""
    run = Path(run)
    return run / SNAPSHOTS_FILE if run.is_dir() else run


@dataclass(frozen=True)
class Snapshots:
    """A snapshots file, read lazily: the metadata now, rows or column blocks on demand.

    Attributes:
        names, shapes: the parameters of a row, in order (``named_parameters`` names).
        steps, epochs: per row (epoch 0 = the initial weights).
        model: the registry name of the model ("" if unknown).
    """

    path: Path
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    steps: np.ndarray
    epochs: np.ndarray
    model: str = ""
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def n_params(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    def offsets(self) -> list[tuple[str, int, int]]:
        """``(name, start, stop)`` of each parameter in a flat row."""
        out, i = [], 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = math.prod(shape)
            out.append((name, i, i + n))
            i += n
        return out

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` (float32, ``[n_params]``)."""
        with open_h5(self.path, kind=SNAPSHOTS_FORMAT) as f:
            return np.asarray(f["theta"][int(i)])

    def columns(self, start: int, stop: int) -> np.ndarray:
        """Columns ``start:stop`` of every row (float32, ``[n, stop - start]``)."""
        with open_h5(self.path, kind=SNAPSHOTS_FORMAT) as f:
            return np.asarray(f["theta"][:, int(start):int(stop)])

    def params(self, i: int) -> dict[str, np.ndarray]:
        """Row ``i`` as ``{name: array of the parameter's shape}``."""
        flat = self.row(i)
        return {n: flat[a:b].reshape(s) for (n, a, b), s in zip(self.offsets(), self.shapes,
                                                                strict=True)}


def read_snapshots(path: str | Path) -> Snapshots:
    """Open a snapshots file (or ``RUN/snapshots.h5`` of a run directory).

    Raises:
        ResultFileError: one line: missing, not HDF5, damaged, another format, no rows.
    """
    path = snapshots_path(path)
    with open_h5(path, kind=SNAPSHOTS_FORMAT) as f:
        if "theta" not in f or "step" not in f or "epoch" not in f:
            raise ResultFileError(f"{path} has no theta/step/epoch datasets; not a complete "
                                  "snapshots file")
        names = get_json_attr(f, "names", [])
        shapes = get_json_attr(f, "shapes", [])
        steps = np.asarray(f["step"][...], dtype=np.int64)
        epochs = np.asarray(f["epoch"][...], dtype=np.int64)
        n_rows, n_cols = f["theta"].shape
        attrs = {k: attr(f, k) for k in f.attrs}
    snaps = Snapshots(path, tuple(names), tuple(tuple(s) for s in shapes), steps, epochs,
                      str(attrs.get("model", "") or ""), attrs)
    if n_rows == 0:
        raise ResultFileError(f"{path} holds no snapshots; train with --snapshot-every E")
    if snaps.n_params != n_cols or len(steps) != n_rows or len(epochs) != n_rows:
        raise ResultFileError(f"{path} is inconsistent ({n_rows}x{n_cols} theta for "
                              f"{snaps.n_params} parameters, {len(steps)} steps); write it "
                              "again")
    return snaps


def write_snapshots(
    path: str | Path,
    rows: Sequence[np.ndarray | tuple[Snapshots, int]],
    steps: Sequence[int],
    epochs: Sequence[int],
    *,
    names: Sequence[str],
    shapes: Sequence[Sequence[int]],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a snapshots file atomically; a row is a flat float32 array or ``(old, i)``,
    row ``i`` of an open :class:`Snapshots` (copied without loading the others).

    ``meta``: ``model``, ``model_kwargs``, ``every_epochs``, ``initial`` (stored attrs).
    Also the way to turn per-epoch checkpoints into a trajectory: ``flat_parameters`` of
    each, in order.
    """
    path = Path(path)
    names, shapes = list(names), [tuple(int(v) for v in s) for s in shapes]
    n_params = int(sum(math.prod(s) for s in shapes))
    if not (len(rows) == len(steps) == len(epochs)):
        raise ValueError("rows, steps and epochs differ in length")
    meta = dict(meta or {})
    with atomic_h5(path) as f:
        f.attrs["format"] = SNAPSHOTS_FORMAT
        set_json_attr(f, "names", names, sort_keys=False)
        set_json_attr(f, "shapes", [list(s) for s in shapes], sort_keys=False)
        f.attrs["n_params"] = n_params
        f.attrs["model"] = str(meta.get("model", "") or "")
        set_json_attr(f, "model_kwargs", meta.get("model_kwargs") or {})
        f.attrs["every_epochs"] = int(meta.get("every_epochs", 0) or 0)
        f.attrs["initial"] = bool(meta.get("initial", False))
        f.attrs["dtype"] = "float32"
        set_provenance(f)
        chunk = (1, max(1, min(n_params, CHUNK_COLUMNS)))
        theta = f.create_dataset("theta", shape=(len(rows), n_params), dtype="f4",
                                 maxshape=(None, n_params), chunks=chunk)
        for i, r in enumerate(rows):
            v = r[0].row(r[1]) if isinstance(r, tuple) else np.asarray(r, dtype=np.float32)
            if v.shape != (n_params,):
                raise ValueError(f"row {i} has shape {v.shape}, expected ({n_params},)")
            theta[i] = v
        f.create_dataset("step", data=np.asarray(steps, dtype=np.int64), maxshape=(None,))
        f.create_dataset("epoch", data=np.asarray(epochs, dtype=np.int64), maxshape=(None,))
    return path
