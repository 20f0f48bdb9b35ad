"""Where resnet-tiny's NTK time goes: per-example conv weight gradients under ``vmap``.

Usage::

    python benchmarks/ntk_conv.py [--samples 128] [--threads 1]

``geomkit.geometry.ntk`` gets per-example gradients from ``vmap(grad(f))``; for a
convolution torch's batching rule turns the N per-example weight gradients into one
grouped convolution (groups = N).  This script times, for the conv layers of
``resnet-tiny`` at 8×8 input (shapes from its profile), the N per-example weight
gradients three ways: ``vmap(grad)`` of one conv (forward, input and weight gradient, what
the kernel computation does), the grouped ``convolution_backward`` alone (weight gradient
only), and ``unfold`` + ``bmm`` (the per-example gradient written as a matrix product,
Opacus-style: ∇W_i = δ_i · unfold(x_i)ᵀ).  All three agree to float32 round-off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import grad, vmap


def median_ms(fn, reps: int = 15) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.samples
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), N={n}\n")
    print("| layer (in→out, k, input, stride) | vmap(grad) ms | grouped conv backward ms "
          "| unfold + bmm ms | max abs diff |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    for c, o, k, h, s in [(16, 16, 3, 8, 1), (16, 32, 3, 8, 2), (32, 32, 3, 4, 1),
                          (32, 64, 3, 4, 2), (64, 64, 3, 2, 1)]:
        print(layer_row(n, c, o, k, h, s), flush=True)


def layer_row(n: int, c: int, o: int, k: int, h: int, s: int) -> str:
    """One table row: a k×k conv c→o on h×h inputs with stride s (padding k // 2)."""
    p = k // 2
    x = torch.randn(n, c, h, h)
    w = torch.randn(o, c, k, k)
    ho = (h + 2 * p - k) // s + 1
    g = torch.randn(n, o, ho, ho)

    def one(ww, xi, gi):
        return (F.conv2d(xi[None], ww, padding=p, stride=s) * gi[None]).sum()

    per = vmap(grad(one), in_dims=(None, 0, 0))

    def vmapped():
        return per(w, x, g)

    def grouped():
        return torch.ops.aten.convolution_backward(
            g.reshape(1, n * o, ho, ho), x.reshape(1, n * c, h, h), w.repeat(n, 1, 1, 1),
            None, [s, s], [p, p], [1, 1], False, [0, 0], n, [False, True, False])[1]

    def unfold():
        cols = F.unfold(x, k, padding=p, stride=s)  # (n, c·k², L)
        return torch.bmm(g.reshape(n, o, -1), cols.transpose(1, 2)).reshape(n, o, c, k, k)

    ref = vmapped()
    diff = max(float((grouped().reshape(n, o, c, k, k) - ref).abs().max()),
               float((unfold() - ref).abs().max()))
    return (f"| {c}→{o}, {k}×{k}, {h}×{h}, {s} | {median_ms(vmapped):.2f} "
            f"| {median_ms(grouped):.2f} | {median_ms(unfold):.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
