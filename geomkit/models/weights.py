"""Weights from files geomkit did not write: ``.pt``/``.pth``/``.pth.tar``/``.bin`` and
``.safetensors``, as saved by other training code.

* torch files load with ``torch.load(weights_only=True)`` (tensors and plain containers
  only: a file holding pickled objects is refused, never executed);
  ``.safetensors`` through the ``safetensors`` library;
* the state dict may be nested under ``state_dict``, ``model``, ``model_state_dict``,
  ``module`` or ``ema`` (the first such key that holds tensors, recursively);
* the ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are removed;
* :func:`fit_weights` loads them into a model, refusing missing or unexpected keys and
  shape mismatches in one line (unless ``strict=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomkit.errors import CheckpointError
from geomkit.models._naming import WRAPPER_PREFIXES

#: keys under which training scripts nest the model's state dict, in the order tried
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "ema", "model_ema")
SUFFIXES = (".pt", ".pth", ".pth.tar", ".bin", ".ckpt", ".safetensors")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` state dict in ``path`` (prefixes stripped, unnested)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(f"weights file {path} {what}")
    if path.name.endswith(".safetensors"):
        raw: Any = _safetensors(path)
    else:
        raw = _torch_file(path)
    sd = {str(k): v for k, v in _unnest(raw, path).items()}
    # a wrapper prefix (DDP's module., torch.compile's _orig_mod.) is on every key; a
    # model's own child named `module` is on some keys only, and stays
    stripped = True
    while stripped:
        stripped = False
        for p in WRAPPER_PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped = True
    return sd


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a .safetensors file: pip install safetensors"
                              ) from None
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library's own error types vary by version
        raise CheckpointError(f"{path} is not a readable .safetensors file "
                              f"({type(e).__name__}: {_line(e)})") from None


def _torch_file(path: Path) -> Any:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} is not a weights-only file: it holds pickled Python objects{what} that "
            "geomkit will not execute (it loads with torch.load(weights_only=True)); save "
            "model.state_dict() instead, with torch.save or safetensors") from None
    except Exception as e:  # noqa: BLE001 - torch.load fails many ways (zip, EOF, KeyError)
        raise CheckpointError(f"{path} is not a torch weights file, or it is truncated "
                              f"({type(e).__name__})") from None


def _unnest(raw: Any, path: Path, depth: int = 0) -> Mapping[str, torch.Tensor]:
    if isinstance(raw, Mapping) and raw and all(isinstance(v, torch.Tensor)
                                                for v in raw.values()):
        return raw
    if isinstance(raw, Mapping) and depth < 3:
        for key in NESTED_KEYS:  # the first of them that holds a state dict
            if key in raw and isinstance(raw[key], Mapping):
                try:
                    return _unnest(raw[key], path, depth + 1)
                except CheckpointError:
                    continue
        tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(raw) - 2:  # a state dict with a stray counter
            return tensors
    found = (f"keys {', '.join(map(repr, list(raw)[:6]))}" if isinstance(raw, Mapping)
             else type(raw).__name__)
    raise CheckpointError(f"{path} holds no state dict (found {found}; looked under "
                          f"{', '.join(NESTED_KEYS)})")


def fit_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                strict: bool = True, source: str = "these tensors") -> list[str]:
    """Load ``state`` into ``model`` (in place); return the keys left out (``strict=False``).

    Missing or unexpected keys (``strict=True``) and shape mismatches (always) raise one
    :class:`~geomkit.errors.CheckpointError` line naming the first few and their count.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise CheckpointError(
            f"{source} do not fit the model: {len(shapes)} tensor(s) of another shape, e.g. "
            f"{k} {list(state[k].shape)} vs {list(own[k].shape)} (check the model arguments)")
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
        raise CheckpointError(f"{source} do not fit the model: {'; '.join(parts)}; "
                              "pass non_strict to load the rest", param="non_strict")
    fitted = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(fitted, strict=False)
    return missing


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _line(e: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return first if len(first) <= 160 else first[:157].rsplit(" ", 1)[0] + " ..."
