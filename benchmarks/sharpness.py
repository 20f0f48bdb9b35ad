"""Benchmark: the cost of each sharpness measure, and geomkit's worst case against the
reference algorithm (tml-epfl/sharpness-vs-generalization's APGD, 20 steps).

Usage::

    python benchmarks/sharpness.py [CKPT ...] [--samples 1024] [--m 128] [--rounds 3]
                                   [--epochs 10] [--out docs/benchmarks/sharpness.md]

With no checkpoint it trains ``vit-tiny`` and ``resnet-tiny`` on digits (cached under
``runs/bench-sharpness``). For each model, in interleaved rounds (min / median / max of
the wall times), on the first N training examples in batches of m, BatchNorm in eval mode:

* every measure of :func:`geomkit.geometry.sharpness.sharpness`: ``avg`` (8 draws),
  ``sam``, ``worst`` adaptive ℓ2 (ρ 0.5) and adaptive ℓ∞ (ρ 1e-3);
* the worst case by the reference algorithm as its paper and code describe it, written
  here (the reference script hard-codes ``.cuda()``): a random start (δ = ρ·c·N(0, 1) for
  ℓ2, ρ·c·U(−1, 1) for ℓ∞), steps δ += η·c·g/‖g‖ (ℓ2) or η·c·sign(g) (ℓ∞) from η = 2ρ,
  projection onto {‖δ ⊘ c‖_p ≤ ρ} (for adaptive ℓ2 the ellipsoid, by bisection on the
  multiplier as the reference does), momentum 0.75, a separate forward to evaluate each
  point, the APGD step halving; against geomkit's defaults (SAM-point start, the ascent in
  u = δ ⊘ c, each point's loss from its gradient's forward). Reported: S_max of each and
  the time ratio.

Prints markdown tables (and writes them with ``--out``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry._work import analysis_mode  # noqa: E402
from geomkit.geometry.sharpness import apgd_checkpoints, sharpness  # noqa: E402


def train_default(epochs: int) -> list[Path]:
    out = []
    for name, opt in (("vit-tiny", "adamw"), ("resnet-tiny", "sgd")):
        d = ROOT / "runs" / "bench-sharpness" / name
        if not (d / "last.pt").exists():
            print(f"training {name} for {epochs} epochs ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "cli", "train", "--model", name, "--data",
                            "digits", "--epochs", str(epochs), "--optimizer", opt, "--out",
                            str(d), "--no-progress"], check=True, cwd=ROOT)
        out.append(d / "last.pt")
    return out


# -- the reference algorithm, re-implemented from its description ----------------------------

def _ellipsoid_project(delta, c, rho):
    """Euclidean projection onto {‖δ ⊘ c‖₂ ≤ ρ}: δ_i / (1 + λ / c_i²), λ by bisection."""
    def norm(lmbd):
        return math.sqrt(sum(float(((d / (1 + lmbd / (ci.square() + 1e-30))) / (ci + 1e-30))
                                   .square().sum()) for d, ci in zip(delta, c, strict=True)))

    if norm(0.0) <= rho:
        return delta
    lo, hi = 0.0, 1.0
    while norm(hi) > rho:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if norm(mid) > rho else (lo, mid)
    return [d / (1 + hi / (ci.square() + 1e-30)) for d, ci in zip(delta, c, strict=True)]


def reference_worst(model, x, y, rho, p, m, steps=20, seed=0):
    """S_max by the reference APGD (adaptive), averaged over the batches of m."""
    params = [q for q in model.parameters() if q.requires_grad]
    orig = [q.detach().clone() for q in params]
    c = [o.abs() for o in orig]
    marks = set(apgd_checkpoints(steps))
    gen = torch.Generator().manual_seed(seed)

    def put(delta):
        with torch.no_grad():
            for q, o, d in zip(params, orig, delta, strict=True):
                q.copy_(o + d)

    def project(delta):
        if p == "inf":
            return [torch.maximum(torch.minimum(d, rho * ci), -rho * ci)
                    for d, ci in zip(delta, c, strict=True)]
        return _ellipsoid_project(delta, c, rho)

    vals = []
    with analysis_mode(model, "eval"):
        for s in range(0, len(x) - m + 1, m):
            xb, yb = x[s:s + m], y[s:s + m]
            put([torch.zeros_like(o) for o in orig])
            with torch.no_grad():
                l0 = float(F.cross_entropy(model(xb), yb))
            if p == "inf":
                delta = [(torch.rand(o.shape, generator=gen) * 2 - 1) * rho * ci
                         for o, ci in zip(orig, c, strict=True)]
            else:
                delta = [torch.randn(o.shape, generator=gen) * rho * ci
                         for o, ci in zip(orig, c, strict=True)]
            put(delta)
            prev = [d.clone() for d in delta]
            best, best_delta = l0, [torch.zeros_like(o) for o in orig]
            eta = prev_eta = 2 * rho
            prev_best, prev_mark, updates = l0, 0, 0
            for i in range(steps):
                loss = F.cross_entropy(model(xb), yb)
                g = torch.autograd.grad(loss, params)
                backup = [d.clone() for d in delta]
                with torch.no_grad():
                    if p == "inf":
                        delta = [d + eta * gi.sign() * ci for d, gi, ci in zip(delta, g, c,
                                                                               strict=True)]
                    else:
                        gn = math.sqrt(sum(float(gi.square().sum()) for gi in g)) + 1e-12
                        delta = [d + eta / gn * gi * ci for d, gi, ci in zip(delta, g, c,
                                                                             strict=True)]
                    delta = project(delta)
                    delta = [0.75 * d + 0.25 * pv for d, pv in zip(delta, prev, strict=True)]
                    prev = backup
                    put(delta)
                    cur = float(F.cross_entropy(model(xb), yb))  # the separate evaluation
                if cur > best:
                    best, best_delta, updates = cur, [d.clone() for d in delta], updates + 1
                if i in marks:
                    cond1 = updates < 0.75 * (i - prev_mark)
                    cond2 = prev_eta == eta and prev_best == best
                    prev_eta, prev_best, prev_mark, updates = eta, best, i, 0
                    if cond1 or cond2:
                        eta /= 2
                        delta = [d.clone() for d in best_delta]
                        put(delta)
            vals.append(best - l0)
        put([torch.zeros_like(o) for o in orig])
    return sum(vals) / len(vals)


def _timed(fn):
    t = time.perf_counter()
    v = fn()
    return v, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="*")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpts = [Path(c) for c in args.ckpts] or train_default(args.epochs)
    measures = {
        "avg (σ 0.01, 8 draws)": dict(kind="avg", rho=0.01, draws=8),
        "sam (ℓ2, ρ 0.05)": dict(kind="sam", rho=0.05),
        "worst adaptive ℓ2 (ρ 0.5)": dict(kind="worst", adaptive=True, rho=0.5, p="2"),
        "worst adaptive ℓ∞ (ρ 1e-3)": dict(kind="worst", adaptive=True, rho=1e-3, p="inf"),
    }
    lines = [f"torch {torch.__version__}, {args.threads} thread(s), N = {args.samples}, "
             f"m = {args.m}, {args.rounds} interleaved rounds (seconds min / median / max)", ""]
    cost = ["| model | measure | value | forwards | backwards | seconds |",
            "|---|---|---|---|---|---|"]
    ref = ["| model | worst case | geomkit S_max | reference S_max | geomkit s | reference s "
           "| reference / geomkit time (median) |", "|---|---|---|---|---|---|---|"]
    for path in ckpts:
        ck = load_checkpoint(path)
        model = ck.model
        x, y = ck.analysis_data("train", args.samples)
        name = ck.label
        times: dict[str, list[float]] = {k: [] for k in measures}
        rtimes: dict[str, list[float]] = {"2": [], "inf": []}
        results, rvals = {}, {}
        for _ in range(args.rounds):
            for k, kw in measures.items():
                r, dt = _timed(partial(sharpness, model, x, y, m=args.m, **kw))
                times[k].append(dt)
                results[k] = r.blocks["whole"]
            for p_, rho in (("2", 0.5), ("inf", 1e-3)):
                v, dt = _timed(partial(reference_worst, model, x, y, rho, p_, args.m))
                rtimes[p_].append(dt)
                rvals[p_] = v
        for k, b in results.items():
            t = times[k]
            cost.append(f"| {name} | {k} | {b.value:.4g} ± {b.stderr:.2g} | {b.n_forward} | "
                        f"{b.n_backward} | {min(t):.2f} / {statistics.median(t):.2f} / "
                        f"{max(t):.2f} |")
        for p_, k in (("2", "worst adaptive ℓ2 (ρ 0.5)"), ("inf", "worst adaptive ℓ∞ (ρ 1e-3)")):
            g, r_ = times[k], rtimes[p_]
            ref.append(f"| {name} | adaptive ℓ{'∞' if p_ == 'inf' else '2'} | "
                       f"{results[k].value:.5g} | {rvals[p_]:.5g} | "
                       f"{statistics.median(g):.2f} | {statistics.median(r_):.2f} | "
                       f"{statistics.median(r_) / statistics.median(g):.2f}× |")
        print(f"done {name}", file=sys.stderr)
    text = "\n".join(lines + ["### Cost of each measure (whole model)", "", *cost, "",
                              "### Worst case: geomkit's defaults vs the reference APGD "
                              "(20 steps each)", "", *ref, ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
