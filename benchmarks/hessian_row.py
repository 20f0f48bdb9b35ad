"""Benchmark: the Table 3 row (λ_max of every paper block) against hessian-eigenthings and
PyHessian, each run as a careful user would.

Usage::

    python benchmarks/hessian_row.py CKPT [CKPT ...] [--init] [--samples 512]
                                     [--tol 1e-4] [--rounds 3] [--out FILE.md]

For each checkpoint (``--init``: also its architecture freshly initialised, seed 0) on
the first N training examples, model in eval mode, 1 thread:

* **reference**: per block, a 40-step float32 Lanczos with full reorthogonalization
  (eigenthings' ``lanczos_tridiagonal``), its top Ritz value; the float32 floor (~1e-6)
  is far below the tolerance;
* **geomkit**: ``hessian_eigs(blocks=("paper",), tol=tol)`` (lockstep, ``auto`` HVPs);
* **eigenthings, careful**: ``lanczos(op, k=1, which="LA", max_iter=K)`` per block, where
  its ``tol`` only sets a flag, so K is the smallest single step count within ``tol`` on
  every block of the case (read off the reference run's prefixes: eigenthings' Lanczos
  from its seed is the same run truncated);
* **eigenthings, clairvoyant**: each block its own smallest step count;
* **PyHessian** ``eigenvalues(top_n=1, tol=t)`` per block (other parameters frozen), at the
  largest t in 1e-4, 1e-5, 1e-6 whose error is ≤ tol on every block.

Rounds are interleaved (min / median / max wall time); ratios are of medians. HVPs are
summed over the blocks; the error is the largest relative error over the blocks.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry.blocks import resolve_blocks  # noqa: E402
from geomkit.geometry.hessian import hessian_eigs  # noqa: E402
from geomkit.geometry.lanczos import _tridiag_eigh  # noqa: E402


def eig_operator(model, x, y, names):
    import hessian_eigenthings as he

    return he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy),
                              param_filter=he.match_names(*names))


def eig_prefix_values(model, x, y, names, steps: int, seed: int = 0) -> list[float]:
    """Top Ritz value after each of ``steps`` steps of eigenthings' Lanczos from ``seed``
    (exactly what ``lanczos(max_iter=m, seed=seed)`` returns, for every m)."""
    import hessian_eigenthings as he

    op = eig_operator(model, x, y, names)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v0 = torch.randn(op.size, dtype=op.dtype, generator=gen)
    td = he.lanczos_tridiagonal(op, v0, steps, reorthogonalize=True)
    a = [float(v) for v in td.alphas]
    b = [float(v) for v in td.betas]
    return [float(_tridiag_eigh(a[:m], b[: m - 1])[0][-1]) for m in range(1, len(a) + 1)]


def eig_run(model, x, y, blocks, steps: dict[str, int]) -> tuple[dict[str, float], int]:
    import hessian_eigenthings as he

    out = {}
    for b, names in blocks.items():
        r = he.lanczos(eig_operator(model, x, y, names), k=1, which="LA",
                       max_iter=steps[b], seed=0)
        out[b] = float(r.eigenvalues[0])
    return out, sum(steps.values())


def pyhessian_block(model, x, y, names, tol: float) -> tuple[float, int]:
    """PyHessian's top eigenvalue of one block: a copy of the model with every other
    parameter frozen (PyHessian differentiates what requires grad, and leaves .grad set)."""
    import pyhessian.hessian  # noqa: F401  (the package re-exports the class under this name)

    ph = sys.modules["pyhessian.hessian"]
    m = copy.deepcopy(model)
    keep = set(names)
    for n, p in m.named_parameters():
        p.requires_grad_(n in keep)
    count = [0]
    orig = ph.hessian_vector_product

    def counting(*a, **k):
        count[0] += 1
        return orig(*a, **k)

    ph.hessian_vector_product = counting
    try:
        torch.manual_seed(0)
        h = ph.hessian(m, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        ev = h.eigenvalues(maxIter=300, tol=tol, top_n=1)[0][0]
    finally:
        ph.hessian_vector_product = orig
    return float(ev), count[0]


def pyhessian_run(model, x, y, blocks, tol):
    out, hvps = {}, 0
    for b, names in blocks.items():
        v, n = pyhessian_block(model, x, y, names, tol)
        out[b], hvps = v, hvps + n
    return out, hvps


def rel_err(vals: dict[str, float], ref: dict[str, float]) -> float:
    return max(abs(vals[b] - ref[b]) / abs(ref[b]) for b in ref)


def fmt(t: list[float]) -> str:
    return f"{min(t):.1f} / {statistics.median(t):.1f} / {max(t):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--init", action="store_true")
    ap.add_argument("--init-only", action="store_true", help="only the architectures at init")
    ap.add_argument("--samples", type=int, nargs="+", default=[512])
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ref-steps", type=int, default=40)
    ap.add_argument("--no-pyhessian", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import hessian_eigenthings

    lines = [f"torch {torch.__version__}, hessian-eigenthings {hessian_eigenthings.__version__}"
             f", {args.threads} thread(s), tol {args.tol:g}, {args.rounds} interleaved rounds "
             "(seconds min / median / max)", "",
             "| case | N | geomkit | eigenthings careful | eigenthings clairvoyant | PyHessian |"
             " careful / geomkit | clairvoyant / geomkit | PyHessian / geomkit |"
             " geomkit HVPs / clairvoyant HVPs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    detail = ["| case | N | block | reference λ_max | first step within tol | geomkit HVPs |",
              "|---|---|---|---|---|---|"]
    cases = []
    for path in args.ckpts:
        ck = load_checkpoint(path)
        if not args.init_only:
            cases.append((ck.label, ck.model, ck))
        if args.init or args.init_only:
            cases.append((f"{ck.model_name}/init", ck.fresh_model(0), ck))
    for label, model, ck in cases:
        model.eval()
        blocks = resolve_blocks(model, ("paper",))
        for n in args.samples:
            x, y = ck.analysis_data("train", n)
            ref, first = {}, {}
            for b, names in blocks.items():
                vals = eig_prefix_values(model, x, y, names, args.ref_steps)
                ref[b] = vals[-1]
                first[b] = next(m for m, v in enumerate(vals, 1)
                                if abs(v - ref[b]) <= args.tol * abs(ref[b]))
            careful = {b: max(first.values()) for b in blocks}
            tg, tc, tk, tp = [], [], [], []
            ph_tol = None
            for _ in range(args.rounds):
                t = time.perf_counter()
                r = hessian_eigs(model, x, y, blocks=("paper",), tol=args.tol)
                tg.append(time.perf_counter() - t)
                g_vals = {b: e.lambda_max for b, e in r.blocks.items()}
                g_hvps = {b: e.n_hvps for b, e in r.blocks.items()}
                t = time.perf_counter()
                c_vals, c_hvps = eig_run(model, x, y, blocks, careful)
                tc.append(time.perf_counter() - t)
                t = time.perf_counter()
                k_vals, k_hvps = eig_run(model, x, y, blocks, first)
                tk.append(time.perf_counter() - t)
                if not args.no_pyhessian:
                    for cand in ([ph_tol] if ph_tol else [1e-4, 1e-5, 1e-6]):
                        t = time.perf_counter()
                        p_vals, p_hvps = pyhessian_run(model, x, y, blocks, cand)
                        dt = time.perf_counter() - t
                        if rel_err(p_vals, ref) <= args.tol or cand == 1e-6:
                            ph_tol = cand
                            break
                    tp.append(dt)
            g_err, c_err, k_err = rel_err(g_vals, ref), rel_err(c_vals, ref), rel_err(k_vals, ref)
            m = statistics.median
            ph = (f"{fmt(tp)} s, {p_hvps} HVPs, err {rel_err(p_vals, ref):.1e} (tol {ph_tol:g})"
                  if tp else "–")
            lines.append(
                f"| {label} | {n} | {fmt(tg)} s, {sum(g_hvps.values())} HVPs, err {g_err:.1e} | "
                f"{fmt(tc)} s, {c_hvps} HVPs (K = {max(first.values())}), err {c_err:.1e} | "
                f"{fmt(tk)} s, {k_hvps} HVPs, err {k_err:.1e} | {ph} | "
                f"{m(tc) / m(tg):.2f}× | {m(tk) / m(tg):.2f}× | "
                + (f"{m(tp) / m(tg):.2f}×" if tp else "–")
                + f" | {sum(g_hvps.values()) / k_hvps:.2f} |")
            for b in blocks:
                detail.append(f"| {label} | {n} | {b} | {ref[b]:.6g} | {first[b]} | {g_hvps[b]} |")
            print(lines[-1], file=sys.stderr)
    text = "\n".join(lines + ["", "Per block:", "", *detail, ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
