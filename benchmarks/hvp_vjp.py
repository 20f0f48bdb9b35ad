"""Benchmark: one block's HVP from the retained gradient graph, two ways.

    python benchmarks/hvp_vjp.py CKPT [--samples 512] [--rounds 6]

``HessianOperator`` computes ``H_BB v`` as the vector-Jacobian product of the block's
retained gradient with ``v`` (``autograd.grad(g_B, θ_B, grad_outputs=v)``). Before
session 9 it built the scalar ``g_B · v`` and backpropagated it. Both give the same
numbers; this times them against each other on the same graph (whole model and the
embedding block), interleaved rounds, 1 thread, seconds min / median / max.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry.blocks import resolve_blocks  # noqa: E402
from geomkit.geometry.hvp import HessianOperator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(args.ckpt)
    model = ck.model.eval()
    x, y = ck.analysis_data("train", args.samples)
    op = HessianOperator(model, x, y, resolve_blocks(model, ("paper",)))
    op._build_graph()
    g = op._graph
    print(f"{ck.label}, N = {len(x)}, torch {torch.__version__}, 1 thread")
    print("| block | built g·v, s | grad_outputs=v, s | ratio (medians) | max abs. difference |")
    print("|---|---|---|---|---|")
    for block in ("whole", "embedding"):
        names = [n for n in op.blocks[block] if n in g and g[n].requires_grad]
        leaves = [op._leaves[n] for n in names]
        vs = [torch.randn_like(p) for p in leaves]

        def dot(names=names, leaves=leaves, vs=vs):
            d = torch.stack([(g[n] * v).sum() for n, v in zip(names, vs, strict=True)]).sum()
            return torch.autograd.grad(d, leaves, retain_graph=True)

        def vjp(names=names, leaves=leaves, vs=vs):
            return torch.autograd.grad([g[n] for n in names], leaves, grad_outputs=vs,
                                       retain_graph=True)

        diff = max(float((a - b).abs().max()) for a, b in zip(dot(), vjp(), strict=True))
        t: dict[str, list[float]] = {"dot": [], "vjp": []}
        for _ in range(args.rounds):
            for k, f in (("dot", dot), ("vjp", vjp)):
                s = time.perf_counter()
                f()
                t[k].append(time.perf_counter() - s)

        def cell(v):
            return f"{min(v):.3f} / {statistics.median(v):.3f} / {max(v):.3f}"

        ratio = statistics.median(t["dot"]) / statistics.median(t["vjp"])
        print(f"| {block} | {cell(t['dot'])} | {cell(t['vjp'])} | {ratio:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
