"""Name → constructor registry shared by every model family."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from geomkit.errors import ModelError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register(name: str, description: str = "") -> Callable:
    """Decorator registering a model constructor under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return deco


def family_of_name(name: str) -> str:
    """The family (``vit``/``mixer``/``resnet``) a registered name builds: the family file
    (``geomkit/models/<family>.py``) that registered it; ``other`` for unknown names."""
    fn = _REGISTRY.get(name)
    fam = fn.__module__.rsplit(".", 1)[-1] if fn is not None else "other"
    return fam if fam in ("vit", "mixer", "resnet") else "other"


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """One-line description of a registered model."""
    _check(name)
    return _DESCRIPTIONS[name]


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(list_models())}, "
                         "timm:NAME or package.module:callable (your own factory)")


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a model: ``build("vit-tiny", image_size=8, in_chans=1, num_classes=10)``.

    ``name`` is a registry name, ``timm:NAME`` (``timm.create_model``, never pretrained) or
    ``package.module:callable`` (your own factory; see :mod:`geomkit.models.external`).
    The returned module carries ``geomkit_spec = {"name": name, "kwargs": kwargs}`` so that
    a checkpoint can rebuild it without pickling code.
    """
    return build_model(name, kwargs)


def build_model(name: str, kwargs: dict[str, Any], *, trusted: bool = True) -> nn.Module:
    """:func:`build` with the kwargs as a dict; ``trusted=False`` when the spec comes from a
    file (a checkpoint), which restricts ``module:callable`` factories (see
    :mod:`geomkit.models.external`)."""
    from geomkit.models.external import build_external, is_external

    if is_external(name):
        model = build_external(name, dict(kwargs), trusted=trusted)
        model.geomkit_spec = {"name": name, "kwargs": dict(kwargs)}
        return model
    _check(name)
    fn = _REGISTRY[name]
    sig = inspect.signature(fn)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = sorted(set(kwargs) - set(sig.parameters))
        if unknown:
            raise ModelError(
                f"model {name!r} takes no argument(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sig.parameters)}"
            )
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelError(f"cannot build {name!r} with {kwargs}: {e}") from None
    model.geomkit_spec = {"name": name, "kwargs": dict(kwargs)}
    return model
