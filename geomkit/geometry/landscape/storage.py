"""Resumable, shardable landscape files (HDF5).

Layout (readable by the reference tool's plotting scripts and by plain h5py)::

    xcoordinates            [nx]           float64, HDF5 dimension scale
    ycoordinates            [ny]           float64, dimension scale (2-D runs only)
    train_loss              [ny, nx]       float64 mean cross-entropy, NaN = not done
    train_acc               [ny, nx]       float64 accuracy in percent
    done                    [ny, nx]       bool completion mask
    directions/x/<name>     parameter shape, one per state_dict parameter name
    directions/y/<name>     (2-D runs only)
    attrs: spec (JSON), checkpoint, checkpoint_sha256, x, y, seed, norm, ignore, dir,
           samples, shard, directions_sha256, cosine_xy, provenance, timing

Row ``i`` is ``y_i`` and column ``j`` is ``x_j``: ``contour(*meshgrid(x, y), Z)``.
The file is created whole through :func:`geomkit.io.atomic_h5` (temporary file, fsync,
rename; built in memory, so a full disk fails one Python write, never the HDF5
library), then reopened in place for each flush (values first, then ``done``), so a
killed run -- or one whose flush fails on a full disk -- leaves a file whose ``done``
mask only marks finished points.  Every array is allocated at creation: a flush only
overwrites bytes already on the disk, so a run goes on when the disk fills up after it
started.  While a process computes into a file it holds :func:`_computing` (an advisory
lock); a second process on the same file is refused in one line.  A file whose
spec differs from the request, or that is not a geomkit landscape file, is refused with
:class:`~geomkit.errors.ResultFileError`, never overwritten.  Reading
(:class:`~geomkit.io.landscape.Landscape`, :func:`read_landscape`) lives in
:mod:`geomkit.io.landscape`, which needs neither torch nor this package.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geomkit import distributed
from geomkit.errors import ResultFileError, SpecError, SpecMismatch
from geomkit.io import (
    LANDSCAPE_FORMAT,
    atomic_h5,
    check_replace,
    describe_mismatch,
    dumps_json,
    exclusive_lock,
    get_json_attr,
    normalize_spec,
    open_h5,
)
from geomkit.io.landscape import Landscape, read_landscape
from geomkit.provenance import provenance

from .directions import Direction
from .evaluate import Grid, evaluate_points

AXES = ("x", "y")
FORMAT = LANDSCAPE_FORMAT  # "geomkit-landscape-1"

__all__ = [
    "AXES",
    "FORMAT",
    "Landscape",
    "compute_landscape",
    "directions_sha256",
    "merge_shards",
    "parse_shard",
    "read_directions",
    "read_landscape",
    "shard_indices",
    "shard_path",
]


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/n`` (0 <= i < n) into ``(i, n)``."""
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise SpecError(f"shard must be i/n with integers (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise SpecError(f"shard must be i/n with 0 <= i < n, got {text!r}")
    return i, n


def shard_path(path: str | Path, i: int, n: int) -> Path:
    """File of shard ``i`` of ``n`` next to ``path``: ``surf.h5`` -> ``surf.shard1of4.h5``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.shard{i}of{n}{p.suffix or '.h5'}")


def shard_indices(size: int, i: int, n: int) -> range:
    """Contiguous flat grid indices owned by shard ``i`` of ``n`` (balanced to +-1)."""
    return distributed.shard_range(size, i, n)


def directions_sha256(directions: Sequence[Direction]) -> str:
    """Hash of the directions' names, shapes and bytes (checks that shards belong together)."""
    h = hashlib.sha256()
    for d in directions:
        for name in sorted(d):
            t = d[name].detach().cpu().contiguous()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def loss_spec(loss: str | Callable[..., torch.Tensor], label_smoothing: float = 0.0) -> dict:
    """The spec entry of a loss: empty for plain ``ce`` (files written before the loss was
    an option keep matching), else ``{"loss": "ce:0.1" | "bce" | "mse" | "callable:mod.fn"}``."""
    from geomkit.geometry._inputs import resolve_loss

    resolve_loss(loss, label_smoothing)  # validates (one-line SpecError)
    if callable(loss):
        import functools

        if isinstance(loss, functools.partial):  # its arguments tell two partials apart
            f = loss.func
            args = ", ".join([*map(repr, loss.args),
                              *(f"{k}={v!r}" for k, v in sorted(loss.keywords.items()))])
            return {"loss": f"callable:{getattr(f, '__module__', '?')}."
                            f"{getattr(f, '__qualname__', type(f).__qualname__)}({args})"}
        name = getattr(loss, "__qualname__", type(loss).__qualname__)
        if "<lambda>" in name or "<locals>" in name:
            raise SpecError(f"a loss {name} cannot be told apart from another one when a "
                            "file is resumed; pass a named module-level function or a "
                            "functools.partial", param="loss")
        return {"loss": f"callable:{getattr(loss, '__module__', '?')}.{name}"}
    base, _, arg = loss.partition(":")
    eps = float(arg) if arg else float(label_smoothing)
    if base == "ce" and eps == 0:
        return {}
    return {"loss": f"ce:{eps:g}" if base == "ce" else base}


def _to_attr(v: Any) -> Any:
    """HDF5-attribute-safe value: None -> "", str subclasses (TorchVersion) -> str."""
    if v is None:
        return ""
    if isinstance(v, str):
        return str(v)
    return v


_describe_mismatch = describe_mismatch


def _open(path: Path, mode: str) -> Any:
    """A geomkit landscape file (one-line ResultFileError for anything else)."""
    return open_h5(path, mode, kind=FORMAT)


def _computing(path: Path) -> Any:
    """The lock a process holds while it computes into (or merges onto) ``path``: one
    process per file, the second refused in one line (:func:`geomkit.io.exclusive_lock`;
    a killed holder never blocks, its lock file is taken over)."""
    return exclusive_lock(
        path, busy="is being computed by another process",
        hint="wait for it to finish (rerunning the same command then reuses its points) "
        "or choose another out", param="out")


def _read_spec(f: Any, path: Path, hint: str = "choose another out") -> dict:
    """The stored spec; ``hint`` ends the error (an output's or an input's remedy)."""
    spec = get_json_attr(f, "spec")
    if not isinstance(spec, dict):
        raise ResultFileError(f"{path} is not a geomkit landscape file (no spec); {hint}",
                              param="out" if "out" in hint.split() else None)
    return spec


def _create(
    path: Path,
    grid: Grid,
    spec: dict,
    shard: tuple[int, int],
    directions: Sequence[Direction],
    attrs: dict,
    values: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    check_replace(path, FORMAT, spec)  # never over another computation's or a foreign file
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["spec"] = dumps_json(spec, sort_keys=True)
        f.attrs["shard"] = f"{shard[0]}/{shard[1]}"
        f.attrs["directions_sha256"] = directions_sha256(directions)
        f.attrs["acc_unit"] = "percent"
        f.attrs["loss"] = "mean cross-entropy over the analysis examples"
        f.attrs["compute_seconds"] = 0.0
        f.attrs["points_per_s"] = 0.0
        for k, v in spec.items():
            f.attrs[k] = _to_attr(v)
        for k, v in attrs.items():
            f.attrs[k] = _to_attr(v)
        for k, v in provenance().items():
            f.attrs[k] = _to_attr(v)
        if len(directions) == 2:
            from .directions import cosine

            f.attrs["cosine_xy"] = cosine(directions[0], directions[1])
        xs = f.create_dataset("xcoordinates", data=grid.xcoordinates)
        xs.make_scale("xcoordinates")
        scales = [xs]
        if grid.ndim == 2:
            ys = f.create_dataset("ycoordinates", data=grid.ycoordinates)
            ys.make_scale("ycoordinates")
            scales = [ys, xs]
        if values is None:
            values = (
                np.full(grid.shape, np.nan),
                np.full(grid.shape, np.nan),
                np.zeros(grid.shape, dtype=bool),
            )
        for name, dt, fill, val in (
            ("train_loss", "f8", np.nan, values[0]),
            ("train_acc", "f8", np.nan, values[1]),
            ("done", bool, False, values[2]),
        ):
            ds = f.create_dataset(name, shape=grid.shape, dtype=dt, fillvalue=fill)
            ds[...] = np.asarray(val, dtype=dt).reshape(grid.shape)  # allocated now
            for axis, sc in enumerate(scales):
                ds.dims[axis].attach_scale(sc)
                ds.dims[axis].label = "y" if (grid.ndim == 2 and axis == 0) else "x"
        g = f.create_group("directions")
        for axis, d in zip(AXES, directions, strict=False):
            ga = g.create_group(axis)
            for name, t in d.items():
                ga.create_dataset(name, data=t.detach().cpu().numpy())


def read_directions(path: str | Path) -> list[Direction]:
    """The directions stored in a landscape file (``directions/x``, ``directions/y``)."""
    path = Path(path)
    with open_h5(path, "r") as f:  # any HDF5 file with directions/x (and y)
        out = []
        for axis in AXES:
            if f"directions/{axis}" in f:
                g = f[f"directions/{axis}"]
                out.append({name: torch.from_numpy(g[name][...]) for name in g})
        return out


class _Writer:
    """Buffers finished points and flushes them to the file every ``interval`` seconds.

    A flush that cannot write (full disk, read-only file system, quota) raises a one-line
    :class:`~geomkit.errors.ResultFileError`; the file keeps the points of the flushes
    before (values are written before ``done``), and later flushes are not tried.
    """

    def __init__(self, path: Path, flat: np.ndarray, shape, interval: float, callback):
        self.path, self.flat, self.shape = path, flat, shape
        self.interval, self.callback = interval, callback
        self.pending: list[tuple[int, float, float]] = []
        self.last = time.perf_counter()
        self.start = self.last
        self.count = 0
        self.failed = False
        self._guard(lambda: _open(self.path, "r+").close())  # unwritable: fail before any work

    def _guard(self, write: Callable[[], None]) -> None:
        try:
            write()
        except ResultFileError as e:
            self.failed = True
            if not str(e).startswith(f"cannot write {self.path}"):
                raise
            raise ResultFileError(
                f"{e}; the points flushed before are kept in the file: rerun the same "
                "command to compute the rest once it can be written"
            ) from e

    def __call__(self, p: int, loss: float, acc: float) -> None:
        self.pending.append((int(self.flat[p]), loss, acc))
        if time.perf_counter() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if not self.pending or self.failed:
            return
        self._guard(self._flush)

    def _flush(self) -> None:
        idx = np.array([k for k, _, _ in self.pending])
        order = np.argsort(idx)
        idx = idx[order]
        lv = np.array([v for _, v, _ in self.pending])[order]
        av = np.array([v for _, _, v in self.pending])[order]
        now = time.perf_counter()
        # synchronous writes (open_h5 "r+"): a full disk fails the write that meets it,
        # as an exception here -- values first, then done, then the timing attributes
        with _open(self.path, "r+") as f:
            for name, vals in (("train_loss", lv), ("train_acc", av)):
                arr = f[name][...].reshape(-1)
                arr[idx] = vals
                f[name][...] = arr.reshape(self.shape)
            f.flush()
            done = f["done"][...].reshape(-1)
            done[idx] = True
            f["done"][...] = done.reshape(self.shape)
            f.flush()
            f.attrs["compute_seconds"] = float(f.attrs["compute_seconds"]) + (now - self.last)
            n_done = int(done.sum())
            if f.attrs["compute_seconds"] > 0:
                f.attrs["points_per_s"] = n_done / float(f.attrs["compute_seconds"])
            f.flush()  # a failed metadata write raises here, not while closing
        self.count += len(self.pending)
        self.pending = []
        self.last = now
        if self.callback is not None:
            self.callback(n_done, done.size)


def compute_landscape(
    path: str | Path,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    directions: Sequence[Direction] | Callable[[], Sequence[Direction]],
    grid: Grid,
    *,
    spec: dict | None = None,
    attrs: dict | None = None,
    shard: tuple[int, int] | None = None,
    resume: bool | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    points_per_call: int = 1,
    flush_interval: float = 5.0,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
    loss: str | Callable[..., torch.Tensor] = "ce",
    label_smoothing: float = 0.0,
) -> Landscape:
    """Evaluate a surface into the resumable HDF5 file ``path`` and return it.

    Args:
        directions: one (line) or two (surface) directions, or a zero-argument
            callable returning them -- called only when the file is created; a resumed
            run reads the directions stored in the file.
        spec: what identifies the computation (checkpoint hash, seed, normalization,
            N, ...); the grid is added.  An existing file with another spec or shard
            raises :class:`~geomkit.errors.ResultFileError` and is left untouched.
        attrs: extra attributes stored at creation (e.g. the checkpoint path).
        shard: ``(i, n)``: evaluate only shard ``i`` of ``n`` of the flat grid.  None
            = the whole grid, or, under ``torchrun``, this rank's shard into
            :func:`shard_path` followed by a merge into ``path`` on rank 0.
        resume: True = ``path`` must already exist; None/False = resume it if it
            exists with the same spec, else create it.  Finished points are never
            recomputed.  While one process computes into ``path`` another one on the
            same ``path`` is refused (one-line ResultFileError naming the holder's pid):
            rerun it when the first is done and it reuses every point.
        flush_interval: seconds between flushes of finished points to the file.
        callback: ``callback(done, total)`` after each flush.
        loss, label_smoothing: as :func:`evaluate_points` (``ce`` by default); any other
            loss is part of the spec (a callable by its qualified name).
    """
    path = Path(path)
    spec = dict(spec or {})
    spec.update(grid.spec())
    spec.update(loss_spec(loss, label_smoothing))
    if shard is None and distributed.launched():
        distributed.init(device)
        r, w = distributed.rank(), distributed.world_size()
        if w > 1:
            mine = shard_path(path, r, w)
            part = compute_landscape(
                mine,
                model,
                inputs,
                targets,
                directions,
                grid,
                spec=spec,
                attrs=attrs,
                shard=(r, w),
                resume=resume,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
                points_per_call=points_per_call,
                flush_interval=flush_interval,
                progress=progress and r == 0,
                callback=callback,
                loss=loss,
                label_smoothing=label_smoothing,
            )
            distributed.barrier()
            if r == 0:
                part = merge_shards([shard_path(path, i, w) for i in range(w)], path)
            distributed.barrier()
            return part
    shard = shard or (0, 1)
    i_shard, n_shard = shard
    if not 0 <= i_shard < n_shard:
        raise SpecError(f"shard must be i/n with 0 <= i < n, got {i_shard}/{n_shard}")
    with _computing(path):  # one process per file: a second one is refused
        if path.exists():
            with _open(path, "r") as f:
                old = _read_spec(f, path)
                old_shard = str(f.attrs.get("shard", "0/1"))
            norm = normalize_spec(spec)
            if old != norm:
                raise SpecMismatch(
                    f"{path} was computed with another spec "
                    f"({_describe_mismatch(old, norm)}); choose another out or delete the file",
                    keys=tuple(sorted(k for k in set(old) | set(norm)
                                      if old.get(k) != norm.get(k))),
                    param="out")
            if old_shard != f"{i_shard}/{n_shard}":
                raise ResultFileError(
                    f"{path} holds shard {old_shard}, not {i_shard}/{n_shard}; "
                    "choose another out", param="out"
                )
            dirs = read_directions(path)
        else:
            if resume:
                raise ResultFileError(
                    f"nothing to resume: {path} does not exist; drop resume", param="resume")
            dirs = list(directions() if callable(directions) else directions)
            if len(dirs) != grid.ndim:
                raise SpecError(
                    f"a {grid.ndim}-D grid needs {grid.ndim} directions, got {len(dirs)}")
            _create(path, grid, spec, shard, dirs, dict(attrs or {}))
        with _open(path, "r") as f:
            done = f["done"][...].reshape(-1)
        mine = np.array(shard_indices(grid.size, i_shard, n_shard), dtype=np.int64)
        todo = mine[~done[mine]]
        t0 = time.perf_counter()
        if len(todo):
            writer = _Writer(path, todo, grid.shape, flush_interval, callback)
            try:
                evaluate_points(
                    model,
                    inputs,
                    targets,
                    dirs,
                    grid.coords(todo),
                    batch_size=batch_size,
                    device=device,
                    dtype=dtype,
                    points_per_call=points_per_call,
                    progress=progress,
                    callback=writer,
                    loss=loss,
                    label_smoothing=label_smoothing,
                )
            finally:
                writer.flush()
        res = read_landscape(path)
        return Landscape(
            res.xcoordinates,
            res.ycoordinates,
            res.loss,
            res.acc,
            res.done,
            res.attrs,
            seconds=time.perf_counter() - t0,
            path=str(path),
        )


def merge_shards(paths: Sequence[str | Path], out: str | Path) -> Landscape:
    """Merge complete shard files ``i/n`` (all ``i`` of one ``n``) into ``out``.

    Checks that the shards belong together -- same spec, same directions, one file
    per shard index, each shard finished -- and writes ``out`` (via ``.tmp``) as a
    whole-grid file (shard ``0/1``) identical in form to an unsharded run.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise SpecError("no shard files to merge")
    out = Path(out)
    metas = []
    for p in paths:
        if not p.exists():
            raise ResultFileError(f"shard file {p} does not exist")
        with _open(p, "r") as f:
            spec = _read_spec(f, p, "pass the shard files `geomkit landscape --shard i/n` "
                              "wrote")
            i, n = parse_shard(str(f.attrs.get("shard", "0/1")))
            metas.append((p, spec, i, n, str(f.attrs["directions_sha256"])))
    p0, spec0, _, n0, dsha0 = metas[0]
    for p, spec, _, n, dsha in metas[1:]:
        if spec != spec0:
            raise ResultFileError(
                f"{p} and {p0} differ ({_describe_mismatch(spec0, spec)}); not shards of one run"
            )
        if n != n0:
            raise ResultFileError(f"{p} is a shard of {n}, {p0} of {n0}; not shards of one run")
        if dsha != dsha0:
            raise ResultFileError(f"{p} and {p0} have different directions; not shards of one run")
    idx = sorted(i for _, _, i, _, _ in metas)
    if idx != list(range(n0)):
        missing = sorted(set(range(n0)) - set(idx))
        dup = sorted({i for i in idx if idx.count(i) > 1})
        raise ResultFileError(
            f"shards of {n0} need each index 0..{n0 - 1} once (missing {missing}, repeated {dup})"
        )
    parts = {i: read_landscape(p) for p, _, i, _, _ in metas}
    first = parts[0]
    size = first.done.size
    loss = np.full(size, np.nan)
    acc = np.full(size, np.nan)
    done = np.zeros(size, dtype=bool)
    seconds = 0.0
    for i in range(n0):
        r = np.array(shard_indices(size, i, n0), dtype=np.int64)
        part = parts[i]
        if not part.done.reshape(-1)[r].all():
            raise ResultFileError(
                f"shard {i}/{n0} ({part.path}) is unfinished; rerun its command first"
            )
        loss[r] = part.loss.reshape(-1)[r]
        acc[r] = part.acc.reshape(-1)[r]
        done[r] = True
        seconds += float(part.attrs.get("compute_seconds", 0.0))
    grid = _grid_from_spec(spec0)
    dirs = read_directions(p0)
    with _open(p0, "r") as f:
        extra = {k: f.attrs[k] for k in ("checkpoint",) if k in f.attrs}
    extra["compute_seconds"] = seconds
    extra["points_per_s"] = size / seconds if seconds > 0 else 0.0
    extra["merged_from"] = dumps_json([str(p) for p, *_ in metas])
    with _computing(out):  # never under a `geomkit landscape` computing into out
        if out.exists():
            with _open(out, "r") as f:
                old = _read_spec(f, out)
            if old != spec0:
                raise SpecMismatch(
                    f"{out} holds another computation ({_describe_mismatch(old, spec0)}); "
                    "choose another out", param="out"
                )
        _create(out, grid, spec0, (0, 1), dirs, extra, values=(loss, acc, done))
        return read_landscape(out)


def _grid_from_spec(spec: dict) -> Grid:
    def rng(t):
        if t is None:
            return None
        lo, hi, num = t.split(":")
        return float(lo), float(hi), int(num)

    return Grid(rng(spec["x"]), rng(spec.get("y")))
