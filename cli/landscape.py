"""``geomkit landscape`` (and ``geomkit landscape-merge``): loss surfaces to resumable HDF5."""

from __future__ import annotations

import argparse
import math
import re

import numpy as np

from cli._common import (
    add_device_flag,
    add_json_flag,
    add_loss_flags,
    loss_of,
    parse_range,
    positive_int,
    print_json,
    print_table,
    seed_int,
)
from cli._source import add_source_flags, checkpoints
from geomkit.device import resolve_device

ORDER = 50

#: values starting with "-" that are numbers or grid specs (-1, -0.5, -1:1:51, -1:inf:3,
#: -inf:1:3, -nan:0:3), so that argparse passes them to --x/--y/--seed instead of taking
#: them for flags; parse_range then says what is wrong with them
_GRID_LIKE = re.compile(r"^-(\d|\.\d|inf|nan)[\w.:+-]*$", re.IGNORECASE)

_DIR_HELP = (
    "direction(s): 'random' (seeded Gaussian, normalized by --norm/--ignore; default){hess}, "
    "'pca' (the top-2 principal components of the weights along a training run, with "
    "--trajectory; unit vectors, not filter normalized) "
    "or the path of a second checkpoint of the same architecture CKPT2: x is the straight "
    "line theta2 - theta (x=0 is CKPT, x=1 is CKPT2), 1-D unless --y is given, which adds a "
    "random normalized y direction"
)


def register(subparsers) -> None:
    from geomkit.geometry.landscape import IGNORES, NORMS, hessian_available

    hess = ", 'hessian' (the top Hessian eigenvectors)" if hessian_available() else ""
    p = subparsers.add_parser(
        "landscape",
        help="loss/accuracy surface around a checkpoint (filter-normalized directions) to HDF5",
        description="Evaluate the mean loss (cross-entropy unless --loss) and accuracy on the "
        "first N analysis examples at every theta + a*d1 + b*d2 of a grid, into a resumable "
        "HDF5 file in the layout of tomgoldstein/loss-landscape (xcoordinates, ycoordinates, "
        "train_loss, train_acc shaped [len(y), len(x)]). Re-running the same command resumes "
        "an interrupted file; a file computed with another spec is refused. Under torchrun "
        "each rank computes its shard (OUT.shard<i>of<n>.h5) and rank 0 merges them into OUT. "
        "A grid above 1,000,000 points or a 1 GiB file is refused, with its estimated cost, "
        "unless --yes.",
    )
    # let `--x -1:1:51` through: argparse would take "-1:1:51" for an option flag
    p._negative_number_matcher = _GRID_LIKE
    p.add_argument("checkpoint", nargs="?", metavar="CKPT",
                   help="geomkit checkpoint (.pt) or run directory (or --model SPEC --weights "
                   "FILE --data SOURCE)")
    add_source_flags(p)
    p.add_argument(
        "--x",
        default=None,
        metavar="MIN:MAX:NUM",
        help="x grid (default -1:1:51; -0.5:1.5:41 for --dir CKPT2; for --dir pca the "
        "projected path and the checkpoint plus 20%% of their extent on each side, 51 points)",
    )
    p.add_argument(
        "--y",
        default=None,
        metavar="MIN:MAX:NUM",
        help="y grid, or 'none' for a 1-D line (default -1:1:51 for random/hessian "
        "directions, none for --dir CKPT2, the path's extent for --dir pca)",
    )
    p.add_argument(
        "--dir",
        default="random",
        metavar="random|hessian|pca|CKPT2" if hess else "random|pca|CKPT2",
        help=_DIR_HELP.format(hess=hess),
    )
    p.add_argument(
        "--trajectory",
        default=None,
        metavar="RUN_DIR",
        help="with --dir pca: the run directory trained with `geomkit train "
        "--snapshot-every E` (or its snapshots.h5); the file also stores each snapshot's "
        "(a, b), distance from the plane, true loss and the surface's value there",
    )
    p.add_argument(
        "--centered",
        action="store_true",
        help="with --dir pca: subtract the snapshots' mean difference before the PCA "
        "(sklearn's PCA, as the reference projection.py); default: uncentered, the plane "
        "through CKPT that fits the path best",
    )
    p.add_argument(
        "--norm",
        default=None,
        choices=NORMS,
        help="direction normalization: filter (Li et al. 2018, per dim-0 slice; "
        "default), layer (per tensor) or none (raw Gaussian, prone to NaN surfaces); "
        "PCA directions are never normalized",
    )
    p.add_argument(
        "--ignore",
        default="biasbn",
        choices=IGNORES,
        help="biasbn: zero the direction on 1-D parameters (biases, norm layers; "
        "default; for pca: leave them out of the PCA); none: keep them, normalized as a "
        "whole",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=1024,
        metavar="N",
        help="analysis examples: the first N of the training split (default 1024)",
    )
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the random directions (default 0)")
    add_loss_flags(p)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="B",
        help="evaluation mini-batch (default 1024; larger is faster on CPU)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="i/n",
        help="compute only shard i of n of the grid points (each shard its own "
        "resumable file; join them with `geomkit landscape-merge`)",
    )
    p.add_argument("--out", required=True, metavar="FILE.h5", help="result file (HDF5)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="require FILE.h5 to exist and continue it (re-running without "
        "--resume also resumes a matching file)",
    )
    p.add_argument(
        "--yes",
        dest="allow_large",
        action="store_true",
        help="compute a grid above 1,000,000 points or a 1 GiB file (refused by default, "
        "with its estimated points, file size and time)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)

    m = subparsers.add_parser(
        "landscape-merge",
        help="join the shard files of one `geomkit landscape --shard i/n` run into one file",
        description="Check that the files are all n shards of one run (same checkpoint, grid, "
        "directions, seed and normalization, each finished) and write the whole surface to "
        "--out, identical in form to an unsharded run.",
    )
    m.add_argument("shards", nargs="+", metavar="SHARD.h5", help="the n shard files")
    m.add_argument("--out", required=True, metavar="FILE.h5", help="merged result file")
    add_json_flag(m)
    m.set_defaults(func=run_merge)


def _grid(args) -> tuple[tuple | None, tuple | str | None]:
    """The grid asked for; for --dir pca an unset axis is None (x) / "auto" (y): the
    library sizes it to the projected path."""
    from pathlib import Path

    pca = args.dir == "pca"
    interp = args.dir not in ("random", "hessian", "pca") and Path(args.dir).exists()
    if args.x:
        x = parse_range(args.x, "--x")
    else:
        x = None if pca else ((-0.5, 1.5, 41) if interp else (-1.0, 1.0, 51))
    if args.y is None:
        y = "auto" if pca else (None if interp else (-1.0, 1.0, 51))
    elif args.y.lower() == "none":
        y = None
    else:
        y = parse_range(args.y, "--y")
    return x, y


def _summary(res) -> dict:
    loss = np.where(res.done, res.loss, np.nan)
    finite = loss[np.isfinite(loss)]
    a = res.attrs
    center_acc = None
    j = int(np.argmin(np.abs(res.xcoordinates)))
    if res.ycoordinates is None:
        center_acc = float(res.acc[j])
    else:
        center_acc = float(res.acc[int(np.argmin(np.abs(res.ycoordinates))), j])
    out = {
        "file": res.path,
        "x": a.get("x"),
        "y": a.get("y") or None,
        "shape": list(res.loss.shape),
        "points_done": int(res.done.sum()),
        "points_total": int(res.done.size),
        "complete": res.complete,
        "center_loss": res.center_loss,
        "center_acc": center_acc,
        "min_loss": float(finite.min()) if finite.size else None,
        "max_loss": float(finite.max()) if finite.size else None,
        "non_finite_points": int((res.done & ~np.isfinite(res.loss)).sum()),
        "seconds": float(res.seconds),
        "points_per_s": float(a.get("points_per_s", 0.0)) or None,
        "dir": a.get("dir"),
        "norm": a.get("norm"),
        "ignore": a.get("ignore"),
        "seed": a.get("seed"),
        "samples": a.get("samples"),
        "shard": a.get("shard"),
        "checkpoint_sha256": a.get("checkpoint_sha256"),
    }
    if a.get("dir") == "pca":
        out.update(_trajectory_summary(res))
    return out


def _trajectory_summary(res) -> dict:
    from geomkit.plot import DISAGREE, read_trajectory

    tr = read_trajectory(res.path)
    if tr is None:
        return {"trajectory": None}
    gap = tr.disagreement()
    return {
        "explained_variance_ratio": [float(v) for v in tr.explained_variance_ratio],
        "centered": tr.centered,
        "snapshots": len(tr.a),
        "max_distance_from_plane": float(np.max(tr.residual)),
        "max_relative_loss_gap": float(np.nanmax(gap)) if np.isfinite(gap).any() else None,
        "snapshots_off_surface": int(tr.disagrees(DISAGREE).sum()),
    }


def _render(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    rows = [[k, v] for k, v in summary.items() if not (isinstance(v, float) and math.isnan(v))]
    print_table(
        ["field", "value"],
        [[k, v if not isinstance(v, list) else ("x" if k == "shape" else ", ").join(
            f"{u:.4g}" if isinstance(u, float) else str(u) for u in v)] for k, v in rows],
    )


def run(args: argparse.Namespace) -> int:
    from geomkit import distributed
    from geomkit.geometry.landscape import landscape_from_checkpoint, parse_shard
    from geomkit.geometry.landscape.grid_check import check_grid

    x, y = _grid(args)
    shard = parse_shard(args.shard) if args.shard else None
    # the grid's cost is known before the checkpoint loads: refuse a huge one up front
    # (an axis sized to a trajectory later has the default 51 points)
    check_grid(x or (-1.0, 1.0, 51), (-1.0, 1.0, 51) if y == "auto" else y,
               samples=args.samples, shards=shard[1] if shard else 1,
               allow_large=args.allow_large)
    res = landscape_from_checkpoint(
        checkpoints(args, args.checkpoint)[0],
        args.out,
        x=x,
        y=y,
        direction=args.dir,
        norm=args.norm or "filter",
        ignore=args.ignore,
        samples=args.samples,
        seed=args.seed,
        batch_size=args.batch_size,
        shard=shard,
        resume=True if args.resume else None,
        device=resolve_device(args.device),
        loss=loss_of(args),
        progress=not args.no_progress,  # tqdm on stderr; stdout stays one table / JSON object
        trajectory=args.trajectory,
        centered=args.centered,
    )
    if distributed.is_main():
        _render(_summary(res), args.json)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from geomkit.geometry.landscape import merge_shards

    res = merge_shards(args.shards, args.out)
    _render(_summary(res), args.json)
    return 0
