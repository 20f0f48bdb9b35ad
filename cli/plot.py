"""``geomkit plot``: figures (and ParaView files) from landscape HDF5 files."""

from __future__ import annotations

import argparse
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
        help="output prefix (default: the first file's path without .h5)",
    )
    p.add_argument("--format", default="png,pdf", help="comma-separated formats (default png,pdf)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of PNG files (default 150)")
    p.add_argument(
        "--vtk",
        action="store_true",
        help="also export each 2-D file as a ParaView structured grid (.vts; needs "
        "the optional pyevtk: pip install 'geomkit[vtk]')",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from geomkit import plot
    from geomkit.io.landscape import read_landscape  # no compute package for a plot

    surfs = [read_landscape(f) for f in args.files]
    one_d = [s.ycoordinates is None for s in surfs]
    if args.kind == "all":
        kinds = ["1d"] if all(one_d) else ["contour", "contourf", "surface"]
    else:
        kinds = [args.kind]
    if any(one_d) and any(k != "1d" for k in kinds):
        bad = [f for f, o in zip(args.files, one_d, strict=True) if o]
        raise SpecError(f"{bad[0]} is a 1-D line; plot it with --kind 1d")
    titles = args.titles.split(",") if args.titles else None
    if titles is not None and len(titles) != len(surfs):
        raise SpecError(f"--titles has {len(titles)} names for {len(surfs)} files")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    prefix = Path(args.out) if args.out else Path(args.files[0]).with_suffix("")
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
        )
        paths = plot.save_figure(
            fig, prefix.with_name(f"{prefix.name}_{kind}"), formats=formats, dpi=args.dpi
        )
        written += [str(p) for p in paths]
    if args.vtk:
        for f, s, o in zip(args.files, surfs, one_d, strict=True):
            if not o:
                out = prefix.with_name(f"{prefix.name}_{Path(f).stem}.vts")
                written.append(
                    str(plot.export_vts(s, out, value=args.value, log=args.log, zmax=args.vmax))
                )
    if args.json:
        print_json({"files": written, "kinds": kinds, "inputs": list(args.files)})
    else:
        print_table(["written"], [[w] for w in written])
    return 0
