"""NTK κ in float32 against float64 on vit-s16 at 224 px (N = 8 random images, sum mode),
at two memory budgets: how far the float32 kernel is from the float64 one, and the time.

    python benchmarks/ntk_gram.py                    # vit-s16, ~40 s on 2 CPU cores
    python benchmarks/ntk_gram.py --model vit-b16    # ~4 min, ~8 GiB

The numbers in docs/benchmarks/ntk.md ("The Gram in float64") are this script's output at
HEAD and at the commit before the float64 Gram (the "before" column).
"""

import argparse
import time

import torch

from geomkit.geometry.ntk import ntk
from geomkit.models import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-s16")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build(args.model, image_size=224, in_chans=3, num_classes=1000).eval()
    x = torch.randn(8, 3, 224, 224)
    runs = {}
    for name, dtype, gib in (("float64", torch.float64, 8.0), ("float32", torch.float32, 8.0),
                             ("float32 at 1 GiB", torch.float32, 1.0)):
        t = time.perf_counter()
        runs[name] = r = ntk(model, x, dtype=dtype, memory_gib=gib)
        print(f"{name:<17} kappa {r.kappa:.10g}  chunks {r.n_chunks}  "
              f"{time.perf_counter() - t:.1f} s", flush=True)
    ref = runs["float64"].kappa
    for name in ("float32", "float32 at 1 GiB"):
        print(f"{name:<17} relative kappa error {abs(runs[name].kappa - ref) / ref:.2e}")


if __name__ == "__main__":
    main()
