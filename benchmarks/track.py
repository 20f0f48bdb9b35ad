"""Benchmark: what tracking geometry during training costs, and what the warm start saves.

Usage::

    python benchmarks/track.py [--epochs 2] [--every 15] [--rounds 2] [--samples 128]
                               [--tol 1e-2]
                               [--out docs/benchmarks/track.md]

For each model and optimizer of the quick study (``geomkit/studies/quick.toml``: digits,
batch 32, vit-tiny / mixer-tiny with AdamW, resnet-tiny with SGD, each vanilla and SAM;
one thread, as the study runs), in interleaved rounds:

* a plain training run (no callback): seconds per optimizer step;
* the same run with two trackers side by side on the same weights, every K steps: the
  default one (warm-started, preconditioned λ_max for Adam/AdamW, probe and test sets of
  ``--samples`` examples) and a cold-started copy (``warm=False``). Reported: seconds per
  tracked step of the default tracker, the HVPs warm vs cold, the largest relative
  difference of their λ_max (both at ``--tol``), and the K at which tracking costs 10% of
  the training time, K₁₀ = t_track / (0.1 · t_step).

Prints markdown tables (and writes them with ``--out``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geomkit.geometry.track import SharpnessTracker  # noqa: E402
from geomkit.train import TrainConfig, train  # noqa: E402

CASES = [("vit-tiny", "adamw"), ("vit-tiny", "sam"), ("mixer-tiny", "adamw"),
         ("mixer-tiny", "sam"), ("resnet-tiny", "sgd"), ("resnet-tiny", "sam")]
RHO = {"vit-tiny": 0.1, "mixer-tiny": 0.3, "resnet-tiny": 0.05}


def _cfg(model: str, opt: str, epochs: int) -> TrainConfig:
    base = "sgd" if model.startswith("resnet") else "adamw"
    return TrainConfig(model=model, optimizer=opt, base_optimizer=base if opt == "sam" else None,
                       rho=RHO[model] if opt == "sam" else None, data={"source": "digits"},
                       epochs=epochs, batch_size=32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--every", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-track-"))
    step_s: dict[tuple, list[float]] = {c: [] for c in CASES}
    track_s: dict[tuple, list[float]] = {c: [] for c in CASES}
    hvps: dict[tuple, tuple[int, int]] = {}
    diff: dict[tuple, float] = {}
    try:
        for r in range(args.rounds):
            for case in CASES:
                cfg = _cfg(*case, args.epochs)
                shutil.rmtree(tmp / "plain", ignore_errors=True)
                res = train(cfg, tmp / "plain", progress=False)
                step_s[case].append(res.seconds / res.steps)
                warm = SharpnessTracker(args.samples, every=args.every, test=args.samples,
                                        tol=args.tol)
                cold = SharpnessTracker(args.samples, every=args.every, test=args.samples,
                                        warm=False, tol=args.tol)
                shutil.rmtree(tmp / "tracked", ignore_errors=True)
                train(cfg, tmp / "tracked", progress=False, callbacks=[warm, cold])
                track_s[case].append(statistics.median(row["seconds"] for row in warm.rows))
                lw = np.array([row["lambda_max"] for row in warm.rows])
                lc = np.array([row["lambda_max"] for row in cold.rows])
                # the first row has no previous vector: both start cold
                hvps[case] = (sum(row["hvps"] + max(row["precond_hvps"], 0)
                                  for row in warm.rows[1:]),
                              sum(row["hvps"] + max(row["precond_hvps"], 0)
                                  for row in cold.rows[1:]))
                diff[case] = float(np.max(np.abs(lw - lc) / np.abs(lc)))
                print(f"round {r} {case}: step {step_s[case][-1] * 1e3:.0f} ms, track "
                      f"{track_s[case][-1]:.2f} s, hvps warm/cold {hvps[case]} (plain "
                      f"{[row['hvps'] for row in warm.rows]}, preconditioned "
                      f"{[row['precond_hvps'] for row in warm.rows]})",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def mmm(v: list[float], scale: float = 1.0, fmt: str = ".0f") -> str:
        return " / ".join(format(x * scale, fmt) for x in (min(v), statistics.median(v), max(v)))

    lines = [
        f"Quick-study runs, {args.epochs} epochs, K = {args.every}, probe/test {args.samples} "
        f"examples, tol {args.tol:g}, 1 thread, {args.rounds} interleaved rounds "
        "(min / median / max).",
        "",
        "| model | optimizer | ms / step | s / tracked step | K for 10 % | HVPs warm / cold "
        "(after the first) | max rel. λ diff warm vs cold |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        k10 = statistics.median(track_s[case]) / (0.1 * statistics.median(step_s[case]))
        w, c = hvps[case]
        lines.append(f"| {case[0]} | {case[1]} | {mmm(step_s[case], 1e3)} | "
                     f"{mmm(track_s[case], 1, '.2f')} | {math.ceil(k10)} | {w} / {c} "
                     f"({w / c:.2f}×) | {diff[case]:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
