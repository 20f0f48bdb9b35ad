"""Trajectory-PCA directions (Li et al. 2018, Sec. 7) and the path on the surface.

Given snapshots ``theta_0 .. theta_{n-1}`` of a run (:mod:`geomkit.io.snapshots`) and
the weights ``theta_c`` a landscape is centred on (normally the final checkpoint, which
is itself the last snapshot), the differences ``D_i = theta_i - theta_c`` form the rows of
``D`` (``n x P``).  The two directions are the top right singular vectors of ``D``
(``centered=False``, the paper's text) or of ``C D`` with ``C = I - 11^T/n``
(``centered=True``: sklearn's ``PCA``, which the reference ``projection.py`` calls)::

    G = D D^T  (n x n, float64, accumulated over blocks of parameters)
    G_c = C G C            (centered)       G_c u_k = s_k^2 u_k,  s_1 >= s_2
    v_k = D^T C u_k / s_k  (unit norm)      ratio_k = s_k^2 / trace(G_c)

so memory is ``O(n^2)`` plus one block of columns, never ``n x P`` at once.  The plane of
the landscape passes through ``theta_c``; snapshot ``i`` is drawn at
``(a_i, b_i) = (<D_i, v_1>, <D_i, v_2>)`` (the reference's projection, uncentered in both
variants) and lies ``r_i = ||D_i - a_i v_1 - b_i v_2||`` off the plane (over *all*
parameters: the moves of parameters left out of the PCA count as off-plane).

Default ``centered=False``: among planes through ``theta_c`` -- the plane every
landscape is drawn in -- the uncentered singular vectors minimise ``sum_i r_i^2``
(Eckart-Young), so the path lies as close to the drawn surface as any plane allows; the
centered variant fits a plane through the snapshots' mean, which the surface does not
pass through.  Default ``ignore="biasbn"``: as the package's random directions, the
directions are zero on 1-D parameters (biases, norm layers) -- the reference's
``--ignore biasbn``; ``ignore="none"`` includes every parameter.  The directions are
*not* filter normalized (that would bend the plane away from the path); both are unit
vectors in the full parameter space, so grid coordinates are Euclidean distances.

Signs (the SVD fixes none): each axis is oriented so that the path arrives from its
negative side -- the first snapshot with a non-negligible coordinate on it has it < 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from geomkit.errors import CheckpointError, ResultFileError, SpecError

from .directions import IGNORES, Direction

if TYPE_CHECKING:
    from geomkit.io.snapshots import Snapshots

__all__ = ["GROUP", "TrajectoryPCA", "bilinear", "snapshot_losses", "trajectory_grid",
           "trajectory_pca", "write_trajectory"]

#: columns of the snapshots read at once (a multiple of the file's chunk width)
BLOCK_COLUMNS = 1 << 20
#: an eigenvalue below this fraction of the largest counts as zero (rank test)
RANK_TOL = 1e-10


@dataclass(frozen=True)
class TrajectoryPCA:
    """The top-2 principal directions of a trajectory and every snapshot's place.

    Attributes:
        directions: ``(v_1, v_2)``, each a ``{name: tensor}`` over every parameter (zero
            where not ``included``), unit norm, float32.
        explained_variance_ratio: ``s_k^2 / trace(G_c)`` of the two (sklearn's
            ``explained_variance_ratio_`` for ``centered=True``).
        singular_values: ``s_1, s_2``.
        coords: ``[n, 2]``: ``(a_i, b_i)`` of each snapshot in the plane through the centre.
        residual: ``[n]``: ``||D_i - a_i v_1 - b_i v_2||`` (all parameters).
        distance: ``[n]``: ``||D_i||`` (all parameters).
        steps, epochs: of each snapshot.
        included: the parameters the PCA used.
    """

    directions: tuple[Direction, Direction] = field(repr=False)
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    coords: np.ndarray
    residual: np.ndarray
    distance: np.ndarray
    steps: np.ndarray
    epochs: np.ndarray
    included: tuple[str, ...] = field(repr=False)
    centered: bool = False
    ignore: str = "biasbn"


def _center_weights(center: nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(center, nn.Module):
        return {n: p.detach() for n, p in center.named_parameters() if p.requires_grad}
    return {n: torch.as_tensor(v).detach() for n, v in center.items()}


def _check_names(snaps: Snapshots, weights: Mapping[str, torch.Tensor]) -> None:
    if list(snaps.names) != list(weights):
        extra = [n for n in snaps.names if n not in weights]
        missing = [n for n in weights if n not in snaps.names]
        what = (f"e.g. {extra[:2]} only in the snapshots, {missing[:2]} only in the "
                "checkpoint") if extra or missing else "in another order"
        raise CheckpointError(
            f"the snapshots in {snaps.path} hold other parameters than the checkpoint "
            f"({what}); pass the run directory the checkpoint was trained in")
    for name, shape in zip(snaps.names, snaps.shapes, strict=True):
        if tuple(weights[name].shape) != tuple(shape):
            raise CheckpointError(
                f"parameter {name!r} is {tuple(shape)} in {snaps.path} but "
                f"{tuple(weights[name].shape)} in the checkpoint; pass the run directory "
                "the checkpoint was trained in")


def _blocks(p: int, width: int) -> Iterator[tuple[int, int]]:
    for a in range(0, p, width):
        yield a, min(p, a + width)


def _orient(coord: np.ndarray) -> float:
    """+1 or -1 so that the first non-negligible coordinate along the path is negative."""
    scale = float(np.max(np.abs(coord))) if coord.size else 0.0
    for c in coord:
        if abs(c) > 1e-6 * scale:
            return -1.0 if c > 0 else 1.0
    return 1.0


def trajectory_pca(
    snapshots: Snapshots | str | Path,
    center: nn.Module | Mapping[str, Any],
    *,
    centered: bool = False,
    ignore: str = "biasbn",
    block_columns: int = BLOCK_COLUMNS,
) -> TrajectoryPCA:
    """The top-2 PCA directions of the snapshots' differences from ``center``.

    Args:
        snapshots: a :class:`~geomkit.train.snapshots.Snapshots`, a snapshots file or a
            run directory holding ``snapshots.h5``.
        center: the model (or ``{name: tensor}``) the landscape is centred on; its
            trainable parameter names and shapes must be the snapshots'.
        centered: subtract the mean difference first (sklearn PCA) -- see the module
            docstring for why the default is False.
        ignore: ``biasbn`` (default) leaves 1-D parameters out of the PCA; ``none``
            keeps all.
        block_columns: parameters read and reduced at once.

    Raises:
        ResultFileError: missing / empty / damaged snapshots file, or a single snapshot.
        CheckpointError: the snapshots' parameters are not the checkpoint's.
        SpecError: the differences span fewer than two directions (the path is a line or
            a point), an unknown ``ignore``.
    """
    from geomkit.io.snapshots import Snapshots, read_snapshots

    if ignore not in IGNORES:
        raise SpecError(f"unknown ignore option {ignore!r}; choose one of {', '.join(IGNORES)}",
                        param="ignore")
    snaps = snapshots if isinstance(snapshots, Snapshots) else read_snapshots(snapshots)
    weights = _center_weights(center)
    _check_names(snaps, weights)
    n = len(snaps)
    if n < 2:
        raise ResultFileError(
            f"{snaps.path} holds one snapshot only (epoch {int(snaps.epochs[0])}); a "
            "trajectory PCA needs at least two: train with a smaller --snapshot-every")
    offsets = snaps.offsets()
    p_all = snaps.n_params
    theta_c = np.concatenate([weights[name].to("cpu", torch.float64).reshape(-1).numpy()
                              for name, _, _ in offsets]) if offsets else np.zeros(0)
    keep = np.zeros(p_all, dtype=bool)
    included = []
    for (name, a, b), shape in zip(offsets, snaps.shapes, strict=True):
        if ignore == "none" or len(shape) > 1:
            keep[a:b] = True
            included.append(name)
    if not included:
        raise SpecError("ignore='biasbn' leaves no parameter with two or more dimensions; "
                        "use ignore='none'", param="ignore")
    width = max(1, int(block_columns))

    def diffs(a: int, b: int) -> np.ndarray:
        return snaps.columns(a, b).astype(np.float64) - theta_c[a:b]

    # pass 1: the Gram matrix of the included part, the squared norm of the rest
    gram = np.zeros((n, n))
    rest = np.zeros(n)
    for a, b in _blocks(p_all, width):
        d = diffs(a, b)
        k = keep[a:b]
        di = d[:, k]
        gram += di @ di.T
        rest += np.einsum("ij,ij->i", d[:, ~k], d[:, ~k])
    cmat = np.eye(n) - np.full((n, n), 1.0 / n) if centered else np.eye(n)
    gc = cmat @ gram @ cmat
    gc = 0.5 * (gc + gc.T)
    lam, u = np.linalg.eigh(gc)
    lam, u = lam[::-1], u[:, ::-1]
    total = float(np.trace(gc))
    if not lam[0] > 0 or lam[1] <= RANK_TOL * lam[0]:
        why = "all equal the checkpoint" if not lam[0] > 0 else "lie on one line through it"
        if centered and lam[0] > 0:
            why = "lie on one line"
        raise SpecError(
            f"the {n} snapshots in {snaps.path} {why}: they span fewer than two "
            "directions; keep more snapshots (a smaller --snapshot-every)"
            + ("" if not centered else " or drop --centered"), param="trajectory")
    s = np.sqrt(lam[:2])
    w = cmat @ u[:, :2]  # v_k = D^T w_k / s_k
    coords = (gram @ w) / s  # a_i = <D_i, v_k>
    for k in range(2):
        sign = _orient(coords[:, k])
        coords[:, k] *= sign
        w[:, k] *= sign
    # pass 2: the directions, and each snapshot's distance from the plane
    v = np.zeros((2, p_all))
    res2 = np.zeros(n)
    for a, b in _blocks(p_all, width):
        d = diffs(a, b)
        k = keep[a:b]
        vb = np.zeros((2, b - a))
        vb[:, k] = (w.T @ d[:, k]) / s[:, None]
        v[:, a:b] = vb
        r = d - coords @ vb
        res2 += np.einsum("ij,ij->i", r, r)
    dirs = []
    for k in range(2):
        dirs.append({name: torch.from_numpy(v[k, a:b].astype(np.float32)).reshape(shape)
                     .to(weights[name].device)
                     for (name, a, b), shape in zip(offsets, snaps.shapes, strict=True)})
    return TrajectoryPCA(
        directions=(dirs[0], dirs[1]),
        explained_variance_ratio=lam[:2] / total,
        singular_values=s,
        coords=coords,
        residual=np.sqrt(np.maximum(res2, 0.0)),
        distance=np.sqrt(np.maximum(np.diag(gram) + rest, 0.0)),
        steps=np.asarray(snaps.steps),
        epochs=np.asarray(snaps.epochs),
        included=tuple(included),
        centered=bool(centered),
        ignore=ignore,
    )


def _nice(v: float, up: bool) -> float:
    """``v`` rounded outward to 2 significant digits (a readable grid spec)."""
    if v == 0:
        return 0.0
    e = 10.0 ** (np.floor(np.log10(abs(v))) - 1)
    return float((np.ceil(v / e) if up else np.floor(v / e)) * e)


def trajectory_grid(coords: np.ndarray, num: int = 51,
                    margin: float = 0.2) -> tuple[tuple[float, float, int], ...]:
    """Default ``(x, y)`` ranges covering the projected path and the centre, with
    ``margin`` times each axis's span added on both sides (ends rounded outward)."""
    out = []
    for k in range(2):
        c = np.asarray(coords)[:, k]
        lo, hi = min(0.0, float(c.min())), max(0.0, float(c.max()))
        span = hi - lo if hi > lo else 1.0
        lo, hi = lo - margin * span, hi + margin * span
        out.append((_nice(lo, up=False), _nice(hi, up=True), int(num)))
    return tuple(out)


def bilinear(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: np.ndarray,
             b: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``z`` (``[len(y), len(x)]``) at the points ``(a, b)``;
    NaN outside the grid (beyond rounding: 1e-6 of its span) or where a corner of the
    cell is not finite."""
    x, y, z = np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)
    out = np.full(len(a), np.nan)
    if len(x) < 2 or len(y) < 2:
        return out
    ex, ey = 1e-6 * (x[-1] - x[0]), 1e-6 * (y[-1] - y[0])
    for p, (ap, bp) in enumerate(zip(np.asarray(a, float), np.asarray(b, float), strict=True)):
        if not (x[0] - ex <= ap <= x[-1] + ex and y[0] - ey <= bp <= y[-1] + ey):
            continue
        ap, bp = min(max(ap, x[0]), x[-1]), min(max(bp, y[0]), y[-1])
        j = min(max(int(np.searchsorted(x, ap, side="right")) - 1, 0), len(x) - 2)
        i = min(max(int(np.searchsorted(y, bp, side="right")) - 1, 0), len(y) - 2)
        tx = (ap - x[j]) / (x[j + 1] - x[j])
        ty = (bp - y[i]) / (y[i + 1] - y[i])
        corners = z[i:i + 2, j:j + 2]
        w = np.array([[(1 - ty) * (1 - tx), (1 - ty) * tx], [ty * (1 - tx), ty * tx]])
        used = w != 0  # a corner of weight 0 (the point on an edge) need not be finite
        if not np.isfinite(corners[used]).all():
            continue
        out[p] = float((w[used] * corners[used]).sum())
    return out


@contextlib.contextmanager
def _weights_restored(model: nn.Module) -> Iterator[dict[str, nn.Parameter]]:
    params = dict(model.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        yield params
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])


def snapshot_losses(
    model: nn.Module,
    snapshots: Snapshots | str | Path,
    data: Any,
    targets: torch.Tensor | None = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The true loss and accuracy (percent) at every snapshot's weights ``theta_i``.

    The model's buffers (BatchNorm statistics) stay the centre checkpoint's, as on the
    surface, so the two are comparable; ``options`` are those of
    :func:`~geomkit.geometry.landscape.evaluate.evaluate` (``loss``, ``batch_size``,
    ``device``, ``dtype``: pass the grid's).  The weights are restored afterwards.
    """
    from geomkit.io.snapshots import Snapshots, read_snapshots

    from .evaluate import evaluate

    snaps = snapshots if isinstance(snapshots, Snapshots) else read_snapshots(snapshots)
    _check_names(snaps, _center_weights(model))
    losses, accs = np.full(len(snaps), np.nan), np.full(len(snaps), np.nan)
    with _weights_restored(model) as params:
        for i in range(len(snaps)):
            row = snaps.params(i)
            with torch.no_grad():
                for name, p in params.items():
                    if name in row:
                        p.copy_(torch.from_numpy(row[name]).to(p.device, p.dtype))
            losses[i], accs[i] = evaluate(model, data, targets, **options)
    return losses, accs


#: the group of a landscape file that holds the path (see :func:`write_trajectory`)
GROUP = "trajectory"


def write_trajectory(
    path: str | Path,
    pca: TrajectoryPCA,
    *,
    true_loss: np.ndarray,
    true_acc: np.ndarray,
    surface_loss: np.ndarray,
    snapshots: str | Path,
    snapshots_sha256: str,
) -> None:
    """Add (or replace) the group ``trajectory`` of a landscape file, atomically::

        trajectory/  step, epoch [n] int64; a, b, residual, distance, true_loss,
                     true_acc, surface_loss [n] float64 (surface_loss: the surface
                     interpolated bilinearly at (a, b); NaN outside the grid)
                     attrs: explained_variance_ratio [2], singular_values [2], centered,
                     ignore, included (JSON names), snapshots, snapshots_sha256

    The file is rebuilt in memory with the group and renamed over the old one
    (:func:`geomkit.io.atomic_h5`), under the file's computing lock.
    """
    from geomkit.io import atomic_h5, set_json_attr

    from .storage import _computing

    path = Path(path)
    with _computing(path), atomic_h5(path, copy=True) as f:
        if GROUP in f:
            del f[GROUP]
        g = f.create_group(GROUP)
        g.create_dataset("step", data=np.asarray(pca.steps, dtype=np.int64))
        g.create_dataset("epoch", data=np.asarray(pca.epochs, dtype=np.int64))
        for name, v in (("a", pca.coords[:, 0]), ("b", pca.coords[:, 1]),
                        ("residual", pca.residual), ("distance", pca.distance),
                        ("true_loss", true_loss), ("true_acc", true_acc),
                        ("surface_loss", surface_loss)):
            g.create_dataset(name, data=np.asarray(v, dtype=np.float64))
        g.attrs["explained_variance_ratio"] = np.asarray(pca.explained_variance_ratio, float)
        g.attrs["singular_values"] = np.asarray(pca.singular_values, float)
        g.attrs["centered"] = bool(pca.centered)
        g.attrs["ignore"] = str(pca.ignore)
        set_json_attr(g, "included", list(pca.included), sort_keys=False)
        g.attrs["snapshots"] = str(Path(snapshots).resolve())
        g.attrs["snapshots_sha256"] = str(snapshots_sha256)
