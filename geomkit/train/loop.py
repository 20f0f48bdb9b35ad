"""The training loop: vanilla (SGD+momentum, AdamW) or SAM/ASAM, one process or DDP.

Determinism: the model is initialised from ``seed``; epoch ``e`` shuffles with a
generator seeded ``seed * 1000 + e``, applies the light augmentation (``data.augment``)
with its own generator (offset 7919) and the strong one (``augreg`` / ``augmix``) with
another (offset 104729), and seeds torch's global generator, which dropout and drop path
draw from, with a fourth (offset 15485863). So a CPU run is repeatable and resuming from
``last.pt`` (saved after every epoch) continues the run exactly: same step, same
schedule, same optimizer state, same augmented batches and dropout masks.

Strong augmentation (:mod:`geomkit.data.augment`) is drawn once per optimizer step, on
the batch's device: the batch and its soft targets are fixed before the step, so both
SAM passes see the same mixed batch (and the same AugMix views). The loss is then the
soft-target cross-entropy (or BCE) with ``label_smoothing`` folded into the targets, plus
``jsd_weight`` times AugMix's Jensen-Shannon consistency; the reported training loss is
this objective on the augmented batches (with Mixup it stays well above zero even when
the clean training set is fitted), the test loss is always the plain cross-entropy.

Under ``torchrun`` (DDP, gloo on CPU / nccl on GPU) each rank takes an equal slice of
every global mini-batch; gradients are all-reduced by DDP. With SAM each worker
computes its perturbation from its *local* gradient (the paper's m-sharpness), and
the gradient at the perturbed point is all-reduced.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from geomkit import distributed
from geomkit.checkpoint import load_checkpoint, save_checkpoint
from geomkit.data import DataSpec, augment_batch, info, load_split
from geomkit.data.augment import (
    augment,
    augmix_of,
    augreg,
    jsd_loss,
    soft_bce,
    soft_cross_entropy,
)
from geomkit.data.sources import raw_data
from geomkit.device import resolve_device
from geomkit.errors import CheckpointError, SpecError, TrainingDiverged
from geomkit.io import probe_writable
from geomkit.models import build, family
from geomkit.train.config import TrainConfig
from geomkit.train.sam import SAM, sam_step

#: Offsets of the per-epoch seeds ``seed * 1000 + epoch + offset`` (shuffling has none).
LIGHT_AUGMENT_OFFSET = 7919
STRONG_AUGMENT_OFFSET = 104729
GLOBAL_RNG_OFFSET = 15485863


@dataclass(frozen=True)
class TrainEvent:
    """What a training callback is shown (see :func:`train`'s ``callbacks``).

    Attributes:
        kind: ``"start"`` (once, before the first step of this process: the initial
            weights of a fresh run, or a resumed run's checkpoint), ``"step"`` (every
            ``callback.every`` optimizer steps) or ``"epoch"`` (after each epoch's
            checkpoint is written).
        model: the model being trained (unwrapped from DDP); a callback must leave its
            weights, modes and buffers as it found them.
        optimizer: the optimizer (its state, e.g. Adam's second moments, may be read).
        step: optimizer steps taken so far over the whole run (a resumed run continues
            the count).
        epoch: epochs completed.
        lr: the learning rate of the step just taken.
        loss: that step's training loss (``step``), or the epoch's mean (``epoch``): the
            objective, i.e. on the augmented batch with its soft targets (and AugMix's
            JSD term) when strong augmentation is on.
        metrics: ``epoch`` only: ``test_loss``, ``test_acc``.
        perturbed_loss: SAM/ASAM ``step`` events: the step's mini-batch loss at the
            perturbed weights w + ε (so ``perturbed_loss - loss`` is the sharpness SAM
            measured for free, in training mode); NaN otherwise.
        config: the run's resolved configuration (:meth:`TrainConfig.to_dict`, with the
            model's constructor arguments): what a callback needs to load the run's data.
    """

    kind: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    epoch: int
    lr: float
    loss: float
    metrics: dict[str, Any]
    perturbed_loss: float = math.nan
    config: dict[str, Any] = dataclasses.field(default_factory=dict)


#: A training callback: called with a :class:`TrainEvent`; an attribute ``every`` (int,
#: default 0 = at epoch ends only) asks for step events every that many steps.
TrainCallback = Callable[[TrainEvent], None]


def _notify(callbacks: Sequence[TrainCallback], event: TrainEvent, device: torch.device) -> None:
    """Call each callback in a forked RNG state, so whatever a callback draws (probe
    vectors, noise) leaves training's random stream -- dropout, drop path -- as it was:
    a run with callbacks trains the same weights as one without."""
    devices = [device] if device.type == "cuda" else []
    for cb in callbacks:
        with torch.random.fork_rng(devices=devices):
            cb(event)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: where the checkpoint is and the final metrics.

    ``train_loss`` is the last epoch's mean training objective over its steps: with strong
    augmentation the loss on the augmented batches and their soft targets (plus the JSD
    term under AugMix), so it is not comparable with ``test_loss`` (plain cross-entropy
    on clean test examples) or with a plain run's training loss.
    """

    checkpoint: Path
    test_acc: float
    test_loss: float
    train_loss: float
    epochs: int
    steps: int
    seconds: float
    samples_per_second: float


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then cosine/linear decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    t = min(max(t, 0.0), 1.0)
    return 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Base optimizer (or SAM around it); no weight decay on 1-D params (norms, biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.base_optimizer == "sgd":
        base, kw = torch.optim.SGD, {"lr": cfg.lr, "momentum": cfg.momentum}
    else:
        base, kw = torch.optim.AdamW, {"lr": cfg.lr}
    if cfg.is_sam:
        return SAM(groups, base, rho=cfg.rho, adaptive=cfg.optimizer == "asam", **kw)
    return base(groups, **kw)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 512
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` (eval mode) on ``(x, y)``."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        for s in range(0, len(x), batch_size):
            xb, yb = x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)
            out = model(xb).float()
            loss += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    finally:
        model.train(was)
    return loss / len(x), correct / len(x)


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], torch.Tensor],
    *,
    sam: bool,
    grad_clip: float | None,
) -> torch.Tensor:
    """One update of ``net`` (vanilla, or SAM's two passes); returns the loss at the weights.

    ``loss_fn()`` runs the forward pass on the current batch and returns the scalar loss.
    Vanilla: backward, optional clipping of the gradient's global norm, optimizer step;
    SAM: :func:`geomkit.train.sam.sam_step`.  The loop calls exactly this, so a benchmark
    that times it times the loop's own step.
    """
    if sam:
        return sam_step(net, optimizer, loss_fn, max_grad_norm=grad_clip)
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def _normalization(spec: DataSpec) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The per-channel (mean, std) the training batches are standardised with ([0, 1]
    units), for the pixel operations of the strong augmentation; ``(None, None)`` when the
    batches are left in [0, 1]."""
    if not spec.normalize:
        return None, None
    raw = raw_data(spec)
    return tuple(raw.mean), tuple(raw.std)


def _existing_run(last: Path) -> str:
    try:
        ck = load_checkpoint(last)
        what = f"a run of {ck.model_name} ({ck.epoch}/{ck.config.get('epochs', '?')} epochs)"
    except CheckpointError:
        what = "a checkpoint"
    return (f"{last.parent} already holds {what}; pass resume to continue it, or choose "
            "another out (nothing was overwritten)")


def _kept(last: Path, epoch: int) -> str:
    """What is left after a divergence in (0-based) ``epoch``: the last finite checkpoint."""
    if last.exists():
        return f"{last} (epoch {epoch}, the last finite one) is kept"
    return "no checkpoint was written"


def _check_same(stored: TrainConfig, given: TrainConfig, fields: Sequence[str],
                last: Path) -> None:
    """Refuse a resume whose deliberate settings contradict the stored run."""
    diff = []
    for name in fields:
        if name == "device":
            continue
        old, new = getattr(stored, name), getattr(given, name)
        if name == "data":
            old = {k: v for k, v in old.items() if k in new}
        elif name == "model_kwargs":
            old = {k: v for k, v in old.items() if k in new}
        if old != new:
            diff.append(f"{name}={new!r} (the run has {old!r})")
    if diff:
        raise SpecError(f"{last} continues as it was trained, but {', '.join(diff)}; drop "
                        "those settings to resume it, or train into another out")


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    same_as: Sequence[str] = (),
    overwrite: bool = False,
    callbacks: Sequence[TrainCallback] = (),
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write ``out_dir/last.pt`` after every epoch.

    ``cfg.epochs`` epochs, or, with ``cfg.steps`` set, exactly that many optimizer steps
    (``ceil(steps / steps_per_epoch)`` epochs, the last one cut at the budget; see
    :class:`TrainConfig`).

    With ``resume=True`` and an existing ``out_dir/last.pt`` the run continues from it
    (its stored configuration wins over ``cfg``, except ``cfg.device``, where it runs now;
    the optimizer state follows the parameters to that device); a finished run returns
    immediately. ``same_as`` names the fields of ``cfg`` the caller set on purpose: a
    stored run that differs in any of them is refused instead of silently continued with
    its own settings. Without ``resume`` an existing run in ``out_dir`` is never replaced,
    unless ``overwrite``: then the run starts afresh and each of its checkpoints replaces
    the old one atomically when it is written (until then the old run stays whole).

    ``callbacks`` (training never imports what they measure): each is called with a
    :class:`TrainEvent` after every ``callback.every``-th optimizer step (counted over the
    run, so a resumed run continues at the next multiple) and after each epoch's
    checkpoint, in a forked RNG state (training's randomness is not consumed).

    Raises:
        CheckpointError: ``out_dir`` is a file, or holds a run and ``resume`` is off.
        SpecError: ``resume`` with ``same_as`` fields that contradict the stored run; bf16
            asked for on a device without it.
        TrainingDiverged: a non-finite training or test loss (the checkpoint of the last
            finite epoch is kept).
    """
    out_dir = Path(out_dir)
    last = out_dir / "last.pt"
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"out {out_dir} is a file, not a run directory; choose another "
                              "out", param="out")
    if last.exists() and not (resume or overwrite):
        raise CheckpointError(_existing_run(last), param="resume")
    start_epoch, opt_state = 0, None
    prior_metrics: dict[str, Any] = {}
    if resume and last.exists() and not overwrite:
        ck = load_checkpoint(last)
        _check_same(TrainConfig.from_dict(ck.config), cfg, same_as, last)
        # The stored run wins, except where it runs: a run saved on "cuda" (or "cuda:1")
        # resumes on the device asked for now, e.g. on a CPU-only machine.
        cfg = dataclasses.replace(TrainConfig.from_dict(ck.config), device=cfg.device)
        start_epoch, opt_state, prior_metrics = ck.epoch, ck.optimizer_state, ck.metrics
    device = resolve_device(cfg.device)
    if cfg.bf16 and device.type != "cuda":
        raise SpecError(f"bf16 autocast runs on CUDA only, not on {device.type}; drop bf16 "
                        "(the checkpoint would record a precision that was not used)",
                        param="bf16")
    spec = DataSpec.from_dict(cfg.data)
    spec.check_memory("train")  # before the data loads or the model is built
    probe_writable(last)  # an unwritable out fails now, not after the first epoch
    ddp = distributed.init(device)
    dinfo = info(spec)
    kwargs = {
        "image_size": dinfo.image_size,
        "in_chans": dinfo.in_chans,
        "num_classes": dinfo.num_classes,
        **cfg.model_kwargs,
    }
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, **kwargs)
    cfg = cfg.resolved(family(model))
    if start_epoch:
        model.load_state_dict(ck.model.state_dict())
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    net: nn.Module = model
    if ddp:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    x_train, y_train = load_split(spec, "train")
    x_test, y_test = load_split(spec.replace(augment=False), "test")
    n = len(x_train)
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1 and cfg.batch_size % world:
        raise SpecError(
            f"batch_size {cfg.batch_size} must be divisible by the {world} processes",
            param="batch_size",
        )
    # Under DDP every rank must get a non-empty, equal slice of each global batch (an
    # empty slice gives a NaN loss on one rank and a deadlock on the others; unequal
    # slices would be averaged with equal weights), so the incomplete last batch is dropped.
    steps_per_epoch = n // cfg.batch_size if world > 1 else math.ceil(n / cfg.batch_size)
    if steps_per_epoch < 1:
        raise SpecError(f"batch_size {cfg.batch_size} exceeds the {n} training examples",
                           param="batch_size")
    if cfg.steps is not None:
        # a fixed budget of optimizer steps: the epochs it takes on this training set
        # (stored in the checkpoint, so a finished run reads as finished on resume)
        cfg = dataclasses.replace(cfg, epochs=math.ceil(cfg.steps / steps_per_epoch))
        total = cfg.steps
    else:
        total = steps_per_epoch * cfg.epochs
    warmup = (cfg.warmup_steps if cfg.warmup_steps is not None
              else int(round(cfg.warmup_epochs * steps_per_epoch)))
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cfg.bf16 and device.type == "cuda"
        else nullcontext()
    )
    run_config = cfg.to_dict() | {"model_kwargs": kwargs}
    history: list[dict[str, Any]] = list(prior_metrics.get("history", []))
    step = start_epoch * steps_per_epoch if cfg.steps is None else min(
        start_epoch * steps_per_epoch, cfg.steps)
    t0 = time.perf_counter()
    seen = 0
    train_loss = prior_metrics.get("train_loss", math.nan)
    test_loss, test_acc = (
        prior_metrics.get("test_loss", math.nan),
        prior_metrics.get("test_acc", math.nan),
    )
    best = prior_metrics.get("best_test_acc", -1.0)
    bar = tqdm(
        total=total,
        initial=step,
        disable=not progress or not distributed.is_main(),
        desc=f"{cfg.model}/{cfg.label}",
        unit="step",
        leave=False,
    )

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with amp:
            out = net(xb)
        return F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)

    # Soft targets (an AugReg level, AugMix or BCE): the batch and its targets are drawn
    # once per step, before train_step, so both SAM passes see the same ones.
    num_classes = dinfo.num_classes
    aug_spec = augreg(cfg.augreg, label_smoothing=cfg.label_smoothing, augmix=cfg.augmix,
                      augmix_severity=cfg.augmix_severity, jsd_weight=cfg.jsd_weight)
    mixer = augmix_of(aug_spec)
    mean, std = _normalization(spec) if cfg.soft_targets else (None, None)

    def soft_loss_fn(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        """The objective on an augmented batch: soft-target CE (or BCE) on the clean view,
        plus ``jsd_weight`` times the JSD of the three views under AugMix (``xb`` is then
        the clean batch and its two AugMix views, concatenated: one forward pass)."""
        with amp:
            out = net(xb)
        out = out.float()
        criterion = soft_bce if cfg.loss == "bce" else soft_cross_entropy
        if not cfg.augmix:
            return criterion(out, tb)
        clean, aug1, aug2 = out.chunk(3)
        return criterion(clean, tb) + cfg.jsd_weight * jsd_loss(clean, aug1, aug2)

    try:
        if callbacks and start_epoch < cfg.epochs:  # the weights training starts from
            _notify(callbacks, TrainEvent("start", model, optimizer, step, start_epoch,
                                          cfg.lr * lr_factor(step, total, warmup, cfg.schedule),
                                          train_loss, {}, config=run_config), device)
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            perm = torch.randperm(n, generator=g)
            ga = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + LIGHT_AUGMENT_OFFSET)
            gs = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + STRONG_AUGMENT_OFFSET)
            # dropout / drop path draw from the global generator: seeded per epoch too, so a
            # resumed run draws the same masks (nothing else in a step draws from it)
            torch.manual_seed(cfg.seed * 1000 + epoch + GLOBAL_RNG_OFFSET)
            run_loss, run_n = 0.0, 0
            for b in range(steps_per_epoch):
                if cfg.steps is not None and step >= cfg.steps:
                    break  # the budget ends inside the last epoch
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                idx = idx[distributed.shard_range(len(idx), rank, world)]
                xb = x_train[idx]
                if spec.augment:
                    xb = augment_batch(xb, spec, ga)
                xb, yb = xb.to(device), y_train[idx].to(device)
                if cfg.soft_targets:
                    xb, tb = augment(aug_spec, xb, yb, num_classes, gs, mean=mean, std=std)
                    if cfg.augmix:
                        xb = torch.cat(mixer.views(xb, gs, mean=mean, std=std))
                    step_loss = lambda xb=xb, tb=tb: soft_loss_fn(xb, tb)  # noqa: E731
                else:
                    step_loss = lambda xb=xb, yb=yb: loss_fn(xb, yb)  # noqa: E731
                f = lr_factor(step, total, warmup, cfg.schedule)
                for grp in optimizer.param_groups:  # every group peaks at cfg.lr
                    grp["lr"] = cfg.lr * f
                loss = train_step(
                    net,
                    optimizer,
                    step_loss,
                    sam=cfg.is_sam,
                    grad_clip=cfg.grad_clip,
                )
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged at step {step} (loss {loss.item()}); "
                        f"{_kept(last, epoch)}; lower lr", param="lr")
                run_loss += loss.item() * len(idx)
                run_n += len(idx)
                seen += len(idx) * world
                step += 1
                bar.update(1)
                due = [c for c in callbacks if getattr(c, "every", 0) and
                       step % int(c.every) == 0]
                if due:
                    pl = getattr(optimizer, "perturbed_loss", None) if cfg.is_sam else None
                    _notify(due, TrainEvent("step", model, optimizer, step, epoch,
                                            cfg.lr * f, float(loss.item()), {},
                                            math.nan if pl is None else float(pl),
                                            run_config), device)
            train_loss = run_loss / max(run_n, 1)
            test_loss, test_acc = evaluate(model, x_test, y_test, device)
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch + 1} (test loss {test_loss}); "
                    f"{_kept(last, epoch)}; lower lr", param="lr")
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                    "lr": f * cfg.lr,
                }
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{test_acc:.3f}")
            elapsed = prior_metrics.get("train_seconds", 0.0) + time.perf_counter() - t0
            metrics = {
                "train_loss": train_loss,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "history": history,
                "train_seconds": elapsed,
                "samples_per_second": seen / max(time.perf_counter() - t0, 1e-9),
                "best_test_acc": max(best, test_acc),
                "world_size": world,
            }
            if distributed.is_main():
                kw = dict(
                    config=run_config,
                    data_spec=spec,
                    optimizer=optimizer,
                    step=step,
                    epoch=epoch + 1,
                    metrics=metrics,
                )
                save_checkpoint(last, model, **kw)
                if cfg.save_best and test_acc > best:
                    save_checkpoint(out_dir / "best.pt", model, **kw)
            best = max(best, test_acc)
            if callbacks:
                _notify(callbacks, TrainEvent("epoch", model, optimizer, step, epoch + 1,
                                              cfg.lr * f, train_loss,
                                              {"test_loss": test_loss, "test_acc": test_acc},
                                              config=run_config), device)
            distributed.barrier()
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return TrainResult(
        checkpoint=last,
        test_acc=test_acc,
        test_loss=test_loss,
        train_loss=train_loss,
        epochs=cfg.epochs,
        steps=step,
        seconds=seconds,
        samples_per_second=seen / seconds if seen else math.nan,
    )
