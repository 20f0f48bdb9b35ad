"""``params``: the number of parameters (Table 1's #Params)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomkit.measurements import Measurement, TableEntry, register
from geomkit.measurements._common import Options


@dataclass(frozen=True)
class ParamsOptions(Options):
    """No options."""


def _run(ck: Any, o: ParamsOptions) -> dict[str, Any]:
    ps = list(ck.model.parameters())
    return {"num_params": sum(p.numel() for p in ps),
            "trainable": sum(p.numel() for p in ps if p.requires_grad)}


def _view(r: Any) -> dict[str, Any]:
    n = r.get("params.num_params")
    return {} if n is None else {"num_params": int(n)}


MEASUREMENT = register(Measurement(
    name="params", description="number of parameters", options=ParamsOptions, run=_run,
    settings=lambda ck, o: {}, schema=("num_params", "trainable"), view=_view, order=10,
    entries=(TableEntry(1, "params", "#Params", lambda r: r.get("params.num_params"), 10,
                        kind="params", paper=r"param"),),
))
