"""Filter-normalized loss landscapes (Li et al., 2018): directions, evaluation, storage.

* :mod:`.directions` -- seeded Gaussian directions keyed by parameter name, filter /
  layer / no normalization, interpolation between checkpoints, Hessian eigenvectors;
* :mod:`.evaluate` -- ``L(a, b)`` and accuracy at ``theta + a d1 + b d2`` over a grid
  (in-place loop under ``torch.inference_mode``; weights restored exactly);
* :mod:`.storage` -- resumable, shardable HDF5 files in the reference tool's layout;
* :mod:`.trajectory` -- trajectory-PCA directions from training snapshots (Li et al.,
  Sec. 7) and the path's projection, distance from the plane and true losses;
* :mod:`.run` -- checkpoint path to file, as ``geomkit landscape`` does.

Example (in memory)::

    dirs = random_directions(model, 2, seed=0)              # filter-normalized, biasbn
    surf = loss_landscape(model, x, y, dirs, Grid((-1, 1, 21), (-1, 1, 21)))
    surf.loss.shape                                         # (21, 21): rows are y
"""

from .directions import (
    IGNORES,
    NORMS,
    Direction,
    cosine,
    hessian_directions,
    interpolation_direction,
    normalize_direction,
    random_direction,
    random_directions,
)
from .evaluate import (
    DEFAULT_BATCH_SIZE,
    Grid,
    Landscape,
    auto_batch_size,
    evaluate,
    evaluate_points,
    loss_landscape,
)
from .run import DIRECTION_KINDS, hessian_available, landscape_from_checkpoint
from .storage import (
    compute_landscape,
    merge_shards,
    parse_shard,
    read_directions,
    read_landscape,
    shard_indices,
    shard_path,
)
from .trajectory import (
    TrajectoryPCA,
    bilinear,
    snapshot_losses,
    trajectory_grid,
    trajectory_pca,
    write_trajectory,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DIRECTION_KINDS",
    "Direction",
    "Grid",
    "IGNORES",
    "Landscape",
    "TrajectoryPCA",
    "NORMS",
    "auto_batch_size",
    "bilinear",
    "compute_landscape",
    "cosine",
    "evaluate",
    "evaluate_points",
    "hessian_available",
    "hessian_directions",
    "interpolation_direction",
    "landscape_from_checkpoint",
    "loss_landscape",
    "merge_shards",
    "normalize_direction",
    "parse_shard",
    "random_direction",
    "random_directions",
    "read_directions",
    "read_landscape",
    "shard_indices",
    "shard_path",
    "snapshot_losses",
    "trajectory_grid",
    "trajectory_pca",
    "write_trajectory",
]
