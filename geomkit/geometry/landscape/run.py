"""One call from a checkpoint path to a landscape file (what ``geomkit landscape`` runs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from geomkit import distributed
from geomkit.errors import CheckpointError, SpecError
from geomkit.io import dumps_json
from geomkit.io.landscape import read_landscape

from .directions import (
    IGNORES,
    NORMS,
    hessian_directions,
    interpolation_direction,
    random_direction,
    random_directions,
)
from .evaluate import Grid, Landscape
from .grid_check import check_grid
from .storage import compute_landscape, loss_spec

#: ``direction`` values besides a checkpoint path.
DIRECTION_KINDS = ("random", "hessian", "pca")
#: what ``x=None`` means for the non-PCA directions (PCA: the path's extent)
DEFAULT_RANGE = (-1.0, 1.0, 51)


def hessian_available() -> bool:
    """True when ``geomkit.geometry.hessian.hessian_eigs`` exists (top-k eigenvectors)."""
    import inspect

    try:
        from geomkit.geometry import hessian
    except ImportError:
        return False
    fn = getattr(hessian, "hessian_eigs", None)
    return fn is not None and "return_vectors" in inspect.signature(fn).parameters


def landscape_from_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    x: tuple[float, float, int] | None = None,
    y: tuple[float, float, int] | None | str = "auto",
    direction: str = "random",
    norm: str = "filter",
    ignore: str = "biasbn",
    samples: int | None = 1024,
    split: str = "train",
    seed: int = 0,
    batch_size: int | None = None,
    shard: tuple[int, int] | None = None,
    resume: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    flush_interval: float = 5.0,
    progress: bool = False,
    loss: str = "ce",
    label_smoothing: float = 0.0,
    trajectory: str | Path | None = None,
    centered: bool = False,
    grid_points: int = 51,
) -> Landscape:
    """Loss surface (or line, ``y=None``) around a checkpoint into the resumable file ``out``.

    Directions (``direction``):

    * ``"random"``: seeded Gaussian directions normalized by ``norm``/``ignore``
      (filter normalization with biases and norm layers zeroed by default);
    * ``"hessian"``: the top-1 (line) or top-2 (surface) Hessian eigenvectors on the
      analysis data;
    * a checkpoint path ``CKPT2`` of the same architecture: x is the straight line
      ``theta2 - theta`` (a = 0 is the first, a = 1 the second checkpoint); a 2-D grid
      adds one random normalized y direction;
    * ``"pca"`` with ``trajectory`` (a run directory holding ``snapshots.h5``, or that
      file): the top-2 principal components of the snapshots' differences from the
      checkpoint (:func:`~.trajectory.trajectory_pca`, ``centered`` and ``ignore`` as
      there; unit vectors, *not* filter normalized, ``norm`` must stay ``filter`` or
      ``none`` and is stored as ``none``).  The file also gets the group ``trajectory``
      (:func:`~.trajectory.write_trajectory`): explained-variance ratios, each snapshot's
      ``(a, b)``, distance from the plane, step/epoch, true loss at its own weights and
      the surface interpolated at ``(a, b)`` -- once the grid is complete (a shard
      file gets it after ``landscape-merge`` and a rerun of the command on the merged
      file).  ``x``/``y`` default to the path's extent plus 20 % on each side,
      ``grid_points`` points each.

    ``x=None`` is ``-1:1:51`` for the other directions; ``y="auto"`` is ``-1:1:51`` (a
    2-D grid), ``y=None`` a 1-D line.

    ``loss`` is ``ce`` (default), ``ce:EPS`` (label smoothing), ``bce`` or ``mse``.

    The spec stored in the file (and checked on resume) holds the checkpoint's
    SHA-256, the grid, direction, norm, ignore, seed, split, samples, dtype, (when not
    plain ``ce``) the loss and, for ``pca``, the snapshots file's SHA-256 and ``centered``.
    """
    from geomkit.checkpoint import load_checkpoint

    loss_spec(loss, label_smoothing)  # a bad loss fails before the checkpoint loads
    if norm not in NORMS:
        raise SpecError(f"unknown normalization {norm!r}; choose one of {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise SpecError(f"unknown ignore option {ignore!r}; choose one of {', '.join(IGNORES)}")
    pca_run = direction == "pca"
    if trajectory is not None and not pca_run:
        raise SpecError(f"trajectory is used by direction 'pca' only, not {direction!r}; "
                        "use the direction pca or drop trajectory", param="trajectory")
    if centered and not pca_run:
        raise SpecError(f"centered is an option of direction 'pca' only, not {direction!r}; "
                        "drop centered", param="centered")
    if pca_run:
        if trajectory is None:
            raise SpecError("direction 'pca' needs trajectory: the run directory trained "
                            "with --snapshot-every (or its snapshots.h5)", param="trajectory")
        if y is None:
            raise SpecError("direction 'pca' draws a 2-D surface, not a line; give a y range "
                            "or leave y out (the path's extent)", param="y")
        if norm not in ("filter", "none"):
            raise SpecError(f"PCA directions are not normalized; drop norm={norm!r}",
                            param="norm")
        norm = "none"
        from geomkit.io.snapshots import read_snapshots
        from geomkit.provenance import file_sha256

        snaps = read_snapshots(trajectory)  # a bad trajectory fails before the checkpoint
        snaps_sha = file_sha256(snaps.path)
    if not pca_run or (x is not None and y != "auto"):
        grid = Grid(tuple(x or DEFAULT_RANGE), None if y is None else
                    tuple(DEFAULT_RANGE if y == "auto" else y))
        # the result arrays must fit in memory (the CLI also asks --yes for merely large ones)
        check_grid(grid.x, grid.y, samples=samples, allow_large=True)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model
    inputs, targets = ckpt.analysis_data(split, samples)
    if pca_run:
        from .trajectory import trajectory_grid, trajectory_pca

        pca = trajectory_pca(snaps, model, centered=centered, ignore=ignore)
        auto = trajectory_grid(pca.coords, num=grid_points)
        grid = Grid(tuple(x or auto[0]), tuple(auto[1] if y == "auto" else y))
        check_grid(grid.x, grid.y, samples=samples, allow_large=True)
        dir_spec = "pca"

        def make():
            return list(pca.directions)
    elif direction == "random":
        dir_spec = "random"

        def make():
            return random_directions(model, grid.ndim, seed=seed, norm=norm, ignore=ignore)
    elif direction == "hessian":
        if not hessian_available():
            raise SpecError("direction 'hessian' needs geomkit.geometry.hessian, which is not "
                            "installed", param="direction")
        dir_spec = "hessian"

        def make():
            return hessian_directions(
                model, inputs, targets, k=grid.ndim, seed=seed, batch_size=batch_size,
                device=device, loss=loss, label_smoothing=label_smoothing,
            )
    else:
        if not Path(direction).exists():
            raise CheckpointError(
                f"direction {direction!r} is neither random/hessian nor an existing checkpoint "
                "file", param="direction"
            )
        ckpt2 = load_checkpoint(direction)
        if ckpt2.model_name != ckpt.model_name:
            raise CheckpointError(
                f"cannot interpolate {ckpt.model_name} and {ckpt2.model_name}; "
                "use two checkpoints of the same architecture"
            )
        dir_spec = f"checkpoint:{ckpt2.sha256()}"

        def make():
            d = [interpolation_direction(model, ckpt2.model)]
            if grid.ndim == 2:
                d.append(random_direction(model, seed=seed, norm=norm, ignore=ignore))
            return d

    spec = {
        "checkpoint_sha256": ckpt.sha256(),
        "dir": dir_spec,
        "norm": norm,
        "ignore": ignore,
        "seed": int(seed),
        "split": split,
        "samples": int(len(inputs)),
        "dtype": str(dtype or next(model.parameters()).dtype).replace("torch.", ""),
    }
    attrs = {
        "checkpoint": str(ckpt.path),
        "model_name": str(ckpt.model_name),
        "data_spec": _json(ckpt.data_spec),
    }
    if dir_spec.startswith("checkpoint:"):
        attrs["dir_checkpoint"] = str(Path(direction).resolve())
    if pca_run:
        spec["trajectory_sha256"] = snaps_sha
        spec["centered"] = bool(centered)
        attrs["trajectory"] = str(snaps.path.resolve())
        attrs["explained_variance_ratio"] = dumps_json(
            [float(v) for v in pca.explained_variance_ratio])
    res = compute_landscape(
        out,
        model,
        inputs,
        targets,
        make,
        grid,
        spec=spec,
        attrs=attrs,
        shard=shard,
        resume=resume,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        flush_interval=flush_interval,
        progress=progress,
        loss=loss,
        label_smoothing=label_smoothing,
    )
    if pca_run and res.complete and shard is None and distributed.is_main():
        _add_trajectory(res, pca, model, inputs, targets, snaps, snaps_sha,
                        batch_size=batch_size, device=device, dtype=dtype, loss=loss,
                        label_smoothing=label_smoothing)
        res = dataclasses.replace(read_landscape(res.path), seconds=res.seconds)
    return res


def _add_trajectory(res: Landscape, pca, model, inputs, targets, snaps, snaps_sha: str,
                    **options) -> None:
    """The ``trajectory`` group of a complete PCA surface (skipped if already there for
    this snapshots file: the true losses are not computed twice)."""
    from geomkit.io import attr, open_h5

    from .trajectory import GROUP, bilinear, snapshot_losses, write_trajectory

    with open_h5(res.path, "r") as f:
        if GROUP in f and attr(f[GROUP], "snapshots_sha256") == snaps_sha:
            return
    true_loss, true_acc = snapshot_losses(model, snaps, inputs, targets, **options)
    surface = bilinear(res.xcoordinates, res.ycoordinates,
                       np.where(res.done, res.loss, np.nan), pca.coords[:, 0], pca.coords[:, 1])
    write_trajectory(res.path, pca, true_loss=true_loss, true_acc=true_acc,
                     surface_loss=surface, snapshots=snaps.path, snapshots_sha256=snaps_sha)


def _json(obj) -> str:
    import json

    d = obj.to_dict() if hasattr(obj, "to_dict") else obj
    try:
        return json.dumps(d, sort_keys=True)
    except TypeError:
        return str(d)
