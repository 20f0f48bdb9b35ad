"""``geomkit study``: the paper's study from a preset or a TOML file, end to end."""

from __future__ import annotations

import argparse
import math

from cli._common import add_json_flag, print_json, print_table
from geomkit.study import STAGES, list_presets, load_study_config, parse_stages, run_study

ORDER = 5


def register(sub: argparse._SubParsersAction) -> None:
    presets = ", ".join(list_presets())
    p = sub.add_parser(
        "study",
        help="run a whole study: train, analyze, landscapes, report (e.g. `study quick`)",
        description="Run a study -- models x optimizers (vanilla/SAM) x data subsets x seeds -- "
        "from a preset or a TOML file: train what is missing into OUT/runs/<run>/last.pt, "
        "measure Hessian lambda_max per block, NTK kappa, activations and corruption "
        "accuracy into OUT/results.h5, compute the loss landscapes of the Figure-1 runs "
        "(first seed, largest subset) into OUT/landscapes/, and write OUT/report.md and "
        "OUT/report.html with the paper's Tables 1 and 3 side by side, the figures and "
        "which of the paper's findings hold. "
        "Re-running reuses finished runs, measurements and grid points; an interrupted run "
        "resumes. Checkpoints trained elsewhere (`geomkit import` of a timm or your own "
        "model, or another geomkit run) are measured beside the trained runs when the study "
        "file lists them as [[checkpoints]] (path, model and optimizer labels).",
        epilog=f"presets: {presets}. A study file is TOML (YAML when PyYAML is installed); "
        "see geomkit/studies/quick.toml for every key.",
    )
    p.add_argument("study", metavar="PRESET|FILE", help=f"preset name ({presets}) or study file")
    p.add_argument("--out", required=True, help="study directory (everything lands under it)")
    p.add_argument("--force", action="store_true",
                   help="redo the selected stages instead of reusing finished work")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated stages to run (default: {','.join(STAGES)}); "
                   "later stages use what earlier ones left in OUT")
    p.add_argument("--seeds", default=None, metavar="S1,S2",
                   help="only these of the study's seeds (e.g. one seed per process: "
                   "`--stages train --seeds 0` and `--seeds 1` side by side into one --out, "
                   "then the whole study, which reuses every run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage messages")
    add_json_flag(p)
    p.set_defaults(func=run)


def _pct(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * v, 2)


def _seeds(text: str) -> list[int]:
    from geomkit.errors import SpecError

    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SpecError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise SpecError("--seeds names no seed")
    return seeds


def run(args: argparse.Namespace) -> int:
    config = load_study_config(args.study)
    if args.seeds is not None:
        config = config.only_seeds(_seeds(args.seeds))
    stages = parse_stages(args.stages)
    r = run_study(config, args.out, force=args.force, stages=stages,
                  progress=not args.no_progress and not args.json)
    rows = r.accuracy_rows()
    if args.json:
        print_json({
            "study": config.name, "out": str(r.out_dir), "stages": list(r.stages),
            "runs": rows, "results": str(r.results) if r.results else None,
            "landscapes": {k: str(v) for k, v in r.landscapes.items()},
            "figures": {k: str(v) for k, v in r.figures.items()},
            "report": str(r.report) if r.report else None,
            "seconds": r.seconds,
        })
        return 0
    headers = ["run", "model", "optimizer", "subset", "seed", "epochs", "test acc %",
               "train loss", "train s", "status"]
    print_table(headers, [[x["run"], x["model"], x["optimizer"], x["subset"], x["seed"],
                           x["epochs"], _pct(x["test_acc"]),
                           None if math.isnan(x["train_loss"]) else x["train_loss"],
                           None if math.isnan(x["train_seconds"]) else round(x["train_seconds"], 1),
                           x["status"]] for x in rows])
    print()
    if r.report:
        print(f"report: {r.report}  (and {r.report.with_suffix('.html')})")
    if r.results:
        print(f"results: {r.results}")
    times = ", ".join(f"{k} {v:.0f}s" for k, v in r.seconds.items())
    print(f"study {config.name!r} in {r.out_dir} ({times or 'nothing to do'})")
    return 0
