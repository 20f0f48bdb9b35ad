"""How many HVPs PyHessian and geomkit need for λ_max to 1e-4, over several start seeds.

Usage::

    python benchmarks/hessian_seeds.py CKPT [CKPT ...] [--samples 512 1024] [--seeds 5]

Both tools keep the first-order graph and differentiate it again for every product, so an
HVP costs them the same and the wall-time ratio is the ratio of HVP counts (less
geomkit's fixed cost).  ``benchmarks/hessian.py`` compares one start seed; the counts of
both are random (PyHessian's power iteration starts from ``torch.randn``, geomkit's
Lanczos from a seeded Gaussian), so this script repeats the comparison over ``--seeds``
seeds and also reports the *oracle* count: the first Lanczos step whose Ritz value is
within 1e-4 of the reference.  No stopping rule can stop a Lanczos run from that start
earlier, so PyHessian's count over the oracle count bounds the HVP ratio any Lanczos
stopping rule could reach.

Per (model, N, seed): geomkit's stopping step at tol 1e-4 and the oracle step; PyHessian's
count with its tolerance tightened (1e-3, 1e-4, ... as in ``benchmarks/hessian.py``) until
its eigenvalue is within 1e-4; seconds per HVP of each.  The reference is a float32
Lanczos at tol 1e-7 (float32 round-off: errors of a few 1e-6 at most).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from hessian import pyhessian_run  # noqa: E402
from hessian_start import reference_lambda_max, trace  # noqa: E402

from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry.blocks import resolve_blocks  # noqa: E402
from geomkit.geometry.hvp import HessianOperator  # noqa: E402
from geomkit.geometry.lanczos import start_vector  # noqa: E402


def lanczos_trace(op: HessianOperator, seed: int, ref: float) -> tuple[int, int, float, float]:
    """(oracle step or 0, stopping step, error at stop, seconds per HVP) from start ``seed``."""
    t = time.perf_counter()
    oracle, stop, err = trace(op, start_vector(op.dims["whole"], seed, op.dtype, op.device), ref)
    return oracle or 0, stop, err, (time.perf_counter() - t) / stop


def pyhessian_count(model, x, y, seed: int, ref: float) -> tuple[int, float, float]:
    """(HVPs, tolerance, seconds per HVP) of the loosest PyHessian tolerance reaching 1e-4."""
    for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
        ev, n, sec = pyhessian_run(model, x, y, tol, seed)
        if abs(ev - ref) / abs(ref) <= 1e-4:
            return n, tol, sec / n
    return 0, float("nan"), float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--samples", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| model | N | seed | geomkit stops at | oracle step | PyHessian HVPs (tol) "
          "| HVP ratio | oracle ratio | s/HVP geomkit / PyHessian |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in args.ckpts:
        ck = load_checkpoint(c)
        model = ck.model.eval()
        for n in args.samples:
            x, y = ck.analysis_data("train", n)
            op = HessianOperator(model, x, y, resolve_blocks(model, ("whole",)),
                                 strategy="reuse")
            ref = reference_lambda_max(op)
            rows = []
            for seed in range(args.seeds):
                oracle, stop, err, g_per = lanczos_trace(op, seed, ref)
                ph, tol, p_per = pyhessian_count(model, x, y, seed, ref)
                rows.append((stop, oracle, ph))
                ratio = f"{ph / oracle:.2f}×" if ph and oracle else "–"  # 0: never reached
                print(f"| {ck.label} | {n} | {seed} | {stop} (err {err:.0e}) | {oracle} "
                      f"| {ph} ({tol:g}) | {ph / stop:.2f}× | {ratio} "
                      f"| {g_per:.3f} / {p_per:.3f} |", flush=True)
            med = [statistics.median(r[i] for r in rows) for i in range(3)]
            oracle_med = f"{med[2] / med[1]:.2f}×" if med[1] else "–"
            print(f"| {ck.label} | {n} | median | {med[0]:g} | {med[1]:g} | {med[2]:g} "
                  f"| {med[2] / med[0]:.2f}× | {oracle_med} | |", flush=True)
            op.release()


if __name__ == "__main__":
    main()
