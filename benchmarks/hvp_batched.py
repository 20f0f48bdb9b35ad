"""Benchmark: the paper blocks' products from one vmapped backward (``batched=True``)
against one backward per block, on the retained graph, and their difference.

    python benchmarks/hvp_batched.py CKPT [--samples 512] [--rounds 5] [--threads 1]

Interleaved rounds (min / median / max seconds per call of ``matvecs`` over the K = 1, 4
and all paper blocks). ``benchmarks/gpu_check.py`` (stage ``hvp``) measures the same on
CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry.blocks import resolve_blocks  # noqa: E402
from geomkit.geometry.hvp import HessianOperator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.ckpt)
    model = ck.model.eval()
    x, y = ck.analysis_data("train", args.samples)
    blocks = resolve_blocks(model, ("paper",))
    op = HessianOperator(model, x, y, blocks, strategy="reuse")
    gen = torch.Generator().manual_seed(0)
    vs = [(b, torch.randn(op.dims[b], generator=gen)) for b in blocks]
    print(f"{ck.label}, N = {args.samples}, torch {torch.__version__}, {args.threads} "
          f"thread(s), {args.rounds} interleaved rounds, seconds min / median / max\n")
    print("| blocks | separate | batched | separate / batched | max rel. difference |")
    print("|---|---|---|---|---|")
    for k in (1, 4, len(vs)):
        req = vs[:k]
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for batched in (False, True):
                op.batched = batched
                t = time.perf_counter()
                out = op.matvecs(req)
                times[batched].append(time.perf_counter() - t)
                if batched:
                    got = out
                else:
                    ref = out
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref,
                                                                              strict=True))
        s, b = times[False], times[True]

        def f(t: list[float]) -> str:
            return f"{min(t):.2f} / {statistics.median(t):.2f} / {max(t):.2f}"

        print(f"| {k} | {f(s)} | {f(b)} | {statistics.median(s) / statistics.median(b):.2f}× "
              f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
