"""Sizing the ``subsets`` (Table 4) study: step times and an over-fitting pilot.

Usage::

    python benchmarks/table4_sizing.py steps [--steps 30] [--rounds 3] [--level medium1]
    python benchmarks/table4_sizing.py pilot [--model vit] [--subset 0.1] [--epochs 40]
                                             [--steps N]
    python benchmarks/table4_sizing.py analysis [--steps 200]

``steps``: for each model of the preset (its ``model_kwargs``, batch size and data) and
each study method (vanilla, sam, aug, sam-aug at ``--level``), the wall time of one
optimizer step exactly as :func:`geomkit.train.train` takes it (batch slicing, the strong
augmentation when on, :func:`geomkit.train.loop.train_step`), on one torch thread, in
interleaved rounds of ``--steps`` steps (min / median / max of the per-round mean per step;
the machine is shared, so the min is the least disturbed), then the end-of-epoch test
evaluation of each model (the whole test split, as train() runs it).

``pilot``: trains one model with the vanilla optimizer on one subset of the preset (1
thread, the preset's settings, ``--epochs`` epochs or a budget of ``--steps``) and prints
the training loss and test accuracy per epoch with the optimizer steps taken, to find the
step budget at which the training loss is near zero.

``analysis``: per model, a short vanilla run (``--steps``) and the preset's analysis of
its checkpoint, timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geomkit.data import DataSpec, info, load_split  # noqa: E402
from geomkit.data.augment import augment, augreg, soft_cross_entropy  # noqa: E402
from geomkit.models import build, family  # noqa: E402
from geomkit.study import load_study_config  # noqa: E402
from geomkit.train import train  # noqa: E402
from geomkit.train.loop import (  # noqa: E402
    _normalization,
    evaluate,
    make_optimizer,
    train_step,
)

METHODS = ("vanilla", "sam", "aug", "sam-aug")


def _setup(study, model_name: str, method: str, level: str):
    spec = study.data.replace(subset=1.0)
    dinfo = info(spec)
    kwargs = {"image_size": dinfo.image_size, "in_chans": dinfo.in_chans,
              "num_classes": dinfo.num_classes, **study.model_kwargs.get(model_name, {})}
    torch.manual_seed(0)
    model = build(model_name, **kwargs)
    base = study.base_optimizer_for(model_name)
    sam = method in ("sam", "sam-aug")
    cfg = dataclasses.replace(
        study.runs()[0].train_config, model=model_name, optimizer="sam" if sam else base,
        base_optimizer=base, rho=study.rho_for(model_name) if sam else None,
        augreg=level if method in ("aug", "sam-aug") else "none", label=method,
    ).resolved(family(model))
    return model, make_optimizer(model, cfg), cfg, spec, dinfo


def bench_steps(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    study = load_study_config(args.preset)
    spec0 = study.data.replace(subset=1.0)
    x, y = load_split(spec0, "train")
    mean, std = _normalization(spec0)
    setups = {(m, k): _setup(study, m, k, args.level) for m in study.models for k in METHODS}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in setups}
    g = torch.Generator().manual_seed(0)
    for _ in range(args.rounds):
        for key, (model, opt, cfg, _spec, dinfo) in setups.items():
            aug = augreg(cfg.augreg) if cfg.soft_targets else None
            model.train()

            def one(model=model, opt=opt, cfg=cfg, aug=aug, dinfo=dinfo) -> None:
                idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
                xb, yb = x[idx], y[idx]
                if aug is not None:
                    xb, tb = augment(aug, xb, yb, dinfo.num_classes, g, mean=mean, std=std)
                    fn = lambda: soft_cross_entropy(model(xb).float(), tb)  # noqa: E731
                else:
                    fn = lambda: F.cross_entropy(model(xb).float(), yb)  # noqa: E731
                train_step(model, opt, fn, sam=cfg.is_sam, grad_clip=cfg.grad_clip)

            one()  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.steps):
                one()
            times[key].append((time.perf_counter() - t0) / args.steps)
    print(f"batch {study.train.get('batch_size')}, 1 thread, {args.rounds} rounds of "
          f"{args.steps} steps, AUG = {args.level}")
    print("| model | method | min ms | median ms | max ms |")
    print("|---|---|---|---|---|")
    for (m, k), ts in times.items():
        print(f"| {m} | {k} | {1e3 * min(ts):.1f} | {1e3 * statistics.median(ts):.1f} | "
              f"{1e3 * max(ts):.1f} |")
    # the test evaluation train() runs after every epoch (the whole test split)
    xt, yt = load_split(spec0.replace(augment=False), "test")
    print(f"\nend-of-epoch evaluation on the {len(xt)} test examples, s (min / median / max "
          f"of {args.rounds})")
    for m in study.models:
        model = setups[(m, "vanilla")][0]
        ts = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            evaluate(model, xt, yt, torch.device("cpu"))
            ts.append(time.perf_counter() - t0)
        print(f"| {m} | {min(ts):.2f} | {statistics.median(ts):.2f} | {max(ts):.2f} |")


def pilot(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    study = load_study_config(args.preset)
    run = next(r for r in study.runs() if r.model == args.model and r.optimizer == "vanilla"
               and r.subset == args.subset)
    cfg = dataclasses.replace(run.train_config, epochs=args.epochs, steps=args.steps)
    spec = DataSpec.from_dict(cfg.data)
    n = len(load_split(spec, "train")[0])
    per_epoch = -(-n // cfg.batch_size)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        train(cfg, d, progress=False)
        from geomkit.checkpoint import load_checkpoint

        hist = load_checkpoint(Path(d) / "last.pt").metrics["history"]
    print(f"{args.model} vanilla, subset {args.subset} ({n} examples, {per_epoch} steps/epoch)"
          f", {time.perf_counter() - t0:.0f} s")
    print("| epoch | steps | train loss | test acc |")
    print("|---|---|---|---|")
    for h in hist:
        done = h["epoch"] * per_epoch if cfg.steps is None else min(h["epoch"] * per_epoch,
                                                                     cfg.steps)
        print(f"| {h['epoch']} | {done} | {h['train_loss']:.4f} | "
              f"{h['test_acc']:.4f} |")


def bench_analysis(args: argparse.Namespace) -> None:
    """Per model: a short vanilla run on the whole training set (``--steps``), then the
    preset's analysis of that checkpoint (its ``[analysis]`` measurements and options),
    timed."""
    from geomkit.analyze import analyze

    torch.set_num_threads(1)
    study = load_study_config(args.preset)
    a = study.analysis
    with tempfile.TemporaryDirectory() as d:
        for run in study.runs():
            if run.optimizer != "vanilla" or run.subset != 1.0 or run.seed != study.seeds[0]:
                continue
            cfg = dataclasses.replace(run.train_config, steps=args.steps)
            train(cfg, Path(d) / run.name, progress=False)
            t0 = time.perf_counter()
            analyze([Path(d) / run.name / "last.pt"], Path(d) / f"{run.name}.h5",
                    measurements=list(a.measure) or None, progress=False,
                    **a.analyze_options())
            print(f"| {run.model} | analysis {time.perf_counter() - t0:.1f} s |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--level", default="medium1")
    s.add_argument("--preset", default="subsets")
    q = sub.add_parser("pilot")
    q.add_argument("--model", default="vit")
    q.add_argument("--subset", type=float, default=0.1)
    q.add_argument("--epochs", type=int, default=40)
    q.add_argument("--steps", type=int, default=None, help="a step budget (epochs ignored)")
    q.add_argument("--preset", default="subsets")
    r = sub.add_parser("analysis")
    r.add_argument("--steps", type=int, default=200)
    r.add_argument("--preset", default="subsets")
    args = p.parse_args()
    {"steps": bench_steps, "pilot": pilot, "analysis": bench_analysis}[args.what](args)


if __name__ == "__main__":
    main()
