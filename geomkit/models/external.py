"""Models geomkit did not define: ``timm:NAME`` and a user's own ``package.module:callable``.

A model spec is what :func:`geomkit.models.build` takes besides a registry name:

* ``timm:NAME`` -- ``timm.create_model(NAME, pretrained=False, **kwargs)``. geomkit never
  downloads weights: they come from a file (``--weights``), so ``pretrained`` is refused.
* ``package.module:callable`` -- the user's own factory (a function or class), importable
  from ``sys.path`` (``PYTHONPATH``), called with the keyword arguments; it must return an
  ``nn.Module``.

A checkpoint records the spec and its JSON-able kwargs, so it rebuilds the model without
pickled code. Rebuilding from a checkpoint someone else wrote must not become a way to run
arbitrary code, so a factory named *by a file* (``trusted=False``) must be defined in the
module it is named by (``os:system`` re-exported by a user module is refused) and that
module may not be part of Python's standard library. A spec typed by the user on the command
line or in Python is trusted as typed.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from typing import Any

from torch import nn

from geomkit.errors import ModelError

TIMM = "timm:"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_external(name: str) -> bool:
    """True for ``timm:NAME`` and ``module:callable`` specs (registry names have no colon)."""
    return ":" in name


def build_external(name: str, kwargs: dict[str, Any], *, trusted: bool = True) -> nn.Module:
    """The model a ``timm:NAME`` or ``package.module:callable`` spec builds (see module doc)."""
    if name.startswith(TIMM):
        return _timm_model(name[len(TIMM):], kwargs)
    if not _FACTORY.match(name):
        raise ModelError(f"model {name!r} is neither a registry name, timm:NAME nor "
                         "package.module:callable", param="model")
    return _factory_model(name, kwargs, trusted)


def _timm_model(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision failing to load
        raise ModelError(f"model timm:{arch} needs timm, which does not import here "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "install timm (and a torchvision matching torch)",
                         param="model") from None
    if kwargs.get("pretrained"):
        raise ModelError("geomkit never downloads weights: drop pretrained and give the "
                         "weights file instead (weights=FILE)", param="model_args")
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = (f"; did you mean {', '.join(close)}?" if close
                else " (timm.list_models() lists them)")
        raise ModelError(f"unknown timm model {arch!r}{hint}", param="model")
    kw = {k: v for k, v in kwargs.items() if k != "pretrained"}
    try:
        return timm.create_model(arch, pretrained=False, **kw)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as e:
        raise ModelError(f"cannot build timm:{arch} with {kw}: {_first_line(e)}",
                         param="model_args") from None


def _factory_model(name: str, kwargs: dict[str, Any], trusted: bool) -> nn.Module:
    modname, _, attr = name.partition(":")
    if not trusted and modname.split(".")[0] in sys.stdlib_module_names:
        raise ModelError(f"model {name!r} names the standard library, not a model factory; "
                         "a checkpoint may only name your own package.module:callable",
                         param="model")
    try:
        module = importlib.import_module(modname)
    except ImportError as e:
        raise ModelError(f"cannot import {modname!r} for model {name!r} ({_first_line(e)}); "
                         "is its folder on PYTHONPATH?", param="model") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ModelError(f"module {modname!r} has no {attr!r} (model {name!r})",
                             param="model")
    if not callable(obj):
        raise ModelError(f"model {name!r}: {attr!r} is not callable", param="model")
    if not trusted and getattr(obj, "__module__", None) != module.__name__:
        raise ModelError(f"model {name!r}: {attr!r} is not defined in {modname!r} (it comes "
                         f"from {getattr(obj, '__module__', '?')!r}); a checkpoint may only "
                         "name a factory where it is defined", param="model")
    try:
        inspect.signature(obj).bind(**kwargs)
    except TypeError as e:
        raise ModelError(f"model {name!r} does not take {sorted(kwargs)}: {e}",
                         param="model_args") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    try:
        model = obj(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's code: one line naming it
        raise ModelError(f"model {name!r} failed to build: {type(e).__name__}: "
                         f"{_first_line(e)}", param="model") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned {type(model).__name__}, not a "
                         "torch.nn.Module", param="model")
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
