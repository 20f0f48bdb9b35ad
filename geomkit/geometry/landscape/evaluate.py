"""Loss and accuracy on a grid of perturbed weights theta + a*d1 + b*d2.

For every grid point ``(a, b)`` the model's parameters are overwritten in place
with ``theta + a*d1 + b*d2`` and the model is evaluated (eval mode,
``torch.inference_mode``) on the analysis data:

    L(a, b) = (1/N) sum_n loss(f(x_n; theta + a d1 + b d2), y_n)
    acc(a, b) = 100/N * #{n : argmax f(x_n; ...) = y_n}        (percent, as the reference)

``loss`` is cross-entropy by default, or any of :func:`geomkit.geometry._inputs.resolve_loss`
(``ce`` with label smoothing, ``bce``, ``mse``, a per-example callable); ``y_n`` in the
accuracy is the class of the target (the argmax of a soft / one-hot target).  The data are
``(inputs, targets)`` tensors or any iterable of ``(x, y)`` batches such as a DataLoader
(:func:`geomkit.geometry._inputs.as_data`): tensors are cut into batches once and kept on
the device, an iterable is streamed again for every grid point (its own batches, split
when larger than ``batch_size``); the per-batch loss sums are added and divided by N, so
the batching changes a value by rounding only.  The model may return a tuple, a dict or an
object with ``.logits`` (:func:`geomkit.geometry._inputs.logits_of`).

Parameters whose directions are zero everywhere (1-D parameters under
``ignore="biasbn"``) are not touched; buffers never are.  At ``a = b = 0`` the saved
``theta`` is copied back bit for bit, so the center reproduces the unperturbed loss
of :func:`evaluate` exactly.  The original weights, the train/eval flags, device and
dtype are restored after the run and on error.

On CPU this in-place loop beats ``torch.func.functional_call`` + ``vmap`` over grid
points (see ``docs/benchmarks/landscape.md``); ``points_per_call > 1`` selects the
vmap path, which may pay on a GPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from geomkit.errors import SpecError
from geomkit.geometry._inputs import (
    AnalysisData,
    as_data,
    logits_of,
    resolve_loss,
    resolve_loss_sum,
)
from geomkit.geometry._work import analysis_mode, progress_bar, run_device_for
from geomkit.io.landscape import Landscape  # the surface type lives in the I/O layer

from .directions import Direction

#: ``batch_size=None`` picks the power of two in [MIN_AUTO_BATCH, MAX_AUTO_BATCH]
#: whose activations (all leaf-module outputs of one forward) come nearest to
#: ACTIVATION_BUDGET elements.  On an idle 2-core CPU (1 thread, N=1024 digits) resnet-tiny
#: (~16k activations per 8x8 digit) ran at 36-42 points/s with batches of 128-256 but
#: 19-22 with 1024; vit-tiny (~50k) was flat between 64 and 256 and slower at 512.  (Under
#: heavy load the ResNet had preferred 1024 - cache contention - so the first tuning was
#: wrong for a quiet machine.)  Budget 2^23 with a cap of 256 gives ViT/Mixer 128, ResNet 256.
ACTIVATION_BUDGET = 1 << 23
MIN_AUTO_BATCH = 32
MAX_AUTO_BATCH = 256
DEFAULT_BATCH_SIZE = None


@dataclass(frozen=True)
class Grid:
    """A regular grid ``MIN:MAX:NUM`` per axis; ``y=None`` is a 1-D line.

    Points are enumerated row-major over the ``[len(y), len(x)]`` array (row ``i``
    is ``y_i``, column ``j`` is ``x_j``): flat index ``k = i*len(x) + j``.
    """

    x: tuple[float, float, int]
    y: tuple[float, float, int] | None = None

    def __post_init__(self) -> None:
        for name, r in (("x", self.x), ("y", self.y)):
            if r is None:
                continue
            lo, hi, num = r
            if (
                not (math.isfinite(lo) and math.isfinite(hi))
                or int(num) < 1
                or (num > 1 and hi <= lo)
            ):
                raise SpecError(f"grid {name} needs finite MIN < MAX and NUM >= 1, got {r}")

    @staticmethod
    def _coords(r: tuple[float, float, int]) -> np.ndarray:
        lo, hi, num = r
        c = np.linspace(float(lo), float(hi), int(num))
        c[np.abs(c) < 1e-12 * max(abs(hi - lo), 1e-300)] = 0.0  # the center exactly 0
        return c

    @property
    def xcoordinates(self) -> np.ndarray:
        return self._coords(self.x)

    @property
    def ycoordinates(self) -> np.ndarray | None:
        return None if self.y is None else self._coords(self.y)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.x[2]),) if self.y is None else (int(self.y[2]), int(self.x[2]))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coords(self, flat: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Coefficients ``[P, ndim]`` (``a`` then ``b``) of the flat indices ``flat``."""
        flat = np.arange(self.size) if flat is None else np.asarray(flat, dtype=np.int64)
        x = self.xcoordinates
        if self.y is None:
            return x[flat][:, None]
        i, j = np.divmod(flat, len(x))
        return np.stack([x[j], self.ycoordinates[i]], axis=1)

    def spec(self) -> dict:
        """``{"x": "MIN:MAX:NUM", "y": ... or None}`` (numbers round-trip exactly)."""

        def num(v: float) -> str:
            v = float(v)
            return str(int(v)) if v.is_integer() else repr(v)

        def fmt(r):
            return None if r is None else f"{num(r[0])}:{num(r[1])}:{int(r[2])}"

        return {"x": fmt(self.x), "y": fmt(self.y)}


def activations_per_example(model: nn.Module, example: torch.Tensor) -> int:
    """Number of elements output by the leaf modules for one example (one forward)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if torch.is_tensor(out):
            total += out.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def auto_batch_size(
    model: nn.Module, inputs: torch.Tensor, *, device=None, dtype: torch.dtype | None = None
) -> int:
    """Deterministic evaluation batch size (see :data:`ACTIVATION_BUDGET`).

    ``B = 2^round(log2(budget / activations_per_example))`` clamped to
    ``[MIN_AUTO_BATCH, MAX_AUTO_BATCH]`` and to N.  Being a function of the
    architecture and input shape only, a resumed run uses the same batches.
    """
    return _auto_batch_size(model, inputs[:1], len(inputs), device, dtype)


def _auto_batch_size(model: nn.Module, first: torch.Tensor, n: int, device,
                     dtype: torch.dtype | None) -> int:
    """:func:`auto_batch_size` from the first example and the number of examples."""
    if device is None:  # where the model is (CPU inputs for a CUDA model are fine)
        p = next(model.parameters(), None)
        device = p.device if p is not None else first.device
    example = first.to(device=device, dtype=dtype or first.dtype)
    act = activations_per_example(model, example)
    bs = MAX_AUTO_BATCH if act <= 0 else 1 << max(0, round(math.log2(ACTIVATION_BUDGET / act)))
    return int(max(1, min(n, max(MIN_AUTO_BATCH, min(MAX_AUTO_BATCH, bs)))))


class _Streamed:
    """An iterable source's batches, read again on every pass (nothing kept)."""

    def __init__(self, data: AnalysisData, batch_size: int, device, dtype) -> None:
        self.data, self.batch_size, self.device, self.dtype = data, batch_size, device, dtype

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.data.batches(self.batch_size, device=self.device, dtype=self.dtype)


def _prepare_batches(model, data: AnalysisData, batch_size, device,
                     dtype) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if batch_size is None:
        first, _ = next(data.batches(1, lo=0, hi=1))
        bs = _auto_batch_size(model, first, data.n, device, dtype)
    else:
        bs = int(batch_size)
    if data.tensors is None:
        return _Streamed(data, bs, device, dtype)
    return list(data.batches(bs, device=device, dtype=dtype))


def _labels(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices: integer targets as they are, soft / one-hot targets their argmax."""
    if y.is_floating_point() and y.ndim == logits.ndim:
        return y.argmax(dim=-1)
    return y


def _loss_acc(model: nn.Module, batches, n: int, loss_sum) -> tuple[float, float]:
    loss = None
    correct = None
    for x, y in batches:
        out = logits_of(model(x))
        l_ = loss_sum(out, y).double()
        c_ = (out.argmax(dim=1) == _labels(y, out)).sum()
        loss = l_ if loss is None else loss + l_
        correct = c_ if correct is None else correct + c_
    return float(loss) / n, 100.0 * float(correct) / n


def _data_and_dirs(data: Any, targets: Any, directions: Any, last: Any) -> tuple[Any, ...]:
    """``(data, targets, directions, last)``, shifted left by one when ``targets`` holds the
    directions (``f(model, loader, directions, coords_or_grid)``)."""
    if last is None and targets is not None and not isinstance(targets, torch.Tensor):
        return data, None, targets, directions
    if directions is None or last is None:
        raise SpecError("directions and coordinates are required")
    return data, targets, directions, last


@contextlib.contextmanager
def _on_device(model: nn.Module, device: Any, dtype: torch.dtype | None) -> Iterator[torch.device]:
    """``model`` moved in place to the run device/dtype and in analysis mode; moved back
    and its flags restored after. (In place, not a work copy: the grid perturbs the
    parameters and copies them back, so one model is all the memory a surface needs.)"""
    p = next(model.parameters())
    home_device, home_dtype = p.device, p.dtype
    # "cuda" for a model on cuda:1 means cuda:1 (no move to the current CUDA device)
    run_device = run_device_for(device, home_device)
    moved = run_device != home_device or (dtype or home_dtype) != home_dtype
    if moved:
        model.to(device=run_device, dtype=dtype or home_dtype)
    try:
        with analysis_mode(model):
            yield run_device
    finally:
        if moved:
            model.to(device=home_device, dtype=home_dtype)


def evaluate(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    *,
    loss: str | Callable[..., torch.Tensor] = "ce",
    label_smoothing: float = 0.0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean loss (cross-entropy by default) and accuracy (percent) of the unperturbed model,
    in eval mode, on ``(inputs, targets)`` tensors or any iterable of ``(x, y)`` batches.

    With the same ``batch_size`` (None: :func:`auto_batch_size`, as the grid) and ``loss``
    this is bit-identical to the center of a grid.
    """
    loss_sum = resolve_loss_sum(loss, label_smoothing)
    analysis = as_data(data, targets)
    with _on_device(model, device, dtype) as run_device:
        batches = _prepare_batches(model, analysis, batch_size, run_device, dtype)
        with torch.inference_mode():
            return _loss_acc(model, batches, analysis.n, loss_sum)


class _Perturber:
    """Writes ``theta + sum_k c_k d_k`` into the parameters in place; restores theta."""

    def __init__(self, model: nn.Module, directions: Sequence[Direction]):
        params = dict(model.named_parameters())
        for d in directions:
            unknown = sorted(set(d) - set(params))
            if unknown:
                raise SpecError(
                    f"direction names {unknown[:3]} are not parameters of the model; "
                    "directions must be keyed by the model's state_dict names"
                )
        self.entries: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]] = []
        for name, p in params.items():
            ds = []
            for d in directions:
                t = d.get(name)
                ds.append(
                    None if t is None or not bool(torch.any(t != 0)) else t.to(p.device, p.dtype)
                )
            if all(t is None for t in ds):
                continue
            self.entries.append((p.data, p.detach().clone(), ds))

    def set(self, coeffs: Sequence[float]) -> None:
        with torch.no_grad():
            for p, theta, ds in self.entries:
                first = True
                for c, d in zip(coeffs, ds, strict=True):
                    if d is None or c == 0.0:
                        continue
                    if first:
                        torch.add(theta, d, alpha=float(c), out=p)
                        first = False
                    else:
                        p.add_(d, alpha=float(c))
                if first:  # all coefficients zero: theta exactly
                    p.copy_(theta)

    def restore(self) -> None:
        with torch.no_grad():
            for p, theta, _ in self.entries:
                p.copy_(theta)


def evaluate_points(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    directions: Sequence[Direction] | None = None,
    coords: np.ndarray | None = None,
    *,
    loss: str | Callable[..., torch.Tensor] = "ce",
    label_smoothing: float = 0.0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    points_per_call: int = 1,
    progress: bool = False,
    callback: Callable[[int, float, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at ``theta + sum_k coords[p, k] * directions[k]`` for each row ``p``.

    Args:
        model: the network (its output may be a tuple / dict / object holding the logits).
        data, targets: ``(inputs, targets)`` tensors (also as two arguments) or any iterable
            of ``(x, y)`` batches (a DataLoader; then ``evaluate_points(model, loader,
            directions, coords)`` works too).
        directions: one name->tensor dict per column of ``coords``.
        coords: ``[P, len(directions)]`` coefficients.
        loss: ``ce`` (default), ``ce:ε``, ``bce``, ``mse`` or a callable
            ``(logits, targets) -> per-example losses``; ``label_smoothing``: ε for ``ce``.
        points_per_call: 1 = the in-place loop (fastest on CPU); K > 1 evaluates K
            points per forward with ``torch.func.functional_call`` + ``vmap``.
        callback: called as ``callback(p, loss, acc)`` after each point (flushing).

    Returns:
        ``(loss, acc)`` float64 arrays of length P; non-finite losses are kept as is.
    """
    data, targets, directions, coords = _data_and_dirs(data, targets, directions, coords)
    loss_sum = resolve_loss_sum(loss, label_smoothing)
    loss_each = resolve_loss(loss, label_smoothing)
    analysis = as_data(data, targets)
    coords = np.asarray(coords, dtype=np.float64).reshape(len(coords), -1)
    if coords.shape[1] != len(directions):
        raise ValueError(f"coords have {coords.shape[1]} columns for {len(directions)} directions")
    n_pts = len(coords)
    losses = np.full(n_pts, np.nan)
    accs = np.full(n_pts, np.nan)
    if n_pts == 0:
        return losses, accs
    bar = progress_bar(n_pts, progress, "landscape", "pt")
    with _on_device(model, device, dtype) as run_device:
        batches = _prepare_batches(model, analysis, batch_size, run_device, dtype)
        n = analysis.n
        pert = _Perturber(model, directions)
        try:
            if points_per_call <= 1:
                for p in range(n_pts):
                    pert.set(coords[p])
                    with torch.inference_mode():
                        losses[p], accs[p] = _loss_acc(model, batches, n, loss_sum)
                    if callback is not None:
                        callback(p, losses[p], accs[p])
                    bar.update(1)
            else:
                pert.restore()
                for s in range(0, n_pts, points_per_call):
                    chunk = coords[s : s + points_per_call]
                    l_, a_ = _vmap_points(model, batches, n, directions, chunk, loss_each)
                    for q in range(len(chunk)):
                        losses[s + q], accs[s + q] = l_[q], a_[q]
                        if callback is not None:
                            callback(s + q, l_[q], a_[q])
                    bar.update(len(chunk))
        finally:
            pert.restore()
            bar.close()
    return losses, accs


def _vmap_points(model, batches, n, directions, chunk,
                 loss_each) -> tuple[list[float], list[float]]:
    """K grid points in one batched forward: params stacked [K, ...], vmapped."""
    from torch.func import functional_call, vmap

    c = torch.as_tensor(chunk)
    params = {}
    for name, p in model.named_parameters():
        w = p.detach()
        stacked = w.unsqueeze(0).expand(len(chunk), *w.shape).clone()
        for k, d in enumerate(directions):
            t = d.get(name)
            if t is None:
                continue
            t = t.to(w.device, w.dtype)
            coef = c[:, k].to(w.device, w.dtype).view(-1, *([1] * w.dim()))
            stacked = stacked + coef * t
        params[name] = stacked
    buffers = {name: b for name, b in model.named_buffers()}

    def f(ps, x):
        return logits_of(functional_call(model, (ps, buffers), (x,)))

    loss = torch.zeros(len(chunk), dtype=torch.float64, device=c.device)
    correct = torch.zeros(len(chunk), dtype=torch.int64)
    with torch.inference_mode():
        for x, y in batches:
            out = vmap(f, in_dims=(0, None))(params, x)  # [K, B, C]
            reps = (len(chunk),) + (1,) * (y.ndim - 1)  # soft targets [B, C] -> [K*B, C]
            each = loss_each(out.flatten(0, 1), y.repeat(*reps))
            loss += each.view(len(chunk), -1).double().sum(1).cpu()
            correct += (out.argmax(-1) == _labels(y, out[0])).sum(1).cpu()
    return (loss / n).tolist(), (100.0 * correct.double() / n).tolist()


def loss_landscape(
    model: nn.Module,
    data: Any,
    targets: torch.Tensor | None = None,
    directions: Sequence[Direction] | None = None,
    grid: Grid | None = None,
    *,
    loss: str | Callable[..., torch.Tensor] = "ce",
    label_smoothing: float = 0.0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    points_per_call: int = 1,
    progress: bool = False,
) -> Landscape:
    """The whole surface in memory (no files): ``L(a, b)`` and accuracy on ``grid``.

    ``data``/``targets``/``loss``/``label_smoothing`` as :func:`evaluate_points` (a
    DataLoader: ``loss_landscape(model, loader, directions, grid)``).  ``directions`` has
    one entry for a line (``grid.y is None``), two for a surface.  See
    :func:`geomkit.geometry.landscape.compute_landscape` for resumable files.
    """
    data, targets, directions, grid = _data_and_dirs(data, targets, directions, grid)
    if len(directions) != grid.ndim:
        raise SpecError(f"a {grid.ndim}-D grid needs {grid.ndim} directions, got {len(directions)}")
    t0 = time.perf_counter()
    values, acc = evaluate_points(
        model,
        data,
        targets,
        directions,
        grid.coords(),
        loss=loss,
        label_smoothing=label_smoothing,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        points_per_call=points_per_call,
        progress=progress,
    )
    return Landscape(
        xcoordinates=grid.xcoordinates,
        ycoordinates=grid.ycoordinates,
        loss=values.reshape(grid.shape),
        acc=acc.reshape(grid.shape),
        done=np.ones(grid.shape, dtype=bool),
        attrs=dict(grid.spec()),
        seconds=time.perf_counter() - t0,
    )
