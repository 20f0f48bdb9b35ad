"""Matplotlib figures of loss landscapes (and export to ParaView).

Every function draws results that are already computed -- a
:class:`~geomkit.io.landscape.Landscape` (also importable from
:mod:`geomkit.geometry.landscape`) or the path of a landscape file, read by
:func:`geomkit.io.landscape.read_landscape` -- and never recomputes anything (nor imports
torch or :mod:`geomkit.geometry` to read a file).  Drawing functions take an ``ax``
(and return it) or, with ``ax=None``, make and return a new
:class:`~matplotlib.figure.Figure`.
Non-finite values and points not yet computed are masked, so they show as gaps; a
surface with no finite value at all (or no computed point) is refused with a one-line
:class:`~geomkit.errors.ResultFileError` rather than drawn as an empty figure
(:func:`check_drawable`).  Options (levels, sizes, dpi, colour limits, columns, formats)
are checked before anything is drawn or written (:func:`check_options`): a wrong value is
a one-line :class:`~geomkit.errors.SpecError` naming the keyword.

Surfaces ``Z`` are shaped ``[len(y), len(x)]`` and drawn as
``contour(*meshgrid(x, y), Z)``; with ``log=True`` the levels are geometric and the
colour map logarithmic.  :func:`plot_panel` draws several files in one figure on a
shared colour scale (e.g. the 2x3 ResNet/ViT/Mixer x vanilla/SAM grid of Chen et al.
2022, Fig. 1); :func:`save_figure` writes PNG and PDF at a requested pixel size.

A trajectory-PCA surface (``geomkit landscape --dir pca``) carries its training path
(:func:`read_trajectory`): :func:`plot_panel` overlays it on the contour kinds
(:func:`plot_trajectory`: dots joined by a line, the final point a star, axes "PC1
(x %)"), and rings in red every snapshot whose true loss differs from the surface under it
by more than ``threshold`` (relative, default :data:`DISAGREE`) -- the snapshots lie off
the PCA plane, so the contour under them is not their loss.  :func:`plot_track` draws
sharpness-tracker files (``geomkit train --track``): λ_max against the step with its
edge-of-stability threshold.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geomkit.errors import ResultFileError, SpecError
from geomkit.io import atomic_write

KINDS = ("contour", "contourf", "surface", "1d")
VALUES = {"loss": "loss", "acc": "acc", "train_loss": "loss", "train_acc": "acc"}
FORMATS = ("png", "pdf", "svg")
#: the largest side of a written figure in pixels (beyond it matplotlib runs out of memory)
MAX_PIXELS = 16384
#: default relative gap |true loss - surface| / |surface| above which a snapshot is ringed
DISAGREE = 0.1


@dataclass(frozen=True)
class ColorScale:
    """A colour scale shared by several panels: ``levels`` and ``vmin``/``vmax``."""

    vmin: float
    vmax: float
    levels: np.ndarray
    log: bool


def _number(name: str, v, *, positive: bool = False, integer: bool = False,
            minimum: float | None = None):
    """``v`` checked: a finite (positive / integral / >= ``minimum``) number."""
    ok_type = numbers.Integral if integer else numbers.Real
    if isinstance(v, bool) or not isinstance(v, ok_type):
        what = "an integer" if integer else "a number"
        raise SpecError(f"{name} must be {what}, got {v!r}", param=name)
    if not math.isfinite(float(v)):
        raise SpecError(f"{name} must be a finite number, got {v!r}", param=name)
    if positive and v <= 0:
        raise SpecError(f"{name} must be positive, got {v!r}", param=name)
    if minimum is not None and v < minimum:
        raise SpecError(f"{name} must be at least {minimum:g}, got {v!r}", param=name)
    return v


def _pair(name: str, v, *, integer: bool = False) -> tuple:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise SpecError(f"{name} must be a (width, height) pair, got {v!r}", param=name)
    return tuple(_number(name, x, positive=True, integer=integer) for x in v)


def check_options(
    *,
    kind: str | None = None,
    value: str | None = None,
    log: bool = False,
    num_levels: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    ncols: int | None = None,
    panel_size: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    dpi: float | None = None,
    formats: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> None:
    """Check plot options before anything is read, drawn or written.

    ``figsize`` (inches, e.g. :func:`panel_figsize`) with ``dpi`` and no ``size``: the
    figure must fit in :data:`MAX_PIXELS` a side.

    Raises:
        SpecError: one line naming the keyword (``dpi must be positive, got 0``).
    """
    if kind is not None and kind not in KINDS:
        raise SpecError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}",
                        param="kind")
    if value is not None and value not in VALUES:
        raise SpecError(f"unknown value {value!r}; choose loss or acc", param="value")
    if num_levels is not None:
        _number("num_levels", num_levels, integer=True, minimum=2)
    for name, v in (("vmin", vmin), ("vmax", vmax)):
        if v is not None:
            _number(name, v)
            if log and v <= 0:
                raise SpecError(f"{name} must be positive on a log scale, got {v:g}",
                                param=name)
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise SpecError(f"vmin must be below vmax; got {vmin:g} and {vmax:g}", param="vmin")
    if ncols is not None:
        _number("ncols", ncols, integer=True, minimum=1)
    if panel_size is not None:
        _pair("panel_size", panel_size)
    if size is not None:
        _pair("size", size, integer=True)
        if max(size) > MAX_PIXELS:
            raise SpecError(f"size must be at most {MAX_PIXELS} pixels a side, got "
                            f"{size[0]}x{size[1]}", param="size")
    if dpi is not None:
        _number("dpi", dpi, positive=True)
        if figsize is not None and size is None:
            _check_pixels(dpi, figsize)
    if formats is not None:
        formats = list(formats)
        if not formats:
            raise SpecError(f"formats names no figure format; choose from {', '.join(FORMATS)}",
                            param="formats")
        for fmt in formats:
            if fmt not in FORMATS:
                raise SpecError(f"unknown figure format {fmt!r}; choose png, pdf or svg",
                                param="formats")


def _check_pixels(dpi: float, inches) -> None:
    w, h = (float(v) * dpi for v in inches)
    if max(w, h) > MAX_PIXELS:
        raise SpecError(f"dpi {dpi:g} makes a {w:.0f}x{h:.0f}-pixel figure; at most "
                        f"{MAX_PIXELS} pixels a side", param="dpi")


def panel_layout(n: int, ncols: int | None = None) -> tuple[int, int]:
    """``(ncols, nrows)`` of a panel of ``n`` plots: ``ncols`` (at most ``n``), by default
    3 for 3, 6 or 9 plots (the paper's 2x3 grid), else up to 4."""
    ncols = min(ncols, n) if ncols else (3 if n in (3, 6, 9) else min(n, 4))
    return ncols, -(-n // ncols)


def panel_figsize(n: int, ncols: int | None = None,
                  panel_size: tuple[float, float] = (3.2, 3.0)) -> tuple[float, float]:
    """The size in inches of :func:`plot_panel`'s figure of ``n`` plots."""
    c, r = panel_layout(n, ncols)
    return panel_size[0] * c, panel_size[1] * r


def _name(surf) -> str:
    return str(surf.path) if surf.path else "the surface"


def check_drawable(surface, value: str = "loss", *, row: bool = False,
                   log: bool = False) -> None:
    """Refuse a surface with nothing to draw: no computed point, or no finite ``value``.

    A partly computed or partly non-finite surface passes (its gaps are masked).
    ``row``: a 2-D surface drawn as its 1-D row through ``y = 0`` (``kind="1d"``);
    ``log``: on a log scale, where only positive values count.

    Raises:
        ResultFileError: one line, e.g. ``s.h5: the surface has no finite loss value (all
            2601 points NaN/inf); nothing to plot``.
    """
    surf = _load(surface)
    done = np.asarray(surf.done, dtype=bool)
    n = done.size
    if not done.any():
        raise ResultFileError(
            f"{_name(surf)} has no computed point yet (0 of {n}); rerun its "
            "`geomkit landscape` command to compute it (it resumes), then plot"
        )
    v = VALUES.get(value, value)
    finite = _values(surf, value)
    if finite.count() == 0:
        why = (f"all {n} points NaN/inf" if done.all()
               else f"all {int(done.sum())} computed points of {n} NaN/inf")
        raise ResultFileError(f"{_name(surf)}: the surface has no finite {v} value ({why}); "
                              "nothing to plot")
    z, what = _values(surf, value, log), "surface"
    if row and surf.ycoordinates is not None:
        i = int(np.argmin(np.abs(surf.ycoordinates)))
        z, finite, what = z[i], finite[i], "row through y = 0"
        if finite.count() == 0:
            raise ResultFileError(f"{_name(surf)}: the {what} has no finite {v} value "
                                  f"(all {z.size} of its points NaN/inf or not computed); "
                                  "nothing to plot (the 2-D kinds can draw the rest)")
    if z.count() == 0:  # finite values, none positive
        raise ResultFileError(f"{_name(surf)}: the {what} has no positive {v} value to "
                              "draw on a log scale; plot it on a linear scale")


def progress(surface) -> tuple[int, int]:
    """``(computed points, all points)`` of a surface (equal when it is complete)."""
    done = np.asarray(_load(surface).done, dtype=bool)
    return int(done.sum()), int(done.size)


def _load(surface):
    # the I/O layer's reader: neither torch nor the compute package geomkit.geometry
    from geomkit.io.landscape import Landscape, read_landscape

    if isinstance(surface, Landscape):
        return surface
    return read_landscape(surface)


def _values(surf, value: str, log: bool = False) -> np.ma.MaskedArray:
    """``value`` with non-finite and not computed points masked (and, for a log scale,
    non-positive ones: they have no place on it)."""
    if value not in VALUES:
        raise SpecError(f"unknown value {value!r}; choose loss or acc", param="value")
    z = np.asarray(getattr(surf, VALUES[value]), dtype=float)
    mask = ~np.isfinite(z) | ~np.asarray(surf.done, dtype=bool)
    if log:
        mask |= ~(z > 0)
    return np.ma.masked_array(z, mask=mask)


def color_scale(
    surfaces: Sequence,
    *,
    value: str = "loss",
    log: bool = False,
    num_levels: int = 30,
    vmin: float | None = None,
    vmax: float | None = None,
) -> ColorScale:
    """One colour scale spanning the finite values of all ``surfaces``.

    Linear: ``num_levels`` equal steps from ``vmin`` to ``vmax``; log: geometric steps
    (``vmin`` is then the smallest positive value).
    """
    check_options(log=log, num_levels=num_levels, vmin=vmin, vmax=vmax)
    zs = [_values(_load(s), value).compressed() for s in surfaces]
    z = np.concatenate(zs) if zs else np.array([])
    if log:
        z = z[z > 0]
    if z.size == 0:
        lo, hi = (1e-3, 1.0) if log else (0.0, 1.0)
    else:
        lo, hi = float(z.min()), float(z.max())
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if log and lo <= 0:
        raise SpecError(f"log-scaled levels need vmin > 0, got {lo}", param="vmin")
    if vmin is not None and vmax is None and hi <= lo:
        raise SpecError(f"vmin {lo:g} is not below the largest value {hi:g}", param="vmin")
    if vmax is not None and vmin is None and hi <= lo:
        raise SpecError(f"vmax {hi:g} is not above the smallest value {lo:g}", param="vmax")
    if hi <= lo:
        hi = lo * 1.01 + 1e-12 if lo > 0 else lo + 1.0
    levels = np.geomspace(lo, hi, num_levels) if log else np.linspace(lo, hi, num_levels)
    return ColorScale(lo, hi, levels, log)


def _norm(scale: ColorScale):
    from matplotlib.colors import LogNorm, Normalize

    return LogNorm(scale.vmin, scale.vmax) if scale.log else Normalize(scale.vmin, scale.vmax)


def _new_figure(projection: str | None = None, figsize=(5.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(projection=projection)
    return fig, ax


def _require_2d(surf, kind: str) -> None:
    if surf.ycoordinates is None:
        raise SpecError(
            f"{kind} needs a 2-D surface; {surf.path or 'this'} is a 1-D line (use kind 1d)"
        )
    ny, nx = len(surf.ycoordinates), len(surf.xcoordinates)
    if min(nx, ny) < 2:
        raise SpecError(f"{kind} needs at least 2 points along x and y; "
                        f"{surf.path or 'this surface'} has {nx}x{ny} (use kind 1d)")


def _grid_axes(surface, kind: str, ax, value: str, log: bool, scale: ColorScale | None,
               projection: str | None = None):
    """The shared start of the 2-D plots: load, check, colour scale, axes, mesh."""
    surf = _load(surface)
    _require_2d(surf, kind)
    check_drawable(surf, value, log=log)
    scale = scale or color_scale([surf], value=value, log=log)
    fig = None
    if ax is None:
        fig, ax = _new_figure(projection=projection)
    X, Y = np.meshgrid(surf.xcoordinates, surf.ycoordinates)
    return surf, scale, fig, ax, X, Y


def _title(surf) -> str:
    a = surf.attrs
    name = a.get("model_name") or (Path(surf.path).stem if surf.path else "")
    return str(name)


def _isolated(z: np.ma.MaskedArray) -> np.ndarray:
    """Finite points of a 2-D surface in no all-finite grid cell (a 1-D line: with no
    finite neighbour): contours and lines cannot show them, so they are drawn as dots."""
    ok = ~np.ma.getmaskarray(z)
    if ok.ndim == 1:
        prev = np.r_[False, ok[:-1]]
        nxt = np.r_[ok[1:], False]
        return ok & ~prev & ~nxt
    cell = ok[:-1, :-1] & ok[1:, :-1] & ok[:-1, 1:] & ok[1:, 1:]
    covered = np.zeros_like(ok)
    covered[:-1, :-1] |= cell
    covered[1:, :-1] |= cell
    covered[:-1, 1:] |= cell
    covered[1:, 1:] |= cell
    return ok & ~covered


def _dots(ax, X, Y, z, scale: ColorScale, cmap: str, zz=None) -> None:
    iso = _isolated(z)
    if iso.any():
        pts = (X[iso], Y[iso]) if zz is None else (X[iso], Y[iso], np.asarray(zz)[iso])
        ax.scatter(*pts, c=np.asarray(z)[iso], norm=_norm(scale), cmap=cmap, s=14,
                   edgecolors="none")


def plot_contour(
    surface,
    ax=None,
    *,
    value: str = "loss",
    log: bool = False,
    scale: ColorScale | None = None,
    labels: bool = True,
    cmap: str = "viridis",
):
    """Contour lines of ``value`` over ``(x, y)``; returns ``ax`` or a new Figure."""
    surf, scale, fig, ax, X, Y = _grid_axes(surface, "contour", ax, value, log, scale)
    z = _values(surf, value, log)
    cs = ax.contour(X, Y, z, levels=scale.levels, norm=_norm(scale), cmap=cmap)
    _dots(ax, X, Y, z, scale, cmap)
    if labels and len(cs.levels):
        ax.clabel(cs, inline=True, fontsize=6, fmt="%.3g")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal", adjustable="box")
    return fig if fig is not None else ax


def plot_contourf(
    surface,
    ax=None,
    *,
    value: str = "loss",
    log: bool = False,
    scale: ColorScale | None = None,
    colorbar: bool = True,
    cmap: str = "viridis",
):
    """Filled contours (heat map) of ``value``; returns ``ax`` or a new Figure."""
    surf, scale, fig, ax, X, Y = _grid_axes(surface, "contourf", ax, value, log, scale)
    z = _values(surf, value, log)
    cf = ax.contourf(
        X,
        Y,
        np.ma.clip(z, scale.vmin, scale.vmax),
        levels=scale.levels,
        norm=_norm(scale),
        cmap=cmap,
    )
    _dots(ax, X, Y, np.ma.clip(z, scale.vmin, scale.vmax), scale, cmap)
    if colorbar:
        ax.figure.colorbar(cf, ax=ax, label=value)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal", adjustable="box")
    return fig if fig is not None else ax


def plot_surface(
    surface,
    ax=None,
    *,
    value: str = "loss",
    log: bool = False,
    scale: ColorScale | None = None,
    cmap: str = "coolwarm",
):
    """3-D surface of ``value`` (``ax`` must be a 3-D Axes); NaN cells are left out."""
    surf, scale, fig, ax, X, Y = _grid_axes(surface, "surface", ax, value, log, scale,
                                            projection="3d")
    z = _values(surf, value, log)
    z = np.ma.clip(z, scale.vmin, scale.vmax)
    zz = np.log10(z) if log else z
    ax.plot_surface(
        X,
        Y,
        zz.filled(np.nan),
        cmap=cmap,
        norm=_norm(scale) if not log else None,
        linewidth=0,
        antialiased=False,
    )
    _dots(ax, X, Y, z, scale, cmap, zz=zz.filled(np.nan))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel(f"log10 {value}" if log else value)
    return fig if fig is not None else ax


def plot_1d(
    surface,
    ax=None,
    *,
    log: bool = False,
    accuracy: bool = True,
    ylim: tuple[float, float] | None = None,
):
    """Loss (left axis) and accuracy in percent (right axis) along a 1-D line (of a 2-D
    surface: its row through ``y = 0``)."""
    surf = _load(surface)
    check_drawable(surf, "loss", row=True, log=log)
    fig = None
    if ax is None:
        fig, ax = _new_figure()
    x = surf.xcoordinates
    loss = _values(surf, "loss", log)
    if surf.ycoordinates is not None:  # a 2-D file: the row through y = 0
        i = int(np.argmin(np.abs(surf.ycoordinates)))
        loss = loss[i]
        acc = _values(surf, "acc")[i]
    else:
        acc = _values(surf, "acc")
    ax.plot(x, loss, color="tab:blue", label="loss")
    iso = _isolated(loss)  # finite points between gaps: a line cannot show them
    if iso.any():
        ax.plot(x[iso], loss.data[iso], ".", color="tab:blue")
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("loss", color="tab:blue")
    if accuracy:
        ax2 = ax.twinx()
        ax2.plot(x, acc, color="tab:red", linestyle="--", label="accuracy")
        iso = _isolated(acc)
        if iso.any():
            ax2.plot(x[iso], acc.data[iso], ".", color="tab:red")
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.set_ylim(0, 100)
    return fig if fig is not None else ax


_DRAW = {"contour": plot_contour, "contourf": plot_contourf, "surface": plot_surface}


def plot_panel(
    surfaces: Sequence,
    *,
    kind: str = "contourf",
    value: str = "loss",
    log: bool = False,
    ncols: int | None = None,
    titles: Sequence[str] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    panel_size: tuple[float, float] = (3.2, 3.0),
    num_levels: int = 30,
    trajectory: bool = True,
    threshold: float = DISAGREE,
):
    """Several surfaces side by side in one Figure, on one shared colour scale.

    ``ncols`` defaults to 3 for six files (the paper's 2x3 grid), else up to 4 (never
    more than the files).  ``kind`` is one of ``contour``, ``contourf``, ``surface``,
    ``1d``; ``num_levels`` contour levels span the scale.  Every surface is checked
    (:func:`check_drawable`) before anything is drawn.  ``trajectory``: overlay the
    training path of a trajectory-PCA file on the contour kinds (:func:`plot_trajectory`,
    ringing gaps above ``threshold``).
    """
    from matplotlib.figure import Figure

    check_options(kind=kind, value=value, log=log, vmin=vmin, vmax=vmax, ncols=ncols,
                  panel_size=panel_size, num_levels=num_levels)
    check_threshold(threshold)
    surfs = [_load(s) for s in surfaces]
    if not surfs:
        raise SpecError("no landscape files to plot")
    n = len(surfs)
    if titles is not None and len(titles) != n:
        raise SpecError(f"titles has {len(titles)} names for {n} files", param="titles")
    for surf in surfs:  # all refusals before any drawing
        if kind != "1d":
            _require_2d(surf, kind)
        check_drawable(surf, "loss" if kind == "1d" else value, row=kind == "1d", log=log)
    ncols, nrows = panel_layout(n, ncols)
    fig = Figure(figsize=panel_figsize(n, ncols, panel_size), layout="constrained")
    scale = None
    if kind != "1d":
        scale = color_scale(surfs, value=value, log=log, vmin=vmin, vmax=vmax,
                            num_levels=num_levels)
    ylim = None
    if kind == "1d":
        sc = color_scale(surfs, value="loss", log=log, vmin=vmin, vmax=vmax)
        ylim = (sc.vmin, sc.vmax)
    axes = []
    for k, surf in enumerate(surfs):
        ax = fig.add_subplot(nrows, ncols, k + 1, projection="3d" if kind == "surface" else None)
        if kind == "1d":
            plot_1d(surf, ax, log=log, ylim=ylim)
        elif kind == "contourf":
            plot_contourf(surf, ax, value=value, log=log, scale=scale, colorbar=False)
        else:
            _DRAW[kind](surf, ax, value=value, log=log, scale=scale)
        if trajectory and kind in ("contour", "contourf"):
            tr = read_trajectory(surf)
            if tr is not None:
                plot_trajectory(tr, ax, threshold=threshold)
        ax.set_title(titles[k] if titles else _title(surf), fontsize=9)
        axes.append(ax)
    if kind in ("contour", "contourf"):
        import matplotlib.cm as cm

        mappable = cm.ScalarMappable(norm=_norm(scale), cmap="viridis")
        fig.colorbar(mappable, ax=axes, label=value, shrink=0.8)
    return fig


def save_figure(
    fig,
    prefix: str | Path,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    size: tuple[int, int] | None = None,
    dpi: int = 150,
) -> list[Path]:
    """Write ``fig`` to ``<prefix>.<fmt>`` for each format; returns the paths.

    ``size=(width_px, height_px)`` sets the PNG's exact pixel size (the PDF gets the
    same size in inches at ``dpi``).  No ``bbox_inches="tight"``, so the size holds.
    Each file is written atomically (:func:`geomkit.io.atomic_write`): a failed write
    leaves no partial figure and raises a one-line ``ResultFileError``.
    """
    check_options(size=size, dpi=dpi, formats=formats)
    prefix = Path(prefix)
    if size is not None:
        fig.set_size_inches(size[0] / dpi, size[1] / dpi)
    _check_pixels(dpi, fig.get_size_inches())
    out = []
    for fmt in dict.fromkeys(formats):  # each format once
        p = prefix.with_name(f"{prefix.name}.{fmt}")
        atomic_write(p, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=dpi))
        out.append(p)
    return out


def pdf_page_size(path: str | Path) -> tuple[float, float]:
    """Width and height in points of the first page of a PDF (MediaBox)."""
    data = Path(path).read_bytes()
    m = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\]", data)
    if not data.startswith(b"%PDF") or m is None:
        raise ResultFileError(f"{path} is not a PDF")
    x0, y0, x1, y1 = (float(v) for v in m.groups())
    return x1 - x0, y1 - y0


def export_vts(
    surface, path: str | Path, *, value: str = "loss", log: bool = False, zmax: float | None = None
) -> Path:
    """Write the surface as a VTK structured grid (``.vts``) for ParaView, via pyevtk.

    Points are ``(x, y, z)`` with ``z = value`` (``log10`` with ``log``, clipped at
    ``zmax``); non-finite or unfinished points get the largest finite height and
    ``valid = 0`` in the point data, which also holds the raw ``value``.  Needs the
    optional ``vtk`` extra (``pip install geomkit[vtk]``).
    """
    try:
        from pyevtk.hl import gridToVTK
    except ImportError:
        raise SpecError("ParaView export needs pyevtk: pip install 'geomkit[vtk]'") from None
    surf = _load(surface)
    _require_2d(surf, "VTK export")
    check_drawable(surf, value, log=log)
    z = _values(surf, value)
    if zmax is not None:
        z = np.ma.minimum(z, zmax)
    if log:
        z = np.ma.log10(np.ma.masked_less_equal(z, 0))
    valid = ~np.ma.getmaskarray(z)
    fill = float(z.max()) if valid.any() else 0.0
    height = z.filled(fill)
    X, Y = np.meshgrid(surf.xcoordinates, surf.ycoordinates)
    # pyevtk wants [nx, ny, nz] arrays in Fortran order
    to3 = lambda a: np.asfortranarray(np.asarray(a, dtype=np.float64).T[:, :, None])  # noqa: E731
    raw = np.asarray(getattr(surf, VALUES[value]), dtype=np.float64)
    path = Path(path)
    path = path if path.suffix == ".vts" else path.with_name(f"{path.name}.vts")

    def write(tmp: Path) -> None:  # tmp ends in ".vts", which pyevtk appends itself
        gridToVTK(
            str(tmp)[: -len(".vts")],
            to3(X),
            to3(Y),
            to3(height),
            pointData={value: to3(raw), "valid": to3(valid.astype(np.float64))},
        )

    return atomic_write(path, write, suffix=".vts")


# -- trajectory-PCA surfaces: the training path on the contour -----------------------------


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The group ``trajectory`` of a PCA landscape file (one entry per snapshot).

    ``a``, ``b``: coordinates in the plane; ``residual``: distance from it; ``distance``:
    from the centre; ``true_loss``/``true_acc``: at the snapshot's own weights;
    ``surface_loss``: the surface interpolated at ``(a, b)`` (NaN outside the grid).
    """

    a: np.ndarray
    b: np.ndarray
    residual: np.ndarray
    distance: np.ndarray
    true_loss: np.ndarray
    true_acc: np.ndarray
    surface_loss: np.ndarray
    step: np.ndarray
    epoch: np.ndarray
    explained_variance_ratio: np.ndarray
    centered: bool
    attrs: dict = field(default_factory=dict)

    def disagreement(self) -> np.ndarray:
        """``|true_loss - surface_loss| / |surface_loss|`` (NaN where off the grid)."""
        s = np.asarray(self.surface_loss, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(np.asarray(self.true_loss, float) - s) / np.maximum(np.abs(s), 1e-12)

    def disagrees(self, threshold: float = DISAGREE) -> np.ndarray:
        """Snapshots whose relative gap exceeds ``threshold`` (False off the grid)."""
        gap = self.disagreement()
        return np.isfinite(gap) & (gap > threshold)

    def outside(self) -> np.ndarray:
        """Snapshots with no surface value under them (off the grid)."""
        return ~np.isfinite(np.asarray(self.surface_loss, float))


def check_threshold(threshold: float) -> float:
    """A relative disagreement threshold: a finite number >= 0."""
    _number("threshold", threshold, minimum=0)
    return float(threshold)


def read_trajectory(surface) -> Trajectory | None:
    """The training path stored in a PCA landscape file (a path or a
    :class:`~geomkit.io.landscape.Landscape` read from one); None when it has none."""
    from geomkit.io import attr, get_json_attr, open_h5

    if isinstance(surface, (str, Path)):
        path = surface
    else:  # a surface in memory: only a PCA one read from its file has a path
        path = getattr(surface, "path", None)
        if getattr(surface, "attrs", {}).get("dir") != "pca" or path is None \
                or not Path(path).is_file():
            return None
    with open_h5(path, "r") as f:
        if "trajectory" not in f:
            return None
        g = f["trajectory"]
        cols = {k: np.asarray(g[k][...]) for k in ("a", "b", "residual", "distance",
                                                    "true_loss", "true_acc", "surface_loss",
                                                    "step", "epoch") if k in g}
        if "a" not in cols or "b" not in cols:
            return None
        n = len(cols["a"])
        for k in ("residual", "distance", "true_loss", "true_acc", "surface_loss"):
            cols.setdefault(k, np.full(n, np.nan))
        for k in ("step", "epoch"):
            cols.setdefault(k, np.arange(n))
        evr = np.asarray(g.attrs.get("explained_variance_ratio", [np.nan, np.nan]), float)
        attrs = {k: attr(g, k) for k in g.attrs if k != "included"}
        attrs["included"] = get_json_attr(g, "included", [])
        return Trajectory(**cols, explained_variance_ratio=evr,
                          centered=bool(attr(g, "centered", False)), attrs=attrs)


def pc_label(k: int, ratio: float) -> str:
    """``PC1 (87.3 %)``: axis ``k`` (1-based) and its explained-variance ratio."""
    return f"PC{k} ({100 * ratio:.1f} %)" if math.isfinite(ratio) else f"PC{k}"


def plot_trajectory(trajectory: Trajectory, ax=None, *, threshold: float = DISAGREE,
                    color: str = "black"):
    """The path over a PCA surface already drawn on ``ax``: dots joined by a line, the
    final snapshot a star, red rings where the true loss differs from the surface by more
    than ``threshold`` (relative); the axes are labelled ``PC1 (x %)``/``PC2 (y %)`` and
    keep the grid's limits (snapshots off the grid are not drawn)."""
    check_threshold(threshold)
    tr = trajectory
    fig = None
    if ax is None:
        fig, ax = _new_figure()
        keep = None
    else:
        keep = (ax.get_xlim(), ax.get_ylim()) if ax.has_data() else None
    ax.plot(tr.a, tr.b, "-", color=color, linewidth=0.9, zorder=3)
    ax.scatter(tr.a[:-1], tr.b[:-1], s=12, c="white", edgecolors=color, linewidths=0.7,
               zorder=4)
    ax.scatter(tr.a[-1:], tr.b[-1:], s=90, marker="*", c="gold", edgecolors=color,
               linewidths=0.7, zorder=5, label="final")
    bad = tr.disagrees(threshold)
    if bad.any():
        ax.scatter(tr.a[bad], tr.b[bad], s=70, facecolors="none", edgecolors="red",
                   linewidths=1.3, zorder=6,
                   label=f"|true - surface| > {100 * threshold:g} %")
    r1, r2 = (list(tr.explained_variance_ratio) + [math.nan, math.nan])[:2]
    ax.set_xlabel(pc_label(1, float(r1)))
    ax.set_ylabel(pc_label(2, float(r2)))
    if keep is not None:
        ax.set_xlim(*keep[0])
        ax.set_ylim(*keep[1])
    ax.set_aspect("auto")  # PC2 spans far less than PC1: an equal aspect is a thin strip
    return fig if fig is not None else ax


# -- sharpness along training: track files ----------------------------------------------------

_ADAM = ("adam", "adamw")


def _load_track(track):
    from geomkit.io.track import Track, read_track

    return track if isinstance(track, Track) else read_track(track)


def _finite(v) -> np.ndarray:
    return np.isfinite(np.asarray(v, dtype=float))


def track_series(track) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """``(what, step, lambda, threshold)`` drawn for a track: λ_max(P⁻¹H) and its
    (2 + 2β₁)/((1 − β₁)η) line for Adam/AdamW, λ_max and (2 + 2β)/η otherwise."""
    t = _load_track(track)
    c = t.columns
    adam = str(t.optimizer).lower() in _ADAM and _finite(c["precond_lambda_max"]).any()
    if adam:
        return "λ_max(P⁻¹H)", c["step"], c["precond_lambda_max"], c["precond_threshold"]
    return "λ_max", c["step"], c["lambda_max"], c["threshold"]


def plot_track(tracks: Sequence, *, log: bool = False, labels: Sequence[str] | None = None,
               losses: bool = True, panel_size: tuple[float, float] = (5.0, 3.4)):
    """λ_max against the optimizer step for one or more track files on one axis, each
    with its edge-of-stability threshold dashed in the same colour (legend: the run's
    label); ``losses`` adds a panel of train (solid) and test (dotted) loss.

    Raises:
        ResultFileError: a track with no finite λ_max to draw.
    """
    from matplotlib.figure import Figure

    check_options(panel_size=panel_size)
    ts = [_load_track(t) for t in tracks]
    if not ts:
        raise SpecError("no track files to plot")
    if labels is not None and len(labels) != len(ts):
        raise SpecError(f"labels has {len(labels)} names for {len(ts)} files", param="labels")
    series = []
    for t in ts:
        what, step, lam, thr = track_series(t)
        if not _finite(lam).any():
            raise ResultFileError(f"{t.path}: no finite {what} in its {len(t)} rows; "
                                  "nothing to plot")
        series.append((what, step, lam, thr))
    n = 2 if losses else 1
    fig = Figure(figsize=(panel_size[0] * n, panel_size[1]), layout="constrained")
    ax = fig.add_subplot(1, n, 1)
    whats = []
    for k, (t, (what, step, lam, thr)) in enumerate(zip(ts, series, strict=True)):
        color = f"C{k % 10}"
        name = labels[k] if labels else (t.label or Path(t.path).parent.name)
        ok = _finite(lam)
        ax.plot(step[ok], lam[ok], "-", marker=".", markersize=3, color=color,
                label=f"{name} ({what})" if len({s[0] for s in series}) > 1 else name)
        okt = _finite(thr)
        if okt.any():
            ax.plot(step[okt], thr[okt], "--", color=color, linewidth=1)
        whats.append(what)
    ax.set_xlabel("step")
    ax.set_ylabel(" / ".join(dict.fromkeys(whats)))
    # the threshold grows without bound as the learning rate decays to 0 (1e10 at the end
    # of a cosine schedule): the axis follows the λ values, the line shows where it is near
    lams = np.concatenate([lam[_finite(lam)] for _, _, lam, _ in series])
    if log:
        ax.set_yscale("log")
        pos = lams[lams > 0]
        if pos.size:
            ax.set_ylim(float(pos.min()) / 3, float(pos.max()) * 30)
    elif lams.size:
        ax.set_ylim(min(0.0, float(lams.min()) * 1.2), float(lams.max()) * 1.6)
    ax.set_title("sharpness (dashed: edge-of-stability threshold)", fontsize=9)
    ax.legend(fontsize=7)
    if losses:
        ax2 = fig.add_subplot(1, n, 2)
        for k, t in enumerate(ts):
            color = f"C{k % 10}"
            c = t.columns
            for col, style in (("train_loss", "-"), ("test_loss", ":")):
                ok = _finite(c[col])
                if ok.any():
                    ax2.plot(c["step"][ok], c[col][ok], style, color=color)
        ax2.set_xlabel("step")
        ax2.set_ylabel("loss (solid: train, dotted: test)")
        if log:
            ax2.set_yscale("log")
    return fig
