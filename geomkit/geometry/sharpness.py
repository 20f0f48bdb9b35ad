"""Sharpness beside λ_max: average-case, first-order (SAM) and worst-case (m-)sharpness.

With L_S the mean loss over a batch S of m examples, ρ a radius and c a scaling (c = 1
standard; c = |w| elementwise, *adaptive*, as ASAM), over the parameters θ_B of a block
(the other parameters held fixed):

- ``avg``: S_avg = E_S E_{δ∼N(0, ρ² diag(c²))} [L_S(w+δ) − L_S(w)], with ``draws`` noise
  draws per batch and a standard error; also L^N = E[L_S(w+δ)] (the paper's L^N_train)
  beside L = E[L_S(w)]. On a quadratic loss E[S_avg] = ρ² tr(C H C)/2, C = diag(c).
- ``sam``: L_S(w+δ) − L_S(w) at SAM's (ASAM's) ascent step, the first-order maximizer:
  δ = ρ c² g / ‖c g‖₂ for p = 2, δ = ρ c sign(g) for p = ∞ (g = ∇L_S(w)).
- ``worst``: S_max = E_S max_{‖δ ⊘ c‖_p ≤ ρ} [L_S(w+δ) − L_S(w)], p = 2 or ∞, by
  projected gradient ascent in weight space with Auto-PGD's step-size schedule (Croce &
  Hein 2020): step 2ρ, momentum 0.75, the step halved (and the ascent restarted from the
  best point) at the APGD checkpoints when too few steps improved or nothing changed;
  random ``restarts`` on top. m-sharpness: S is each consecutive batch of ``m`` examples.

Every measure is over the whole model or any block (:func:`geomkit.geometry.blocks.
resolve_blocks`: the Hessian's presets), BatchNorm in eval mode by default, on the first N
analysis examples; a final partial batch (N not a multiple of m) is left out and the
examples used are reported. The model is restored bit for bit afterwards, also on error.
Noise comes from a CPU generator seeded by ``(seed, block, batch, draw/restart)``, so
results repeat on a device and agree across devices to rounding.

Why written here: tml-epfl/sharpness-vs-generalization (the reference for these measures)
is a script that hard-codes ``.cuda()`` and whole-model perturbations; no maintained
library offers them per block on the data, BatchNorm mode and seed of the Hessian.

The ascent is run in the scaled coordinates u = δ ⊘ c, where the constraint is a plain
ball (ℓ2: rescale; ℓ∞: clip), so the projection is exact, not the bisection onto an
ellipsoid the reference code uses; the feasible set is the same (coordinates with c = 0
cannot move). Each step costs one forward and backward: a point's loss comes from the
forward of its own gradient (the reference evaluates each point once more).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geomkit.errors import SpecError
from geomkit.geometry._inputs import as_data, logits_of, resolve_loss
from geomkit.geometry._work import analysis_mode, progress_bar, work_model
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.hvp import BN_MODES

__all__ = ["KINDS", "NORMS", "INITS", "BlockSharpness", "SharpnessResult", "default_rho",
           "sharpness", "apgd_checkpoints"]

KINDS = ("avg", "sam", "worst")
NORMS = ("2", "inf")
INITS = ("sam", "random")

#: Default ρ by (kind, adaptive, p): SAM's 0.05 and ASAM's 0.5 for ℓ2, the reference code's
#: 1e-3 for adaptive ℓ∞, σ = 0.01 (0.1 relative) for the Gaussian average.
_DEFAULT_RHO = {
    ("avg", False): 0.01, ("avg", True): 0.1,
    ("2", False): 0.05, ("2", True): 0.5,
    ("inf", False): 1e-4, ("inf", True): 1e-3,
}


def default_rho(kind: str, adaptive: bool = False, p: str = "2") -> float:
    """ρ used when none is given (see :data:`_DEFAULT_RHO`)."""
    return _DEFAULT_RHO[("avg", adaptive) if kind == "avg" else (str(p), adaptive)]


@dataclass(frozen=True)
class BlockSharpness:
    """One sharpness measure of one block.

    Attributes:
        value: mean over batches of L_S(w+δ_S) − L_S(w).
        stderr: its standard error (``avg``: over batches of the per-batch means, or over
            the draws when there is one batch; ``sam``/``worst``: over batches; NaN for
            one batch).
        loss: mean over batches of L_S(w) (L_train on those examples).
        perturbed_loss: mean of L_S(w+δ_S) (``avg``: L^N_train).
        per_batch: ``value`` of each batch.
        radius: the largest ‖δ ⊘ c‖_p of the perturbations used (≤ ρ; ``avg``: NaN).
        n_params: parameters perturbed.
        n_forward, n_backward: passes over a batch spent on this block.
        seconds: wall time for this block.
    """

    value: float
    stderr: float
    loss: float
    perturbed_loss: float
    per_batch: tuple[float, ...]
    radius: float
    n_params: int
    n_forward: int
    n_backward: int
    seconds: float


@dataclass(frozen=True)
class SharpnessResult:
    """Sharpness of each requested block and the settings that produced it."""

    kind: str
    p: str
    rho: float
    adaptive: bool
    m: int
    n_samples: int
    n_batches: int
    blocks: dict[str, BlockSharpness]
    params: dict[str, list[str]]
    steps: int
    restarts: int
    draws: int
    init: str
    bn: str
    seed: int
    dtype: str
    device: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The settings as plain values (JSON / HDF5 attributes)."""
        s: dict[str, Any] = {"kind": self.kind, "rho": self.rho, "adaptive": self.adaptive,
                             "m": self.m, "n_samples": self.n_samples, "bn": self.bn,
                             "seed": self.seed, "dtype": self.dtype, "device": self.device}
        if self.kind == "avg":
            s["draws"] = self.draws
        else:
            s["p"] = self.p
        if self.kind == "worst":
            s.update(steps=self.steps, restarts=self.restarts, init=self.init)
        return s


# -- the APGD step-size schedule ------------------------------------------------------------

def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which Auto-PGD may halve its step (Croce & Hein 2020, §3.2):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), at ⌈p_j · steps⌉
    below ``steps``, each once (exact: p in whole hundredths, no float round-up of
    0.57 · 100 to 58)."""
    prev, cur = 0, 22  # hundredths
    marks: list[int] = []
    while cur < 100:
        w = -(-cur * steps // 100)  # ceil, in integers
        if 0 < w < steps and (not marks or w != marks[-1]):
            marks.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return marks


# -- helpers ---------------------------------------------------------------------------------

def _check(kind: str, p: str, rho: float | None, m: int, steps: int, restarts: int, draws: int,
           init: str, bn: str) -> tuple[str, float | None]:
    if kind not in KINDS:
        raise SpecError(f"unknown sharpness kind {kind!r}; valid: {', '.join(KINDS)}",
                        param="kind")
    p = str(p).lower().replace("linf", "inf").replace("l2", "2")
    if p not in NORMS:
        raise SpecError(f"unknown norm p={p!r}; valid: 2, inf", param="p")
    if rho is not None and not (isinstance(rho, (int, float)) and math.isfinite(rho)
                                and rho > 0):
        raise SpecError(f"rho must be a finite number > 0, got {rho!r}", param="rho")
    for name, v, lo in (("m", m, 1), ("steps", steps, 1), ("restarts", restarts, 1),
                        ("draws", draws, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise SpecError(f"{name} must be an integer >= {lo}, got {v!r}", param=name)
    if init not in INITS:
        raise SpecError(f"unknown init {init!r}; valid: {', '.join(INITS)}", param="init")
    if bn not in BN_MODES:
        raise SpecError(f"unknown BatchNorm mode {bn!r}; valid: {', '.join(BN_MODES)}",
                        param="bn")
    return p, rho


def _batches_of(data: Any, m: int, device: torch.device,
                dtype: torch.dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of exactly ``m`` examples (an iterable's own batches joined or
    cut); the partial remainder is not yielded."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    have = 0
    for x, y in data.batches(m, device=device, dtype=dtype):
        xs.append(x)
        ys.append(y)
        have += len(x)
        while have >= m:
            bx, by = torch.cat(xs), torch.cat(ys)
            yield bx[:m], by[:m]
            xs, ys, have = [bx[m:]], [by[m:]], have - m


class _Block:
    """The parameters of one block: their originals, the scaling c, and the arithmetic of
    perturbations as flat vectors (one per parameter tensor kept as a list)."""

    def __init__(self, params: list[nn.Parameter], adaptive: bool) -> None:
        self.params = params
        self.orig = [p.detach().clone() for p in params]
        self.c = [o.abs() if adaptive else torch.ones_like(o) for o in self.orig]

    def set(self, u: list[torch.Tensor] | None) -> None:
        """Weights w + c ⊙ u (u None: w)."""
        with torch.no_grad():
            for p, o, c, ui in zip(self.params, self.orig, self.c,
                                   u or [None] * len(self.params), strict=True):
                p.copy_(o if ui is None else o + c * ui)

    def restore(self) -> None:
        self.set(None)


def _norm(u: Sequence[torch.Tensor], p: str) -> float:
    if p == "inf":
        return max((float(t.abs().max()) for t in u if t.numel()), default=0.0)
    return math.sqrt(sum(float(t.double().square().sum()) for t in u))


def _project(u: list[torch.Tensor], p: str, rho: float) -> list[torch.Tensor]:
    """Euclidean projection onto {‖u‖_p ≤ ρ} (exact for both norms)."""
    if p == "inf":
        return [t.clamp(-rho, rho) for t in u]
    n = _norm(u, "2")
    return u if n <= rho else [t * (rho / n) for t in u]


def _direction(gu: list[torch.Tensor], p: str) -> list[torch.Tensor] | None:
    """The steepest-ascent direction of unit ‖·‖_p-dual step: g/‖g‖₂ (ℓ2), sign(g) (ℓ∞);
    None when the gradient vanishes."""
    if p == "inf":
        return [t.sign() for t in gu] if any(bool((t != 0).any()) for t in gu) else None
    n = _norm(gu, "2")
    return None if n == 0 or not math.isfinite(n) else [t / n for t in gu]


def _random_point(shapes: list[torch.Tensor], p: str, rho: float,
                  gen: torch.Generator) -> list[torch.Tensor]:
    """A random feasible u: uniform on the ℓ2 sphere of radius ρ, or uniform in the box."""
    if p == "inf":
        return [((torch.rand(t.shape, generator=gen, dtype=torch.float64) * 2 - 1) * rho)
                .to(t.device, t.dtype) for t in shapes]
    z = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in shapes]
    n = math.sqrt(sum(float(v.square().sum()) for v in z)) or 1.0
    return [(v * (rho / n)).to(t.device, t.dtype) for v, t in zip(z, shapes, strict=True)]


# -- the measure -----------------------------------------------------------------------------

def sharpness(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    *,
    kind: str = "worst",
    rho: float | None = None,
    p: str = "2",
    adaptive: bool = False,
    m: int = 128,
    blocks: Sequence[str] | str = ("whole",),
    regex: dict[str, str] | None = None,
    loss: str | Callable[..., torch.Tensor] = "ce",
    label_smoothing: float = 0.0,
    steps: int = 20,
    restarts: int = 1,
    init: str = "sam",
    draws: int = 8,
    bn: str = "eval",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SharpnessResult:
    """Average-case, first-order (SAM) or worst-case m-sharpness of each block.

    Args:
        model: any ``nn.Module`` mapping inputs to logits; restored exactly afterwards.
        data, targets: ``(inputs, targets)`` tensors or an iterable of ``(x, y)`` batches;
            consecutive batches of ``m`` examples are the sets S.
        kind: ``avg``, ``sam`` or ``worst`` (see the module docstring).
        rho: radius (``avg``: the noise's standard deviation); None: :func:`default_rho`.
        p: ``"2"`` or ``"inf"`` (``sam`` and ``worst``).
        adaptive: scale by c = |w| (ASAM's adaptive sharpness).
        m: examples per set S (m-sharpness).
        blocks, regex: blocks to perturb, as :func:`~geomkit.geometry.hessian.hessian_eigs`.
        loss, label_smoothing: the loss (as every measurement).
        steps: ascent steps (``worst``; 20 as the reference evaluation).
        restarts: ascents per batch (``worst``), the first from ``init``, the others from
            random feasible points; the best counts.
        init: ``sam`` (start at SAM's ascent point: the worst case is then never below the
            first-order value; a random point where the gradient vanishes) or ``random``
            (the reference code's start).
        draws: noise draws per batch (``avg``).
        bn: BatchNorm ``eval`` (running statistics) or ``train`` (batch statistics).
        dtype, device: compute dtype/device (None: the model's); a copy when they differ.
        seed: seeds noise and random starts.
        progress: a tqdm bar over (block, batch) on stderr.

    Raises:
        SpecError: bad options, or fewer than ``m`` examples.
        BlockError: a block that matches no trainable parameter.
    """
    t0 = time.perf_counter()
    p, rho = _check(kind, p, rho, m, steps, restarts, draws, init, bn)
    radius = float(default_rho(kind, adaptive, p) if rho is None else rho)
    per_example = resolve_loss(loss, label_smoothing)
    resolved = resolve_blocks(model, blocks, regex)
    ad = as_data(data, targets)
    if bn == "train" and m < 2:
        raise SpecError("bn='train' normalizes with batch statistics, which need m >= 2",
                        param="m")
    if ad.n < m:
        raise SpecError(f"m = {m} exceeds the {ad.n} analysis examples (m-sharpness needs "
                        "at least one full batch of m)", param="m")
    n_batches = ad.n // m
    work, run_device, run_dtype = work_model(model, device, dtype)
    named = dict(work.named_parameters())

    def batch_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_example(logits_of(work(x)), y).mean()

    out: dict[str, BlockSharpness] = {}
    bar = progress_bar(len(resolved) * n_batches, progress, f"sharpness {kind}", "batch")
    states: list[_Block] = []
    try:
        with analysis_mode(work, bn, untracked=True):
            for bname, pnames in resolved.items():
                tb = time.perf_counter()
                blk = _Block([named[n] for n in pnames], adaptive)
                states.append(blk)
                vals, clean, pert, radii = [], [], [], []
                errs: list[float] = []
                counts = [0, 0]  # forward, backward
                for k, (x, y) in enumerate(_batches_of(ad, m, run_device, run_dtype)):
                    if k >= n_batches:
                        break
                    # seeded by the block's name, not its position: a block's numbers do
                    # not depend on which other blocks were asked for
                    gen = torch.Generator().manual_seed(
                        ((int(seed) * 1_000_003 + zlib.crc32(bname.encode())) * 1_000_003
                         + k) % (1 << 63))
                    v, l0, lp, r, draw_vals = _one_batch(
                        kind, blk, batch_loss, x, y, p, radius, steps, restarts, init, draws,
                        gen, counts)
                    vals.append(v)
                    clean.append(l0)
                    pert.append(lp)
                    radii.append(r)
                    errs.extend(draw_vals)
                    bar.update(1)
                blk.restore()
                out[bname] = BlockSharpness(
                    value=_mean(vals), stderr=_stderr(vals, errs if n_batches == 1 else None),
                    loss=_mean(clean), perturbed_loss=_mean(pert), per_batch=tuple(vals),
                    radius=max(radii) if kind != "avg" else math.nan,
                    n_params=sum(named[n].numel() for n in pnames),
                    n_forward=counts[0], n_backward=counts[1],
                    seconds=time.perf_counter() - tb)
    finally:
        bar.close()
        for blk in states:  # never leave a weight perturbed (also on error)
            blk.restore()
    return SharpnessResult(
        kind=kind, p=p, rho=radius, adaptive=adaptive, m=m, n_samples=n_batches * m,
        n_batches=n_batches, blocks=out, params=resolved, steps=steps, restarts=restarts,
        draws=draws, init=init, bn=bn, seed=seed, dtype=str(run_dtype).replace("torch.", ""),
        device=str(run_device), seconds=time.perf_counter() - t0)


def _mean(v: Sequence[float]) -> float:
    return float(sum(v) / len(v)) if v else math.nan


def _stderr(per_batch: Sequence[float], draws: Sequence[float] | None) -> float:
    """Standard error over batches; with one batch, over its noise draws (``avg``)."""
    v = list(draws) if draws else list(per_batch)
    if len(v) < 2:
        return math.nan
    mu = sum(v) / len(v)
    return math.sqrt(sum((a - mu) ** 2 for a in v) / (len(v) - 1) / len(v))


def _loss_and_grad(blk: _Block, batch_loss: Callable, x: torch.Tensor, y: torch.Tensor,
                   counts: list[int]) -> tuple[float, list[torch.Tensor]]:
    with torch.enable_grad():
        value = batch_loss(x, y)
        g = torch.autograd.grad(value, blk.params, allow_unused=True)
    counts[0] += 1
    counts[1] += 1
    grads = [torch.zeros_like(q) if gi is None else gi.detach()
             for q, gi in zip(blk.params, g, strict=True)]
    return float(value.detach()), grads


def _loss(batch_loss: Callable, x: torch.Tensor, y: torch.Tensor, counts: list[int]) -> float:
    with torch.no_grad():
        counts[0] += 1
        return float(batch_loss(x, y))


def _one_batch(kind: str, blk: _Block, batch_loss: Callable, x: torch.Tensor, y: torch.Tensor,
               p: str, rho: float, steps: int, restarts: int, init: str, draws: int,
               gen: torch.Generator, counts: list[int]
               ) -> tuple[float, float, float, float, list[float]]:
    """(value, clean loss, perturbed loss, radius used, per-draw values) of one batch."""
    blk.restore()
    if kind == "avg":
        l0 = _loss(batch_loss, x, y, counts)
        got = []
        for _ in range(draws):
            u = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
                 * rho for o in blk.orig]
            blk.set(u)
            got.append(_loss(batch_loss, x, y, counts))
        blk.restore()
        lp = _mean(got)
        return lp - l0, l0, lp, math.nan, [g - l0 for g in got]
    l0, g = _loss_and_grad(blk, batch_loss, x, y, counts)
    gu = [gi * c for gi, c in zip(g, blk.c, strict=True)]  # ∇_u L = c ⊙ ∇_δ L
    d = _direction(gu, p)
    if kind == "sam":
        if d is None:
            return 0.0, l0, l0, 0.0, []
        u = [t * rho for t in d]
        blk.set(u)
        lp = _loss(batch_loss, x, y, counts)
        blk.restore()
        return lp - l0, l0, lp, _norm(u, p), []
    best_loss, best_u = l0, None
    for r in range(restarts):
        if r == 0 and init == "sam" and d is not None:
            u0 = [t * rho for t in d]
        else:
            u0 = _random_point(blk.orig, p, rho, gen)
        lr, ur = _apgd(blk, batch_loss, x, y, u0, p, rho, steps, counts)
        if lr > best_loss:
            best_loss, best_u = lr, ur
    blk.restore()
    return best_loss - l0, l0, best_loss, (_norm(best_u, p) if best_u else 0.0), []


def _apgd(blk: _Block, batch_loss: Callable, x: torch.Tensor, y: torch.Tensor,
          u0: list[torch.Tensor], p: str, rho: float, steps: int,
          counts: list[int]) -> tuple[float, list[torch.Tensor]]:
    """Auto-PGD in u-space from ``u0``: the best (loss, u) of every point evaluated.

    Each step evaluates the current point's loss and gradient (one forward and backward),
    then moves: z = P(u + η·dir(∇_u L)), u⁺ = P(u + α(z − u) + (1 − α)(u − u⁻)), α = 0.75
    (1 on the first step).
    At each APGD checkpoint the step η (from 2ρ) is halved, and the ascent continues from
    the best point, when fewer than 75 % of the steps since the last checkpoint raised the
    loss, or when neither η nor the best loss changed since then.
    """
    marks = set(apgd_checkpoints(steps))
    eta, alpha = 2.0 * rho, 0.75
    u = _project(u0, p, rho)
    u_prev = u
    best_loss, best_u, best_g = -math.inf, u, None
    last_loss = -math.inf
    improved, since = 0, 0
    eta_at_mark, best_at_mark = eta, -math.inf
    evaluated = False  # whether u's loss is known (the loop ends on an unevaluated move)
    for i in range(steps):
        blk.set(u)
        cur, g = _loss_and_grad(blk, batch_loss, x, y, counts)
        evaluated = True
        if not math.isfinite(cur):
            break
        if cur > last_loss:
            improved += 1
        since += 1
        last_loss = cur
        if cur > best_loss:
            best_loss, best_u, best_g = cur, u, g
        if i in marks:
            stalled = improved < 0.75 * since
            unchanged = eta == eta_at_mark and best_loss == best_at_mark
            eta_at_mark, best_at_mark = eta, best_loss
            improved = since = 0
            if stalled or unchanged:
                eta /= 2.0
                if best_u is not u and best_g is not None:  # go on from the best point
                    u = u_prev = best_u
                    g = best_g
        d = _direction([gi * c for gi, c in zip(g, blk.c, strict=True)], p)
        if d is None:
            break
        z = _project([a + eta * b for a, b in zip(u, d, strict=True)], p, rho)
        a_i = 1.0 if i == 0 else alpha  # APGD's first step has no momentum term
        nxt = _project([a + a_i * (zi - a) + (1 - a_i) * (a - b)
                        for a, zi, b in zip(u, z, u_prev, strict=True)], p, rho)
        u_prev, u = u, nxt
        evaluated = False
    if not evaluated:
        blk.set(u)
        final = _loss(batch_loss, x, y, counts)
        if final > best_loss:
            best_loss, best_u = final, u
    return best_loss, best_u
