"""``geomkit models``: the model registry."""

from __future__ import annotations

import argparse

from cli._common import add_json_flag, print_json, print_table
from geomkit.models import describe, list_models

ORDER = 12


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered models",
        description="List the registered model names (for --model).",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [[n, describe(n)] for n in list_models()]
    if args.json:
        print_json({"models": {n: d for n, d in rows}})
    else:
        print_table(["model", "description"], rows)
    return 0
