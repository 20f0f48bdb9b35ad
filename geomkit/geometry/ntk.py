r"""Empirical neural tangent kernel (NTK) and its condition number.

For a network :math:`f(\cdot;\theta): \mathbb{R}^{d} \to \mathbb{R}^{C}` and inputs
:math:`x_1, \dots, x_N`, the empirical NTK is the Gram matrix of parameter gradients

.. math::

    \Theta = J J^\top, \qquad \kappa = \lambda_{\max}(\Theta) / \lambda_{\min}(\Theta),

where the rows of :math:`J` depend on ``mode``:

``sum`` (default, as TE-NAS, the code of the paper's first author)
    :math:`J_{i\cdot} = \nabla_\theta \sum_c f_c(x_i)`; :math:`\Theta` is :math:`N \times N`.
``trace``
    :math:`\Theta_{ij} = \sum_c \langle \nabla_\theta f_c(x_i), \nabla_\theta f_c(x_j)\rangle`,
    the per-logit kernels summed over logits (the trace over the logit axes of the full
    kernel); :math:`N \times N`.
``full``
    :math:`\Theta_{(i,c),(j,d)} = \langle \nabla_\theta f_c(x_i), \nabla_\theta f_d(x_j)\rangle`,
    :math:`NC \times NC` with row index :math:`i C + c` (for small cases).

:math:`\theta` is every trainable parameter or a block of them (parameter names, e.g.
from :func:`geomkit.geometry.blocks.resolve_blocks`); the others are held fixed.

**How it is computed.**  The parameters are split into *chunks* (consecutive parameter
tensors of at most ``chunk_size`` elements in total) and the kernel is accumulated as
:math:`\Theta = \sum_k J_k J_k^\top` (:math:`J_k` in the compute dtype, every product and
the sum in float64: a float32 GEMM over rows of 10^7 gradients is off by ~1e-3), so only
one chunk's Jacobian :math:`J_k` (:math:`R \times P_k`, plus a float64 copy of at most
64 MiB of its columns at a time) is ever held.  :math:`J_k` is filled ``batch_size`` rows at a time:

* samples independent of each other (no BatchNorm in train mode): per-sample gradients
  ``vmap(grad(f))`` (``sum``) or ``vmap(jacrev(f))`` (``trace``/``full``) over a
  ``torch.func.functional_call`` of the model on one example — measured on 2 CPU cores
  8-14× faster than one backward per example (``docs/benchmarks/ntk.md``) and ~30× faster
  than building
  :math:`\Theta` column by column from NTK-vector products (which need :math:`N` forward
  *and* backward passes over all :math:`N` examples each);
* BatchNorm in train mode (``bn="train"``, as TE-NAS): a BatchNorm layer normalizes with
  the statistics of the whole :math:`N`-example batch, so :math:`f(x_i)` depends on every
  :math:`x_j` and per-example gradients of single-example forwards would be wrong.  The
  model is run once on all :math:`N` inputs and the rows of the Jacobian of that batched
  forward are pulled back one by one through one retained ``torch.func.vjp``
  (:math:`e_i \otimes \mathbf 1_C` in ``sum`` mode, :math:`e_i \otimes e_c` otherwise):
  exactly what TE-NAS's per-row ``backward`` loop computes, at the same cost.  Running
  statistics are neither used nor updated (``track_running_stats`` is switched off for
  the duration and restored).

**Peak memory.**  With :math:`s` bytes per element of the compute dtype,
:math:`c' = 1` (``sum``) or :math:`C` (``trace``/``full``), :math:`R = N c'` Jacobian rows,
:math:`P_k \le` ``chunk_size`` the chunk size, :math:`b` = ``batch_size`` and :math:`A` the
bytes autograd saves for the forward of one example, the memory on top of the model is
about

.. math::

    M \approx \underbrace{R\,P_k\,s}_{J_k}
      + \underbrace{b\,c'\,(A + P_k\,s) + b\,A}_{\text{one vmapped batch}}
      + \underbrace{2 R^2 \cdot 8}_{\Theta,\ \text{eigvalsh}}

for independent samples; with BatchNorm in train mode the batch term becomes
:math:`N A + b\,(N A + P_k s)` (each pulled-back row flows through all :math:`N` examples).
The defaults (``chunk_size=None``, ``batch_size=None``) pick :math:`P_k` so that
:math:`R P_k s` plus the float64 slice (≤ 64 MiB) is at most ``memory_gib``/2 and
:math:`b` so that the batch term is at most
``memory_gib``/2, with :math:`A` measured by a one-example probe forward; so
:math:`M \lesssim` ``memory_gib`` plus the kernel.  For ``vit-b16`` at 224 px and
:math:`N = 64` (``sum``, float32, 86.6 M parameters) the default 4 GiB budget gives about
11 chunks; each needs a forward and a partial backward over the 64 images.

**Data.**  The inputs are an ``(N, ...)`` tensor, ``(inputs, targets)`` tensors or any
iterable of ``(x, y)`` (or bare ``x``) batches such as a DataLoader, whose first ``n``
inputs are gathered into one tensor (:func:`geomkit.geometry._inputs.as_input_data`): the
kernel couples all :math:`N` examples anyway, so the result does not depend on how they
were batched.  The model may return a tuple, a dict or an object with ``.logits``
(:func:`geomkit.geometry._inputs.logits_of`).  Under ``torchrun`` the parameter chunks,
not the examples, are shared out over the ranks and the kernel is all-reduced.

The model is left as it was: parameters and buffers are used through detached copies
(``functional_call``) and train/eval flags are restored, also on error.  During the
computation only BatchNorm layers follow ``bn``; every other module is in eval mode
(no dropout), so the kernel is deterministic.

Example:
    The linear model :math:`f(x) = W x` (no bias, :math:`C` outputs) has the closed-form
    kernel :math:`\Theta = C\, X X^\top` in ``sum`` mode:

    >>> import torch
    >>> x = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    >>> model = torch.nn.Linear(3, 5, bias=False).double()
    >>> r = ntk(model, x)
    >>> r.kernel.diagonal().tolist(), r.kappa
    ([5.0, 20.0, 80.0], 16.0)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.batchnorm import _BatchNorm

from geomkit import distributed
from geomkit.errors import BlockError, ModelError, SpecError
from geomkit.geometry._inputs import as_input_data, logits_of
from geomkit.geometry._work import analysis_mode, progress_bar, run_device_for

__all__ = ["NTKResult", "NTKInitResult", "MODES", "BN_MODES", "ntk", "ntk_at_init"]

MODES: tuple[str, ...] = ("sum", "trace", "full")
BN_MODES: tuple[str, ...] = ("train", "eval")

_GIB = 2**30
# the float64 copy of a Jacobian slice for the Gram (_gram_add) is at most this large
_GRAM_SLICE_BYTES = 64 * 2**20


@dataclass(frozen=True, eq=False)
class NTKResult:
    """One empirical NTK and its spectrum.

    Attributes:
        kernel: :math:`\\Theta`, float64, ``R × R`` with ``R = N`` (``sum``/``trace``) or
            ``N·C`` (``full``, row ``i·C + c``); symmetrized.
        eigenvalues: eigenvalues of ``kernel`` in ascending order, float64 (NaN when
            the kernel is not finite).
        lambda_max: largest eigenvalue.
        lambda_min: smallest eigenvalue.
        kappa: ``lambda_max / lambda_min``; ``inf`` when ``lambda_min <= 0`` or the
            spectrum is not finite (a ``RuntimeWarning`` is issued).
        mode: ``"sum"``, ``"trace"`` or ``"full"``.
        n_samples: number of inputs ``N``.
        n_outputs: number of logits ``C``.
        n_params: number of parameters differentiated (elements).
        bn: BatchNorm mode used, ``"train"`` (batch statistics) or ``"eval"``.
        method: ``"per-sample"`` (independent examples) or ``"batch-jacobian"``
            (BatchNorm in train mode couples the examples).
        n_chunks: number of parameter chunks the kernel was accumulated over.
        seconds: wall-clock time.
    """

    kernel: np.ndarray
    eigenvalues: np.ndarray
    lambda_max: float
    lambda_min: float
    kappa: float
    mode: str
    n_samples: int
    n_outputs: int
    n_params: int
    bn: str
    method: str
    n_chunks: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The scalar fields as a JSON-able dict (no kernel, no eigenvalues)."""
        return {
            **_spectrum_summary(self),
            "bn": self.bn,
            "n_params": self.n_params,
            "n_outputs": self.n_outputs,
            "method": self.method,
            "n_chunks": self.n_chunks,
            "seconds": self.seconds,
        }


@dataclass(frozen=True, eq=False)
class NTKInitResult:
    """The NTK at initialization over several seeds.

    Attributes:
        kappa: mean of the per-repeat κ (``inf`` if any repeat's κ is infinite).
        kappa_std: sample standard deviation of κ over repeats (``ddof=1``; 0 for one
            repeat; NaN when some κ is infinite).
        lambda_max: mean of the per-repeat λ_max.
        lambda_min: mean of the per-repeat λ_min.
        seeds: the seed of each repeat (``seed + r``).
        results: the per-repeat :class:`NTKResult`.
        mode: kernel mode.
        n_samples: number of inputs.
        bn: BatchNorm mode.
        seconds: total wall-clock time.
    """

    kappa: float
    kappa_std: float
    lambda_max: float
    lambda_min: float
    seeds: tuple[int, ...]
    results: tuple[NTKResult, ...] = field(repr=False)
    mode: str
    n_samples: int
    bn: str
    seconds: float

    @property
    def repeats(self) -> int:
        """Number of repeats."""
        return len(self.results)

    def summary(self) -> dict[str, Any]:
        """The scalar fields as a JSON-able dict (per-repeat κ under ``"kappas"``)."""
        return {
            **_spectrum_summary(self),
            "kappa_std": self.kappa_std,
            "bn": self.bn,
            "repeats": self.repeats,
            "seeds": list(self.seeds),
            "kappas": [r.kappa for r in self.results],
            "n_params": self.results[0].n_params if self.results else 0,
            "seconds": self.seconds,
        }


# --------------------------------------------------------------------------- helpers


def _spectrum_summary(r: NTKResult | NTKInitResult) -> dict[str, Any]:
    """The leading keys both results' summaries share, in their order."""
    return {"samples": r.n_samples, "mode": r.mode, "kappa": r.kappa,
            "lambda_max": r.lambda_max, "lambda_min": r.lambda_min}


def _select_params(model: nn.Module, params: Sequence[str] | None) -> list[str]:
    """Parameter names to differentiate, in ``named_parameters()`` order."""
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise BlockError("the model has no trainable parameter (requires_grad=True)")
        return names
    if isinstance(params, str):
        params = [params]
    if isinstance(params, dict):
        raise BlockError(
            "params takes one block's parameter names; pick one entry of resolve_blocks(), "
            "e.g. params=blocks['whole']"
        )
    wanted = list(params)
    unknown = [n for n in wanted if n not in named]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise BlockError(
            f"unknown parameter name(s) {shown}; use names from model.named_parameters() "
            "or geomkit.geometry.blocks.resolve_blocks(model, names=[...])"
        )
    if not wanted:
        raise BlockError("params is empty; pass parameter names or None for all parameters")
    keep = set(wanted)
    return [n for n in named if n in keep]


def _chunks(sizes: dict[str, int], chunk_size: int) -> list[list[str]]:
    """Split consecutive names into groups of at most ``chunk_size`` elements each.

    A single tensor larger than ``chunk_size`` forms a chunk of its own.
    """
    out: list[list[str]] = []
    cur: list[str] = []
    total = 0
    for name, n in sizes.items():
        if cur and total + n > chunk_size:
            out.append(cur)
            cur, total = [], 0
        cur.append(name)
        total += n
    if cur:
        out.append(cur)
    return out


def _saved_bytes(fn: Callable[[], torch.Tensor], exclude: set[int]) -> int:
    """Bytes autograd saves for backward while running ``fn`` (storages counted once)."""
    seen: set[int] = set(exclude)
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        try:
            ptr = t.untyped_storage().data_ptr()
            nbytes = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            return t
        if ptr not in seen:
            seen.add(ptr)
            total += nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
        fn()
    return total


def _spectrum(kernel: torch.Tensor) -> tuple[np.ndarray, float, float, float]:
    """Eigenvalues (ascending, float64), λ_max, λ_min and κ of a symmetric kernel."""
    r = kernel.shape[0]
    sym = 0.5 * (kernel + kernel.T)
    evals = None
    if bool(torch.isfinite(sym).all()):
        try:
            evals = torch.linalg.eigvalsh(sym).cpu().numpy()
        except RuntimeError:  # LAPACK failed to converge
            evals = None
    if evals is None:
        evals = np.full(r, np.nan)
        warnings.warn(
            "NTK kernel is not finite (NaN/inf gradients?); kappa set to inf",
            RuntimeWarning,
            stacklevel=3,
        )
        return evals, math.nan, math.nan, math.inf
    lmax, lmin = float(evals[-1]), float(evals[0])
    if lmin <= 0.0 or not math.isfinite(lmax / lmin):
        warnings.warn(
            f"NTK kernel is singular or indefinite (lambda_min = {lmin:.3g} <= 0, "
            f"lambda_max = {lmax:.3g}); kappa set to inf. Use fewer samples than "
            "parameters, distinct inputs, or dtype=torch.float64",
            RuntimeWarning,
            stacklevel=3,
        )
        return evals, lmax, lmin, math.inf
    return evals, lmax, lmin, lmax / lmin


# --------------------------------------------------------------------------- main


def _kernel_inputs(data: Any, n: int | None) -> torch.Tensor:
    """The ``N`` kernel inputs as one tensor: a tensor as it is (its first ``n``), else the
    first ``n`` inputs of ``(x, y)`` / bare-``x`` batches (the kernel is ``N × N`` anyway)."""
    if n is not None and (isinstance(n, bool) or int(n) < 1):
        raise SpecError(f"n must be a positive integer, got {n!r}", param="n")
    if isinstance(data, torch.Tensor):
        return data if n is None else data[: int(n)]
    if not hasattr(data, "__iter__"):
        raise SpecError("inputs must be a non-empty tensor of N examples, shape (N, ...), or "
                        f"an iterable of batches; got {type(data).__name__}")
    return as_input_data(data, n=n).inputs()


def ntk(
    model: nn.Module,
    data: Any,
    *,
    n: int | None = None,
    mode: Literal["sum", "trace", "full"] = "sum",
    params: Sequence[str] | None = None,
    bn: Literal["train", "eval"] = "train",
    chunk_size: int | None = None,
    batch_size: int | None = None,
    memory_gib: float = 4.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> NTKResult:
    r"""Empirical NTK :math:`\Theta = J J^\top` of ``model`` on ``data`` and its κ.

    See the module docstring for the modes, the algorithm and the peak-memory formula
    :math:`M \approx R P_k s + b c' (A + P_k s) + b A + 16 R^2`.

    Args:
        model: network returning logits of shape ``(N, C)`` (trailing dims flattened), or
            a tuple / dict / object holding them (:func:`geomkit.geometry._inputs.logits_of`).
            Left unchanged.
        data: the ``N`` examples: an inputs tensor ``(N, ...)``, ``(inputs, targets)``
            tensors, or any iterable of ``(x, y)`` or bare ``x`` batches (a DataLoader;
            gathered into one tensor); ``N`` is the kernel size.  Targets are not used.
        n: keep the first ``n`` examples (None: all of them).
        mode: ``"sum"`` (gradient of each example's summed logits, TE-NAS), ``"trace"``
            (per-logit kernels summed) or ``"full"`` (``N·C × N·C``).
        params: parameter names to differentiate (a block, e.g. one value of
            :func:`geomkit.geometry.blocks.resolve_blocks`); ``None`` = every parameter
            with ``requires_grad``.
        bn: ``"train"``: BatchNorm layers normalize with the statistics of the ``N``
            inputs (TE-NAS; running buffers are not touched); ``"eval"``: with their
            running statistics.  Models without BatchNorm give the same kernel in both.
        chunk_size: maximum number of parameter elements per chunk; ``None`` = the most
            whose Jacobian fits in ``memory_gib / 2``.  Does not change the result
            (up to floating-point summation order).
        batch_size: Jacobian rows computed at once (examples for independent samples,
            pulled-back rows with BatchNorm in train mode); ``None`` = automatic from
            ``memory_gib`` and a probe of the activation memory.
        memory_gib: memory budget (GiB) for the automatic ``chunk_size``/``batch_size``.
        device: where to compute; ``None`` = the device of the model's parameters (an
            index-less ``"cuda"`` too, for a model on a GPU).
        dtype: compute dtype (e.g. ``torch.float64``); ``None`` = the parameters' dtype.
            The gradients are computed in it; the kernel is always accumulated and
            returned in float64 (so κ does not depend on the chunk size).
        progress: show a tqdm bar on stderr.

    Returns:
        :class:`NTKResult` with the float64 kernel, its ascending eigenvalues, λ_max,
        λ_min and κ.

    Raises:
        SpecError: unknown ``mode`` or ``bn``, or non-positive sizes.
        BlockError: unknown or empty ``params``.
        ModelError: the model does not return one logits tensor per example.

    Warns:
        RuntimeWarning: when λ_min ≤ 0 or the kernel is not finite (κ = inf).
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise SpecError(f"unknown NTK mode {mode!r}; valid: {', '.join(MODES)}", param="mode")
    if bn not in BN_MODES:
        raise SpecError(f"unknown BatchNorm mode {bn!r}; valid: {', '.join(BN_MODES)}",
                        param="bn")
    for label, v in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if v is not None and int(v) <= 0:
            raise SpecError(f"{label} must be a positive integer, got {v!r}", param=label)
    if not (memory_gib > 0 and math.isfinite(memory_gib)):
        raise SpecError(f"memory_gib must be a positive number, got {memory_gib!r}",
                        param="memory_gib")
    inputs = _kernel_inputs(data, n)
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1 or len(inputs) == 0:
        raise SpecError("inputs must be a non-empty tensor of N examples, shape (N, ...)")

    names = _select_params(model, params)
    first = next(iter(model.parameters()), None)
    model_dev = first.device if first is not None else torch.device("cpu")
    # "cuda" for a model on cuda:1 means cuda:1, not a copy on the current GPU
    dev = run_device_for(device, model_dev)
    named_params = dict(model.named_parameters())
    cdtype = dtype if dtype is not None else named_params[names[0]].dtype

    def _cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(dev)
        return t.to(cdtype) if t.is_floating_point() else t

    train_params = {n: _cast(named_params[n]) for n in names}
    frozen = {n: _cast(p) for n, p in named_params.items() if n not in train_params}
    buffers = {n: _cast(b) for n, b in model.named_buffers()}
    x_all = _cast(inputs)
    n = len(x_all)
    s = torch.empty((), dtype=cdtype).element_size()
    sizes = {k: v.numel() for k, v in train_params.items()}
    n_params = sum(sizes.values())

    # BatchNorm in train mode normalizes with batch statistics without touching (or
    # needing) the running buffers, which here may be the model's own tensors
    with analysis_mode(model, bn, untracked=True):
        # a BatchNorm without running buffers normalizes with batch statistics even in eval
        coupled = any(
            isinstance(m, _BatchNorm) and (m.training or m.running_mean is None)
            for m in model.modules()
        )

        def batched(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            # the math attention backend: vmap has no batching rule for the fused CPU
            # scaled_dot_product_attention kernel (timm's ViTs), and would loop per example
            with sdpa_kernel(SDPBackend.MATH):
                out = logits_of(functional_call(model, (p, frozen, buffers), (x,)))
            return out.reshape(out.shape[0], -1)

        # probe: output width C and the bytes autograd saves per example
        probe_x = x_all if coupled else x_all[:1]
        probe_p = {k: v.detach().requires_grad_() for k, v in train_params.items()}
        exclude = {t.untyped_storage().data_ptr() for t in (*frozen.values(), *buffers.values())}
        exclude |= {t.untyped_storage().data_ptr() for t in probe_p.values()}
        exclude.add(probe_x.untyped_storage().data_ptr())
        probe_out: list[torch.Tensor] = []

        def probe() -> None:
            probe_out.append(batched(probe_p, probe_x).detach())

        act = _saved_bytes(probe, exclude)
        n_rows, c = probe_out[0].shape
        if n_rows != len(probe_x):
            raise ModelError(
                f"the model maps {len(probe_x)} example(s) to {n_rows} rows; "
                "ntk needs one row of logits per example"
            )
        probe_out.clear()
        cp = 1 if mode == "sum" else c
        rows = n * cp

        budget = memory_gib * _GIB / 2
        # a chunk's Jacobian in the compute dtype, plus (below float64) one float64 column
        # slice of it at a time for the Gram
        slice_cols = max(1, int(min(_GRAM_SLICE_BYTES, budget / 4) // (8 * rows)))
        reserve = 0 if s >= 8 else slice_cols * rows * 8
        pk = (int(chunk_size) if chunk_size is not None
              else max(1, int((budget - reserve) // (rows * s))))
        chunks = _chunks(sizes, pk)
        pk_max = max(sum(sizes[k] for k in ch) for ch in chunks)
        if batch_size is not None:
            b = int(batch_size)
        elif coupled:
            b = max(1, int((budget - act) // (act + pk_max * s)))
        else:
            b = max(1, int(budget // (cp * (act + pk_max * s) + act)))
        b = min(b, rows if coupled else n)

        mine = chunks[distributed.rank() :: distributed.world_size()]
        size = rows if mode == "full" else n
        kernel = torch.zeros(size, size, dtype=torch.float64, device=dev)
        steps_per_chunk = math.ceil((rows if coupled else n) / b)
        bar = progress_bar(len(mine) * steps_per_chunk, progress and distributed.is_main(),
                           "ntk", "batch")
        try:
            for chunk in mine:
                for jac in _chunk_jacobian(
                    batched, train_params, chunk, x_all, mode, cp, b, coupled, bar
                ):
                    flat = jac.reshape(rows, -1) if mode == "full" else jac.reshape(n, -1)
                    _gram_add(kernel, flat, slice_cols)
                    del jac, flat
        finally:
            bar.close()
        distributed.all_reduce_sum(kernel)

    evals, lmax, lmin, kappa = _spectrum(kernel)
    kernel_np = (0.5 * (kernel + kernel.T)).cpu().numpy()
    return NTKResult(
        kernel=kernel_np,
        eigenvalues=evals,
        lambda_max=lmax,
        lambda_min=lmin,
        kappa=kappa,
        mode=mode,
        n_samples=n,
        n_outputs=c,
        n_params=n_params,
        bn=bn,
        method="batch-jacobian" if coupled else "per-sample",
        n_chunks=len(chunks),
        seconds=time.perf_counter() - t0,
    )


def _gram_add(kernel: torch.Tensor, flat: torch.Tensor, slice_cols: int) -> None:
    """``kernel += flat flatᵀ`` in float64, ``slice_cols`` columns of ``flat`` at a time.

    The gradients stay in the compute dtype; every product is float64, because a float32
    GEMM over long rows is off by ~1e-3 relative (10^7-long rows), which moved κ by 5 % on
    vit-b16 and made it depend on the chunk size.  Converting a slice at a time bounds the
    float64 copy (``_GRAM_SLICE_BYTES``) instead of doubling the chunk's memory."""
    if flat.dtype == torch.float64:
        kernel.addmm_(flat, flat.T)
        return
    for lo in range(0, flat.shape[1], slice_cols):
        piece = flat[:, lo : lo + slice_cols].to(torch.float64)
        kernel.addmm_(piece, piece.T)
        del piece


def _chunk_jacobian(
    batched: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
    train_params: dict[str, torch.Tensor],
    chunk: list[str],
    x_all: torch.Tensor,
    mode: str,
    cp: int,
    b: int,
    coupled: bool,
    bar: Any,
) -> list[torch.Tensor]:
    """The Jacobian of one parameter chunk as column pieces, each ``(N, c', P_piece)``.

    Row ``(i, c)`` holds :math:`\\nabla_{\\theta_k} f_c(x_i)` (``c' = C``) or
    :math:`\\nabla_{\\theta_k} \\sum_c f_c(x_i)` (``c' = 1``, ``sum`` mode); the
    pieces side by side are :math:`J_k`, so :math:`J_k J_k^\\top` is the sum of the
    pieces' products.  When one vmapped batch covers all N examples the pieces are its
    per-parameter outputs as they are (no copy into one buffer: that copy cost a fifth
    of vit-tiny's kernel time at N=128); otherwise a single piece, filled batch by batch.
    """
    n = len(x_all)
    mine = {k: train_params[k] for k in chunk}
    rest = {k: v for k, v in train_params.items() if k not in mine}
    offsets: dict[str, tuple[int, int]] = {}
    off = 0
    for k in chunk:
        offsets[k] = (off, off + mine[k].numel())
        off += mine[k].numel()
    ref = next(iter(mine.values()))

    def f_chunk(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return batched({**p, **rest}, x)

    with torch.no_grad():  # the torch.func transforms below still differentiate
        if not coupled:

            def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return f_chunk(p, x.unsqueeze(0))[0]

            def one_sum(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return one(p, x).sum()

            per = vmap(grad(one_sum) if mode == "sum" else jacrev(one), in_dims=(None, 0))
            if b >= n:
                g = per(mine, x_all)
                bar.update(1)
                return [g[k].reshape(n, cp, -1) for k in chunk]
            jac = torch.empty(n, cp, off, dtype=ref.dtype, device=ref.device)
            for lo in range(0, n, b):
                hi = min(lo + b, n)
                g = per(mine, x_all[lo:hi])
                for k, (a, z) in offsets.items():
                    jac[lo:hi, :, a:z] = g[k].reshape(hi - lo, cp, z - a)
                del g
                bar.update(1)
        else:
            jac = torch.empty(n, cp, off, dtype=ref.dtype, device=ref.device)
            out, pull = vjp(lambda p: f_chunk(p, x_all), mine)
            c = out.shape[1]
            del out
            flat = jac.view(n * cp, off)
            rows = n * cp
            # One VJP per row through the retained batch graph.  vmap over the cotangents
            # measured 2.5-4x slower than this loop on CPU (resnet-tiny, N=128: 2.2-4.0 s
            # vs 0.85-0.95 s), so the rows are pulled back one at a time.
            cot = torch.zeros(n, c, dtype=ref.dtype, device=ref.device)
            for lo in range(0, rows, b):
                hi = min(lo + b, rows)
                for r in range(lo, hi):
                    i, j = (r, None) if mode == "sum" else divmod(r, c)
                    if j is None:
                        cot[i] = 1.0
                    else:
                        cot[i, j] = 1.0
                    (g,) = pull(cot)
                    cot.zero_()
                    for k, (a, z) in offsets.items():
                        flat[r, a:z] = g[k].reshape(-1)
                    del g
                bar.update(1)
    return [jac]


# --------------------------------------------------------------------------- at init


def ntk_at_init(
    model_factory: Callable[[int], nn.Module],
    data: Any,
    *,
    n: int | None = None,
    repeats: int = 3,
    seed: int = 0,
    **kwargs: Any,
) -> NTKInitResult:
    r"""κ of the NTK at initialization, averaged over ``repeats`` seeds.

    Repeat ``r`` builds ``model_factory(seed + r)`` (a freshly initialized network,
    e.g. :meth:`geomkit.Checkpoint.fresh_model`) and computes :func:`ntk` on the same
    inputs.  Reports :math:`\bar\kappa = \frac1R \sum_r \kappa_r` and the sample
    standard deviation :math:`\sqrt{\frac{1}{R-1}\sum_r (\kappa_r - \bar\kappa)^2}`.

    Args:
        model_factory: ``seed -> nn.Module``.
        data: the ``N`` examples, shared by every repeat (anything :func:`ntk` takes; an
            iterable is read once).
        n: keep the first ``n`` examples (None: all of them).
        repeats: number of seeds ``R``.
        seed: first seed.
        **kwargs: passed to :func:`ntk` (``mode``, ``params``, ``bn``, ...).

    Returns:
        :class:`NTKInitResult` with the mean κ, its standard deviation and each repeat.

    Raises:
        SpecError: ``repeats < 1``.
    """
    t0 = time.perf_counter()
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 10_000:
        # each repeat builds and measures a model: more than 10,000 is a typo, not a study
        raise SpecError(f"repeats must be an integer in 1..10000, got {repeats!r}",
                        param="repeats")
    seeds = tuple(int(seed) + r for r in range(int(repeats)))
    inputs = _kernel_inputs(data, n)
    results = tuple(ntk(model_factory(sd), inputs, **kwargs) for sd in seeds)
    kappas = [r.kappa for r in results]
    if all(math.isfinite(k) for k in kappas):
        kappa = float(np.mean(kappas))
        kappa_std = float(np.std(kappas, ddof=1)) if len(kappas) > 1 else 0.0
    else:
        kappa, kappa_std = math.inf, math.nan
    return NTKInitResult(
        kappa=kappa,
        kappa_std=kappa_std,
        lambda_max=float(np.mean([r.lambda_max for r in results])),
        lambda_min=float(np.mean([r.lambda_min for r in results])),
        seeds=seeds,
        results=results,
        mode=results[0].mode,
        n_samples=results[0].n_samples,
        bn=results[0].bn,
        seconds=time.perf_counter() - t0,
    )
