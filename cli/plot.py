"""``geomkit plot``: figures (and ParaView files) from landscape HDF5 files, and λ_max-vs-step
figures from sharpness track files (``geomkit train --track``), told apart by their
``format`` attribute."""

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
        help="contour / heat map / 3-D surface / 1-D curve figures from landscape files; "
        "lambda_max vs step from track files",
        description="Draw one or more landscape files (from `geomkit landscape`) without "
        "recomputing anything. Several files go into one figure, side by side on one shared "
        "colour scale (six files: the 2x3 grid of Chen et al. 2022, Fig. 1). Writes "
        "PREFIX_<kind>.png and .pdf; with --vtk also PREFIX_<file>.vts for ParaView. A "
        "trajectory-PCA file (`--dir pca`) gets its training path on the contour plots, "
        "axes 'PC1 (x %%)', and red rings where a snapshot's true loss differs from the "
        "surface under it by more than --disagree. Track files (RUN/track.h5 from "
        "`geomkit train --track`) give PREFIX_track.png/.pdf: lambda_max (Adam: "
        "lambda_max(P^-1 H)) against the step with the edge-of-stability threshold "
        "dashed, all runs on one axis, and their train/test loss.",
    )
    p.add_argument("files", nargs="+", metavar="FILE.h5",
                   help="landscape files, or track files (not both)")
    p.add_argument(
        "--kind",
        default="all",
        choices=("contour", "contourf", "surface", "1d", "all"),
        help="plot kind (default all: contour, contourf and surface for 2-D files, 1d for lines)",
    )
    p.add_argument(
        "--value", default="loss", choices=("loss", "acc"), help="what to draw (default loss)"
    )
    p.add_argument("--log", action="store_true",
                   help="log-scaled levels and colours (track files: log y axes)")
    p.add_argument("--disagree", type=float, default=None, metavar="REL",
                   help="PCA files: ring the snapshots whose true loss differs from the "
                   "surface under them by more than REL of it (default 0.1 = 10%%)")
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


def _format_of(path: str) -> str | None:
    """The ``format`` tag of an existing HDF5 file (None if unreadable: the landscape
    reader then says what is wrong with it)."""
    from geomkit.errors import GeomkitError
    from geomkit.io import file_format, open_h5

    if path == "-" or not Path(path).is_file():
        return None
    try:
        with open_h5(path, "r") as f:
            return file_format(f)
    except GeomkitError:
        return None


def _is_track(tag: str | None) -> bool:
    return bool(tag) and str(tag).startswith("geomkit-track")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from geomkit import plot
    from geomkit.io.landscape import read_landscape  # no compute package for a plot

    tags = [_format_of(f) for f in args.files]
    if any(_is_track(t) for t in tags):
        if not all(_is_track(t) for t in tags):
            bad = next(f for f, t in zip(args.files, tags, strict=True) if not _is_track(t))
            raise SpecError(f"{bad} is not a track file; plot track files and landscape "
                            "files in separate commands")
        return _run_track(args)
    threshold = plot.DISAGREE if args.disagree is None else plot.check_threshold(args.disagree)

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
            threshold=threshold,
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
    paths = _trajectory_notes(args.files, surfs, threshold, kinds)
    if args.json:
        print_json({"files": written, "kinds": kinds, "inputs": list(args.files),
                    "unfinished": unfinished, "trajectories": paths})
    else:
        print_table(["written"], [[w] for w in written])
    return 0


def _trajectory_notes(files: list[str], surfs: list, threshold: float,
                      kinds: list[str]) -> list[dict]:
    """How many snapshots of each PCA file lie off the surface (a note on stderr each)."""
    from geomkit import plot

    out = []
    for f, s in zip(files, surfs, strict=True):
        tr = plot.read_trajectory(s)
        if tr is None:
            if s.attrs.get("dir") == "pca":
                print(f"geomkit: note: {f} has no trajectory yet (the grid is unfinished, "
                      "or a shard): rerun its `geomkit landscape` command once complete",
                      file=sys.stderr)
            continue
        bad, outside = tr.disagrees(threshold), tr.outside()
        rec = {"file": f, "snapshots": int(len(tr.a)), "disagree": int(bad.sum()),
               "outside_grid": int(outside.sum()), "threshold": threshold,
               "max_distance_from_plane": float(tr.residual.max()) if len(tr.a) else None,
               "explained_variance_ratio": [float(v) for v in tr.explained_variance_ratio]}
        out.append(rec)
        drawn = any(k in ("contour", "contourf") for k in kinds)
        print(f"geomkit: note: {f}: {rec['disagree']} of {rec['snapshots']} snapshots have a "
              f"true loss more than {100 * threshold:g}% away from the surface under them"
              + (" (ringed in red)" if drawn and rec["disagree"] else "")
              + (f"; {rec['outside_grid']} lie outside the grid" if rec["outside_grid"] else "")
              + f"; largest distance from the PCA plane {rec['max_distance_from_plane']:.3g}",
              file=sys.stderr)
    return out


def _run_track(args: argparse.Namespace) -> int:
    """λ_max vs step of one or more track files (``PREFIX_track.png``/``.pdf``)."""
    from geomkit import plot

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    size = _size(args.size)
    plot.check_options(size=size, formats=formats, dpi=args.dpi, figsize=(10.0, 3.4))
    labels = args.titles.split(",") if args.titles else None
    if labels is not None and len(labels) != len(args.files):
        raise SpecError(f"--titles has {len(labels)} names for {len(args.files)} files")
    fig = plot.plot_track(args.files, log=args.log, labels=labels)
    prefix = _prefix(args)
    paths = plot.save_figure(fig, prefix.with_name(f"{prefix.name}_track"), formats=formats,
                             dpi=args.dpi, size=size)
    written = [str(p) for p in paths]
    if args.json:
        print_json({"files": written, "kinds": ["track"], "inputs": list(args.files)})
    else:
        print_table(["written"], [[w] for w in written])
    return 0
