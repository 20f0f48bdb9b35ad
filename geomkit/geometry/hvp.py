"""Hessian-vector products of the mean loss over analysis data, per parameter block.

The loss is the mean cross-entropy over the N analysis examples,

    L(θ) = (1/N) Σ_i ℓ(f(x_i; θ), y_i),

and for a block B (a subset of the parameters, the rest held fixed) the product
with the diagonal Hessian block is

    H_BB v = ∇_B (∇_B L(θ) · v) = Σ_batches ∇_B (∇_B L_b(θ) · v),   L_b = (1/N) Σ_{i∈b} ℓ_i,

so uneven mini-batches are weighted by their size exactly (each batch contributes
its *sum* of losses divided by the global N).  Under ``torchrun`` each rank takes
its shard of the examples and the per-rank products are all-reduced.

Three strategies compute the same product:

``reuse``
    Build the first-order graph once (``create_graph=True`` over every analysis
    batch, kept in memory) and differentiate ``g·v`` with ``retain_graph`` for
    every product: no forward and no first backward per product.  Memory: the
    whole analysis set's graph (plus the second backward's transient).
``stream``
    Recompute per mini-batch: forward, ``create_graph`` backward, second backward,
    free.  Memory: one mini-batch's graph — exactly a plain double backward's peak.
    Several tangents (blocks, probes) share one forward and first backward.
``func``
    ``torch.func`` forward-over-reverse, ``jvp`` of ``grad`` of a
    ``functional_call``, per mini-batch and tangent.  No ``jacrev``/``vmap``
    (``jacrev`` through norm layers was wrong in curvlinops 3.0.1 with this torch).

``auto`` estimates the memory of the retained graph (bytes saved for backward
by a probe forward + ``create_graph`` backward on a few examples, scaled to this
rank's N) and picks ``reuse`` when it fits the memory budget (default: half the
free CUDA memory, a quarter of the available RAM on CPU), else ``stream`` (with a
batch size that fits when none was given).  Measured on the shared 2-core CPU
box (``docs/benchmarks/hessian.md``, vit-tiny / resnet-tiny trained and at
initialization, N=512 and 1024): per product ``reuse`` costs 0.67–0.79x a plain
double backward, ``stream`` 0.88–1.14x, ``func`` 1.01–1.63x.

The model itself is never changed: products use ``torch.func.functional_call``
with detached (and, for ``dtype``/``device``, converted) copies of the parameters
and buffers; train/eval flags are set for each forward and restored after.  In
``bn="eval"`` (default) BatchNorm uses its running statistics and dropout is off;
``bn="train"`` uses batch statistics (so the mini-batch size matters) and updates
private copies of the running buffers, never the model's.

Example:
    >>> import torch, torch.nn as nn
    >>> torch.manual_seed(0) and None
    >>> m = nn.Linear(3, 2).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> op = HessianOperator(m, x, y, {"whole": ["weight", "bias"]}, strategy="stream")
    >>> hv = op.matvec("whole", torch.ones(op.dims["whole"], dtype=torch.float64))
    >>> hv.shape
    torch.Size([8])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypedDict

import torch
import torch.nn as nn
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from geomkit import distributed
from geomkit.errors import SpecError
from geomkit.geometry._inputs import as_data, logits_of, resolve_loss_sum
from geomkit.geometry._work import analysis_mode, free_memory, run_device_for

__all__ = [
    "OperatorOptions",
    "BN_MODES",
    "STRATEGIES",
    "HessianOperator",
    "analysis_mode",
    "default_memory_budget",
]

STRATEGIES = ("auto", "reuse", "stream", "func")
BN_MODES = ("eval", "train")


def default_memory_budget(device: torch.device) -> int:
    """Bytes the retained graph may use: half the free CUDA memory, 1/4 of free RAM on CPU."""
    return int(free_memory(device) * (0.5 if device.type == "cuda" else 0.25))


def _add(acc: Sequence[torch.Tensor | None],
         parts: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Elementwise sum of two lists of optional tensors (None = zero)."""
    return [a if p is None else (p if a is None else a + p)
            for a, p in zip(acc, parts, strict=True)]


class OperatorOptions(TypedDict, total=False):
    """The keyword options of :class:`HessianOperator`, which the spectral estimators of
    :mod:`geomkit.geometry.spectrum` pass on unchanged (``**operator``)."""

    loss: str | Callable[..., torch.Tensor]
    label_smoothing: float
    batch_size: int | None
    strategy: str
    bn: str
    dtype: torch.dtype | None
    device: torch.device | str | None
    memory_budget: int | None
    batched: bool


class HessianOperator:
    """Products with diagonal Hessian blocks H_BB of the mean loss over the analysis data.

    Args:
        model: any ``nn.Module`` mapping inputs to logits (or to a tuple / dict / object
            holding them, :func:`geomkit.geometry._inputs.logits_of`); never modified.
        data, targets: the analysis data: ``(inputs, targets)`` tensors (also as two
            arguments) or any iterable of ``(x, y)`` batches such as a DataLoader
            (:func:`geomkit.geometry._inputs.as_data`); under torchrun each rank uses its
            shard of the N examples.
        blocks: block name → parameter names (from
            :func:`geomkit.geometry.blocks.resolve_blocks`).
        loss: ``ce`` (default), ``ce:ε`` (label smoothing), ``bce``, ``mse`` or a callable
            returning per-example losses; ``label_smoothing``: ε for ``ce``.
        batch_size: analysis mini-batch (None: one batch, or a size that fits the
            budget when ``auto`` falls back to ``stream``).
        strategy: ``auto``, ``reuse``, ``stream`` or ``func`` (module docstring).
        bn: ``eval`` (running statistics) or ``train`` (batch statistics, model
            buffers untouched).
        dtype: compute dtype (None: the model's); ``torch.float64`` for references.
        device: compute device (None: the model's; an index-less ``"cuda"`` for a model
            on a GPU: that GPU).
        memory_budget: bytes allowed for ``reuse`` under ``auto`` (None: default).
        batched: several blocks' products in one vmapped backward (``is_grads_batched``
            over stacked tangents; ``reuse`` and ``stream``) instead of one backward per
            block. Same products to rounding (tested against the dense oracle, LayerNorm
            included); 2.3-2.8x slower on this CPU (``benchmarks/hvp_batched.py``: 4 and 7
            vit-tiny blocks, N = 512), so off by default; the GPU check measures it
            where one small block's product leaves the chip idle.

    Attributes:
        dims: block → number of parameters; ``strategy``: the resolved strategy;
        ``batch_size``; ``n_hvps``: block → products computed; ``graph_bytes``:
        the estimated retained-graph memory for this rank (None unless estimated).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        targets: torch.Tensor | dict[str, Sequence[str]] | None = None,
        blocks: dict[str, Sequence[str]] | None = None,
        *,
        loss: str | Callable[..., torch.Tensor] = "ce",
        label_smoothing: float = 0.0,
        batch_size: int | None = None,
        strategy: str = "auto",
        bn: str = "eval",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        memory_budget: int | None = None,
        batched: bool = False,
    ) -> None:
        if strategy not in STRATEGIES:
            raise SpecError(f"unknown HVP strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        if bn not in BN_MODES:
            raise SpecError(f"unknown BatchNorm mode {bn!r}; valid: {', '.join(BN_MODES)}")
        if batch_size is not None and batch_size < 1:
            raise SpecError(f"batch_size must be a positive integer, got {batch_size}")
        if isinstance(targets, dict) and blocks is None:  # HessianOperator(model, loader, blocks)
            targets, blocks = None, targets
        if not blocks:
            raise SpecError("no parameter block to measure")
        params = dict(model.named_parameters())
        first = next(iter(params.values()), None)
        if first is None:
            raise SpecError("the model has no parameters")
        self.model = model
        self.data = as_data(data, targets)
        self._loss_total = resolve_loss_sum(loss, label_smoothing)
        self.bn = bn
        self.batched = bool(batched)
        # "cuda" for a model on cuda:1 is cuda:1 (not the current GPU: no copy on another one)
        self.device = run_device_for(device, first.device)
        self.dtype = dtype if dtype is not None else first.dtype
        self.n_total = self.data.n
        self.blocks = {b: list(names) for b, names in blocks.items()}
        missing = [n for names in self.blocks.values() for n in names if n not in params]
        if missing:
            raise SpecError(f"unknown parameter names in blocks: {', '.join(missing[:5])}")

        def conv(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            if t.is_floating_point():
                return t.to(device=self.device, dtype=self.dtype)
            return t.to(device=self.device)

        in_block = {n for names in self.blocks.values() for n in names}
        # Leaves for every parameter of any block; fixed tensors for the rest.
        self._leaves = {n: conv(p).requires_grad_(True) for n, p in params.items() if n in in_block}
        self._fixed = {n: conv(p) for n, p in params.items() if n not in in_block}
        bufs = {n: conv(b) for n, b in model.named_buffers()}
        if bn == "train":  # private copies: BatchNorm updates them in place
            bufs = {n: b.clone() for n, b in bufs.items()}
        self._buffers = bufs
        self.dims = {
            b: sum(self._leaves[n].numel() for n in names) for b, names in self.blocks.items()
        }
        self.n_hvps = {b: 0 for b in self.blocks}
        self.graph_bytes: int | None = None
        self.batch_size = batch_size
        self._graph: dict[str, torch.Tensor] | None = None

        if strategy == "auto":
            n_local = len(distributed.shard_range(self.n_total))
            probe_n = max(1, min(8, n_local, batch_size or n_local))
            per_ex = self._probe_bytes(probe_n) / probe_n
            self.graph_bytes = int(per_ex * n_local)
            budget = (memory_budget if memory_budget is not None
                      else default_memory_budget(self.device))
            if self.graph_bytes <= budget:
                strategy = "reuse"
            else:
                strategy = "stream"
                if batch_size is None:
                    self.batch_size = max(1, int(budget // max(per_ex, 1.0)))
        self.strategy = strategy
        if strategy == "reuse":
            self._build_graph()

    # ------------------------------------------------------------------ helpers
    def _forward(self, x: torch.Tensor, leaves: dict[str, torch.Tensor]) -> torch.Tensor:
        # The math attention backend: PyTorch's fused CPU scaled_dot_product_attention
        # (used by timm's ViTs) has neither a double backward nor forward-mode AD.
        with analysis_mode(self.model, self.bn), sdpa_kernel(SDPBackend.MATH):
            return logits_of(functional_call(
                self.model, {**self._fixed, **leaves, **self._buffers}, (x,), strict=False
            ))

    def _loss_sum(self, logits: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        """This batch's share of the mean loss: Σ_b ℓ_i / N."""
        return self._loss_total(logits, targets) / n

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shard = distributed.shard_range(self.n_total)
        return self.data.batches(self.batch_size, device=self.device, dtype=self.dtype,
                                 lo=shard.start, hi=shard.stop)

    def _union(self, blocks: Sequence[str]) -> list[str]:
        wanted = {n for b in blocks for n in self.blocks[b]}
        return [n for n in self._leaves if n in wanted]

    def _probe_bytes(self, n: int) -> int:
        """Bytes saved for backward by a forward + create_graph backward on ``n`` examples."""
        x, y = next(self.data.batches(n, device=self.device, dtype=self.dtype, lo=0, hi=n))
        owned = {t.untyped_storage().data_ptr() for t in (*self._leaves.values(),
                                                           *self._fixed.values(),
                                                           *self._buffers.values())}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            try:
                s = t.untyped_storage()
                ptr = s.data_ptr()
                if ptr not in owned:
                    seen[ptr] = s.nbytes()
            except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
                pass
            return t

        names = list(self._leaves)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self._loss_sum(self._forward(x, self._leaves), y, n)
            g = torch.autograd.grad(loss, [self._leaves[k] for k in names],
                                    create_graph=True, allow_unused=True)
        del loss, g
        return sum(seen.values())

    def _build_graph(self) -> None:
        names = list(self._leaves)
        leaves = [self._leaves[n] for n in names]
        total: list[torch.Tensor | None] = [None] * len(names)
        for x, y in self._batches():
            loss = self._loss_sum(self._forward(x, self._leaves), y, self.n_total)
            gs = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            total = _add(total, gs)
        self._graph = {n: g for n, g in zip(names, total, strict=True) if g is not None}

    def _unflat(self, block: str, v: torch.Tensor) -> list[torch.Tensor]:
        if v.shape != (self.dims[block],):
            raise ValueError(f"block {block!r} takes vectors of length {self.dims[block]}, "
                             f"got {tuple(v.shape)}")
        v = v.to(device=self.device, dtype=self.dtype)
        out, i = [], 0
        for n in self.blocks[block]:
            p = self._leaves[n]
            out.append(v[i : i + p.numel()].view_as(p))
            i += p.numel()
        return out

    def _flat(self, block: str, parts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat([
            (torch.zeros_like(self._leaves[n]) if g is None else g).reshape(-1)
            for n, g in zip(self.blocks[block], parts, strict=True)
        ])

    def _second(self, g: dict[str, torch.Tensor], block: str, vs: list[torch.Tensor],
                retain: bool) -> list[torch.Tensor | None]:
        names = self.blocks[block]
        sel = [(n, v) for n, v in zip(names, vs, strict=True)
               if n in g and g[n].requires_grad]
        if not sel:
            return [None] * len(names)
        # ∇_B (g_B · v) as the vector-Jacobian product of g_B with v (grad_outputs): the
        # same numbers and time as backpropagating a built dot product
        # (benchmarks/hvp_vjp.py), without building the product's graph
        return list(torch.autograd.grad([g[n] for n, _ in sel],
                                        [self._leaves[n] for n in names],
                                        grad_outputs=[v for _, v in sel],
                                        retain_graph=retain, allow_unused=True))

    def _second_batched(self, g: dict[str, torch.Tensor],
                        reqs: Sequence[tuple[str, list[torch.Tensor]]],
                        retain: bool) -> list[list[torch.Tensor | None]]:
        """Every request's ``H_BB v`` from one backward over stacked tangents: row i holds
        block i's vector on its parameters and zeros elsewhere, so row i of
        ``H_UU T`` (U the union of the blocks) restricted to block i is ``H_BB v_i``."""
        union = [n for n in self._union([b for b, _ in reqs])
                 if n in g and g[n].requires_grad]
        out: list[list[torch.Tensor | None]] = [[None] * len(self.blocks[b]) for b, _ in reqs]
        if not union:
            return out
        tangents = []
        for n in union:
            t = g[n].new_zeros((len(reqs), *g[n].shape))
            for i, (b, vs) in enumerate(reqs):
                if n in self.blocks[b]:
                    t[i] = vs[self.blocks[b].index(n)]
            tangents.append(t)
        hv = torch.autograd.grad([g[n] for n in union], [self._leaves[n] for n in union],
                                 grad_outputs=tangents, retain_graph=retain,
                                 is_grads_batched=True, allow_unused=True)
        row = dict(zip(union, hv, strict=True))
        for i, (b, _) in enumerate(reqs):
            out[i] = [None if row.get(n) is None else row[n][i] for n in self.blocks[b]]
        return out

    # ------------------------------------------------------------------ public
    def matvecs(self, requests: Sequence[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Products ``H_BB v`` for several (block, flat vector) pairs at once.

        The pairs share the forward and the first backward (``stream``) or the
        retained graph (``reuse``).  Returns flat vectors in the compute dtype and
        device, all-reduced over ranks.
        """
        reqs = [(b, self._unflat(b, v)) for b, v in requests]
        acc: list[list[torch.Tensor | None]] = [[None] * len(self.blocks[b]) for b, _ in reqs]

        def add(i: int, parts: Sequence[torch.Tensor | None]) -> None:
            acc[i] = _add(acc[i], parts)

        if self.strategy == "reuse":
            if self._graph is None:
                self._build_graph()
            assert self._graph is not None
            if self.batched and len(reqs) > 1:
                for i, parts in enumerate(self._second_batched(self._graph, reqs, True)):
                    add(i, parts)
            else:
                for i, (b, vs) in enumerate(reqs):
                    add(i, self._second(self._graph, b, vs, retain=True))
        elif self.strategy == "stream":
            names = self._union([b for b, _ in reqs])
            leaves = [self._leaves[n] for n in names]
            for x, y in self._batches():
                loss = self._loss_sum(self._forward(x, self._leaves), y, self.n_total)
                gs = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                g = {n: t for n, t in zip(names, gs, strict=True) if t is not None}
                if self.batched and len(reqs) > 1:
                    for i, parts in enumerate(self._second_batched(g, reqs, False)):
                        add(i, parts)
                else:
                    for i, (b, vs) in enumerate(reqs):
                        add(i, self._second(g, b, vs, retain=i < len(reqs) - 1))
                del loss, gs, g
        else:  # func
            for x, y in self._batches():
                for i, (b, vs) in enumerate(reqs):
                    add(i, self._func_hvp(b, vs, x, y))
        out = []
        for (b, _), parts in zip(reqs, acc, strict=True):
            hv = self._flat(b, parts).detach()
            out.append(distributed.all_reduce_sum(hv))
            self.n_hvps[b] += 1
        return out

    def matvec(self, block: str, v: torch.Tensor) -> torch.Tensor:
        """``H_BB v`` for one block (flat vector of length ``dims[block]``)."""
        return self.matvecs([(block, v)])[0]

    def _func_hvp(self, block: str, vs: list[torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor) -> list[torch.Tensor]:
        names = self.blocks[block]
        rest = {n: t.detach() for n, t in self._leaves.items() if n not in set(names)}

        def loss_fn(bp: dict[str, torch.Tensor]) -> torch.Tensor:
            bufs = self._buffers
            if self.bn == "train":  # BatchNorm updates these in place: no captured tensors
                bufs = {n: b.clone() for n, b in bufs.items()}
            with sdpa_kernel(SDPBackend.MATH):  # fused CPU attention has no forward AD
                out = functional_call(self.model, {**self._fixed, **rest, **bp, **bufs},
                                      (x,), strict=False)
            return self._loss_sum(logits_of(out), y, self.n_total)

        primals = {n: self._leaves[n].detach() for n in names}
        tangents = dict(zip(names, vs, strict=True))
        with analysis_mode(self.model, self.bn):
            _, hv = jvp(grad(loss_fn), (primals,), (tangents,))
        return [hv[n] for n in names]

    def gradient(self, block: str) -> torch.Tensor:
        """The flat gradient ∇_B L of the mean loss (one plain backward per batch)."""
        names = self.blocks[block]
        leaves = [self._leaves[n] for n in names]
        acc: list[torch.Tensor | None] = [None] * len(names)
        for x, y in self._batches():
            loss = self._loss_sum(self._forward(x, self._leaves), y, self.n_total)
            gs = torch.autograd.grad(loss, leaves, allow_unused=True)
            acc = _add(acc, gs)
        return distributed.all_reduce_sum(self._flat(block, acc).detach())

    def loss(self) -> float:
        """The mean loss L(θ) over the analysis data."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for x, y in self._batches():
                total += self._loss_sum(self._forward(x, self._leaves), y, self.n_total).double()
        return float(distributed.all_reduce_sum(total))

    def release(self) -> None:
        """Free the retained graph (``reuse``); later products rebuild it."""
        self._graph = None

    def __repr__(self) -> str:
        return (f"HessianOperator(blocks={self.dims}, strategy={self.strategy!r}, bn={self.bn!r}, "
                f"dtype={self.dtype}, batch_size={self.batch_size}, N={self.n_total})")
