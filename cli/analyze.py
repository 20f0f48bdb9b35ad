"""``geomkit analyze``: every Table-1/Table-3 measurement of some checkpoints into one HDF5 file."""

from __future__ import annotations

import argparse

from cli._common import (
    add_json_flag,
    add_loss_flags,
    add_option_flags,
    loss_of,
    print_json,
    print_table,
)
from cli._source import add_source_flags, checkpoints

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
    p.add_argument("checkpoints", nargs="*", metavar="CKPT",
                   help="geomkit checkpoints (.pt) or run directories holding last.pt (or "
                   "--model SPEC --weights FILE --data SOURCE)")
    add_source_flags(p)
    from geomkit import measurements as registry

    add_option_flags(p, registry.option_fields())
    add_loss_flags(p, loss=False)  # --loss is the measurements' option
    p.add_argument("--measure", default=None, metavar="NAME[,NAME...]",
                   help="these measurements (default: "
                   f"{', '.join(registry.default_measurements())}; also available: "
                   + ", ".join(n for n in registry.registry()
                               if n not in registry.default_measurements()) + ")")
    p.add_argument("--out", default="results.h5", metavar="FILE.h5",
                   help="results file, created or resumed (default results.h5)")
    p.add_argument("--force", action="store_true",
                   help="recompute measurements already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_json_flag(p)
    p.set_defaults(func=run)


def _summary(recs) -> tuple[list[str], list[list]]:
    """Table 1's entries (from the registry) for each checkpoint."""
    from geomkit import measurements as registry

    entries = [e for _, e in registry.table_entries(1)]
    return [e.label for e in entries], [[e.value(r) for e in entries] for r in recs]


def run(args: argparse.Namespace) -> int:
    from geomkit import measurements as registry
    from geomkit.analyze import analyze

    measure = None
    if args.measure is not None:
        measure = [m.strip() for m in args.measure.split(",") if m.strip()]
    options = {name: getattr(args, name) for name in registry.option_fields()}
    if "loss" in options:
        options["loss"] = loss_of(args)
    res = analyze(
        checkpoints(args, args.checkpoints),
        args.out,
        measurements=measure,
        force=args.force,
        progress=not args.no_progress,
        **options,
    )
    ids = list(dict.fromkeys(cid for cid, _ in res.computed + res.reused + res.skipped))
    recs = [res.results[cid] for cid in ids]
    status = {cid: {"computed": [], "reused": [], "skipped": []} for cid in ids}
    for kind, pairs in (("computed", res.computed), ("reused", res.reused),
                        ("skipped", res.skipped)):
        for cid, name in pairs:
            status[cid][kind].append(name)
    labels, values = _summary(recs)
    if args.json:
        keys = [e.key for _, e in registry.table_entries(1)]
        print_json({
            "out": str(res.out),
            "seconds": res.seconds,
            "options": res.options,
            "checkpoints": [
                {"id": r.id, "label": r.label, "path": r.checkpoint_path,
                 **dict(zip(keys, v, strict=True)), **status[r.id],
                 "values": {k: x for k, x in r.flat().items() if "." in k}}
                for r, v in zip(recs, values, strict=True)
            ],
        })
        return 0
    rows = []
    for r, v in zip(recs, values, strict=True):
        s = status[r.id]
        rows.append([r.label, *v, f"{len(s['computed'])} new, {len(s['reused'])} reused, "
                     f"{len(s['skipped'])} kept"])
    print_table(["checkpoint", *labels, "done"], rows)
    print(f"results: {res.out} ({res.seconds:.1f} s); render with `geomkit table {res.out} "
          f"--which 1|3`")
    return 0
