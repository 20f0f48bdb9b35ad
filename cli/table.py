"""``geomkit table``: the paper's Table 1 or Table 3 from a results file."""

from __future__ import annotations

import argparse
import sys

from geomkit.tables import FORMATS

ORDER = 61


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "table",
        help="render the paper's Table 1 or Table 3 from a `geomkit analyze` results file",
        description="Table 1: #params, NTK kappa at init, Hessian lambda_max, top-1 and -C "
        "accuracy, one column per checkpoint (model/optimizer). Table 3: lambda_max of the "
        "diagonal Hessian blocks (embedding, MSA or token MLP, MLP or channel MLP, first/"
        "middle/last block, whole), ||w||_2 and the first/middle/last block output norms, "
        "one row per checkpoint as in the paper.",
    )
    p.add_argument("results", metavar="RESULTS.h5", help="file written by `geomkit analyze`")
    p.add_argument("--which", type=int, choices=(1, 3), required=True,
                   help="which table: 1 (geometry and accuracy) or 3 (per-block sharpness and "
                   "norms)")
    p.add_argument("--format", choices=FORMATS, default="md",
                   help="md (markdown, default), csv (raw numbers), tex (booktabs tabular) or "
                   "json (one object)")
    p.add_argument("--with-paper", action="store_true",
                   help="add the paper's own numbers (ImageNet, Chen et al. 2022) side by side")
    p.add_argument("--transpose", action="store_true", help="swap rows and columns")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geomkit.tables import make_table, render

    table = make_table(args.results, args.which, with_paper=args.with_paper,
                       transpose=args.transpose)
    fmt = "json" if args.json else args.format
    sys.stdout.write(render(table, fmt) + ("\n" if fmt == "json" else ""))
    return 0
