"""Models geomkit did not define: ``timm:NAME`` and a user's own ``package.module:callable``.

A model spec is what :func:`geomkit.models.build` takes besides a registry name:

* ``timm:NAME`` -- ``timm.create_model(NAME, pretrained=False, **kwargs)``. geomkit never
  downloads weights: they come from a file (``--weights``), so ``pretrained`` is refused.
* ``package.module:callable`` -- the user's own factory (a function or class), importable
  from ``sys.path`` (``PYTHONPATH``), called with the keyword arguments; it must return an
  ``nn.Module``.

A checkpoint records the spec and its JSON-able kwargs, so it rebuilds the model without
pickled code. Rebuilding from a checkpoint someone else wrote must not become a way to run
arbitrary code, so a factory named *by a file* (``trusted=False``) must live in your own
code: its top-level package may be neither Python's standard library nor an installed
package (site-packages: ``numpy:load`` or ``torch.hub:load`` would run a pickle) nor geomkit
itself -- checked by locating the package, before anything is imported -- and the callable
must be defined in the module it is named by (``os:system`` re-exported by a user module
is refused). ``GEOMKIT_TRUSTED_MODULES=pkg,other`` admits installed packages you trust. A
spec typed by the user on the command line or in Python is trusted as typed.
"""

from __future__ import annotations

import importlib
import inspect
import os
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
    if kwargs.get("pretrained"):
        raise ModelError("geomkit never downloads weights: drop pretrained and give the "
                         "weights file instead (weights=FILE)", param="model_args")
    loading = sorted(set(kwargs) & {"checkpoint_path", "pretrained_cfg",
                                    "pretrained_cfg_overlay"})
    if loading:  # timm would load (unsafely) or fetch weights itself
        raise ModelError(f"timm:{arch}: {', '.join(loading)} would make timm load weights "
                         "itself; give the weights file instead (weights=FILE)",
                         param="model_args")
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision failing to load
        raise ModelError(f"model timm:{arch} needs timm, which does not import here "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "install timm (and a torchvision matching torch)",
                         param="model") from None
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
    if not trusted:
        why = _not_your_code(modname)
        if why:
            raise ModelError(f"model {name!r} names {why}, not a model factory of your own; "
                             "a checkpoint may only name your own package.module:callable "
                             "(GEOMKIT_TRUSTED_MODULES admits an installed package)",
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


def _installed_dirs() -> list[str]:
    import site
    import sysconfig

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    paths = sysconfig.get_paths()
    dirs += [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    return [os.path.realpath(d) for d in dirs if d]


def _not_your_code(modname: str) -> str | None:
    """Why a module named by a file may not be imported (None: it is the user's code).

    Located with ``importlib.util.find_spec`` on the top-level package, which finds the
    files without running them."""
    import importlib.util

    top = modname.split(".")[0]
    trusted = {m.strip() for m in os.environ.get("GEOMKIT_TRUSTED_MODULES", "").split(",")}
    if top in trusted - {""}:
        return None
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "the standard library"
    if top in ("geomkit", "cli"):
        return "geomkit itself"
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None  # the import below fails with its own message
    if spec is None:
        return None
    origin = spec.origin if spec.origin not in (None, "built-in", "frozen") else None
    if origin is None and spec.submodule_search_locations:
        origin = next(iter(spec.submodule_search_locations), None)
    if origin is None:
        return "a built-in module"
    path = os.path.realpath(origin)
    if any(path.startswith(d + os.sep) for d in _installed_dirs()):
        return f"an installed package ({top})"
    return None


def check_factory(name: str) -> None:
    """Refuse now a ``module:callable`` spec that a checkpoint could not rebuild later
    (:func:`load_checkpoint` reads specs untrusted): what ``geomkit import`` checks before
    it writes."""
    if name.startswith(TIMM) or not is_external(name):
        return
    modname, _, attr = name.partition(":")
    why = _not_your_code(modname)
    obj: Any = importlib.import_module(modname) if why is None else None
    for part in attr.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    where = getattr(obj, "__module__", None)
    if why is None and obj is not None and where != modname:
        why = f"a callable defined in {where!r}"
        raise ModelError(f"model {name!r} names {why}; a checkpoint names a factory where it "
                         f"is defined: use {where}:{getattr(obj, '__qualname__', attr)}",
                         param="model")
    if why is not None:
        raise ModelError(f"model {name!r} names {why}: a checkpoint could not rebuild it "
                         "(GEOMKIT_TRUSTED_MODULES admits an installed package)",
                         param="model")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
