"""``geomkit ntk``: the NTK condition number at a checkpoint or at initialization."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli._common import add_device_flag, add_json_flag, positive_int, print_json, print_table
from geomkit.device import resolve_device
from geomkit.errors import DataError, SpecError

ORDER = 32

_DTYPES = ("float32", "float64")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ntk",
        help="NTK condition number kappa = lambda_max / lambda_min (at a checkpoint or at init)",
        description=(
            "Empirical NTK Theta = J J^T on the first N training examples (the analysis-data "
            "rule) and its condition number kappa = lambda_max / lambda_min. By default at the "
            "checkpoint's weights; with --init on freshly initialized copies of its "
            "architecture (seeds S, S+1, ...), reporting the mean and standard deviation over "
            "repeats. --model NAME --data SOURCE measures a registered architecture at "
            "initialization without a checkpoint."
        ),
    )
    p.add_argument("ckpt", nargs="?", metavar="CKPT", help="checkpoint file (or run directory)")
    p.add_argument("--model", metavar="NAME",
                   help="registered model name instead of CKPT (implies --init; needs --data)")
    p.add_argument("--data", metavar="SOURCE",
                   help="data source for --model (digits, fashion-mnist, cifar10, ...)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="image size for --model/--data (default: the source's native size)")
    p.add_argument("--init", action="store_true",
                   help="measure at initialization: fresh models of the checkpoint's architecture")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="seeds averaged with --init (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed with --init (default: 0)")
    p.add_argument("--samples", type=positive_int, default=64,
                   help="N, the first N training examples (default: 64)")
    p.add_argument("--mode", choices=("sum", "trace", "full"), default="sum",
                   help="sum: gradient of each example's summed logits (TE-NAS, default); "
                   "trace: per-logit kernels summed; full: the N*C x N*C kernel")
    p.add_argument("--bn", choices=("train", "eval"), default="train",
                   help="BatchNorm statistics: train = of the N examples (TE-NAS, default), "
                   "eval = running statistics")
    p.add_argument("--block", metavar="NAME",
                   help="differentiate one parameter block only: a preset (embedding, attn, mlp, "
                   "token_mlp, channel_mlp, block{k}, whole) or NAME=REGEX (default: all)")
    p.add_argument("--dtype", choices=_DTYPES, default="float64",
                   help="compute dtype (default: float64; float32 halves time and memory but "
                   "kappa above ~1e6 is then dominated by rounding)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="Jacobian rows per vectorized pass (default: automatic)")
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="parameters per chunk (default: automatic from --memory-gib)")
    p.add_argument("--memory-gib", type=float, default=4.0,
                   help="memory budget in GiB for the automatic sizes (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)



def _block(model: Any, text: str | None) -> list[str] | None:
    if text is None:
        return None
    from geomkit.geometry.blocks import parse_block_arg, resolve_blocks

    if "=" in text:
        name, pattern = parse_block_arg(text)
        return resolve_blocks(model, (), regex={name: pattern})[name]
    return resolve_blocks(model, (text,))[text]


def run(args: argparse.Namespace) -> int:
    import torch

    from geomkit.geometry.ntk import ntk, ntk_at_init

    if (args.ckpt is None) == (args.model is None):
        raise SpecError("give a checkpoint path or --model NAME (with --data SOURCE), not both")
    extra: dict[str, Any] = {}
    if args.model is not None:
        if not args.data:
            raise SpecError("--model needs --data SOURCE for its inputs (e.g. --data digits)")
        from geomkit.data import DataSpec, info, load_split
        from geomkit.models import build

        spec = DataSpec(source=args.data, image_size=args.image_size)
        di = info(spec)
        shape = dict(image_size=di.image_size, in_chans=di.in_chans, num_classes=di.num_classes)
        build(args.model, **shape)  # unknown names fail before any data is read

        def factory(seed: int) -> torch.nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return build(args.model, **shape).eval()

        x, _ = load_split(spec, "train")
        if args.samples > len(x):
            raise DataError(f"asked for {args.samples} train examples but {args.data} has "
                            f"only {len(x)}")
        x = x[: args.samples]
        init, probe = True, factory(args.seed)
        extra.update(model=args.model, data=args.data)
    else:
        from geomkit.checkpoint import load_checkpoint

        ck = load_checkpoint(args.ckpt)
        x, _ = ck.analysis_data("train", args.samples)
        factory, init, probe = ck.fresh_model, args.init, ck.model
        extra.update(checkpoint=str(ck.path), model=ck.model_name)

    opts = dict(
        mode=args.mode,
        params=_block(probe, args.block),
        bn=args.bn,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        memory_gib=args.memory_gib,
        device=resolve_device(args.device),
        dtype=getattr(torch, args.dtype),
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if init:
        res = ntk_at_init(factory, x, repeats=args.repeats, seed=args.seed, **opts)
        out = res.summary()
    else:
        out = ntk(probe, x, **opts).summary()
    out.update(init=init, block=args.block or "whole", dtype=args.dtype, **extra)

    if args.json:
        print_json(out)
        return 0
    rows = [["kappa", out["kappa"]]]
    if init:
        rows.append(["kappa std", out["kappa_std"]])
    rows += [["lambda_max", out["lambda_max"]], ["lambda_min", out["lambda_min"]]]
    if init:
        rows.append(["seeds", ", ".join(str(s) for s in out["seeds"])])
    rows += [
        ["samples", out["samples"]],
        ["mode", out["mode"]],
        ["bn", out["bn"]],
        ["block", out["block"]],
        ["parameters", out["n_params"]],
        ["at", "initialization" if init else "checkpoint"],
        ["seconds", round(out["seconds"], 2)],
    ]
    print_table(["quantity", "value"], rows)
    return 0
