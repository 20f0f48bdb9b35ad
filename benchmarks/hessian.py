"""Benchmark: geomkit's Lanczos λ_max against PyHessian, HVP strategies and block schedules.

Usage::

    python benchmarks/hessian.py [CKPT ...] [--samples 512 1024] [--epochs 3] [--threads 2]
                                 [--init] [--out docs/benchmarks/hessian.md]

With no checkpoint, trains ``vit-tiny`` and ``resnet-tiny`` on digits with
``geomkit train`` (cached under ``runs/bench-hessian``).  ``--init`` adds each
architecture at initialization.  For every model and N it measures, in one run:

* the float64 reference λ_max (Lanczos, tol 1e-8);
* geomkit's λ_max at its default tol (1e-4) in float32: wall time, HVPs, relative error;
  and the HVPs/error of the previous stopping rule (plain residual, no gap credit) for
  comparison;
* PyHessian's ``eigenvalues(top_n=1, tol=t)`` for t = 1e-3, 1e-4, ... until its relative
  error is ≤ 1e-4 (or noting that it never gets there or returns another eigenvalue);
* the cost of one HVP per strategy (``reuse``/``stream``/``func``) relative to one plain
  double-backward HVP and to one gradient over the same data (interleaved repetitions,
  medians, so the ratios survive a shared machine);
* the paper blocks in lockstep vs sequentially (``--no-schedule`` skips this).

Prints markdown tables (and writes them with ``--out``). The Table 3 row against
hessian-eigenthings and PyHessian is ``benchmarks/hessian_row.py``; the whole model at
equal error (both tools at the loosest tolerance that reaches 1e-4) is
``benchmarks/hessian_equal.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import geomkit.geometry.lanczos as lanczos_mod  # noqa: E402
from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry.blocks import resolve_blocks  # noqa: E402
from geomkit.geometry.hessian import hessian_eigs  # noqa: E402
from geomkit.geometry.hvp import HessianOperator  # noqa: E402


def residual_rule_run(model, x, y):
    """geomkit with the previous stopping rule: error bound = plain residual."""
    orig = lanczos_mod.error_bounds
    lanczos_mod.error_bounds = lambda theta, res, **_: res.clone()
    try:
        return hessian_eigs(model, x, y)
    finally:
        lanczos_mod.error_bounds = orig


def train_default(epochs: int, sam: bool = False) -> list[Path]:
    """The default checkpoints (trained once, cached under runs/bench-hessian): vit-tiny
    with AdamW, resnet-tiny with SGD, and with ``sam`` also vit-tiny with SAM."""
    runs = [("vit-tiny", "vit-tiny", "adamw"), ("resnet-tiny", "resnet-tiny", "sgd")]
    if sam:
        runs.insert(1, ("vit-tiny-sam", "vit-tiny", "sam"))
    out = []
    for run, model, optimizer in runs:
        d = ROOT / "runs" / "bench-hessian" / run
        ck = d / "last.pt"
        if not ck.exists():
            print(f"training {run} for {epochs} epochs ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "cli", "train", "--model", model, "--data",
                            "digits", "--epochs", str(epochs), "--optimizer", optimizer,
                            "--out", str(d), "--no-progress"], check=True, cwd=ROOT)
        out.append(ck)
    return out


def _plain_double_backward(model, x, y, v_parts):
    out = model(x)
    loss = F.cross_entropy(out, y)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((a * b).sum() for a, b in zip(g, v_parts, strict=True))
    return torch.autograd.grad(dot, params)


def _gradient(model, x, y):
    loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def hvp_costs(model, x, y, reps: int) -> dict[str, float]:
    """Median seconds per call, interleaved across methods."""
    blocks = resolve_blocks(model, ("whole",))
    ops = {s: HessianOperator(model, x, y, blocks, strategy=s) for s in ("reuse", "stream", "func")}
    n = ops["reuse"].dims["whole"]
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    v_parts = ops["stream"]._unflat("whole", v)
    fns = {
        "gradient": lambda: _gradient(model, x, y),
        "double_backward": lambda: _plain_double_backward(model, x, y, v_parts),
        **{s: (lambda op=op: op.matvec("whole", v)) for s, op in ops.items()},
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(t) for k, t in times.items()}


def pyhessian_run(model, x, y, tol: float, seed: int = 0):
    import pyhessian.hessian  # noqa: F401  (the package re-exports the class under this name)

    ph = sys.modules["pyhessian.hessian"]

    count = {"n": 0}
    orig = ph.hessian_vector_product

    def counting(*a, **k):
        count["n"] += 1
        return orig(*a, **k)

    ph.hessian_vector_product = counting
    try:
        torch.manual_seed(seed)
        m = copy.deepcopy(model)
        t = time.perf_counter()
        h = ph.hessian(m, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        ev = h.eigenvalues(maxIter=300, tol=tol, top_n=1)[0][0]
        sec = time.perf_counter() - t
    finally:
        ph.hessian_vector_product = orig
    return ev, count["n"], sec


def bench_model(label, model, x, y, out_rows, cost_rows, sched_rows, reps, schedule=True):
    model = model.eval()
    t = time.perf_counter()
    ref = hessian_eigs(model, x, y, dtype=torch.float64, tol=1e-8, max_iter=300,
                       strategy="reuse", smallest=True).blocks["whole"]
    ref_sec = time.perf_counter() - t
    lam = ref.lambda_max
    ours = hessian_eigs(model, x, y)
    e = ours.blocks["whole"]
    err = abs(e.lambda_max - lam) / abs(lam)
    old = residual_rule_run(model, x, y).blocks["whole"]
    old_err = abs(old.lambda_max - lam) / abs(lam)
    # PyHessian, tolerance tightened until it reaches 1e-4
    ph_cells = []
    ph_best = None
    for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
        ev, n, sec = pyhessian_run(model, x, y, tol)
        perr = abs(ev - lam) / abs(lam)
        ph_cells.append(f"tol {tol:g}: {n} HVPs, {sec:.2f} s, err {perr:.1e}")
        if perr <= 1e-4:
            ph_best = (n, sec, perr, tol)
            break
    if ph_best is None:
        ph_sum = "never ≤ 1e-4 (" + ph_cells[-1] + ")"
        speed = "-"
    else:
        ph_sum = f"{ph_best[0]} HVPs, {ph_best[1]:.2f} s (tol {ph_best[3]:g})"
        speed = f"{ph_best[1] / e.seconds:.1f}×"
    out_rows.append([label, len(x), f"{lam:.5g}", f"{ref.lambda_min:.4g}",
                     f"{e.n_hvps} HVPs, {ours.seconds:.2f} s, err {err:.1e} ({ours.strategy})",
                     f"{old.n_hvps} HVPs, err {old_err:.1e}",
                     ph_sum, speed, f"{ref.n_hvps} HVPs, {ref_sec:.1f} s"])
    costs = hvp_costs(model, x, y, reps)
    db, gr = costs["double_backward"], costs["gradient"]
    cost_rows.append([label, len(x), f"{1000 * gr:.1f}", f"{1000 * db:.1f}"]
                     + [f"{costs[s] / db:.2f} / {costs[s] / gr:.2f}"
                        for s in ("reuse", "stream", "func")])
    for strat in ("stream", "reuse") if schedule else ():
        secs = {}
        for sched in ("lockstep", "sequential"):
            t = time.perf_counter()
            hessian_eigs(model, x, y, blocks=("paper",), strategy=strat, schedule=sched,
                         batch_size=256 if strat == "stream" else None)
            secs[sched] = time.perf_counter() - t
        sched_rows.append([label, len(x), strat, f"{secs['lockstep']:.2f}",
                           f"{secs['sequential']:.2f}",
                           f"{secs['lockstep'] / secs['sequential']:.2f}"])


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", nargs="*", help="checkpoints (default: train vit-tiny, resnet-tiny)")
    ap.add_argument("--samples", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--epochs", type=int, default=3, help="epochs when training the defaults")
    ap.add_argument("--init", action="store_true", help="also each architecture at init")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core box 2 threads were "
                    "several times slower)")
    ap.add_argument("--reps", type=int, default=5, help="timing repetitions per HVP method")
    ap.add_argument("--no-schedule", action="store_true",
                    help="skip the lockstep-vs-sequential comparison of the paper blocks")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpts = [Path(c) for c in args.ckpts] or train_default(args.epochs)
    models = []
    for c in ckpts:
        ck = load_checkpoint(c)
        models.append((ck.label, ck.model, ck))
        if args.init:
            models.append((f"{ck.model_name}/init", ck.fresh_model(0), ck))
    out_rows, cost_rows, sched_rows = [], [], []
    for label, model, ck in models:
        for n in args.samples:
            x, y = ck.analysis_data("train", n)
            print(f"{label} N={n} ...", file=sys.stderr)
            bench_model(label, model, x, y, out_rows, cost_rows, sched_rows, args.reps,
                        schedule=not args.no_schedule)
    md = "\n\n".join([
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 models, "
        "digits analysis data.",
        "### λ_max to relative error ≤ 1e-4 (vs a float64 Lanczos reference at tol 1e-8)",
        table(["model", "N", "λ_max (ref)", "λ_min (ref)", "geomkit (tol 1e-4)",
               "residual rule (before)", "PyHessian (tol tightened)",
               "PyHessian / geomkit time", "reference"], out_rows),
        "### Cost of one HVP over the N examples (ms for gradient / double backward; "
        "strategy: ratio to double backward / to gradient)",
        table(["model", "N", "gradient ms", "double backward ms", "reuse", "stream", "func"],
              cost_rows),
    ] + ([
        "### Paper blocks: lockstep vs sequential Lanczos (seconds)",
        table(["model", "N", "strategy", "lockstep", "sequential", "ratio"], sched_rows),
    ] if sched_rows else []))
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md + "\n")


if __name__ == "__main__":
    main()
