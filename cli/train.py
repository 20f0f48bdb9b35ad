"""``geomkit train``: train a registered model with SAM or a vanilla optimizer."""

from __future__ import annotations

import argparse

from cli._common import (
    add_device_flag,
    add_json_flag,
    int_at_most,
    nonneg_float,
    nonneg_int,
    positive_int,
    print_json,
    print_table,
    seed_int,
    unit_float,
)
from geomkit.data import list_sources
from geomkit.geometry.track import DEFAULT_EVERY
from geomkit.train import TrainConfig, train
from geomkit.train.config import AUGREG, LOSSES, OPTIMIZERS, SCHEDULES

ORDER = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (vanilla or SAM) and write checkpoints",
        description="Train a registered model on a data source with a vanilla optimizer "
        "(sgd, adamw) or sharpness-aware minimization (sam, asam). Writes OUT/last.pt after "
        "every epoch (atomically); --resume continues an interrupted run exactly. Under "
        "torchrun the run is data-parallel (DDP; SAM's perturbation is computed per worker).",
    )
    p.add_argument(
        "--model", default="vit-tiny", help="registered model name (see `geomkit models`)"
    )
    p.add_argument("--data", default="digits", help=f"data source: {', '.join(list_sources())}")
    p.add_argument("--data-root", default=None, help="directory or file of the data source")
    p.add_argument("--split-dirs", metavar="TRAIN,TEST", default=None,
                   help="imagefolder: the sub-folders of --data-root holding the train and "
                   "test split, e.g. train,val; 'flat': --data-root holds the class folders "
                   "for both (default: train,val or train,test when those are its only "
                   "sub-folders, else flat)")
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="resize images (default: native)"
    )
    p.add_argument(
        "--subset", type=float, default=1.0, help="fraction of the training set, class-balanced"
    )
    p.add_argument("--subset-seed", type=seed_int, default=0, help="seed choosing the subset")
    p.add_argument(
        "--augment",
        action="store_true",
        help="light Inception-like augmentation (random resized crop, flip where "
        "meaningful); off by default: on 8x8 digits it cost vit-tiny 9 points",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="default: adamw")
    p.add_argument(
        "--base-optimizer",
        choices=("sgd", "adamw"),
        default=None,
        help="optimizer wrapped by SAM (default per family: adamw for ViT/Mixer, sgd for ResNet)",
    )
    p.add_argument(
        "--rho",
        type=nonneg_float,
        default=None,
        help="SAM radius (default per family: ViT 0.1, Mixer 0.3, ResNet 0.05)",
    )
    p.add_argument(
        "--lr", type=nonneg_float, default=None, help="peak learning rate (default per family)"
    )
    p.add_argument(
        "--weight-decay", type=nonneg_float, default=None, help="decoupled/L2 weight decay"
    )
    p.add_argument("--momentum", type=nonneg_float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--steps", type=positive_int, default=None,
                   help="a fixed budget of optimizer steps instead of --epochs (the epochs "
                   "follow from the training set's size; the last one stops at the budget)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="global batch size")
    p.add_argument("--warmup-epochs", type=nonneg_float, default=2.0)
    p.add_argument("--warmup-steps", type=nonneg_int, default=None,
                   help="warmup in optimizer steps (instead of --warmup-epochs)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--label-smoothing", type=nonneg_float, default=0.0)
    p.add_argument(
        "--grad-clip", type=nonneg_float, default=1.0, help="max gradient norm; 0 disables"
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument(
        "--save-best", action="store_true", help="also keep OUT/best.pt (by test accuracy)"
    )
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model constructor argument (repeatable), e.g. depth=6",
    )
    a = p.add_argument_group(
        "strong augmentation and regularization",
        "AugReg (Steiner et al. 2021) levels of RandAugment + Mixup, drawn once per step (both "
        "SAM passes see the same mixed batch), after --augment's crop/flip; AugMix with its "
        "Jensen-Shannon loss. Dropout and stochastic depth are model arguments of the ViT and "
        "Mixer models: --model-arg drop_rate=0.1 --model-arg drop_path_rate=0.1 (AugReg's "
        "'reg'); every analysis runs in eval mode, where they are off.")
    a.add_argument("--augreg", choices=AUGREG, default="none", metavar="LEVEL",
                   help="AugReg level: none; light1 RA(2,0); light2 RA(2,10)+mixup 0.2; "
                   "medium1 RA(2,15)+0.2; medium2 RA(2,15)+0.5; heavy1 RA(2,20)+0.5; "
                   "heavy2 RA(2,20)+0.8 (default none)")
    a.add_argument("--augmix", action="store_true",
                   help="AugMix: two augmented views per example and the loss "
                   "L(clean) + W*JSD(clean, view1, view2) (3 forward passes' worth per step)")
    a.add_argument("--augmix-severity", type=int_at_most(10), default=3, metavar="N",
                   help="AugMix operation severity, 1-10 (default 3)")
    a.add_argument("--jsd-weight", type=nonneg_float, default=12.0, metavar="W",
                   help="weight of AugMix's JSD consistency loss (default 12, as its paper)")
    a.add_argument("--loss", choices=LOSSES, default="ce",
                   help="training loss on the (soft) targets: ce softmax cross-entropy, bce "
                   "sigmoid binary cross-entropy per class (default ce; the test loss is "
                   "always cross-entropy)")
    t = p.add_argument_group(
        "geometry during training",
        "--track writes OUT/track.h5: every K steps the whole model's lambda_max on the "
        "first --track-samples training examples (eval mode, Lanczos warm-started from the "
        "previous step), the edge-of-stability line (2+2*momentum)/lr for SGD, the "
        "preconditioned lambda_max(P^-1 H) and (2+2*beta1)/((1-beta1)*lr) for Adam/AdamW, "
        "SAM's free sharpness L(w+e)-L(w), train and test loss and accuracy; --resume "
        "continues the series. Draw it with `geomkit plot OUT/track.h5`.")
    t.add_argument("--track", action="store_true",
                   help="track geometry every --track-every steps (default K: see --track-every)")
    t.add_argument("--track-every", type=positive_int, default=None, metavar="K",
                   help="track every K optimizer steps (implies --track; default "
                   f"{DEFAULT_EVERY}: at most ~10%% of the training time on the quick "
                   "study's models; one tracked step costs about 2*HVPs*N/B training steps)")
    t.add_argument("--track-samples", type=positive_int, default=128, metavar="N",
                   help="probe set: the first N training examples (default 128)")
    t.add_argument("--track-test-samples", type=nonneg_int, default=128, metavar="N",
                   help="test loss/accuracy on the first N test examples (0: all; default 128)")
    t.add_argument("--track-blocks", default=None, metavar="B1,B2",
                   help="also lambda_max of these Hessian blocks (e.g. paper), every K steps")
    t.add_argument("--track-sharpness", default=None, metavar="KIND[,KIND]",
                   help="also these sharpness measures every K steps (avg, sam, worst; "
                   "adaptive, as `geomkit analyze`'s S_max; see `geomkit sharpness`)")
    t.add_argument("--track-tol", type=unit_float, default=1e-2, metavar="TOL",
                   help="Lanczos relative tolerance of the tracked lambda_max (default 1e-2)")
    t.add_argument("--snapshot-every", type=positive_int, default=None, metavar="E",
                   help="keep the weights every E epochs in OUT/snapshots.h5 (for "
                   "`geomkit landscape --dir pca --trajectory OUT`)")
    p.add_argument("--out", required=True, help="run directory (OUT/last.pt)")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)
    global _PARSER
    _PARSER = p


_PARSER: argparse.ArgumentParser | None = None


#: model arguments that train() derives from the data spec: given again they would
#: build a model for inputs other than the ones it gets
_FROM_DATA = {"image_size": "use --image-size", "in_chans": "the source's channels",
              "num_classes": "the source's classes"}


def _model_args(items: list[str]) -> dict:
    from cli._source import parse_model_args
    from geomkit.errors import SpecError

    out = parse_model_args(items)
    for key in out:
        if key in _FROM_DATA:
            raise SpecError(f"--model-arg {key} is set from the data ({_FROM_DATA[key]}); "
                            "a model built for another shape than its inputs cannot train")
    return out


def _track_sharpness(text: str | None) -> dict[str, dict]:
    """``--track-sharpness avg,worst`` as the tracker's measures (adaptive, defaults)."""
    from geomkit.errors import SpecError

    kinds = [k.strip() for k in (text or "").split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("avg", "sam", "worst")]
    if bad:
        raise SpecError(f"--track-sharpness: unknown measure {bad[0]!r}; valid: avg, sam, worst")
    return {k: {"kind": k, "adaptive": True} for k in kinds}


def _callbacks(args: argparse.Namespace) -> list:
    """The tracker and snapshot writer the flags ask for (checked before training)."""
    from pathlib import Path

    out: list = []
    if args.track or args.track_every is not None:
        from geomkit.geometry.track import SharpnessTracker

        blocks = [b for b in (args.track_blocks or "").split(",") if b.strip()]
        out.append(SharpnessTracker(
            args.track_samples, every=args.track_every or DEFAULT_EVERY,
            test=args.track_test_samples, out=Path(args.out) / "track.h5",
            blocks=[b.strip() for b in blocks], tol=args.track_tol,
            sharpness=_track_sharpness(args.track_sharpness), progress=False))
    elif args.track_blocks is not None or args.track_sharpness is not None:
        from geomkit.errors import SpecError

        flag = "--track-blocks" if args.track_blocks is not None else "--track-sharpness"
        raise SpecError(f"{flag} needs --track (or --track-every K)")
    if args.snapshot_every is not None:
        from geomkit.train.snapshots import SnapshotWriter

        out.append(SnapshotWriter(args.out, args.snapshot_every))
    return out


def run(args: argparse.Namespace) -> int:
    data = {
        "source": args.data,
        "root": args.data_root,
        "image_size": args.image_size,
        "augment": args.augment,
        "subset": args.subset,
        "subset_seed": args.subset_seed,
    }
    if args.split_dirs is not None:
        data["split_dirs"] = args.split_dirs
    cfg = TrainConfig(
        model=args.model,
        model_kwargs=_model_args(args.model_arg),
        data=data,
        optimizer=args.optimizer,
        base_optimizer=args.base_optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        rho=args.rho,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        warmup_epochs=args.warmup_epochs,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        grad_clip=args.grad_clip or None,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
        save_best=args.save_best,
        augreg=args.augreg,
        augmix=args.augmix,
        augmix_severity=args.augmix_severity,
        jsd_weight=args.jsd_weight,
        loss=args.loss,
    )
    # the settings given on purpose (not left at their defaults): a resumed run that
    # contradicts one of them is refused instead of silently finishing with its own
    flag_field = {"model": "model", "model_arg": "model_kwargs", "optimizer": "optimizer",
                  "base_optimizer": "base_optimizer", "lr": "lr", "weight_decay": "weight_decay",
                  "momentum": "momentum", "rho": "rho", "epochs": "epochs",
                  "batch_size": "batch_size", "warmup_epochs": "warmup_epochs",
                  "steps": "steps", "warmup_steps": "warmup_steps",
                  "schedule": "schedule", "label_smoothing": "label_smoothing",
                  "grad_clip": "grad_clip", "seed": "seed", "bf16": "bf16",
                  "save_best": "save_best", "data": "data", "data_root": "data",
                  "image_size": "data", "augment": "data", "subset": "data",
                  "subset_seed": "data", "split_dirs": "data", "augreg": "augreg",
                  "augmix": "augmix", "augmix_severity": "augmix_severity",
                  "jsd_weight": "jsd_weight", "loss": "loss"}
    same_as = sorted({f for flag, f in flag_field.items()
                      if getattr(args, flag) != _PARSER.get_default(flag)})
    # the training split at --image-size must fit in memory: refused before the model is
    # built (TrainConfig has already refused sizes above geomkit.data.spec.MAX_IMAGE_SIZE)
    from geomkit.data import DataSpec

    DataSpec.from_dict(cfg.data).check_memory("train")
    r = train(cfg, args.out, resume=args.resume, progress=not args.no_progress,
              same_as=same_as, callbacks=_callbacks(args))
    row = {
        "checkpoint": str(r.checkpoint),
        "test_acc": r.test_acc,
        "test_loss": r.test_loss,
        "train_loss": r.train_loss,
        "epochs": r.epochs,
        "steps": r.steps,
        "seconds": r.seconds,
        "samples_per_second": r.samples_per_second,
    }
    if args.json:
        print_json(row)
    else:
        print_table(list(row), [list(row.values())])
    return 0
