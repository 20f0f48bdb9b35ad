"""``geomkit import``: your model and weights as a self-describing geomkit checkpoint."""

from __future__ import annotations

import argparse

from cli._common import add_json_flag, print_json, print_table
from cli._source import add_source_flags, imported
from geomkit.errors import CheckpointError, SpecError

ORDER = 15


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="write a geomkit checkpoint from your own model and weights (timm, your code)",
        description="Build --model (a registry name, timm:NAME or package.module:callable), "
        "load --weights into it (a state_dict in a .pt/.pth/.pth.tar/.bin file, possibly "
        "nested under state_dict/model/module/ema, or .safetensors; DDP and torch.compile "
        "prefixes removed) and write --out: a checkpoint that records how to rebuild the "
        "model, the data spec and the weights' SHA-256, so `geomkit info`, every analysis, "
        "`geomkit table`, `plot` and the study take it by path.",
    )
    add_source_flags(p)
    p.add_argument("--out", required=True, metavar="CK.pt", help="checkpoint to write")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from geomkit.imported import save_imported

    if args.weights is None:
        raise SpecError("--weights FILE is required (the trained weights of --model)")
    out = Path(args.out)
    if out.exists():  # before the model is built: never replace a file
        raise CheckpointError(f"{out} exists; choose another --out or delete it (nothing "
                              "was overwritten)")
    if out.suffix not in (".pt", ".pth"):
        raise SpecError(f"--out must name a .pt file, got {args.out!r}")
    ck = imported(args)
    path = save_imported(ck, out)
    summary = {
        "checkpoint": str(path),
        "model": ck.model_name,
        "model_kwargs": ck.model_kwargs,
        "params": ck.num_params,
        "weights": ck.config["imported_from"],
        "weights_sha256": ck.config["weights_sha256"],
        "missing_keys": len(ck.config["missing_keys"]),
        "data": ck.data_spec.source,
    }
    if args.json:
        print_json(summary)
    else:
        print_table(["field", "value"], [[k, v] for k, v in summary.items()])
    return 0
