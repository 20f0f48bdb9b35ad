"""``geomkit sharpness``: average-case, first-order SAM and worst-case m-sharpness per block."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from cli._common import (
    add_device_flag,
    add_json_flag,
    add_loss_flags,
    check_h5_out,
    loss_of,
    positive_float,
    positive_int,
    print_json,
    print_table,
    seed_int,
    user_blocks,
)
from cli._source import add_source_flags, checkpoints
from geomkit.device import resolve_device
from geomkit.errors import SpecError

ORDER = 31


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sharpness",
        help="sharpness beside lambda_max: Gaussian average, SAM's first-order and "
        "worst-case (adaptive) m-sharpness per block",
        description=(
            "Sharpness of the loss over the first N training examples in batches S of m "
            "(m-sharpness), model in eval mode: --kind avg: E[L_S(w+d) - L_S(w)], d ~ "
            "N(0, rho^2 c^2), with L^N (the loss under noise); --kind sam: the loss rise at "
            "SAM's ascent step d = rho c^2 g/||c g|| (p=2) or rho c sign(g) (p=inf); --kind "
            "worst (default): max over ||d/c||_p <= rho by Auto-PGD (Andriushchenko et al. "
            "2023). c = 1, or |w| with --adaptive (ASAM). Blocks as for `geomkit hessian`: "
            "only the block's parameters are perturbed."
        ),
    )
    p.add_argument("ckpt", nargs="?", metavar="CKPT",
                   help="checkpoint file (or --model SPEC --weights FILE --data SOURCE)")
    add_source_flags(p)
    add_loss_flags(p)
    p.add_argument("--kind", choices=("avg", "sam", "worst"), default="worst",
                   help="measure (default: worst)")
    p.add_argument("--adaptive", action="store_true",
                   help="scale the perturbation by |w| elementwise (adaptive sharpness)")
    p.add_argument("--p", choices=("2", "inf"), default="2",
                   help="norm of the perturbation set for sam and worst (default: 2)")
    p.add_argument("--rho", type=positive_float, default=None,
                   help="radius (avg: noise standard deviation); default by kind: avg 0.01 "
                   "(adaptive 0.1), l2 0.05 (adaptive 0.5), linf 1e-4 (adaptive 1e-3)")
    p.add_argument("--m", type=positive_int, default=128,
                   help="examples per set S (m-sharpness; default: 128)")
    p.add_argument("--samples", type=positive_int, default=1024,
                   help="N, the first N training examples, in N // m batches (default: 1024)")
    p.add_argument("--blocks", nargs="+", default=["whole"], metavar="NAME",
                   help="preset blocks: whole (default), paper, embedding, attn, mlp, "
                   "token_mlp, channel_mlp, block{k}")
    p.add_argument("--block", action="append", default=[], metavar="NAME=REGEX",
                   help="a user block: parameters whose name matches REGEX; repeatable")
    p.add_argument("--steps", type=positive_int, default=20,
                   help="Auto-PGD steps of the worst case (default: 20)")
    p.add_argument("--restarts", type=positive_int, default=1,
                   help="worst-case ascents per batch, the best counts (default: 1)")
    p.add_argument("--init", choices=("sam", "random"), default="sam",
                   help="start of the first ascent: SAM's point (default) or random")
    p.add_argument("--draws", type=positive_int, default=8,
                   help="noise draws per batch for avg (default: 8)")
    p.add_argument("--bn", choices=("eval", "train"), default="eval",
                   help="BatchNorm statistics: eval (default) or train (batch statistics; "
                   "the model's buffers are not changed)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="compute dtype (default: float32)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of noise and random starts")
    p.add_argument("--out", metavar="FILE.h5", help="write the results to this HDF5 file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def _g(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def run(args: argparse.Namespace) -> int:
    import torch

    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.blocks import resolve_blocks
    from geomkit.geometry.sharpness import sharpness
    from geomkit.io.sharpness import check_sharpness_out, save_sharpness, sharpness_record

    regex = user_blocks(args.block)
    if args.m > args.samples:
        raise SpecError(f"--m {args.m} exceeds --samples {args.samples}: m-sharpness needs at "
                        "least one batch of m examples")
    check_h5_out(args.out, check_sharpness_out)
    ck = load_checkpoint(checkpoints(args, args.ckpt)[0])
    model = ck.model
    resolve_blocks(model, args.blocks, regex)  # bad names fail before any data is read
    x, y = ck.analysis_data("train", args.samples)
    loss = loss_of(args)
    r = sharpness(model, x, y, kind=args.kind, rho=args.rho, p=args.p, adaptive=args.adaptive,
                  m=args.m, blocks=args.blocks, regex=regex, loss=loss, steps=args.steps,
                  restarts=args.restarts, init=args.init, draws=args.draws, bn=args.bn,
                  dtype=getattr(torch, args.dtype), device=resolve_device(args.device),
                  seed=args.seed, progress=not args.no_progress and sys.stderr.isatty())
    if args.out:
        out = save_sharpness(args.out, r, checkpoint=ck, loss=loss)
        out["out"] = args.out
    else:
        out = sharpness_record(r, checkpoint=ck, loss=loss)
    if args.json:
        print_json({k: v for k, v in out.items() if k != "params"})
        return 0
    what = {"avg": "E[L(w+d)] - L(w), Gaussian", "sam": "SAM step",
            "worst": "worst case"}[args.kind]
    norm = "" if args.kind == "avg" else f", p={r.p}"
    print(f"{ck.label}: {what}{', adaptive' if r.adaptive else ''}{norm}, rho={r.rho:g}, "
          f"m={r.m}, {r.n_batches} batches ({r.n_samples} examples), bn={r.bn}"
          + (f", loss={loss}" if loss != "ce" else ""))
    perturbed = "L^N" if args.kind == "avg" else "L(w+d)"
    rows = [[b, d["n_params"], d["value"], _g(d["stderr"]), d["loss"], d["perturbed_loss"],
             d["n_forward"], round(d["seconds"], 2)] for b, d in out["blocks"].items()]
    print_table(["block", "#params", "sharpness", "+/-", "L", perturbed, "forwards", "seconds"],
                rows)
    if args.out:
        print(f"wrote {args.out}")
    return 0
