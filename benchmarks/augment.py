"""Benchmark: geomkit.data.augment against kornia 0.9, and both against a training step.

Usage::

    python benchmarks/augment.py [--rounds 5] [--reps 5] [--batch 128] [--threads 2]
                                 [--out docs/benchmarks/augment.md]

For a batch of 128 images of 1×28×28 (Fashion-MNIST) and 3×32×32 (CIFAR), in interleaved
rounds (min / median / max of the per-call wall time over rounds, each the mean of
``--reps`` calls): geomkit's RandAugment(2, 15), kornia's ``auto.RandAugment(2, 15)``,
geomkit's Mixup(0.2) and kornia's ``RandomMixUpV2``, geomkit's AugMix, and one AdamW
training step (forward, backward, step) of ``vit-tiny`` at that image size; the ratio
column is the augmentation's median over the training step's. Then kornia's seeding
and one-channel behaviour are probed and printed. kornia is optional: without it only
geomkit's rows are measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geomkit.data import augment as A  # noqa: E402
from geomkit.models import build  # noqa: E402

try:
    import kornia
    import kornia.augmentation as K
    from kornia.augmentation.auto import RandAugment as KRandAugment
except ImportError:  # pragma: no cover - kornia is optional
    kornia = None


def _time(fn, reps: int) -> float:
    fn()  # warm-up within the round, so no candidate benefits from the previous one
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def candidates(c: int, size: int, batch: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, size, size)
    y = torch.randint(0, 10, (batch,))
    mean, std = (0.5,) * c, (0.25,) * c
    ours_ra = A.RandAugment(2, 15)
    ours_mix = A.Mixup(0.2)
    ours_am = A.AugMix()
    model = build("vit-tiny", image_size=size, in_chans=c, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    out = {
        "train step (vit-tiny, AdamW)": step,
        "geomkit RandAugment(2, 15)": lambda: ours_ra(x, g, mean=mean, std=std),
        "geomkit Mixup(0.2)": lambda: ours_mix(x, y, 10, g),
        "geomkit AugMix (width 3, depth 1-3)": lambda: ours_am(x, g, mean=mean, std=std),
    }
    if kornia is not None:
        # kornia's `color` raises on one channel (see the probe), so drop it there.
        from kornia.augmentation.auto.rand_augment.rand_augment import default_policy
        pol = [p for p in default_policy if p[0][0] != "color"] if c == 1 else None
        k_ra = KRandAugment(n=2, m=15, policy=pol)
        k_mix = K.RandomMixUpV2(data_keys=["input", "class"])
        x01 = (x * 0.25 + 0.5).clamp(0, 1)  # kornia works on [0, 1] images
        out["kornia RandAugment(2, 15)" + (" (no color)" if c == 1 else "")] = (
            lambda: k_ra(x01))
        out["kornia RandomMixUpV2"] = lambda: k_mix(x, y)
    return out


def measure(c: int, size: int, batch: int, rounds: int, reps: int) -> list[str]:
    cands = candidates(c, size, batch)
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(rounds):
        for name, fn in cands.items():
            times[name].append(_time(fn, reps))
    step = statistics.median(times["train step (vit-tiny, AdamW)"])
    rows = [f"\n### batch {batch} × {c}×{size}×{size}\n",
            "| what | min ms | median ms | max ms | median / train step |",
            "|---|---:|---:|---:|---:|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(f"| {name} | {1e3 * min(ts):.2f} | {1e3 * med:.2f} | "
                    f"{1e3 * max(ts):.2f} | {med / step:.3f} |")
    return rows


def probe_kornia() -> list[str]:
    """kornia's seeding story and its one-channel colour behaviour."""
    if kornia is None:
        return ["\nkornia not installed: no probe."]
    lines = [f"\n### kornia {kornia.__version__} probes\n"]
    x = torch.rand(16, 3, 32, 32)
    ra = KRandAugment(n=2, m=15)
    torch.manual_seed(0)
    a = ra(x)
    torch.manual_seed(0)
    b = ra(x)
    lines.append(f"- same global seed, same output: {torch.equal(a, b)}")
    try:
        KRandAugment(n=2, m=15)(x, generator=torch.Generator().manual_seed(0))
        lines.append("- `generator=` in forward: accepted")
    except Exception as e:  # noqa: BLE001 - record whatever it raises
        lines.append(f"- `generator=` in forward: {type(e).__name__}: {e}")
    torch.manual_seed(1)
    c = ra(x)
    lines.append(f"- another global seed, another output: {not torch.equal(a, c)} "
                 "(the only source of randomness is torch's global RNG)")
    # Does RandAugment choose operations per image or per batch? Apply to 64 copies of
    # one image: per-image ops give many distinct outputs.
    one = x[:1].expand(64, -1, -1, -1).contiguous()
    counts = []
    for seed in range(4):
        torch.manual_seed(seed)
        outs = KRandAugment(n=1, m=10)(one)
        counts.append(len({tuple(o.flatten()[:64].tolist()) for o in outs}))
    lines.append(f"- 64 copies of one image through kornia RandAugment(1, 10), 4 seeds: "
                 f"{counts} distinct outputs (one operation drawn for the whole batch)")
    ours = A.RandAugment(1, 10)(one, torch.Generator().manual_seed(3))
    lines.append(f"- the same through geomkit RandAugment(1, 10): "
                 f"{len({tuple(o.flatten()[:64].tolist()) for o in ours})} distinct")
    try:
        KRandAugment(n=2, m=0)
        lines.append("- m = 0: accepted")
    except ValueError as e:
        lines.append(f"- m = 0 (AugReg light1): ValueError: {e}")
    gray = torch.rand(8, 1, 28, 28)
    for op in ("color", "contrast", "sharpness", "equalize"):
        pol = [[(op, 0.1, 1.9)]] if op != "equalize" else [[(op, 0, 1)]]
        try:
            y = KRandAugment(n=1, m=15, policy=pol)(gray)
            lines.append(f"- 1-channel `{op}` at m = 15: ok, max change "
                         f"{float((y - gray).abs().max()):.3f}")
        except Exception as e:  # noqa: BLE001
            lines.append(f"- 1-channel `{op}`: {type(e).__name__}: {str(e)[:120]}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    head = [f"torch {torch.__version__}, {a.threads} threads, CPU; "
            f"kornia {getattr(kornia, '__version__', 'absent')}; "
            f"{a.rounds} interleaved rounds × {a.reps} calls"]
    rows = head
    for c, size in ((1, 28), (3, 32)):
        rows += measure(c, size, a.batch, a.rounds, a.reps)
    rows += probe_kornia()
    text = "\n".join(rows) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
