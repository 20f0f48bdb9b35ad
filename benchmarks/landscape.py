"""Grid points per second: geomkit's landscape evaluation vs the reference approach.

The reference approach (tomgoldstein/loss-landscape, ``net_plotter.set_weights`` +
``evaluation.eval_loss``): for every grid point, write ``theta + (a*d1 + b*d2)`` into
every parameter (a new tensor per parameter, 1-D ones included), then run a plain
evaluation loop under ``torch.no_grad`` with batches of 128.  geomkit: the in-place
loop of :func:`geomkit.geometry.landscape.loss_landscape` (``torch.inference_mode``,
only the perturbed parameters touched, the automatic batch size), and, for the record,
``functional_call`` + ``vmap`` over K grid points.

Both see the same filter-normalized directions (seed 0, ``biasbn``), N=1024 digits and
an 11x11 grid on ``[-1, 1]^2``; the surfaces must agree to 1e-6 relative.  Methods
are interleaved and repeated; the best repetition counts (the machine is shared).

    python benchmarks/landscape.py [--threads 1] [--repeats 3] [--models vit-tiny,resnet-tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from geomkit.data import DataSpec, load_split
from geomkit.geometry.landscape import Grid, auto_batch_size, loss_landscape, random_directions
from geomkit.models import build


def reference_surface(
    model, inputs, targets, dirs, grid: Grid, batch_size: int = 128
) -> np.ndarray:
    """The reference tool's loop: rebuild every parameter per point, evaluate with no_grad."""
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    weights = [p.detach().clone() for p in params]
    dx = [dirs[0][n] for n in names]
    dy = [dirs[1][n] for n in names]
    loss = np.full(grid.shape, np.nan)
    model.eval()
    try:
        for k, (a, b) in enumerate(grid.coords()):
            for p, w, d0, d1 in zip(params, weights, dx, dy, strict=True):
                p.data = w + (d0 * a + d1 * b)
            total, n = 0.0, 0
            with torch.no_grad():
                for s in range(0, len(inputs), batch_size):
                    x, y = inputs[s : s + batch_size], targets[s : s + batch_size]
                    out = model(x)
                    total += F.cross_entropy(out, y).item() * len(x)
                    n += len(x)
                    out.max(1)[1].eq(y).sum()
            loss.reshape(-1)[k] = total / n
    finally:
        for p, w in zip(params, weights, strict=True):
            p.data = w
    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit-tiny,resnet-tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--grid", type=int, default=11)
    ap.add_argument("--vmap-k", default="4", help="comma-separated K for the vmap rows ('' = none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_split(DataSpec(source="digits"), "train")
    x, y = x[: args.samples], y[: args.samples]
    grid = Grid((-1.0, 1.0, args.grid), (-1.0, 1.0, args.grid))
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build(name, image_size=8, in_chans=1, num_classes=10).eval()
        dirs = random_directions(model, 2, seed=0)
        methods = {
            "reference (loop, no_grad, batch 128)": lambda model=model, dirs=dirs: (
                reference_surface(model, x, y, dirs, grid)
            ),
            "geomkit (in-place, inference_mode)": lambda model=model, dirs=dirs: (
                loss_landscape(model, x, y, dirs, grid).loss
            ),
        }
        for k in [int(v) for v in args.vmap_k.split(",") if v]:
            methods[f"geomkit vmap K={k}"] = lambda k=k, model=model, dirs=dirs: (
                loss_landscape(model, x, y, dirs, grid, points_per_call=k).loss
            )
        best = {m: float("inf") for m in methods}
        surfaces = {}
        for _ in range(args.repeats):
            for m, f in methods.items():
                t = time.perf_counter()
                surfaces[m] = f()
                best[m] = min(best[m], time.perf_counter() - t)
        ref_key = next(iter(methods))
        ref = surfaces[ref_key]
        for m in methods:
            rel = float(np.max(np.abs(surfaces[m] - ref) / np.abs(ref)))
            rows.append(
                {
                    "model": name,
                    "method": m,
                    "points_per_s": grid.size / best[m],
                    "speedup": best[ref_key] / best[m],
                    "max_rel_diff": rel,
                    "batch": 128 if m == ref_key else auto_batch_size(model, x),
                }
            )
    meta = {
        "threads": args.threads,
        "samples": args.samples,
        "grid": f"{args.grid}x{args.grid}",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
        return
    print(f"# {meta}")
    print("| model | method | eval batch | grid points/s | speedup vs reference | max rel. diff |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['method']} | {r['batch']} | {r['points_per_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['max_rel_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
