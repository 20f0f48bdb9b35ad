"""``geomkit analyze``: every Table-1/Table-3 measurement of some checkpoints into one HDF5 file."""

from __future__ import annotations

import argparse

from cli._common import add_json_flag, positive_int, print_json, print_table

ORDER = 60


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="measure checkpoints for the paper's Tables 1 and 3 (params, NTK kappa at init, "
        "Hessian lambda_max per block, weight/activation norms, sparsity, clean and "
        "corrupted accuracy) into a resumable HDF5 file",
        description="For each checkpoint: #params, NTK condition number at initialization of "
        "its architecture, Hessian lambda_max of the whole network and of the Table-3 blocks, "
        "||w||_2, block output norms (first/middle/last block), activation sparsity per "
        "block, clean and corrupted (8 corruptions x severities 1-5) top-1 test accuracy. "
        "Each measurement is written to --out as soon as it finishes; re-running the same "
        "command skips what is already there, --force recomputes. Render with `geomkit "
        "table`.",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="geomkit checkpoints (.pt) or run directories holding last.pt")
    p.add_argument("--samples", type=positive_int, default=128, metavar="N",
                   help="analysis examples for the Hessian and activations: the first N of the "
                   "training split (default 128)")
    p.add_argument("--ntk-samples", type=positive_int, default=64, metavar="M",
                   help="examples for the NTK at initialization (kernel M x M; default 64)")
    p.add_argument("--ntk-repeats", type=positive_int, default=3, metavar="R",
                   help="initializations averaged for kappa (default 3)")
    p.add_argument("--test-samples", type=positive_int, default=None, metavar="T",
                   help="test examples for the accuracies (default: the whole test split)")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="Lanczos relative tolerance for lambda_max (default 1e-3)")
    p.add_argument("--max-iter", type=positive_int, default=100,
                   help="Lanczos steps per block at most (default 100)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of Lanczos start vectors, NTK initializations and corruption "
                   "noise (default 0)")
    p.add_argument("--measure", default=None, metavar="NAME[,NAME...]",
                   help="only these measurements (default: all of params, ntk_init, hessian, "
                   "activations, robustness)")
    p.add_argument("--out", default="results.h5", metavar="FILE.h5",
                   help="results file, created or resumed (default results.h5)")
    p.add_argument("--force", action="store_true",
                   help="recompute measurements already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_json_flag(p)
    p.set_defaults(func=run)


def _row(rec) -> dict:
    def pct(v):
        return None if v is None else 100.0 * v

    return {
        "label": rec.label,
        "params": rec.get("params.num_params"),
        "kappa_init": rec.get("ntk_init.kappa"),
        "lambda_max": rec.get("hessian.lambda_max.whole"),
        "weight_norm": rec.get("activations.weight_norm"),
        "top1": pct(rec.get("robustness.clean")),
        "top1_c": pct(rec.get("robustness.mean_corrupted")),
    }


def run(args: argparse.Namespace) -> int:
    from geomkit.analyze import analyze

    measure = None
    if args.measure:
        measure = [m.strip() for m in args.measure.split(",") if m.strip()]
    res = analyze(
        args.checkpoints,
        args.out,
        samples=args.samples,
        ntk_samples=args.ntk_samples,
        ntk_repeats=args.ntk_repeats,
        test_samples=args.test_samples,
        hessian_tol=args.tol,
        hessian_max_iter=args.max_iter,
        seed=args.seed,
        measurements=measure,
        force=args.force,
        progress=not args.no_progress,
    )
    ids = list(dict.fromkeys(cid for cid, _ in res.computed + res.reused + res.skipped))
    recs = [res.results[cid] for cid in ids]
    status = {cid: {"computed": [], "reused": [], "skipped": []} for cid in ids}
    for kind, pairs in (("computed", res.computed), ("reused", res.reused),
                        ("skipped", res.skipped)):
        for cid, name in pairs:
            status[cid][kind].append(name)
    if args.json:
        print_json({
            "out": str(res.out),
            "seconds": res.seconds,
            "options": res.options.__dict__,
            "checkpoints": [
                {"id": r.id, "path": r.checkpoint_path, **_row(r), **status[r.id],
                 "values": {k: v for k, v in r.flat().items() if "." in k}}
                for r in recs
            ],
        })
        return 0
    headers = ["checkpoint", "#params", "kappa(init)", "lambda_max", "||w||2", "top-1 %",
               "-C %", "done"]
    rows = []
    for r in recs:
        d, s = _row(r), status[r.id]
        rows.append([d["label"], d["params"], d["kappa_init"], d["lambda_max"], d["weight_norm"],
                     d["top1"], d["top1_c"],
                     f"{len(s['computed'])} new, {len(s['reused'])} reused, "
                     f"{len(s['skipped'])} kept"])
    print_table(headers, rows)
    print(f"results: {res.out} ({res.seconds:.1f} s); render with `geomkit table {res.out} "
          f"--which 1|3`")
    return 0
