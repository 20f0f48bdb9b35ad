"""What an analysis command measures: a geomkit checkpoint (the positional CKPT), or your
own model, weights and data (``--model SPEC --weights FILE --data SOURCE``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli._common import positive_int
from geomkit.errors import SpecError

MODEL_HELP = ("registry name (`geomkit models`), timm:NAME (timm.create_model, no download) "
              "or package.module:callable (your factory, importable from PYTHONPATH)")


def add_source_flags(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    """``--model/--weights/--model-arg/--data/--data-root/--split-dirs/--mean-std/
    --image-size/--non-strict`` (``model=False``: the command has its own --model, --data
    and --image-size, and no --split-dirs/--mean-std)."""
    g = p.add_argument_group("your own model instead of CKPT",
                             "--model SPEC --weights FILE --data SOURCE builds the model, "
                             "loads the weights (.pt/.pth/.bin/.safetensors; nested state "
                             "dicts and DDP/compile prefixes handled) and measures on the data")
    p.set_defaults(_own_model_flags=model)
    if model:
        g.add_argument("--model", metavar="SPEC", default=None, help=MODEL_HELP)
    g.add_argument("--weights", metavar="FILE", default=None,
                   help="weights of --model: a state_dict file or .safetensors")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument of --model (JSON value, e.g. img_size=32); "
                   "repeatable")
    g.add_argument("--non-strict", action="store_true",
                   help="load the weights that fit and keep the rest at initialization "
                   "(default: missing or unexpected keys are an error)")
    if model:
        g.add_argument("--data", metavar="SOURCE", default=None,
                       help="data source of --model (digits, fashion-mnist, cifar10, npz, ...)")
        g.add_argument("--image-size", type=positive_int, default=None,
                       help="image size for --data (default: the source's native size; "
                       "imagefolder: 224, shorter side resized, then centre-cropped)")
    g.add_argument("--data-root", default=None, help="directory or file of --data")
    if model:
        g.add_argument("--split-dirs", metavar="TRAIN,TEST", default=None,
                       help="imagefolder: the sub-folders of --data-root holding the train "
                       "and test split, e.g. train,val; 'flat': --data-root holds the class "
                       "folders for both (default: train,val or train,test when those are "
                       "its only sub-folders, else flat)")
        g.add_argument("--mean-std", metavar="NAME", default=None,
                       help="normalization of --data: imagenet, inception (0.5/0.5), none "
                       "([0, 1]), M1,M2,M3/S1,S2,S3 or timm (the pretrained_cfg mean/std of "
                       "a --model timm:NAME) (default: the source's own; imagefolder: "
                       "imagenet)")


def parse_model_args(items: list[str], flag: str = "--model-arg") -> dict[str, Any]:
    """``KEY=VALUE`` items as kwargs (values parsed as JSON, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise SpecError(f"{flag} must be KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def imported(args: argparse.Namespace) -> Any:
    """The :class:`~geomkit.checkpoint.Checkpoint` of ``--model/--weights/--data``."""
    from geomkit.data import DataSpec
    from geomkit.imported import import_weights

    if not args.model:
        raise SpecError("--weights needs --model SPEC (the architecture the weights are of)")
    if not getattr(args, "data", None):
        raise SpecError("--weights needs --data SOURCE (the examples to measure on)")
    extra = {k: getattr(args, k) for k in ("split_dirs", "mean_std")  # not on ntk
             if getattr(args, k, None) is not None}
    from_model = extra.get("mean_std") == "timm"
    if from_model:
        del extra["mean_std"]
    spec = DataSpec(source=args.data, root=args.data_root, image_size=args.image_size, **extra)
    return import_weights(args.model, args.weights, spec,
                          model_args=parse_model_args(args.model_arg),
                          strict=not args.non_strict, timm_normalization=from_model)


def checkpoints(args: argparse.Namespace, given: list[str] | str | None) -> list[Any]:
    """What to measure: the CKPT paths, or the one imported model; exactly one of them."""
    paths = [given] if isinstance(given, str) else list(given or [])
    if args.weights is not None:
        if paths:
            raise SpecError("give CKPT or --model SPEC --weights FILE, not both")
        return [imported(args)]
    if getattr(args, "model", None) and not paths:
        raise SpecError("--model needs --weights FILE (or give a geomkit checkpoint CKPT)")
    used = [("--model-arg", args.model_arg), ("--non-strict", args.non_strict),
            ("--data-root", args.data_root)]
    if args._own_model_flags:
        used += [("--model", args.model), ("--data", args.data),
                 ("--image-size", args.image_size), ("--split-dirs", args.split_dirs),
                 ("--mean-std", args.mean_std)]
    flag = next((f for f, v in used if v), None)
    if flag is not None:
        raise SpecError(f"{flag} applies to --model SPEC --weights FILE only; a checkpoint "
                        "rebuilds its own model on its own data")
    if not paths:
        raise SpecError("give a checkpoint CKPT, or --model SPEC --weights FILE --data SOURCE")
    return paths
