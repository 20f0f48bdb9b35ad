"""Your model, your weights: a :class:`~geomkit.checkpoint.Checkpoint` of a model geomkit
did not train, so every analysis, table and plot takes it like one of its own.

>>> from geomkit.imported import import_weights  # doctest: +SKIP
>>> ck = import_weights("timm:vit_tiny_patch16_224", "vit.safetensors",
...                     data={"source": "imagefolder", "root": "imgs"},
...                     model_args={"img_size": 32})  # doctest: +SKIP
>>> ck.save("vit.pt")  # doctest: +SKIP

``model`` is a registry name, ``timm:NAME`` or ``package.module:callable``
(:mod:`geomkit.models.external`); ``weights`` any file :mod:`geomkit.models.weights`
reads (torch files in the usual nestings, ``.safetensors``). The data shape fills in
what the model needs unless ``model_args`` says otherwise: ``image_size``/``in_chans``/
``num_classes`` for registry models (as ``geomkit train`` does), ``in_chans``/
``num_classes`` for timm; a factory of your own gets only ``model_args``.

The checkpoint's ``config`` records where the weights came from (path, SHA-256, strict or
not, keys left at their initial values), its ``sha256()`` is the weights file's, and
:func:`save_imported` writes it as a self-describing geomkit checkpoint (``geomkit import``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geomkit.checkpoint import Checkpoint, save_checkpoint
from geomkit.data import DataSpec, info
from geomkit.errors import DataError, ModelError
from geomkit.models import build_model, list_models
from geomkit.models.external import TIMM
from geomkit.models.weights import fit_weights, read_weights
from geomkit.provenance import file_sha256, provenance

__all__ = ["import_weights", "model_kwargs_for", "save_imported"]


def model_kwargs_for(model: str, data: DataSpec, model_args: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The constructor kwargs of ``model`` on ``data``: the data's shape under
    ``model_args`` (which win)."""
    args = dict(model_args or {})
    if model in list_models():
        d = info(data)
        return {"image_size": d.image_size, "in_chans": d.in_chans,
                "num_classes": d.num_classes, **args}
    if model.startswith(TIMM):
        d = info(data)
        return {"in_chans": d.in_chans, "num_classes": d.num_classes, **args}
    return args


def import_weights(
    model: str,
    weights: str | Path,
    data: DataSpec | Mapping[str, Any] | str = "digits",
    *,
    model_args: Mapping[str, Any] | None = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
    timm_normalization: bool = False,
) -> Checkpoint:
    """An in-memory checkpoint of ``model`` (built with ``model_args``) holding ``weights``,
    analysed on ``data`` (a :class:`~geomkit.data.DataSpec`, its dict or a source name).

    ``strict=False`` loads what fits and keeps the rest at its initialisation (the keys
    are listed in ``config["missing_keys"]``); shapes must always fit.
    ``timm_normalization``: normalize the data with the mean/std of the timm model's
    ``pretrained_cfg`` (what timm's own weights were trained with).

    Raises:
        ModelError: the model cannot be built.
        CheckpointError: the weights file is unreadable or does not fit the model.
        DataError: a bad data spec.
    """
    spec = _data_spec(data)
    info(spec)  # a bad source or folder fails before any file is read
    path = Path(weights)
    state = read_weights(path)
    kwargs = model_kwargs_for(model, spec, model_args)
    net = build_model(model, kwargs)
    if timm_normalization:
        spec = _timm_normalization(net, spec, model)
    missing = fit_weights(net, state, strict=strict, source=f"the weights in {path}")
    sha = file_sha256(path)
    config = {"optimizer": "imported", "label": "imported", "imported_from": str(path.resolve()),
              "weights_sha256": sha, "strict": bool(strict), "missing_keys": missing}
    net.to(device).eval()
    # the weights file alone does not identify what is measured: the same weights in
    # another model or on other data are another computation (results, landscape resume)
    import hashlib

    from geomkit.io import dumps_json

    identity = hashlib.sha256(dumps_json(
        {"weights_sha256": sha, "model": model, "model_kwargs": kwargs,
         "data": spec.to_dict(), "strict": bool(strict)}, sort_keys=True).encode()).hexdigest()
    ck = Checkpoint(path=path.resolve(), model=net, model_name=model, model_kwargs=kwargs,
                    config=config, data_spec=spec, metrics={}, provenance=provenance(),
                    step=0, epoch=0, identity=identity)
    _check_fits(ck, model)
    return ck


def _timm_normalization(net: Any, spec: DataSpec, name: str) -> DataSpec:
    """``spec`` normalized with the mean/std of the timm model's ``pretrained_cfg``."""
    cfg = getattr(net, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or "mean" not in cfg or "std" not in cfg:
        raise DataError(f"mean_std 'timm' needs a timm:NAME model with a pretrained_cfg; "
                        f"{name!r} has none", param="mean_std")
    return spec.replace(mean_std=(tuple(cfg["mean"]), tuple(cfg["std"])), normalize=True)


def _check_fits(ck: Checkpoint, name: str) -> None:
    """One forward pass on the first example: a model built for other inputs fails here,
    in one line, instead of deep inside a measurement."""
    x, _ = ck.analysis_data("train", 1)
    if not isinstance(x, torch.Tensor):  # a stream: its first batch
        x, _ = next(iter(x))
    p = next(ck.model.parameters(), None)
    try:
        with torch.no_grad():
            ck.model(x.to(p.device if p is not None else "cpu"))
    except Exception as e:  # noqa: BLE001 - the user's model on the user's data
        text = " ".join(str(e).split())[:160] or type(e).__name__
        raise ModelError(f"model {name!r} does not take the inputs of data "
                         f"{ck.data_spec.source!r} ({'x'.join(map(str, x.shape[1:]))} images): "
                         f"{type(e).__name__}: {text}; check model_args or the data's "
                         "image_size", param="model") from None


def save_imported(ck: Checkpoint, out: str | Path) -> Path:
    """Write an imported checkpoint as a geomkit checkpoint (atomically) and return its path;
    :func:`geomkit.checkpoint.load_checkpoint` then reads it like any other (a factory it
    could not rebuild is refused before anything is written)."""
    from geomkit.models.external import check_factory

    check_factory(ck.model_name)
    return save_checkpoint(out, ck.model, config=ck.config, data_spec=ck.data_spec)


def _data_spec(data: DataSpec | Mapping[str, Any] | str) -> DataSpec:
    if isinstance(data, DataSpec):
        return data
    if isinstance(data, str):
        return DataSpec(source=data)
    if isinstance(data, Mapping):
        return DataSpec.from_dict(dict(data))
    raise DataError(f"data must be a DataSpec, its dict or a source name, got "
                    f"{type(data).__name__}", param="data")
