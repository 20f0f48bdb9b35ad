"""One call from a checkpoint path to a landscape file (what ``geomkit landscape`` runs)."""

from __future__ import annotations

from pathlib import Path

import torch

from geomkit.errors import CheckpointError, SpecError

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
DIRECTION_KINDS = ("random", "hessian")


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
    x: tuple[float, float, int] = (-1.0, 1.0, 51),
    y: tuple[float, float, int] | None = (-1.0, 1.0, 51),
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
) -> Landscape:
    """Loss surface (or line, ``y=None``) around a checkpoint into the resumable file ``out``.

    Directions (``direction``):

    * ``"random"``: seeded Gaussian directions normalized by ``norm``/``ignore``
      (filter normalization with biases and norm layers zeroed by default);
    * ``"hessian"``: the top-1 (line) or top-2 (surface) Hessian eigenvectors on the
      analysis data;
    * a checkpoint path ``CKPT2`` of the same architecture: x is the straight line
      ``theta2 - theta`` (a = 0 is the first, a = 1 the second checkpoint); a 2-D grid
      adds one random normalized y direction.

    ``loss`` is ``ce`` (default), ``ce:EPS`` (label smoothing), ``bce`` or ``mse``.

    The spec stored in the file (and checked on resume) holds the checkpoint's
    SHA-256, the grid, direction, norm, ignore, seed, split, samples, dtype and (when not
    plain ``ce``) the loss.
    """
    from geomkit.checkpoint import load_checkpoint

    loss_spec(loss, label_smoothing)  # a bad loss fails before the checkpoint loads
    if norm not in NORMS:
        raise SpecError(f"unknown normalization {norm!r}; choose one of {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise SpecError(f"unknown ignore option {ignore!r}; choose one of {', '.join(IGNORES)}")
    grid = Grid(tuple(x), None if y is None else tuple(y))
    # the result arrays must fit in memory (the CLI also asks --yes for merely large ones)
    check_grid(grid.x, grid.y, samples=samples, allow_large=True)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model
    inputs, targets = ckpt.analysis_data(split, samples)
    if direction == "random":
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
    return compute_landscape(
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


def _json(obj) -> str:
    import json

    d = obj.to_dict() if hasattr(obj, "to_dict") else obj
    try:
        return json.dumps(d, sort_keys=True)
    except TypeError:
        return str(d)
