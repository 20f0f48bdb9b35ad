"""Activation sparsity, dead neurons, block output norms and weight norms (Table 3).

Forward hooks over the analysis data, statistics streamed batch by batch (float64
accumulators; no activation is kept):

- **Per activation module** (``nn.ReLU``, ``nn.GELU``, ``nn.SiLU``, ``nn.ReLU6``, ... see
  :data:`ACTIVATION_TYPES`), keyed by module name (``blocks.0.mlp.act``, ``layer1.0.act1``):
  the active fraction = #{values with input > 0} / #values. Every supported activation is
  positive exactly where its input is (GELU: :math:`x\\Phi(x) > 0 \\iff x > 0`), so the
  *input* is tested, which is exact where the output would underflow. A *neuron* is one
  feature: the last dim of ``[B, D]`` and ``[B, T, D]`` tensors (MLP / token activations,
  also the Mixer token MLP's hidden units), dim 1 of ``[B, C, H, W]`` (and higher) conv
  tensors. A neuron is *dead* if it is never > 0 at any position of any example.
- **Per block** (``blocks.{i}`` of ViT/Mixer, the residual blocks ``layer{s}.{j}`` of a
  ResNet; see :func:`find_blocks`): the same counts summed over the activation modules
  inside the block (value-weighted active fraction); the output norm

  .. math:: \\|a_k\\|_2 = \\frac{1}{N} \\sum_{n=1}^{N} \\big\\| \\mathrm{vec}(a_k(x_n)) \\big\\|_2,

  the Euclidean norm of block k's whole output for one example (all tokens × channels, or
  channels × height × width, flattened) averaged over the N examples; and the weight norm
  :math:`\\|w_k\\|_2 = (\\sum_{p \\in k} \\sum_i p_i^2)^{1/2}` over the block's parameters.
- **Whole model**: :math:`\\|w\\|_2` over all parameters, and totals over all activations.

The analysis data are an inputs tensor, ``(inputs, targets)`` tensors or any iterable of
``(x, y)`` (or bare ``x``) batches such as a DataLoader, streamed batch by batch (targets
are not used; :func:`geomkit.geometry._inputs.as_input_data`); every statistic is a sum
over examples, so how the data are batched does not change the counts. The model's own
output is ignored (it may be a tuple, a dict, anything).

The model is measured in eval mode under ``torch.no_grad``; its modes and everything else
are restored afterwards. Under ``torchrun`` each rank takes its shard of the examples and
the accumulators are summed over ranks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from geomkit import distributed
from geomkit.errors import BlockError, DataError
from geomkit.geometry._inputs import as_input_data
from geomkit.geometry._work import analysis_mode, progress_bar, work_model

__all__ = [
    "ACTIVATION_TYPES",
    "DEFAULT_BLOCK_PATTERNS",
    "ActivationStats",
    "BlockStats",
    "LayerStats",
    "activation_stats",
    "find_blocks",
]

#: Activation modules measured (all positive exactly where their input is positive).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Hardswish,
)
# Same activations defined by other libraries (timm's own ``GELU``, ``Swish``, ...).
_ACTIVATION_NAMES = frozenset(t.__name__ for t in ACTIVATION_TYPES) | {
    "GELUTanh",
    "QuickGELU",
    "Swish",
    "HardSwish",
}

#: Module names that are "blocks" by default: ViT/Mixer blocks and ResNet residual blocks.
DEFAULT_BLOCK_PATTERNS: tuple[str, ...] = (r"blocks\.\d+", r"layer\d+\.\d+")


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one activation module.

    Attributes:
        name: module name. kind: its class name. block: the block containing it, or None.
        active_fraction: active / values, i.e. #(input > 0) / #values over all examples and
            positions (NaN if the module never ran). active: number of values > 0. values:
            number of values seen. neurons: number of neurons
            (summed over call sites if the module runs several times per forward). dead:
            neurons never > 0.
    """

    name: str
    kind: str
    block: str | None
    active_fraction: float
    active: int
    values: int
    neurons: int
    dead: int

    @property
    def dead_fraction(self) -> float:
        return self.dead / self.neurons if self.neurons else math.nan


@dataclass(frozen=True)
class BlockStats:
    """Statistics of one block (see the module docstring for the definitions).

    Attributes:
        name: module name (``blocks.3``, ``layer2.1``). index: 0-based position among blocks.
        layers: names of the activation modules inside it. active_fraction, active, values,
        neurons, dead: summed over those modules (NaN / 0 if there are none). output_norm:
        :math:`\\|a_k\\|_2`, the mean over examples of the L2 norm of the block's flattened
        output. weight_norm: :math:`\\|w_k\\|_2` of the block's parameters. params: their count.
    """

    name: str
    index: int
    layers: tuple[str, ...]
    active_fraction: float
    active: int
    values: int
    neurons: int
    dead: int
    output_norm: float
    weight_norm: float
    params: int


@dataclass(frozen=True)
class ActivationStats:
    """Result of :func:`activation_stats`; ``layers`` and ``blocks`` are in model order.

    Attributes:
        samples: number of examples measured. weight_norm: global :math:`\\|w\\|_2`.
        active_fraction, active, values, neurons, dead: totals over all activation modules.
        layers: per activation module. blocks: per block.
    """

    samples: int
    weight_norm: float
    active_fraction: float
    active: int
    values: int
    neurons: int
    dead: int
    layers: dict[str, LayerStats]
    blocks: dict[str, BlockStats]

    @property
    def output_norms(self) -> tuple[float, ...]:
        """:math:`(\\|a_1\\|_2, \\ldots, \\|a_K\\|_2)` in block order."""
        return tuple(b.output_norm for b in self.blocks.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict."""
        d = asdict(self)
        for b in d["blocks"].values():
            b["layers"] = list(b["layers"])
        return d


def find_blocks(model: nn.Module, blocks: str | Sequence[str] | None = None) -> list[str]:
    """Names of the model's blocks, in module order.

    ``blocks=None`` uses :data:`DEFAULT_BLOCK_PATTERNS` (``blocks.{i}``, ``layer{s}.{j}``);
    a string is a regular expression matched against whole module names; a sequence lists
    module names exactly (kept in the given order). Raises :class:`BlockError` when a
    regular expression matches nothing or a listed name is not a module.
    """
    names = [n for n, _ in model.named_modules() if n]
    if blocks is None or isinstance(blocks, str):
        patterns = DEFAULT_BLOCK_PATTERNS if blocks is None else (blocks,)
        try:
            regexes = [re.compile(p) for p in patterns]
        except re.error as e:
            raise BlockError(f"bad block regular expression {blocks!r}: {e}") from None
        found = [n for n in names if any(r.fullmatch(n) for r in regexes)]
        if blocks is not None and not found:
            raise BlockError(
                f"block pattern {blocks!r} matches no module; module names look like "
                f"{', '.join(names[:6])}"
            )
        return found
    known = set(names)
    missing = [b for b in blocks if b not in known]
    if missing:
        raise BlockError(
            f"unknown block module(s) {', '.join(map(repr, missing))}; module names look like "
            f"{', '.join(names[:6])}"
        )
    return list(dict.fromkeys(blocks))


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATION_TYPES) or type(m).__name__ in _ACTIVATION_NAMES


def _neuron_dim(ndim: int) -> int | None:
    """The neuron (feature) dim: last for [B, D] / [B, T, D], 1 for [B, C, H, W, ...]."""
    if ndim < 2:
        return None
    return 1 if ndim >= 4 else ndim - 1


class _Recorder:
    """Hook state: per (activation, call site) and per block float64 accumulators."""

    def __init__(self, acc_device: torch.device) -> None:
        self.device = acc_device
        self.recording = True
        self.calls: dict[str, int] = {}
        # name -> list over call sites of [values, active, fired-per-neuron]
        self.act: dict[str, list[list[Any]]] = {}
        # block -> [sum of per-example norms, number of example-outputs]
        self.out: dict[str, torch.Tensor] = {}

    def reset_calls(self, *_: Any) -> None:
        self.calls = {}

    def activation_hook(self, name: str):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            site = self.calls.get(name, 0)
            self.calls[name] = site + 1
            pos = x.detach() > 0
            d = _neuron_dim(pos.ndim)
            if d is None:  # unbatched scalar / vector: one neuron
                per_neuron = pos.sum().reshape(1)
            else:
                per_neuron = pos.movedim(d, -1).reshape(-1, pos.shape[d]).sum(0)
            per_neuron = per_neuron.to(self.device, torch.float64)  # exact below 2**53
            sites = self.act.setdefault(name, [])
            if site == len(sites):
                zero = torch.zeros((), dtype=torch.float64, device=self.device)
                sites.append([zero.clone(), zero.clone(), torch.zeros_like(per_neuron)])
            acc = sites[site]
            if acc[2].shape != per_neuron.shape:
                raise RuntimeError(
                    f"activation {name!r} call {site} changed its neuron count "
                    f"({acc[2].numel()} -> {per_neuron.numel()}) between batches"
                )
            if not self.recording:
                return
            acc[0] += pos.numel()
            acc[1] += per_neuron.sum()
            acc[2] += per_neuron

        return hook

    def block_hook(self, name: str):
        def hook(_module: nn.Module, _args: Any, out: Any) -> None:
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor):
                return
            acc = self.out.setdefault(name, torch.zeros(2, dtype=torch.float64, device=self.device))
            if not self.recording:
                return
            b = out.shape[0] if out.ndim > 0 else 1
            out = out.detach().reshape(b, -1).to(self.device, torch.float64)
            acc[0] += torch.linalg.vector_norm(out, dim=1).sum()
            acc[1] += b

        return hook


def _weight_norm(params: list[torch.Tensor]) -> float:
    total = sum(float(p.detach().to(torch.float64).square().sum()) for p in params)
    return math.sqrt(total)


def activation_stats(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    *,
    batch_size: int | None = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    blocks: str | Sequence[str] | None = None,
    progress: bool = False,
) -> ActivationStats:
    """Activation sparsity, dead neurons and block/weight norms of ``model`` on ``data``.

    Args:
        model: any ``nn.Module``; activations must be modules (:data:`ACTIVATION_TYPES`).
            Its output is not used (a tensor, tuple, dict, ... all do).
        data: analysis inputs ``[N, ...]``, ``(inputs, targets)`` tensors, or any iterable
            of ``(x, y)`` or bare ``x`` batches (a DataLoader), streamed. targets: unused
            (accepted for the common measurement signature; checked for length if given).
        batch_size: analysis mini-batch (None = all at once; an iterable's batches are
            kept, split when larger); does not change the counts.
        device: where to run (None = the model's device). dtype: e.g. ``torch.float64``
            (None = as is). With either differing from the model's, a copy of the model is
            measured.
        blocks: block modules, see :func:`find_blocks` (None = ``blocks.{i}`` /
            ``layer{s}.{j}``).
        progress: tqdm bar over batches (stderr, main rank only).

    Returns:
        :class:`ActivationStats`; the definitions are in the module docstring, in particular
        ``blocks[k].output_norm`` :math:`= \\frac1N \\sum_n \\|\\mathrm{vec}(a_k(x_n))\\|_2`.
    """
    if isinstance(data, torch.Tensor):
        if len(data) == 0:
            raise DataError("activation_stats needs at least one input example")
        if targets is not None and len(targets) != len(data):
            raise DataError(f"inputs ({len(data)}) and targets ({len(targets)}) differ in length")
        targets = None  # unused: only the inputs are measured
    analysis = as_input_data(data, targets)
    block_names = find_blocks(model, blocks)

    work, run_device, _ = work_model(model, device, dtype)
    acc_device = run_device if run_device.type in ("cpu", "cuda") else torch.device("cpu")

    orig_modules = dict(model.named_modules())
    modules = dict(work.named_modules())
    act_names = [n for n, m in modules.items() if n and _is_activation(m)]
    rec = _Recorder(acc_device)
    shard = distributed.shard_range(analysis.n)

    handles = [work.register_forward_pre_hook(rec.reset_calls)]
    try:
        for n in act_names:
            handles.append(modules[n].register_forward_pre_hook(rec.activation_hook(n)))
        for n in block_names:
            handles.append(modules[n].register_forward_hook(rec.block_hook(n)))
        local_n = 0
        batches = analysis.batches(batch_size, device=run_device, dtype=dtype,
                                   lo=shard.start, hi=shard.stop)
        bar = progress_bar(len(shard), progress and distributed.is_main(), "activations", "ex")
        with analysis_mode(work), torch.no_grad(), bar:
            for x, _ in batches:
                work(x)
                local_n += len(x)
                bar.update(len(x))
            if local_n == 0:
                # An empty shard (more ranks than examples): one unrecorded forward fixes
                # the accumulator shapes so that every rank all-reduces the same tensors.
                rec.recording = False
                x, _ = next(analysis.batches(1, device=run_device, dtype=dtype, lo=0, hi=1))
                work(x)
    finally:
        for h in handles:
            h.remove()

    # One all-reduce over every accumulator, in model order (identical on every rank).
    parts: list[torch.Tensor] = [torch.tensor([float(local_n)], dtype=torch.float64)]
    for n in act_names:
        for acc in rec.act.get(n, []):
            parts += [acc[0].reshape(1), acc[1].reshape(1), acc[2]]
    for n in block_names:
        if n in rec.out:
            parts.append(rec.out[n])
    flat = torch.cat([p.to(acc_device) for p in parts])
    flat = distributed.all_reduce_sum(flat).cpu()

    samples = int(flat[0])
    offset = 1
    layers: dict[str, LayerStats] = {}
    owner = {n: next((b for b in block_names if n.startswith(b + ".")), None) for n in act_names}
    for n in act_names:
        values = active = neurons = dead = 0
        for acc in rec.act.get(n, []):
            k = acc[2].numel()
            values += int(flat[offset])
            active += int(flat[offset + 1])
            fired = flat[offset + 2 : offset + 2 + k]
            neurons += k
            dead += int((fired == 0).sum())
            offset += 2 + k
        layers[n] = LayerStats(
            name=n,
            kind=type(modules[n]).__name__,
            block=owner[n],
            active_fraction=active / values if values else math.nan,
            active=active,
            values=values,
            neurons=neurons,
            dead=dead,
        )
    block_stats: dict[str, BlockStats] = {}
    for i, b in enumerate(block_names):
        if b in rec.out:
            norm_sum, count = float(flat[offset]), float(flat[offset + 1])
            offset += 2
        else:
            norm_sum, count = math.nan, 0.0
        inside = [layers[n] for n in act_names if n.startswith(b + ".")]
        values = sum(s.values for s in inside)
        active = sum(s.active for s in inside)
        params = list(orig_modules[b].parameters())
        block_stats[b] = BlockStats(
            name=b,
            index=i,
            layers=tuple(s.name for s in inside),
            active_fraction=active / values if values else math.nan,
            active=active,
            values=values,
            neurons=sum(s.neurons for s in inside),
            dead=sum(s.dead for s in inside),
            output_norm=norm_sum / count if count else math.nan,
            weight_norm=_weight_norm(params),
            params=sum(p.numel() for p in params),
        )

    values = sum(s.values for s in layers.values())
    active = sum(s.active for s in layers.values())
    return ActivationStats(
        samples=samples,
        weight_norm=_weight_norm(list(model.parameters())),
        active_fraction=active / values if values else math.nan,
        active=active,
        values=values,
        neurons=sum(s.neurons for s in layers.values()),
        dead=sum(s.dead for s in layers.values()),
        layers=layers,
        blocks=block_stats,
    )
