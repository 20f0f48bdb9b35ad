"""``geomkit plot``: figures (and ParaView files) from landscape HDF5 files."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from cli._common import add_json_flag, print_json, print_table
from geomkit.errors import SpecError

ORDER = 51


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="contour / heat map / 3-D surface / 1-D curve figures from landscape files",
        description="Draw one or more landscape files (from `geomkit landscape`) without "
        "recomputing anything. Several files go into one figure, side by side on one shared "
        "colour scale (six files: the 2x3 grid of Chen et al. 2022, Fig. 1). Writes "
        "PREFIX_<kind>.png and .pdf; with --vtk also PREFIX_<file>.vts for ParaView.",
    )
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="landscape files")
    p.add_argument(
        "--kind",
        default="all",
        choices=("contour", "contourf", "surface", "1d", "all"),
        help="plot kind (default all: contour, contourf and surface for 2-D files, 1d for lines)",
    )
    p.add_argument(
        "--value", default="loss", choices=("loss", "acc"), help="what to draw (default loss)"
    )
    p.add_argument("--log", action="store_true", help="log-scaled levels and colours")
    p.add_argument("--vmin", type=float, default=None, help="lower end of the colour scale")
    p.add_argument(
        "--vmax",
        type=float,
        default=None,
        help="upper end of the colour scale (values above are clipped)",
    )
    p.add_argument(
        "--titles", default=None, help="comma-separated panel titles (default: model names)"
    )
    p.add_argument(
        "--ncols", type=int, default=None, help="panels per row (default 3 for 3/6/9 files)"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="PREFIX",
        help="output prefix (default: the first file's path without .h5); an existing "
        "directory or a path ending in / puts the figures inside it, named after the first file",
    )
    p.add_argument("--format", default="png,pdf", dest="formats",
                   help="comma-separated formats: png, pdf, svg (default png,pdf)")
    p.add_argument("--dpi", type=float, default=150, help="resolution of PNG files (default 150)")
    p.add_argument("--levels", type=int, default=30, dest="num_levels", metavar="N",
                   help="contour levels on the colour scale (default 30)")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="exact pixel size of each figure, e.g. 1200x800 (default: 3.2x3.0 "
                   "inches a panel at --dpi)")
    p.add_argument(
        "--vtk",
        action="store_true",
        help="also export each 2-D file as a ParaView structured grid (.vts; needs "
        "the optional pyevtk: pip install 'geomkit[vtk]')",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = None
    if not sep or size is None:
        raise SpecError(f"--size must be WIDTHxHEIGHT in pixels, e.g. 1200x800; got {text!r}")
    return size


def _prefix(args: argparse.Namespace) -> Path:
    first = Path(args.files[0])
    if args.out is None:
        return first.with_suffix("")
    out = Path(args.out)
    if args.out.endswith(("/", os.sep)) or out.is_dir():
        return out / first.stem
    return out


def _vts_names(prefix: Path, files: list[str]) -> list[Path]:
    """``PREFIX_<stem>.vts`` per file; inputs of one stem (a/s.h5, b/s.h5) get _1, _2."""
    stems = [Path(f).stem for f in files]
    names = []
    for k, stem in enumerate(stems):
        tag = stem if stems.count(stem) == 1 else f"{stem}_{stems[:k + 1].count(stem)}"
        names.append(prefix.with_name(f"{prefix.name}_{tag}.vts"))
    return names


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from geomkit import plot
    from geomkit.io.landscape import read_landscape  # no compute package for a plot

    # every option first: nothing is read or written for a wrong one
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    size = _size(args.size)
    plot.check_options(log=args.log, num_levels=args.num_levels, vmin=args.vmin,
                       vmax=args.vmax, ncols=args.ncols, size=size, formats=formats)
    plot.check_options(dpi=args.dpi, size=size,
                       figsize=plot.panel_figsize(len(args.files), args.ncols))
    titles = args.titles.split(",") if args.titles else None
    if titles is not None and len(titles) != len(args.files):
        raise SpecError(f"--titles has {len(titles)} names for {len(args.files)} files")
    if args.vtk and importlib.util.find_spec("pyevtk") is None:
        raise SpecError("--vtk needs pyevtk: pip install 'geomkit[vtk]'")
    if "-" in args.files:
        raise SpecError("landscape files cannot be read from standard input ('-'); "
                        "pass their paths")
    prefix = _prefix(args)

    surfs = [read_landscape(f) for f in args.files]
    # lines, and 2-D grids of one row or column: drawn as curves only
    one_d = [s.ycoordinates is None or min(len(s.xcoordinates), len(s.ycoordinates)) < 2
             for s in surfs]
    if args.kind == "all":
        kinds = ["1d"] if all(one_d) else ["contour", "contourf", "surface"]
    else:
        kinds = [args.kind]
    if any(one_d) and any(k != "1d" for k in kinds):
        bad = [f for f, o in zip(args.files, one_d, strict=True) if o]
        raise SpecError(f"{bad[0]} is a 1-D line (or a one-row grid); plot it with --kind 1d")
    for k in kinds:  # nothing to draw (no computed point, all NaN): refused before writing
        for s in surfs:
            plot.check_drawable(s, "loss" if k == "1d" else args.value, row=k == "1d",
                                log=args.log)
    unfinished = []
    for f, s in zip(args.files, surfs, strict=True):
        done, total = plot.progress(s)
        if done < total:
            unfinished.append({"file": f, "points_done": done, "points": total})
            print(f"geomkit: note: {f} is unfinished ({done} of {total} points computed); "
                  "the rest show as gaps; rerun its `geomkit landscape` command to finish it",
                  file=sys.stderr)
    written: list[str] = []
    for kind in kinds:
        fig = plot.plot_panel(
            surfs,
            kind=kind,
            value=args.value,
            log=args.log,
            ncols=args.ncols,
            titles=titles,
            vmin=args.vmin,
            vmax=args.vmax,
            num_levels=args.num_levels,
        )
        paths = plot.save_figure(
            fig, prefix.with_name(f"{prefix.name}_{kind}"), formats=formats, dpi=args.dpi,
            size=size,
        )
        written += [str(p) for p in paths]
    if args.vtk:
        names = _vts_names(prefix, list(args.files))
        for s, o, out in zip(surfs, one_d, names, strict=True):
            if not o:
                written.append(
                    str(plot.export_vts(s, out, value=args.value, log=args.log, zmax=args.vmax))
                )
    if args.json:
        print_json({"files": written, "kinds": kinds, "inputs": list(args.files),
                    "unfinished": unfinished})
    else:
        print_table(["written"], [[w] for w in written])
    return 0
