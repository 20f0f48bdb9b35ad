"""What every measurement takes: analysis data, a loss, and model outputs reduced to logits.

**Data.** ``data`` is a pair of tensors ``(inputs, targets)`` or any iterable of ``(x, y)``
batches — a :class:`torch.utils.data.DataLoader` included — and :func:`as_data` makes
either an :class:`AnalysisData`. One rule for "the first N examples": the examples in
iteration order, the batch that crosses N cut at N. Means over the data weight every
example equally (a batch's *sum* of losses divided by the total N), so uneven batches
give the same numbers as one tensor. A re-iterable source (a DataLoader, a list) is
streamed again on every pass, so N may exceed memory; a one-shot iterator (a generator)
is read once and kept.

**Loss.** :func:`resolve_loss` maps a name or a callable to ``f(logits, targets) ->
per-example losses``:

- ``ce`` (default): softmax cross-entropy, optionally with label smoothing
  (``ce`` + ``label_smoothing=ε``, or the spec ``"ce:0.1"``);
- ``bce``: sigmoid cross-entropy on one-hot targets, summed over the classes (the loss the
  paper's authors' group trains ViTs with);
- ``mse``: squared error against one-hot targets, summed over the classes;
- a callable ``(logits, targets) -> (B,)`` per-example losses (a scalar is refused: a mean
  cannot be weighted by batch size).

Integer targets are class indices; floating targets of shape ``(B, C)`` are soft/one-hot
labels (mixup) and are used as they are.

**Outputs.** :func:`logits_of` reduces what a model returns to one logits tensor: a tensor
itself, a tuple/list's first element, a dict's ``"logits"`` (else its first value), or an
object's ``.logits`` attribute (HuggingFace style).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from geomkit.errors import DataError, ModelError, SpecError

__all__ = ["LOSSES", "AnalysisData", "as_data", "as_input_data", "logits_of", "resolve_loss",
           "resolve_loss_sum"]

LOSSES = ("ce", "bce", "mse")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- outputs ---------------------------------------------------------------------------------


def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's output (tensor, tuple/list, dict, or an object with
    ``.logits``); :class:`~geomkit.errors.ModelError` otherwise."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ModelError(f"the model returned {type(out).__name__}, not logits (a tensor, a tuple "
                    "or dict holding one, or an object with .logits)")


# -- losses ----------------------------------------------------------------------------------


def _targets_like(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise DataError(f"soft targets of shape {tuple(targets.shape)} do not match logits "
                            f"{tuple(logits.shape)}")
        return targets.to(logits.dtype)
    return F.one_hot(targets, logits.shape[-1]).to(logits.dtype)


def resolve_loss(loss: str | LossFn = "ce", label_smoothing: float = 0.0) -> LossFn:
    """``f(logits, targets) -> per-example losses`` for a name, a spec ``"ce:0.1"`` or a
    callable (checked to return one loss per example on first use)."""
    if callable(loss):
        return _checked(loss)
    if not isinstance(loss, str):
        raise SpecError(f"loss must be one of {', '.join(LOSSES)} or a callable, got {loss!r}",
                        param="loss")
    name, _, arg = loss.partition(":")
    if arg:
        try:
            label_smoothing = float(arg)
        except ValueError:
            raise SpecError(f"loss {loss!r}: label smoothing must be a number",
                            param="loss") from None
    if not 0 <= label_smoothing < 1:
        raise SpecError(f"label_smoothing must be in [0, 1), got {label_smoothing}",
                        param="label_smoothing")
    if name == "ce":
        def ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, targets, reduction="none",
                                   label_smoothing=label_smoothing)
        return ce
    if label_smoothing:
        raise SpecError(f"label smoothing applies to ce only, not {name!r}",
                        param="label_smoothing")
    if name == "bce":
        def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            t = _targets_like(logits, targets)
            return F.binary_cross_entropy_with_logits(logits, t, reduction="none").sum(-1)
        return bce
    if name == "mse":
        def mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return (logits - _targets_like(logits, targets)).square().sum(-1)
        return mse
    raise SpecError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)} or a callable",
                    param="loss")


def resolve_loss_sum(loss: str | LossFn = "ce", label_smoothing: float = 0.0) -> LossFn:
    """``f(logits, targets) -> Σ per-example losses`` (a scalar): what a mean over N examples
    accumulates per batch. Plain ``ce`` sums inside ``F.cross_entropy`` (the summation every
    stored result was computed with, so results stay bit-identical); the rest sum
    :func:`resolve_loss`'s per-example values."""
    if isinstance(loss, str) and loss.partition(":")[0] == "ce":
        per = resolve_loss(loss, label_smoothing)  # validates
        eps = float(loss.partition(":")[2] or label_smoothing)
        del per

        def ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, targets, reduction="sum", label_smoothing=eps)

        return ce_sum
    per_example = resolve_loss(loss, label_smoothing)
    return lambda logits, targets: per_example(logits, targets).sum()


def _checked(fn: LossFn) -> LossFn:
    def per_example(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = fn(logits, targets)
        if not isinstance(out, torch.Tensor) or out.shape != (len(logits),):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SpecError(f"a loss callable must return one loss per example, shape "
                            f"({len(logits)},), got {shape}", param="loss")
        return out

    return per_example


# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisData:
    """The first ``n`` examples of a source, as ``(x, y)`` batches (see the module doc).

    Attributes:
        n: the number of examples (after the "first N" cut).
        tensors: ``(inputs, targets)`` when the source was a pair of tensors, else None.
    """

    n: int
    tensors: tuple[torch.Tensor, torch.Tensor] | None
    _source: Any
    _limit: int | None

    def batches(self, batch_size: int | None = None, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None, lo: int = 0,
                hi: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Examples ``[lo, hi)`` of the first ``n`` as batches on ``device`` (floating inputs
        cast to ``dtype``). Tensors are cut into ``batch_size`` pieces (None: one batch);
        an iterable keeps its own batches (cut at ``lo``/``hi``, split when larger than
        ``batch_size``)."""
        hi = self.n if hi is None else min(hi, self.n)
        for x, y in self._raw(batch_size, lo, hi):
            if device is not None:
                # asynchronous only towards a GPU: a non-blocking GPU→CPU copy can be read
                # before it has landed
                nb = torch.device(device).type == "cuda"
                x = x.to(device, non_blocking=nb)
                y = y.to(device, non_blocking=nb)
            if dtype is not None and x.is_floating_point():
                x = x.to(dtype)
            yield x, y

    def _raw(self, batch_size: int | None, lo: int,
             hi: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is not None:
            x, y = self.tensors
            step = max((hi - lo) if not batch_size else batch_size, 1)
            for s in range(lo, hi, step):
                yield x[s : min(s + step, hi)], y[s : min(s + step, hi)]
            return
        pos = 0
        for x, y in _pairs(self._source):
            b = len(x)
            a, e = max(lo - pos, 0), min(hi - pos, b)
            if e > a:
                x, y = x[a:e], y[a:e]
                step = batch_size or len(x)
                for s in range(0, len(x), step):
                    yield x[s : s + step], y[s : s + step]
            pos += b
            if pos >= hi:
                break

    def inputs(self) -> torch.Tensor:
        """All ``n`` inputs as one tensor (for measurements that need them at once)."""
        return torch.cat([x for x, _ in self._raw(None, 0, self.n)]) if self.n else (
            torch.empty(0))


def _pairs(source: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for item in source:
        if isinstance(item, dict):
            item = (item.get("image", item.get("x")), item.get("label", item.get("y")))
        try:
            x, y = item
        except (TypeError, ValueError):
            raise DataError(f"a data batch must be an (inputs, targets) pair, got "
                            f"{type(item).__name__}") from None
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError("a data batch must hold tensors (inputs, targets)")
        if len(x) != len(y):
            raise DataError(f"a batch has {len(x)} inputs but {len(y)} targets")
        yield x, y


def as_data(data: Any, targets: torch.Tensor | None = None, *,
            n: int | None = None) -> AnalysisData:
    """Make analysis data from ``(inputs, targets)`` tensors, ``data, targets`` given
    separately, or an iterable of ``(x, y)`` batches; ``n`` keeps the first ``n`` examples.

    Raises:
        DataError: mismatched lengths, batches that are not pairs of tensors.
        SpecError: no examples, or ``n < 1``.
    """
    if n is not None and n < 1:
        raise SpecError(f"n must be >= 1, got {n}", param="n")
    if isinstance(data, AnalysisData):
        return data if n is None else as_data(data._source if data.tensors is None
                                              else data.tensors, n=min(n, data.n))
    if isinstance(data, torch.Tensor):
        if targets is None:
            raise DataError("targets are needed with an inputs tensor (or pass an iterable of "
                            "(x, y) batches)")
        data = (data, targets)
    elif targets is not None:
        raise DataError("targets are given twice: with an iterable of (x, y) batches, pass "
                        "no targets")
    if (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)
            and data[0].ndim >= 1 and data[1].ndim >= 1 and len(data[0]) == len(data[1])):
        x, y = data
        total = len(x) if n is None else min(n, len(x))
        if total == 0:
            raise SpecError("no analysis examples")
        return AnalysisData(total, (x[:total], y[:total]), None, None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        raise DataError(f"inputs ({len(data[0])}) and targets ({len(data[1])}) differ in length")
    source = data
    if iter(source) is source:  # a one-shot iterator: read once, keep the batches
        kept, count = [], 0
        for x, y in _pairs(source):
            kept.append((x, y))
            count += len(x)
            if n is not None and count >= n:
                break
        source = kept
    total = sum(len(x) for x, _ in _pairs(source)) if n is None else _count_upto(source, n)
    if total == 0:
        raise SpecError("no analysis examples")
    return AnalysisData(total, None, source, n)


def _count_upto(source: Iterable[Any], n: int) -> int:
    count = 0
    for x, _ in _pairs(source):
        count += len(x)
        if count >= n:
            return n
    return count


def as_input_data(data: Any, targets: torch.Tensor | None = None, *,
                  n: int | None = None) -> AnalysisData:
    """:func:`as_data` for measurements that need inputs only: also an inputs tensor alone,
    or an iterable whose batches are bare inputs ``x`` (or ``(x,)``); such batches get
    placeholder targets (int8 zeros). ``(x, y)`` batches and pairs of tensors are taken as
    :func:`as_data` takes them (a pair of tensors is ``(inputs, targets)``)."""
    if isinstance(data, torch.Tensor) and targets is None:
        return as_data(data, torch.zeros(len(data) if data.ndim else 0, dtype=torch.int8), n=n)
    pair = (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))
    if isinstance(data, (torch.Tensor, AnalysisData)) or targets is not None or pair:
        return as_data(data, targets, n=n)
    if iter(data) is data:  # one-shot: as_data reads it once and keeps the batches
        return as_data((_with_targets(b) for b in data), n=n)
    return as_data(_InputsOnly(data), n=n)


def _with_targets(item: Any) -> Any:
    if isinstance(item, (tuple, list)) and len(item) == 1:
        item = item[0]
    if isinstance(item, torch.Tensor):
        return item, torch.zeros(len(item) if item.ndim else 0, dtype=torch.int8)
    return item


@dataclass(frozen=True)
class _InputsOnly:
    """A re-iterable source whose bare-input batches get placeholder targets."""

    source: Iterable[Any]

    def __iter__(self) -> Iterator[Any]:
        return (_with_targets(b) for b in self.source)
