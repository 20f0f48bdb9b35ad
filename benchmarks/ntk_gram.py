"""NTK κ in float32 against float64 on vit-s16 at 224 px (N = 8 random images, sum mode),
at two memory budgets, and the per-sample loop beside it: how far the float32 kernel is
from the float64 one, and the time.

    python benchmarks/ntk_gram.py                          # vit-s16, ~2 min on 2 CPU cores
    python benchmarks/ntk_gram.py --model vit-b16 --rounds 1   # ~10 min, ~8 GiB

The loop is one backward per example (float32 gradients) and the Gram of the stacked
gradients in float64 (geomkit's own Gram routine, so only the gradients differ), the
reference the issue measured against. Rounds are interleaved
(seconds min / median / max). The numbers in docs/benchmarks/ntk.md ("The Gram in
float64") are this script's output.
"""

import argparse
import statistics
import time

import torch

from geomkit.geometry.ntk import _GRAM_SLICE_BYTES, _gram_add, ntk
from geomkit.models import build


def loop_kappa(model: torch.nn.Module, x: torch.Tensor, whole_copy: bool = False) -> float:
    """κ of Θ (sum mode) from one backward per example and a float64 Gram (``whole_copy``:
    as ``G.double() @ G.double().T``, the form the issue's loop baseline had)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        g = torch.autograd.grad(model(x[i : i + 1]).sum(), params)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    gmat = torch.stack(rows)
    # the same float64 Gram as geomkit's (column slices: one 8 x 22 M float64 copy and
    # GEMM took 9.5 s here against 1.2 s sliced), so only the gradients are compared
    if whole_copy:
        g64 = gmat.double()
        kernel = g64 @ g64.T
    else:
        kernel = torch.zeros(len(x), len(x), dtype=torch.float64)
        _gram_add(kernel, gmat, max(1, _GRAM_SLICE_BYTES // (8 * len(x))))
    ev = torch.linalg.eigvalsh(kernel)
    return float(ev[-1] / ev[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-s16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.model, image_size=224, in_chans=3, num_classes=1000).eval()
    x = torch.randn(8, 3, 224, 224)
    ref = ntk(model, x, dtype=torch.float64, memory_gib=8.0).kappa
    print(f"float64 reference kappa {ref:.10g}", flush=True)
    configs = {"float32 at 8 GiB": lambda: ntk(model, x, dtype=torch.float32, memory_gib=8.0),
               "float32 at 1 GiB": lambda: ntk(model, x, dtype=torch.float32, memory_gib=1.0),
               "per-sample loop": lambda: loop_kappa(model, x),
               "loop, whole-copy Gram": lambda: loop_kappa(model, x, whole_copy=True)}
    times: dict[str, list[float]] = {k: [] for k in configs}
    result: dict[str, tuple[float, int | None]] = {}
    for _ in range(args.rounds):
        for name, fn in configs.items():
            t = time.perf_counter()
            r = fn()
            times[name].append(time.perf_counter() - t)
            result[name] = (r, None) if isinstance(r, float) else (r.kappa, r.n_chunks)
            print(f"{name:<17} {times[name][-1]:.1f} s", flush=True)
    loop = statistics.median(times["per-sample loop"])
    print(f"\n{args.model}, N = 8, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print("| run | chunks | kappa | rel. error vs float64 | seconds min / median / max "
          "| loop ÷ run (medians) |\n|---|---|---|---|---|---|")
    for name, ts in times.items():
        kappa, chunks = result[name]
        print(f"| {name} | {chunks if chunks is not None else '–'} | {kappa:.10g} | "
              f"{abs(kappa - ref) / ref:.1e} | {min(ts):.1f} / {statistics.median(ts):.1f} / "
              f"{max(ts):.1f} | {loop / statistics.median(ts):.2f}× |")


if __name__ == "__main__":
    main()
