"""``geomkit info``: what is in a checkpoint."""

from __future__ import annotations

import argparse

from cli._common import add_json_flag, fmt, print_json
from geomkit.checkpoint import load_checkpoint

ORDER = 11


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show what is in a checkpoint",
        description="Show a checkpoint's model, data, training configuration, "
        "metrics and provenance.",
    )
    p.add_argument("checkpoint", help="checkpoint file (or run directory holding last.pt)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ck = load_checkpoint(args.checkpoint)
    metrics = {k: v for k, v in ck.metrics.items() if k != "history"}
    obj = {
        "path": str(ck.path),
        "sha256": ck.sha256(),
        "label": ck.label,
        "model": ck.model_name,
        "model_kwargs": ck.model_kwargs,
        "params": ck.num_params,
        "epoch": ck.epoch,
        "step": ck.step,
        "config": ck.config,
        "data": ck.data_spec.to_dict(),
        "metrics": metrics,
        "provenance": ck.provenance,
    }
    if args.json:
        print_json(obj)
        return 0
    print(
        f"{ck.path}  ({ck.label}, {ck.num_params:,} parameters, epoch {ck.epoch}, step {ck.step})"
    )
    for section in ("model_kwargs", "config", "data", "metrics", "provenance"):
        print(f"\n[{section}]")
        for k, v in obj[section].items():
            print(f"  {k:<20} {fmt(v) if not isinstance(v, (dict, list)) else v}")
    return 0
