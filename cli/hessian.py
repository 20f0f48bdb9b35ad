"""``geomkit hessian``: λ_max (top-k, λ_min), trace and spectral density per parameter block."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli._common import (
    add_device_flag,
    add_json_flag,
    add_loss_flags,
    check_h5_out,
    loss_of,
    nonneg_float,
    positive_int,
    print_json,
    print_table,
    user_blocks,
)
from cli._source import add_source_flags, checkpoints
from geomkit.device import resolve_device

ORDER = 30

_DTYPES = ("float32", "float64")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hessian",
        help="Hessian lambda_max per parameter block (Lanczos), optionally trace and density",
        description=(
            "Extreme eigenvalues of the diagonal Hessian blocks H_BB of the mean cross-entropy "
            "over the first N training examples (eval preprocessing, model in eval mode), by "
            "Lanczos with full reorthogonalization on matrix-free Hessian-vector products. "
            "Blocks: 'paper' (the paper's Table-3 columns for the model family), 'whole', any "
            "preset (embedding, attn, mlp, token_mlp, channel_mlp, block{k}) and user blocks "
            "--block NAME=REGEX. --trace adds Hutchinson trace estimates, --density a "
            "stochastic-Lanczos-quadrature eigenvalue density."
        ),
    )
    p.add_argument("ckpt", nargs="?", metavar="CKPT",
                   help="checkpoint file (or --model SPEC --weights FILE --data SOURCE)")
    add_source_flags(p)
    add_loss_flags(p)
    p.add_argument("--blocks", nargs="+", default=["paper"], metavar="NAME",
                   help="preset blocks: paper (default), whole, embedding, attn, mlp, "
                   "token_mlp, channel_mlp, block{k}")
    p.add_argument("--block", action="append", default=[], metavar="NAME=REGEX",
                   help="a user block: parameters whose name matches REGEX (re.search); "
                   "repeatable")
    p.add_argument("--samples", type=positive_int, default=512,
                   help="N, the first N training examples (default: 512)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="analysis mini-batch (default: all N at once when the graph fits the "
                   "memory budget, else what fits)")
    p.add_argument("--top-k", type=positive_int, default=1,
                   help="largest eigenvalues per block (default: 1)")
    p.add_argument("--smallest", action="store_true",
                   help="also the smallest eigenvalue lambda_min (often negative)")
    p.add_argument("--tol", type=nonneg_float, default=1e-4,
                   help="Lanczos relative tolerance on the Ritz values' change and residual "
                   "bound (default: 1e-4)")
    p.add_argument("--max-iter", type=positive_int, default=100,
                   help="Lanczos steps (Hessian-vector products) per block at most (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of start vectors and probes")
    p.add_argument("--trace", action="store_true", help="Hutchinson trace per block")
    p.add_argument("--probes", type=positive_int, default=64,
                   help="Rademacher probes for --trace (default: 64)")
    p.add_argument("--density", action="store_true",
                   help="SLQ eigenvalue density per block (written with --out; in --json)")
    p.add_argument("--density-probes", type=positive_int, default=4,
                   help="start vectors for --density (default: 4)")
    p.add_argument("--density-iter", type=positive_int, default=64,
                   help="Lanczos steps per --density probe (default: 64)")
    p.add_argument("--strategy", choices=("auto", "reuse", "stream", "func"), default="auto",
                   help="Hessian-vector products: reuse the first-order graph, stream "
                   "mini-batches, or torch.func forward-over-reverse (default: auto, reuse "
                   "when the graph fits in memory)")
    p.add_argument("--bn", choices=("eval", "train"), default="eval",
                   help="BatchNorm statistics: eval = running statistics (default), train = "
                   "batch statistics (the model's buffers are not changed)")
    p.add_argument("--dtype", choices=_DTYPES, default="float32",
                   help="compute dtype (default: float32)")
    p.add_argument("--out", metavar="FILE.h5", help="write the results to this HDF5 file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.blocks import resolve_blocks
    from geomkit.geometry.hessian import hessian_eigs
    from geomkit.geometry.spectrum import hutchinson_trace, spectral_density
    from geomkit.io.hessian import check_hessian_out, hessian_record, save_hessian

    regex = user_blocks(args.block)
    check_h5_out(args.out, check_hessian_out)  # never replace a results file, a landscape
    ck = load_checkpoint(checkpoints(args, args.ckpt)[0])
    model = ck.model
    blocks = args.blocks
    resolve_blocks(model, blocks, regex)  # bad names fail before any data is read
    x, y = ck.analysis_data("train", args.samples)
    progress = not args.no_progress and sys.stderr.isatty()
    loss = loss_of(args)
    common = dict(blocks=blocks, regex=regex, loss=loss, batch_size=args.batch_size,
                  strategy=args.strategy,
                  bn=args.bn, dtype=getattr(torch, args.dtype), device=resolve_device(args.device),
                  seed=args.seed, progress=progress)
    r = hessian_eigs(model, x, y, top_k=args.top_k, smallest=args.smallest, tol=args.tol,
                     max_iter=args.max_iter, return_vectors=bool(args.out), **common)
    traces = hutchinson_trace(model, x, y, n_probes=args.probes, **common) if args.trace else {}
    dens = (spectral_density(model, x, y, n_probes=args.density_probes,
                             n_iter=args.density_iter, **common) if args.density else {})

    if args.out:
        # the record and the file come from one library writer, with the analyze keys
        out = save_hessian(args.out, r, checkpoint=ck, traces=traces, densities=dens,
                           smallest=args.smallest, loss=loss)
        out["out"] = args.out
    else:
        out = hessian_record(r, traces=traces, densities=dens, smallest=args.smallest,
                             checkpoint=ck, loss=loss)

    if args.json:
        shown = {k: v for k, v in out.items() if k != "params"}
        print_json(shown)
        return 0
    headers = ["block", "#params", "lambda_max"]
    if args.top_k > 1:
        headers.append(f"top-{args.top_k}")
    if args.smallest:
        headers.append("lambda_min")
    if args.trace:
        headers += ["trace", "+/-"]
    headers += ["HVPs", "seconds", "converged"]
    rows = []
    for b, d in out["blocks"].items():
        row: list[Any] = [b, d["n_params"], d["lambda_max"]]
        if args.top_k > 1:
            row.append(", ".join(f"{v:.4g}" for v in d["eigenvalues"]))
        if args.smallest:
            row.append(d["lambda_min"])
        if args.trace:
            row += [d["trace"], d["trace_stderr"]]
        row += [d["n_hvps"], round(d["seconds"], 2), d["converged"]]
        rows.append(row)
    print(f"{ck.label}: N={r.n_samples} examples, strategy={r.strategy}, bn={r.bn}, "
          f"dtype={r.dtype}, tol={r.tol:g}" + (f", loss={loss}" if loss != "ce" else ""))
    print_table(headers, rows)
    if args.out:
        print(f"wrote {args.out}")
    return 0
