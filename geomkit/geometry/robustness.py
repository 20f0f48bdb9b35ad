r"""Top-1 accuracy on clean and corrupted test examples (the paper's "-C" column).

For every corruption :math:`c` of :data:`geomkit.data.CORRUPTIONS` and severity
:math:`s \in \{1..5\}` the test inputs are un-normalized, corrupted, clipped to [0, 1] and
re-normalized (:func:`geomkit.data.corrupt_normalized`), then classified by the model in
eval mode.  Reported:

* ``clean``: top-1 accuracy on the unchanged inputs;
* ``accuracy[c]``: the accuracy at each severity, ``(s=1, ..., s=5)``;
* ``per_corruption[c]``: its mean over the severities;
* ``mean_corrupted``: the mean over corruptions and severities, the "-C" number.

Accuracies are fractions in [0, 1]; a prediction is the argmax of the logits, the label
the target's class (the argmax of a soft / one-hot target).

**Data.**  ``(inputs, targets)`` tensors or any iterable of ``(x, y)`` batches such as a
DataLoader (:func:`geomkit.geometry._inputs.as_data`), streamed once: the batches are
regrouped into the fixed chunks below by example index, so a DataLoader gives the same
accuracies as the equivalent tensors, whatever its batch size.  The corruptions run where
the data lie (a DataLoader's batches: the CPU), the model where ``device`` says.  The model
may return a tuple, a dict or an object with ``.logits``
(:func:`geomkit.geometry._inputs.logits_of`).

**Determinism.**  The examples are corrupted in fixed chunks of :data:`CHUNK` examples;
chunk :math:`k` of corruption :math:`c` at severity :math:`s` draws its noise from a CPU
generator seeded with ``SeedSequence([seed, crc32(c), s, k])``.  The result therefore
depends on ``seed`` only: not on ``batch_size``, the device, the subset of corruptions
asked for, or the number of ``torchrun`` ranks (each rank takes a contiguous range of
chunks and the correct counts are all-reduced).

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x, y = torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
    >>> r = robustness(m, x, y, corruptions=("contrast",), severities=(1, 5))
    >>> r.accuracy["contrast"].__len__(), 0.0 <= r.mean_corrupted <= 1.0
    (2, True)
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from geomkit import distributed
from geomkit.data import CORRUPTIONS, DataSpec, corrupt, corrupt_normalized
from geomkit.errors import DataError, SpecError
from geomkit.geometry._inputs import AnalysisData, as_data, logits_of
from geomkit.geometry._work import analysis_mode, progress_bar, work_model

__all__ = ["CHUNK", "RobustnessResult", "robustness", "checkpoint_robustness"]

#: Examples corrupted together with one noise generator (fixed, so that results do not
#: depend on the batch size).
CHUNK = 512


@dataclass(frozen=True)
class RobustnessResult:
    """Clean and corrupted top-1 accuracy (fractions in [0, 1]).

    Attributes:
        clean: accuracy on the unchanged inputs.
        accuracy: corruption → accuracy at each of ``severities``.
        per_corruption: corruption → mean over severities.
        mean_corrupted: mean over every corruption and severity (the "-C" column).
        severities: the severities measured, in order.
        n_samples: number of test examples.
        seed: the noise seed.
        seconds: wall time.
    """

    clean: float
    accuracy: dict[str, tuple[float, ...]]
    per_corruption: dict[str, float]
    mean_corrupted: float
    severities: tuple[int, ...]
    n_samples: int
    seed: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """Plain values (JSON- and HDF5-friendly)."""
        return {
            "clean": self.clean,
            "mean_corrupted": self.mean_corrupted,
            "per_corruption": dict(self.per_corruption),
            "accuracy": {k: list(v) for k, v in self.accuracy.items()},
            "severities": list(self.severities),
            "n_samples": self.n_samples,
            "seed": self.seed,
            "seconds": self.seconds,
        }


def _chunk_generator(seed: int, name: str, severity: int, chunk: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity, chunk])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def _mean_std(
    normalization: DataSpec | tuple[Sequence[float], Sequence[float]] | None,
) -> tuple[list[float], list[float]] | None:
    """Resolve the normalization constants once (None: inputs are already in [0, 1])."""
    if normalization is None:
        return None
    if isinstance(normalization, DataSpec):
        if not normalization.normalize:
            return None
        from geomkit.data.sources import raw_data

        raw = raw_data(normalization)
        return [float(m) for m in raw.mean], [float(s) for s in raw.std]
    try:
        mean, std = normalization
        return [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError):
        raise DataError(
            "normalization must be a DataSpec, a (mean, std) pair of per-channel lists or None"
        ) from None


def _chunks(data: AnalysisData, first: int, stop: int,
            size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(k, x, y)`` for the chunks ``k`` in ``[first, stop)``: examples
    ``[k·size, (k+1)·size)`` (the last one short), read in one pass over the data.

    Tensors give the slices themselves; an iterable's batches are cut at the chunk
    boundaries and the pieces of one chunk concatenated."""
    lo, hi = first * size, min(stop * size, data.n)
    if data.tensors is not None:
        x, y = data.tensors
        for k in range(first, stop):
            yield k, x[k * size : min((k + 1) * size, hi)], y[k * size : min((k + 1) * size, hi)]
        return
    k, xs, ys, have = first, [], [], 0
    for x, y in data.batches(size, lo=lo, hi=hi):
        while len(x):
            take = min(size - have, len(x))
            xs.append(x[:take])
            ys.append(y[:take])
            x, y, have = x[take:], y[take:], have + take
            if have == size:
                yield k, torch.cat(xs), torch.cat(ys)
                k, xs, ys, have = k + 1, [], [], 0
    if have:
        yield k, torch.cat(xs), torch.cat(ys)


def _labels(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices: integer targets as they are, soft / one-hot targets their argmax."""
    if y.is_floating_point() and y.ndim == logits.ndim:
        return y.argmax(dim=-1)
    return y


def robustness(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    *,
    normalization: DataSpec | tuple[Sequence[float], Sequence[float]] | None = None,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    batch_size: int | None = 512,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RobustnessResult:
    """Top-1 accuracy of ``model`` on ``data`` clean and under every corruption.

    Args:
        model: classifier returning logits ``(N, C)`` (or a tuple / dict / object holding
            them); evaluated in eval mode and left unchanged (its train/eval mode is
            restored).
        data: test inputs ``N×C×H×W`` as the model sees them (normalized or not), with
            ``targets``; or ``(inputs, targets)`` tensors; or any iterable of ``(x, y)``
            batches (a DataLoader), streamed once.
        targets: integer labels ``(N,)`` (or soft / one-hot ``(N, C)``: their argmax), when
            ``data`` is an inputs tensor.
        normalization: how ``inputs`` were normalized: the ``DataSpec`` that produced
            them, an explicit ``(mean, std)`` pair, or None for un-normalized inputs in
            [0, 1].
        corruptions: names from :data:`geomkit.data.CORRUPTIONS`.
        severities: severities in 1..5.
        batch_size: evaluation mini-batch (None: a whole chunk at once); does not change
            the result.
        device: where to evaluate (None: the model's device).
        dtype: evaluation dtype (None: the model's); a copy of the model is cast.
        seed: noise seed (see the module docstring).
        progress: tqdm bar over (corruption, severity) pairs on stderr.

    Returns:
        A :class:`RobustnessResult`.

    Raises:
        DataError: empty or mismatched inputs/targets, unknown corruption.
        SpecError: a severity outside 1..5, no corruption or severity, bad batch size.
    """
    t0 = time.perf_counter()
    if isinstance(data, torch.Tensor) and targets is not None:
        if len(data) == 0:
            raise DataError("robustness needs at least one test example")
        if len(data) != len(targets):
            raise DataError(f"inputs ({len(data)}) and targets ({len(targets)}) differ in length")
    corruptions = tuple(corruptions)
    severities = tuple(severities)
    for c in corruptions:
        if c not in CORRUPTIONS:
            raise DataError(
                f"unknown corruption {c!r}; valid corruptions: {', '.join(CORRUPTIONS)}"
            )
    if not corruptions or not severities:
        raise SpecError("robustness needs at least one corruption and one severity")
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5:
            raise SpecError(f"corruption severities must be integers 1..5, got {s!r}")
    if batch_size is not None and batch_size < 1:
        raise SpecError(f"batch_size must be >= 1, got {batch_size}")
    mean_std = _mean_std(normalization)
    analysis = as_data(data, targets)

    # "cuda" for a model on cuda:1 is cuda:1 (no copy); a copy is converted from the
    # model's tensors directly, never first cloned on the model's GPU
    work, run_device, run_dtype = work_model(model, device, dtype)

    n = analysis.n
    chunk_size = CHUNK
    n_chunks = (n + chunk_size - 1) // chunk_size
    my_chunks = distributed.shard_range(n_chunks)
    pairs = [(c, s) for c in corruptions for s in severities]
    # correct counts: [clean, pair_0, pair_1, ...]
    correct = torch.zeros(1 + len(pairs), dtype=torch.float64)

    def count(x: torch.Tensor, y: torch.Tensor) -> float:
        hits = 0
        step = batch_size or len(x)
        for i in range(0, len(x), step):
            xb = x[i : i + step].to(run_device, run_dtype)
            yb = y[i : i + step].to(run_device)
            logits = logits_of(work(xb))
            hits += int((logits.argmax(dim=-1) == _labels(yb, logits)).sum())
        return float(hits)

    def corrupted(x: torch.Tensor, name: str, severity: int, chunk: int) -> torch.Tensor:
        g = _chunk_generator(seed, name, severity, chunk)
        if mean_std is None:
            return corrupt(x, name, severity, g)
        return corrupt_normalized(x, name, severity, mean_std, g)

    bar = progress_bar(len(my_chunks) * (len(pairs) + 1), progress and distributed.is_main(),
                       "robustness", "set")
    with analysis_mode(work), torch.no_grad(), bar:
        # one pass over the data: every (corruption, severity) of a chunk, chunk by chunk
        # (the counts are integers, so the order of the sums does not matter)
        for k, x, y in _chunks(analysis, my_chunks.start, my_chunks.stop, chunk_size):
            correct[0] += count(x, y)
            bar.update(1)
            for j, (name, severity) in enumerate(pairs, start=1):
                correct[j] += count(corrupted(x, name, severity, k), y)
                bar.set_postfix_str(f"{name}/{severity}")
                bar.update(1)
    if distributed.active():  # NCCL reduces only device tensors
        correct = distributed.all_reduce_sum(correct.to(run_device)).cpu()
    # one process keeps the counts on the CPU: a float64 tensor cannot go to MPS at all
    acc = (correct / n).tolist()
    accuracy = {
        c: tuple(acc[1 + i * len(severities) + j] for j in range(len(severities)))
        for i, c in enumerate(corruptions)
    }
    per = {c: float(np.mean(v)) for c, v in accuracy.items()}
    return RobustnessResult(
        clean=float(acc[0]),
        accuracy=accuracy,
        per_corruption=per,
        mean_corrupted=float(np.mean(acc[1:])),
        severities=severities,
        n_samples=n,
        seed=seed,
        seconds=time.perf_counter() - t0,
    )


def checkpoint_robustness(checkpoint: Any, n: int | None = None, **kwargs: Any) -> RobustnessResult:
    """:func:`robustness` of a :class:`geomkit.Checkpoint` on its first ``n`` test examples.

    The test split of the checkpoint's data spec (eval preprocessing, no augmentation;
    ``n=None``: all of it); keyword options as for :func:`robustness`.
    """
    x, y = checkpoint.analysis_data("test", n)
    kwargs.setdefault("normalization", checkpoint.data_spec)
    return robustness(checkpoint.model, x, y, **kwargs)
