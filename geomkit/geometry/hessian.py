"""Extreme Hessian eigenvalues per parameter block: λ_max, top-k, λ_min.

For each block B (see :mod:`geomkit.geometry.blocks`) this finds the extreme
eigenvalues of the diagonal Hessian block

    H_BB = ∂²L / ∂θ_B ∂θ_Bᵀ,   L(θ) = (1/N) Σ_i CE(f(x_i; θ), y_i),

the other parameters held fixed, by Lanczos with full reorthogonalization
(:mod:`geomkit.geometry.lanczos`) on matrix-free products
(:mod:`geomkit.geometry.hvp`).  λ_max is the algebraically largest eigenvalue
(not the largest in magnitude, which power iteration would return), the
sharpness of the paper's Tables 1 and 3.

Several blocks are run in *lockstep*: every Lanczos step multiplies all
unconverged blocks' vectors in one operator call, which shares the forward and
first backward (``stream``/``func`` recomputation) or the retained graph
(``reuse``).  Measured on the shared 2-core CPU box (``benchmarks/hessian.py``,
``docs/benchmarks/hessian.md``; paper blocks, N=512 digits, trained vit-tiny /
resnet-tiny): with ``stream`` lockstep took 0.77x / 0.73x the time of running the
blocks one after another; with ``reuse`` 0.98x / 0.95x (the retained graph is
shared either way).  Lockstep is never slower, so it is the default
(``schedule="sequential"`` remains for comparison).  A vmapped product over stacked tangents
(``is_grads_batched``, ``batched=True``) gives the same products -- LayerNorm blocks
included, against the dense oracle (``tests/geometry/test_hvp.py``); the wrong LayerNorm
Hessians of this torch are ``jacrev``'s, not this path's -- but is 2.3-2.8x slower on the
CPU, so it is off by default until the GPU check has measured it on CUDA.

Example:
    >>> import torch, torch.nn as nn
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    >>> r = hessian_eigs(m, x, y, blocks=("whole",), regex={"last": r"^2\\."}, tol=1e-8)
    >>> sorted(r.blocks), r.blocks["whole"].n_params
    (['last', 'whole'], 67)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from geomkit.errors import SpecError
from geomkit.geometry._work import progress_bar
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.hvp import BN_MODES, STRATEGIES, HessianOperator
from geomkit.geometry.lanczos import LanczosRun, start_vector

__all__ = ["BlockEigs", "HessianResult", "hessian_eigs", "lambda_max", "SCHEDULES"]

SCHEDULES = ("lockstep", "sequential")


@dataclass(frozen=True)
class BlockEigs:
    """Extreme eigenvalues of one diagonal Hessian block H_BB.

    Attributes:
        lambda_max: the algebraically largest eigenvalue (Ritz value).
        eigenvalues: the top-k Ritz values, largest first.
        residuals: their residual bounds |β_m s_{m,i}| = ‖H y_i − θ_i y_i‖.
        error_bounds: their eigenvalue error bounds (the residual sharpened by the
            estimated spectral gap, what the stopping rule tests; see
            :mod:`geomkit.geometry.lanczos`).
        lambda_min: the smallest Ritz value (None unless asked).
        lambda_min_residual: its residual bound (None unless asked).
        n_params: the block's number of parameters.
        n_hvps: Hessian-vector products used.
        seconds: wall time attributed to this block (lockstep: shared calls split
            evenly among the blocks they served).
        converged: whether the stopping rule was met before ``max_iter``.
        vectors: (k, n) unit eigenvector estimates, in the block's parameter order
            (None unless ``return_vectors``).
        vector_min: the eigenvector estimate of λ_min (None unless asked).
    """

    lambda_max: float
    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    lambda_min: float | None
    lambda_min_residual: float | None
    n_params: int
    n_hvps: int
    seconds: float
    converged: bool
    error_bounds: tuple[float, ...] = ()
    vectors: torch.Tensor | None = field(default=None, repr=False)
    vector_min: torch.Tensor | None = field(default=None, repr=False)

    @property
    def residual(self) -> float:
        """Residual bound of λ_max."""
        return self.residuals[0]

    @property
    def error_bound(self) -> float:
        """Error bound of λ_max."""
        return self.error_bounds[0]


@dataclass(frozen=True)
class HessianResult:
    """Per-block extreme eigenvalues and the settings that produced them.

    Attributes:
        blocks: block name → :class:`BlockEigs`, in the requested order.
        params: block name → parameter names.
        n_samples: N, the analysis examples the loss averages over.
        strategy: the HVP strategy used (``reuse``/``stream``/``func``).
        schedule: ``lockstep`` or ``sequential``.
        bn: ``eval`` or ``train`` BatchNorm statistics.
        batch_size, dtype, device, seed, tol, max_iter, top_k: the settings.
        graph_bytes: estimated retained-graph bytes (``auto`` only).
        seconds: total wall time.
    """

    blocks: dict[str, BlockEigs]
    params: dict[str, list[str]]
    n_samples: int
    strategy: str
    schedule: str
    bn: str
    batch_size: int | None
    dtype: str
    device: str
    seed: int
    tol: float
    max_iter: int
    top_k: int
    graph_bytes: int | None
    seconds: float

    def settings(self) -> dict[str, Any]:
        """The settings as plain values (for JSON / HDF5 attributes)."""
        return {
            "n_samples": self.n_samples, "strategy": self.strategy, "schedule": self.schedule,
            "bn": self.bn, "batch_size": self.batch_size, "dtype": self.dtype,
            "device": self.device, "seed": self.seed, "tol": self.tol,
            "max_iter": self.max_iter, "top_k": self.top_k,
        }


def hessian_eigs(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    *,
    loss: str | Callable[..., torch.Tensor] = "ce",
    label_smoothing: float = 0.0,
    blocks: Sequence[str] | str = ("whole",),
    regex: dict[str, str] | None = None,
    top_k: int = 1,
    smallest: bool = False,
    tol: float = 1e-4,
    max_iter: int = 100,
    batch_size: int | None = None,
    strategy: str = "auto",
    schedule: str = "lockstep",
    bn: str = "eval",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    memory_budget: int | None = None,
    batched: bool = False,
    start: dict[str, torch.Tensor] | None = None,
    scale: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> HessianResult:
    """λ_max, top-k and optionally λ_min of each diagonal Hessian block H_BB.

    Args:
        model: any ``nn.Module`` mapping inputs to logits; left unchanged (mode,
            parameters, ``requires_grad``, BatchNorm buffers).
        data, targets: the analysis data (N examples): ``(inputs, targets)`` tensors or
            any iterable of ``(x, y)`` batches (a DataLoader); the loss is their mean
            cross-entropy.
        blocks: preset block names (``paper``, ``whole``, ``embedding``, ``attn``,
            ``mlp``, ``token_mlp``, ``channel_mlp``, ``block{k}``).
        regex: user blocks, name → regex on parameter names.
        top_k: number of largest eigenvalues per block.
        smallest: also compute λ_min.
        tol: relative tolerance on the Ritz values' change and error bound.
        max_iter: maximum Lanczos steps (HVPs) per block.
        batch_size: analysis mini-batch (None: all at once, or what fits memory).
        strategy: HVP strategy, ``auto``/``reuse``/``stream``/``func``.
        schedule: ``lockstep`` (blocks share operator calls) or ``sequential``.
        bn: ``eval`` (running statistics) or ``train`` (batch statistics).
        dtype: compute dtype (None: the model's), e.g. ``torch.float64``.
        device: compute device (None: the model's).
        seed: seeds every block's start vector.
        return_vectors: also return eigenvector estimates.
        memory_budget: bytes allowed for the retained graph under ``auto``.
        batched: the lockstep blocks' products in one vmapped backward
            (:class:`~geomkit.geometry.hvp.HessianOperator`); off by default (slower on
            CPU).
        start: block → start vector (length ``n_params``, the block's parameter order, e.g.
            a previous run's ``vectors[0]``: a warm start); blocks not named start from the
            seeded Gaussian.
        scale: block → positive vector s: the eigenvalues are those of
            diag(s) H_BB diag(s) instead of H_BB -- with s = p^(-1/2) those of the
            preconditioned P⁻¹H_BB, P = diag(p) (similar matrices); ``vectors`` are then
            the eigenvectors of diag(s) H_BB diag(s).
        progress: show a tqdm bar of Lanczos steps on stderr.

    Returns:
        A :class:`HessianResult`.

    Raises:
        BlockError: unknown block or a block matching no trainable parameter.
        SpecError: invalid options.
    """
    t0 = time.perf_counter()
    if top_k < 1:
        raise SpecError(f"top_k must be >= 1, got {top_k}")
    if max_iter < 1:
        raise SpecError(f"max_iter must be >= 1, got {max_iter}")
    if top_k > max_iter:
        raise SpecError(f"top_k {top_k} exceeds max_iter {max_iter}: Lanczos finds at most "
                        "one eigenvalue per step", param="top_k")
    if not tol >= 0:
        raise SpecError(f"tol must be >= 0, got {tol}")
    if schedule not in SCHEDULES:
        raise SpecError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if strategy not in STRATEGIES:
        raise SpecError(f"unknown HVP strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if bn not in BN_MODES:
        raise SpecError(f"unknown BatchNorm mode {bn!r}; valid: {', '.join(BN_MODES)}")
    resolved = resolve_blocks(model, blocks, regex)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    for b, names in resolved.items():
        d = sum(numel[n] for n in names)
        if d < top_k:
            raise SpecError(f"top_k {top_k} exceeds block {b!r}'s {d} parameters (a {d}x{d} "
                            "Hessian has that many eigenvalues)", param="top_k")
    op = HessianOperator(model, data, targets, resolved, loss=loss,
                         label_smoothing=label_smoothing, batch_size=batch_size,
                         strategy=strategy, bn=bn, dtype=dtype, device=device,
                         memory_budget=memory_budget, batched=batched)
    starts = _block_vectors(start, op.dims, op.dtype, op.device, "start")
    scales = _block_vectors(scale, op.dims, op.dtype, op.device, "scale")
    for b, s in scales.items():
        if not bool(torch.all(s > 0)) or not bool(torch.all(torch.isfinite(s))):
            raise SpecError(f"scale of block {b!r} must be positive and finite", param="scale")
    runs = {
        b: LanczosRun(starts[b] if b in starts else
                      start_vector(op.dims[b], seed, op.dtype, op.device), top_k=top_k,
                      smallest=smallest, tol=tol, max_iter=max_iter)
        for b in resolved
    }
    spent = {b: 0.0 for b in resolved}
    bar = progress_bar(sum(r.max_iter for r in runs.values()), progress, "lanczos", "hvp")
    try:
        groups = [list(resolved)] if schedule == "lockstep" else [[b] for b in resolved]
        for group in groups:
            while True:
                active = [b for b in group if not runs[b].done]
                if not active:
                    break
                bar.set_description(",".join(active) if len(active) < 4 else "lanczos")
                t1 = time.perf_counter()
                outs = op.matvecs([(b, runs[b].query * scales[b] if b in scales
                                    else runs[b].query) for b in active])
                for b, w in zip(active, outs, strict=True):
                    runs[b].feed(w * scales[b] if b in scales else w)
                dt = (time.perf_counter() - t1) / len(active)
                for b in active:
                    spent[b] += dt
                    bar.update(runs[b].max_iter - runs[b].m + 1 if runs[b].done else 1)
    finally:
        bar.close()
        op.release()
    out: dict[str, BlockEigs] = {}
    for b, run in runs.items():
        r = run.result(vectors=return_vectors)
        out[b] = BlockEigs(
            lambda_max=float(r.eigenvalues[0]),
            eigenvalues=tuple(float(v) for v in r.eigenvalues),
            residuals=tuple(float(v) for v in r.residuals),
            lambda_min=r.lambda_min,
            lambda_min_residual=r.lambda_min_residual,
            n_params=op.dims[b],
            n_hvps=r.n_hvps,
            seconds=spent[b],
            # a NaN/inf Ritz value (NaN weights, an overflowing loss) is never "converged"
            converged=bool(r.converged) and all(math.isfinite(float(v))
                                                for v in r.eigenvalues),
            error_bounds=tuple(float(v) for v in r.error_bounds),
            vectors=r.vectors,
            vector_min=r.vector_min,
        )
    return HessianResult(
        blocks=out, params=resolved, n_samples=op.n_total, strategy=op.strategy,
        schedule=schedule, bn=bn, batch_size=op.batch_size,
        dtype=str(op.dtype).replace("torch.", ""),
        device=str(op.device), seed=seed, tol=tol, max_iter=max_iter, top_k=top_k,
        graph_bytes=op.graph_bytes, seconds=time.perf_counter() - t0,
    )


def _block_vectors(given: dict[str, torch.Tensor] | None, dims: dict[str, int],
                   dtype: torch.dtype, device: torch.device, what: str) -> dict[str, torch.Tensor]:
    """``given`` (block → flat vector) checked against the blocks' sizes and converted."""
    out: dict[str, torch.Tensor] = {}
    for b, v in (given or {}).items():
        if b not in dims:
            raise SpecError(f"{what} names block {b!r}, which is not measured; blocks: "
                            f"{', '.join(dims)}", param=what)
        v = torch.as_tensor(v).detach().reshape(-1)
        if v.numel() != dims[b]:
            raise SpecError(f"{what} of block {b!r} has {v.numel()} entries, the block "
                            f"{dims[b]} parameters", param=what)
        v = v.to(device=device, dtype=dtype)
        if what == "start" and not (bool(torch.all(torch.isfinite(v))) and bool(v.any())):
            raise SpecError(f"start vector of block {b!r} is zero or not finite", param=what)
        out[b] = v
    return out


def lambda_max(model: nn.Module, data: Any, targets: torch.Tensor | None = None,
               **kwargs: Any) -> HessianResult:
    """λ_max per block: :func:`hessian_eigs` with ``top_k=1`` (same keyword options)."""
    kwargs.setdefault("top_k", 1)
    return hessian_eigs(model, data, targets, **kwargs)
