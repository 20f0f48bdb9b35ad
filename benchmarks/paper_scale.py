"""Paper scale on this machine: peak memory and time of vit-b16 (224 px) measurements.

    python benchmarks/paper_scale.py [--stages hvp,landscape] [--samples 256]

Each stage runs in its own process (its peak RSS is its own, ``ru_maxrss``), untrained
``vit-b16`` (86.6 M parameters), Gaussian images, random labels, float32, BatchNorm-free:

``hvp``        one whole-model Hessian-vector product over N examples, ``stream``
               (recomputed per mini-batch of 32: what ``auto`` picks when the retained
               graph does not fit), after the operator's setup; the Table 3 row's cost is
               this times its HVP count (about 60 for the 7 paper blocks at tol 1e-4);
``landscape``  one filter-normalized landscape point (a 1×1 grid) over N examples.

NTK κ at N = 64 was measured before (docs/benchmarks/ntk.md: 10.6 GiB, 36 min).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stage(name: str, n: int) -> dict:
    import torch

    from geomkit.models import build

    torch.manual_seed(0)
    model = build("vit-b16", image_size=224, in_chans=3, num_classes=1000).eval()
    x = torch.randn(n, 3, 224, 224)
    y = torch.randint(0, 1000, (n,))
    out: dict = {"stage": name, "n": n,
                 "params": sum(p.numel() for p in model.parameters())}
    if name == "hvp":
        from geomkit.geometry.hvp import HessianOperator

        t = time.perf_counter()
        op = HessianOperator(model, x, y, {"whole": [k for k, _ in model.named_parameters()]},
                             strategy="stream", batch_size=32)
        out["setup_s"] = time.perf_counter() - t
        v = torch.randn(op.dims["whole"], generator=torch.Generator().manual_seed(0))
        t = time.perf_counter()
        op.matvec("whole", v)
        out["hvp_s"] = time.perf_counter() - t
    else:
        from geomkit.geometry.landscape import Grid, loss_landscape, random_directions

        dirs = random_directions(model, 2, seed=0)
        t = time.perf_counter()
        surf = loss_landscape(model, x, y, dirs, Grid((0.5, 0.5, 1), (0.5, 0.5, 1)))
        out["point_s"] = time.perf_counter() - t
        out["loss"] = float(surf.loss.reshape(-1)[0])
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="hvp,landscape")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_stage(args.one, args.samples)), flush=True)
        return
    for name in args.stages.split(","):
        r = subprocess.run([sys.executable, __file__, "--one", name, "--samples",
                            str(args.samples)], capture_output=True, text=True)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
        print(line, flush=True)


if __name__ == "__main__":
    main()
