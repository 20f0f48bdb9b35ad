"""Lanczos with full reorthogonalization for extreme eigenvalues of a symmetric operator.

Given a symmetric operator A (a Hessian block, applied matrix-free) and a start
vector q_1, Lanczos builds an orthonormal basis Q_m = [q_1 … q_m] of the Krylov
space K_m(A, q_1) in which A is tridiagonal,

    A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ,   T_m = tridiag(β_{j-1}, α_j, β_j).

The eigenpairs (θ_i, s_i) of T_m (Ritz values and vectors) approximate A's
extreme eigenvalues; Ritz vector y_i = Q_m s_i has the residual

    ‖A y_i − θ_i y_i‖ = |β_m s_{m,i}|,

a computable bound on the eigenvalue error (for a symmetric A some eigenvalue
lies within it of θ_i).  Unlike power iteration, which converges to the
eigenvalue of largest *magnitude*, the top Ritz value converges to the
algebraically largest eigenvalue λ_max even when λ_min < −λ_max.

Every new vector is reorthogonalized against the whole basis (classical
Gram-Schmidt, twice), so no spurious copies of converged eigenvalues appear.
The basis lives on the operator's device in its dtype (memory m·n numbers);
T_m's eigenproblem is solved in float64 on the CPU.  The start vector is
Gaussian from a seeded ``torch.Generator`` on the CPU, so runs are bitwise
repeatable on CPU.

Stopping rule.  For a Ritz pair (θ_i, y_i) with residual r_i = |β_m s_{m,i}|:

* some eigenvalue λ of A satisfies |λ − θ_i| ≤ r_i (always);
* if δ_i is the distance from θ_i to the rest of A's spectrum (every eigenvalue
  but the λ that θ_i approximates), then |λ − θ_i| ≤ r_i²/δ_i (Kato–Temple;
  Parlett, *The Symmetric Eigenvalue Problem*, Thm 11.7.1).  Near convergence
  r_i ≪ δ_i, so this is far smaller than r_i: the plain residual rule overshoots
  (vit-tiny / resnet-tiny at tol 1e-4: errors 1e-8 / 2.5e-7).

δ_i is unknown.  It is estimated from the neighbouring Ritz values as

    δ̂_i = min_{j = i±1} (|θ_i − θ_j| − r_j)

(the Ritz gap shrunk by the neighbour's residual: an eigenvalue lies within r_j
of θ_j), and the bound used is

    e_i = max(r_i²/δ̂_i, r_i/10)   if δ̂_i > r_i and every neighbour is resolved,
    e_i = r_i                      otherwise (tiny or unknown gap; m = 1).

The run stops when, for every watched Ritz value (the top ``k``, and the
smallest if asked), both e_i < tol·|θ_i| and the relative change
|θ_i^(m) − θ_i^(m−1)| < tol·|θ_i| (|θ_i| floored at 1e-2·max_j |θ_j|, so a Ritz
value near zero is judged against the spectrum's scale); or at ``max_iter``;
or when β_m vanishes (the Krylov space is invariant: the Ritz values are exact).

The safeguards exist because Ritz values cannot show an eigenvalue the Krylov
space has not resolved yet, and δ̂_i is then far too large:

* *Resolved neighbour* (r_j ≤ 0.02·|θ_i − θ_j|, else the gap counts as
  unknown).  With two top eigenvalues 1 and 1 − g, g = 1e-3, Lanczos first
  converges to one Ritz value mixing both (error ≈ g/2) while the next Ritz value
  sits far below: the bare r²/δ̂ rule stopped there in 19 of 20 random cases at
  tol 1e-4 (errors up to 1e-3).  A neighbour resolved to 2% of the gap is
  evidence that the top of the spectrum is resolved at that scale.
* *Gain at most 10×* (r_i ≤ 10·tol·|θ_i| is still required).  A hidden
  eigenvalue at distance g couples to y_i with a residual ≥ g·c₁c₂ (c: the
  Ritz vector's weights on the two eigenvectors) and costs an error g·c₂², so if
  every other safeguard is fooled the error stays within ~10·tol·c₂/c₁.
* *Relative change.*  Early on, before the top is resolved, e_i can fall under
  the true error (a 4-epoch vit-tiny, step 4: e/θ = 3.5e-3 against an error of
  1.9e-2, the Ritz value below θ_1 at 7.7 while λ_2 = 32.2); the change test
  (2.9e-2 there) refuses to stop.  It costs at most the one step that observes
  that θ_i stopped moving, so it stays.

Measured (tests/geometry/test_lanczos.py, test_hessian.py): on the tiny case
table, every preset block's λ_max at tol 1e-4 is within 1e-4 of dense eigvalsh
(HVPs summed over all blocks: 185 → 181; at tol 1e-8: 269 → 246); on clustered top
eigenvalues (relative gaps 1e-2–7e-4, ten start seeds each) it does not stop early.  A
closer pair (gap g between ~tol and ~5·tol) can still stop it on a Ritz value inside the
pair: 1–3 of 10 seeds at g = 5e-4 … 2e-4 and tol 1e-4, errors ≤ g.  So the guarantee is an
error ≤ tol, or, when another eigenvalue lies within ~5·tol of θ, at most that distance
(``benchmarks/hessian_stop.py``; no cheaper safeguard tried does better).  Whole model,
float32, ``benchmarks/hessian.py`` (docs/benchmarks/hessian.md), HVPs before →
after: trained vit-tiny 9 → 8 (N=512 and 1024), trained resnet-tiny 9 → 8 / 10 → 9,
vit-tiny at initialization 15 → 13, resnet-tiny at initialization unchanged
(14, 15); errors ≤ 8.4e-7 on vit-tiny, 1.3e-6–7.6e-6 on resnet-tiny (the old
rule's were the same: float32 round-off).  The fewest steps whose error was
≤ 1e-4 was 1–3 fewer on trained models and 1–5 at initialization (three start seeds,
``benchmarks/hessian_start.py``): the price of the change test and of the capped gap credit.

Example:
    >>> import torch
    >>> A = torch.diag(torch.tensor([-5.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    >>> r = lanczos(lambda v: A @ v, 4, top_k=2, smallest=True)
    >>> [round(v, 6) for v in r.eigenvalues.tolist()], round(r.lambda_min, 6)
    ([3.0, 2.0], -5.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

__all__ = ["LanczosResult", "LanczosRun", "error_bounds", "lanczos", "start_vector"]

# Relative errors of Ritz values near zero are measured against this fraction of
# the largest |Ritz value| (a near-zero λ_min would otherwise never "converge").
_FLOOR = 1e-2
# Stopping rule (module docstring): a Ritz gap is trusted only when the neighbour's
# residual is at most this fraction of it ...
_RESOLVED = 0.02
# ... and the gap may shrink the error bound below the residual by at most this factor.
_MAX_GAIN = 10.0


@dataclass(frozen=True)
class LanczosResult:
    """Result of a Lanczos run.

    Attributes:
        eigenvalues: float64 (k,), the top-k Ritz values, algebraically largest first.
        residuals: float64 (k,), their residual bounds |β_m s_{m,i}| (absolute).
        error_bounds: float64 (k,), their eigenvalue error bounds e_i (absolute;
            module docstring), ≤ the residuals.
        lambda_min: the smallest Ritz value (None unless ``smallest``).
        lambda_min_residual: its residual bound (None unless ``smallest``).
        vectors: (k, n) Ritz vectors in the operator's dtype (None unless asked).
        vector_min: (n,) Ritz vector of ``lambda_min`` (None unless both asked).
        ritz_values: float64 (m,), every Ritz value of T_m, ascending.
        alphas, betas: float64 diagonal (m,) and off-diagonal (m-1,) of T_m.
        first_components: float64 (m,), s_{1,i} for the ascending Ritz values (the
            quadrature weights are their squares).
        n_iter: Lanczos steps m; n_hvps: operator applications (= m).
        seconds: wall time; converged: whether the stopping rule was met.
    """

    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    error_bounds: torch.Tensor
    lambda_min: float | None
    lambda_min_residual: float | None
    vectors: torch.Tensor | None
    vector_min: torch.Tensor | None
    ritz_values: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    first_components: torch.Tensor
    n_iter: int
    n_hvps: int
    seconds: float
    converged: bool

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[0])


def _tridiag_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the symmetric tridiagonal T (float64, LAPACK stemr), ascending."""
    d = np.asarray(alphas, dtype=np.float64)
    if d.size == 1:
        return torch.from_numpy(d.copy()), torch.ones(1, 1, dtype=torch.float64)
    w, v = scipy.linalg.eigh_tridiagonal(d, np.asarray(betas[: d.size - 1], dtype=np.float64))
    return torch.from_numpy(w), torch.from_numpy(v)


def error_bounds(theta: torch.Tensor, res: torch.Tensor, *, resolved: float = _RESOLVED,
                 max_gain: float = _MAX_GAIN) -> torch.Tensor:
    """Eigenvalue error bounds of ascending Ritz values ``theta`` with residuals ``res``.

    ``e_i = max(r_i²/δ̂_i, r_i/max_gain)`` where ``δ̂_i = min_{j=i±1}(|θ_i − θ_j| − r_j)``,
    a neighbour counting only when resolved (``r_j ≤ resolved·|θ_i − θ_j|``); ``e_i = r_i``
    when the gap is unknown or not larger than ``r_i`` (module docstring).
    """
    m = theta.numel()
    if m < 2:
        return res.clone()
    d = theta[1:] - theta[:-1]  # ascending: d_i = θ_{i+1} − θ_i ≥ 0

    def side(dist: torch.Tensor, r_nb: torch.Tensor) -> torch.Tensor:
        # gap to a neighbour, or −1 (unknown) when the neighbour is not resolved
        return torch.where(r_nb <= resolved * dist, dist - r_nb, torch.full_like(dist, -1.0))

    inf = torch.full((1,), math.inf, dtype=theta.dtype, device=theta.device)
    below = torch.cat([inf, side(d, res[:-1])])
    above = torch.cat([side(d, res[1:]), inf])
    gap = torch.minimum(below, above)
    use = gap > res
    quad = res**2 / torch.where(use, gap, torch.ones_like(gap))
    return torch.where(use, torch.maximum(quad, res / max_gain), res)


def start_vector(n: int, seed: int, dtype: torch.dtype, device: torch.device | str | None = None,
                 kind: str = "gaussian") -> torch.Tensor:
    """A unit start vector from a CPU ``torch.Generator`` seeded with ``seed`` (device-independent).

    ``kind`` is ``gaussian`` or ``rademacher`` (±1/√n).
    """
    g = torch.Generator().manual_seed(int(seed))
    if kind == "rademacher":
        v = torch.randint(0, 2, (n,), generator=g, dtype=torch.int8).to(torch.float64) * 2 - 1
    else:
        v = torch.randn(n, generator=g, dtype=torch.float64)
    v = v / torch.linalg.vector_norm(v)
    return v.to(device=device, dtype=dtype)


class LanczosRun:
    """One Lanczos iteration as a state machine, so several runs can share operator calls.

    Usage: ``while not run.done: run.feed(A(run.query))``; then ``run.result()``.

    Args:
        v0: start vector (normalised here); its dtype/device are the basis'.
        top_k: number of largest Ritz values watched by the stopping rule.
        smallest: also watch the smallest Ritz value.
        tol: relative tolerance of the stopping rule (0: run ``max_iter`` steps).
        max_iter: maximum steps (capped at n).
        min_iter: minimum steps before the rule applies (e.g. SLQ wants exactly m).
    """

    def __init__(self, v0: torch.Tensor, *, top_k: int = 1, smallest: bool = False,
                 tol: float = 1e-4, max_iter: int = 100, min_iter: int = 2) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.n = v0.numel()
        self.top_k, self.smallest, self.tol = top_k, smallest, float(tol)
        self.max_iter = max(1, min(int(max_iter), self.n))
        self.min_iter = min(max(1, min_iter), self.max_iter)
        nrm = torch.linalg.vector_norm(v0)
        if not torch.isfinite(nrm) or nrm == 0:
            raise ValueError("the start vector is zero or not finite")
        cap = min(self.max_iter, 16)
        self.Q = torch.empty((cap, self.n), dtype=v0.dtype, device=v0.device)
        self.Q[0] = v0 / nrm
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.m = 0
        self.done = False
        self.converged = False
        self._prev: torch.Tensor | None = None
        self._theta = torch.zeros(0, dtype=torch.float64)
        self._S = torch.zeros(0, 0, dtype=torch.float64)
        self._t0 = time.perf_counter()
        self.seconds = 0.0

    @property
    def query(self) -> torch.Tensor:
        """The vector to multiply next (q_{m+1})."""
        if self.done:
            raise RuntimeError("this Lanczos run has finished")
        return self.Q[self.m]

    def _watched(self, theta: torch.Tensor) -> torch.Tensor:
        m = theta.numel()
        idx = list(range(m - 1, max(m - 1 - self.top_k, -1), -1))
        if self.smallest and 0 not in idx:
            idx.append(0)
        return torch.tensor(idx, dtype=torch.long)

    def feed(self, w: torch.Tensor) -> None:
        """Give the product A q_{m+1}; advances one step and updates ``done``."""
        if self.done:
            raise RuntimeError("this Lanczos run has finished")
        j = self.m
        q = self.Q[j]
        w = w.to(dtype=q.dtype, device=q.device).clone()
        alpha = float(torch.dot(q.double(), w.double()))
        w -= alpha * q
        if j > 0:
            w -= self.betas[-1] * self.Q[j - 1]
        basis = self.Q[: j + 1]
        for _ in range(2):  # full reorthogonalization, classical Gram-Schmidt twice
            w -= basis.T @ (basis @ w)
        beta = float(torch.linalg.vector_norm(w.double()))
        self.alphas.append(alpha)
        self.m = j + 1
        theta, S = _tridiag_eigh(self.alphas, self.betas)
        self._theta, self._S = theta, S
        scale = max(float(theta.abs().max()), 1e-300) if self.m else 1.0
        # invariant subspace: the Ritz values are exact eigenvalues
        invariant = beta <= 1e-12 * scale * math.sqrt(self.n) or not math.isfinite(beta)
        idx = self._watched(theta)
        cur = theta[idx]
        err = error_bounds(theta, (beta * S[-1, :]).abs())[idx]
        ok = False
        if self._prev is not None and self._prev.numel() == cur.numel() and self.m >= self.min_iter:
            denom = cur.abs().clamp_min(max(_FLOOR * float(theta.abs().max()), 1e-300))
            change = ((cur - self._prev).abs() / denom).max()
            ok = bool(change < self.tol) and bool((err / denom).max() < self.tol)
        self._prev = cur
        self._beta = beta
        if invariant and self.m >= 1:
            self.converged, self.done = True, True
        elif ok:
            self.converged, self.done = True, True
        elif self.m >= self.max_iter:
            self.done = True
        else:
            self.betas.append(beta)
            if self.m >= self.Q.shape[0]:  # grow the basis geometrically
                cap = min(self.max_iter, 2 * self.Q.shape[0])
                grown = torch.empty((cap, self.n), dtype=self.Q.dtype, device=self.Q.device)
                grown[: self.m] = self.Q[: self.m]
                self.Q = grown
            self.Q[self.m] = w / beta
        self.seconds = time.perf_counter() - self._t0

    def result(self, vectors: bool = False) -> LanczosResult:
        """The Ritz values (and optionally vectors) of the current T_m."""
        theta, S, m = self._theta, self._S, self.m
        k = min(self.top_k, m)
        top = torch.arange(m - 1, m - 1 - k, -1)
        res = (self._beta * S[-1, :]).abs()
        err = error_bounds(theta, res)
        vecs = vmin = None
        if vectors:
            Qm = self.Q[:m]
            vecs = (S[:, top].T.to(Qm.dtype).to(Qm.device) @ Qm)
            if self.smallest:
                vmin = S[:, 0].to(Qm.dtype).to(Qm.device) @ Qm
        return LanczosResult(
            eigenvalues=theta[top].clone(),
            residuals=res[top].clone(),
            error_bounds=err[top].clone(),
            lambda_min=float(theta[0]) if self.smallest else None,
            lambda_min_residual=float(res[0]) if self.smallest else None,
            vectors=vecs,
            vector_min=vmin,
            ritz_values=theta.clone(),
            alphas=torch.tensor(self.alphas, dtype=torch.float64),
            betas=torch.tensor(self.betas[: m - 1], dtype=torch.float64),
            first_components=S[0, :].clone(),
            n_iter=m,
            n_hvps=m,
            seconds=self.seconds,
            converged=self.converged,
        )


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    top_k: int = 1,
    smallest: bool = False,
    tol: float = 1e-4,
    max_iter: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    return_vectors: bool = False,
    v0: torch.Tensor | None = None,
) -> LanczosResult:
    """Top-k (and optionally smallest) eigenvalues of a symmetric operator by Lanczos.

    Args:
        matvec: v ↦ A v on flat vectors of length ``n``.
        n: dimension.
        top_k: number of algebraically largest eigenvalues returned (≥ 1).
        smallest: also return λ_min (often negative for a Hessian).
        tol: stop when every watched Ritz value's relative change and relative
            error bound e_i/|θ_i| (residual, sharpened by the estimated spectral
            gap; module docstring) are below ``tol``.
        max_iter: maximum Lanczos steps (= operator calls), capped at ``n``.
        seed: seeds the Gaussian start vector (a CPU generator: device-independent).
        dtype, device: of the Krylov basis (the operator's).
        return_vectors: also return the Ritz vectors.
        v0: explicit start vector (overrides ``seed``).

    Returns:
        A :class:`LanczosResult`.
    """
    if v0 is None:
        v0 = start_vector(n, seed, dtype, device)
    run = LanczosRun(v0, top_k=top_k, smallest=smallest, tol=tol, max_iter=max_iter)
    while not run.done:
        run.feed(matvec(run.query))
    return run.result(vectors=return_vectors)
