"""Weights along a training run in one compact file, for trajectory-PCA landscapes.

:class:`SnapshotWriter` is a training callback (``train(cfg, out, callbacks=[...])``)
that keeps the trainable parameters in ``OUT/snapshots.h5`` (layout:
:mod:`geomkit.io.snapshots`): the initial weights (epoch 0, as the reference code of
Li et al. 2018, whose trajectory starts at the model saved before training), every
``E``-th epoch and the final epoch.

Robustness: the whole file is rebuilt and replaced atomically (:func:`geomkit.io.atomic_h5`)
at every snapshot, so a SIGKILL at any moment leaves the previous complete file, never a
damaged one. Cost per snapshot: the n-th snapshot writes ``n * P * 4`` bytes -- ``O(n^2 P)``
over a run (50 snapshots of a 1M-parameter model: 200 MB at the end, ~5 GB written in
all; negligible for the package's tiny models; keep ``n * P`` well inside memory).

Resuming (``train(..., resume=True)`` after a kill) gives the file of an uninterrupted
run: the loop's ``start`` event of the resumed process carries the checkpoint's weights
and epoch e; rows after epoch e (a killed process's) are dropped, and a row due at
epoch e that is missing (a kill between the checkpoint and the snapshot) is written from
those weights, which are exactly the checkpoint's. A fresh start (epoch 0) replaces the
file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geomkit import distributed
from geomkit.errors import ResultFileError, SpecError
from geomkit.io.snapshots import SNAPSHOTS_FILE, Snapshots, read_snapshots, write_snapshots

__all__ = ["SnapshotWriter", "flat_parameters"]


def flat_parameters(model: nn.Module) -> tuple[list[str], list[tuple[int, ...]], np.ndarray]:
    """``(names, shapes, theta)``: the trainable parameters, flattened to float32 in
    ``named_parameters`` order."""
    names, shapes, parts = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        names.append(name)
        shapes.append(tuple(int(s) for s in p.shape))
        parts.append(p.detach().to("cpu", torch.float32).reshape(-1).numpy())
    theta = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return names, shapes, theta.astype(np.float32, copy=False)


class SnapshotWriter:
    """Training callback keeping the weights every ``every_epochs`` epochs (and the final
    epoch, and with ``initial`` the initial weights) in ``out_dir/snapshots.h5``.

    Use: ``train(cfg, out, callbacks=[SnapshotWriter(out, E)])``. Called at the run's
    start and epoch ends only (``every = 0``); writes on the main process only under DDP.

    Raises:
        SpecError: ``every_epochs`` is not a positive integer.
    """

    every = 0  # start and epoch events only

    def __init__(self, out_dir: str | Path, every_epochs: int, *, initial: bool = True,
                 filename: str = SNAPSHOTS_FILE) -> None:
        if isinstance(every_epochs, bool) or not isinstance(every_epochs, int) \
                or every_epochs < 1:
            raise SpecError(f"snapshot_every must be a positive number of epochs, got "
                            f"{every_epochs!r}", param="snapshot_every")
        self.path = Path(out_dir) / filename
        self.every_epochs = every_epochs
        self.initial = bool(initial)
        self._total: int | None = None  # the run's epochs, from the events' config

    def _due(self, epoch: int) -> bool:
        if epoch == 0:
            return self.initial
        return epoch % self.every_epochs == 0 or epoch == self._total

    def _old(self, names: list[str], shapes: list[tuple[int, ...]]) -> Snapshots | None:
        if not self.path.exists():
            return None
        try:
            old = read_snapshots(self.path)
        except ResultFileError:
            return None  # an empty or damaged leftover is rebuilt
        if list(old.names) != names or [tuple(s) for s in old.shapes] != shapes:
            raise ResultFileError(
                f"{self.path} holds snapshots of other parameters than this run's; "
                "move it away or train into another out")
        return old

    def __call__(self, event: Any) -> None:
        if event.kind not in ("start", "epoch") or not distributed.is_main():
            return
        config = getattr(event, "config", None) or {}
        if config.get("epochs") is not None:
            self._total = int(config["epochs"])
        names, shapes, theta = flat_parameters(event.model)
        epoch, step = int(event.epoch), int(event.step)
        # at the start: rows up to the checkpoint's epoch are this run's, later ones a
        # killed process's, and a fresh start (epoch 0) keeps none; at an epoch's end:
        # the rows before it
        keep = (epoch if epoch > 0 else -1) if event.kind == "start" else epoch - 1
        old = self._old(names, shapes)
        rows: dict[int, tuple[int, Any]] = {}
        if old is not None:
            for i, (e, s) in enumerate(zip(old.epochs.tolist(), old.steps.tolist(),
                                           strict=True)):
                if e <= keep:
                    rows[e] = (s, (old, i))
        if self._due(epoch) and epoch not in rows:
            rows[epoch] = (step, theta)
        if old is not None and sorted(rows) == old.epochs.tolist():
            return  # nothing new
        order = sorted(rows)
        model = event.model
        spec = getattr(model, "geomkit_spec", None) or {}
        meta = {"model": spec.get("name", ""), "model_kwargs": spec.get("kwargs", {}),
                "every_epochs": self.every_epochs, "initial": self.initial}
        write_snapshots(self.path, [rows[e][1] for e in order], [rows[e][0] for e in order],
                        order, names=names, shapes=shapes, meta=meta)
