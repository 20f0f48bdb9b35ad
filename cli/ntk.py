"""``geomkit ntk``: the NTK condition number at a checkpoint or at initialization."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli._common import (
    add_device_flag,
    add_json_flag,
    int_at_most,
    positive_float,
    positive_int,
    print_json,
    print_table,
    seed_int,
)
from cli._source import add_source_flags
from geomkit.device import resolve_device
from geomkit.errors import DataError, SpecError

ORDER = 32

_DTYPES = ("float32", "float64")

#: --repeats above this is a typo, not a study: each repeat builds and measures a model
MAX_REPEATS = 10_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ntk",
        help="NTK condition number kappa = lambda_max / lambda_min (at a checkpoint or at init)",
        description=(
            "Empirical NTK Theta = J J^T on the first N training examples (the analysis-data "
            "rule) and its condition number kappa = lambda_max / lambda_min. By default at the "
            "checkpoint's weights; with --init on freshly initialized copies of its "
            "architecture (seeds S, S+1, ...), reporting the mean and standard deviation over "
            "repeats. --model SPEC --data SOURCE measures an architecture at "
            "initialization without a checkpoint; with --weights FILE at those weights."
        ),
    )
    p.add_argument("ckpt", nargs="?", metavar="CKPT", help="checkpoint file (or run directory)")
    p.add_argument("--model", metavar="SPEC",
                   help="instead of CKPT: a registry name, timm:NAME or package.module:callable "
                   "(needs --data; at initialization unless --weights FILE)")
    p.add_argument("--data", metavar="SOURCE",
                   help="data source for --model (digits, fashion-mnist, cifar10, ...)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="image size for --model/--data (default: the source's native size)")
    p.add_argument("--init", action="store_true",
                   help="measure at initialization: fresh models of the checkpoint's architecture")
    p.add_argument("--repeats", type=int_at_most(MAX_REPEATS), default=3,
                   help=f"seeds averaged with --init (default: 3, at most {MAX_REPEATS})")
    p.add_argument("--seed", type=seed_int, default=0, help="first seed with --init (default: 0)")
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
    p.add_argument("--memory-gib", type=positive_float, default=4.0,
                   help="memory budget in GiB for the automatic sizes (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_source_flags(p, model=False)
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def _check_kernel(n: int, classes: int, mode: str, device: Any) -> None:
    """Refuse, before any Jacobian is computed, a kernel that cannot fit: the float64
    R×R kernel and its symmetrized copy for eigvalsh (R = N, or N*C with --mode full)."""
    from geomkit.data.spec import format_bytes
    from geomkit.geometry._work import free_memory

    rows = n * classes if mode == "full" else n
    need = 2 * rows * rows * 8
    free = free_memory(device)
    if need > free:
        what = f"{n} examples x {classes} classes" if mode == "full" else f"{n} examples"
        # the keyword once: the CLI writes its flag (--samples) in its place
        raise SpecError(
            f"samples {n} with mode {mode} needs a {rows:,}x{rows:,} float64 kernel "
            f"({what}; ~{format_bytes(need)} with its eigendecomposition), more than the "
            f"{format_bytes(free)} free on {device}; use fewer examples"
            + (" or --mode sum" if mode == "full" else ""),
            param="samples",
        )


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
    if args.ckpt is not None and (args.data is not None or args.image_size is not None):
        flag = "--data" if args.data is not None else "--image-size"
        raise SpecError(f"{flag} applies to --model NAME only; a checkpoint measures on its "
                        "own data at its own image size")
    if args.model is None and (args.model_arg or args.non_strict or args.data_root):
        raise SpecError("--model-arg, --non-strict and --data-root apply to --model SPEC "
                        "only; a checkpoint rebuilds its own model on its own data")
    device = resolve_device(args.device)
    extra: dict[str, Any] = {}
    if args.model is not None and args.weights is None:
        if not args.data:
            raise SpecError("--model needs --data SOURCE for its inputs (e.g. --data digits)")
        from cli._source import parse_model_args
        from geomkit.data import DataSpec, info, load_split
        from geomkit.imported import model_kwargs_for
        from geomkit.models import build

        spec = DataSpec(source=args.data, root=args.data_root, image_size=args.image_size)
        spec.check_memory("train")  # the train split at this size fits, before any build
        di = info(spec)
        shape = model_kwargs_for(args.model, spec, parse_model_args(args.model_arg))
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
        _check_kernel(len(x), di.num_classes, args.mode, device)
        init, probe = True, factory(args.seed)
        extra.update(model=args.model, data=args.data)
    else:
        from geomkit.checkpoint import load_checkpoint
        from geomkit.data import info

        if args.weights is not None:  # your model at your weights (--init: at fresh ones)
            from cli._source import imported

            ck = imported(args)
        else:
            ck = load_checkpoint(args.ckpt)
        ck.data_spec.replace(subset=1.0).check_memory("train")
        x, _ = ck.analysis_data("train", args.samples)
        _check_kernel(len(x), info(ck.data_spec).num_classes, args.mode, device)
        factory, init, probe = ck.fresh_model, args.init, ck.model
        extra.update(checkpoint=str(ck.path), model=ck.model_name)

    opts = dict(
        mode=args.mode,
        params=_block(probe, args.block),
        bn=args.bn,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        memory_gib=args.memory_gib,
        device=device,
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
