"""Matplotlib figures of loss landscapes (and export to ParaView).

Every function draws results that are already computed -- a
:class:`~geomkit.io.landscape.Landscape` (also importable from
:mod:`geomkit.geometry.landscape`) or the path of a landscape file, read by
:func:`geomkit.io.landscape.read_landscape` -- and never recomputes anything (nor imports
torch or :mod:`geomkit.geometry` to read a file).  Drawing functions take an ``ax``
(and return it) or, with ``ax=None``, make and return a new
:class:`~matplotlib.figure.Figure`.
Non-finite values are masked, so they show as gaps.

Surfaces ``Z`` are shaped ``[len(y), len(x)]`` and drawn as
``contour(*meshgrid(x, y), Z)``; with ``log=True`` the levels are geometric and the
colour map logarithmic.  :func:`plot_panel` draws several files in one figure on a
shared colour scale (e.g. the 2x3 ResNet/ViT/Mixer x vanilla/SAM grid of Chen et al.
2022, Fig. 1); :func:`save_figure` writes PNG and PDF at a requested pixel size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomkit.errors import ResultFileError, SpecError

KINDS = ("contour", "contourf", "surface", "1d")
VALUES = {"loss": "loss", "acc": "acc", "train_loss": "loss", "train_acc": "acc"}


@dataclass(frozen=True)
class ColorScale:
    """A colour scale shared by several panels: ``levels`` and ``vmin``/``vmax``."""

    vmin: float
    vmax: float
    levels: np.ndarray
    log: bool


def _load(surface):
    # the I/O layer's reader: neither torch nor the compute package geomkit.geometry
    from geomkit.io.landscape import Landscape, read_landscape

    if isinstance(surface, Landscape):
        return surface
    return read_landscape(surface)


def _values(surf, value: str) -> np.ma.MaskedArray:
    if value not in VALUES:
        raise SpecError(f"unknown value {value!r}; choose loss or acc")
    z = np.asarray(getattr(surf, VALUES[value]), dtype=float)
    mask = ~np.isfinite(z) | ~np.asarray(surf.done, dtype=bool)
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
        raise SpecError(f"log-scaled levels need vmin > 0, got {lo}")
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


def _grid_axes(surface, kind: str, ax, value: str, log: bool, scale: ColorScale | None,
               projection: str | None = None):
    """The shared start of the 2-D plots: load, check, colour scale, axes, mesh."""
    surf = _load(surface)
    _require_2d(surf, kind)
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
    cs = ax.contour(X, Y, _values(surf, value), levels=scale.levels, norm=_norm(scale), cmap=cmap)
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
    z = _values(surf, value)
    cf = ax.contourf(
        X,
        Y,
        np.ma.clip(z, scale.vmin, scale.vmax),
        levels=scale.levels,
        norm=_norm(scale),
        cmap=cmap,
    )
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
    z = _values(surf, value)
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
    """Loss (left axis) and accuracy in percent (right axis) along a 1-D line."""
    surf = _load(surface)
    fig = None
    if ax is None:
        fig, ax = _new_figure()
    x = surf.xcoordinates
    loss = _values(surf, "loss")
    if surf.ycoordinates is not None:  # a 2-D file: the row through y = 0
        i = int(np.argmin(np.abs(surf.ycoordinates)))
        loss = loss[i]
        acc = _values(surf, "acc")[i]
    else:
        acc = _values(surf, "acc")
    ax.plot(x, loss, color="tab:blue", label="loss")
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("loss", color="tab:blue")
    if accuracy:
        ax2 = ax.twinx()
        ax2.plot(x, acc, color="tab:red", linestyle="--", label="accuracy")
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
):
    """Several surfaces side by side in one Figure, on one shared colour scale.

    ``ncols`` defaults to 3 for six files (the paper's 2x3 grid), else up to 4.
    ``kind`` is one of ``contour``, ``contourf``, ``surface``, ``1d``.
    """
    from matplotlib.figure import Figure

    if kind not in KINDS:
        raise SpecError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    surfs = [_load(s) for s in surfaces]
    if not surfs:
        raise SpecError("no landscape files to plot")
    n = len(surfs)
    ncols = ncols or (3 if n in (3, 6, 9) else min(n, 4))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    scale = None
    if kind != "1d":
        scale = color_scale(surfs, value=value, log=log, vmin=vmin, vmax=vmax)
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
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        fig.set_size_inches(size[0] / dpi, size[1] / dpi)
    out = []
    for fmt in formats:
        if fmt not in ("png", "pdf", "svg"):
            raise SpecError(f"unknown figure format {fmt!r}; choose png, pdf or svg")
        p = prefix.with_name(f"{prefix.name}.{fmt}")
        fig.savefig(p, format=fmt, dpi=dpi)
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
    stem = str(path.with_suffix("")) if path.suffix == ".vts" else str(path)
    written = gridToVTK(
        stem,
        to3(X),
        to3(Y),
        to3(height),
        pointData={value: to3(raw), "valid": to3(valid.astype(np.float64))},
    )
    return Path(written)
