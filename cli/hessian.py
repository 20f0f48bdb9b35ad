"""``geomkit hessian``: λ_max (top-k, λ_min), trace and spectral density per parameter block."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cli._common import (
    add_device_flag,
    add_json_flag,
    nonneg_float,
    positive_int,
    print_json,
    print_table,
)
from geomkit.device import resolve_device
from geomkit.errors import SpecError

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
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint file")
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



def _write_h5(path: Path, out: dict[str, Any], densities: dict[str, Any], ck: Any,
              vectors: dict[str, Any]) -> None:
    """Write atomically (``.tmp`` then rename): a killed run leaves no finished-looking file."""
    import h5py
    import numpy as np

    from geomkit.provenance import provenance

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "geomkit-hessian/1"
            f.attrs["provenance"] = json.dumps(provenance())
            f.attrs["checkpoint_path"] = str(ck.path)
            f.attrs["checkpoint_sha256"] = ck.sha256()
            f.attrs["label"] = ck.label
            f.attrs["model"] = ck.model_name
            f.attrs["config"] = json.dumps(ck.config, default=str)
            f.attrs["data_spec"] = json.dumps(ck.data_spec.to_dict(), default=str)
            f.attrs["settings"] = json.dumps(out["settings"])
            f.attrs["samples"] = out["samples"]
            for b, d in out["blocks"].items():
                g = f.create_group(f"blocks/{b}")
                for k, v in d.items():
                    if isinstance(v, (list, tuple)):
                        g.create_dataset(k, data=np.asarray(v))
                    elif v is not None and not isinstance(v, dict):
                        g.attrs[k] = v
                g.create_dataset("param_names", data=np.asarray(out["params"][b], dtype="S"))
                if b in vectors:
                    g.create_dataset("eigenvectors", data=vectors[b])
                if b in densities:
                    dg = g.create_group("density")
                    r = densities[b]
                    for k in ("grid", "density", "nodes", "weights"):
                        dg.create_dataset(k, data=getattr(r, k).numpy())
                    dg.attrs["sigma"] = r.sigma
                    dg.attrs["n_probes"] = r.n_probes
                    dg.attrs["n_iter"] = r.n_iter
            f.attrs["done"] = True
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args: argparse.Namespace) -> int:
    import torch

    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.blocks import parse_block_arg, resolve_blocks
    from geomkit.geometry.hessian import hessian_eigs
    from geomkit.geometry.spectrum import hutchinson_trace, spectral_density

    regex: dict[str, str] = {}
    for text in args.block:
        name, pattern = parse_block_arg(text)
        if name in regex:
            raise SpecError(f"user block {name!r} given twice")
        regex[name] = pattern
    if args.out and not args.out.endswith((".h5", ".hdf5")):
        raise SpecError(f"--out must name an .h5 file, got {args.out!r}")
    ck = load_checkpoint(args.ckpt)
    model = ck.model
    blocks = args.blocks
    resolve_blocks(model, blocks, regex)  # bad names fail before any data is read
    x, y = ck.analysis_data("train", args.samples)
    progress = not args.no_progress and sys.stderr.isatty()
    common = dict(blocks=blocks, regex=regex, batch_size=args.batch_size, strategy=args.strategy,
                  bn=args.bn, dtype=getattr(torch, args.dtype), device=resolve_device(args.device),
                  seed=args.seed, progress=progress)
    r = hessian_eigs(model, x, y, top_k=args.top_k, smallest=args.smallest, tol=args.tol,
                     max_iter=args.max_iter, return_vectors=bool(args.out), **common)
    traces = hutchinson_trace(model, x, y, n_probes=args.probes, **common) if args.trace else {}
    dens = (spectral_density(model, x, y, n_probes=args.density_probes,
                             n_iter=args.density_iter, **common) if args.density else {})

    out: dict[str, Any] = {
        "samples": r.n_samples,
        "checkpoint": str(ck.path),
        "model": ck.model_name,
        "label": ck.label,
        "settings": {**r.settings(), "smallest": args.smallest},
        "blocks": {},
        "params": r.params,
    }
    for b, e in r.blocks.items():
        d: dict[str, Any] = {
            "lambda_max": e.lambda_max,
            "params": e.n_params,
            "hvps": e.n_hvps,
            "seconds": e.seconds,
            "eigenvalues": list(e.eigenvalues),
            "residual": e.residual,
            "error_bound": e.error_bound,
            "converged": bool(e.converged),
        }
        if args.smallest:
            d["lambda_min"] = e.lambda_min
        if b in traces:
            t = traces[b]
            d.update(trace=t.trace, trace_stderr=t.stderr, trace_probes=t.n_probes,
                     trace_seconds=t.seconds)
        if b in dens:
            dr = dens[b]
            d["density"] = {"grid": dr.grid.tolist(), "density": dr.density.tolist(),
                            "sigma": dr.sigma, "mean": dr.mean}
        out["blocks"][b] = d
    if args.out:
        vectors = {b: e.vectors.double().cpu().numpy() for b, e in r.blocks.items()
                   if e.vectors is not None}
        h5_blocks = {b: {k: v for k, v in d.items() if k != "density"}
                     for b, d in out["blocks"].items()}
        _write_h5(Path(args.out), {**out, "blocks": h5_blocks}, dens, ck, vectors)
        out["out"] = args.out

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
        row: list[Any] = [b, d["params"], d["lambda_max"]]
        if args.top_k > 1:
            row.append(", ".join(f"{v:.4g}" for v in d["eigenvalues"]))
        if args.smallest:
            row.append(d["lambda_min"])
        if args.trace:
            row += [d["trace"], d["trace_stderr"]]
        row += [d["hvps"], round(d["seconds"], 2), d["converged"]]
        rows.append(row)
    print(f"{ck.label}: N={r.n_samples} examples, strategy={r.strategy}, bn={r.bn}, "
          f"dtype={r.dtype}, tol={r.tol:g}")
    print_table(headers, rows)
    if args.out:
        print(f"wrote {args.out}")
    return 0
