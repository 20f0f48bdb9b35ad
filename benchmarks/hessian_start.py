"""Experiment: does a Gauss-Newton-sampled or a subsample-warmed Lanczos start save HVPs?

Usage::

    python benchmarks/hessian_start.py CKPT [CKPT ...] [--samples 512] [--init]

The idea (not adopted; docs/benchmarks/hessian.md has the numbers): at a trained
minimum the top of the Hessian is dominated by the Gauss-Newton term
G = Jᵀ H_ℓ J (J: Jacobian of the logits, H_ℓ = diag(p) − p pᵀ per example for the
softmax cross-entropy).  A vector v = Jᵀ u with u_i = s_i ⊙ ξ_i − p_i (s_i · ξ_i),
s_i = √p_i, ξ_i ~ N(0, I) has covariance Jᵀ H_ℓ J = G (because A = diag(s) − p sᵀ gives
A Aᵀ = diag(p) − p pᵀ), so it leans towards G's top eigenvectors at the cost of one
backward pass, where a Gaussian start is spread over all n parameters.  The Lanczos
answer does not depend on the start (only its speed), so the question is purely how
many HVPs it saves.

The second idea (not adopted either): a *subsample warm start*, the top Ritz vector of the
Hessian of the first N/8 examples (Lanczos to tol 1e-2, each HVP ~1/8 the price), which
should be close to the full Hessian's top eigenvector.  Its cost (building the subsample
graph and its HVPs) is reported in units of one full-data HVP.

For each model it prints, for the Gaussian start (geomkit's) and the Gauss-Newton start
(pure, and mixed with an equal-norm Gaussian so every direction keeps a component): the
first Lanczos step whose relative error is ≤ 1e-4, the step at which geomkit's stopping
rule (tol 1e-4) stops, the error there, and the start vector's cost.  The reference is a
float32 Lanczos at tol 1e-7 (float32 round-off limits errors to ~1e-6, far below 1e-4).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry.blocks import resolve_blocks  # noqa: E402
from geomkit.geometry.hvp import HessianOperator  # noqa: E402
from geomkit.geometry.lanczos import LanczosRun, start_vector  # noqa: E402


def gauss_newton_start(op: HessianOperator, x: torch.Tensor, seed: int, mix: float) -> torch.Tensor:
    """Jᵀ u with u ~ N(0, H_ℓ) per example (covariance G), plus ``mix`` × a unit Gaussian."""
    names = op.blocks["whole"]
    g = torch.Generator().manual_seed(seed)
    logits = op._forward(x.to(op.dtype), op._leaves)
    p = logits.detach().double().softmax(-1)
    s = p.sqrt()
    xi = torch.randn(p.shape, generator=g, dtype=torch.float64)
    u = s * xi - p * (s * xi).sum(-1, keepdim=True)
    parts = torch.autograd.grad(logits, [op._leaves[k] for k in names],
                                grad_outputs=u.to(op.dtype), allow_unused=True)
    v = op._flat("whole", parts).double()
    v = v / v.norm()
    if mix:
        r = torch.randn(v.numel(), generator=g, dtype=torch.float64)
        v = v + mix * r / r.norm()
    return v.to(op.dtype)


def subsample_start(model, x, y, seed: int, frac: int = 8) -> torch.Tensor:
    """Top Ritz vector of the Hessian on the first ``len(x) // frac`` examples."""
    k = max(1, len(x) // frac)
    sub = HessianOperator(model, x[:k], y[:k], resolve_blocks(model, ("whole",)),
                          strategy="reuse")
    run = LanczosRun(start_vector(sub.dims["whole"], seed, sub.dtype, sub.device), tol=1e-2,
                     max_iter=60)
    while not run.done:
        run.feed(sub.matvec("whole", run.query))
    sub.release()
    return run.result(vectors=True).vectors[0]


STARTS = ("gaussian", "Gauss-Newton", "Gauss-Newton + Gaussian", "subsample N/8")


def make_start(name: str, op: HessianOperator, model, x, y, seed: int) -> torch.Tensor:
    """The start vector ``name`` (one of :data:`STARTS`) for start seed ``seed``."""
    if name == "gaussian":
        return start_vector(op.dims["whole"], seed, op.dtype, op.device)
    if name == "subsample N/8":
        return subsample_start(model, x, y, seed)
    return gauss_newton_start(op, x, seed, 1.0 if name.endswith("Gaussian") else 0.0)


def reference_lambda_max(op: HessianOperator) -> float:
    """λ_max of the whole model by a float32 Lanczos at tol 1e-7 (start seed 99)."""
    run = LanczosRun(start_vector(op.dims["whole"], 99, op.dtype, op.device), tol=1e-7,
                     max_iter=80)
    while not run.done:
        run.feed(op.matvec("whole", run.query))
    return float(run.result().eigenvalues[0])


def trace(op: HessianOperator, v0: torch.Tensor, ref: float, tol: float = 1e-4):
    """(first step with relative error ≤ 1e-4 or None, stopping step, error at stop)."""
    run = LanczosRun(v0, tol=tol, max_iter=60)
    errs = []
    while not run.done:
        run.feed(op.matvec("whole", run.query))
        errs.append(abs(float(run.result().eigenvalues[0]) - ref) / abs(ref))
    first = next((i + 1 for i, e in enumerate(errs) if e <= 1e-4), None)
    return first, run.m, errs[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--samples", type=int, nargs="+", default=[512])
    ap.add_argument("--init", action="store_true", help="also each architecture at init")
    ap.add_argument("--seeds", type=int, default=3, help="start-vector seeds per model")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | N | start | first step ≤ 1e-4 (per seed) | stops at (tol 1e-4) | "
          "error at stop (max) | start cost, ms (in full HVPs) |")
    print("|---|---|---|---|---|---|---|")
    for c in args.ckpts:
        ck = load_checkpoint(c)
        models = [(ck.label, ck.model)]
        if args.init:
            models.append((f"{ck.model_name}/init", ck.fresh_model(0)))
        for label, model in models:
            model.eval()
            for n in args.samples:
                x, y = ck.analysis_data("train", n)
                op = HessianOperator(model, x, y, resolve_blocks(model, ("whole",)),
                                     strategy="reuse")
                dim = op.dims["whole"]
                ref = reference_lambda_max(op)
                v = start_vector(dim, 0, op.dtype, op.device)
                t = time.perf_counter()
                op.matvec("whole", v)
                hvp_ms = 1000 * (time.perf_counter() - t)
                for name in STARTS:
                    firsts, stops, errs, costs = [], [], [], []
                    for seed in range(args.seeds):
                        t = time.perf_counter()
                        v0 = make_start(name, op, model, x, y, seed)
                        costs.append(1000 * (time.perf_counter() - t))
                        f, m, e = trace(op, v0, ref)
                        firsts.append(f)
                        stops.append(m)
                        errs.append(e)
                    cost = sum(costs) / len(costs)
                    print(f"| {label} | {n} | {name} | {', '.join(map(str, firsts))} | "
                          f"{', '.join(map(str, stops))} | {max(errs):.1e} | "
                          f"{cost:.0f} ({cost / hvp_ms:.2f} HVP) |", flush=True)


if __name__ == "__main__":
    main()
