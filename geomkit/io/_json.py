"""The one JSON policy of geomkit (see :mod:`geomkit.io`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

#: What a non-finite float becomes in JSON that geomkit writes.
NAN_JSON = None
POS_INF_JSON = "inf"
NEG_INF_JSON = "-inf"

# Non-finite values as older geomkit versions wrote them: results attributes held
# ``str(float)`` ("nan", "inf", "-inf"); study.json held the bare tokens NaN/Infinity.
_LEGACY_STRINGS = {"nan": NAN_JSON, "NaN": NAN_JSON, "inf": POS_INF_JSON,
                   "Infinity": POS_INF_JSON, "-inf": NEG_INF_JSON, "-Infinity": NEG_INF_JSON}


def _float(v: float) -> Any:
    if math.isnan(v):
        return NAN_JSON
    if math.isinf(v):
        return POS_INF_JSON if v > 0 else NEG_INF_JSON
    return float(v)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values under geomkit's policy.

    Mappings become dicts with string keys, lists/tuples/sets lists, numpy scalars and
    0-d arrays/tensors their Python value, arrays/tensors nested lists, paths strings;
    NaN becomes ``None`` and ±inf the strings ``"inf"``/``"-inf"``; anything else its
    ``str()``.
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    return str(obj)


def dumps_json(obj: Any, *, indent: int | None = None, sort_keys: bool = False,
               ensure_ascii: bool = True) -> str:
    """``obj`` (through :func:`jsonable`) as strict JSON text: ``allow_nan=False``, so
    the result is always valid JSON, under geomkit's NaN policy."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False,
                      ensure_ascii=ensure_ascii)


def _normalize(obj: Any) -> Any:
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, str):
        return _LEGACY_STRINGS.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _normalize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_normalize(v) for v in obj]
    return obj


def loads_json(text: str | bytes) -> Any:
    """Parse JSON that geomkit wrote, now or before the one policy.

    Legacy non-finite values -- the bare tokens ``NaN``/``Infinity`` and the strings
    ``"nan"``/``"inf"``/``"-inf"`` -- read as what :func:`dumps_json` writes today
    (``None``, ``"inf"``, ``"-inf"``), so an old file reads like a rewritten one.

    Raises:
        ValueError: ``text`` is not JSON (``json.JSONDecodeError``).
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode()
    return _normalize(json.loads(text))
