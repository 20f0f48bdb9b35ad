"""Hessian trace (Hutchinson) and spectral density (stochastic Lanczos quadrature), per block.

**Trace.**  For Rademacher probes z (entries ±1, E[z zᵀ] = I),

    tr(H_BB) = E[zᵀ H_BB z]  ≈  (1/P) Σ_p z_pᵀ H_BB z_p,

with standard error s/√P (s the sample standard deviation of the P terms).

**Density.**  The spectral density φ(t) = (1/n) Σ_j δ(t − λ_j) is estimated by
stochastic Lanczos quadrature: for a unit start vector q (a normalised Rademacher
probe), m Lanczos steps give T_m = S diag(θ) Sᵀ and the Gauss quadrature

    qᵀ g(H) q ≈ Σ_i τ_i g(θ_i),   τ_i = s_{1,i}²   (Σ_i τ_i = 1),

so averaging over P probes gives nodes θ_{p,i} with weights τ_{p,i}/P, and the
Gaussian-broadened density

    φ_σ(t) = (1/P) Σ_p Σ_i τ_{p,i} exp(−(t − θ_{p,i})² / 2σ²) / (σ√(2π)),

which integrates to 1 and whose mean Σ τ θ / P equals the probes' average
Rayleigh quotient, i.e. the Hutchinson trace estimate over the same probes / n.
The Lanczos runs reorthogonalize fully, so there are no ghost eigenvalues.

Probes come from a CPU ``torch.Generator`` seeded with ``seed`` (the same
probes on every device and rank).  All probes of all blocks share each operator
call (one forward and first backward per mini-batch for ``stream``).

Example:
    >>> import torch, torch.nn as nn
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    >>> d = spectral_density(m, x, y, n_probes=2, n_iter=20)["whole"]
    >>> abs(float(torch.trapezoid(d.density, d.grid)) - 1) < 1e-6
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

import torch
import torch.nn as nn

from geomkit.errors import SpecError
from geomkit.geometry._work import progress_bar
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.hvp import HessianOperator, OperatorOptions
from geomkit.geometry.lanczos import LanczosRun

__all__ = ["DensityResult", "TraceResult", "hutchinson_trace", "rademacher", "spectral_density"]


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson estimate of tr(H_BB) for one block.

    Attributes:
        trace: the mean of zᵀ H z over the probes.
        stderr: its standard error s/√P (NaN for one probe).
        n_probes: P.
        n_params: the block's dimension n.
        n_hvps: Hessian-vector products used (= P).
        seconds: wall time attributed to the block.
        samples: float64 (P,), the individual zᵀ H z.
        strategy, bn: how the products were computed.
    """

    trace: float
    stderr: float
    n_probes: int
    n_params: int
    n_hvps: int
    seconds: float
    samples: torch.Tensor = field(repr=False)
    strategy: str = ""
    bn: str = "eval"


@dataclass(frozen=True)
class DensityResult:
    """Gaussian-broadened SLQ estimate of the eigenvalue density of H_BB.

    Attributes:
        grid: float64 (G,) evaluation points.
        density: float64 (G,) φ_σ on the grid (integrates to 1 over the real line;
            the grid spans the nodes ± 6σ).
        nodes: float64 (K,) all probes' Ritz values.
        weights: float64 (K,) their quadrature weights τ/P (sum to 1).
        sigma: the Gaussian width.
        n_probes, n_iter: probes and Lanczos steps per probe (at most).
        n_params, n_hvps, seconds: dimension, products used, wall time.
        strategy, bn: how the products were computed.
    """

    grid: torch.Tensor = field(repr=False)
    density: torch.Tensor = field(repr=False)
    nodes: torch.Tensor = field(repr=False)
    weights: torch.Tensor = field(repr=False)
    sigma: float
    n_probes: int
    n_iter: int
    n_params: int
    n_hvps: int
    seconds: float
    strategy: str = ""
    bn: str = "eval"

    @property
    def mean(self) -> float:
        """∫ t φ(t) dt = Σ τ θ (broadening keeps the mean): an estimate of tr(H)/n."""
        return float((self.weights * self.nodes).sum())


def rademacher(n: int, generator: torch.Generator) -> torch.Tensor:
    """A float64 vector of independent ±1 entries drawn on the CPU."""
    bits = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
    return bits.to(torch.float64) * 2 - 1


def _operator(model, data, targets, blocks, regex, kw) -> tuple[HessianOperator, dict]:
    resolved = resolve_blocks(model, blocks, regex)
    op = HessianOperator(model, data, targets, resolved, **kw)
    return op, resolved


def hutchinson_trace(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    *,
    blocks: Sequence[str] | str = ("whole",),
    regex: dict[str, str] | None = None,
    n_probes: int = 64,
    chunk: int = 8,
    seed: int = 0,
    progress: bool = False,
    **operator: Unpack[OperatorOptions],
) -> dict[str, TraceResult]:
    """Hutchinson estimates of tr(H_BB) per block, with standard errors.

    Args:
        model, data, targets: as :func:`geomkit.geometry.hessian.hessian_eigs`.
        blocks, regex: preset block names and user regex blocks.
        n_probes: Rademacher probes P per block (≥ 1; ≥ 2 for a standard error).
        chunk: probes multiplied per operator call (they share the forward pass).
        operator: ``loss``, ``label_smoothing``, ``batch_size``, ``strategy``, ``bn``,
            ``dtype``, ``device``, ``memory_budget`` of
            :class:`geomkit.geometry.hvp.HessianOperator` (:class:`OperatorOptions`).
        seed: seeds the probes (each block's probes start from the same seed).
        progress: tqdm bar of probes on stderr.

    Returns:
        Block name → :class:`TraceResult`.
    """
    if n_probes < 1 or chunk < 1:
        raise SpecError(f"n_probes and chunk must be >= 1, got {n_probes} and {chunk}")
    op, resolved = _operator(model, data, targets, blocks, regex, operator)
    gens = {b: torch.Generator().manual_seed(int(seed)) for b in resolved}
    samples: dict[str, list[float]] = {b: [] for b in resolved}
    spent = {b: 0.0 for b in resolved}
    bar = progress_bar(n_probes * len(resolved), progress, "trace", "probe")
    try:
        done = 0
        while done < n_probes:
            c = min(chunk, n_probes - done)
            reqs = [(b, rademacher(op.dims[b], gens[b]).to(op.device, op.dtype))
                    for b in resolved for _ in range(c)]
            t1 = time.perf_counter()
            outs = op.matvecs(reqs)
            dt = (time.perf_counter() - t1) / len(reqs)
            for (b, z), hz in zip(reqs, outs, strict=True):
                samples[b].append(float(torch.dot(z.double(), hz.double())))
                spent[b] += dt
            done += c
            bar.update(c * len(resolved))
    finally:
        bar.close()
        op.release()
    out = {}
    for b, s in samples.items():
        t = torch.tensor(s, dtype=torch.float64)
        se = float(t.std(unbiased=True) / math.sqrt(len(s))) if len(s) > 1 else math.nan
        out[b] = TraceResult(trace=float(t.mean()), stderr=se, n_probes=len(s),
                             n_params=op.dims[b], n_hvps=len(s), seconds=spent[b], samples=t,
                             strategy=op.strategy, bn=op.bn)
    return out


def spectral_density(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    *,
    blocks: Sequence[str] | str = ("whole",),
    regex: dict[str, str] | None = None,
    n_probes: int = 4,
    n_iter: int = 64,
    sigma: float | None = None,
    n_grid: int = 1000,
    seed: int = 0,
    progress: bool = False,
    **operator: Unpack[OperatorOptions],
) -> dict[str, DensityResult]:
    """Eigenvalue density of H_BB per block by stochastic Lanczos quadrature.

    Args:
        model, data, targets: as :func:`geomkit.geometry.hessian.hessian_eigs`.
        blocks, regex: preset block names and user regex blocks.
        n_probes: normalised Rademacher start vectors P.
        n_iter: Lanczos steps per probe (capped at the block size; fewer when the
            Krylov space becomes invariant).
        sigma: Gaussian width (None: 1% of the node range, at least 1e-6·max|θ|).
        n_grid: grid points.
        operator: ``loss``, ``label_smoothing``, ``batch_size``, ``strategy``, ``bn``,
            ``dtype``, ``device``, ``memory_budget`` of
            :class:`geomkit.geometry.hvp.HessianOperator` (:class:`OperatorOptions`).
        seed: seeds the probes.
        progress: tqdm bar of Lanczos steps on stderr.

    Returns:
        Block name → :class:`DensityResult`.
    """
    if n_probes < 1 or n_iter < 1 or n_grid < 2:
        raise SpecError("n_probes and n_iter must be >= 1 and n_grid >= 2")
    if sigma is not None and not sigma > 0:
        raise SpecError(f"sigma must be positive, got {sigma}")
    op, resolved = _operator(model, data, targets, blocks, regex, operator)
    runs: dict[str, list[LanczosRun]] = {}
    for b in resolved:
        g = torch.Generator().manual_seed(int(seed))
        runs[b] = [
            LanczosRun(rademacher(op.dims[b], g).to(op.device, op.dtype), tol=0.0,
                       max_iter=n_iter, min_iter=n_iter)
            for _ in range(n_probes)
        ]
    spent = {b: 0.0 for b in resolved}
    bar = progress_bar(min(n_iter, max(op.dims.values())), progress, "slq", "step")
    try:
        while True:
            active = [(b, r) for b in resolved for r in runs[b] if not r.done]
            if not active:
                break
            t1 = time.perf_counter()
            outs = op.matvecs([(b, r.query) for b, r in active])
            dt = (time.perf_counter() - t1) / len(active)
            for (b, r), w in zip(active, outs, strict=True):
                r.feed(w)
                spent[b] += dt
            bar.update(1)
    finally:
        bar.close()
        op.release()
    out = {}
    for b, rs in runs.items():
        results = [r.result() for r in rs]
        nodes = torch.cat([r.ritz_values for r in results])
        weights = torch.cat([r.first_components**2 for r in results]) / len(results)
        weights = weights / weights.sum()  # guard rounding; exact sum is 1
        span = float(nodes.max() - nodes.min())
        scale = max(float(nodes.abs().max()), 1e-300)
        s = float(sigma) if sigma is not None else max(0.01 * span, 1e-6 * scale)
        grid = torch.linspace(float(nodes.min()) - 6 * s, float(nodes.max()) + 6 * s, n_grid,
                              dtype=torch.float64)
        z = (grid[:, None] - nodes[None, :]) / s
        dens = (torch.exp(-0.5 * z**2) * weights[None, :]).sum(1) / (s * math.sqrt(2 * math.pi))
        out[b] = DensityResult(grid=grid, density=dens, nodes=nodes, weights=weights, sigma=s,
                               n_probes=len(rs), n_iter=max(r.n_iter for r in results),
                               n_params=op.dims[b], n_hvps=sum(r.n_hvps for r in results),
                               seconds=spent[b], strategy=op.strategy, bn=op.bn)
    return out
