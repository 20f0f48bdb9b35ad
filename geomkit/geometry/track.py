"""Sharpness along a training run: a training callback that tracks λ_max every K steps.

Every ``every`` optimizer steps :class:`SharpnessTracker` measures, on a fixed probe set
(the first N training examples, eval mode, the training loss):

- λ_max of the whole model (and of any Hessian blocks asked for) by Lanczos
  (:func:`geomkit.geometry.hessian.hessian_eigs`), **warm-started** from the previous
  step's top eigenvector (the weights moved a little; its eigenvector moved a little);
- the edge-of-stability line of the base optimizer at the step's learning rate η
  (Cohen et al., ICLR 2021): gradient descent with heavy-ball momentum β is stable on a
  quadratic iff λ_max < (2 + 2β)/η — 2/η without momentum, 38/η for β = 0.9;
- for Adam/AdamW, the preconditioned sharpness λ_max(P⁻¹H), P = diag(√v̂ + ε) from the
  optimizer's second moments v̂ (bias-corrected), against its threshold
  (2 + 2β₁)/((1 − β₁)η) (Cohen et al. 2022, "Adaptive gradient methods at the edge of
  stability"; 38/η for β₁ = 0.9). P⁻¹H is similar to the symmetric S H S, S = P^(-1/2),
  whose extreme eigenvalues Lanczos finds on the products s ⊙ H(s ⊙ v);
- for SAM/ASAM, the free sharpness L_b(w + ε) − L_b(w) of the step's own mini-batch b,
  which SAM's ascent step computed anyway (training mode, one batch: noisy);
- loss and accuracy on the probe set and on a test probe set.

Rows are kept in a track file (:mod:`geomkit.io.track`), rewritten atomically after each
tracked step. A resumed run (``train(resume=True)`` after a kill) continues the same
series: its start event drops every row after the checkpoint's step (rows a killed
process wrote after its last checkpoint; the resumed run recomputes them with the same
weights), and the warm start continues from the vector of the last row kept
(saved beside the file at every tracked step and at every epoch's end), so the series
equals an uninterrupted run's.

The probe computations never change the model (weights, modes, buffers: the Hessian
runs on functional copies) and run in a forked RNG state (the training loop's
:func:`~geomkit.train.loop._notify`), so training takes the same steps with or without
tracking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomkit import distributed
from geomkit.errors import SpecError
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.hessian import hessian_eigs
from geomkit.geometry.lanczos import start_vector
from geomkit.io.track import check_track_out, created_stamp, read_track, write_track

__all__ = ["DEFAULT_EVERY", "SharpnessTracker", "adam_scale", "eos_threshold"]

#: Default K of ``geomkit train --track``: tracking costs at most about 10% of the training
#: time of every quick-study model at this K (probe and test sets of 128, tol 1e-2;
#: ``benchmarks/track.py``, docs/benchmarks/track.md: K for 10% was 105-775). One tracked
#: step costs about 2·(HVPs)·N/B training steps (N probe examples, B the batch size), so
#: this ratio hardly depends on the model's size; ask for a denser K knowingly.
DEFAULT_EVERY = 800

#: The block holding every trainable parameter, preconditioned (Adam/AdamW).
PRECOND = "preconditioned"
#: The warm start is the previous top eigenvector plus this fraction of a seeded random
#: unit vector (so a start can never sit exactly on an eigenvector of the previous step
#: that is orthogonal to the new top one).
WARM_NOISE = 0.1


def _base(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "base_optimizer", optimizer)


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """``sgd``, ``adam`` (Adam/AdamW) or the class name, of the base optimizer (SAM unwrapped)."""
    base = _base(optimizer)
    if isinstance(base, torch.optim.SGD):
        return "sgd"
    if isinstance(base, torch.optim.Adam | torch.optim.AdamW):
        return "adam"
    return type(base).__name__.lower()


def eos_threshold(optimizer: torch.optim.Optimizer, lr: float) -> tuple[float, float]:
    """``(threshold, preconditioned threshold)`` at learning rate ``lr``.

    SGD with momentum β (dampening 0): (2 + 2β)/η for λ_max(H), NaN for the second.
    Adam/AdamW with β₁: NaN for the first, (2 + 2β₁)/((1 − β₁)η) for λ_max(P⁻¹H).
    Other optimizers: NaN, NaN. ``lr = 0`` gives ``inf``.
    """
    base = _base(optimizer)
    group = base.param_groups[0]
    kind = optimizer_kind(optimizer)

    def over(c: float) -> float:
        return math.inf if lr == 0 else c / lr

    if kind == "sgd":
        beta = float(group.get("momentum", 0.0)) if not group.get("dampening", 0.0) else math.nan
        return over(2.0 + 2.0 * beta), math.nan
    if kind == "adam":
        b1 = float(group["betas"][0])
        return math.nan, over((2.0 + 2.0 * b1) / (1.0 - b1))
    return math.nan, math.nan


def adam_scale(model: nn.Module, optimizer: torch.optim.Optimizer,
               names: Sequence[str]) -> torch.Tensor | None:
    """S = (√v̂ + ε)^(-1/2) over the parameters ``names`` (flattened in that order), from
    Adam's/AdamW's state; None before its first step or for another optimizer.

    v̂ = v / (1 − β₂^t) (``max_exp_avg_sq`` under amsgrad), the denominator Adam divides by.
    """
    base = _base(optimizer)
    if optimizer_kind(optimizer) != "adam":
        return None
    group_of = {id(p): g for g in base.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    parts = []
    for n in names:
        p = params[n]
        st = base.state.get(p, {})
        g = group_of.get(id(p))
        if g is None or "exp_avg_sq" not in st:
            return None
        amsgrad = g.get("amsgrad") and "max_exp_avg_sq" in st
        v = st["max_exp_avg_sq"] if amsgrad else st["exp_avg_sq"]
        t = float(st["step"])
        bc2 = 1.0 - float(g["betas"][1]) ** t
        denom = (v.detach().double() / bc2).sqrt() + float(g["eps"])
        parts.append(denom.rsqrt().reshape(-1))
    return torch.cat(parts)


class SharpnessTracker:
    """A training callback (``train(cfg, out, callbacks=[tracker])``) that tracks λ_max.

    Args:
        probe: ``(inputs, targets)``: the fixed probe set the Hessian and the training
            loss/accuracy are measured on; or an int N: the first N examples of the run's
            training split (its data spec from the first event's ``config``, no
            augmentation).
        every: track after every ``every``-th optimizer step (the loop reads this).
        test: ``(inputs, targets)`` for test loss/accuracy, an int N (the run's first N
            test examples; 0: the whole test split), or None.
        out: the track file (``RUN/track.h5``), or None (rows kept in :attr:`rows` only).
        blocks: Hessian blocks besides the whole model (e.g. ``("paper",)``), or ().
        tol: Lanczos relative tolerance (tracking needs less than a final measurement: at
            1e-2 the warm and cold λ_max of the quick study agreed to 6e-4, and the steps
            cost 20-30% fewer products than at 1e-3).
        max_iter: most Lanczos steps per block.
        warm: warm-start each Lanczos run from the previous step's eigenvector.
        precondition: also λ_max(P⁻¹H) when the base optimizer is Adam/AdamW.
        cold_check: also run a cold start at each step (what the warm start saves:
            ``cold_hvps``, ``cold_lambda_max``); doubles the cost, for measurements.
        label_smoothing: of the training loss (None: the run's, from ``config``).
        loss: the loss whose Hessian is tracked, ``ce`` or ``bce`` (None: the run's
            ``loss`` from ``config``; a BCE run's label smoothing is not applied, as the
            analyses' ``bce`` takes none). Always on clean probe examples with hard
            labels: a run trained on mixed (Mixup/CutMix) batches is measured on the data
            it is meant to fit.
        batch_size: analysis mini-batch (None: the whole probe set at once if it fits).
        seed: the cold start's (and the warm noise's) seed.
        sharpness: sharpness measures of :func:`geomkit.geometry.sharpness.sharpness` to
            track too, name → its keyword arguments (e.g. ``{"worst": {"kind": "worst",
            "adaptive": True, "m": 64}}``), on the probe set (``m`` defaults to 128 or the
            probe size if smaller); stored in the file's group ``sharpness``.
        meta: identity stored in the file (``label``, ``model``, ``optimizer``, ``sam``;
            default: from the run's ``config``).
        progress: Lanczos progress bars.
    """

    def __init__(
        self,
        probe: tuple[torch.Tensor, torch.Tensor] | int,
        *,
        every: int,
        test: tuple[torch.Tensor, torch.Tensor] | int | None = None,
        out: str | Path | None = None,
        blocks: Sequence[str] = (),
        tol: float = 1e-2,
        max_iter: int = 100,
        warm: bool = True,
        precondition: bool = True,
        cold_check: bool = False,
        label_smoothing: float | None = None,
        loss: str | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        sharpness: dict[str, dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> None:
        if int(every) < 1:
            raise SpecError(f"every must be a positive number of steps, got {every}",
                            param="every")
        if isinstance(probe, int):
            if probe < 1:
                raise SpecError(f"the probe set needs at least 1 example, got {probe}",
                                param="probe")
        elif len(probe[0]) < 1 or len(probe[0]) != len(probe[1]):
            raise SpecError(f"the probe set needs inputs and targets of one length >= 1, got "
                            f"{len(probe[0])} and {len(probe[1])}", param="probe")
        if isinstance(test, int) and test < 0:
            raise SpecError(f"test must be >= 0 examples, got {test}", param="test")
        if not 0 < tol < 1:
            raise SpecError(f"tol must be in (0, 1), got {tol}", param="tol")
        self.every = int(every)
        self.probe = probe
        self.test = test
        self.out = None if out is None else Path(out)
        self.blocks = tuple(b for b in blocks if b != "whole")
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.warm, self.precondition = bool(warm), bool(precondition)
        self.cold_check = bool(cold_check)
        self.label_smoothing = None if label_smoothing is None else float(label_smoothing)
        if loss not in (None, "ce", "bce"):
            raise SpecError(f"loss must be ce or bce, got {loss!r}", param="loss")
        self.loss = loss
        self.batch_size = batch_size
        self.seed = int(seed)
        self.sharpness = {str(k): dict(v) for k, v in (sharpness or {}).items()}
        for name, kw in self.sharpness.items():
            if not name.replace("_", "").isalnum():
                raise SpecError(f"sharpness measure name {name!r} must be letters, digits "
                                "and _", param="sharpness")
            if set(kw) & {"model", "data", "targets", "progress"}:
                raise SpecError(f"sharpness measure {name!r}: the tracker passes the model "
                                "and the probe set itself", param="sharpness")
        self.meta = dict(meta or {})
        self.progress = progress
        self.rows: list[dict[str, Any]] = []
        self._vectors: dict[str, torch.Tensor] = {}  # block -> last top eigenvector
        self._vectors_step = -1
        self._started = False
        self._created: str | None = None
        if self.out is not None:
            check_track_out(self.out)

    # ------------------------------------------------------------------ settings
    def _size(self, d: Any) -> int:
        return 0 if d is None else d if isinstance(d, int) else len(d[0])

    def settings(self) -> dict[str, Any]:
        """What the series depends on besides the run (a resume must match it)."""
        return {"every": self.every, "probe_samples": self._size(self.probe),
                "test_samples": self._size(self.test),
                "blocks": list(self.blocks), "tol": self.tol, "max_iter": self.max_iter,
                "warm": self.warm, "precondition": self.precondition,
                "cold_check": self.cold_check, "label_smoothing": self.label_smoothing,
                "seed": self.seed, "sharpness": self.sharpness,
                **({"loss": self.loss} if self.loss not in (None, "ce") else {})}

    def _warm_paths(self) -> tuple[Path, Path] | None:
        if self.out is None:
            return None
        return (self.out.with_name(self.out.name + ".warm.pt"),
                self.out.with_name(self.out.name + ".warm-epoch.pt"))

    def _bind(self, config: dict[str, Any]) -> None:
        """First event: what the tracker was not given, from the run's configuration."""
        if isinstance(self.probe, int) or isinstance(self.test, int):
            from geomkit.data import DataSpec, load_split

            if not config.get("data"):
                raise SpecError("the probe set was given as a number of examples, but the "
                                "training event carries no data spec", param="probe")
            spec = DataSpec.from_dict(config["data"]).replace(augment=False)
            if isinstance(self.probe, int):
                x, y = load_split(spec, "train", progress=False)
                self.probe = (x[:self.probe], y[:self.probe])
            if isinstance(self.test, int):
                x, y = load_split(spec, "test", progress=False)
                self.test = (x[:self.test], y[:self.test]) if self.test else (x, y)
        if self.loss is None:
            self.loss = str(config.get("loss") or "ce")
        if self.label_smoothing is None:
            self.label_smoothing = (float(config.get("label_smoothing") or 0.0)
                                    if self.loss == "ce" else 0.0)
        sam = config.get("optimizer") in ("sam", "asam")
        defaults = {"label": f"{config.get('model', '?')}/{config.get('label') or '?'}",
                    "model": config.get("model", ""),
                    "optimizer": config.get("base_optimizer") or config.get("optimizer", ""),
                    "sam": sam}
        self.meta = defaults | self.meta

    def _resume(self, step: int) -> None:
        """The run (re)starts: keep the stored rows before ``step`` and the warm vector
        of the last of them (see the module docstring)."""
        self._started = True
        if self.out is None or not self.out.exists():
            return
        old = read_track(self.out)
        self._created = created_stamp(self.out)
        rows = [r for r in old.rows() if r["step"] < step]
        if rows and old.settings != self.settings():
            diff = sorted(k for k in set(old.settings) | set(self.settings())
                          if old.settings.get(k) != self.settings().get(k))
            raise SpecError(f"{self.out} was tracked with other settings ({', '.join(diff)}); "
                            "track with the same ones to continue it, or move it away",
                            param="out")
        self.rows = rows
        if not rows or not self.warm:
            return
        last = rows[-1]["step"]
        for p in self._warm_paths() or ():
            if p.exists():
                try:
                    state = torch.load(p, weights_only=True, map_location="cpu")
                except Exception:  # noqa: BLE001 - a damaged sidecar only costs a cold start
                    continue
                if int(state.get("step", -2)) == last:
                    self._vectors = dict(state["vectors"])
                    self._vectors_step = last
                    return

    def _save_warm(self, which: int) -> None:
        paths = self._warm_paths()
        if paths is None or not self._vectors or not distributed.is_main():
            return
        from geomkit.io import atomic_path

        with atomic_path(paths[which]) as tmp:
            torch.save({"step": self._vectors_step,
                        "vectors": {b: v.detach().cpu() for b, v in self._vectors.items()}},
                       tmp)

    # ------------------------------------------------------------------ the callback
    def __call__(self, event: Any) -> None:
        if event.kind == "start":  # the run (re)starts after `event.step` steps
            self._bind(dict(getattr(event, "config", {}) or {}))
            self._resume(event.step + 1)
            return
        if event.kind == "epoch":
            if self._started:  # the epoch's checkpoint is written: keep its warm vector
                self._save_warm(1)
            return
        if event.kind != "step":
            return
        if not self._started:  # a loop that sends no start event
            self._bind(dict(getattr(event, "config", {}) or {}))
            self._resume(event.step)
        self.rows.append(self.measure(event.model, event.optimizer, step=event.step,
                                      epoch=event.epoch, lr=event.lr, batch_loss=event.loss,
                                      perturbed_loss=event.perturbed_loss))
        if self.out is not None and distributed.is_main():
            write_track(self.out, self.rows, meta=self.meta | {"settings": self.settings()},
                        created=self._created)
            self._save_warm(0)

    def measure(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int,
                epoch: int = 0, lr: float = math.nan, batch_loss: float = math.nan,
                perturbed_loss: float = math.nan) -> dict[str, Any]:
        """One row: the quantities of the module docstring at the model's current weights."""
        t0 = time.perf_counter()
        if isinstance(self.probe, int) or isinstance(self.test, int):
            raise SpecError("the probe set is a number of examples until the first training "
                            "event binds it to the run's data; pass tensors to measure "
                            "directly", param="probe")
        x, y = self.probe
        blocks = ("whole", *self.blocks)
        resolved = resolve_blocks(model, blocks)
        regex: dict[str, str] = {}
        scale: dict[str, torch.Tensor] = {}
        if self.precondition and optimizer_kind(optimizer) == "adam":
            s = adam_scale(model, optimizer, resolved["whole"])
            if s is not None:
                regex[PRECOND] = "."  # every trainable parameter, in the whole model's order
                scale[PRECOND] = s
        names = list(resolved) + list(regex)
        start: dict[str, torch.Tensor] = {}
        if self.warm and self._vectors:
            for i, b in enumerate(names):
                v = self._vectors.get(b)
                if v is not None:
                    noise = start_vector(v.numel(), self.seed * 1_000_003 + step * 31 + i,
                                         torch.float64)
                    start[b] = v.double() / torch.linalg.vector_norm(v.double()) \
                        + WARM_NOISE * noise
        kw = dict(tol=self.tol, max_iter=self.max_iter, batch_size=self.batch_size,
                  loss=self.loss or "ce", label_smoothing=self.label_smoothing or 0.0,
                  seed=self.seed,
                  progress=self.progress)
        r = hessian_eigs(model, x, y, blocks=blocks, regex=regex or None, scale=scale or None,
                         start=start or None, return_vectors=self.warm, **kw)
        if self.warm:
            self._vectors = {b: e.vectors[0].detach().cpu() for b, e in r.blocks.items()
                             if e.vectors is not None}
            self._vectors_step = step
        whole = r.blocks["whole"]
        thr, pthr = eos_threshold(optimizer, lr)
        row: dict[str, Any] = {
            "step": int(step), "epoch": int(epoch), "lr": float(lr),
            "batch_loss": float(batch_loss),
            "lambda_max": whole.lambda_max, "lambda_max_error": whole.error_bound,
            "hvps": whole.n_hvps, "threshold": thr,
            "precond_lambda_max": r.blocks[PRECOND].lambda_max if PRECOND in r.blocks else math.nan,
            "precond_hvps": r.blocks[PRECOND].n_hvps if PRECOND in r.blocks else -1,
            "precond_threshold": pthr,
            "sam_sharpness": float(perturbed_loss) - float(batch_loss),
            "cold_lambda_max": math.nan, "cold_hvps": -1,
            "blocks": {b: e.lambda_max for b, e in r.blocks.items()
                       if b not in ("whole", PRECOND)},
        }
        if self.cold_check:
            c = hessian_eigs(model, x, y, blocks=("whole",), **kw).blocks["whole"]
            row["cold_lambda_max"], row["cold_hvps"] = c.lambda_max, c.n_hvps
        if self.sharpness:
            from geomkit.geometry.sharpness import sharpness as measure_sharpness

            row["sharpness"] = {
                name: measure_sharpness(model, x, y, **({"loss": self.loss or "ce",
                                                        "label_smoothing":
                                                        self.label_smoothing or 0.0,
                                                        "m": min(128, len(x))} | kw)
                                        ).blocks["whole"].value
                for name, kw in self.sharpness.items()}
        from geomkit.train.loop import evaluate  # the loop's own test metric, eval mode

        bs, dev = self.batch_size or 512, next(model.parameters()).device
        row["train_loss"], row["train_acc"] = evaluate(model, x, y, dev, bs)
        if self.test is not None:
            row["test_loss"], row["test_acc"] = evaluate(model, *self.test, dev, bs)
        else:
            row["test_loss"] = row["test_acc"] = math.nan
        row["seconds"] = time.perf_counter() - t0
        return row
