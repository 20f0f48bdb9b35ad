"""Benchmark: where Lanczos could stop, and where each stopping rule does.

Usage::

    python benchmarks/hessian_stop.py CKPT [CKPT ...] [--samples 512] [--steps 30] [--init]
                                      [--tols 1e-3 1e-4] [--traces FILE.pt] [--out FILE.md]

For every paper block of each checkpoint (and each start seed) one Lanczos run of
``--steps`` steps is recorded (tol 0: nothing stops it), in float32 as the analyses run;
its last top Ritz value is the reference (the float32 floor, ~1e-6 relative, is far below
the tolerances studied). Every stopping rule is then replayed on the recorded
tridiagonal matrices -- the same products, so the comparison is exact, not noisy:

* ``first within``: the first step whose Ritz value is within tol of the reference (what
  a clairvoyant user would pick per block);
* the rule of :class:`geomkit.geometry.lanczos.LanczosRun` with the gap credit capped at
  ``max_gain`` = 10 (before), 100, 1000 and ∞, and the change test alone.

Reported per rule: HVPs summed over blocks, the overshoot (stop − first within) per
block, and the largest relative error at the stop. A second table replays the safeguard
variants of ``SWEEP_RULES`` (no resolved-neighbour test, a smaller gain cap, a residual
that must have fallen 4× in the last step) on every recorded block run; the same variants
then run on the test's clustered spectra over a wider range of gaps (``cluster_sweep``).
``--traces FILE`` keeps the recorded runs, so the tables can be re-made without the
checkpoints.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geomkit.checkpoint import load_checkpoint  # noqa: E402
from geomkit.geometry.blocks import resolve_blocks  # noqa: E402
from geomkit.geometry.hvp import HessianOperator  # noqa: E402
from geomkit.geometry.lanczos import (  # noqa: E402
    _FLOOR,
    _MAX_GAIN,
    _RESOLVED,
    LanczosRun,
    _tridiag_eigh,
    error_bounds,
    start_vector,
)
from tests.geometry.test_lanczos import _clustered  # noqa: E402


def record(model, x, y, steps: int, seed: int) -> dict[str, tuple[list[float], list[float]]]:
    """(alphas, betas) of a ``steps``-step run per paper block (lockstep, one operator)."""
    blocks = resolve_blocks(model, ("paper",))
    op = HessianOperator(model, x, y, blocks)
    runs = {b: LanczosRun(start_vector(op.dims[b], seed, op.dtype, op.device), tol=0.0,
                          max_iter=steps) for b in blocks}
    try:
        while any(not r.done for r in runs.values()):
            active = [b for b, r in runs.items() if not r.done]
            for b, w in zip(active, op.matvecs([(b, runs[b].query) for b in active]),
                            strict=True):
                runs[b].feed(w)
    finally:
        op.release()
    return {b: (list(r.alphas), list(r.betas) + [r._beta]) for b, r in runs.items()}


def trace(alphas, betas):
    """Per step m: (top Ritz value, its residual, all Ritz values, all residuals)."""
    out = []
    for m in range(1, len(alphas) + 1):
        theta, S = _tridiag_eigh(alphas[:m], betas[: m - 1])
        res = (betas[m - 1] * S[-1, :]).abs()
        out.append((theta, res))
    return out


def stop_step(tr, tol: float, rule: str) -> int:
    """Where one of ``RULES`` stops on a recorded run (step count)."""
    if rule == "change":
        return candidate_stop(tr, tol, "change")
    gain = {"gain10": 10.0, "gain100": 100.0, "gain1000": 1000.0, "gaininf": math.inf}[rule]
    return sweep_stop(tr, tol, _RESOLVED, gain)


RULES = ("gain10", "gain100", "gain1000", "gaininf", "change")


# -- the clustered spectra of tests/geometry/test_lanczos.py (the same matrices) -------------

def candidate_stop(tr, tol: float, rule: str, resolved: float = 0.02) -> int:
    """Cheaper rules than geomkit's: ``change`` alone, ``aitken`` (the change and its
    geometric extrapolation c·q/(1 − q), q the ratio of successive changes), ``aitken_e``
    (also the error bound below 10·tol), ``resolved`` (geomkit's rule at another resolved
    threshold)."""
    if rule == "resolved":
        return sweep_stop(tr, tol, resolved, _MAX_GAIN)
    prev = prevc = None
    for m, (theta, res) in enumerate(tr, start=1):
        cur = float(theta[-1])
        denom = max(abs(cur), _FLOOR * float(theta.abs().max()), 1e-300)
        if prev is not None:
            c = abs(cur - prev) / denom
            e = float(error_bounds(theta, res, resolved=resolved)[-1]) / denom
            if rule == "change":
                ok = c < tol
            else:
                ok = bool(prevc) and c < tol and c / prevc < 1 and \
                    c * (c / prevc) / (1 - c / prevc) < tol
                if rule == "aitken_e":
                    ok = ok and e < 10 * tol
            if ok:
                return m
            prevc = c
        prev = cur
    return len(tr)


def clustered_table(tol: float = 1e-4, steps: int = 120) -> list[str]:
    """HVPs and the largest error of each candidate rule over the 15 clustered cases."""
    traces = []
    for g in (1e-2, 3e-3, 1e-3):
        for s in range(5):
            A = _clustered(g, s)
            run = LanczosRun(start_vector(300, s, torch.float64), tol=0.0, max_iter=steps)
            while not run.done:
                run.feed(A @ run.query)
            traces.append(trace(list(run.alphas), list(run.betas) + [run._beta]))
    rows = [f"| rule (clustered spectra, tol {tol:g}) | HVPs (15 cases) | largest error |",
            "|---|---|---|"]
    rules = [("geomkit (resolved 0.02)", "resolved", 0.02)]
    rules += [(f"resolved {r:g}", "resolved", r) for r in (0.05, 0.1, 0.2, 0.5)]
    rules += [(n, n, 0.02) for n in ("change", "aitken", "aitken_e")]
    for label, rule, r in rules:
        stops = [candidate_stop(tr, tol, rule, r) for tr in traces]
        err = max(abs(float(tr[m - 1][0][-1]) - 1.0) for tr, m in zip(traces, stops,
                                                                     strict=True))
        rows.append(f"| {label} | {sum(stops)} | {err:.1e} |")
    return rows


def sweep_stop(tr, tol: float, resolved: float, gain: float, drop: float = 0.0) -> int:
    """geomkit's rule with other safeguard settings; ``drop`` > 0 also refuses the gap
    credit unless the residual fell at least ``drop``-fold in the last step (a Ritz value
    converging to an isolated eigenvalue; one mixing a close pair stalls)."""
    prev = prev_r = None
    for m, (theta, res) in enumerate(tr, start=1):
        cur, r = float(theta[-1]), float(res[-1])
        denom = max(abs(cur), _FLOOR * float(theta.abs().max()), 1e-300)
        if prev is not None:
            e = float(error_bounds(theta, res, resolved=resolved, max_gain=gain)[-1])
            if drop and not r <= prev_r / drop:
                e = r
            if abs(cur - prev) / denom < tol and e / denom < tol:
                return m
        prev, prev_r = cur, r
    return len(tr)


SWEEP_GAPS = (1e-2, 5e-3, 3e-3, 2e-3, 1e-3, 7e-4, 5e-4, 3e-4, 2e-4)
SWEEP_RULES = (("geomkit (resolved 0.02, gain 10)", 0.02, 10.0, 0.0),
               ("gain 10 alone (no resolved test)", math.inf, 10.0, 0.0),
               ("gain 5 alone", math.inf, 5.0, 0.0),
               ("gain 10 + residual fell 4×", math.inf, 10.0, 4.0),
               ("gain 5 + residual fell 4×", math.inf, 5.0, 4.0))


def cluster_sweep(tol: float = 1e-4, seeds: int = 10, steps: int = 80) -> list[str]:
    """The test's clustered spectra over a wider range of gaps g and more start seeds:
    per rule and g, the largest error / the runs (of ``seeds``) outside tol / HVPs."""
    traces = {}
    for g in SWEEP_GAPS:
        traces[g] = []
        for s in range(seeds):
            A = _clustered(g, s)
            run = LanczosRun(start_vector(300, s, torch.float64), tol=0.0, max_iter=steps)
            while not run.done:
                run.feed(A @ run.query)
            traces[g].append(trace(list(run.alphas), list(run.betas) + [run._beta]))
    rows = [f"| rule (tol {tol:g}; largest error / runs outside tol of {seeds} / HVPs) | "
            + " | ".join(f"g = {g:g}" for g in SWEEP_GAPS) + " |",
            "|---|" + "---|" * len(SWEEP_GAPS)]
    for label, resolved, gain, drop in SWEEP_RULES:
        cells = []
        for g in SWEEP_GAPS:
            stops = [sweep_stop(tr, tol, resolved, gain, drop) for tr in traces[g]]
            errs = [abs(float(tr[m - 1][0][-1]) - 1.0) for tr, m in zip(traces[g], stops,
                                                                       strict=True)]
            cells.append(f"{max(errs):.0e} / {sum(e > tol for e in errs)} / {sum(stops)}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="*")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", action="store_true",
                    help="also each checkpoint's architecture at initialization (seed 0)")
    ap.add_argument("--init-steps", type=int, default=35)
    ap.add_argument("--traces", help="save the recorded runs here; when the file exists, "
                    "replay it instead of recording (the checkpoints are then not read)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.traces and Path(args.traces).exists():
        recorded = torch.load(args.traces, weights_only=True)
    else:
        recorded = {}
        for path in args.ckpts:
            ck = load_checkpoint(path)
            x, y = ck.analysis_data("train", args.samples)
            cases = [(ck.label, ck.model, args.steps)]
            if args.init:
                cases.append((f"{ck.model_name}/init", ck.fresh_model(0), args.init_steps))
            for label, model, steps in cases:
                if any(k[0] == label for k in recorded):
                    continue
                for seed in args.seeds:
                    recorded[(label, seed)] = record(model.eval(), x, y, steps, seed)
                    print(f"recorded {label} seed {seed}", file=sys.stderr)
        if args.traces:
            torch.save(recorded, args.traces)
    lines = [f"torch {torch.__version__}, {args.threads} thread(s), N = {args.samples}, "
             f"recorded runs: {sorted({k[0] for k in recorded})}, seeds "
             f"{sorted({k[1] for k in recorded})}", ""]
    head = ("| model | seed | tol | first within (sum) | "
            + " | ".join(f"{r}: HVPs, overshoot max, err max" for r in RULES) + " |")
    rows = [head, "|" + "---|" * (4 + len(RULES))]
    sweep = {(tol, i): [0, 0, 0, 0.0] for tol in args.tols for i in range(len(SWEEP_RULES))}
    firsts = dict.fromkeys(args.tols, 0)
    for (label, seed), rec in recorded.items():
        traces = {b: trace(a, bt) for b, (a, bt) in rec.items()}
        for tol in args.tols:
            first, cells = 0, []
            per_rule = {r: [0, 0, 0.0] for r in RULES}
            for tr in traces.values():
                ref = float(tr[-1][0][-1])
                errs = [abs(float(t[-1]) - ref) / abs(ref) for t, _ in tr]
                f = next((m for m, e in enumerate(errs, start=1) if e <= tol), len(tr))
                first += f
                for r in RULES:
                    s = stop_step(tr, tol, r)
                    acc = per_rule[r]
                    acc[0] += s
                    acc[1] = max(acc[1], s - f)
                    acc[2] = max(acc[2], errs[s - 1])
                for i, (_, resolved, gain, drop) in enumerate(SWEEP_RULES):
                    s = sweep_stop(tr, tol, resolved, gain, drop)
                    acc = sweep[(tol, i)]
                    acc[0] += s
                    acc[1] = max(acc[1], s - f)
                    acc[2] += s - f > 1
                    acc[3] = max(acc[3], errs[s - 1])
            firsts[tol] += first
            for r in RULES:
                h, o, e = per_rule[r]
                cells.append(f"{h}, {o:+d}, {e:.1e}")
            rows.append(f"| {label} | {seed} | {tol:g} | {first} | " + " | ".join(cells)
                        + " |")
    n_blocks = sum(len(rec) for rec in recorded.values())
    rows += ["", f"| rule, on all {n_blocks} recorded block runs | tol | HVPs (÷ first within) "
             "| largest overshoot | blocks stopping > 1 step late | largest error |",
             "|---|---|---|---|---|---|"]
    for tol in args.tols:
        for i, (name, *_) in enumerate(SWEEP_RULES):
            h, o, late, e = sweep[(tol, i)]
            rows.append(f"| {name} | {tol:g} | {h} ({h / max(firsts[tol], 1):.2f}×) | {o:+d} "
                        f"| {late} | {e:.1e} |")
    text = "\n".join(lines + rows + ["", *clustered_table(), "", *cluster_sweep(), ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
