"""Track files (``geomkit train --track``): geometry along a training run, one writer, one reader.

Layout (format ``geomkit-track/1``; every file opens in plain h5py)::

    /            attrs: format, created, updated, provenance (JSON), label, model,
                        optimizer (``sgd``/``adamw``), sam (bool), settings (JSON: every,
                        probe_samples, test_samples, blocks, tol, warm, ...)
                 datasets (1-D, one entry per tracked step, equal lengths):
                        step (int64), epoch (int64, epochs completed), hvps,
                        precond_hvps, cold_hvps (int64, -1 = not computed), and float64
                        lr, batch_loss, lambda_max, lambda_max_error, threshold,
                        precond_lambda_max, precond_threshold, sam_sharpness,
                        cold_lambda_max, train_loss, train_acc, test_loss, test_acc,
                        seconds (NaN = not computed for that run)
    /blocks/     one float64 dataset per tracked block: its λ_max per step
    /sharpness/  one float64 dataset per tracked sharpness measure (its value per step)

The whole file is rewritten atomically after every tracked step (:func:`write_track`):
a kill at any moment leaves the previous complete file, never a damaged one. Rows are
few numbers each, so a rewrite costs microseconds per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import (
    atomic_h5,
    attr,
    check_replace,
    get_json_attr,
    now_utc,
    open_h5,
    register_format,
    set_json_attr,
    set_provenance,
)

__all__ = ["INT_COLUMNS", "FLOAT_COLUMNS", "TRACK_FORMAT", "Track", "check_track_out",
           "read_track", "write_track"]

TRACK_FORMAT = register_format("geomkit-track/1", "track file", "`geomkit train --track`")

#: Integer columns (−1: not computed).
INT_COLUMNS = ("step", "epoch", "hvps", "precond_hvps", "cold_hvps")
#: Float columns (NaN: not computed).
FLOAT_COLUMNS = ("lr", "batch_loss", "lambda_max", "lambda_max_error", "threshold",
                 "precond_lambda_max", "precond_threshold", "sam_sharpness",
                 "cold_lambda_max", "train_loss", "train_acc", "test_loss", "test_acc",
                 "seconds")


@dataclass(frozen=True)
class Track:
    """A track file's contents: ``columns`` (name → 1-D array, see the module docstring),
    ``blocks`` (block → λ_max per step), and the run's identity and settings."""

    path: Path
    label: str
    model: str
    optimizer: str
    sam: bool
    settings: dict[str, Any]
    columns: dict[str, np.ndarray] = field(repr=False)
    blocks: dict[str, np.ndarray] = field(repr=False)
    sharpness: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.columns["step"])

    def rows(self) -> list[dict[str, Any]]:
        """The steps as dicts of plain values (what the tracker keeps in memory)."""
        out = []
        for i in range(len(self)):
            row: dict[str, Any] = {k: (int(v[i]) if k in INT_COLUMNS else float(v[i]))
                                   for k, v in self.columns.items()}
            row["blocks"] = {b: float(v[i]) for b, v in self.blocks.items()}
            if self.sharpness:
                row["sharpness"] = {k: float(v[i]) for k, v in self.sharpness.items()}
            out.append(row)
        return out


def check_track_out(path: str | Path) -> None:
    """Refuse an existing ``path`` that is not a track file (it is never replaced)."""
    check_replace(path, TRACK_FORMAT)


def write_track(path: str | Path, rows: Sequence[Mapping[str, Any]], *,
                meta: Mapping[str, Any], created: str | None = None) -> None:
    """Write ``rows`` (dicts with every column and ``blocks``) to ``path`` atomically.

    ``meta`` holds ``label``, ``model``, ``optimizer``, ``sam`` and ``settings``.
    """
    path = Path(path)
    blocks = sorted({b for r in rows for b in r.get("blocks", {})})
    measures = sorted({k for r in rows for k in r.get("sharpness", {})})
    with atomic_h5(path) as f:
        f.attrs["format"] = TRACK_FORMAT
        f.attrs["created"] = created or now_utc()
        f.attrs["updated"] = now_utc()
        set_provenance(f)
        for k in ("label", "model", "optimizer"):
            f.attrs[k] = str(meta.get(k, ""))
        f.attrs["sam"] = bool(meta.get("sam", False))
        set_json_attr(f, "settings", dict(meta.get("settings", {})))
        for k in INT_COLUMNS:
            f.create_dataset(k, data=np.array([int(r.get(k, -1)) for r in rows],
                                              dtype=np.int64))
        for k in FLOAT_COLUMNS:
            f.create_dataset(k, data=np.array([float(r.get(k, np.nan)) for r in rows],
                                              dtype=np.float64))
        for group, names in (("blocks", blocks), ("sharpness", measures)):
            g = f.create_group(group)
            for b in names:
                g.create_dataset(b, data=np.array([float(r.get(group, {}).get(b, np.nan))
                                                   for r in rows], dtype=np.float64))


def read_track(path: str | Path) -> Track:
    """Read a track file (one-line :class:`~geomkit.errors.ResultFileError` otherwise)."""
    path = Path(path)
    with open_h5(path, kind=TRACK_FORMAT) as f:
        n = len(f["step"]) if "step" in f else 0
        cols: dict[str, np.ndarray] = {}
        for k in INT_COLUMNS + FLOAT_COLUMNS:
            if k in f:
                cols[k] = np.asarray(f[k][()])
            else:  # a column added after the file was written
                cols[k] = np.full(n, -1 if k in INT_COLUMNS else np.nan,
                                  dtype=np.int64 if k in INT_COLUMNS else np.float64)
        blocks = {b: np.asarray(d[()]) for b, d in f["blocks"].items()} if "blocks" in f else {}
        sharp = ({k: np.asarray(d[()]) for k, d in f["sharpness"].items()}
                 if "sharpness" in f else {})
        return Track(
            path=path, label=str(attr(f, "label", "")), model=str(attr(f, "model", "")),
            optimizer=str(attr(f, "optimizer", "")), sam=bool(attr(f, "sam", False)),
            settings=get_json_attr(f, "settings", {}) or {}, columns=cols, blocks=blocks,
            sharpness=sharp,
        )


def created_stamp(path: str | Path) -> str | None:
    """The ``created`` attribute of an existing track file (kept across rewrites)."""
    with open_h5(path, kind=TRACK_FORMAT) as f:
        v = attr(f, "created", None)
        return None if v is None else str(v)
